"""A user's windows: UTC hour, UTC day, billing month and all time, by event time.

Pure. Entries are folded per (user, UTC hour) while a batch is folded per run
(``fold.RunDelta``); this module turns those hour slots into the counter increments of
every window they fall in, decides which windows are still retained, and reads window
counters back. Counters are plain integer sums (HINCRBY), so a window's figures do not
depend on arrival order or on how entries fall into batches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache

from processor.domain import fields as run_fields
from processor.domain.counts import TokenCounts
from processor.domain.fields import (
    F_COUNT,
    T_COST,
    T_TOKENS,
    field_name,
    parse_field,
    token_fields,
)
from processor.domain.fold import Slot
from processor.domain.readback import stored_counts

HOUR_MS = 3_600_000
DAY_MS = 86_400_000

WINDOW_KINDS = ("hour", "day", "month", "all")

# Window hash fields beyond a run's token and cost fields (see fields.token_fields).
F_TOOL_OK = run_fields.F_TOOL_OK  # successful tool calls
F_TOOL_FAIL = run_fields.F_TOOL_FAIL  # failed tool calls
F_VERSION = "v"  # changes with every write of the window (readers' caches key on it)
F_COST_TOTAL = run_fields.F_COST_TOTAL  # cost of every model, pico-dollars (what rules compare)
F_TOKENS_TOTAL = run_fields.F_TOKENS_TOTAL  # tokens.total of every model
T_AGENT_TOKENS = "ag|"  # month only: per agent, the stored token types
T_AGENT_COST = "agc|"
T_AGENT_CALLS = "agn|"  # tokens entries (LLM calls) of the agent

#: ``agentName`` of an entry without one, in a month's ``byAgent``.
UNKNOWN_AGENT = "unknown"


@dataclass(frozen=True, slots=True)
class HourInfo:
    """Everything a slot needs about its UTC hour, computed once per hour."""

    hour: str  # YYYY-MM-DDTHH
    day: str  # YYYY-MM-DD
    month: str  # YYYY-MM
    hour_end_ms: int
    day_end_ms: int
    month_start_ms: int
    month_end_ms: int


@lru_cache(maxsize=4096)
def hour_info(hour_index: int) -> HourInfo:
    """The windows of the UTC hour ``hour_index`` (= timestamp // HOUR_MS).

    >>> info = hour_info(1_709_251_199_999 // HOUR_MS)  # 2024-02-29T23:59:59.999Z
    >>> info.hour, info.day, info.month
    ('2024-02-29T23', '2024-02-29', '2024-02')
    >>> info.month_end_ms  # 2024-03-01T00:00:00Z
    1709251200000
    """
    start = datetime.fromtimestamp(hour_index * 3600, UTC)
    day = start.date()
    return HourInfo(
        hour=f"{day.isoformat()}T{start.hour:02d}",
        day=day.isoformat(),
        month=f"{day.year:04d}-{day.month:02d}",
        hour_end_ms=(hour_index + 1) * HOUR_MS,
        day_end_ms=(day.toordinal() - _EPOCH_ORDINAL + 1) * DAY_MS,
        month_start_ms=month_bounds(day.year, day.month)[0],
        month_end_ms=month_bounds(day.year, day.month)[1],
    )


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def month_bounds(year: int, month: int) -> tuple[int, int]:
    """[start, end) of a calendar month in epoch milliseconds (UTC).

    >>> month_bounds(2024, 12)  # 2024-12-01T00:00Z, 2025-01-01T00:00Z
    (1733011200000, 1735689600000)
    """
    start = date(year, month, 1)
    end = date(year + month // 12, month % 12 + 1, 1)
    return (
        (start.toordinal() - _EPOCH_ORDINAL) * DAY_MS,
        (end.toordinal() - _EPOCH_ORDINAL) * DAY_MS,
    )


def day_start_ms(day: date) -> int:
    return (day.toordinal() - _EPOCH_ORDINAL) * DAY_MS


def expires_at_ms(end_ms: int, retention_s: int) -> int | None:
    """When a window ending at ``end_ms`` is dropped; None: kept until deleted.

    >>> expires_at_ms(HOUR_MS, 60), expires_at_ms(HOUR_MS, 0)
    (3660000, None)
    """
    return None if retention_s == 0 else end_ms + retention_s * 1000


@dataclass(frozen=True, slots=True)
class Retention:
    """Seconds each window kind is kept after it ends; 0 keeps it until deleted."""

    hour_s: int
    day_s: int
    month_s: int = 0


SlotKey = tuple[str, int]  # (user id, hour index)


@dataclass(slots=True)
class WindowDelta:
    """The increments of one window of one user."""

    kind: str  # hour | day | month | all
    label: str  # the hour, day or month; "" for all time
    incr: dict[str, int]
    #: epoch ms at which the window is dropped (None: kept)
    expire_at_ms: int | None
    #: [start, end) in epoch ms (all time: 0, None)
    start_ms: int = 0
    end_ms: int | None = None


@dataclass(slots=True)
class UserDelta:
    user_id: str
    windows: list[WindowDelta]
    months: list[str]  # billing periods touched
    #: window kind -> entries skipped for it because the window had already expired
    late: dict[str, int]


def merge_slots(parts: Iterable[Mapping[SlotKey, Slot]]) -> dict[SlotKey, Slot]:
    """The slots of several runs' deltas, summed per (user, hour); inputs untouched."""
    out: dict[SlotKey, Slot] = {}
    for slots in parts:
        for key, slot in slots.items():
            mine = out.get(key)
            if mine is None:
                mine = out[key] = Slot()
            mine.merge(slot)
    return out


def user_deltas(slots: Mapping[SlotKey, Slot], now_ms: int, keep: Retention) -> list[UserDelta]:
    """Every window increment of a set of slots, per user.

    A window that has already expired at ``now_ms`` is not written (writing it would bring
    a dropped window back); its entries are counted in ``late`` and still go to the
    windows retained (month, all time).
    """
    per_user: dict[str, list[tuple[HourInfo, Slot]]] = {}
    for (user, hour), slot in slots.items():
        per_user.setdefault(user, []).append((hour_info(hour), slot))
    out = []
    for user, hours in per_user.items():
        windows: dict[tuple[str, str], WindowDelta] = {}
        late: dict[str, int] = {}
        for info, slot in hours:
            # the slot's fields once; every window of it adds the same (months also by agent)
            base: dict[str, int] = {}
            _add_slot(base, slot)
            agents: dict[str, int] = {}
            _add_agents(agents, slot)
            for kind, label, start, end, keep_s in (
                ("hour", info.hour, info.hour_end_ms - HOUR_MS, info.hour_end_ms, keep.hour_s),
                ("day", info.day, info.day_end_ms - DAY_MS, info.day_end_ms, keep.day_s),
                ("month", info.month, info.month_start_ms, info.month_end_ms, keep.month_s),
                ("all", "", 0, 0, 0),
            ):
                expire = expires_at_ms(end, keep_s)
                if expire is not None and expire <= now_ms:
                    late[kind] = late.get(kind, 0) + slot.count
                    continue
                w = windows.get((kind, label))
                if w is None:
                    incr = base | agents if kind == "month" else dict(base)
                    windows[(kind, label)] = WindowDelta(
                        kind, label, incr, expire, start, end if kind != "all" else None
                    )
                else:
                    _sum_into(w.incr, base)
                    if kind == "month":
                        _sum_into(w.incr, agents)
        months = sorted({info.month for info, _ in hours})
        out.append(UserDelta(user, list(windows.values()), months, late))
    return out


def _sum_into(incr: dict[str, int], more: Mapping[str, int]) -> None:
    for f, v in more.items():
        incr[f] = incr.get(f, 0) + v


def _add_slot(incr: dict[str, int], slot: Slot) -> None:
    incr[F_COUNT] = incr.get(F_COUNT, 0) + slot.count
    if slot.tool_ok:
        incr[F_TOOL_OK] = incr.get(F_TOOL_OK, 0) + slot.tool_ok
    if slot.tool_fail:
        incr[F_TOOL_FAIL] = incr.get(F_TOOL_FAIL, 0) + slot.tool_fail
    cost = tokens = 0
    for (model, _), sums in slot.tokens.items():
        _add_tokens(incr, token_fields(model), sums)
        tokens += sums[5]
        cost += sums[6]
    if cost:
        incr[F_COST_TOTAL] = incr.get(F_COST_TOTAL, 0) + cost
    if tokens:
        incr[F_TOKENS_TOTAL] = incr.get(F_TOKENS_TOTAL, 0) + tokens


def _add_agents(incr: dict[str, int], slot: Slot) -> None:
    for (_, agent), sums in slot.tokens.items():
        fields = _agent_fields(agent or UNKNOWN_AGENT)
        _add_tokens(incr, fields, sums)
        incr[fields[7]] = incr.get(fields[7], 0) + sums[7]


def _add_tokens(incr: dict[str, int], fields: tuple[str, ...], sums: list[int]) -> None:
    """The six stored token fields and the cost field; zeros left out, except that a
    model used with no tokens and no cost still shows (its cost field, 0)."""
    stored = (*sums[:5], sums[5] - sums[0] - sums[1], sums[6])
    for f, v in zip(fields, stored, strict=False):
        if v:
            incr[f] = incr.get(f, 0) + v
    if not any(stored):
        incr.setdefault(fields[6], 0)


@lru_cache(maxsize=16384)
def _agent_fields(agent: str) -> tuple[str, ...]:
    tokens = token_fields(agent)
    return (
        *(T_AGENT_TOKENS + f[len(T_TOKENS) :] for f in tokens[:6]),
        field_name(T_AGENT_COST, agent),
        field_name(T_AGENT_CALLS, agent),
    )


# --- read back --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentUsage:
    agent: str
    tokens: TokenCounts
    cost_pico: int
    calls: int


@dataclass(slots=True)
class WindowUsage:
    """One window's figures, read back from its counters."""

    entry_count: int = 0
    tokens_by_model: dict[str, TokenCounts] = field(default_factory=dict)
    cost_by_model: dict[str, int] = field(default_factory=dict)
    agents: list[AgentUsage] = field(default_factory=list)
    tool_ok: int = 0
    tool_fail: int = 0

    @property
    def tokens(self) -> TokenCounts:
        return sum(self.tokens_by_model.values(), TokenCounts())

    @property
    def cost_pico(self) -> int:
        return sum(self.cost_by_model.values())

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> WindowUsage:
        tokens: dict[str, dict[str, int]] = {}
        cost: dict[str, int] = {}
        agent_tokens: dict[str, dict[str, int]] = {}
        agent_cost: dict[str, int] = {}
        agent_calls: dict[str, int] = {}
        usage = cls()
        for name, raw in fields.items():
            tag, parts = parse_field(name)
            if tag == T_TOKENS:
                tokens.setdefault(parts[0], {})[parts[1]] = int(raw)
            elif tag == T_COST:
                cost[parts[0]] = int(raw)
            elif tag == T_AGENT_TOKENS:
                agent_tokens.setdefault(parts[0], {})[parts[1]] = int(raw)
            elif tag == T_AGENT_COST:
                agent_cost[parts[0]] = int(raw)
            elif tag == T_AGENT_CALLS:
                agent_calls[parts[0]] = int(raw)
            elif name == F_COUNT:
                usage.entry_count = int(raw)
            elif name == F_TOOL_OK:
                usage.tool_ok = int(raw)
            elif name == F_TOOL_FAIL:
                usage.tool_fail = int(raw)
        models = sorted(tokens.keys() | cost.keys())
        usage.tokens_by_model = {m: stored_counts(tokens.get(m, {})) for m in models}
        usage.cost_by_model = {m: cost.get(m, 0) for m in models}
        agents = agent_tokens.keys() | agent_cost.keys() | agent_calls.keys()
        usage.agents = sorted(
            (
                AgentUsage(
                    a,
                    stored_counts(agent_tokens.get(a, {})),
                    agent_cost.get(a, 0),
                    agent_calls.get(a, 0),
                )
                for a in agents
            ),
            key=lambda u: (-u.cost_pico, u.agent),
        )
        return usage


def late_windows(ts: int, now_ms: int, keep: Retention) -> tuple[str, ...]:
    """The window kinds an entry of time ``ts`` arrives too late for at ``now_ms``.

    >>> keep = Retention(hour_s=3600, day_s=86400)
    >>> late_windows(0, 2 * HOUR_MS, keep), late_windows(0, 2 * HOUR_MS - 1, keep)
    (('hour',), ())
    """
    late: list[str] = []
    if keep.hour_s and (ts // HOUR_MS + 1) * HOUR_MS + keep.hour_s * 1000 <= now_ms:
        late.append("hour")
    if keep.day_s and (ts // DAY_MS + 1) * DAY_MS + keep.day_s * 1000 <= now_ms:
        late.append("day")
    if keep.month_s and hour_info(ts // HOUR_MS).month_end_ms + keep.month_s * 1000 <= now_ms:
        late.append("month")
    return tuple(late)


def parse_month(text: str) -> tuple[int, int]:
    """``YYYY-MM`` -> (year, month); ValueError otherwise.

    >>> parse_month("2024-02")
    (2024, 2)
    """
    if len(text) != 7 or text[4] != "-" or not (text[:4] + text[5:]).isascii():
        raise ValueError(f"expected YYYY-MM, got {text!r}")
    if not (text[:4].isdigit() and text[5:].isdigit()):
        raise ValueError(f"expected YYYY-MM, got {text!r}")
    year, month = int(text[:4]), int(text[5:])
    if not 1 <= month <= 12 or year < 1:
        raise ValueError(f"no such month: {text!r}")
    return year, month


_DAY_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)


def parse_day(text: str) -> date:
    """``YYYY-MM-DD`` -> date; ValueError otherwise.

    >>> parse_day("2024-02-29")
    datetime.date(2024, 2, 29)
    >>> parse_day("2024-W09-4")
    Traceback (most recent call last):
    ...
    ValueError: expected YYYY-MM-DD, got '2024-W09-4'
    """
    # fromisoformat alone also takes ISO week dates such as 2024-W09-4
    if not _DAY_RE.fullmatch(text):
        raise ValueError(f"expected YYYY-MM-DD, got {text!r}")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected a real date YYYY-MM-DD, got {text!r}") from None


def month_of(ms: int) -> str:
    return hour_info(ms // HOUR_MS).month


def day_of(ms: int) -> str:
    return hour_info(ms // HOUR_MS).day
