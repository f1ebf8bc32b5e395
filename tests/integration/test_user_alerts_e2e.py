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

The ground truth is written from the contract: UTC windows from ``datetime``, costs from
``ground_truth.entry_cost`` (the catalog's public prices) or the producer's ``costUsd``;
only ``processor.domain.alerts.alert_id`` (the deterministic id) is imported.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import yaml

from processor.consumer import ingest_group_id
from processor.domain.alerts import alert_id
from processor.domain.pricing import load_catalog
from processor.settings import Settings
from processor.stack.ports import pick_port
from processor.store.keys import Keys
from processor.store.runs import ALERTS_OUTBOX
from tests.integration.ground_truth import (
    Entry,
    entry_cost,
    entry_tokens,
    messages,
    usd,
    utc_ms,
    wait_caught_up,
    with_duplicates,
)
from tests.integration.harness import WorkerProcess, create_topics, produce, wait_for
from tests.integration.redis_control import PacedProducer
from tests.integration.user_streams import (
    Published,
    applied_count,
    decoding_redis,
    read_committed,
    wait_applied,
    window_settings,
)

TENANT = "default"
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
LEVELS = ("warning", "critical")
ALERT_FIELDS = {
    "alertId", "rule", "level", "tenantId", "subject", "window", "metric",
    "observed", "threshold", "triggeredAt", "entryId", "message",
}  # fmt: skip
PLAIN_DECIMAL = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]*[1-9])?")
QUIET_S = 3.0  # after the outbox is empty: nothing more may appear on the topic meanwhile
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- rules, as the test reads its own file ------------------------------------------------


@dataclass(frozen=True)
class Rule:
    name: str
    window: str
    metric: str
    thresholds: dict[str, str]  # level -> the file's string
    min_calls: int = 1


def write_rules(path: Path, text: str) -> list[Rule]:
    path.write_text(text, encoding="utf-8")
    doc = yaml.safe_load(text)
    return [
        Rule(r["name"], r["window"], r["metric"], dict(r["thresholds"]), int(r.get("minCalls", 1)))
        for r in doc["rules"]
    ]


RULES_YAML = """\
rules:
  - name: daily-spend
    subject: user
    window: day
    metric: costUsd
    thresholds: {warning: "10", critical: "20"}
  - name: hourly-tokens
    subject: user
    window: hour
    metric: tokens
    thresholds: {warning: "30000", critical: "50000"}
  - name: monthly-spend
    subject: user
    window: month
    metric: costUsd
    thresholds: {warning: "30", critical: "45"}
  - name: daily-tool-failures
    subject: user
    window: day
    metric: toolFailureRate
    minCalls: 6
    thresholds: {warning: "0.3", critical: "0.6"}
"""


# --- UTC windows -------------------------------------------------------------------------


def _ms(t: datetime) -> int:
    d = t - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1000 + d.microseconds // 1000


def window_of(kind: str, ts: int) -> tuple[int, int]:
    """[start, end) in epoch ms of the UTC hour, day or month holding ``ts``."""
    t = _EPOCH + timedelta(milliseconds=ts)
    if kind == "hour":
        start = t.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
    elif kind == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
    else:
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
    return _ms(start), _ms(end)


def rate_text(failed: int, total: int) -> str:
    """failed / total, half-even to 6 places, as a plain decimal string."""
    q = (Decimal(failed) / Decimal(total)).quantize(Decimal("0.000001"), ROUND_HALF_EVEN)
    return usd(q)


# --- ground truth --------------------------------------------------------------------------


WindowKey = tuple[str, str, int]  # (user, kind, start)


@dataclass
class Expected:
    """One alert that must be published, with what its message must say."""

    rule: Rule
    user: str
    kind: str
    start: int
    end: int
    level: str
    #: for toolFailureRate (order fixed by design): the entry and the observed value
    entry_id: str | None = None
    observed: str | None = None

    @property
    def alert_id(self) -> str:
        return alert_id(
            TENANT, self.rule.name, "user", self.user, self.kind, self.start, self.level
        )


