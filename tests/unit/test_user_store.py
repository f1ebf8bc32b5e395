"""Users' windows, the billing index and invoices against a real redis-server.

Entries go through ``RunStore`` (the real ``apply_batch.lua`` step); figures are read
back through ``UserQueries`` / ``InvoiceStore`` and compared with numbers worked out by
hand from the entries.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from processor.domain.counts import TokenCounts
from processor.domain.fold import AcceptedEntry
from processor.domain.invoices import TransitionRefused, adjustment_id
from processor.domain.money import format_usd
from processor.domain.windows import HOUR_MS, AgentUsage, Retention, WindowUsage
from processor.store.invoices import InvoiceNotFound, InvoiceStore
from processor.store.keys import Keys
from processor.store.runs import DEFAULT_RETENTION, INVOICES_OUTBOX, RunStore
from processor.store.user_queries import UserQueries
from tests.unit.api_support import custom, tokens, tool

DAY_S = 86_400
#: windows kept for a century: keys of 2024 stay in Redis (whatever its clock says)
LONG = Retention(hour_s=100 * 365 * DAY_S, day_s=100 * 365 * DAY_S, month_s=0)


def at(*parts: int) -> int:
    """Epoch ms of a UTC time; the 7th part is milliseconds."""
    *head, milli = (*parts, 0, 0, 0, 0, 0, 0, 0)[:7]
    dt = datetime(*head, tzinfo=UTC)  # type: ignore[misc]
    return int(dt.timestamp()) * 1000 + milli


JAN_LAST = at(2024, 1, 31, 23, 59, 59, 999)
FEB_FIRST = at(2024, 2, 1)
FEB14_LAST = at(2024, 2, 14, 23, 59, 59, 999)
FEB15_FIRST = at(2024, 2, 15)
NOW = at(2024, 3, 10)  # when the batches are applied (the windows' "now")


def make_store(redis: Redis, prefix: str, keep: Retention = LONG, now_ms: int = NOW) -> RunStore:
    return RunStore(
        redis,
        Keys(prefix),
        dedup_ttl_s=3600,
        entry_ttl_s=3600,
        retention=keep,
        clock=lambda: now_ms / 1000,
    )


@pytest.fixture
def keys(prefix: str) -> Keys:
    return Keys(prefix)


@pytest.fixture
def users(redis: Redis, keys: Keys) -> UserQueries:
    return UserQueries(redis, keys)


@pytest.fixture
def invoices(redis: Redis, keys: Keys) -> InvoiceStore:
    return InvoiceStore(redis, keys)


@pytest.fixture
def runs(redis: Redis, prefix: str) -> RunStore:
    return make_store(redis, prefix)


async def hour(redis: Redis, keys: Keys, label: str, user: str = "u1") -> WindowUsage:
    return WindowUsage.from_fields(await redis.hgetall(keys.user_hour("default", user, label)))  # type: ignore[misc]


async def window_keys(redis: Redis, prefix: str, tag: str) -> list[str]:
    return sorted([k async for k in redis.scan_iter(f"{prefix}:{tag}:*")])


def tc(prompt: int, completion: int, reasoning: int = 0, cached: int = 0) -> TokenCounts:
    return TokenCounts(prompt, completion, reasoning, cached, 0, prompt + completion)


# --- windows across day and month edges ---------------------------------------------------


def edge_entries() -> list[AcceptedEntry]:
    """User u1's entries on both sides of a month edge and of a day edge."""
    return [
        tokens("r1", JAN_LAST, "gpt-4o", 100, 40, 1_000, id="a", agent="planner", reasoning=10),
        tool("r1", JAN_LAST, "search", True, 2.5, id="b", agent="planner"),
        tokens("r1", FEB_FIRST, "gpt-4o", 10, 5, 300, id="c", cached=4),
        tokens("r2", FEB14_LAST, "claude", 7, 3, 50, id="d", agent="coder"),
        tool("r2", FEB15_FIRST, "edit", False, 1.0, id="e", agent="coder"),
        custom("r2", FEB15_FIRST, "api", "tavily", 2.5, id="f", agent="coder"),
        tokens("r2", FEB15_FIRST, "claude", 1, 1, 20, id="g", agent="coder"),
    ]


