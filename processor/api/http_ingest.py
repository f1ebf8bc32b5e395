"""Ingest over HTTP (CONTRACT §3.5b): ``POST /v1/entries``.

For runtimes that cannot speak the Kafka protocol. The body is ``{"entries": [entry, ...]}``;
each entry is validated exactly as a message of ``usage.entries`` would be (§2). Valid
entries are published to the entries topic (key = ``runId``, value = the compact wire JSON
that was size-checked) and rejected ones to the dead-letter topic; the answer (202) is only
sent once the broker acknowledged every message of both.

Decisions where the contract is silent:

* Limits: a body over 5 MiB is a 413 (``payload_too_large``), answered from the
  ``Content-Length`` header when there is one and otherwise as soon as the streamed body
  passes the limit (it is never buffered whole). More than 1,000 entries is a 400. The
  ``Content-Type`` is not checked (``sendBeacon``-style clients send ``text/plain``); the
  body must be UTF-8 JSON (``NaN``/``Infinity`` are not JSON). A body that is not a JSON
  object with exactly the member ``entries`` holding an array is a 400 (``bad_request``).
* Tenants: with API keys configured, an entry without ``tenantId`` gets the key's tenant
  written into it (so the published JSON carries it); an entry naming another tenant is
  rejected with code ``schema``, field ``tenantId``. Without keys, entries are taken as they
  are (no ``tenantId`` means ``default``), as on Kafka.
* Dead letters of HTTP entries (§5 format): ``topic`` is the entries topic they were meant
  for, ``partition`` and ``offset`` are ``-1`` (they never were on a partition), ``key`` is
  the entry's ``runId`` when it is a string (else null), ``value`` is the entry as posted
  (before any tenant was written into it) re-encoded as compact JSON text. A value that
  would make the dead letter larger than ``schemas.deadletter.MAX_DEAD_LETTER_BYTES``
  (7.5 MiB; JSON escaping can inflate a 5 MiB body several times) is cut to a prefix and
  the letter gets ``"valueTruncated": true`` and ``"valueBytes": <full size>``; the client
  has the full error in its answer anyway.
* ``accepted`` counts entries published to the entries topic; whether one is a duplicate of
  an earlier entry (same ``id``) is decided by the worker that applies it (so a retried
  batch answers the same and changes nothing). If publishing fails or takes longer than
  the publish timeout, the answer is 503 (``unavailable``) and nothing is reported as
  accepted: the client retries the whole batch (ids make that idempotent; the dead
  letters of a retried batch may appear twice).
* Metrics: rejections are counted here (``usage_entries_total{outcome="rejected"}`` with
  the entry's kind, or ``unknown``, and ``usage_dead_letters_total{reason}``) once their
  dead letters are acknowledged; accepted and duplicate entries are counted by the worker
  that applies them from Kafka.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, NoReturn

from aiohttp import web

from processor.api.auth import tenant_of
from processor.api.context import ApiContext
from processor.api.errors import ApiError, bad_request
from processor.api.openapi import RouteSpec
from processor.api.openapi_schemas import JsonSchema, model_schemas
from schemas.api import IngestRequest, IngestResponse
from schemas.deadletter import build_dead_letter, fit_dead_letter
from schemas.entry import entry_to_json, validate_entry_dict
from schemas.errors import EntryRejected

log = logging.getLogger(__name__)

#: At most this many entries per request.
MAX_ENTRIES: Final = 1000
#: At most this many body bytes per request (5 MiB).
MAX_BODY_BYTES: Final = 5 * 1024 * 1024
#: Longest wait for the broker's acknowledgements before answering 503.
PUBLISH_TIMEOUT_S: Final = 10.0
_READ_CHUNK: Final = 64 * 1024
_KINDS: Final = frozenset({"tokens", "tool", "subagent", "custom"})

INGEST: Final = RouteSpec(
    "POST",
    "/v1/entries",
    "ingestEntries",
    "Validate and publish up to 1,000 usage entries (at most 5 MiB); valid ones are "
    "acknowledged by Kafka before the answer, rejected ones go to the dead-letter topic.",
    "IngestResponse",
    status=202,
    errors=(400, 413, 503),
    request="IngestRequest",
)
#: Component schemas of the route (request and response bodies).
INGEST_SCHEMAS: Final[dict[str, JsonSchema]] = model_schemas(IngestRequest, IngestResponse)

Clock = Callable[[], int]
Messages = list[tuple[bytes | None, bytes]]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _too_large(size: int | None = None) -> ApiError:
    got = f"{size} bytes" if size is not None else "more than that"
    return ApiError(
        413,
        "payload_too_large",
        f"request body is {got}; the limit is {MAX_BODY_BYTES} bytes (5 MiB)",
    )


async def read_body(request: web.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refusing (413) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(declared)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(_READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def parse_body(body: bytes) -> list[Any]:
    """The ``entries`` array of an ingest body; 400 for anything else."""
    if not body.strip():
        raise bad_request('request body is empty; expected {"entries": [entry, ...]}')
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"request body is not valid UTF-8 (at byte {exc.start})") from None
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or "entries" not in doc:
        raise bad_request('request body must be a JSON object {"entries": [entry, ...]}')
    extra = sorted(k for k in doc if k != "entries")
    if extra:
        raise bad_request(f"unknown member(s) in request body: {', '.join(extra)}")
    entries = doc["entries"]
    if not isinstance(entries, list):
        raise bad_request('"entries" must be an array of usage entries')
    if len(entries) > MAX_ENTRIES:
        raise bad_request(f"too many entries: {len(entries)}; at most {MAX_ENTRIES} per request")
    return entries


def _compact(obj: Any) -> str:
    """``obj`` (decoded from the request) as compact JSON text."""
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        text.encode("utf-8")  # lone surrogates (from "\\ud800" escapes) cannot be UTF-8
        return text
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True, separators=(",", ":"))


def dead_letter_for(
    obj: Any, error: EntryRejected, topic: str, received_at_ms: int
) -> tuple[bytes | None, bytes]:
    """``(key, value)`` of the dead letter of one rejected HTTP entry (see module doc)."""
    run_id = obj.get("runId") if isinstance(obj, dict) else None
    key = run_id.encode("utf-8", "surrogatepass") if isinstance(run_id, str) else None
    value = _compact(obj).encode("utf-8")

    def build(raw: bytes) -> bytes:
        return build_dead_letter(
            raw_value=raw,
            key=key,
            topic=topic,
            partition=-1,
            offset=-1,
            error=error,
            received_at_ms=received_at_ms,
        )

    return key, fit_dead_letter(build, value)


def _other_tenant(obj: Mapping[str, Any], tenant: str) -> EntryRejected | None:
    named = obj["tenantId"]
    if isinstance(named, str) and named != tenant:
        return EntryRejected(
            "schema",
            f"tenantId: entry names tenant {named!r} but the API key belongs to tenant "
            f"{tenant!r}; leave tenantId out or set it to the key's tenant",
            "tenantId",
        )
    return None


class IngestViews:
    """``POST /v1/entries``; needs ``ctx.publish`` (answers 503 without it)."""

    def __init__(
        self,
        ctx: ApiContext,
        *,
        clock: Clock = _now_ms,
        publish_timeout_s: float = PUBLISH_TIMEOUT_S,
    ) -> None:
        self._ctx = ctx
        self._metrics = ctx.metrics
        self._clock = clock
        self._timeout = publish_timeout_s
        self._keys_configured = bool(ctx.settings.api_key_tenants())

    def _check(self, obj: Any, tenant: str | None, now_ms: int) -> tuple[bytes, bytes]:
        """``(key, value)`` to publish for a valid entry; raises EntryRejected otherwise."""
        if tenant is not None and isinstance(obj, dict):
            if "tenantId" in obj:
                if (err := _other_tenant(obj, tenant)) is not None:
                    raise err
            else:
                obj = {**obj, "tenantId": tenant}
        entry = validate_entry_dict(
            obj, now_ms=now_ms, max_bytes=self._ctx.settings.max_entry_bytes
        )
        return entry.run_id.encode("utf-8"), entry_to_json(entry)

    async def _publish_all(self, entries: Messages, letters: Messages) -> None:
        publish = self._ctx.publish
        if publish is None:
            raise ApiError(503, "unavailable", "ingest is not available: no Kafka publisher")
        kafka_up = self._ctx.kafka_up
        if kafka_up is not None and not kafka_up():
            raise ApiError(
                503, "unavailable", "Kafka is unavailable; the entries were not accepted, retry"
            )
        settings = self._ctx.settings
        sends = []
        if entries:
            sends.append(publish(settings.topic_entries, entries))
        if letters:
            sends.append(publish(settings.topic_dlq, letters))
        if not sends:
            return
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*sends, return_exceptions=True), timeout=self._timeout
            )
        except TimeoutError:
            log.warning("POST /v1/entries: Kafka did not acknowledge within %ss", self._timeout)
            raise ApiError(
                503, "unavailable", "Kafka did not acknowledge the entries in time; retry"
            ) from None
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            log.warning("POST /v1/entries: publishing failed: %r", failures[0])
            raise ApiError(
                503, "unavailable", "Kafka is unavailable; the entries were not accepted, retry"
            )

    async def post_entries(self, request: web.Request) -> web.Response:
        received_at = self._clock()
        tenant = tenant_of(request) if self._keys_configured else None
        objs = parse_body(await read_body(request))
        origin_topic = self._ctx.settings.topic_entries
        entries: Messages = []
        letters: Messages = []
        rejected: list[dict[str, Any]] = []
        kinds: list[str] = []
        for index, obj in enumerate(objs):
            try:
                entries.append(self._check(obj, tenant, received_at))
            except EntryRejected as err:
                rejected.append({"index": index, "error": err.as_dict()})
                letters.append(dead_letter_for(obj, err, origin_topic, received_at))
                kind = obj.get("kind") if isinstance(obj, dict) else None
                kinds.append(kind if isinstance(kind, str) and kind in _KINDS else "unknown")
        await self._publish_all(entries, letters)
        self._count_rejections(kinds, rejected)
        body = {"accepted": len(entries), "rejected": rejected}
        return web.json_response(body, status=202)

    def _count_rejections(self, kinds: list[str], rejected: list[dict[str, Any]]) -> None:
        m = self._metrics
        if m is None:
            return
        for kind, item in zip(kinds, rejected, strict=True):
            m.entry(kind, "rejected")
            m.dead_letter(str(item["error"]["code"]))