class AlertTruth:
    """Which alerts a stream must give: distinct entries by id (first sighting counts),
    each window's final cost and tokens, and its tool calls in stream order."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)
        self.catalog = load_catalog(None)
        self.entries: dict[str, Entry] = {}
        self.cost: dict[str, Decimal] = {}
        self.tokens: dict[str, int] = {}
        self.windows: dict[WindowKey, list[str]] = {}  # ids in stream order

    @property
    def accepted(self) -> int:
        return len(self.entries)

    def add_all(self, stream: Sequence[Entry]) -> None:
        for e in stream:
            if e["id"] in self.entries:
                assert e == self.entries[e["id"]], "a re-sent id must carry the same body"
                continue
            self.entries[e["id"]] = e
            kind = e["kind"]
            self.cost[e["id"]] = entry_cost(e, self.catalog) if kind == "tokens" else Decimal(0)
            self.tokens[e["id"]] = entry_tokens(e)["total"] if kind == "tokens" else 0
            for w in ("hour", "day", "month"):
                start, _ = window_of(w, e["timestamp"])
                self.windows.setdefault((e["userId"], w, start), []).append(e["id"])

    def value(self, metric: str, ids: Sequence[str]) -> Decimal:
        if metric == "costUsd":
            return sum((self.cost[i] for i in ids), Decimal(0))
        return Decimal(sum(self.tokens[i] for i in ids))

    def tool_calls(self, ids: Sequence[str]) -> list[tuple[str, bool]]:
        return [
            (i, bool(self.entries[i]["success"])) for i in ids if self.entries[i]["kind"] == "tool"
        ]

    def expected(self) -> dict[str, Expected]:
        out: dict[str, Expected] = {}
        for (user, kind, start), ids in sorted(self.windows.items()):
            _, end = window_of(kind, start)
            for rule in self.rules:
                if rule.window != kind:
                    continue
                for level, text in rule.thresholds.items():
                    threshold = Decimal(text)
                    if rule.metric == "toolFailureRate":
                        found = self._rate_alert(rule, threshold, self.tool_calls(ids))
                        if found is None:
                            continue
                        entry_id, observed = found
                        x = Expected(rule, user, kind, start, end, level, entry_id, observed)
                    elif self.value(rule.metric, ids) >= threshold:
                        x = Expected(rule, user, kind, start, end, level)
                    else:
                        continue
                    out[x.alert_id] = x
        return out

    @staticmethod
    def _rate_alert(
        rule: Rule, threshold: Decimal, calls: Sequence[tuple[str, bool]]
    ) -> tuple[str, str] | None:
        """The rate level fires (entry, observed) or not, whatever the batching: the design
        makes it hold at every prefix from ``minCalls`` on, or at none."""
        holds = []
        failed = 0
        for n, (_, ok) in enumerate(calls, start=1):
            failed += 0 if ok else 1
            if n >= rule.min_calls:
                holds.append(Decimal(failed) / n >= threshold)
        assert all(holds) or not any(holds), (
            f"ambiguous rate design for {rule.name} {threshold}: {[ok for _, ok in calls]}"
        )
        if not holds or not holds[0]:
            return None
        first = calls[: rule.min_calls]
        failed = sum(1 for _, ok in first if not ok)
        return first[-1][0], rate_text(failed, rule.min_calls)


# --- the stream of the big test -------------------------------------------------------------


HEAVY = ["ana", "ben", "cy", "dee", "eve"]
LIGHT = "flo"
DAYS = ["2025-10-30", "2025-10-31"]
NEXT_MONTH = "2025-11-01T00:00:00.000Z"
BUSY_HOURS = (0, 9, 13, 23)
PER_HOUR = 25
PRICED_MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet-20241022")

#: tool call patterns (True: success); checked unambiguous by AlertTruth._rate_alert
HIGH = [False] * 6 + [True, False, False] * 4  # >= 0.6 at every prefix from 6 on
MID = [False, True] * 9  # in [0.5, 0.6) from 6 on: warning only
LOW = [True, True, True, False] * 4  # <= 0.25: nothing
FEW = [False] * 5  # 100% but below minCalls: nothing
TOOL_PLAN = {
    ("ana", 0): HIGH, ("ana", 1): HIGH,
    ("ben", 0): MID, ("ben", 1): LOW,
    ("cy", 0): FEW, ("cy", 1): HIGH,
    ("dee", 0): LOW, ("dee", 1): MID,
    ("eve", 0): HIGH, ("eve", 1): FEW,
    ("flo", 0): MID,
}  # fmt: skip


class StreamMaker:
    def __init__(self, seed: int, prefix: str) -> None:
        self.rnd = random.Random(seed)
        self.prefix = prefix
        self.count = 0

    def _base(self, user: str, ts: int, run: str, kind: str) -> Entry:
        self.count += 1
        return {
            "id": f"{self.prefix}-e{self.count}",
            "runId": run,
            "userId": user,
            "timestamp": ts,
            "kind": kind,
            "stepCount": self.rnd.randint(0, 30),
            "agentName": self.rnd.choice(("researcher", "coder")),
        }

    def tokens(
        self,
        user: str,
        ts: int,
        *,
        cost: str | None = None,
        prompt: int | None = None,
        completion: int | None = None,
        run: str | None = None,
    ) -> Entry:
        rnd = self.rnd
        run = run or f"{self.prefix}-{user}-r{rnd.randrange(4)}"
        e = self._base(user, ts, run, "tokens")
        p = prompt if prompt is not None else rnd.randint(1_000, 6_000)
        c = completion if completion is not None else rnd.randint(0, 2_000)
        e["tokens"] = {"prompt": p, "completion": c}
        if rnd.random() < 0.2 and p > 10:
            e["tokens"]["cached"] = rnd.randint(0, p // 3)
        if cost is not None:
            e["model"] = "acme-llm-9000"
            e["costUsd"] = cost
        elif rnd.random() < 0.2:
            e["model"] = rnd.choice(PRICED_MODELS)  # priced from the catalog
        else:
            e["model"] = "acme-llm-9000"
            e["costUsd"] = usd(Decimal(rnd.randint(100_000, 1_200_000)).scaleb(-6))
        return e

    def custom(self, user: str, ts: int) -> Entry:
        e = self._base(user, ts, f"{self.prefix}-{user}-r0", "custom")
        e.update(type="api_calls", name="tavily", value=1)
        return e

    def tool(self, user: str, ts: int, run: str, ok: bool) -> Entry:
        e = self._base(user, ts, run, "tool")
        e.update(toolName="web_search", durationMs=self.rnd.randint(1, 900), success=ok)
        if not ok:
            e["error"] = "timeout"
        return e

    def stream(self) -> list[Entry]:
        """Day by day: the day's entries shuffled, each user-day's tool calls in their fixed
        order (one run, so one partition) at random places among them."""
        rnd = self.rnd
        out: list[Entry] = []
        for di, day in enumerate(DAYS):
            d0 = utc_ms(f"{day}T00:00:00.000Z")
            plain: list[Entry] = []
            for user in HEAVY:
                plain.append(self.tokens(user, d0))  # the day's first millisecond
                plain.append(self.tokens(user, d0 + DAY_MS - 1))  # and its last
                for h in BUSY_HOURS:
                    for _ in range(PER_HOUR):
                        ts = d0 + h * HOUR_MS + rnd.randrange(HOUR_MS)
                        plain.append(self.tokens(user, ts))
                    plain.append(self.custom(user, d0 + h * HOUR_MS + rnd.randrange(HOUR_MS)))
                if di == len(DAYS) - 1:  # the next month's first millisecond: small
                    plain.append(self.tokens(user, utc_ms(NEXT_MONTH), cost="0.5"))
            # the light user: day 1 spend 15 (warning only), 45,000 tokens in one hour
            # (warning only); day 2 spend 4 and 18,000 tokens (nothing); month 19 (nothing)
            n, price = (10, "1.5") if di == 0 else (4, "1")
            for i in range(n):
                plain.append(
                    self.tokens(
                        LIGHT, d0 + 10 * HOUR_MS + i * 1000, cost=price, prompt=4000, completion=500
                    )
                )
            keyed = [(rnd.random(), e) for e in plain]
            for user in [*HEAVY, LIGHT]:
                pattern = TOOL_PLAN.get((user, di))
                if pattern is None:
                    continue
                run = f"{self.prefix}-{user}-tools-{day}"
                places = sorted(rnd.random() for _ in pattern)
                for i, (place, ok) in enumerate(zip(places, pattern, strict=True)):
                    ts = d0 + 11 * HOUR_MS + i * 60_000
                    keyed.append((place, self.tool(user, ts, run, ok)))
            keyed.sort(key=lambda pair: pair[0])
            out.extend(e for _, e in keyed)
        return out


# --- reading what was published ---------------------------------------------------------------


def alerts_outbox(settings: Settings) -> str:
    return Keys(settings.key_prefix).outbox(ALERTS_OUTBOX)


async def published_alerts(
    redis: aioredis.Redis, settings: Settings, workers: Sequence[WorkerProcess]
) -> list[Published]:
    """Once the alerts outbox is empty (each alert decided has been published), every
    committed message of the notifications topic (by partition and offset); then nothing
    more may appear for ``QUIET_S`` (the outbox stays empty, a second read gives the same
    messages)."""
    key = alerts_outbox(settings)

    async def empty() -> bool:
        return int(await redis.xlen(key)) == 0

    try:
        await wait_for(empty, timeout=60, interval=0.1, message="alerts outbox drained")
    except TimeoutError as exc:
        left = int(await redis.xlen(key))
        logs = "\n".join(w.log_tail() for w in workers)
        raise AssertionError(
            f"{exc}: {left} alert(s) still in {key} (is the leader relaying it to "
            f"{settings.topic_notifications}?)\n{logs}"
        ) from None
    first = by_index(await read_committed(settings, settings.topic_notifications))
    deadline = time.monotonic() + QUIET_S
    while time.monotonic() < deadline:
        assert int(await redis.xlen(key)) == 0, "new alerts decided after the stream was applied"
        await asyncio.sleep(0.2)
    second = by_index(await read_committed(settings, settings.topic_notifications))
    assert second == first, (
        f"the topic changed after the outbox was empty: {len(first)} then {len(second)} messages"
    )
    return first


def check_common(m: Published, x: Expected) -> list[str]:
    """The fields that follow from the rule, subject, window and level; problems found."""
    v = m.value
    threshold = x.rule.thresholds[x.level]
    want = {
        "alertId": x.alert_id,
        "rule": x.rule.name,
        "level": x.level,
        "tenantId": TENANT,
        "subject": {"type": "user", "id": x.user},
        "window": {"kind": x.kind, "start": x.start, "end": x.end},
        "metric": x.rule.metric,
        "threshold": threshold,
    }
    problems = [f"{k}: got {v.get(k)!r}, want {w!r}" for k, w in want.items() if v.get(k) != w]
    if set(v) != ALERT_FIELDS:
        problems.append(f"fields {sorted(v)}")
    if m.key != x.user:
        problems.append(f"key {m.key!r}, want {x.user!r}")
    observed = v.get("observed")
    if not isinstance(observed, str) or not PLAIN_DECIMAL.fullmatch(observed):
        problems.append(f"observed {observed!r} is not a plain decimal string")
    elif Decimal(observed) < Decimal(threshold):
        problems.append(f"observed {observed} below threshold {threshold}")
    if not isinstance(v.get("triggeredAt"), int) or isinstance(v.get("triggeredAt"), bool):
        problems.append(f"triggeredAt {v.get('triggeredAt')!r}")
    if not isinstance(v.get("message"), str) or not v["message"]:
        problems.append(f"message {v.get('message')!r}")
    if not isinstance(v.get("entryId"), str):
        problems.append(f"entryId {v.get('entryId')!r}")
    return problems


def check_message(m: Published, x: Expected, truth: AlertTruth, span: tuple[int, int]) -> list[str]:
    """Every field of one published alert of the big test; the problems found."""
    found = check_common(m, x)
    v = m.value
    if isinstance(v.get("triggeredAt"), int) and not span[0] <= v["triggeredAt"] <= span[1]:
        found.append(f"triggeredAt {v['triggeredAt']} outside {list(span)}")
    ids = truth.windows[(x.user, x.kind, x.start)]
    eid = v.get("entryId")
    if eid not in ids:
        found.append(f"entryId {eid!r} is not an entry of this user's window")
    elif x.rule.metric == "toolFailureRate":
        # one partition, a fixed order: the entry reaching minCalls, its exact rate
        if (eid, v.get("observed")) != (x.entry_id, x.observed):
            found.append(
                f"(entryId, observed) {(eid, v.get('observed'))}, want {(x.entry_id, x.observed)}"
            )
    elif not found:
        # the entry crossed: without it the window held less than the threshold; the
        # observed value is at most the window's final value
        observed, threshold = Decimal(v["observed"]), Decimal(v["threshold"])
        mine = truth.cost[eid] if x.rule.metric == "costUsd" else Decimal(truth.tokens[eid])
        final = truth.value(x.rule.metric, ids)
        if not observed - mine < threshold <= observed <= final:
            found.append(
                f"entry {eid} (adds {mine}) did not cross: observed {observed}, "
                f"threshold {threshold}, final {final}"
            )
    return found


def assert_exactly_once(got: Sequence[Published], expected: dict[str, Expected]) -> None:
    counts = Counter(str(m.value.get("alertId")) for m in got)
    repeated = {a: n for a, n in counts.items() if n > 1}
    missing = sorted(set(expected) - set(counts))
    unexpected = sorted(set(counts) - set(expected))

    def name(aid: str) -> str:
        x = expected.get(aid)
        if x is None:
            m = next(m for m in got if m.value.get("alertId") == aid)
            return f"{aid} {json.dumps(m.value, sort_keys=True)}"
        return f"{aid} ({x.rule.name} {x.user} {x.kind} {x.start} {x.level})"

    assert not repeated and not missing and not unexpected, (
        f"{len(got)} alert messages, {len(expected)} expected; "
        f"published more than once: {[(name(a), n) for a, n in repeated.items()]}; "
        f"missing: {[name(a) for a in missing]}; unexpected: {[name(a) for a in unexpected]}"
    )


def assert_warning_first(got: Sequence[Published]) -> None:
    """Both levels of a (rule, user, window): on the user's key, warning before critical."""
    by: dict[tuple[str, str, str, int], dict[str, Published]] = {}
    for m in got:
        v = m.value
        ident = (v["rule"], v["subject"]["id"], v["window"]["kind"], v["window"]["start"])
        by.setdefault(ident, {})[v["level"]] = m
    for ident, levels in by.items():
        if len(levels) == 2:
            w, c = levels["warning"], levels["critical"]
            assert (w.partition, w.key) == (c.partition, c.key), (ident, w, c)
            assert w.offset < c.offset, f"{ident}: critical at {c.offset}, warning at {w.offset}"