async def assert_edge_figures(redis: Redis, keys: Keys, users: UserQueries, prefix: str) -> None:
    """Exactly what ``edge_entries`` add up to, window by window."""
    # hours: one per entry time, each in its own hour
    h = await hour(redis, keys, "2024-01-31T23")
    assert (h.entry_count, h.tool_ok, h.tool_fail) == (2, 1, 0)
    assert h.tokens_by_model == {"gpt-4o": tc(100, 40, reasoning=10)}
    assert h.cost_by_model == {"gpt-4o": 1_000} and h.agents == []
    h = await hour(redis, keys, "2024-02-01T00")
    assert h.entry_count == 1 and h.tokens_by_model == {"gpt-4o": tc(10, 5, cached=4)}
    assert h.cost_pico == 300
    h = await hour(redis, keys, "2024-02-14T23")
    assert h.entry_count == 1 and h.tokens_by_model == {"claude": tc(7, 3)} and h.cost_pico == 50
    h = await hour(redis, keys, "2024-02-15T00")
    assert (h.entry_count, h.tool_ok, h.tool_fail) == (3, 0, 1)
    assert h.tokens_by_model == {"claude": tc(1, 1)} and h.cost_pico == 20
    assert await window_keys(redis, prefix, "uh") == [
        keys.user_hour("default", "u1", label)
        for label in ("2024-01-31T23", "2024-02-01T00", "2024-02-14T23", "2024-02-15T00")
    ]

    # days: the same four, read through the queries (days without usage left out)
    days = await users.daily("default", "u1", date(2024, 1, 30), date(2024, 2, 16))
    assert days is not None
    assert [(d, u.entry_count, u.cost_pico) for d, u in days] == [
        ("2024-01-31", 2, 1_000),
        ("2024-02-01", 1, 300),
        ("2024-02-14", 1, 50),
        ("2024-02-15", 3, 20),
    ]
    assert days[0][1].tokens == tc(100, 40, reasoning=10) and days[0][1].tool_ok == 1
    assert days[3][1].tool_fail == 1 and days[3][1].tokens == tc(1, 1)
    assert len(await window_keys(redis, prefix, "ud")) == 4

    # months: January holds the last millisecond, February the first
    jan = await users.month("default", "u1", "2024-01")
    assert jan is not None
    assert (jan.entry_count, jan.tool_ok, jan.tool_fail) == (2, 1, 0)
    assert jan.tokens_by_model == {"gpt-4o": tc(100, 40, reasoning=10)}
    assert jan.cost_by_model == {"gpt-4o": 1_000}
    assert jan.agents == [AgentUsage("planner", tc(100, 40, reasoning=10), 1_000, 1)]
    feb = await users.month("default", "u1", "2024-02")
    assert feb is not None
    assert (feb.entry_count, feb.tool_ok, feb.tool_fail) == (5, 0, 1)
    assert feb.tokens_by_model == {"claude": tc(8, 4), "gpt-4o": tc(10, 5, cached=4)}
    assert feb.cost_by_model == {"claude": 70, "gpt-4o": 300}
    assert feb.agents == [
        AgentUsage("unknown", tc(10, 5, cached=4), 300, 1),
        AgentUsage("coder", tc(8, 4), 70, 2),
    ]
    assert await users.month("default", "u1", "2024-03") == WindowUsage()
    assert await users.month("default", "nobody", "2024-02") is None

    # all time
    all_time = await users.all_time("default", "u1")
    assert all_time is not None and all_time.run_count == 2
    u = all_time.usage
    assert (u.entry_count, u.tool_ok, u.tool_fail, u.cost_pico) == (7, 1, 1, 1_370)
    assert u.tokens_by_model == {
        "claude": tc(8, 4),
        "gpt-4o": TokenCounts(110, 45, 10, 4, 0, 155),
    }
    assert u.agents == []
    both = await users.month_and_all_time("default", "u1", "2024-02")
    assert both == (feb, u)


async def test_windows_across_a_day_and_a_month_edge_hold_exactly_their_entries(
    redis: Redis, runs: RunStore, keys: Keys, users: UserQueries, prefix: str
) -> None:
    result = await runs.apply(edge_entries())
    assert len(result.accepted) == 7 and not result.duplicates
    await assert_edge_figures(redis, keys, users, prefix)


async def test_duplicates_in_the_batch_and_in_later_batches_change_nothing(
    redis: Redis, runs: RunStore, keys: Keys, users: UserQueries, prefix: str
) -> None:
    entries = edge_entries()
    # the same id again in the same batch, with other figures: still the same entry
    again = tokens("r1", FEB_FIRST, "gpt-4o", 999, 999, 999_999, id="a", agent="x")
    first = await runs.apply([*entries[:3], again, *entries[3:]])
    assert len(first.accepted) == 7 and [e.entry_id for e in first.duplicates] == ["a"]
    await assert_edge_figures(redis, keys, users, prefix)
    # a later batch: every id seen
    later = await runs.apply([*edge_entries(), again])
    assert not later.accepted and len(later.duplicates) == 8
    # another store (another worker) sees them too
    other = await make_store(redis, prefix).apply(edge_entries()[::-1])
    assert not other.accepted and len(other.duplicates) == 7
    await assert_edge_figures(redis, keys, users, prefix)


