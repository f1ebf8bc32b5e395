"""Every invalid example vector becomes a dead letter (CONTRACT §5); valid traffic continues.

The raw bytes of each ``schemas/examples/invalid/<code>--<what>.json`` go to the entries
topic, plus a tombstone (null value) and messages with a null key and a non-UTF-8 key. Each
must appear once on the DLQ with the code (and field) of ``expected.json``, the original
bytes (UTF-8 text, or base64 with ``valueEncoding``), its topic/partition/offset, and its
key; ``usage_dead_letters_total{reason}`` must count them. Valid entries sent in between
and afterwards (the valid vectors, re-keyed so their ids differ) must reach the rollups.
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from processor.consumer import ingest_group_id
from processor.domain.pricing import load_catalog
from processor.settings import Settings
from tests.integration.ground_truth import (
    Entry,
    GroundTruth,
    check_all_runs,
    fetch_metrics,
    metric_sum,
    wait_caught_up,
)
from tests.integration.harness import (
    REPO_ROOT,
    WorkerProcess,
    consume_all,
    create_topics,
    produce,
    wait_for,
)

EXAMPLES = REPO_ROOT / "schemas" / "examples"
#: The vectors' fixed clock (schemas/examples/README.md); one vector is relative to it.
VECTOR_NOW_MS = 1_795_392_000_000
DAY_MS = 86_400_000
JUST_OVER_24H = "timestamp--just-over-24h-ahead.json"


def invalid_vectors() -> list[tuple[str, bytes, dict[str, Any]]]:
    """(file name, raw bytes, expected {code, field}) of every invalid vector.

    ``timestamp--just-over-24h-ahead`` is checked against the vectors' fixed clock; a live
    worker uses the real clock, so its timestamp is moved to real now + 24 h + 10 min
    (same meaning, same bytes otherwise).
    """
    expected = json.loads((EXAMPLES / "expected.json").read_text("utf-8"))
    files = sorted((EXAMPLES / "invalid").glob("*.json"))
    assert {f.name for f in files} == set(expected), "expected.json and the vectors differ"
    out = []
    for f in files:
        raw = f.read_bytes()
        assert expected[f.name]["code"] == f.name.split("--")[0]
        if f.name == JUST_OVER_24H:
            old = str(VECTOR_NOW_MS + DAY_MS + 1).encode()
            assert raw.count(old) == 1
            now = time.time_ns() // 1_000_000
            raw = raw.replace(old, str(now + DAY_MS + 600_000).encode())
        out.append((f.name, raw, expected[f.name]))
    return out


def valid_entries(prefix: str) -> tuple[list[tuple[bytes | None, bytes]], list[Entry]]:
    """Messages of the valid vectors, and the modelled (tenant ``default``) entries.

    The vectors all use id ``e-0001``: each gets its own id here (and the default-tenant
    ones a run per kind) and is re-encoded, except the 65,536-byte one, sent byte for byte
    as the largest accepted size. Other tenants' vectors are sent as they are (accepted,
    but invisible to the key-less API, so not modelled).
    """
    msgs: list[tuple[bytes | None, bytes]] = []
    modelled: list[Entry] = []
    for f in sorted((EXAMPLES / "valid").glob("*.json")):
        raw = f.read_bytes()
        entry: Entry = json.loads(raw)
        if f.stem == "tool-exactly-64kib":
            assert len(raw) == 65_536
            msgs.append((entry["runId"].encode(), raw))
            modelled.append(entry)
            continue
        if entry.get("tenantId", "default") != "default":
            msgs.append((entry["runId"].encode(), raw))
            continue
        entry["id"] = f"{prefix}-{f.stem}"
        if entry["runId"] == "run-1":
            entry["runId"] = f"{prefix}-valid-{entry['kind']}"
        body = json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode()
        msgs.append((entry["runId"].encode(), body))
        modelled.append(entry)
    return msgs, modelled


async def test_invalid_vectors_become_dead_letters_and_valid_entries_flow(
    settings: Settings, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    p = settings.app_id
    vectors = invalid_vectors()
    bad: list[tuple[str, bytes | None, bytes | None, dict[str, Any]]] = [
        (name, f"{p}-bad-{i}".encode(), raw, exp) for i, (name, raw, exp) in enumerate(vectors)
    ]
    # a null key, a key that is not UTF-8, a tombstone (null value)
    name0, _, raw0, exp0 = bad[0]
    bad[0] = (name0, None, raw0, exp0)
    name1, _, raw1, exp1 = bad[1]
    bad[1] = (name1, b"\xff\xfe-key", raw1, exp1)
    bad.append(("tombstone", f"{p}-tomb".encode(), None, {"code": "json", "field": None}))

    valid_msgs, valid_modelled = valid_entries(p)
    half = len(valid_msgs) // 2
    truth = GroundTruth(load_catalog(None))
    truth.add_all(valid_modelled)

    await create_topics(settings)
    async with (
        WorkerProcess(settings, tmp_path / "worker.log") as worker,
        httpx.AsyncClient(base_url=worker.url, timeout=10.0) as http,
    ):
        before_ms = time.time_ns() // 1_000_000
        # invalid and valid mixed in the same batches, then more valid ones afterwards
        first: list[tuple[bytes | None, bytes | None]] = [(k, v) for _, k, v, _ in bad]
        sent = await produce(settings, settings.topic_entries, [*first, *valid_msgs[:half]])  # type: ignore[list-item]
        await wait_caught_up(settings, ingest_group_id(settings), timeout=60)
        await produce(settings, settings.topic_entries, valid_msgs[half:])
        await wait_caught_up(settings, ingest_group_id(settings), timeout=60)
        after_ms = time.time_ns() // 1_000_000

        letters = await consume_all(settings, settings.topic_dlq, len(bad) + 1, timeout=15)
        assert len(letters) == len(bad), [r.value[:200] for r in letters]
        by_origin: dict[tuple[int, int], Any] = {}
        for record in letters:
            doc = json.loads(record.value)
            by_origin[(doc["partition"], doc["offset"])] = (record, doc)
        assert len(by_origin) == len(bad), "one dead letter per rejected message"

        for (name, key, raw, exp), meta in zip(bad, sent, strict=False):
            record, doc = by_origin[(meta.partition, meta.offset)]
            assert record.key == key, name
            assert doc["error"]["code"] == exp["code"], (name, doc["error"])
            if "field" in exp:
                assert doc["error"]["field"] == exp["field"], (name, doc["error"])
            assert isinstance(doc["error"]["message"], str) and doc["error"]["message"], name
            assert doc["topic"] == settings.topic_entries, name
            assert before_ms <= doc["receivedAt"] <= after_ms, name
            original = raw if raw is not None else b""
            try:
                text = original.decode("utf-8")
            except UnicodeDecodeError:
                assert doc.get("valueEncoding") == "base64", name
                assert base64.b64decode(doc["value"], validate=True) == original, name
            else:
                assert "valueEncoding" not in doc, name
                assert doc["value"] == text, name
            if key is None:
                assert doc["key"] is None
            elif key == b"\xff\xfe-key":
                assert doc.get("keyEncoding") == "base64"
                assert base64.b64decode(doc["key"]) == key
            else:
                assert doc["key"] == key.decode() and "keyEncoding" not in doc, name

        expected_reasons = Counter(exp["code"] for _, _, _, exp in bad)
        assert set(expected_reasons) == {"json", "schema", "invariant", "too_large", "timestamp"}

        async def counted() -> bool:
            m = await fetch_metrics(http)
            return metric_sum(m, "usage_entries_total", outcome="accepted") == len(valid_msgs)

        await wait_for(counted, timeout=30, message="valid entries in the metrics")
        m = await fetch_metrics(http)
        for reason, n in expected_reasons.items():
            assert metric_sum(m, "usage_dead_letters_total", reason=reason) == n, reason
        assert metric_sum(m, "usage_dead_letters_total") == len(bad)
        assert metric_sum(m, "usage_entries_total", outcome="rejected") == len(bad)
        assert metric_sum(m, "usage_entries_total", outcome="duplicate") == 0

        await check_all_runs(http, truth)


async def test_huge_message_of_control_bytes_is_dead_lettered(
    settings: Settings, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    """A 300 KiB value of U+0001 (valid UTF-8, far under the broker's 1 MiB limit) must be
    dead-lettered like any other too_large message, and the entry behind it applied."""
    p = settings.app_id
    huge = b"\x01" * (300 * 1024)
    ok: Entry = {
        "id": f"{p}-after-huge",
        "kind": "custom",
        "runId": f"{p}-after",
        "userId": "u",
        "timestamp": 1_763_000_000_000,
        "type": "api_calls",
        "name": "tavily",
        "value": 1,
    }
    truth = GroundTruth(load_catalog(None))
    truth.add(ok)
    await create_topics(settings)
    key = f"{p}-after".encode()
    await produce(settings, settings.topic_entries, [(key, huge), (key, json.dumps(ok).encode())])
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        await worker.wait_ready(timeout=90)
        await wait_caught_up(settings, ingest_group_id(settings), timeout=20)
        letters = await consume_all(settings, settings.topic_dlq, 1, timeout=15)
        assert len(letters) == 1
        doc = json.loads(letters[0].value)
        assert doc["error"]["code"] == "too_large"
        assert doc["value"].encode() == huge
        async with httpx.AsyncClient(base_url=worker.url, timeout=10.0) as http:
            await check_all_runs(http, truth)
    finally:
        await worker.aterminate(timeout=5)  # SIGKILL after 5 s: a stalled worker ignores TERM
