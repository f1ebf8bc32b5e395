"""Alerts on users' windows end to end: real workers, Kafka and Redis (CONTRACT §4, §7).

- A rules file (``USAGE_ALERT_RULES_FILE``) with a daily spend, an hourly token, a monthly
  spend and a daily tool-failure-rate rule (with ``minCalls``); a stream over several users
  and two days (plus edge entries of the next month) that crosses every threshold many
  times over, 10% re-sent ids, produced in bursts to TWO workers of one group, one of them
  SIGKILLed at three moments and restarted each time. ``usage.notifications`` read as a
  ``read_committed`` consumer once the alerts outbox is empty: exactly one message per
  (rule, user, window, level), compared with a ground truth computed here, every field
  checked, warning before critical on the user's key.
- One user, entries sent one at a time in one run: each alert names exactly the entry
  that crossed and the cumulative value right after it.
- ``toolFailureRate`` with ``minCalls``: nothing below ``minCalls`` even at 100% failure,
  then exactly one alert per level once it is reached with the rate at its threshold.

The ground truth (user_alert_truth.py) is written from the contract: UTC windows from
``datetime``, costs from ``ground_truth.entry_cost`` (the catalog's public prices) or the
producer's ``costUsd``; only ``processor.domain.alerts.alert_id`` (the deterministic id) is
imported.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from processor.domain.alerts import alert_id
from processor.domain.pricing import load_catalog
from processor.settings import Settings
from processor.stack.ports import pick_port
from processor.store.keys import Keys
from tests.integration.alert_checks import (
    ALERT_FIELDS,
    LEVELS,
    TENANT,
    assert_records,
    by_index,
    published_alerts,
    two_workers_with_kills,
)
from tests.integration.ground_truth import (
    Entry,
    entry_cost,
    messages,
    utc_ms,
    window_of,
    with_duplicates,
)
from tests.integration.harness import WorkerProcess, create_topics, produce
from tests.integration.user_alert_truth import (
    BUSY_HOURS,
    DAY_MS,
    HEAVY,
    HOUR_MS,
    NEXT_MONTH,
    RULES_YAML,
    AlertTruth,
    StreamMaker,
    assert_exactly_once,
    assert_warning_first,
    check_message,
    write_rules,
)
from tests.integration.user_streams import (
    Published,
    decoding_redis,
    wait_applied,
    window_settings,
)

BURST = 50  # messages per burst
RATE = 150.0  # messages per second
#: (share of the distinct entries applied, index of the worker SIGKILLed then)
KILLS = ((0.2, 0), (0.5, 1), (0.8, 0))


async def test_alerts_exactly_once_with_two_workers_and_sigkills(
    settings: Settings, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    rules_file = tmp_path / "alert-rules.yaml"
    rules = write_rules(rules_file, RULES_YAML)
    settings = window_settings(
        settings,
        batch_max_entries=40,
        kafka_session_timeout_ms=6000,
        alert_rules_file=rules_file,
    )
    other = settings.model_copy(update={"api_port": pick_port()})
    maker = StreamMaker(7, settings.app_id)
    originals = maker.stream()
    stream, late = with_duplicates(originals, fraction=0.1, seed=8)
    stream += late
    truth = AlertTruth(rules)
    truth.add_all(stream)
    expected = truth.expected()

    # the premise: every rule fires both levels many times, warning alone sometimes, and
    # windows with usage stay silent (below a threshold, or below minCalls)
    per_rule = Counter((x.rule.name, x.level) for x in expected.values())
    for rule in rules:
        for level in LEVELS:
            assert per_rule[(rule.name, level)] >= 3, (rule.name, level, per_rule)
    levels_of: dict[tuple[str, str, str, int], set[str]] = {}
    for x in expected.values():
        levels_of.setdefault((x.rule.name, x.user, x.kind, x.start), set()).add(x.level)
    alone = Counter(ident[0] for ident, lv in levels_of.items() if lv == {"warning"})
    assert alone["daily-spend"] and alone["hourly-tokens"] and alone["daily-tool-failures"], alone
    silent = [w for w in truth.windows if not any(w == ident[1:] for ident in levels_of)]
    assert len(silent) >= 5, silent
    # each heavy user's busy hour, day and month goes far past critical
    for (user, kind, start), ids in truth.windows.items():
        if user in HEAVY and start < utc_ms(NEXT_MONTH):
            for rule in rules:
                busy = kind != "hour" or (start % DAY_MS) // HOUR_MS in BUSY_HOURS
                if rule.window == kind and rule.metric != "toolFailureRate" and busy:
                    final = truth.value(rule.metric, ids)
                    assert final >= Decimal("1.5") * Decimal(rule.thresholds["critical"]), (
                        rule,
                        user,
                        final,
                    )
    print(f"{len(stream)} messages, {truth.accepted} distinct entries, {len(expected)} alerts")

    async def check(redis: aioredis.Redis, got: list[Published], span: tuple[int, int]) -> None:
        assert_exactly_once(got, expected)
        problems = []
        for m in got:
            found = check_message(m, expected[m.value["alertId"]], truth, span)
            if found:
                problems.append(f"{json.dumps(m.value, sort_keys=True)}: {'; '.join(found)}")
        assert not problems, f"{len(problems)} wrong alert message(s):\n" + "\n".join(problems[:20])
        assert_warning_first(got)
        await assert_records(redis, settings, got)

    # bursts of BURST messages at about RATE a second, paused while a worker is down (so
    # that each kill lands with part of the stream still to come)
    await two_workers_with_kills(
        settings, other, tmp_path, stream, truth.accepted,
        rate=RATE, burst=BURST, kills=KILLS, check=check,
    )  # fmt: skip


# --- 2. one user, one entry at a time: the exact entry and value ---------------------------------


SEQUENTIAL_RULES = """\
rules:
  - name: spend
    subject: user
    window: day
    metric: costUsd
    thresholds: {warning: "1", critical: "2"}
  - name: tokens-per-hour
    subject: user
    window: hour
    metric: tokens
    thresholds: {warning: "1000", critical: "1500"}
  - name: spend-per-month
    subject: user
    window: month
    metric: costUsd
    thresholds: {warning: "4.5"}