async def test_a_retried_plan_applies_once(
    redis: Redis, runs: RunStore, keys: Keys, users: UserQueries, prefix: str
) -> None:
    entries = edge_entries()
    plan = runs.plan(entries, NOW)
    # the script runs, but its reply is lost to a broken connection
    real = runs._apply_script
    lost = [True]

    async def reply_lost(*args: Any, **kwargs: Any) -> Any:
        reply = await real(*args, **kwargs)
        if lost:
            lost.pop()
            raise ConnectionError("connection reset by peer")
        return reply

    runs._apply_script = reply_lost  # type: ignore[assignment]
    with pytest.raises(ConnectionError):
        await runs.execute(plan)
    result = await runs.execute(plan)
    assert len(result.accepted) == 7 and not result.duplicates
    again = await runs.execute(plan)  # a done plan: nothing sent
    assert len(again.accepted) == 7
    await assert_edge_figures(redis, keys, users, prefix)

    # the same, with the lost reply simulated by a plan sharing the token
    other = "x" + prefix
    store = make_store(redis, other)
    first = store.plan(edge_entries(), NOW)
    twin = store.plan(edge_entries(), NOW)
    twin.token = first.token
    await store.execute(twin)
    result = await store.execute(first)
    assert len(result.accepted) == 7 and not result.duplicates
    await assert_edge_figures(redis, Keys(other), UserQueries(redis, Keys(other)), other)


# --- expiry ---------------------------------------------------------------------------------


def hour_end(ts: int) -> int:
    return (ts // HOUR_MS + 1) * HOUR_MS


def day_end(ts: int) -> int:
    d = datetime.fromtimestamp(ts / 1000, UTC).date() + timedelta(days=1)
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()) * 1000


async def test_hour_and_day_keys_expire_at_window_end_plus_retention(
    redis: Redis, keys: Keys, prefix: str
) -> None:
    # times around the server's clock, so no window has expired for Redis either
    now = int(time.time() * 1000)
    keep = Retention(hour_s=2 * DAY_S, day_s=40 * DAY_S, month_s=0)
    store = make_store(redis, prefix, keep, now)
    ts = now - HOUR_MS
    e = tokens("r", ts, "m", 1, 2, 3, id="a")
    await store.execute(store.plan([e], now))
    dt = datetime.fromtimestamp(ts / 1000, UTC)
    hk = keys.user_hour("default", "u1", dt.strftime("%Y-%m-%dT%H"))
    dk = keys.user_day("default", "u1", dt.strftime("%Y-%m-%d"))
    mk = keys.user_month("default", "u1", dt.strftime("%Y-%m"))
    ak = keys.user_all("default", "u1")
    assert await redis.pexpiretime(hk) == hour_end(ts) + 2 * DAY_S * 1000
    assert await redis.expiretime(hk) == (hour_end(ts) + 2 * DAY_S * 1000) // 1000
    assert await redis.pexpiretime(dk) == day_end(ts) + 40 * DAY_S * 1000
    assert await redis.pexpiretime(mk) == -1
    assert await redis.pexpiretime(ak) == -1
    assert 0 < await redis.pttl(hk) <= hour_end(ts) + 2 * DAY_S * 1000 - (now - 60_000)
    # the long-retention store: keys of 2024 expire a century after their window
    await make_store(redis, prefix + "2").apply([tokens("r", JAN_LAST, "m", 1, 1, 1, id="a")])
    k2 = Keys(prefix + "2")
    century = 100 * 365 * DAY_S * 1000
    assert await redis.pexpiretime(k2.user_hour("default", "u1", "2024-01-31T23")) == (
        FEB_FIRST + century
    )
    assert await redis.pexpiretime(k2.user_day("default", "u1", "2024-01-31")) == (
        FEB_FIRST + century
    )
    assert await redis.pexpiretime(k2.user_month("default", "u1", "2024-01")) == -1


