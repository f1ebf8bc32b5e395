"""A user's windows (domain.windows): UTC labels and ends, lateness, merging, read back.

Every expectation is computed independently with ``datetime`` / ``calendar`` arithmetic,
never with the module's own helpers.
"""

from __future__ import annotations

import calendar
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.domain.counts import TokenCounts
from processor.domain.fold import AcceptedEntry, fold_batch
from processor.domain.windows import (
    DAY_MS,
    HOUR_MS,
    UNKNOWN_AGENT,
    AgentUsage,
    Retention,
    UserDelta,
    WindowUsage,
    day_of,
    expires_at_ms,
    hour_info,
    late_windows,
    merge_slots,
    month_bounds,
    month_of,
    parse_day,
    parse_month,
    user_deltas,
)

#: 2020-01-01T00:00:00.000Z .. 2030-12-31T23:59:59.999Z
LO = 1_577_836_800_000
HI = 1_924_991_999_999

timestamps = st.integers(LO, HI)


def ms(dt: datetime) -> int:
    return int(dt.timestamp()) * 1000 + dt.microsecond // 1000


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def as_dt(ts: int) -> datetime:
    return datetime.fromtimestamp(ts / 1000, UTC)


@dataclass(frozen=True)
class Expected:
    hour: str
    day: str
    month: str
    hour_end: int
    day_end: int
    month_end: int


def expected(ts: int) -> Expected:
    dt = as_dt(ts)
    hour_start = dt.replace(minute=0, second=0, microsecond=0)
    next_midnight = datetime.combine(dt.date() + timedelta(days=1), datetime.min.time(), UTC)
    y, m = dt.year, dt.month
    next_month = utc(y + 1, 1, 1) if m == 12 else utc(y, m + 1, 1)
    return Expected(
        hour=dt.strftime("%Y-%m-%dT%H"),
        day=dt.strftime("%Y-%m-%d"),
        month=dt.strftime("%Y-%m"),
        hour_end=ms(hour_start + timedelta(hours=1)),
        day_end=ms(next_midnight),
        month_end=ms(next_month),
    )


# --- hour_info ----------------------------------------------------------------------------


def test_the_reference_agrees_with_exact_millisecond_arithmetic() -> None:
    # fromtimestamp(ts / 1000) goes through a float: it must not round across a boundary
    for ts in (LO, HI, 1_709_164_799_999, 1_735_689_599_999, 1_709_251_200_000):
        exact = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ts)
        assert as_dt(ts) == exact
        assert ms(exact) == ts


