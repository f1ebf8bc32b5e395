"""A simulated fleet of agents: realistic usage entries for the demo, the bench and tests.

Runs are interleaved with locality (a bounded number active at once), every entry kind
appears, some runs spawn sub-agent runs, and a given seed always yields the same stream.

With ``runaway=True`` (the demo) two troublemakers join the fleet: one entry in
:data:`RUNAWAY_EVERY` and one in :data:`SPENDER_EVERY` are theirs, and the other entries are
the stream the fleet yields without them (the default, used by the bench and the tests)
with token counts divided by :data:`ORDINARY_TOKEN_DIVISOR`, so that ordinary run trees stay
within the default run token budget and the alerts are the troublemakers':

* a runaway agent: one root run that keeps spawning sub-agent runs (nested, up to
  :data:`RUNAWAY_DEPTH` deep) which keep calling an LLM, so that the tree's tokens including
  sub-agents cross 100,000 after about 6,000 fleet entries (about 30 s at the demo's 200
  entries/s);
* a big spender: a user whose runs call the most expensive models for long answers, so
  that the user's daily cost crosses $100 after about 6,000 fleet entries as well (each of
  its runs stays far below a run's token budget).

Their ids derive from ``run_prefix`` (``<prefix>-runaway-...``, ``<prefix>-big-spender``),
so that every demo starts with fresh subjects whose alerts can fire again.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

MODELS = [
    ("gpt-4o-mini", "openai"),
    ("gpt-4o", "openai"),
    ("claude-3-5-sonnet-20241022", "anthropic"),
    ("gemini-2.0-flash", "google"),
    ("mistral-large-latest", "mistral"),
]
TOOLS = ["web_search", "code_exec", "sql_query", "fetch_url"]
AGENTS = ["researcher", "coder", "support-bot", "planner"]
CUSTOM = [("api_calls", "tavily"), ("credits", "serpapi"), ("bytes", "s3_upload")]

#: The big spender's models, the first one three times as often: USD 150 / 600 and 75 / 150
#: per million input / output tokens in the built-in price catalog.
EXPENSIVE_MODELS = [
    ("o1-pro", "openai"),
    ("o1-pro", "openai"),
    ("o1-pro", "openai"),
    ("gpt-4.5-preview", "openai"),
]
#: One runaway agent's entry per this many fleet entries.
RUNAWAY_EVERY = 80
#: One big spender's entry per this many fleet entries (coprime with RUNAWAY_EVERY, so that
#: the two rarely fall on the same entry: then the runaway agent's comes first).
SPENDER_EVERY = 223
#: With the troublemakers, the ordinary runs' token counts are divided by this, so that
#: their trees (including sub-agents) stay below a run's token budget (80,000 tokens): the
#: runaway agent is then the only run tree over it. With 5, 518 ordinary trees of 480,000
#: entries (eight seeds) crossed it, up to 175,000 tokens; with 20 the largest tree of
#: 900,000 entries (three seeds) held 46,000.
ORDINARY_TOKEN_DIVISOR = 20
#: How deep the runaway agent's sub-agents nest (the root is depth 0).
RUNAWAY_DEPTH = 3


@dataclass
class _Run:
    run_id: str
    user_id: str
    agent: str
    parent: str | None
    remaining: int
    step: int = 0
    depth: int = 0
    children: list[str] = field(default_factory=list)


class Fleet:
    def __init__(
        self,
        *,
        seed: int = 7,
        users: int = 20,
        active_runs: int = 200,
        run_prefix: str = "run",
        start_ms: int = 1_763_000_000_000,
        tenant_id: str | None = None,
        runaway: bool = False,
    ) -> None:
        self._rnd = random.Random(seed)
        self._users = [f"user-{i}" for i in range(users)]
        self._active_target = active_runs
        self._prefix = run_prefix
        self._now = start_ms
        self._tenant = tenant_id
        self._active: list[_Run] = []
        self._next_run = 0
        self._next_entry = 0
        self._runaway = runaway
        # The troublemakers draw from a generator of their own, so the ordinary stream is
        # the same with or without them.
        self._trouble_rnd = random.Random(f"{seed}-trouble")
        self._emitted = 0
        self._trouble_runs = 0
        self._trouble_entries = 0
        self._spender_run: _Run | None = None
        self._runaway_root: _Run | None = None
        self._runaway_runs: list[_Run] = []

    def _new_run(self, parent: _Run | None = None) -> _Run:
        self._next_run += 1
        rnd = self._rnd
        run = _Run(
            run_id=f"{self._prefix}-{self._next_run}",
            user_id=parent.user_id if parent else rnd.choice(self._users),
            agent=rnd.choice(AGENTS),
            parent=parent.run_id if parent else None,
            remaining=rnd.randint(5, 60),
        )
        self._active.append(run)
        return run

    def entries(self, n: int) -> Iterator[dict[str, Any]]:
        rnd = self._rnd
        for _ in range(n):
            while len(self._active) < self._active_target:
                self._new_run()
            if self._runaway:
                self._emitted += 1
                if self._emitted % RUNAWAY_EVERY == 0:
                    yield self._runaway_entry()
                    continue
                if self._emitted % SPENDER_EVERY == 0:
                    yield self._spender_entry()
                    continue
            run = rnd.choice(self._active)
            self._now += rnd.randint(0, 3)
            yield self._entry(run)
            run.remaining -= 1
            if run.remaining <= 0:
                self._active.remove(run)

    def _entry(self, run: _Run) -> dict[str, Any]:
        rnd = self._rnd
        self._next_entry += 1
        run.step += 1
        e: dict[str, Any] = {
            "id": f"{run.run_id}-e{self._next_entry}",
            "runId": run.run_id,
            "userId": run.user_id,
            "timestamp": self._now,
            "stepCount": run.step,
            "agentName": run.agent,
        }
        if self._tenant:
            e["tenantId"] = self._tenant
        if run.parent:
            e["parentRunId"] = run.parent
        roll = rnd.random()
        if roll < 0.70:
            model, provider = rnd.choice(MODELS)
            prompt = rnd.randint(50, 4000)
            completion = rnd.randint(10, 1500)
            tokens: dict[str, int] = {"prompt": prompt, "completion": completion}
            if rnd.random() < 0.3:
                tokens["cached"] = rnd.randint(0, prompt // 2)
            if rnd.random() < 0.2:
                tokens["reasoning"] = rnd.randint(0, completion)
            if self._runaway:  # after every draw: the same choices, smaller counts
                tokens = {k: v // ORDINARY_TOKEN_DIVISOR for k, v in tokens.items()}
            e.update(kind="tokens", model=model, provider=provider, tokens=tokens)
        elif roll < 0.85:
            ok = rnd.random() > 0.1
            e.update(
                kind="tool",
                toolName=rnd.choice(TOOLS),
                durationMs=rnd.randint(5, 3000),
                success=ok,
            )
            if not ok:
                e["error"] = "timeout"
        elif roll < 0.93 and run.parent is None:
            child = self._new_run(parent=run)
            run.children.append(child.run_id)
            e.update(
                kind="subagent",
                subAgentType=child.agent,
                subAgentRunId=child.run_id,
                durationMs=rnd.randint(100, 20000),
                success=True,
            )
        else:
            ctype, cname = rnd.choice(CUSTOM)
            e.update(kind="custom", type=ctype, name=cname, value=rnd.randint(1, 5))
        return e

    def _trouble_run(self, kind: str, user_id: str, agent: str, parent: _Run | None) -> _Run:
        self._trouble_runs += 1
        return _Run(
            run_id=f"{self._prefix}-{kind}-{self._trouble_runs}",
            user_id=user_id,
            agent=agent,
            parent=parent.run_id if parent else None,
            remaining=0,
            depth=parent.depth + 1 if parent else 0,
        )

    def _base(self, run: _Run) -> dict[str, Any]:
        """The common fields of a troublemaker's entry (numbered apart from the others)."""
        self._trouble_entries += 1
        run.step += 1
        e: dict[str, Any] = {
            "id": f"{run.run_id}-e{self._trouble_entries}",
            "runId": run.run_id,
            "userId": run.user_id,
            "timestamp": self._now,
            "stepCount": run.step,
            "agentName": run.agent,
        }
        if self._tenant:
            e["tenantId"] = self._tenant
        if run.parent:
            e["parentRunId"] = run.parent
        return e

    def _runaway_entry(self) -> dict[str, Any]:
        """The runaway agent: a sub-agent spawn now and then, otherwise an LLM call of one of
        its sub-agent runs (about 1,650 tokens each)."""
        rnd = self._trouble_rnd
        if self._runaway_root is None:
            owner = f"{self._prefix}-runaway-owner"
            self._runaway_root = self._trouble_run("runaway", owner, "planner", None)
            self._runaway_runs.append(self._runaway_root)
        root = self._runaway_root
        if len(self._runaway_runs) == 1 or rnd.random() < 0.15:
            parents = [r for r in self._runaway_runs if r.depth < RUNAWAY_DEPTH]
            parent = rnd.choice(parents)
            child = self._trouble_run("runaway", root.user_id, rnd.choice(AGENTS), parent)
            parent.children.append(child.run_id)
            self._runaway_runs.append(child)
            e = self._base(parent)
            e.update(
                kind="subagent",
                subAgentType=child.agent,
                subAgentRunId=child.run_id,
                durationMs=rnd.randint(1000, 60000),
                success=True,
            )
            return e
        run = rnd.choice(self._runaway_runs[1:])
        prompt = rnd.randint(800, 2000)
        completion = rnd.randint(100, 400)
        e = self._base(run)
        e.update(
            kind="tokens",
            model="gpt-4o-mini",
            provider="openai",
            tokens={"prompt": prompt, "completion": completion},
        )
        return e

    def _spender_entry(self) -> dict[str, Any]:
        """The big spender: runs of long, reasoning-heavy answers from the most expensive
        models (about $5 an LLM call), with a tool call now and then. A run makes at most
        five LLM calls (at most 75,000 tokens), so the big spender trips user rules only
        (run budgets are the runaway agent's), and its few runs (one every 5 s or so at the
        demo's rate) leave room for the others in the demo's table of runs."""
        rnd = self._trouble_rnd
        run = self._spender_run
        if run is None or run.remaining <= 0:
            run = self._trouble_run("spender", f"{self._prefix}-big-spender", "researcher", None)
            run.remaining = rnd.randint(4, 5)
            self._spender_run = run
        run.remaining -= 1
        e = self._base(run)
        if rnd.random() < 0.1:
            e.update(
                kind="tool",
                toolName=rnd.choice(TOOLS),
                durationMs=rnd.randint(5, 3000),
                success=True,
            )
            return e
        model, provider = rnd.choice(EXPENSIVE_MODELS)
        prompt = rnd.randint(1_000, 3_000)
        completion = rnd.randint(6_000, 12_000)
        tokens = {"prompt": prompt, "completion": completion}
        if model.startswith("o1"):
            tokens["reasoning"] = rnd.randint(completion // 2, completion)
        elif rnd.random() < 0.3:
            tokens["cached"] = rnd.randint(0, prompt // 4)
        e.update(kind="tokens", model=model, provider=provider, tokens=tokens)
        return e


def encode(entry: dict[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) as producers publish them: key = runId."""
    return entry["runId"].encode(), json.dumps(entry, separators=(",", ":")).encode()