async def test_an_entry_of_an_expired_hour_counts_in_its_day_month_and_all_time(
    redis: Redis, keys: Keys, users: UserQueries, prefix: str
) -> None:
    real_now = int(time.time() * 1000)
    keep = Retention(hour_s=2 * DAY_S, day_s=40 * DAY_S, month_s=0)
    store = make_store(redis, prefix, keep, real_now)
    # the store's "now" is three days ahead of Redis' clock: the hour of `late` has
    # expired for the store, but its expiry (hour end + 2 days) is still ahead for Redis,
    # so a key written for it would stay and show
    now = real_now + 3 * DAY_S * 1000
    late_ts = real_now - HOUR_MS
    fresh_ts = now - 1
    late = tokens("r", late_ts, "m", 5, 5, 100, id="late")
    fresh = tokens("r", fresh_ts, "m", 1, 1, 7, id="fresh")
    result = await store.execute(store.plan([late, fresh], now))
    assert len(result.accepted) == 2

    def labels(ts: int) -> tuple[str, str, str]:
        dt = datetime.fromtimestamp(ts / 1000, UTC)
        return dt.strftime("%Y-%m-%dT%H"), dt.strftime("%Y-%m-%d"), dt.strftime("%Y-%m")

    lh, ld, lm = labels(late_ts)
    fh, fd, fm = labels(fresh_ts)
    assert not await redis.exists(keys.user_hour("default", "u1", lh))
    assert await hour(redis, keys, fh) == WindowUsage(1, {"m": tc(1, 1)}, {"m": 7}, [], 0, 0)
    assert await redis.pexpiretime(keys.user_hour("default", "u1", fh)) == (
        hour_end(fresh_ts) + 2 * DAY_S * 1000
    )
    days = await users.daily("default", "u1", date.fromisoformat(ld), date.fromisoformat(fd))
    assert days is not None
    assert [(d, u.entry_count, u.cost_pico) for d, u in days] == [(ld, 1, 100), (fd, 1, 7)]
    assert await redis.pexpiretime(keys.user_day("default", "u1", ld)) == (
        day_end(late_ts) + 40 * DAY_S * 1000
    )
    months: Counter[str] = Counter()
    months[lm] += 100
    months[fm] += 7  # the same month as lm, or the next one
    for m, cost in months.items():
        usage = await users.month("default", "u1", m)
        assert usage is not None and usage.cost_pico == cost
    all_time = await users.all_time("default", "u1")
    assert all_time is not None
    assert (all_time.usage.entry_count, all_time.usage.cost_pico) == (2, 107)


async def test_an_entry_older_than_hour_and_day_retention_counts_in_month_and_all_time(
    redis: Redis, keys: Keys, users: UserQueries, prefix: str
) -> None:
    store = make_store(redis, prefix, DEFAULT_RETENTION, at(2023, 1, 1))
    e = tokens("r", at(2021, 6, 1, 12), "m", 3, 4, 9, id="old")
    result = await store.execute(store.plan([e], at(2023, 1, 1)))
    assert len(result.accepted) == 1
    assert await window_keys(redis, prefix, "uh") == []
    assert await window_keys(redis, prefix, "ud") == []
    month = await users.month("default", "u1", "2021-06")
    assert month is not None and (month.entry_count, month.cost_pico) == (1, 9)
    assert month.tokens == tc(3, 4)
    all_time = await users.all_time("default", "u1")
    assert all_time is not None and all_time.usage.entry_count == 1
    assert await users.daily("default", "u1", date(2021, 6, 1), date(2021, 6, 1)) == []


# --- billing users index ----------------------------------------------------------------------

ODD_USERS = ["(paren", "[bracket", "-", "+", "a b", "\u00fc", "zz:colon", "%25"]


async def test_billing_pages_list_every_user_once_in_order(
    runs: RunStore, users: UserQueries
) -> None:
    ids = [f"user-{i:04d}" for i in range(2500 - len(ODD_USERS))] + ODD_USERS
    cost = {u: i + 1 for i, u in enumerate(ids)}
    entries = [
        tokens(f"run-{i}", FEB14_LAST - i, "m", 1, 1, cost[u], id=f"e{i}", user=u)
        for i, u in enumerate(ids)
    ]
    # and some in another month, which must not show
    entries += [tokens("other", JAN_LAST, "m", 1, 1, 1, id="jan", user="january-only")]
    result = await runs.apply(entries)
    assert len(result.accepted) == 2501

    for limit, sizes in ((1000, [1000, 1000, 500]), (500, [500] * 5), (999, [999, 999, 502])):
        seen: list[str] = []
        got_sizes = []
        after = None
        while True:
            rows, after = await users.billing_page("default", "2024-02", limit=limit, after=after)
            got_sizes.append(len(rows))
            for row in rows:
                assert row.usage.entry_count == 1 and row.usage.cost_pico == cost[row.user_id]
            seen += [r.user_id for r in rows]
            if after is None:
                break
            assert after == rows[-1].user_id
        assert got_sizes == sizes
        assert seen == sorted(ids)
    for bad in (0, 1001):
        with pytest.raises(ValueError):
            await users.billing_page("default", "2024-02", limit=bad, after=None)
    rows, after = await users.billing_page("default", "2024-01", limit=10, after=None)
    assert [r.user_id for r in rows] == ["january-only"] and after is None


