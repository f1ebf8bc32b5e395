"""The ground truth of run-tree alerts and the checks of published ones, shared by
test_run_alerts_e2e.py and test_default_rules_e2e.py.

Written from the contract (CONTRACT §4): a tree walk over the entries sent, each run once,
cycles cut; only ``alert_id`` and ``entry_cost`` are imported.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
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
)
from tests.integration.user_streams import (
    Published,
)

T0 = utc_ms("2025-10-20T08:00:00.000Z")


# --- rules, as the test reads its own file ------------------------------------------------


@dataclass(frozen=True)
class Rule:
    name: str
    metric: str
    thresholds: dict[str, str]  # level -> the file's string


def write_rules(path: Path, text: str) -> list[Rule]:
    path.write_text(text, encoding="utf-8")
    doc = yaml.safe_load(text)
    out = []
    for r in doc["rules"]:
        assert r["subject"] == "run" and r["window"] == "run", r
        out.append(Rule(r["name"], r["metric"], dict(r["thresholds"])))
    return out


# --- ground truth ---------------------------------------------------------------------------


class TreeTruth:
    """Runs of a stream: distinct entries by id (first sighting counts), each run's own
    tokens and cost, its startedAt, its sub-agent links; trees walked here."""

    def __init__(self) -> None:
        self.catalog = load_catalog(None)
        self.entries: dict[str, Entry] = {}
        self.run_of: dict[str, str] = {}
        self.own: dict[str, list[str]] = {}  # run -> its entry ids
        self.children: dict[str, set[str]] = {}
        self.started: dict[str, int] = {}
        self.cost: dict[str, Decimal] = {}
        self.tokens: dict[str, int] = {}

    @property
    def accepted(self) -> int:
        return len(self.entries)

    def add_all(self, stream: Sequence[Entry]) -> None:
        for e in stream:
            if e["id"] in self.entries:
                assert e == self.entries[e["id"]], "a re-sent id must carry the same body"
                continue
            self.entries[e["id"]] = e
            run = e["runId"]
            self.own.setdefault(run, []).append(e["id"])
            self.children.setdefault(run, set())
            self.started[run] = min(self.started.get(run, e["timestamp"]), e["timestamp"])
            tokens = e["kind"] == "tokens"
            self.cost[e["id"]] = entry_cost(e, self.catalog) if tokens else Decimal(0)
            self.tokens[e["id"]] = entry_tokens(e)["total"] if tokens else 0
            if e["kind"] == "subagent":
                self.children[run].add(e["subAgentRunId"])

    @property
    def runs(self) -> list[str]:
        return sorted(self.own)

    def tree(self, run: str) -> set[str]:
        """The run and every run reachable through sub-agent links, each once, cycles cut;
        a referenced run without entries is unknown and adds nothing."""
        seen = {run}
        stack = [run]
        while stack:
            for child in self.children[stack.pop()]:
                if child not in seen and child in self.own:
                    seen.add(child)
                    stack.append(child)
        return seen

    def tree_entries(self, run: str) -> set[str]:
        return {i for r in self.tree(run) for i in self.own[r]}

    def value(self, metric: str, run: str) -> Decimal:
        ids = self.tree_entries(run)
        if metric == "costUsd":
            return sum((self.cost[i] for i in ids), Decimal(0))
        assert metric == "tokens", metric
        return Decimal(sum(self.tokens[i] for i in ids))

    def expected(self, rules: Sequence[Rule]) -> dict[str, tuple[Rule, str, str]]:
        out: dict[str, tuple[Rule, str, str]] = {}
        for run in self.runs:
            for rule in rules:
                final = self.value(rule.metric, run)
                for level, text in rule.thresholds.items():
                    if final >= Decimal(text):
                        out[self.alert_id(rule, run, level)] = (rule, run, level)
        return out

    def alert_id(self, rule: Rule, run: str, level: str) -> str:
        # a run's window is its lifetime: the id does not depend on its startedAt
        return alert_id(TENANT, rule.name, "run", run, "run", 0, level)


# --- entries ----------------------------------------------------------------------------------


class Maker:
    def __init__(self, prefix: str, seed: int) -> None:
        self.prefix = prefix
        self.rnd = random.Random(seed)
        self.count = 0

    def _base(self, run: str, kind: str, user: str) -> Entry:
        self.count += 1
        return {
            "id": f"{self.prefix}-e{self.count}",
            "runId": run,
            "userId": user,
            "timestamp": T0,  # set by the caller
            "kind": kind,
            "agentName": "researcher",
        }

    def tokens(self, run: str, total: int, *, user: str = "u", cost: str | None = None) -> Entry:
        e = self._base(run, "tokens", user)
        completion = total // 4
        e["tokens"] = {"prompt": total - completion, "completion": completion}
        if cost is None and self.rnd.random() < 0.3:
            e["model"] = "gpt-4o-mini"  # priced from the catalog
        else:
            e["model"] = "acme-llm-9000"
            e["costUsd"] = cost or usd(Decimal(self.rnd.randint(10_000, 600_000)).scaleb(-6))
        return e

    def link(self, run: str, child: str, *, user: str = "u") -> Entry:
        e = self._base(run, "subagent", user)
        e.update(subAgentType="helper", subAgentRunId=child, durationMs=100, success=True)
        return e


def stamp(entries: Sequence[Entry], start: int) -> list[Entry]:
    """Timestamps increasing in production order: a run's first entry sent is its first."""
    for i, e in enumerate(entries):
        e["timestamp"] = start + i
    return list(entries)


