"""Alerts of user windows decided in the batch step, against a real redis-server.

Each (rule, user, window, level) fires once, named after the entry whose application
made it hold, with the alert record and its outbox message written in the same step.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from redis.asyncio import Redis

from processor.domain.alert_rules import AlertRule
from processor.domain.alerts import alert_id
from processor.domain.windows import DAY_MS, Retention
from processor.store.keys import Keys
from processor.store.runs import ALERTS_OUTBOX, RunStore
from tests.unit.api_support import tokens, tool

USD = 10**12
DAY0 = 1_733_011_200_000  # 2024-12-01T00:00:00Z
NOW = DAY0 + 3 * DAY_MS
KEEP = Retention(hour_s=100 * 365 * 86400, day_s=100 * 365 * 86400)

SPEND = AlertRule("spend", "user", "day", "costUsd", Decimal("1"), Decimal("2"))
TOKENS = AlertRule("hourly-tokens", "user", "hour", "tokens", None, Decimal("1000"))
FAILS = AlertRule("tool-failures", "user", "day", "toolFailureRate", Decimal("0.5"), None, 4)


def store(redis: Redis, prefix: str, *rules: AlertRule) -> RunStore:
    return RunStore(
        redis,
        Keys(prefix),
        dedup_ttl_s=3600,
        entry_ttl_s=3600,
        retention=KEEP,
        rules=rules,
        clock=lambda: NOW / 1000,
    )


async def alerts(redis: Redis, prefix: str) -> list[dict[str, Any]]:
    rows = await redis.xrange(Keys(prefix).outbox(ALERTS_OUTBOX))
    return [json.loads(fields["v"]) for _, fields in rows]


async def test_each_level_fires_once_named_after_the_entry_that_crossed(
    redis: Redis, prefix: str
) -> None:
    s = store(redis, prefix, SPEND)
    batch = [
        tokens("r1", DAY0 + 1, "m", 10, 5, USD * 6 // 10, id="e1", user="alice"),
        tokens("r2", DAY0 + 2, "m", 10, 5, USD * 6 // 10, id="e2", user="alice"),
        tokens("r1", DAY0 + 3, "m", 10, 5, USD, id="e3", user="alice"),
        tokens("r3", DAY0 + 4, "m", 10, 5, USD * 5, id="b1", user="bob"),
    ]
    await s.apply(batch)
    got = await alerts(redis, prefix)
    alice = [a for a in got if a["subject"]["id"] == "alice"]
    assert [(a["level"], a["entryId"], a["observed"]) for a in alice] == [
        ("warning", "e2", "1.2"),
        ("critical", "e3", "2.2"),
    ]
    bob = [a for a in got if a["subject"]["id"] == "bob"]
    assert [(a["level"], a["entryId"], a["observed"]) for a in bob] == [
        ("warning", "b1", "5"),
        ("critical", "b1", "5"),
    ]
    first = alice[0]
    assert first == {
        "alertId": alert_id("default", "spend", "user", "alice", "day", DAY0, "warning"),
        "rule": "spend",
        "level": "warning",
        "tenantId": "default",
        "subject": {"type": "user", "id": "alice"},
        "window": {"kind": "day", "start": DAY0, "end": DAY0 + DAY_MS},
        "metric": "costUsd",
        "observed": "1.2",
        "threshold": "1",
        "triggeredAt": NOW,
        "entryId": "e2",
        "message": first["message"],
    }
    record = await redis.get(Keys(prefix).alert("default", first["alertId"]))
    assert record is not None and json.loads(record) == first

    # re-sent, more usage the same day, another worker: nothing fires again
    await s.apply(batch)
    other = store(redis, prefix, SPEND)
    await other.apply([tokens("r1", DAY0 + 9, "m", 1, 1, USD, id="e4", user="alice")])
    assert len(await alerts(redis, prefix)) == 4
    # the next day is another window
    await other.apply([tokens("r1", DAY0 + DAY_MS, "m", 1, 1, USD * 3, id="e5", user="alice")])
    assert [a["level"] for a in (await alerts(redis, prefix))[4:]] == ["warning", "critical"]


async def test_tokens_per_hour_and_a_failure_rate_with_min_calls(redis: Redis, prefix: str) -> None:
    s = store(redis, prefix, TOKENS, FAILS)
    await s.apply([tokens("r1", DAY0 + 10, "m", 600, 300, 1, id="t1", user="u")])
    await s.apply([tokens("r1", DAY0 + 11, "m", 60, 40, 1, id="t2", user="u")])
    got = await alerts(redis, prefix)
    assert [(a["rule"], a["level"], a["entryId"], a["observed"]) for a in got] == [
        ("hourly-tokens", "critical", "t2", "1000")
    ]
    # three failures out of three calls: below minCalls (4), nothing
    await s.apply(
        [tool("r1", DAY0 + 20 + i, "x", False, 1.0, id=f"f{i}", user="u") for i in range(3)]
    )
    assert len(await alerts(redis, prefix)) == 1
    # the fourth call reaches minCalls with a rate of 3/4 >= 0.5
    await s.apply([tool("r1", DAY0 + 30, "x", True, 1.0, id="ok1", user="u")])
    got = await alerts(redis, prefix)
    assert [(a["rule"], a["entryId"], a["observed"]) for a in got[1:]] == [
        ("tool-failures", "ok1", "0.75")
    ]


async def test_no_rules_no_alert_work(redis: Redis, prefix: str) -> None:
    s = store(redis, prefix)
    await s.apply([tokens("r1", DAY0, "m", 10, 5, USD * 500, id="x", user="u")])
    assert await alerts(redis, prefix) == []