# --- invoices ---------------------------------------------------------------------------------


def february() -> list[AcceptedEntry]:
    return [
        tokens("ra", FEB_FIRST, "gpt-4o", 100, 50, 4_000_000, id="a1", user="alice"),
        tokens("ra", FEB14_LAST, "claude", 10, 10, 9_000_000, id="a2", user="alice"),
        tokens("ra", FEB15_FIRST, "gpt-4o", 1, 1, 333, id="a3", user="alice", agent="x"),
        tool("ra", FEB15_FIRST, "search", True, 1.0, id="a4", user="alice"),
        tokens("rb", FEB15_FIRST, "gpt-4o", 7, 0, 12_345, id="b1", user="bob"),
        # carol's usage is in January: no February invoice
        tokens("rc", JAN_LAST, "gpt-4o", 7, 0, 5, id="c1", user="carol"),
    ]


async def outbox(redis: Redis, keys: Keys) -> list[dict[str, str]]:
    return [f for _, f in await redis.xrange(keys.outbox(INVOICES_OUTBOX))]


async def test_invoices_are_generated_once_with_the_month_cost_exactly(
    redis: Redis, runs: RunStore, keys: Keys, users: UserQueries, invoices: InvoiceStore
) -> None:
    await runs.apply(february())
    first = await invoices.generate("default", "2024-02", now_ms=NOW)
    assert first.created == 2
    assert [i.user_id for i in first.invoices] == ["alice", "bob"]
    alice, bob = first.invoices
    assert alice.amount_pico == 4_000_333 + 9_000_000
    assert [(line.model, line.tokens, line.amount_pico) for line in alice.lines] == [
        ("claude", 20, 9_000_000),
        ("gpt-4o", 152, 4_000_333),
    ]
    assert (bob.amount_pico, len(bob.lines)) == (12_345, 1)
    for inv in first.invoices:
        month = await users.month("default", inv.user_id, "2024-02")
        assert month is not None
        assert inv.amount_pico == month.cost_pico == sum(x.amount_pico for x in inv.lines)
        assert (inv.status, inv.adjustment_pico, inv.generated_at) == ("pending", 0, NOW)
        assert (inv.tenant_id, inv.period) == ("default", "2024-02")
        assert await invoices.get("default", inv.invoice_id) == inv
    assert alice.invoice_id != bob.invoice_id

    second = await invoices.generate("default", "2024-02", now_ms=NOW + 1)
    assert second.created == 0
    assert second.invoices == first.invoices  # same ids, same amounts, first generatedAt
    assert (await invoices.generate("default", "2024-01", now_ms=NOW)).created == 1
    assert (await invoices.generate("default", "2023-12", now_ms=NOW)).invoices == []

    messages = await outbox(redis, keys)
    assert len(messages) == 3  # one per new invoice, none for the repeat
    for m, inv in zip(messages[:2], first.invoices, strict=True):
        assert set(m) == {"k", "v", "id"}
        assert (m["k"], m["id"]) == (inv.user_id, inv.invoice_id)
        body = json.loads(m["v"])
        assert body["type"] == "invoice"
        assert body["invoice"]["invoiceId"] == inv.invoice_id
        assert body["invoice"]["amountUsd"] == format_usd(inv.amount_pico)
        assert body["invoice"]["adjustmentUsd"] == "0"


@pytest.fixture
async def second_client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def test_concurrent_generation_creates_each_invoice_once(
    redis: Redis, second_client: Redis, runs: RunStore, keys: Keys
) -> None:
    n = 1_200  # more than one generation page
    await runs.apply(
        [
            tokens(f"r{i}", FEB14_LAST, "m", 1, 1, 10 + i, id=f"e{i}", user=f"u{i:05d}")
            for i in range(n)
        ]
    )
    a, b = InvoiceStore(redis, keys), InvoiceStore(second_client, keys)
    one, two = await asyncio.gather(
        a.generate("default", "2024-02", now_ms=NOW), b.generate("default", "2024-02", now_ms=NOW)
    )
    assert one.created + two.created == n
    assert one.invoices == two.invoices and len(one.invoices) == n
    assert [i.amount_pico for i in one.invoices] == [10 + i for i in range(n)]
    messages = await outbox(redis, keys)
    assert len(messages) == n
    assert sorted(m["id"] for m in messages) == sorted(i.invoice_id for i in one.invoices)


