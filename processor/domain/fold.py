"""Folding entries into per-run deltas: the hot loop of a batch.

An accepted entry (validated and priced, see domain.accept) is folded into its run's
``RunDelta``: sums per model and per (user, UTC hour) slot for the windows, per tool and
sub-agent type, per custom metric, kept in small lists while folding and turned into
counter increments (domain.fields) once per run. Sums are integers, so a delta does not
depend on the order of its entries nor on how they fell into batches. Pure: no Redis.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from processor.domain.counts import TokenCounts
from processor.domain.fields import (
    CUSTOM_SCALE,
    F_COST_TOTAL,
    F_COUNT,
    F_TOKENS_TOTAL,
    F_TOOL_FAIL,
    F_TOOL_OK,
    call_fields,
    custom_fields,
    token_fields,
)


@dataclass(slots=True)
class AcceptedEntry:
    """A validated entry with everything needed to apply it (pricing already done)."""

    entry_id: str
    kind: str
    tenant_id: str
    run_id: str
    user_id: str
    timestamp: int
    agent_name: str | None
    wire_json: str | bytes  # the entry as received plus costUsd for tokens entries
    model: str | None = None
    provider: str | None = None
    priced: bool = True
    tokens: TokenCounts | None = None
    cost_pico: int = 0
    call_name: str | None = None  # toolName or subAgentType
    success: bool = True
    duration_us: int = 0
    child_run_id: str | None = None
    custom_type: str | None = None
    custom_name: str | None = None
    custom_nano: int = 0  # the value in 10**-9 units (custom_to_nano)
    #: where the entry came from (a consumed message), to dead-letter it after the fact
    origin: Any = None


@dataclass(slots=True)
class Slot:
    """One user's entries of one UTC hour within one run's share of a batch: what they
    add to that user's windows (domain.windows)."""

    count: int = 0
    #: (model, agent or None) -> [prompt, completion, reasoning, cached, cacheWrite,
    #: total, cost pico, calls]
    tokens: dict[tuple[str, str | None], list[int]] = field(default_factory=dict)
    tool_ok: int = 0
    tool_fail: int = 0

    def merge(self, other: Slot) -> None:
        self.count += other.count
        self.tool_ok += other.tool_ok
        self.tool_fail += other.tool_fail
        for key, sums in other.tokens.items():
            mine = self.tokens.get(key)
            if mine is None:
                self.tokens[key] = list(sums)
            else:
                for i, v in enumerate(sums):
                    mine[i] += v


