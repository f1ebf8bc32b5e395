"""The per-run rollup: how entries fold into counters, and how counters read back.

A run's rollup is stored as a flat map of integer counters so that applying a batch is a
series of HINCRBY calls: commutative, associative and exact, hence independent of arrival
order and of how entries fall into batches. Custom values are fixed-point with
``CUSTOM_DECIMALS`` decimals, kept as two counters (whole units and nano-units) so that
sums stay exact up to the 64-bit range of whole units. This module is pure: it knows
field names, not Redis.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from functools import lru_cache
from typing import Any

TOKEN_TYPES = ("prompt", "completion", "reasoning", "cached", "cacheWrite", "total")
# Stored per model: `total` only as its excess over prompt + completion (non-zero just for
# entries that carry a bare total), so the common entry costs one counter less.
_STORED_TOKEN_TYPES = ("prompt", "completion", "reasoning", "cached", "cacheWrite", "totalExtra")
# Stored per tool / sub-agent type: `calls` is ok + fail, so it is not stored.
_STORED_CALL_STATS = ("ok", "fail", "us")

# Field tags of the run hash. Parts are joined with "|" after escaping "%" and "|", so
# user-supplied names (models, tools, custom types) may contain any character without
# ambiguity, and the Lua payload carries them without JSON escaping.
F_COUNT = "n"
F_STARTED = "ts0"
F_UPDATED = "ts1"
F_USER = "user"
F_TENANT = "tenant"
F_AGENT = "agent"
# Totals over models and tools, beside the detailed fields: what alert rules compare (the
# same names in a user's windows, see domain.windows)
F_COST_TOTAL = "ct"
F_TOKENS_TOTAL = "tt"
F_TOOL_OK = "to"
F_TOOL_FAIL = "tf"
T_TOKENS = "tk|"
T_COST = "c|"
T_TOOL = "tl|"
T_SUBAGENT = "sa|"
T_CUSTOM = "x|"  # whole units of a custom metric's sum
T_CUSTOM_NANO = "xn|"  # the nano-units beside them: sum = units + nano / 10**9

#: Custom values are summed exactly at this many decimals (finer digits are rounded
#: half-even when an entry is accepted).
CUSTOM_DECIMALS = 9
CUSTOM_SCALE = 1_000_000_000  # 10**CUSTOM_DECIMALS
_FLOAT_EXACT = 9_007_199_254_740_992  # 2**53


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace("|", "%7C")


def _unescape(part: str) -> str:
    return part.replace("%7C", "|").replace("%25", "%")


@lru_cache(maxsize=65536)
def field_name(tag: str, *parts: str) -> str:
    return tag + "|".join(_escape(p) for p in parts)


def _parts(name: str, tag: str) -> list[str]:
    return [_unescape(p) for p in name[len(tag) :].split("|")]


@lru_cache(maxsize=65536)
def parse_field(name: str) -> tuple[str, tuple[str, ...]]:
    """A counter field's tag (up to its first ``|``, inclusive) and unescaped parts.

    >>> parse_field("tk|gpt%7C4|prompt")
    ('tk|', ('gpt|4', 'prompt'))
    >>> parse_field("n")
    ('n', ())
    """
    tag, sep, rest = name.partition("|")
    if not sep:
        return name, ()
    return tag + sep, tuple(_unescape(p) for p in rest.split("|"))


@dataclass(frozen=True, slots=True)
class TokenCounts:
    prompt: int = 0
    completion: int = 0
    reasoning: int = 0
    cached: int = 0
    cache_write: int = 0
    total: int = 0

    def __add__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(
            self.prompt + other.prompt,
            self.completion + other.completion,
            self.reasoning + other.reasoning,
            self.cached + other.cached,
            self.cache_write + other.cache_write,
            self.total + other.total,
        )

    def as_tuple(self) -> tuple[int, int, int, int, int, int]:
        return (
            self.prompt,
            self.completion,
            self.reasoning,
            self.cached,
            self.cache_write,
            self.total,
        )

    def to_wire(self) -> dict[str, int]:
        return dict(zip(TOKEN_TYPES, self.as_tuple(), strict=True))


def stored_counts(d: Mapping[str, int]) -> TokenCounts:
    """TokenCounts from the stored token types of one model (or agent) of a hash."""
    prompt, completion = d.get("prompt", 0), d.get("completion", 0)
    return TokenCounts(
        prompt,
        completion,
        d.get("reasoning", 0),
        d.get("cached", 0),
        d.get("cacheWrite", 0),
        prompt + completion + d.get("totalExtra", 0),
    )


@dataclass(frozen=True, slots=True)
class CallStats:
    calls: int = 0
    successful: int = 0
    failed: int = 0
    duration_us: int = 0

    def __add__(self, other: CallStats) -> CallStats:
        return CallStats(
            self.calls + other.calls,
            self.successful + other.successful,
            self.failed + other.failed,
            self.duration_us + other.duration_us,
        )


def duration_to_us(duration_ms: float) -> int:
    """Durations are summed as integer microseconds so the sum is order-independent.

    Validation bounds ``durationMs`` (schemas.entry), so this is always finite."""
    return round(duration_ms * 1000)


def custom_to_nano(value: int | float) -> int:
    """A custom value as an integer of 10**-9 units, exact for what the producer wrote.

    A float is taken at its shortest round-trip decimal (``repr``), which is the literal
    of the JSON text for any literal with up to 15 significant digits, then rounded
    half-even to ``CUSTOM_DECIMALS`` decimals; so 0.1 counts as exactly 0.1, never as
    the binary double nearest to it.
    """
    if isinstance(value, int):
        return value * CUSTOM_SCALE
    if value.is_integer() and -_FLOAT_EXACT < value < _FLOAT_EXACT:
        return int(value) * CUSTOM_SCALE
    scaled = Decimal(repr(value)).scaleb(CUSTOM_DECIMALS)
    return int(scaled.to_integral_value(ROUND_HALF_EVEN))


def nano_to_number(nano: int) -> int | float:
    """A custom sum for JSON: an integer when whole, else the nearest double (exact for
    sums of up to 15 significant digits; Redis keeps the exact fixed-point sum)."""
    units, rest = divmod(nano, CUSTOM_SCALE)
    if rest == 0:
        return units
    return float(Decimal(nano).scaleb(-CUSTOM_DECIMALS))


def us_to_ms(us: int) -> int | float:
    return us // 1000 if us % 1000 == 0 else us / 1000


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
            for f, value in zip(_call_fields(kind, name), stats[1:], strict=True):
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
            units_field, nano_field = _custom_fields(ctype, cname)
            # both written even when zero: a metric summing to 0 still shows
            out[units_field] = out.get(units_field, 0) + units
            out[nano_field] = out.get(nano_field, 0) + rest
        return out


@lru_cache(maxsize=16384)
def token_fields(model: str) -> tuple[str, ...]:
    """The six stored token fields of a model, then its cost field."""
    return (
        *(field_name(T_TOKENS, model, t) for t in _STORED_TOKEN_TYPES),
        field_name(T_COST, model),
    )


@lru_cache(maxsize=16384)
def _custom_fields(ctype: str, cname: str) -> tuple[str, str]:
    return field_name(T_CUSTOM, ctype, cname), field_name(T_CUSTOM_NANO, ctype, cname)


@lru_cache(maxsize=16384)
def _call_fields(kind: str, name: str) -> tuple[str, str, str]:
    tag = T_TOOL if kind == "tool" else T_SUBAGENT
    ok, fail, us = (field_name(tag, name, stat) for stat in _STORED_CALL_STATS)
    return ok, fail, us


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
    repeats of an id within the batch (each id is applied once)."""
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


