"""The ground truth of user-window alerts and the checks of published ones, shared by
test_user_alerts_e2e.py and test_default_rules_e2e.py.

Written from the contract (CONTRACT §4, §7): UTC windows from ``datetime``, costs from
``ground_truth.entry_cost`` or the producer's ``costUsd``; only ``alert_id`` is imported.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import yaml

from processor.domain.alerts import alert_id
from processor.domain.pricing import load_catalog
from tests.integration import alert_checks
from tests.integration.alert_checks import (
    ALERT_FIELDS,
    PLAIN_DECIMAL,
    TENANT,
)
from tests.integration.ground_truth import (
    Entry,
    entry_cost,
    entry_tokens,
    usd,
    utc_ms,
    window_of,
)
from tests.integration.user_streams import (
    Published,
)

HOUR_MS = 3_600_000
DAY_MS = 86_400_000


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


# --- 1. many users, two workers, three SIGKILLs ---------------------------------------------


def assert_exactly_once(got: Sequence[Published], expected: dict[str, Expected]) -> None:
    def describe(aid: str) -> str:
        x = expected[aid]
        return f"{x.rule.name} {x.user} {x.kind} {x.start} {x.level}"

    alert_checks.assert_exactly_once(got, list(expected), describe)