async def test_a_late_entry_of_an_invoiced_month_becomes_an_adjustment(
    redis: Redis,
    runs: RunStore,
    keys: Keys,
    users: UserQueries,
    invoices: InvoiceStore,
    prefix: str,
) -> None:
    await runs.apply(february())
    (alice, bob) = (await invoices.generate("default", "2024-02", now_ms=NOW)).invoices
    assert len(await outbox(redis, keys)) == 2

    # a late entry of February, applied by a worker that does not know of the invoice
    late_at = NOW + 5_000
    late = tokens("ra", FEB15_FIRST + 1, "gpt-4o", 3, 3, 777, id="late1", user="alice")
    result = await runs.execute(runs.plan([late], late_at))
    assert [e.entry_id for e in result.accepted] == ["late1"]
    got = await invoices.get("default", alice.invoice_id)
    assert got is not None
    assert (got.amount_pico, got.adjustment_pico) == (alice.amount_pico, 777)
    assert got.lines == alice.lines
    month = await users.month("default", "alice", "2024-02")
    assert month is not None and month.cost_pico == alice.amount_pico + 777
    all_time = await users.all_time("default", "alice")
    assert all_time is not None and all_time.usage.cost_pico == alice.amount_pico + 777

    messages = await outbox(redis, keys)
    assert len(messages) == 3
    adj = messages[2]
    assert set(adj) == {"k", "v", "id"}
    assert adj["k"] == "alice" and adj["id"] == adjustment_id(alice.invoice_id, "late1")
    assert json.loads(adj["v"]) == {
        "type": "adjustment",
        "adjustmentId": adj["id"],
        "invoiceId": alice.invoice_id,
        "amountUsd": format_usd(777),
        "entryId": "late1",
        "at": late_at,
    }

    # a duplicate of it, from this worker and from another: nothing more
    for store in (runs, make_store(redis, prefix)):
        again = await store.apply([late])
        assert not again.accepted and len(again.duplicates) == 1
    got = await invoices.get("default", alice.invoice_id)
    assert got is not None and got.adjustment_pico == 777
    month = await users.month("default", "alice", "2024-02")
    assert month is not None and month.cost_pico == alice.amount_pico + 777
    assert len(await outbox(redis, keys)) == 3

    # another late entry through a fresh worker, and one through a worker told of the
    # invoice: both add up; an entry without cost changes the rollup, not the invoice
    fresh = make_store(redis, prefix)
    await fresh.apply(
        [tokens("ra", FEB_FIRST + 9, "claude", 1, 0, 1_000, id="late2", user="alice")]
    )
    told = make_store(redis, prefix)
    told.note_invoiced("default", "alice", "2024-02")
    await told.apply(
        [
            tokens("ra", FEB_FIRST + 10, "claude", 1, 0, 23, id="late3", user="alice"),
            tool("ra", FEB_FIRST + 11, "search", False, 1.0, id="late4", user="alice"),
        ]
    )
    got = await invoices.get("default", alice.invoice_id)
    assert got is not None
    assert (got.amount_pico, got.adjustment_pico) == (alice.amount_pico, 777 + 1_000 + 23)
    month = await users.month("default", "alice", "2024-02")
    assert month is not None
    assert month.cost_pico == alice.amount_pico + 1_800
    assert (month.entry_count, month.tool_fail) == (4 + 4, 1)
    messages = await outbox(redis, keys)
    assert [m["id"] for m in messages[3:]] == [
        adjustment_id(alice.invoice_id, "late2"),
        adjustment_id(alice.invoice_id, "late3"),
    ]
    # bob's invoice and the repeat generation: untouched
    assert await invoices.get("default", bob.invoice_id) == bob
    again = await invoices.generate("default", "2024-02", now_ms=NOW + 9)
    assert again.created == 0
    assert [i.amount_pico for i in again.invoices] == [alice.amount_pico, bob.amount_pico]
    assert len(await outbox(redis, keys)) == 5


