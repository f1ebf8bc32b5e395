"""HTTP ingest (CONTRACT §3.5b): ``POST /v1/entries`` against a fake ``publish``.

The fake records what would be sent to Kafka (topic, key, value) or fails on demand; the
real broker is exercised by ``tests/integration/test_http_ingest.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from processor.api.auth import make_auth_middleware
from processor.api.context import ApiContext, Readiness
from processor.api.errors import error_middleware
from processor.api.http_ingest import (
    INGEST,
    MAX_BODY_BYTES,
    IngestViews,
)
from processor.api.openapi import add_route
from processor.api.routes import setup_routes
from processor.metrics import UsageMetrics
from processor.settings import Settings
from processor.store.keys import Keys
from processor.store.run_queries import RunQueries
from schemas.api import ErrorResponse, IngestResponse
from schemas.deadletter import MAX_DEAD_LETTER_BYTES, DeadLetter
from schemas.entry import entry_to_json, validate_entry_dict

ENTRIES_TOPIC = "in.entries"
DLQ_TOPIC = "in.dlq"
KEYS = "key-a:tenantA, key-b:tenantB"
AUTH_A = {"Authorization": "Bearer key-a"}

Sent = tuple[str, bytes | None, bytes]
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class FakePublish:
    """Records every message; ``fail`` makes the next calls raise, ``hang`` never return."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.calls = 0
        self.fail: BaseException | None = None
        self.hang = False

    async def __call__(self, topic: str, messages: Sequence[tuple[bytes | None, bytes]]) -> None:
        self.calls += 1
        if self.hang:
            await asyncio.Event().wait()
        if self.fail is not None:
            raise self.fail
        self.sent.extend((topic, k, v) for k, v in messages)

    def on(self, topic: str) -> list[tuple[bytes | None, bytes]]:
        return [(k, v) for t, k, v in self.sent if t == topic]


def make_settings(**overrides: Any) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None, topic_entries=ENTRIES_TOPIC, topic_dlq=DLQ_TOPIC, **overrides
    )


def make_ctx(
    publish: FakePublish | None, metrics: UsageMetrics | None = None, **settings: Any
) -> ApiContext:
    async def ready() -> Readiness:
        return Readiness(kafka=True, redis=True, partitions_assigned=True)

    # The store is never used by this route; the client connects lazily, so no server.
    store = RunQueries(Redis.from_url("redis://127.0.0.1:1/0"), Keys("x"))
    return ApiContext(
        settings=make_settings(**settings),
        runs=store,
        registry=metrics.registry if metrics is not None else CollectorRegistry(),
        readiness=ready,
        publish=publish,
        metrics=metrics,
    )


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    clients: list[TestClient[Any, Any]] = []

    async def make(app: web.Application) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.close()


@pytest.fixture
def publish() -> FakePublish:
    return FakePublish()


@pytest.fixture
async def client(make_client: ClientFactory, publish: FakePublish) -> TestClient[Any, Any]:
    app = web.Application()
    setup_routes(app, make_ctx(publish))
    return await make_client(app)


# --- entry builders ------------------------------------------------------------------------

_ids = iter(range(10**9))


def tokens_entry(**over: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": f"h-{next(_ids)}",
        "kind": "tokens",
        "runId": "run-1",
        "userId": "user-1",
        "timestamp": now_ms() - 1000,
        "model": "gpt-4o-mini",
        "tokens": {"prompt": 10, "completion": 5},
    }
    entry.update(over)
    return entry


def tool_entry(**over: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": f"h-{next(_ids)}",
        "kind": "tool",
        "runId": "run-2",
        "userId": "user-1",
        "timestamp": now_ms() - 1000,
        "toolName": "search",
        "durationMs": 12.5,
        "success": True,
    }
    entry.update(over)
    return entry


def wire(entry: dict[str, Any]) -> bytes:
    """The bytes the route must publish for a valid ``entry``."""
    return entry_to_json(validate_entry_dict(entry, now_ms=now_ms()))