@settings(max_examples=300)
@given(timestamps)
def test_hour_info_matches_datetime(ts: int) -> None:
    want = expected(ts)
    info = hour_info(ts // HOUR_MS)
    assert (info.hour, info.day, info.month) == (want.hour, want.day, want.month)
    assert (info.hour_end_ms, info.day_end_ms, info.month_end_ms) == (
        want.hour_end,
        want.day_end,
        want.month_end,
    )
    assert (day_of(ts), month_of(ts)) == (want.day, want.month)


@settings(max_examples=200)
@given(timestamps)
def test_the_last_millisecond_of_a_window_is_in_it_and_its_end_is_in_the_next(ts: int) -> None:
    want = expected(ts)
    # hour
    assert hour_info((want.hour_end - 1) // HOUR_MS).hour == want.hour
    assert hour_info(want.hour_end // HOUR_MS).hour == expected(want.hour_end).hour
    assert expected(want.hour_end).hour != want.hour
    # day
    assert day_of(want.day_end - 1) == want.day
    assert day_of(want.day_end) == expected(want.day_end).day != want.day
    assert hour_info((want.day_end - 1) // HOUR_MS).day_end_ms == want.day_end
    # month
    assert month_of(want.month_end - 1) == want.month
    assert month_of(want.month_end) == expected(want.month_end).month != want.month
    assert hour_info((want.month_end - 1) // HOUR_MS).month_end_ms == want.month_end
    assert hour_info(want.month_end // HOUR_MS).month_end_ms == expected(want.month_end).month_end


@pytest.mark.parametrize(
    ("at", "hour", "day", "month", "hour_end", "day_end", "month_end"),
    [
        # leap day, last millisecond
        (
            utc(2024, 2, 29, 23, 59, 59, 999_000),
            "2024-02-29T23",
            "2024-02-29",
            "2024-02",
            utc(2024, 3, 1),
            utc(2024, 3, 1),
            utc(2024, 3, 1),
        ),
        # 2024-02-28 is followed by the leap day, not by March
        (
            utc(2024, 2, 28, 23, 59, 59, 999_000),
            "2024-02-28T23",
            "2024-02-28",
            "2024-02",
            utc(2024, 2, 29),
            utc(2024, 2, 29),
            utc(2024, 3, 1),
        ),
        # 2023 is no leap year: 02-28 is followed by 03-01
        (
            utc(2023, 2, 28, 23, 59, 59, 999_000),
            "2023-02-28T23",
            "2023-02-28",
            "2023-02",
            utc(2023, 3, 1),
            utc(2023, 3, 1),
            utc(2023, 3, 1),
        ),
        # the last millisecond of a year
        (
            utc(2024, 12, 31, 23, 59, 59, 999_000),
            "2024-12-31T23",
            "2024-12-31",
            "2024-12",
            utc(2025, 1, 1),
            utc(2025, 1, 1),
            utc(2025, 1, 1),
        ),
        # midnight exactly belongs to the new day (and year)
        (
            utc(2025, 1, 1),
            "2025-01-01T00",
            "2025-01-01",
            "2025-01",
            utc(2025, 1, 1, 1),
            utc(2025, 1, 2),
            utc(2025, 2, 1),
        ),
        (
            utc(2024, 3, 1),
            "2024-03-01T00",
            "2024-03-01",
            "2024-03",
            utc(2024, 3, 1, 1),
            utc(2024, 3, 2),
            utc(2024, 4, 1),
        ),
        (
            utc(2023, 3, 1),
            "2023-03-01T00",
            "2023-03-01",
            "2023-03",
            utc(2023, 3, 1, 1),
            utc(2023, 3, 2),
            utc(2023, 4, 1),
        ),
    ],
)
def test_hour_info_at_calendar_edges(
    at: datetime,
    hour: str,
    day: str,
    month: str,
    hour_end: datetime,
    day_end: datetime,
    month_end: datetime,
) -> None:
    info = hour_info(ms(at) // HOUR_MS)
    assert (info.hour, info.day, info.month) == (hour, day, month)
    assert info.hour_end_ms == ms(hour_end)
    assert info.day_end_ms == ms(day_end)
    assert info.month_end_ms == ms(month_end)


def test_the_days_around_the_leap_day() -> None:
    assert day_of(ms(utc(2024, 2, 28, 23, 59, 59, 999_000)) + 1) == "2024-02-29"
    assert day_of(ms(utc(2024, 2, 29, 23, 59, 59, 999_000)) + 1) == "2024-03-01"
    assert day_of(ms(utc(2023, 2, 28, 23, 59, 59, 999_000)) + 1) == "2023-03-01"
    assert month_of(ms(utc(2024, 12, 31, 23, 59, 59, 999_000)) + 1) == "2025-01"
    assert month_of(ms(utc(2024, 12, 31, 23, 59, 59, 999_000))) == "2024-12"


# --- month_bounds -------------------------------------------------------------------------


def test_month_bounds_of_every_month_2020_to_2030() -> None:
    previous_end = None
    for year in range(2020, 2031):
        for month in range(1, 13):
            start, end = month_bounds(year, month)
            assert start == calendar.timegm((year, month, 1, 0, 0, 0)) * 1000
            assert end - start == calendar.monthrange(year, month)[1] * DAY_MS
            if previous_end is not None:
                assert start == previous_end
            previous_end = end
            assert month_of(start) == f"{year:04d}-{month:02d}"
            assert month_of(end - 1) == f"{year:04d}-{month:02d}"
    assert previous_end == calendar.timegm((2031, 1, 1, 0, 0, 0)) * 1000
    assert month_bounds(2024, 2)[1] - month_bounds(2024, 2)[0] == 29 * DAY_MS
    assert month_bounds(2023, 2)[1] - month_bounds(2023, 2)[0] == 28 * DAY_MS


# --- lateness -----------------------------------------------------------------------------

retention_s = st.sampled_from([0, 1, 3600, 86400, 14 * 86400, 31 * 86400, 400 * 86400])
retentions = st.builds(Retention, retention_s, retention_s, retention_s)


def reference_late(ts: int, now: int, keep: Retention) -> tuple[str, ...]:
    want = expected(ts)
    out = []
    for kind, end, keep_s in (
        ("hour", want.hour_end, keep.hour_s),
        ("day", want.day_end, keep.day_s),
        ("month", want.month_end, keep.month_s),
    ):
        if keep_s != 0 and end + keep_s * 1000 <= now:
            out.append(kind)
    return tuple(out)


def one_entry(ts: int, user: str = "u") -> AcceptedEntry:
    return AcceptedEntry(
        "e", "tokens", "default", "r", user, ts, None, "{}", model="m",
        tokens=TokenCounts(1, 2, 0, 0, 0, 3), cost_pico=5,
    )  # fmt: skip


@settings(max_examples=300)
@given(timestamps, st.integers(-2 * DAY_MS, 500 * DAY_MS), retentions)
def test_an_entry_is_late_exactly_when_window_end_plus_retention_has_passed(
    ts: int, after: int, keep: Retention
) -> None:
    now = ts + after
    want = reference_late(ts, now, keep)
    assert late_windows(ts, now, keep) == want
    # the fold agrees: the late windows are left out and counted, the others written
    groups, _ = fold_batch([one_entry(ts)])
    (ud,) = user_deltas(merge_slots([d.slots for _, d in groups]), now, keep)
    assert ud.late == dict.fromkeys(want, 1)
    written = {w.kind for w in ud.windows}
    assert written == {"hour", "day", "month", "all"} - set(want)
    assert ud.months == [expected(ts).month]


@settings(max_examples=200)
@given(timestamps, retentions)
def test_lateness_starts_at_the_millisecond_end_plus_retention(ts: int, keep: Retention) -> None:
    want = expected(ts)
    for kind, end, keep_s in (
        ("hour", want.hour_end, keep.hour_s),
        ("day", want.day_end, keep.day_s),
        ("month", want.month_end, keep.month_s),
    ):
        if keep_s == 0:
            assert expires_at_ms(end, keep_s) is None
            assert kind not in late_windows(ts, HI * 10, keep)  # never late
            continue
        expire = end + keep_s * 1000
        assert expires_at_ms(end, keep_s) == expire
        assert kind not in late_windows(ts, expire - 1, keep)
        assert kind in late_windows(ts, expire, keep)
        # and the fold leaves the window out from that very millisecond on
        groups, _ = fold_batch([one_entry(ts)])
        slots = merge_slots([d.slots for _, d in groups])
        (before,) = user_deltas(slots, expire - 1, keep)
        (after,) = user_deltas(slots, expire, keep)
        assert kind not in before.late and kind in {w.kind for w in before.windows}
        assert after.late[kind] == 1 and kind not in {w.kind for w in after.windows}


def test_retention_zero_is_never_late() -> None:
    keep = Retention(0, 0, 0)
    assert late_windows(LO, 10**15, keep) == ()
    assert expires_at_ms(123, 0) is None
    assert expires_at_ms(123, 1) == 1123
    groups, _ = fold_batch([one_entry(LO)])
    (ud,) = user_deltas(merge_slots([d.slots for _, d in groups]), 10**15, keep)
    assert ud.late == {}
    assert all(w.expire_at_ms is None for w in ud.windows)


def test_window_expiry_times_are_end_plus_retention() -> None:
    ts = ms(utc(2024, 2, 29, 23, 30))
    keep = Retention(hour_s=3600, day_s=86400, month_s=0)
    groups, _ = fold_batch([one_entry(ts)])
    (ud,) = user_deltas(merge_slots([d.slots for _, d in groups]), ts, keep)
    got = {w.kind: (w.label, w.expire_at_ms) for w in ud.windows}
    assert got == {
        "hour": ("2024-02-29T23", ms(utc(2024, 3, 1, 1))),
        "day": ("2024-02-29", ms(utc(2024, 3, 2))),
        "month": ("2024-02", None),
        "all": ("", None),
    }


# --- parse_month / parse_day --------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "2024-13", "2024-00", "2024-2", "24-02", "2024-002", "2024/02", "2024-1a", "0000-01",
        "\uff12\uff10\uff12\uff14-02", "2024-\uff10\uff12", "2024-\u0660\u0662", "",
        " 2024-02", "2024-02 ", "-024-02", "+024-02", "2024--2", "2024-+2", "202402",
        "2024-02-01",
    ],
)  # fmt: skip
def test_parse_month_rejects_malformed_input(text: str) -> None:
    with pytest.raises(ValueError):
        parse_month(text)


@pytest.mark.parametrize(
    "text",
    [
        "2024-02-30", "2023-02-29", "2024-13-01", "2024-00-10", "2024-01-00", "2024-2-01",
        "24-02-01", "\uff12\uff10\uff12\uff14-02-01", "2024-02-0\uff11", "", "20240201",
        "2024-02-01T00", "2024/02/01", " 2024-02-1", "2024-02-1 ", "2024 02 01",
    ],
)  # fmt: skip
def test_parse_day_rejects_malformed_input(text: str) -> None:
    with pytest.raises(ValueError):
        parse_day(text)


@pytest.mark.parametrize("text", ["2021-W01-1", "2024-W09-4"])
def test_parse_day_rejects_iso_week_dates(text: str) -> None:
    # date.fromisoformat (Python 3.11+) takes ISO week dates, 10 ASCII characters long
    # like a calendar date: "2024-W09-4" is not YYYY-MM-DD
    with pytest.raises(ValueError):
        parse_day(text)


@given(st.integers(1, 9999), st.integers(1, 12))
def test_parse_month_accepts_every_real_month(year: int, month: int) -> None:
    assert parse_month(f"{year:04d}-{month:02d}") == (year, month)


@given(st.dates())
def test_parse_day_accepts_every_real_day(day: date) -> None:
    assert parse_day(day.isoformat()) == day


def test_parse_accepts_the_leap_day() -> None:
    assert parse_day("2024-02-29").isoformat() == "2024-02-29"
    assert parse_month("2030-12") == (2030, 12)


# --- merging: order and grouping never change a window -------------------------------------

USERS = ["alice", "bob", "c|d%7C"]
MODELS = ["gpt-4o", "m|x", "claude"]
AGENTS = [None, "planner", "coder|x", "a%7Cb", "unknown"]
RUNS = ["r1", "r2", "r3"]
# the edges where windows change, with entries clustered around them
ANCHORS = [
    ms(utc(2024, 2, 29)),
    ms(utc(2024, 3, 1)),
    ms(utc(2025, 1, 1)),
    ms(utc(2023, 3, 1)),
    ms(utc(2026, 6, 15, 12)),
]
near_edges = st.builds(
    lambda a, d: a + d, st.sampled_from(ANCHORS), st.integers(-3 * HOUR_MS, 3 * HOUR_MS)
)
entry_times = near_edges | timestamps


@st.composite
def usage_entries(draw: st.DrawFn, index: int) -> AcceptedEntry:
    kind = draw(st.sampled_from(["tokens", "tokens", "tool", "subagent", "custom"]))
    base = dict(
        entry_id=f"e{index}",
        kind=kind,
        tenant_id="default",
        run_id=draw(st.sampled_from(RUNS)),
        user_id=draw(st.sampled_from(USERS)),
        timestamp=draw(entry_times),
        agent_name=draw(st.sampled_from(AGENTS)),
        wire_json="{}",
    )
    if kind == "tokens":
        if draw(st.booleans()):
            p, c = draw(st.integers(0, 10**6)), draw(st.integers(0, 10**6))
            r, ca, cw = draw(st.integers(0, c)), draw(st.integers(0, p)), 0
            cw = draw(st.integers(0, p - ca))
            counts = TokenCounts(p, c, r, ca, cw, p + c)
        else:  # a bare total
            counts = TokenCounts(0, 0, 0, 0, 0, draw(st.integers(0, 10**6)))
        return AcceptedEntry(
            **base,
            model=draw(st.sampled_from(MODELS)),
            tokens=counts,
            cost_pico=draw(st.integers(0, 10**12)),
        )
    if kind in ("tool", "subagent"):
        return AcceptedEntry(
            **base,
            call_name=draw(st.sampled_from(["search", "edit"])),
            success=draw(st.booleans()),
            duration_us=draw(st.integers(0, 10**7)),
            child_run_id="child" if kind == "subagent" else None,
        )
    return AcceptedEntry(
        **base, custom_type="api", custom_name="x", custom_nano=draw(st.integers(-(10**12), 10**12))
    )


@st.composite
def entry_lists(draw: st.DrawFn) -> list[AcceptedEntry]:
    n = draw(st.integers(1, 30))
    return [draw(usage_entries(i)) for i in range(n)]


WindowKey = tuple[str, str, str]  # user, kind, label


def increments(deltas: list[UserDelta]) -> dict[WindowKey, Counter[str]]:
    """Window increments summed per (user, kind, label), as HINCRBY would (a 0 creates
    the field)."""
    out: dict[WindowKey, Counter[str]] = {}
    for ud in deltas:
        for w in ud.windows:
            c = out.setdefault((ud.user_id, w.kind, w.label), Counter())
            for f, v in w.incr.items():
                c[f] += v
    return out


def expiries(deltas: list[UserDelta]) -> dict[WindowKey, int | None]:
    return {(ud.user_id, w.kind, w.label): w.expire_at_ms for ud in deltas for w in ud.windows}


def late_of(deltas: list[UserDelta]) -> dict[tuple[str, str], int]:
    out: Counter[tuple[str, str]] = Counter()
    for ud in deltas:
        for kind, n in ud.late.items():
            out[(ud.user_id, kind)] += n
    return dict(out)


def nonzero(incr: dict[WindowKey, Counter[str]]) -> dict[WindowKey, dict[str, int]]:
    return {k: {f: v for f, v in c.items() if v} for k, c in incr.items()}


def read_back(incr: dict[WindowKey, Counter[str]]) -> dict[WindowKey, WindowUsage]:
    """As a Redis hash holds them (every value a string), read back."""
    return {k: WindowUsage.from_fields({f: str(v) for f, v in c.items()}) for k, c in incr.items()}


def deltas_of(es: list[AcceptedEntry], now: int, keep: Retention) -> list[UserDelta]:
    groups, repeats = fold_batch(es)
    assert not repeats
    return user_deltas(merge_slots([d.slots for _, d in groups]), now, keep)


@dataclass
class NaiveWindow:
    count: int = 0
    tokens: dict[str, list[int]] = field(default_factory=dict)  # model -> 6 counts + cost
    agents: dict[str, list[int]] = field(default_factory=dict)  # agent -> 6 + cost + calls
    tool_ok: int = 0
    tool_fail: int = 0

    def usage(self, kind: str) -> WindowUsage:
        def counts(s: list[int]) -> TokenCounts:
            return TokenCounts(*s[:6])

        agents = (
            sorted(
                (AgentUsage(a, counts(s), s[6], s[7]) for a, s in self.agents.items()),
                key=lambda u: (-u.cost_pico, u.agent),
            )
            if kind == "month"
            else []
        )
        return WindowUsage(
            entry_count=self.count,
            tokens_by_model={m: counts(s) for m, s in sorted(self.tokens.items())},
            cost_by_model={m: s[6] for m, s in sorted(self.tokens.items())},
            agents=agents,
            tool_ok=self.tool_ok,
            tool_fail=self.tool_fail,
        )


def naive(
    es: list[AcceptedEntry], now: int, keep: Retention
) -> tuple[dict[WindowKey, WindowUsage], dict[tuple[str, str], int], dict[str, list[str]]]:
    """Per entry, straight from datetime: its windows (unless late), late counts, months."""
    windows: dict[WindowKey, NaiveWindow] = {}
    late: Counter[tuple[str, str]] = Counter()
    months: dict[str, set[str]] = {}
    for e in es:
        want = expected(e.timestamp)
        months.setdefault(e.user_id, set()).add(want.month)
        for kind, label, end, keep_s in (
            ("hour", want.hour, want.hour_end, keep.hour_s),
            ("day", want.day, want.day_end, keep.day_s),
            ("month", want.month, want.month_end, keep.month_s),
            ("all", "", 0, 0),
        ):
            if keep_s and end + keep_s * 1000 <= now:
                late[(e.user_id, kind)] += 1
                continue
            w = windows.setdefault((e.user_id, kind, label), NaiveWindow())
            w.count += 1
            if e.kind == "tokens":
                assert e.tokens is not None and e.model is not None
                t = [*e.tokens.as_tuple(), e.cost_pico]
                sums = w.tokens.setdefault(e.model, [0] * 7)
                for i, v in enumerate(t):
                    sums[i] += v
                agent = w.agents.setdefault(e.agent_name or UNKNOWN_AGENT, [0] * 8)
                for i, v in enumerate(t):
                    agent[i] += v
                agent[7] += 1
            elif e.kind == "tool":
                if e.success:
                    w.tool_ok += 1
                else:
                    w.tool_fail += 1
    usage = {k: w.usage(k[1]) for k, w in windows.items()}
    return usage, dict(late), {u: sorted(m) for u, m in months.items()}


@st.composite
def clocks(draw: st.DrawFn, es: list[AcceptedEntry]) -> int:
    """A ``now`` near some entry's time, so that some windows are late and some not."""
    ts = draw(st.sampled_from([e.timestamp for e in es]))
    return ts + draw(st.integers(-DAY_MS, 450 * DAY_MS))


@settings(max_examples=150, deadline=None)
@given(entry_lists(), retentions, st.data())
def test_order_and_grouping_never_change_a_window(
    es: list[AcceptedEntry], keep: Retention, data: st.DataObject
) -> None:
    now = data.draw(clocks(es), label="now")
    whole = deltas_of(es, now, keep)

    shuffled = data.draw(st.permutations(es), label="order")
    cuts = sorted(data.draw(st.sets(st.integers(1, len(es)), max_size=5), label="cuts"))
    bounds = [0, *cuts, len(es)]
    parts = [shuffled[a:b] for a, b in pairwise(bounds) if b > a]

    # (b1) each part folded alone, all slots merged, then the windows computed once
    folded = [fold_batch(p)[0] for p in parts]
    merged = user_deltas(merge_slots([d.slots for g in folded for _, d in g]), now, keep)
    # (b2) each part's window increments computed alone and summed (one batch each)
    per_part = [d for p in parts for d in deltas_of(p, now, keep)]

    want_incr = increments(whole)
    for other in (merged, per_part):
        got = increments(other)
        assert nonzero(got) == nonzero(want_incr)
        assert read_back(got) == read_back(want_incr)
        assert expiries(other) == expiries(whole)
        assert late_of(other) == late_of(whole)
    assert {ud.user_id: ud.months for ud in merged} == {ud.user_id: ud.months for ud in whole}

    # and all of it equals a naive computation from each entry's datetime
    usage, late, months = naive(es, now, keep)
    assert read_back(want_incr) == usage
    assert late_of(whole) == late
    assert {ud.user_id: ud.months for ud in whole} == months


# --- read back ----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(entry_lists())
def test_window_fields_read_back_exactly(es: list[AcceptedEntry]) -> None:
    keep = Retention(0, 0, 0)
    incr = increments(deltas_of(es, HI, keep))
    usage = read_back(incr)
    for user in {e.user_id for e in es}:
        mine = [e for e in es if e.user_id == user]
        llm = [e for e in mine if e.kind == "tokens"]
        all_time = usage[(user, "all", "")]
        assert all_time.entry_count == len(mine)
        assert all_time.tokens == sum((e.tokens for e in llm if e.tokens), TokenCounts())
        assert all_time.cost_pico == sum(e.cost_pico for e in llm)
        assert set(all_time.tokens_by_model) == {e.model for e in llm}
        tools = [e for e in mine if e.kind == "tool"]
        assert all_time.tool_ok == sum(e.success for e in tools)
        assert all_time.tool_fail == sum(not e.success for e in tools)
        assert all_time.agents == []
        for month in {expected(e.timestamp).month for e in mine}:
            m = usage[(user, "month", month)]
            in_month = [e for e in llm if expected(e.timestamp).month == month]
            assert sum(a.calls for a in m.agents) == len(in_month)
            assert [a.cost_pico for a in m.agents] == sorted(
                (a.cost_pico for a in m.agents), reverse=True
            )
            assert {a.agent for a in m.agents} == {e.agent_name or "unknown" for e in in_month}
            assert sum((a.tokens for a in m.agents), TokenCounts()) == m.tokens
            assert sum(a.cost_pico for a in m.agents) == m.cost_pico


def test_total_reads_back_as_given_for_bare_totals_and_as_prompt_plus_completion() -> None:
    ts = ms(utc(2024, 2, 29, 23, 59, 59, 999_000))

    def llm(eid: str, agent: str | None, counts: TokenCounts, cost: int) -> AcceptedEntry:
        return AcceptedEntry(
            eid, "tokens", "default", "r", "u", ts, agent, "{}", model="gpt-4o",
            tokens=counts, cost_pico=cost,
        )  # fmt: skip

    es = [
        llm("a", None, TokenCounts(100, 40, 10, 20, 5, 140), 7),
        llm("b", "planner", TokenCounts(0, 0, 0, 0, 0, 1000), 9),  # only a total
        llm("c", "planner", TokenCounts(0, 0, 0, 0, 0, 0), 0),  # nothing at all
    ]
    tool = AcceptedEntry("d", "tool", "default", "r", "u", ts, "planner", "{}", call_name="s")
    incr = increments(deltas_of([*es, tool], ts, Retention(3600, 86400)))
    month = incr[("u", "month", "2024-02")]
    assert month["tk|gpt-4o|totalExtra"] == 1000
    assert all(isinstance(v, int) for v in month.values())
    usage = read_back(incr)[("u", "month", "2024-02")]
    assert usage.tokens_by_model == {"gpt-4o": TokenCounts(100, 40, 10, 20, 5, 1140)}
    assert usage.cost_by_model == {"gpt-4o": 16}
    assert usage.entry_count == 4
    assert (usage.tool_ok, usage.tool_fail) == (1, 0)
    assert usage.agents == [
        AgentUsage("planner", TokenCounts(0, 0, 0, 0, 0, 1000), 9, 2),
        AgentUsage("unknown", TokenCounts(100, 40, 10, 20, 5, 140), 7, 1),
    ]
    hour = read_back(incr)[("u", "hour", "2024-02-29T23")]
    assert hour.tokens_by_model == usage.tokens_by_model and hour.agents == []


def test_a_model_used_without_tokens_or_cost_still_shows() -> None:
    ts = ms(utc(2025, 1, 1))
    e = AcceptedEntry(
        "a", "tokens", "default", "r", "u", ts, None, "{}", model="free",
        tokens=TokenCounts(), cost_pico=0,
    )  # fmt: skip
    usage = read_back(increments(deltas_of([e], ts, Retention(0, 0))))
    for key in (("u", "hour", "2025-01-01T00"), ("u", "day", "2025-01-01"), ("u", "all", "")):
        assert usage[key].tokens_by_model == {"free": TokenCounts()}
        assert usage[key].cost_by_model == {"free": 0}
    assert usage[("u", "month", "2025-01")].agents == [AgentUsage("unknown", TokenCounts(), 0, 1)]


def test_agents_with_equal_cost_are_ordered_by_name() -> None:
    fields = {"agc|b": "5", "agc|a": "5", "agc|c": "9", "agn|a": "1", "agn|b": "2", "agn|c": "3"}
    usage = WindowUsage.from_fields(fields)
    assert [(a.agent, a.cost_pico, a.calls) for a in usage.agents] == [
        ("c", 9, 3),
        ("a", 5, 1),
        ("b", 5, 2),
    ]