async def test_invoice_status_transitions(runs: RunStore, invoices: InvoiceStore) -> None:
    names = ["p1", "p2", "p3", "p4", "p5"]
    await runs.apply([tokens("r", FEB_FIRST, "m", 1, 1, 10, id=f"e-{u}", user=u) for u in names])
    made = {
        i.user_id: i.invoice_id
        for i in (await invoices.generate("default", "2024-02", NOW)).invoices
    }

    async def status(user: str) -> str:
        inv = await invoices.get("default", made[user])
        assert inv is not None
        return inv.status

    # allowed
    assert (await invoices.set_status("default", made["p1"], "paid")).status == "paid"
    assert (await invoices.set_status("default", made["p2"], "failed")).status == "failed"
    assert (await invoices.set_status("default", made["p2"], "paid")).status == "paid"
    assert (await invoices.set_status("default", made["p3"], "failed")).status == "failed"
    # refused, leaving the status as it was
    for user, new, was in (
        ("p1", "paid", "paid"),
        ("p1", "failed", "paid"),
        ("p1", "pending", "paid"),
        ("p4", "pending", "pending"),
        ("p3", "failed", "failed"),
        ("p3", "pending", "failed"),
    ):
        with pytest.raises(TransitionRefused):
            await invoices.set_status("default", made[user], new)
        assert await status(user) == was
    # unknown status, unknown invoice
    with pytest.raises(ValueError):
        await invoices.set_status("default", made["p5"], "refunded")
    with pytest.raises(ValueError):
        await invoices.set_status("default", made["p5"], "")
    assert await status("p5") == "pending"
    with pytest.raises(InvoiceNotFound):
        await invoices.set_status("default", "inv_nope", "paid")
    with pytest.raises(InvoiceNotFound):
        await invoices.set_status("other-tenant", made["p5"], "paid")
    assert await invoices.get("default", "inv_nope") is None


# --- tenants ----------------------------------------------------------------------------------


async def test_two_tenants_with_the_same_user_id_stay_apart(
    redis: Redis, runs: RunStore, keys: Keys, users: UserQueries, invoices: InvoiceStore
) -> None:
    # same user, same run and entry ids, same times: different tenants, different entries
    def of(tenant: str, cost: int, prompt: int) -> list[AcceptedEntry]:
        return [
            tokens("r", FEB14_LAST, "m", prompt, 1, cost, id="e1", user="u", tenant=tenant),
            tool("r", FEB15_FIRST, "t", True, 1.0, id="e2", user="u", tenant=tenant),
        ]

    result = await runs.apply([*of("t1", 100, 10), *of("t2", 2_000, 20)])
    assert len(result.accepted) == 4 and not result.duplicates
    for tenant, cost, prompt in (("t1", 100, 10), ("t2", 2_000, 20)):
        month = await users.month(tenant, "u", "2024-02")
        assert month is not None
        assert (month.entry_count, month.cost_pico, month.tokens.prompt) == (2, cost, prompt)
        all_time = await users.all_time(tenant, "u")
        assert all_time is not None and all_time.usage.cost_pico == cost
        assert all_time.run_count == 1
        day = await users.daily(tenant, "u", date(2024, 2, 14), date(2024, 2, 15))
        assert day is not None and [d for d, _ in day] == ["2024-02-14", "2024-02-15"]
        rows, _ = await users.billing_page(tenant, "2024-02", limit=10, after=None)
        assert [(r.user_id, r.usage.cost_pico) for r in rows] == [("u", cost)]
    assert await users.month("default", "u", "2024-02") is None
    assert await invoices.tenants_of("2024-02") == ["t1", "t2"]

    (i1,) = (await invoices.generate("t1", "2024-02", NOW)).invoices
    assert await invoices.list_period("t2", "2024-02") == []
    (i2,) = (await invoices.generate("t2", "2024-02", NOW)).invoices
    assert i1.invoice_id != i2.invoice_id
    assert (i1.tenant_id, i1.amount_pico) == ("t1", 100)
    assert (i2.tenant_id, i2.amount_pico) == ("t2", 2_000)
    assert await invoices.get("t1", i2.invoice_id) is None

    # a late entry of t1 adjusts t1's invoice only
    await runs.apply([tokens("r", FEB15_FIRST, "m", 1, 1, 5, id="e3", user="u", tenant="t1")])
    got1, got2 = await invoices.get("t1", i1.invoice_id), await invoices.get("t2", i2.invoice_id)
    assert got1 is not None and got2 is not None
    assert (got1.adjustment_pico, got2.adjustment_pico) == (5, 0)
    month2 = await users.month("t2", "u", "2024-02")
    assert month2 is not None and month2.cost_pico == 2_000
    assert len(await outbox(redis, keys)) == 3


