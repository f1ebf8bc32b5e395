"""The budget check end to end: a real worker, real Kafka and Redis (CONTRACT §3.8, §3.1, §4,
§7).

A rules file (``USAGE_ALERT_RULES_FILE``) with user hour/day/month rules and run tokens,
costUsd and toolFailureRate (``minCalls``) rules, some with one level only; thresholds are
derived from the stream so that several sit exactly on an observed value (``>=``) or one
pico-dollar above it. The stream: two users' tokens entries (producer ``costUsd``, so every
cost is exact) in the current hour, earlier today, earlier this month and in the previous
month (its last millisecond included); two run trees with a shared child, a self-loop, a
cycle back to the root and a reference to a run that has no entries, every child's entries
produced and applied BEFORE its parents' ``subagent`` entries; tool calls failing in several
runs of a tree; about 10% re-sent ids, some right after the original, some at the very end.

Then ``GET /v1/budgets`` for users, roots, middle runs, leaves, unknown subjects and both at
once, every row compared field by field with a ground truth computed here from the entries
sent: UTC windows from ``datetime``, the tree walked here, ``Decimal`` and ``Fraction``
arithmetic. Nothing of the processor is imported but its settings and the consumer group id.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
import yaml

from processor.consumer import ingest_group_id
from processor.settings import Settings
from tests.integration.ground_truth import (
    Entry,
    messages,
    wait_caught_up,
    window_of,
    with_duplicates,
)
from tests.integration.harness import WorkerProcess, create_topics, produce
from tests.integration.user_streams import (
    applied_count,
    decoding_redis,
    wait_applied,
    window_settings,
)

PICO = Decimal("0.000000000001")
KINDS = ("hour", "day", "month")


# --- plain decimals and UTC windows, written here from the contract -------------------------


def plain(d: Decimal) -> str:
    """The contract's decimal string: plain notation, no trailing zeros, "0" for zero."""
    if d == 0:
        return "0"
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def same_windows(a: int, b: int) -> bool:
    return all(window_of(k, a) == window_of(k, b) for k in KINDS)


def now_ms() -> int:
    return int(time.time() * 1000)


# --- rules, as the test reads its own file ---------------------------------------------------


@dataclass(frozen=True)
class Rule:
    name: str
    subject: str
    window: str
    metric: str
    warning: Decimal | None
    critical: Decimal | None
    min_calls: int = 1


