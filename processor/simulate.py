"""A simulated fleet of agents: realistic usage entries for the demo, the bench and tests.

Runs are interleaved with locality (a bounded number active at once), every entry kind
appears, some runs spawn sub-agent runs, and a given seed always yields the same stream.
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


@dataclass
class _Run:
    run_id: str
    user_id: str
    agent: str
    parent: str | None
    remaining: int
    step: int = 0
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


def encode(entry: dict[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) as producers publish them: key = runId."""
    return entry["runId"].encode(), json.dumps(entry, separators=(",", ":")).encode()
