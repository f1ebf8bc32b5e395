"""Invoices end to end: real worker, real Kafka and Redis, the CLI as separate processes.

- Generation run twice and concurrently (two ``usage-stream invoices generate`` processes at
  once, then a third, then the API): one invoice per user and period, the same ids every
  time, and exactly one ``invoice`` message per invoice on ``usage.invoices`` as a
  ``read_committed`` consumer sees it; invoices generated through the API are published
  by the worker.
- A late entry for an invoiced month: the month's rollup and the invoice's
  ``adjustmentUsd`` grow by its cost, ``amountUsd`` stays, one ``adjustment`` message is
  published, and no other month or user changes.
- The worker SIGKILLed at random moments while a stream of late entries for invoiced
  months (priced, zero-cost, other kinds, re-sent ids, and a month not invoiced) is being
  applied, restarted each time: every figure and every adjustment ends exact, and each
  adjustment is published exactly once.
- Status transitions through the API: every allowed one, every refused one (409), and
  unknown statuses (400).
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from processor.consumer import ingest_group_id
from processor.domain.pricing import load_catalog
from processor.settings import Settings
from processor.store.keys import Keys
from tests.integration.ground_truth import (
    Entry,
    UserWindowsTruth,
    check_billing,
    check_invoices,
    check_user,
    check_user_hours,
    entry_cost,
    messages,
    usd,
    utc_ms,
    wait_caught_up,
    with_duplicates,
)
from tests.integration.harness import WorkerProcess, create_topics, produce
from tests.integration.redis_control import PacedProducer
from tests.integration.user_streams import (
    CliRun,
    EntryMaker,
    Published,
    applied_count,
    by_type,
    decoding_redis,
    invoice_counts,
    read_committed,
    shuffled,
    wait_applied,
    wait_outbox_empty,
    window_settings,
)

USERS = ["ana", "ben", "cy", "dee", "eve", "fay"]
PERIODS = ["2025-09", "2025-10"]
DAY_MS = 86_400_000
EDGES = [
    "2025-09-01T00:00:00.000Z",
    "2025-09-30T23:59:59.999Z",
    "2025-10-01T00:00:00.000Z",
    "2025-10-15T23:59:59.999Z",
    "2025-10-16T00:00:00.000Z",
    "2025-10-31T23:59:59.999Z",
]


def stamps(maker: EntryMaker, n: int, periods: list[str] = PERIODS) -> list[int]:
    rnd = maker.rnd
    edges = [utc_ms(e) for e in EDGES if e[:7] in periods]
    out = []
    for _ in range(n):
        period = rnd.choice(periods)
        if edges and rnd.random() < 0.2:
            out.append(rnd.choice(edges))
        else:
            day = rnd.choice((1, 2, 15, 16, 28, 30))
            out.append(utc_ms(f"{period}-{day:02d}T00:00:00Z") + rnd.randrange(DAY_MS))
    return out


async def check_all(
    http: httpx.AsyncClient,
    redis: aioredis.Redis,
    settings: Settings,
    truth: UserWindowsTruth,
    tenant: str = "default",
) -> None:
    """Every hour (Redis), day, month and all time of every user, and every billing list."""
    keys = Keys(settings.key_prefix)
    users = truth.users(tenant)
    await asyncio.gather(*(check_user(http, truth, tenant, u) for u in users))
    for user in users:
        await check_user_hours(redis, keys, truth, tenant, user)
    for period in truth.periods(tenant):
        await check_billing(http, truth, tenant, period, limit=4)


async def post_generate(http: httpx.AsyncClient, period: str) -> dict[str, dict[str, Any]]:
    response = await http.post(f"/v1/billing/{period}/invoices")
    assert response.status_code == 200, (period, response.status_code, response.text)
    return {inv["userId"]: inv for inv in response.json()["invoices"]}


async def published(
    redis: aioredis.Redis, settings: Settings, workers: list[WorkerProcess]
) -> dict[str, list[Published]]:
    """Once the outbox is empty, every committed message of the invoices topic, by type."""
    await wait_outbox_empty(redis, settings, timeout=60, workers=workers)
    return by_type(await read_committed(settings, settings.topic_invoices))


def assert_invoices_published_once(
    msgs: dict[str, list[Published]], invoices: dict[str, dict[str, Any]]
) -> None:
    """``invoices``: invoiceId -> the invoice as generated (before any status change or
    adjustment). Exactly one message each, keyed by its user, carrying that invoice."""
    counts = invoice_counts(msgs.get("invoice", []))
    twice = {i: n for i, n in counts.items() if n != 1}
    assert not twice, f"invoices published more than once: {twice}"
    missing, extra = sorted(set(invoices) - set(counts)), sorted(set(counts) - set(invoices))
    assert not missing and not extra, f"invoices not published: {missing}; unexpected: {extra}"
    for m in msgs.get("invoice", []):
        assert set(m.value) == {"type", "invoice"}, m.value
        inv = invoices[m.value["invoice"]["invoiceId"]]
        assert m.key == inv["userId"], (m.key, inv["userId"])
        assert m.value["invoice"] == inv, f"message {m.value['invoice']} != generated {inv}"
    unknown = set(msgs) - {"invoice", "adjustment"}
    assert not unknown, f"unexpected message types {unknown}: {[msgs[t][0] for t in unknown]}"


def assert_adjustments_published_once(
    msgs: dict[str, list[Published]],
    truth: UserWindowsTruth,
    invoice_ids: dict[tuple[str, str], str],
) -> None:
    """One ``adjustment`` message per priced late entry of an invoiced month, and no other."""
    got = msgs.get("adjustment", [])
    counts = Counter(m.value.get("entryId") for m in got)
    repeated = {e: n for e, n in counts.items() if n != 1}
    assert not repeated, f"adjustments published more than once (entryId: count): {repeated}"
    want = {a.entry_id: a for a in truth.adjustments}
    assert set(counts) == set(want), (
        f"adjustments for entries {sorted(set(want) - set(counts))} missing, "
        f"for {sorted(set(counts) - set(want))} unexpected"
    )
    adjustment_ids = [m.value.get("adjustmentId") for m in got]
    assert len(set(adjustment_ids)) == len(got), "adjustmentId repeated"
    for m in got:
        a = want[m.value["entryId"]]
        expected = {
            "type": "adjustment",
            "invoiceId": invoice_ids[(a.user, a.period)],
            "amountUsd": usd(a.amount),
            "entryId": a.entry_id,
        }
        assert set(m.value) == {*expected, "adjustmentId", "at"}, m.value
        assert {k: m.value[k] for k in expected} == expected, (m.value, expected)
        assert isinstance(m.value["adjustmentId"], str) and m.value["adjustmentId"], m.value
        assert isinstance(m.value["at"], int), m.value
        assert m.key == a.user, (m.key, a.user)


async def test_generation_twice_and_concurrently_gives_one_invoice_each_published_once(
    settings: Settings, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    settings = window_settings(settings)
    maker = EntryMaker(11, settings.app_id, USERS)
    both = [maker.entry(ts, user=maker.rnd.choice(USERS[:-1])) for ts in stamps(maker, 900)]
    stream, late = with_duplicates(both, fraction=0.1, seed=12)
    stream += late
    # a user with usage in October only
    stream += maker.many(stamps(maker, 5, ["2025-10"]), user="fay", kind="tokens")
    truth = UserWindowsTruth(load_catalog(None))
    truth.add_all(stream)

    await create_topics(settings)
    await produce(settings, settings.topic_entries, messages(stream))
    redis = decoding_redis(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        async with worker, httpx.AsyncClient(base_url=worker.url, timeout=30.0) as http:
            await wait_applied(redis, settings, truth.accepted, workers=[worker])
            await wait_caught_up(settings, ingest_group_id(settings), timeout=60)

            # two generating processes at once, then a third: each exits 0
            period = "2025-10"
            runs = [
                CliRun(settings, tmp_path / f"generate-{i}.log", "invoices", "generate", period)
                for i in range(2)
            ]
            codes = await asyncio.gather(*(r.wait() for r in runs))
            assert codes == [0, 0], [r.output for r in runs]
            truth.generate("default", period)
            first = await check_invoices(http, truth, "default", period)
            third = CliRun(settings, tmp_path / "generate-2.log", "invoices", "generate", period)
            assert await third.wait() == 0, third.output
            # and through the API, which answers the same invoices
            again = await post_generate(http, period)
            assert again == first, "generating again changed the invoices"
            assert await check_invoices(http, truth, "default", period) == first

            # a period generated through the API only: the worker publishes it
            truth.generate("default", "2025-09")
            september = await post_generate(http, "2025-09")
            assert september == await check_invoices(http, truth, "default", "2025-09")
            assert sorted(september) == sorted(set(USERS) - {"fay"}), sorted(september)
            assert "fay" in first

            generated = {inv["invoiceId"]: inv for inv in [*first.values(), *september.values()]}
            msgs = await published(redis, settings, [worker])
            assert_invoices_published_once(msgs, generated)
            assert not msgs.get("adjustment"), msgs.get("adjustment")
            # generating after everything was published publishes nothing new
            fourth = CliRun(settings, tmp_path / "generate-3.log", "invoices", "generate", period)
            assert await fourth.wait() == 0, fourth.output
            assert await post_generate(http, "2025-09") == september
            msgs = await published(redis, settings, [worker])
            assert_invoices_published_once(msgs, generated)
            await check_all(http, redis, settings, truth)
    finally:
        await redis.aclose()


async def snapshot(http: httpx.AsyncClient, users: list[str]) -> dict[str, Any]:
    """Every user's all-time and monthly answers, and the billing lists."""
    out: dict[str, Any] = {}
    for user in users:
        out[f"{user} all"] = (await http.get(f"/v1/users/{user}/usage")).json()
        for period in [*PERIODS, "2025-11"]:
            out[f"{user} {period}"] = (
                await http.get(f"/v1/users/{user}/usage/monthly/{period}")
            ).json()
    for period in PERIODS:
        out[f"billing {period}"] = (await http.get(f"/v1/billing/{period}/users")).json()
    return out


