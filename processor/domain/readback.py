"""Reading a run's stored counters back into its rollup (the figures the API serves)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from processor.domain.counts import CallStats, TokenCounts
from processor.domain.fields import (
    CUSTOM_SCALE,
    F_AGENT,
    F_COUNT,
    F_STARTED,
    F_TENANT,
    F_UPDATED,
    F_USER,
    T_COST,
    T_CUSTOM,
    T_CUSTOM_NANO,
    T_SUBAGENT,
    T_TOKENS,
    T_TOOL,
    field_parts,
    nano_to_number,
)


def stored_counts(d: Mapping[str, int]) -> TokenCounts:
    """TokenCounts from the stored token types of one model (or agent) of a hash.

    >>> stored_counts({"prompt": 3, "completion": 2, "totalExtra": 10})
    TokenCounts(prompt=3, completion=2, reasoning=0, cached=0, cache_write=0, total=15)
    """
    prompt, completion = d.get("prompt", 0), d.get("completion", 0)
    return TokenCounts(
        prompt,
        completion,
        d.get("reasoning", 0),
        d.get("cached", 0),
        d.get("cacheWrite", 0),
        prompt + completion + d.get("totalExtra", 0),
    )


@dataclass(slots=True)
class RunRollup:
    """A run's own figures, read back from its counters.

    >>> r = RunRollup.from_fields("r1", {"n": "2", "tk|gpt-4o|prompt": "7", "c|gpt-4o": "40"}, [])
    >>> r.entry_count, r.tokens.total, r.cost_by_model
    (2, 7, {'gpt-4o': 40})
    """

    run_id: str
    tenant_id: str
    user_id: str
    agent_name: str | None
    entry_count: int
    started_at: int | None
    last_updated_at: int | None
    tokens_by_model: dict[str, TokenCounts]
    cost_by_model: dict[str, int]
    tools: dict[str, CallStats]
    subagents: dict[str, CallStats]
    #: type -> name -> sum in nano-units (nano_to_number for the wire)
    custom: dict[str, dict[str, int]]
    children: list[str]

    @property
    def tokens(self) -> TokenCounts:
        return sum(self.tokens_by_model.values(), TokenCounts())

    @property
    def cost_pico(self) -> int:
        return sum(self.cost_by_model.values())

    @classmethod
    def from_fields(
        cls, run_id: str, fields: Mapping[str, str], children: Iterable[str]
    ) -> RunRollup:
        tokens: dict[str, dict[str, int]] = {}
        cost: dict[str, int] = {}
        calls: dict[str, dict[str, dict[str, int]]] = {T_TOOL: {}, T_SUBAGENT: {}}
        custom: dict[str, dict[str, int]] = {}
        for name, raw in fields.items():
            if name.startswith(T_TOKENS):
                model, ttype = field_parts(name, T_TOKENS)
                tokens.setdefault(model, {})[ttype] = int(raw)
            elif name.startswith(T_COST):
                (model,) = field_parts(name, T_COST)
                cost[model] = int(raw)
                tokens.setdefault(model, {})
            elif name.startswith(T_TOOL) or name.startswith(T_SUBAGENT):
                tag = name[:3]
                cname, stat = field_parts(name, tag)
                calls[tag].setdefault(cname, {})[stat] = int(raw)
            elif name.startswith(T_CUSTOM):
                ctype, cname = field_parts(name, T_CUSTOM)
                bucket = custom.setdefault(ctype, {})
                bucket[cname] = bucket.get(cname, 0) + int(raw) * CUSTOM_SCALE
            elif name.startswith(T_CUSTOM_NANO):
                ctype, cname = field_parts(name, T_CUSTOM_NANO)
                bucket = custom.setdefault(ctype, {})
                bucket[cname] = bucket.get(cname, 0) + int(raw)

        def stats(d: dict[str, int]) -> CallStats:
            ok, fail = d.get("ok", 0), d.get("fail", 0)
            return CallStats(ok + fail, ok, fail, d.get("us", 0))

        started = fields.get(F_STARTED)
        updated = fields.get(F_UPDATED)
        return cls(
            run_id=run_id,
            tenant_id=fields.get(F_TENANT, "default"),
            user_id=fields.get(F_USER, ""),
            agent_name=fields.get(F_AGENT),
            entry_count=int(fields.get(F_COUNT, "0")),
            started_at=int(started) if started is not None else None,
            last_updated_at=int(updated) if updated is not None else None,
            tokens_by_model={m: stored_counts(d) for m, d in sorted(tokens.items())},
            cost_by_model={m: cost.get(m, 0) for m in sorted(tokens)},
            tools={n: stats(d) for n, d in sorted(calls[T_TOOL].items())},
            subagents={n: stats(d) for n, d in sorted(calls[T_SUBAGENT].items())},
            custom=custom,
            children=sorted(set(children)),
        )


def custom_to_wire(custom: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    """Nano-unit sums as JSON numbers: always finite (sums are exact integers).

    >>> custom_to_wire({"quality": {"score": 2_500_000_000, "runs": 1_000_000_000}})
    {'quality': {'runs': 1, 'score': 2.5}}
    """
    return {
        t: {n: nano_to_number(v) for n, v in sorted(names.items())}
        for t, names in sorted(custom.items())
    }