def compact(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


async def post(
    client: TestClient[Any, Any], body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = await client.post("/v1/entries", data=data, headers=headers)
    assert resp.content_type == "application/json", await resp.text()
    return resp.status, await resp.json()


def assert_error(status: int, body: Any, want_status: int, code: str) -> str:
    assert status == want_status, body
    ErrorResponse.model_validate(body)
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    assert message
    return message


# --- the happy path and the mixed batch ------------------------------------------------------


async def test_valid_entries_are_published_with_run_id_keys_and_wire_bytes(
    client: TestClient[Any, Any], publish: FakePublish
) -> None:
    a = tokens_entry(runId="run/ü/1", userId="usér-😀")
    b = tool_entry()
    status, body = await post(client, {"entries": [a, b]})
    assert status == 202, body
    assert body == {"accepted": 2, "rejected": []}
    IngestResponse.model_validate(body)
    assert publish.on(ENTRIES_TOPIC) == [("run/ü/1".encode(), wire(a)), (b"run-2", wire(b))]
    assert publish.on(DLQ_TOPIC) == []


async def test_empty_batch_is_accepted_and_publishes_nothing(
    client: TestClient[Any, Any], publish: FakePublish
) -> None:
    status, body = await post(client, {"entries": []})
    assert (status, body) == (202, {"accepted": 0, "rejected": []})
    assert publish.calls == 0


async def test_mixed_batch_answers_each_rejection_and_dead_letters_it(
    client: TestClient[Any, Any], publish: FakePublish
) -> None:
    good1 = tokens_entry()
    unknown_field = tokens_entry(modle="typo")
    not_object = ["not", "an", "entry"]
    invariant = tokens_entry(tokens={"prompt": 1, "completion": 2, "reasoning": 3})
    good2 = tool_entry()
    too_old = tool_entry(timestamp=1_000)
    too_large = tool_entry(error="x" * 70_000)
    no_run = {"kind": "custom", "id": "c1"}
    batch = [good1, unknown_field, not_object, invariant, good2, too_old, too_large, no_run]

    before = now_ms()
    status, body = await post(client, {"entries": batch})
    after = now_ms()
    assert status == 202, body
    IngestResponse.model_validate(body)
    assert body["accepted"] == 2
    got = [(r["index"], r["error"]["code"], r["error"]["field"]) for r in body["rejected"]]
    assert got == [
        (1, "schema", "modle"),
        (2, "schema", None),  # a JSON text that is not an object
        (3, "invariant", "tokens.reasoning"),
        (5, "timestamp", "timestamp"),
        (6, "too_large", None),
        (7, "schema", got[-1][2]),
    ]
    assert all(r["error"]["message"] for r in body["rejected"])
    assert all(set(r) == {"index", "error"} for r in body["rejected"])
    assert all(set(r["error"]) == {"code", "message", "field"} for r in body["rejected"])

    assert publish.on(ENTRIES_TOPIC) == [(b"run-1", wire(good1)), (b"run-2", wire(good2))]
    letters = publish.on(DLQ_TOPIC)
    assert len(letters) == len(body["rejected"])
    originals = [unknown_field, not_object, invariant, too_old, too_large, no_run]
    for (key, value), original, answer in zip(letters, originals, body["rejected"], strict=True):
        doc = json.loads(value)
        DeadLetter.model_validate(doc)
        assert doc["error"] == answer["error"]
        assert doc["topic"] == ENTRIES_TOPIC
        assert doc["partition"] == -1 and doc["offset"] == -1
        assert before <= doc["receivedAt"] <= after
        assert doc["value"] == compact(original)
        assert "valueEncoding" not in doc and "valueTruncated" not in doc
        run_id = original.get("runId") if isinstance(original, dict) else None
        assert key == (run_id.encode() if run_id else None)
        assert doc["key"] == run_id


async def test_dead_letter_of_a_huge_entry_is_truncated_to_fit_the_producer(
    client: TestClient[Any, Any], publish: FakePublish
) -> None:
    # a 4.8 MB body; each backslash (2 bytes in the body) takes 4 in the letter's value
    huge = tool_entry(error="\\" * 2_400_000)
    status, body = await post(client, {"entries": [huge, tool_entry()]})
    assert status == 202, body
    assert body["accepted"] == 1
    assert [(r["index"], r["error"]["code"]) for r in body["rejected"]] == [(0, "too_large")]
    [(key, value)] = publish.on(DLQ_TOPIC)
    assert key == b"run-2"
    assert len(value) <= MAX_DEAD_LETTER_BYTES
    doc = json.loads(value)
    full = compact(huge)
    assert doc["valueTruncated"] is True
    assert doc["valueBytes"] == len(full.encode())
    assert full.startswith(doc["value"]) and len(doc["value"]) > 1_000_000
    assert doc["error"]["code"] == "too_large"


async def test_lone_surrogates_are_dead_lettered_as_json_text(
    client: TestClient[Any, Any], publish: FakePublish
) -> None:
    raw = b'{"entries": [{"id": "x", "kind": "tool", "runId": "r\\ud800", "userId": "u"}]}'
    status, body = await post(client, raw)
    assert status == 202, body
    assert body["accepted"] == 0 and len(body["rejected"]) == 1
    [(key, value)] = publish.on(DLQ_TOPIC)
    doc = json.loads(value)
    assert doc["value"] == '{"id":"x","kind":"tool","runId":"r\\ud800","userId":"u"}'
    assert doc["keyEncoding"] == "base64" and key is not None


# --- limits and bad bodies ---------------------------------------------------------------


async def test_1000_entries_are_accepted(
    client: TestClient[Any, Any], publish: FakePublish
) -> None:
    status, body = await post(client, {"entries": [tokens_entry() for _ in range(1000)]})
    assert (status, body) == (202, {"accepted": 1000, "rejected": []})
    assert len(publish.on(ENTRIES_TOPIC)) == 1000


async def test_1001_entries_are_a_400_and_nothing_is_published(
    client: TestClient[Any, Any], publish: FakePublish
) -> None:
    status, body = await post(client, {"entries": [tokens_entry() for _ in range(1001)]})
    message = assert_error(status, body, 400, "bad_request")
    assert "1001" in message and "1000" in message
    assert publish.calls == 0


def oversized_body() -> bytes:
    pad = "x" * 1000
    entry = tool_entry(error=pad)
    n = MAX_BODY_BYTES // len(json.dumps(entry)) + 10
    body = json.dumps({"entries": [entry] * n}).encode()
    assert MAX_BODY_BYTES < len(body) < MAX_BODY_BYTES + 50_000
    return body


async def test_body_over_5_mib_is_a_413(client: TestClient[Any, Any], publish: FakePublish) -> None:
    status, body = await post(client, oversized_body())
    message = assert_error(status, body, 413, "payload_too_large")
    assert str(MAX_BODY_BYTES) in message
    assert publish.calls == 0


async def test_chunked_body_over_5_mib_is_a_413_while_streaming(
    client: TestClient[Any, Any], publish: FakePublish
) -> None:
    data = oversized_body()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 256 * 1024):
            yield data[start : start + 256 * 1024]

    resp = await client.post("/v1/entries", data=chunks())
    assert resp.headers.get("Content-Length") is not None
    assert_error(resp.status, await resp.json(), 413, "payload_too_large")
    assert publish.calls == 0


async def test_body_of_exactly_5_mib_is_read(
    client: TestClient[Any, Any], publish: FakePublish
) -> None:
    text = json.dumps({"entries": [tokens_entry()]})
    data = text.encode() + b" " * (MAX_BODY_BYTES - len(text))
    assert len(data) == MAX_BODY_BYTES
    status, body = await post(client, data)
    assert (status, body) == (202, {"accepted": 1, "rejected": []})


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"", "empty"),
        (b"   ", "empty"),
        (b"{not json", "not valid JSON"),
        (b'{"entries": [NaN]}', "not valid JSON"),
        (b'{"entries": [\xff]}', "UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON"),
        (b"[]", "JSON object"),
        (b'"entries"', "JSON object"),
        (b"{}", "JSON object"),
        (b'{"entries": {}}', "array"),
        (b'{"entries": null}', "array"),
        (b'{"entries": [], "extra": 1}', "extra"),
    ],
)
async def test_bad_bodies_are_400(
    client: TestClient[Any, Any], publish: FakePublish, raw: bytes, needle: str
) -> None:
    status, body = await post(client, raw)
    message = assert_error(status, body, 400, "bad_request")
    assert needle in message
    assert publish.calls == 0