# --- reading what was published ---------------------------------------------------------------


def check_message(
    m: Published, rule: Rule, run: str, level: str, truth: TreeTruth, span: tuple[int, int]
) -> list[str]:
    """Every field of one run alert; the problems found."""
    v = m.value
    threshold = rule.thresholds[level]
    want = {
        "alertId": truth.alert_id(rule, run, level),
        "rule": rule.name,
        "level": level,
        "tenantId": TENANT,
        "subject": {"type": "run", "id": run},
        "window": {"kind": "run", "start": truth.started[run], "end": None},
        "metric": rule.metric,
        "threshold": threshold,
    }
    problems = [f"{k}: got {v.get(k)!r}, want {w!r}" for k, w in want.items() if v.get(k) != w]
    if set(v) != ALERT_FIELDS:
        problems.append(f"fields {sorted(v)}")
    if m.key != run:
        problems.append(f"key {m.key!r}, want {run!r}")
    final = truth.value(rule.metric, run)
    observed = v.get("observed")
    if not isinstance(observed, str) or not PLAIN_DECIMAL.fullmatch(observed):
        problems.append(f"observed {observed!r} is not a plain decimal string")
    elif not Decimal(threshold) <= Decimal(observed) <= final:
        problems.append(f"observed {observed} not in [threshold {threshold}, final {final}]")
    at = v.get("triggeredAt")
    if not isinstance(at, int) or isinstance(at, bool) or not span[0] <= at <= span[1]:
        problems.append(f"triggeredAt {at!r} outside {list(span)}")
    if not isinstance(v.get("message"), str) or not v["message"]:
        problems.append(f"message {v.get('message')!r}")
    if v.get("entryId") not in truth.tree_entries(run):
        problems.append(f"entryId {v.get('entryId')!r} is not an entry of the run's tree")
    return problems


# --- 1. children first ----------------------------------------------------------------------


ROOTS = 40


def forest(prefix: str, seed: int) -> list[Entry]:
    """40 trees of 3-6 children (some with a grandchild), each run's entries in order,
    the runs interleaved at random; neighbouring roots share a child, one child links
    back to its root (a cycle)."""
    rnd = random.Random(seed)
    mk = Maker(prefix, seed)
    per_run: list[list[Entry]] = []
    shared: str | None = None
    for t in range(ROOTS):
        user = f"user-{t % 7}"
        root = f"{prefix}-t{t}"
        mine = [mk.tokens(root, rnd.randint(200, 3000), user=user)]
        children = [f"{root}-c{i}" for i in range(rnd.randint(3, 6))]
        for c in children:
            runs = [
                mk.tokens(c, rnd.randint(200, 3500), user=user) for _ in range(rnd.randint(1, 3))
            ]
            if rnd.random() < 0.3:
                g = f"{c}-g"
                per_run.append([mk.tokens(g, rnd.randint(500, 4000), user=user)])
                runs.insert(rnd.randrange(len(runs) + 1), mk.link(c, g, user=user))
            if t == 3 and c == children[0]:
                runs.append(mk.link(c, root, user=user))  # the cycle
            per_run.append(runs)
        links = [mk.link(root, c, user=user) for c in children]
        if shared is not None and t % 4 == 1:
            links.append(mk.link(root, shared, user=user))
        shared = children[-1]
        for e in links:
            mine.insert(rnd.randrange(len(mine) + 1), e)
        mine.append(mk.tokens(root, rnd.randint(200, 3000), user=user))
        per_run.append(mine)
    # interleave: pick a random run's next entry each time, so links come before, among
    # and after their children's entries
    out: list[Entry] = []
    queues = [list(q) for q in per_run]
    while queues:
        i = rnd.randrange(len(queues))
        out.append(queues[i].pop(0))
        if not queues[i]:
            queues.pop(i)
    return stamp(out, T0)


def assert_exactly_once(
    got: Sequence[Published], expected: dict[str, tuple[Rule, str, str]]
) -> None:
    def describe(aid: str) -> str:
        x = expected[aid]
        return f"{x[0].name} {x[1]} {x[2]}"

    alert_checks.assert_exactly_once(got, list(expected), describe)