async def test_an_entry_applied_while_an_invoice_is_drafted_is_in_its_amount_once(
    redis: Redis, runs: RunStore, keys: Keys, invoices: InvoiceStore
) -> None:
    await runs.apply(february())
    real = invoices._create
    raced = [tokens("ra", FEB15_FIRST, "gpt-4o", 1, 1, 5_000, id="race", user="alice")]

    verdicts: list[list[str]] = []

    async def create_after_an_entry(*args: Any, **kwargs: Any) -> Any:
        # between reading the months and creating the invoices, an entry lands
        if raced:
            applied = await runs.apply([raced.pop()])
            assert len(applied.accepted) == 1
        verdicts.append(list(await real(*args, **kwargs)))
        return verdicts[-1]

    invoices._create = create_after_an_entry  # type: ignore[assignment]
    made = await invoices.generate("default", "2024-02", now_ms=NOW)
    assert made.created == 2
    assert verdicts == [["moved", "created"], ["created"]]  # alice's month was read again
    alice = made.invoices[0]
    assert alice.user_id == "alice"
    assert (alice.amount_pico, alice.adjustment_pico) == (13_000_333 + 5_000, 0)
    assert sum(line.amount_pico for line in alice.lines) == alice.amount_pico
    assert len(await outbox(redis, keys)) == 2


async def test_a_late_entry_whose_reply_is_lost_is_adjusted_once(
    redis: Redis, runs: RunStore, keys: Keys, users: UserQueries, invoices: InvoiceStore
) -> None:
    await runs.apply(february())
    (alice, _) = (await invoices.generate("default", "2024-02", now_ms=NOW)).invoices
    real = runs._apply_script
    lost = [True]

    async def reply_lost(*args: Any, **kwargs: Any) -> Any:
        reply = await real(*args, **kwargs)
        if lost and json.loads(reply).get("applied"):
            lost.pop()
            raise ConnectionError("connection reset by peer")
        return reply

    runs._apply_script = reply_lost  # type: ignore[assignment]
    # one batch: a late February entry, and a March one of the same user
    batch = [
        tokens("ra", FEB15_FIRST, "gpt-4o", 1, 1, 40, id="late", user="alice"),
        tokens("ra", at(2024, 3, 1), "gpt-4o", 1, 1, 2, id="march", user="alice"),
    ]
    plan = runs.plan(batch, NOW)
    with pytest.raises(ConnectionError):
        await runs.execute(plan)
    result = await runs.execute(plan)
    assert sorted(e.entry_id for e in result.accepted) == ["late", "march"]
    assert not result.duplicates
    got = await invoices.get("default", alice.invoice_id)
    assert got is not None and got.adjustment_pico == 40
    messages = await outbox(redis, keys)
    assert [m["id"] for m in messages[2:]] == [adjustment_id(alice.invoice_id, "late")]
    feb = await users.month("default", "alice", "2024-02")
    mar = await users.month("default", "alice", "2024-03")
    assert feb is not None and mar is not None
    assert (feb.cost_pico, mar.cost_pico) == (alice.amount_pico + 40, 2)


async def test_late_entries_of_several_invoiced_users_in_one_batch_are_adjusted_each(
    redis: Redis, runs: RunStore, keys: Keys, invoices: InvoiceStore, prefix: str
) -> None:
    """The script's verdict names each invoiced month by user and month: with several
    users (and months) in one call, each one is matched to its own invoice."""
    await runs.apply(february())
    alice, bob = (await invoices.generate("default", "2024-02", now_ms=NOW)).invoices
    fresh = make_store(redis, prefix)  # knows of no invoice
    await fresh.apply(
        [
            tokens("rc", JAN_LAST - 1, "gpt-4o", 1, 0, 11, id="c-late", user="carol"),
            tokens("ra", FEB_FIRST + 1, "gpt-4o", 1, 0, 100, id="a-late", user="alice"),
            tokens("ra", at(2024, 3, 1), "gpt-4o", 1, 0, 5, id="a-march", user="alice"),
            tokens("rb", FEB_FIRST + 2, "claude", 1, 0, 200, id="b-late", user="bob"),
        ]
    )
    got_alice = await invoices.get("default", alice.invoice_id)
    got_bob = await invoices.get("default", bob.invoice_id)
    assert got_alice is not None and got_alice.adjustment_pico == 100
    assert got_bob is not None and got_bob.adjustment_pico == 200
    adjusted = sorted(json.loads(m["v"])["entryId"] for m in (await outbox(redis, keys))[2:])
    assert adjusted == ["a-late", "b-late"]