async def test_a_late_entry_for_an_invoiced_month_is_one_adjustment(
    settings: Settings, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    settings = window_settings(settings)
    maker = EntryMaker(21, settings.app_id, USERS)
    stream = maker.many(stamps(maker, 600))
    truth = UserWindowsTruth(load_catalog(None))
    truth.add_all(stream)

    await create_topics(settings)
    await produce(settings, settings.topic_entries, messages(stream))
    redis = decoding_redis(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        async with worker, httpx.AsyncClient(base_url=worker.url, timeout=30.0) as http:
            await wait_applied(redis, settings, truth.accepted, workers=[worker])
            truth.generate("default", "2025-10")
            generated = await post_generate(http, "2025-10")
            await check_invoices(http, truth, "default", "2025-10")
            before = await snapshot(http, USERS)

            late = maker.entry(
                utc_ms("2025-10-31T23:59:59.999Z"), user="ana", kind="tokens", model="gpt-4o"
            )
            late["tokens"] = {"prompt": 12_000, "completion": 3_000, "cached": 2_000}
            cost = entry_cost(late, load_catalog(None))
            assert cost > 0
            truth.add(late)
            await produce(settings, settings.topic_entries, messages([late, dict(late)]))
            await wait_applied(redis, settings, truth.accepted, workers=[worker])
            await wait_caught_up(settings, ingest_group_id(settings), timeout=60)
            assert await applied_count(redis, settings) == truth.accepted

            # the month counts it; the invoice's amount stays, its adjustment is the cost
            inv = generated["ana"]
            got = (await http.get(f"/v1/invoices/{inv['invoiceId']}")).json()
            assert got == {**inv, "adjustmentUsd": usd(cost)}, (got, inv, usd(cost))
            after = await snapshot(http, USERS)
            changed = sorted(k for k in before if before[k] != after[k])
            assert changed == ["ana 2025-10", "ana all", "billing 2025-10"], changed
            row = {r["userId"]: r for r in after["billing 2025-10"]["users"]}["ana"]
            old_row = {r["userId"]: r for r in before["billing 2025-10"]["users"]}["ana"]
            assert row["entryCount"] == old_row["entryCount"] + 1, (row, old_row)
            for user, other in generated.items():
                if user != "ana":
                    same = (await http.get(f"/v1/invoices/{other['invoiceId']}")).json()
                    assert same == other, user
            await check_invoices(http, truth, "default", "2025-10")
            await check_all(http, redis, settings, truth)

            msgs = await published(redis, settings, [worker])
            assert_invoices_published_once(msgs, {i["invoiceId"]: i for i in generated.values()})
            assert len(msgs.get("adjustment", [])) == 1, msgs.get("adjustment")
            assert_adjustments_published_once(
                msgs, truth, {(u, "2025-10"): i["invoiceId"] for u, i in generated.items()}
            )
    finally:
        await redis.aclose()


LATE = 1_500
RATE = 150.0  # late entries per second (paused while the worker is down)
KILLS = 3


async def test_sigkill_while_late_entries_for_invoiced_months_apply_is_exact(
    settings: Settings, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    # small batches: many steps (each adjusting invoices and appending to the outbox) for
    # a kill to fall between; the broker's minimum session timeout for quick rebalances
    settings = window_settings(settings, batch_max_entries=40, kafka_session_timeout_ms=6000)
    rnd = random.Random(31)
    maker = EntryMaker(32, settings.app_id, USERS)
    initial = maker.many(stamps(maker, 700))
    truth = UserWindowsTruth(load_catalog(None))
    truth.add_all(initial)

    # late: new entries of all kinds for the invoiced months (some priced at 0: an unknown
    # model, a producer cost "0"), a few for November (not invoiced), 10% re-sent
    late: list[Entry] = maker.many(stamps(maker, LATE))
    late += [maker.entry(utc_ms("2025-10-31T23:59:59.999Z"), cost="0") for _ in range(20)]
    late += maker.many(stamps(maker, 30), kind="tokens", model="acme-llm-9000")
    late += [maker.entry(utc_ms("2025-11-01T00:00:00Z") + i * 7_919) for i in range(60)]
    late_stream, late_dups = with_duplicates(shuffled(late, seed=33), fraction=0.1, seed=34)
    late_stream += late_dups

    await create_topics(settings)
    await produce(settings, settings.topic_entries, messages(initial))
    redis = decoding_redis(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    producer: PacedProducer | None = None
    try:
        worker.start()
        await worker.wait_ready(timeout=90)
        async with httpx.AsyncClient(base_url=worker.url, timeout=30.0) as http:
            await wait_applied(redis, settings, truth.accepted, workers=[worker])
            generated: dict[str, dict[str, Any]] = {}
            invoice_ids: dict[tuple[str, str], str] = {}
            for period in PERIODS:
                truth.generate("default", period)
                for user, inv in (await post_generate(http, period)).items():
                    generated[inv["invoiceId"]] = inv
                    invoice_ids[(user, period)] = inv["invoiceId"]
        base = truth.accepted
        truth.add_all(late_stream)
        assert len(truth.adjustments) > 500, len(truth.adjustments)
        assert any(truth.costs[("default", e["id"])] == 0 for e in late if e["kind"] == "tokens")

        producer = PacedProducer(
            settings, settings.topic_entries, messages(late_stream), rate=RATE
        ).start()
        late_distinct = truth.accepted - base
        moments = sorted(rnd.uniform(0.05, 0.85) for _ in range(KILLS))
        mid_stream = 0
        for i, share in enumerate(moments):
            await wait_applied(
                redis, settings, base + int(share * late_distinct), timeout=120, workers=[worker]
            )
            worker.kill(signal.SIGKILL)
            assert worker.returncode == -signal.SIGKILL
            # no new entries while it is down: the next moment is aimed in applied entries
            await producer.pause()
            at_kill = await applied_count(redis, settings) - base
            if at_kill < late_distinct:
                mid_stream += 1
            print(f"kill {i + 1}: {at_kill}/{late_distinct} late entries applied ({share:.0%})")
            worker.start()
            await worker.wait_ready(timeout=90)
            producer.resume()
        # the premise: kills landed while late entries were still being applied
        assert mid_stream >= 1, "every kill came after the whole stream was applied"
        await producer.wait_done(timeout=120)

        await wait_applied(redis, settings, truth.accepted, timeout=120, workers=[worker])
        await wait_caught_up(settings, ingest_group_id(settings), timeout=120)
        assert await applied_count(redis, settings) == truth.accepted
        async with httpx.AsyncClient(base_url=worker.url, timeout=30.0) as http:
            await check_all(http, redis, settings, truth)
            for period in PERIODS:
                await check_invoices(http, truth, "default", period)
            msgs = await published(redis, settings, [worker])
            assert_invoices_published_once(msgs, generated)
            assert_adjustments_published_once(msgs, truth, invoice_ids)
    finally:
        if producer is not None:
            await producer.stop()
        await worker.aterminate(timeout=20)
        await redis.aclose()


async def test_generation_while_entries_of_the_month_arrive_counts_each_entry_once(
    settings: Settings, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    """Invoices generated (two CLI processes and the API at once) while the month's entries
    are still being applied: whatever moment each invoice is drafted at, every priced entry
    is in its ``amountUsd`` or in exactly one adjustment, never both or neither."""
    settings = window_settings(settings, batch_max_entries=50)
    maker = EntryMaker(51, settings.app_id, USERS)
    head = maker.many(stamps(maker, 300, ["2025-10"]))
    tail = maker.many(stamps(maker, 900, ["2025-10"]))
    stream, dups = with_duplicates(head + tail, fraction=0.1, seed=52)
    stream += dups
    truth = UserWindowsTruth(load_catalog(None))
    truth.add_all(stream)
    first = len({e["id"] for e in head})

    await create_topics(settings)
    redis = decoding_redis(settings)
    producer = PacedProducer(settings, settings.topic_entries, messages(stream), rate=200.0)
    try:
        async with (
            WorkerProcess(settings, tmp_path / "worker.log") as worker,
            httpx.AsyncClient(base_url=worker.url, timeout=30.0) as http,
        ):
            producer.start()
            await wait_applied(redis, settings, first, workers=[worker])
            runs = [
                CliRun(settings, tmp_path / f"generate-{i}.log", "invoices", "generate", "2025-10")
                for i in range(2)
            ]
            from_api = await post_generate(http, "2025-10")
            assert await applied_count(redis, settings) < truth.accepted, (
                "the premise: generation runs while entries of the month are still arriving"
            )
            codes = await asyncio.gather(*(r.wait() for r in runs))
            assert codes == [0, 0], [r.output for r in runs]
            await producer.wait_done(timeout=60)
            await wait_applied(redis, settings, truth.accepted, workers=[worker])
            await wait_caught_up(settings, ingest_group_id(settings), timeout=60)
            await check_all(http, redis, settings, truth)

            listed = {
                i["userId"]: i
                for i in (await http.get("/v1/billing/2025-10/invoices")).json()["invoices"]
            }
            assert sorted(listed) == truth.users("default"), sorted(listed)
            for user, inv in from_api.items():
                assert listed[user]["invoiceId"] == inv["invoiceId"], user
            msgs = await published(redis, settings, [worker])
            generated = {inv["invoiceId"]: {**inv, "adjustmentUsd": "0"} for inv in listed.values()}
            assert_invoices_published_once(msgs, generated)
            adjustments: dict[str, list[dict[str, Any]]] = {}
            for m in msgs.get("adjustment", []):
                adjustments.setdefault(m.value["invoiceId"], []).append(m.value)
            entries_adjusted = Counter(m.value["entryId"] for m in msgs.get("adjustment", []))
            assert all(n == 1 for n in entries_adjusted.values()), entries_adjusted.most_common(3)
            priced = {eid: c for (_, eid), c in truth.costs.items() if c > 0}
            users_of = {e["id"]: e["userId"] for e in stream}
            for user, inv in listed.items():
                month = truth.window("default", user, "month", "2025-10")
                assert month is not None
                amount, adjustment = Decimal(inv["amountUsd"]), Decimal(inv["adjustmentUsd"])
                mine = adjustments.get(inv["invoiceId"], [])
                # each adjustment is one priced entry of this user's month, at its cost
                for a in mine:
                    assert a["entryId"] in priced, a
                    assert Decimal(a["amountUsd"]) == priced[a["entryId"]], a
                    assert users_of[a["entryId"]] == user, a
                assert sum((Decimal(a["amountUsd"]) for a in mine), Decimal(0)) == adjustment
                # amount + adjustment is the whole month: nothing counted twice or lost
                assert amount + adjustment == month.cost, (user, amount, adjustment, month.cost)
                lines = sum((Decimal(line["amountUsd"]) for line in inv["lines"]), Decimal(0))
                assert lines == amount, (user, inv["lines"], amount)
                for line in inv["lines"]:
                    assert line["tokens"] <= month.tokens_by_model[line["model"]]["total"], line
            assert entries_adjusted, "no entry arrived after its invoice: the race was not run"
    finally:
        await producer.stop()
        await redis.aclose()


async def test_invoice_status_transitions_through_the_api(
    settings: Settings, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    settings = window_settings(settings)
    users = ["u-paid", "u-failed-paid", "u-pending-target", "u-bad-bodies"]
    maker = EntryMaker(41, settings.app_id, users)
    stream = [
        maker.entry(ts, user=u, kind="tokens")
        for u in users
        for ts in stamps(maker, 4, ["2025-10"])
    ]
    truth = UserWindowsTruth(load_catalog(None))
    truth.add_all(stream)
    await create_topics(settings)
    await produce(settings, settings.topic_entries, messages(stream))
    redis = decoding_redis(settings)
    try:
        async with (
            WorkerProcess(settings, tmp_path / "worker.log") as worker,
            httpx.AsyncClient(base_url=worker.url, timeout=30.0) as http,
        ):
            await wait_applied(redis, settings, truth.accepted, workers=[worker])
            truth.generate("default", "2025-10")
            invoices = await post_generate(http, "2025-10")
            status = {u: "pending" for u in users}

            async def change(user: str, body: Any, expect: int, *, raw: bool = False) -> None:
                inv = invoices[user]
                url = f"/v1/invoices/{inv['invoiceId']}/status"
                if raw:
                    response = await http.post(
                        url, content=body, headers={"Content-Type": "application/json"}
                    )
                else:
                    response = await http.post(url, json=body)
                what = f"{user}: {status[user]} -> {body!r}"
                assert response.status_code == expect, (what, response.status_code, response.text)
                if expect == 200:
                    status[user] = body["status"]
                    assert response.json() == {**inv, "status": status[user]}, (what, response.text)
                else:
                    error = response.json()
                    assert set(error) == {"error"}, (what, error)
                    assert isinstance(error["error"]["code"], str), (what, error)
                    assert isinstance(error["error"]["message"], str), (what, error)
                got = (await http.get(f"/v1/invoices/{inv['invoiceId']}")).json()
                assert got == {**inv, "status": status[user]}, (what, got)

            # pending -> paid; paid is final
            await change("u-paid", {"status": "paid"}, 200)
            for target in ("paid", "failed", "pending"):
                await change("u-paid", {"status": target}, 409)
            # pending -> failed; failed -> failed/pending refused; failed -> paid; then final
            await change("u-failed-paid", {"status": "failed"}, 200)
            await change("u-failed-paid", {"status": "failed"}, 409)
            await change("u-failed-paid", {"status": "pending"}, 409)
            await change("u-failed-paid", {"status": "paid"}, 200)
            for target in ("failed", "pending", "paid"):
                await change("u-failed-paid", {"status": target}, 409)
            # pending is never a target; the invoice can still be failed afterwards
            await change("u-pending-target", {"status": "pending"}, 409)
            await change("u-pending-target", {"status": "failed"}, 200)
            # unknown statuses and malformed bodies: 400, nothing changes
            for body in ({"status": "refunded"}, {"status": "PAID"}, {"status": ""},
                         {"status": None}, {"status": 1}, {}, ["paid"], "paid"):  # fmt: skip
                await change("u-bad-bodies", body, 400)
            await change("u-bad-bodies", b"{not json", 400, raw=True)
            await change("u-bad-bodies", {"status": "refunded"}, 400)
            response = await http.post("/v1/invoices/inv_nope/status", json={"status": "paid"})
            assert response.status_code == 404, response.text

            # the list shows the statuses; generating again keeps them and the amounts
            listed = {
                i["userId"]: i
                for i in (await http.get("/v1/billing/2025-10/invoices")).json()["invoices"]
            }
            assert {u: i["status"] for u, i in listed.items()} == status
            again = await post_generate(http, "2025-10")
            assert again == listed
            assert status == {
                "u-paid": "paid",
                "u-failed-paid": "paid",
                "u-pending-target": "failed",
                "u-bad-bodies": "pending",
            }
            await check_invoices(http, truth, "default", "2025-10")
    finally:
        await redis.aclose()