@dataclass(slots=True)
class RunDelta:
    """Everything a batch changes in one run: applied atomically with its entries' dedup marks.

    Sums are kept per model and per tool in small lists while folding (the hot loop) and
    turned into counter fields once per run by ``incr``.
    """

    tenant_id: str
    run_id: str
    user_id: str
    agent_name: str | None
    entry_ids: list[str] = field(default_factory=list)
    count: int = 0
    #: (entry's user, UTC hour index) -> what its entries add to that user's windows
    #: (domain.windows); the run's own token sums are read from these too
    slots: dict[tuple[str, int], Slot] = field(default_factory=dict)
    #: (kind, name) -> [calls, successful, failed, duration us]
    calls: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    #: (type, name) -> sum of custom values in nano-units
    custom: dict[tuple[str, str], int] = field(default_factory=dict)
    min_ts: int = 0
    max_ts: int = 0
    children: set[str] = field(default_factory=set)
    # (id, timestamp, json body)
    entries: list[tuple[str, int, str | bytes]] = field(default_factory=list)
    # the slot the last entry went to
    _slot: Slot | None = None
    _slot_hour: int = -1
    _slot_user: str = ""

    def add(self, e: AcceptedEntry) -> None:
        ts = e.timestamp
        if not self.entry_ids:
            self.min_ts = self.max_ts = ts
        elif ts < self.min_ts:
            self.min_ts = ts
        elif ts > self.max_ts:
            self.max_ts = ts
        self.entry_ids.append(e.entry_id)
        self.entries.append((e.entry_id, ts, e.wire_json))
        if self.agent_name is None:
            self.agent_name = e.agent_name
        self.count += 1
        hour = ts // 3_600_000
        slot = self._slot
        if slot is None or hour != self._slot_hour or e.user_id != self._slot_user:
            # most entries of a run in a batch share one user and one hour
            slot = self.slots.get((e.user_id, hour))
            if slot is None:
                slot = self.slots[(e.user_id, hour)] = Slot()
            self._slot, self._slot_hour, self._slot_user = slot, hour, e.user_id
        slot.count += 1
        kind = e.kind
        if kind == "tokens":
            t = e.tokens
            assert e.model is not None and t is not None
            tkey = (e.model, e.agent_name)
            sums = slot.tokens.get(tkey)
            if sums is None:
                sums = slot.tokens[tkey] = [0, 0, 0, 0, 0, 0, 0, 0]
            sums[0] += t.prompt
            sums[1] += t.completion
            sums[2] += t.reasoning
            sums[3] += t.cached
            sums[4] += t.cache_write
            sums[5] += t.total
            sums[6] += e.cost_pico
            sums[7] += 1
        elif kind == "tool" or kind == "subagent":
            assert e.call_name is not None
            key = (kind, e.call_name)
            stats = self.calls.get(key)
            if stats is None:
                stats = self.calls[key] = [0, 0, 0, 0]
            stats[0] += 1
            stats[1 if e.success else 2] += 1
            stats[3] += e.duration_us
            if kind == "tool":
                if e.success:
                    slot.tool_ok += 1
                else:
                    slot.tool_fail += 1
            elif e.child_run_id is not None:
                self.children.add(e.child_run_id)
        elif kind == "custom":
            assert e.custom_type is not None and e.custom_name is not None
            ckey = (e.custom_type, e.custom_name)
            self.custom[ckey] = self.custom.get(ckey, 0) + e.custom_nano

    def tokens_by_model(self) -> dict[str, list[int]]:
        """model -> [prompt, completion, reasoning, cached, cacheWrite, total, cost pico,
        calls], summed over the run's slots (not to be modified)."""
        if len(self.slots) == 1:
            # the common case: one user, one hour, one agent per model; read-only use
            (slot,) = self.slots.values()
            single = {model: sums for (model, _), sums in slot.tokens.items()}
            if len(single) == len(slot.tokens):
                return single
        out: dict[str, list[int]] = {}
        for slot in self.slots.values():
            for (model, _), sums in slot.tokens.items():
                mine = out.get(model)
                if mine is None:
                    out[model] = list(sums)
                else:
                    for i, v in enumerate(sums):
                        mine[i] += v
        return out

    @property
    def incr(self) -> dict[str, int]:
        """The integer counter increments of the run hash (zero ones left out)."""
        out: dict[str, int] = {F_COUNT: self.count}
        cost = tokens = 0
        for model, sums in self.tokens_by_model().items():
            tokens += sums[5]
            cost += sums[6]
            fields = token_fields(model)
            stored = (*sums[:5], sums[5] - sums[0] - sums[1], sums[6])
            for f, value in zip(fields, stored, strict=True):
                if value:
                    out[f] = value
            if not any(stored):
                # a model used with no tokens and no cost still shows, with zeros
                out[fields[6]] = 0
        if cost:
            out[F_COST_TOTAL] = cost
        if tokens:
            out[F_TOKENS_TOTAL] = tokens
        tool_ok = tool_fail = 0
        for (kind, name), stats in self.calls.items():
            for f, value in zip(call_fields(kind, name), stats[1:], strict=True):
                if value:
                    out[f] = value
            if kind == "tool":
                tool_ok += stats[1]
                tool_fail += stats[2]
        if tool_ok:
            out[F_TOOL_OK] = tool_ok
        if tool_fail:
            out[F_TOOL_FAIL] = tool_fail
        for (ctype, cname), nano in self.custom.items():
            units, rest = divmod(nano, CUSTOM_SCALE)
            units_field, nano_field = custom_fields(ctype, cname)
            # both written even when zero: a metric summing to 0 still shows
            out[units_field] = out.get(units_field, 0) + units
            out[nano_field] = out.get(nano_field, 0) + rest
        return out


def fold_run(entries: Iterable[AcceptedEntry]) -> RunDelta:
    it = iter(entries)
    first = next(it)
    delta = RunDelta(first.tenant_id, first.run_id, first.user_id, first.agent_name)
    delta.add(first)
    for e in it:
        delta.add(e)
    return delta


def fold_batch(
    entries: Iterable[AcceptedEntry],
) -> tuple[list[tuple[list[AcceptedEntry], RunDelta]], list[AcceptedEntry]]:
    """Per (tenant, run), arrival order kept: its entries and their folded delta; plus the
    repeats of an id within the batch (each id is applied once).

    >>> e = AcceptedEntry("e1", "custom", "default", "r1", "u1", 0, None, "{}",
    ...                   custom_type="q", custom_name="s", custom_nano=5)
    >>> groups, repeats = fold_batch([e, e])
    >>> [delta.incr for _, delta in groups], len(repeats)
    ([{'n': 1, 'x|q|s': 0, 'xn|q|s': 5}], 1)
    """
    groups: dict[tuple[str, str], tuple[list[AcceptedEntry], RunDelta]] = {}
    repeats: list[AcceptedEntry] = []
    seen: set[tuple[str, str]] = set()
    for e in entries:
        ident = (e.tenant_id, e.entry_id)
        if ident in seen:
            repeats.append(e)
            continue
        seen.add(ident)
        group = groups.get((e.tenant_id, e.run_id))
        if group is None:
            delta = RunDelta(e.tenant_id, e.run_id, e.user_id, e.agent_name)
            group = groups[(e.tenant_id, e.run_id)] = ([], delta)
        group[0].append(e)
        group[1].add(e)
    return list(groups.values()), repeats