async def assert_records(
    redis: aioredis.Redis, settings: Settings, got: Sequence[Published]
) -> None:
    """Each published alert is the record kept in Redis, listed in the tenant's index."""
    keys = Keys(settings.key_prefix)
    listed = set(await redis.zrange(keys.alerts(TENANT), 0, -1))
    assert listed == {m.value["alertId"] for m in got}, (
        f"alerts index: {len(listed)} ids; published: {len(got)}"
    )
    for m in got:
        raw = await redis.get(keys.alert(TENANT, m.value["alertId"]))
        assert raw is not None and json.loads(raw) == m.value, (m.value, raw)


def by_index(got: Sequence[Published]) -> list[Published]:
    return sorted(got, key=lambda m: (m.partition, m.offset))


# --- 1. many users, two workers, three SIGKILLs ---------------------------------------------


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

    await create_topics(settings)
    redis = decoding_redis(settings)
    a = WorkerProcess(settings, tmp_path / "worker-a.log")
    b = WorkerProcess(other, tmp_path / "worker-b.log")
    workers = [a, b]
    producer: PacedProducer | None = None
    started_ms = int(time.time() * 1000)
    try:
        a.start()
        b.start()
        await a.wait_ready(timeout=90)
        await b.wait_ready(timeout=90)
        # bursts of BURST messages at about RATE a second, paused while a worker is down
        # (so that each kill lands with part of the stream still to come)
        producer = PacedProducer(
            settings, settings.topic_entries, messages(stream), rate=RATE, chunk=BURST
        ).start()
        kills = []
        for share, victim_index in KILLS:
            victim = workers[victim_index]
            target = int(share * truth.accepted)
            await wait_applied(redis, settings, target, timeout=120, workers=workers)
            victim.kill(signal.SIGKILL)
            assert victim.returncode == -signal.SIGKILL, victim.log_tail()
            await producer.pause()
            at_kill = await applied_count(redis, settings)
            kills.append((victim_index, at_kill, producer.acked))
            print(
                f"kill worker {'ab'[victim_index]}: {at_kill}/{truth.accepted} entries applied, "
                f"{producer.acked}/{producer.total} messages produced"
            )
            victim.start()
            await victim.wait_ready(timeout=90)
            producer.resume()
        # the premise: three different moments, each with part of the stream still to come
        assert len({k[1] for k in kills}) == len(KILLS), kills
        assert all(acked < producer.total for _, _, acked in kills), kills
        await producer.wait_done(timeout=120)

        await wait_applied(redis, settings, truth.accepted, timeout=120, workers=workers)
        await wait_caught_up(settings, ingest_group_id(settings), timeout=120)
        assert await applied_count(redis, settings) == truth.accepted
        got = await published_alerts(redis, settings, workers)
        done_ms = int(time.time() * 1000)

        assert_exactly_once(got, expected)
        problems = []
        for m in got:
            found = check_message(m, expected[m.value["alertId"]], truth, (started_ms, done_ms))
            if found:
                problems.append(f"{json.dumps(m.value, sort_keys=True)}: {'; '.join(found)}")
        assert not problems, f"{len(problems)} wrong alert message(s):\n" + "\n".join(problems[:20])
        assert_warning_first(got)
        await assert_records(redis, settings, got)
    finally:
        if producer is not None:
            await producer.stop()
        await asyncio.gather(*(w.aterminate(timeout=20) for w in workers))
        await redis.aclose()


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