def write_rules(path: Path, rules: Sequence[dict[str, Any]]) -> list[Rule]:
    text = yaml.safe_dump({"rules": list(rules)}, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    out = []
    for r in yaml.safe_load(path.read_text(encoding="utf-8"))["rules"]:
        t = r["thresholds"]
        assert all(isinstance(v, str) for v in t.values()), t  # quoted, never YAML numbers
        out.append(
            Rule(
                r["name"],
                r["subject"],
                r["window"],
                r["metric"],
                Decimal(t["warning"]) if "warning" in t else None,
                Decimal(t["critical"]) if "critical" in t else None,
                int(r.get("minCalls", 1)),
            )
        )
    return out


# --- entries ------------------------------------------------------------------------------


class Maker:
    def __init__(self, seed: int, prefix: str) -> None:
        self.rnd = random.Random(seed)
        self.prefix = prefix
        self.n = 0

    def _base(self, kind: str, run: str, user: str, ts: int) -> Entry:
        self.n += 1
        return {
            "id": f"{self.prefix}-b{self.n}",
            "kind": kind,
            "runId": run,
            "userId": user,
            "timestamp": ts,
            "stepCount": self.n % 7,
        }

    def tokens(self, run: str, user: str, ts: int, cost: str | None = None) -> Entry:
        rnd = self.rnd
        e = self._base("tokens", run, user, ts)
        e["model"] = rnd.choice(("gpt-4o", "claude-3-5-sonnet-20241022", "acme-llm-9000"))
        prompt, completion = rnd.randint(0, 20_000), rnd.randint(0, 4_000)
        shape = rnd.random()
        if shape < 0.15:
            e["tokens"] = {"total": prompt + completion}
        elif shape < 0.3:
            e["tokens"] = {"prompt": prompt, "completion": completion, "total": prompt + completion}
        else:
            e["tokens"] = {"prompt": prompt, "completion": completion}
        if cost is None:  # whole pico-dollars, up to 12 decimals
            cost = plain(Decimal(rnd.randint(1, 3 * 10**12)) * PICO)
        e["costUsd"] = cost
        return e

    def tool(self, run: str, user: str, ts: int, ok: bool) -> Entry:
        e = self._base("tool", run, user, ts)
        e.update(toolName=self.rnd.choice(("web_search", "sql")), durationMs=12, success=ok)
        if not ok:
            e["error"] = "boom"
        return e

    def subagent(self, run: str, user: str, ts: int, child: str) -> Entry:
        e = self._base("subagent", run, user, ts)
        e.update(subAgentType="worker", subAgentRunId=child, durationMs=40.5, success=True)
        return e


# --- ground truth -------------------------------------------------------------------------------


@dataclass
class Totals:
    cost: Decimal = Decimal(0)
    tokens: int = 0
    ok: int = 0
    failed: int = 0


class Truth:
    """Distinct entries by id (a re-sent id changes nothing), and what the budgets say."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def add_all(self, stream: Sequence[Entry]) -> None:
        for e in stream:
            if e["id"] in self.entries:
                assert e == self.entries[e["id"]], "a re-sent id carries the same body"
                continue
            self.entries[e["id"]] = e

    @property
    def accepted(self) -> int:
        return len(self.entries)

    @staticmethod
    def _add(t: Totals, e: Entry) -> None:
        if e["kind"] == "tokens":
            t.cost += Decimal(e["costUsd"])
            tk = e["tokens"]
            t.tokens += tk["total"] if "total" in tk else tk["prompt"] + tk["completion"]
        elif e["kind"] == "tool":
            if e["success"]:
                t.ok += 1
            else:
                t.failed += 1

    def user(self, user: str, kind: str, now: int) -> Totals:
        window = window_of(kind, now)
        t = Totals()
        for e in self.entries.values():
            if e["userId"] == user and window_of(kind, e["timestamp"]) == window:
                self._add(t, e)
        return t

    def runs(self) -> set[str]:
        return {e["runId"] for e in self.entries.values()}

    def tree(self, root: str) -> list[str]:
        """The root and every run with entries reachable through subagent entries, each
        once, cycles cut."""
        known = self.runs()
        if root not in known:
            return []
        children: dict[str, list[str]] = {}
        for e in self.entries.values():
            if e["kind"] == "subagent":
                children.setdefault(e["runId"], []).append(e["subAgentRunId"])
        seen, order, todo = {root}, [root], [root]
        while todo:
            run = todo.pop()
            for child in children.get(run, []):
                if child not in seen and child in known:
                    seen.add(child)
                    order.append(child)
                    todo.append(child)
        return order

    def run(self, root: str) -> tuple[Totals, int | None]:
        """The tree's totals, and the window start: the root's own startedAt (§3.1)."""
        members = set(self.tree(root))
        t = Totals()
        for e in self.entries.values():
            if e["runId"] in members:
                self._add(t, e)
        own = [e["timestamp"] for e in self.entries.values() if e["runId"] == root]
        return t, (min(own) if own else None)


def observed(rule: Rule, t: Totals) -> Decimal:
    if rule.metric == "costUsd":
        return t.cost
    if rule.metric == "tokens":
        return Decimal(t.tokens)
    calls = t.ok + t.failed
    if calls == 0:
        return Decimal(0)
    return (Decimal(t.failed) / Decimal(calls)).quantize(Decimal("0.000001"), ROUND_HALF_EVEN)


def reaches(rule: Rule, t: Totals, threshold: Decimal) -> bool:
    if rule.metric == "toolFailureRate":
        calls = t.ok + t.failed
        return calls >= rule.min_calls and Fraction(t.failed, calls) >= Fraction(threshold)
    return observed(rule, t) >= threshold


def expected_row(
    rule: Rule, subject: tuple[str, str], window: dict[str, Any], t: Totals
) -> dict[str, Any]:
    level = "ok"
    if rule.warning is not None and reaches(rule, t, rule.warning):
        level = "warning"
    if rule.critical is not None and reaches(rule, t, rule.critical):
        level = "critical"
    value = observed(rule, t)
    limit = rule.critical if rule.critical is not None else rule.warning
    assert limit is not None
    return {
        "rule": rule.name,
        "subject": {"type": subject[0], "id": subject[1]},
        "window": window,
        "metric": rule.metric,
        "observed": plain(value),
        "thresholds": {
            "warning": None if rule.warning is None else plain(rule.warning),
            "critical": None if rule.critical is None else plain(rule.critical),
        },
        "level": level,
        "remaining": plain(max(Decimal(0), limit - value)),
    }


def expected_budgets(
    truth: Truth, rules: Sequence[Rule], now: int, user: str | None, run: str | None
) -> list[dict[str, Any]]:
    rows = []
    if user is not None:
        for rule in rules:
            if rule.subject == "user":
                start, end = window_of(rule.window, now)
                window = {"kind": rule.window, "start": start, "end": end}
                rows.append(
                    expected_row(rule, ("user", user), window, truth.user(user, rule.window, now))
                )
    if run is not None:
        totals, start = truth.run(run)
        for rule in rules:
            if rule.subject == "run":
                window = {"kind": "run", "start": start, "end": None}
                rows.append(expected_row(rule, ("run", run), window, totals))
    return rows


def _row_key(row: dict[str, Any]) -> tuple[str, str]:
    return row["subject"]["type"], row["rule"]


async def check_budgets(
    http: httpx.AsyncClient,
    truth: Truth,
    rules: Sequence[Rule],
    *,
    user: str | None = None,
    run: str | None = None,
) -> tuple[dict[tuple[str, str], dict[str, Any]], int]:
    """GET /v1/budgets and compare every field of every row (and ``exceeded``) with the
    ground truth at the moment of the request; re-asked if an hour boundary passed during
    the request. Returns the expected rows by (subject type, rule) and the moment used."""
    params = {k: v for k, v in (("userId", user), ("runId", run)) if v is not None}
    for _ in range(3):
        before = now_ms()
        response = await http.get("/v1/budgets", params=params)
        after = now_ms()
        if same_windows(before, after):
            break
    else:  # pragma: no cover - three hour boundaries in a row
        raise AssertionError("the clock kept crossing hour boundaries")
    assert response.status_code == 200, (params, response.status_code, response.text)
    body = response.json()
    assert set(body) == {"budgets", "exceeded"}, body
    want = expected_budgets(truth, rules, before, user, run)
    got_rows = body["budgets"]
    assert isinstance(got_rows, list), body
    got = {_row_key(r): r for r in got_rows}
    assert len(got) == len(got_rows), f"{params}: a rule listed twice: {got_rows}"
    wanted = {_row_key(r): r for r in want}
    assert sorted(got) == sorted(wanted), (params, sorted(got), sorted(wanted))
    problems = [
        f"{key}: got {got[key]}, want {wanted[key]}" for key in wanted if got[key] != wanted[key]
    ]
    assert not problems, f"{params}:\n" + "\n".join(problems)
    exceeded = any(r["level"] == "critical" for r in want)
    assert body["exceeded"] is exceeded, (params, body["exceeded"], exceeded)
    return wanted, before


# --- the test ------------------------------------------------------------------------------------


async def test_budgets_of_users_and_run_trees_match_the_ground_truth(
    settings: Settings, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    app = settings.app_id
    maker = Maker(71, app)
    rnd = maker.rnd
    ann, bob = "ann", "bob"
    now0 = now_ms()
    hour0, _ = window_of("hour", now0)
    day0, _ = window_of("day", now0)
    month0, _ = window_of("month", now0)
    prev_month0, _ = window_of("month", month0 - 1)

    def recent(spread_ms: int = 4_000) -> int:
        """A few seconds ago, but never before the current hour (the worker's clock decides
        the budget's windows; an hour boundary during the test is handled at query time)."""
        return max(hour0, now0 - rnd.randint(1, spread_ms))

    # --- users: current hour, earlier today, earlier this month, previous month --------------
    users: list[Entry] = []
    for user, n in ((ann, 14), (bob, 6)):
        run = f"{app}-{user}-solo"
        users += [maker.tokens(run, user, recent()) for _ in range(n)]
        users.append(maker.tokens(run, user, recent(), cost="0"))
        # earlier today, before this hour (there is none when the hour is 00:00 UTC)
        if hour0 > day0:
            users += [maker.tokens(run, user, ts) for ts in (day0, hour0 - 1)]
            users.append(maker.tokens(run, user, rnd.randrange(day0, hour0)))
        # earlier days of this month: count for the month only (none when today is day 1)
        if day0 > month0:
            users += [maker.tokens(run, user, ts) for ts in (month0, day0 - 1)]
            users.append(maker.tokens(run, user, rnd.randrange(month0, day0)))
        # the previous month: counts for nothing current, its very last millisecond included
        users += [maker.tokens(f"{app}-{user}-old", user, month0 - 1)]
        users += [maker.tokens(f"{app}-{user}-old", user, rnd.randrange(prev_month0, month0))]

    # --- run trees --------------------------------------------------------------------------------
    # ann: R -> A1, B1, D, ghost (no entries); A1 -> S; B1 -> S (S shared); S -> C, L;
    #      C -> R (a cycle back to the root); D -> L (L shared with S), L2, D (a self-loop)
    # bob: R2 -> X twice (two subagent entries naming the same child)
    run = {name: f"{app}-{name}" for name in ("R", "A1", "B1", "S", "C", "L", "D", "L2", "R2", "X")}
    ghost = f"{app}-ghost"
    owner = {name: (bob if name in ("R2", "X") else ann) for name in run}
    # tool calls (ok, failed) per run: R's tree 16 calls, 6 failed (0.375); counting S twice
    # would give 20 / 7 (0.35); D's subtree 3 calls, all failed, below minCalls
    calls = {"R": (2, 0), "A1": (2, 1), "B1": (2, 0), "S": (3, 1), "C": (1, 1),
             "D": (0, 1), "L": (0, 1), "L2": (0, 1), "R2": (1, 0), "X": (5, 3)}  # fmt: skip
    own: list[Entry] = []
    for name, run_id in run.items():
        user = owner[name]
        # the root's own entries come later than its children's: its startedAt differs from
        # the tree's earliest timestamp
        spread = 1_500 if name in ("R", "R2") else 6_000
        own += [maker.tokens(run_id, user, recent(spread)) for _ in range(rnd.randint(1, 3))]
        ok, failed = calls[name]
        flags = [True] * ok + [False] * failed
        rnd.shuffle(flags)
        own += [maker.tool(run_id, user, recent(spread), flag) for flag in flags]

    def links(*pairs: tuple[str, str]) -> list[Entry]:
        return [maker.subagent(run[p], owner[p], recent(1_000), run.get(c, c)) for p, c in pairs]

    # children's subagent entries first, parents' after, each level applied before the next
    levels = [
        links(("S", "C"), ("S", "L"), ("C", "R"), ("D", "L"), ("D", "L2"), ("D", "D")),
        links(("A1", "S"), ("B1", "S"), ("R2", "X")),
        links(("R", "A1"), ("R", "B1"), ("R", "D"), ("R", ghost), ("R2", "X")),
    ]
    late: list[Entry] = []
    phases: list[list[Entry]] = []
    for i, phase in enumerate([users + own, *levels]):
        stream, again = with_duplicates(phase, fraction=0.1, seed=80 + i)
        phases.append(stream)
        late += again
    assert late and sum(len(p) for p in phases) > len(users + own) + sum(map(len, levels))

    truth = Truth()
    for phase in phases:
        truth.add_all(phase)
    truth.add_all(late)
    resent = sum(len(p) for p in phases) + len(late) - truth.accepted
    assert resent >= 0.08 * truth.accepted, (resent, truth.accepted)

    # --- the rules, thresholds placed on (or a pico-dollar beside) observed values -----------
    def u(user: str, kind: str) -> Totals:
        return truth.user(user, kind, now0)

    tree_r, _ = truth.run(run["R"])
    tree_d, _ = truth.run(run["D"])
    assert u(bob, "hour").tokens < u(ann, "hour").tokens
    assert u(bob, "day").cost < u(ann, "day").cost
    assert u(bob, "month").cost < u(ann, "month").cost
    assert tree_d.tokens < tree_r.tokens and tree_d.cost < tree_r.cost
    rules_file = tmp_path / "alert-rules.yaml"
    rules = write_rules(
        rules_file,
        [
            {"name": "hour-tokens", "subject": "user", "window": "hour", "metric": "tokens",
             "thresholds": {"warning": str(u(bob, "hour").tokens),
                            "critical": str(u(ann, "hour").tokens)}},
            {"name": "day-spend", "subject": "user", "window": "day", "metric": "costUsd",
             "thresholds": {"warning": plain(u(bob, "day").cost),
                            "critical": plain(u(ann, "day").cost + PICO)}},
            {"name": "month-spend", "subject": "user", "window": "month", "metric": "costUsd",
             "thresholds": {"warning": "0.5", "critical": plain(u(bob, "month").cost)}},
            {"name": "day-tokens-cap", "subject": "user", "window": "day", "metric": "tokens",
             "thresholds": {"critical": str(u(ann, "day").tokens + 12_345)}},
            {"name": "run-tokens", "subject": "run", "window": "run", "metric": "tokens",
             "thresholds": {"warning": str(tree_d.tokens), "critical": str(tree_r.tokens)}},
            {"name": "run-spend", "subject": "run", "window": "run", "metric": "costUsd",
             "thresholds": {"warning": plain(tree_d.cost + PICO)}},
            {"name": "run-tool-failures", "subject": "run", "window": "run",
             "metric": "toolFailureRate", "minCalls": 6,
             "thresholds": {"warning": "0.3", "critical": "0.375"}},
        ],
    )  # fmt: skip
    settings = window_settings(settings, alert_rules_file=rules_file)

    await create_topics(settings)
    redis = decoding_redis(settings)
    try:
        async with (
            WorkerProcess(settings, tmp_path / "worker.log") as worker,
            httpx.AsyncClient(base_url=worker.url, timeout=30.0) as http,
        ):
            distinct: set[str] = set()
            for phase in phases:
                await produce(settings, settings.topic_entries, messages(phase))
                distinct |= {e["id"] for e in phase}
                await wait_applied(redis, settings, len(distinct), timeout=60, workers=[worker])
            await produce(settings, settings.topic_entries, messages(late))
            await wait_caught_up(settings, ingest_group_id(settings), timeout=60)
            assert await applied_count(redis, settings) == truth.accepted

            seen: dict[tuple[str, str, str], dict[str, Any]] = {}
            moments: list[int] = []
            queries: list[tuple[str | None, str | None]] = [
                (ann, None),
                (bob, None),
                ("nobody", None),  # unknown user: every user rule, observed "0"
                (None, run["R"]),  # the root
                (None, run["D"]),  # a middle run off the cycle: D, L, L2
                (None, run["A1"]),  # a middle run on the cycle: the whole tree
                (None, run["S"]),  # the shared child: the whole tree through C -> R
                (None, run["L"]),  # a leaf
                (None, run["R2"]),  # the shared child referenced twice by one parent
                (None, run["X"]),
                (None, ghost),  # referenced, never seen: unknown, start null
                (None, f"{app}-never"),
                (ann, run["D"]),
                (bob, run["R"]),
                ("nobody", f"{app}-never"),
            ]
            for user, run_id in queries:
                wanted, at = await check_budgets(http, truth, rules, user=user, run=run_id)
                moments.append(at)
                for (kind, rule), row in wanted.items():
                    seen[(kind, rule, row["subject"]["id"])] = row

        # the premise (when no hour passed since the stream was built): the levels land
        # where the thresholds were placed
        if all(same_windows(now0, m) for m in moments):
            levels = {key: (row["level"], row["remaining"]) for key, row in seen.items()}
            assert levels[("user", "hour-tokens", ann)] == ("critical", "0")
            assert levels[("user", "hour-tokens", bob)][0] == "warning"
            assert levels[("user", "day-spend", ann)] == ("warning", "0.000000000001")
            assert levels[("user", "day-spend", bob)][0] == "warning"
            assert levels[("user", "month-spend", bob)] == ("critical", "0")
            assert levels[("user", "month-spend", ann)] == ("critical", "0")
            assert levels[("user", "day-tokens-cap", ann)] == ("ok", "12345")
            assert levels[("run", "run-tokens", run["R"])] == ("critical", "0")
            assert levels[("run", "run-tokens", run["D"])][0] == "warning"
            assert levels[("run", "run-spend", run["R"])] == ("warning", "0")
            assert levels[("run", "run-spend", run["D"])] == ("ok", "0.000000000001")
            assert seen[("run", "run-tool-failures", run["R"])]["observed"] == "0.375"
            assert levels[("run", "run-tool-failures", run["R"])] == ("critical", "0")
            assert seen[("run", "run-tool-failures", run["D"])]["observed"] == "1"
            assert levels[("run", "run-tool-failures", run["D"])][0] == "ok"  # below minCalls
            assert levels[("run", "run-tool-failures", run["X"])] == ("critical", "0")
            assert seen[("run", "run-tool-failures", run["R2"])]["observed"] == "0.333333"
            assert levels[("run", "run-tool-failures", run["R2"])] == ("warning", "0.041667")
            # the earlier day, month and the previous month really were left out
            if day0 > month0:
                assert u(ann, "month").cost > u(ann, "day").cost
            assert truth.tree(run["A1"]) and set(truth.tree(run["S"])) == set(truth.tree(run["R"]))
            assert set(truth.tree(run["D"])) == {run["D"], run["L"], run["L2"]}
        else:
            print("an hour boundary passed during the test: premise checks skipped")
    finally:
        await redis.aclose()