"""

T0 = utc_ms("2025-10-20T08:00:00.000Z")


async def produce_one_by_one(
    redis: aioredis.Redis,
    settings: Settings,
    worker: WorkerProcess,
    entries: Sequence[Entry],
    fired_after: Sequence[set[str]],
) -> None:
    """Each entry alone, waiting until it is applied; then the tenant's alert index holds
    exactly the ids expected so far (decided in the same step as the entry's application)."""
    index = Keys(settings.key_prefix).alerts(TENANT)
    for n, (e, want) in enumerate(zip(entries, fired_after, strict=True), start=1):
        await produce(settings, settings.topic_entries, messages([e]))
        await wait_applied(redis, settings, n, timeout=30, workers=[worker])
        listed = set(await redis.zrange(index, 0, -1))
        assert listed == want, f"after entry {n} ({e['id']}): alerts {listed}, want {want}"


async def test_each_alert_names_the_crossing_entry_and_the_value_right_after_it(
    settings: Settings, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    rules_file = tmp_path / "alert-rules.yaml"
    rules = {r.name: r for r in write_rules(rules_file, SEQUENTIAL_RULES)}
    settings = window_settings(settings, alert_rules_file=rules_file)
    user, run = "solo", f"{settings.app_id}-solo-run"
    maker = StreamMaker(3, settings.app_id)

    def entry(ts: int, prompt: int, completion: int, cost: str | None = None) -> Entry:
        e = maker.tokens(user, ts, cost=cost or "0", prompt=prompt, completion=completion, run=run)
        e["tokens"] = {"prompt": prompt, "completion": completion}
        if cost is None:  # priced from the catalog
            del e["costUsd"]
            e["model"] = "gpt-4o-mini"
        return e

    entries = [
        entry(T0 + 1, 300, 100, "0.4"),  # 0.4, 400
        entry(T0 + 2, 300, 100, "0.4"),  # 0.8, 800
        entry(T0 + 3, 150, 50, "0.4"),  # 1.2 (spend warning), 1000 (tokens warning, equal)
        entry(T0 + 4, 80, 20),  # priced: 1.2 + its cost, 1100
        entry(T0 + 5, 300, 100, "0.799976"),  # 2 exactly (spend critical), 1500 (critical)
        entry(T0 + 6, 10, 0, "2.5"),  # month 4.5 exactly (month warning)
        entry(T0 + HOUR_MS, 4000, 1000, "0.25"),  # next hour: 5000, both levels at once
        entry(T0 + HOUR_MS + 1, 1, 1, "1"),  # nothing new
    ]
    catalog = load_catalog(None)
    costs = [entry_cost(e, catalog) for e in entries]
    assert sum(costs[:5], Decimal(0)) == 2, costs  # the priced entry's cost is what it is
    assert costs[3] == Decimal("0.000024"), costs[3]
    hour0, _ = window_of("hour", T0)
    day0, day_end = window_of("day", T0)
    month0, month_end = window_of("month", T0)
    hour1 = hour0 + HOUR_MS

    def want(
        rule: str, kind: str, start: int, end: int, level: str, at: int, observed: str
    ) -> dict[str, Any]:
        r = rules[rule]
        return {
            "alertId": alert_id(TENANT, rule, "user", user, kind, start, level),
            "rule": rule,
            "level": level,
            "tenantId": TENANT,
            "subject": {"type": "user", "id": user},
            "window": {"kind": kind, "start": start, "end": end},
            "metric": r.metric,
            "observed": observed,
            "threshold": r.thresholds[level],
            "entryId": entries[at]["id"],
        }

    wanted = [
        want("spend", "day", day0, day_end, "warning", 2, "1.2"),
        want("tokens-per-hour", "hour", hour0, hour0 + HOUR_MS, "warning", 2, "1000"),
        want("spend", "day", day0, day_end, "critical", 4, "2"),
        want("tokens-per-hour", "hour", hour0, hour0 + HOUR_MS, "critical", 4, "1500"),
        want("spend-per-month", "month", month0, month_end, "warning", 5, "4.5"),
        want("tokens-per-hour", "hour", hour1, hour1 + HOUR_MS, "warning", 6, "5000"),
        want("tokens-per-hour", "hour", hour1, hour1 + HOUR_MS, "critical", 6, "5000"),
    ]
    fired_after: list[set[str]] = []
    for i in range(len(entries)):
        so_far = {e["id"] for e in entries[: i + 1]}
        fired_after.append({w["alertId"] for w in wanted if w["entryId"] in so_far})

    await create_topics(settings)
    redis = decoding_redis(settings)
    try:
        async with WorkerProcess(settings, tmp_path / "worker.log") as worker:
            started_ms = int(time.time() * 1000)
            await produce_one_by_one(redis, settings, worker, entries, fired_after)
            got = by_index(await published_alerts(redis, settings, [worker]))
            done_ms = int(time.time() * 1000)
        assert len({m.partition for m in got}) <= 1, "one user: one key, one partition"
        seen = [{k: v for k, v in m.value.items() if k not in ("triggeredAt", "message")}
                for m in got]  # fmt: skip
        # topic order: by the entry that fired them (each entry was its own step); within
        # one step, warning before critical
        assert sorted(seen, key=lambda v: v["alertId"]) == sorted(
            wanted, key=lambda v: v["alertId"]
        ), json.dumps(seen, indent=1)
        position = {e["id"]: i for i, e in enumerate(entries)}
        order = [(position[v["entryId"]], v["rule"], v["level"]) for v in seen]
        assert [o[0] for o in order] == sorted(o[0] for o in order), order
        for m in got:
            assert m.key == user, m
            assert set(m.value) == ALERT_FIELDS, m.value
            assert started_ms <= m.value["triggeredAt"] <= done_ms, m.value
            assert isinstance(m.value["message"], str) and m.value["message"], m.value
        assert_warning_first(got)
        await assert_records(redis, settings, got)
    finally:
        await redis.aclose()


# --- 3. toolFailureRate with minCalls -----------------------------------------------------------


RATE_RULES = """\
rules:
  - name: tool-failures
    subject: user
    window: day
    metric: toolFailureRate
    minCalls: 5
    thresholds: {warning: "0.5", critical: "0.9"}
"""


async def test_failure_rate_waits_for_min_calls_then_fires_once_per_level(
    settings: Settings, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    rules_file = tmp_path / "alert-rules.yaml"
    (rule,) = write_rules(rules_file, RATE_RULES)
    settings = window_settings(settings, alert_rules_file=rules_file)
    maker = StreamMaker(5, settings.app_id)
    run, other_run = f"{settings.app_id}-rate-run", f"{settings.app_id}-rate-other"
    # u: 4 failures (100%, below minCalls 5: nothing), a success (4/5 = 0.8: warning),
    # 5 failures (9/10 = 0.9 at the last one: critical; 5/6 .. 8/9 stay below 0.9), more
    # failures (nothing new); "few": 4 failures only, never
    pattern = [False] * 4 + [True] + [False] * 7
    entries = [maker.tool("u", T0 + i * 1000, run, ok) for i, ok in enumerate(pattern)]
    entries[4:4] = [maker.tool("few", T0 + i, other_run, False) for i in range(4)]
    day0, day_end = window_of("day", T0)
    u_calls = [e for e in entries if e["userId"] == "u"]
    warning_at, critical_at = u_calls[4]["id"], u_calls[9]["id"]

    def aid(user: str, level: str) -> str:
        return alert_id(TENANT, rule.name, "user", user, "day", day0, level)

    fired_after = []
    fired: set[str] = set()
    for e in entries:
        if e["id"] == warning_at:
            fired.add(aid("u", "warning"))
        if e["id"] == critical_at:
            fired.add(aid("u", "critical"))
        fired_after.append(set(fired))

    await create_topics(settings)
    redis = decoding_redis(settings)
    try:
        async with WorkerProcess(settings, tmp_path / "worker.log") as worker:
            await produce_one_by_one(redis, settings, worker, entries, fired_after)
            got = by_index(await published_alerts(redis, settings, [worker]))
        common = {
            "rule": "tool-failures",
            "tenantId": TENANT,
            "subject": {"type": "user", "id": "u"},
            "window": {"kind": "day", "start": day0, "end": day_end},
            "metric": "toolFailureRate",
        }
        seen = [{k: v for k, v in m.value.items() if k not in ("triggeredAt", "message")}
                for m in got]  # fmt: skip
        assert seen == [
            common | {"alertId": aid("u", "warning"), "level": "warning", "threshold": "0.5",
                      "observed": "0.8", "entryId": warning_at},
            common | {"alertId": aid("u", "critical"), "level": "critical", "threshold": "0.9",
                      "observed": "0.9", "entryId": critical_at},
        ], json.dumps(seen, indent=1)  # fmt: skip
        for m in got:
            assert m.key == "u" and set(m.value) == ALERT_FIELDS, m
        await assert_records(redis, settings, got)
    finally:
        await redis.aclose()