@dataclass(slots=True)
class RunRollup:
    """A run's own figures, read back from its counters."""

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
                model, ttype = _parts(name, T_TOKENS)
                tokens.setdefault(model, {})[ttype] = int(raw)
            elif name.startswith(T_COST):
                (model,) = _parts(name, T_COST)
                cost[model] = int(raw)
                tokens.setdefault(model, {})
            elif name.startswith(T_TOOL) or name.startswith(T_SUBAGENT):
                tag = name[:3]
                cname, stat = _parts(name, tag)
                calls[tag].setdefault(cname, {})[stat] = int(raw)
            elif name.startswith(T_CUSTOM):
                ctype, cname = _parts(name, T_CUSTOM)
                bucket = custom.setdefault(ctype, {})
                bucket[cname] = bucket.get(cname, 0) + int(raw) * CUSTOM_SCALE
            elif name.startswith(T_CUSTOM_NANO):
                ctype, cname = _parts(name, T_CUSTOM_NANO)
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


@dataclass(frozen=True, slots=True)
class TreeTotals:
    tokens: TokenCounts
    cost_pico: int
    custom: dict[str, dict[str, int]]


def sum_tree(rollups: Iterable[RunRollup]) -> TreeTotals:
    """Totals over a set of runs, each counted once (the caller dedups the tree)."""
    tokens = TokenCounts()
    cost = 0
    custom: dict[str, dict[str, int]] = {}
    for r in rollups:
        tokens = tokens + r.tokens
        cost += r.cost_pico
        for ctype, names in r.custom.items():
            bucket = custom.setdefault(ctype, {})
            for cname, nano in names.items():
                bucket[cname] = bucket.get(cname, 0) + nano
    return TreeTotals(tokens, cost, custom)


def walk_tree_levels(
    root: str, children_of: Mapping[str, Iterable[str]], depth_limit: int
) -> list[str]:
    """Run ids reachable from ``root`` (root first), each once, cycles cut, depth-limited."""
    order = [root]
    visited = {root}
    frontier = [root]
    depth = 0
    while frontier and depth < depth_limit:
        nxt: list[str] = []
        for run in frontier:
            for child in children_of.get(run, ()):
                if child not in visited:
                    visited.add(child)
                    order.append(child)
                    nxt.append(child)
        frontier = nxt
        depth += 1
    return order


def custom_to_wire(custom: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    """Nano-unit sums as JSON numbers: always finite (sums are exact integers)."""
    return {
        t: {n: nano_to_number(v) for n, v in sorted(names.items())}
        for t, names in sorted(custom.items())
    }