async def test_other_methods_are_405(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/v1/entries")
    assert_error(resp.status, await resp.json(), 405, "method_not_allowed")


# --- tenants ----------------------------------------------------------------------------


@pytest.fixture
async def keyed(make_client: ClientFactory, publish: FakePublish) -> TestClient[Any, Any]:
    app = web.Application()
    setup_routes(app, make_ctx(publish, api_keys=KEYS))
    return await make_client(app)


async def test_api_key_tenant_is_written_into_entries_and_other_tenants_rejected(
    keyed: TestClient[Any, Any], publish: FakePublish
) -> None:
    plain = tokens_entry()
    same = tool_entry(tenantId="tenantA")
    other = tokens_entry(tenantId="tenantB")
    bad_type = tokens_entry(tenantId=7)
    status, body = await post(keyed, {"entries": [plain, same, other, bad_type]}, AUTH_A)
    assert status == 202, body
    assert body["accepted"] == 2
    rejected = {r["index"]: r["error"] for r in body["rejected"]}
    assert set(rejected) == {2, 3}
    assert rejected[2]["code"] == "schema" and rejected[2]["field"] == "tenantId"
    assert "tenantB" in rejected[2]["message"] and "tenantA" in rejected[2]["message"]
    assert rejected[3]["code"] == "schema" and rejected[3]["field"] == "tenantId"

    published = publish.on(ENTRIES_TOPIC)
    assert published == [(b"run-1", wire({**plain, "tenantId": "tenantA"})), (b"run-2", wire(same))]
    assert all(json.loads(v)["tenantId"] == "tenantA" for _, v in published)
    # the dead letter holds the entry as posted
    letters = [json.loads(v) for _, v in publish.on(DLQ_TOPIC)]
    assert [d["value"] for d in letters] == [compact(other), compact(bad_type)]


async def test_with_keys_a_request_without_a_valid_key_is_401(
    keyed: TestClient[Any, Any], publish: FakePublish
) -> None:
    for headers in (None, {"Authorization": "Bearer nope"}, {"Authorization": "Basic a2V5LWE="}):
        status, body = await post(keyed, {"entries": [tokens_entry()]}, headers)
        assert_error(status, body, 401, "unauthorized")
    assert publish.calls == 0


async def test_without_keys_entries_keep_their_tenant(
    client: TestClient[Any, Any], publish: FakePublish
) -> None:
    plain = tokens_entry()
    acme = tokens_entry(tenantId="acme")
    status, body = await post(client, {"entries": [plain, acme]})
    assert (status, body) == (202, {"accepted": 2, "rejected": []})
    published = [v for _, v in publish.on(ENTRIES_TOPIC)]
    assert published == [wire(plain), wire(acme)]
    assert "tenantId" not in json.loads(published[0])


# --- publishing failures and metrics -------------------------------------------------------


async def test_publish_failure_is_503_and_nothing_is_accepted(
    make_client: ClientFactory, publish: FakePublish
) -> None:
    metrics = UsageMetrics(CollectorRegistry())
    app = web.Application()
    setup_routes(app, make_ctx(publish, metrics))
    client = await make_client(app)
    publish.fail = ConnectionError("broker down")
    status, body = await post(client, {"entries": [tokens_entry(), tokens_entry(kind="nope")]})
    assert_error(status, body, 503, "unavailable")
    assert "accepted" not in body
    # the rejection is only counted once its dead letter is out
    assert metrics.registry.get_sample_value("usage_dead_letters_total", {"reason": "schema"}) == 0

    publish.fail = None
    status, body = await post(client, {"entries": [tokens_entry(), tokens_entry(kind="nope")]})
    assert status == 202 and body["accepted"] == 1


async def test_missing_publisher_is_503(make_client: ClientFactory) -> None:
    app = web.Application()
    setup_routes(app, make_ctx(None))
    client = await make_client(app)
    status, body = await post(client, {"entries": [tokens_entry()]})
    assert_error(status, body, 503, "unavailable")


async def test_publish_timeout_is_503(make_client: ClientFactory, publish: FakePublish) -> None:
    ctx = make_ctx(publish)
    app = web.Application(middlewares=[error_middleware, make_auth_middleware({})])
    add_route(app, INGEST, IngestViews(ctx, publish_timeout_s=0.05).post_entries)
    client = await make_client(app)
    publish.hang = True
    status, body = await post(client, {"entries": [tokens_entry()]})
    message = assert_error(status, body, 503, "unavailable")
    assert "in time" in message


async def test_rejections_are_counted_by_kind_and_reason(
    make_client: ClientFactory, publish: FakePublish
) -> None:
    metrics = UsageMetrics(CollectorRegistry())
    app = web.Application()
    setup_routes(app, make_ctx(publish, metrics))
    client = await make_client(app)
    batch = [
        tokens_entry(),
        tokens_entry(modle="x"),
        tool_entry(timestamp=5),
        tool_entry(durationMs=-1),
        {"userId": "\ud800"},  # a lone surrogate: json (a non-object would be schema)
    ]
    status, body = await post(client, {"entries": batch})
    assert status == 202 and body["accepted"] == 1

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert sample("usage_entries_total", kind="tokens", outcome="rejected") == 1
    assert sample("usage_entries_total", kind="tool", outcome="rejected") == 2
    assert sample("usage_entries_total", kind="unknown", outcome="rejected") == 1
    # accepted entries are counted by the worker that applies them, not here
    assert sample("usage_entries_total", kind="tokens", outcome="accepted") == 0
    assert sample("usage_dead_letters_total", reason="schema") == 2
    assert sample("usage_dead_letters_total", reason="timestamp") == 1
    assert sample("usage_dead_letters_total", reason="json") == 1


# --- OpenAPI ----------------------------------------------------------------------------


async def test_openapi_lists_the_route_with_its_schemas(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/v1/openapi.json")
    doc = await resp.json()
    op = doc["paths"]["/v1/entries"]["post"]
    assert op["operationId"] == "ingestEntries"
    ok = op["responses"]["202"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/IngestResponse"}
    assert {"202", "400", "401", "413", "500", "503"} <= set(op["responses"])
    schemas = doc["components"]["schemas"]
    assert {"IngestRequest", "IngestResponse", "IngestRejection", "IngestError"} <= set(schemas)
    assert schemas["IngestRequest"]["properties"]["entries"]["maxItems"] == 1000
