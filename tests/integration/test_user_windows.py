"""Users' windows, billing lists and invoices from a real worker, exact to the model.

A few thousand entries of all four kinds over eight users (ids with ``:``, ``%`` and
non-ASCII characters), spread over many days of February and March 2024 (a leap year:
the worker keeps hour and day windows forever, as such old windows would otherwise have
expired) and the current month: the first and last millisecond of days, of the leap day,
of both months and of hours, in shuffled order, 10% re-sent (half right behind the
original, half in a second wave together with new entries for old hours). Once the worker
applied every distinct entry, every hour (read from Redis), every day (the whole range, in
requests of at most 400 days), every month, all time and the dashboard of every user, every
billing list (paged), and every invoice (generated twice through the API, then read back)
must equal ``ground_truth.UserWindowsTruth`` exactly. A second test runs two tenants with
the same user ids behind API keys: each key sees its own figures only.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import redis.asyncio as aioredis
from pydantic import SecretStr

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
    invoice_matches,
    messages,
    utc_labels,
    utc_ms,
    wait_caught_up,
    with_duplicates,
)
from tests.integration.harness import WorkerProcess, create_topics, produce
from tests.integration.user_streams import (
    EntryMaker,
    applied_count,
    decoding_redis,
    shuffled,
    wait_applied,
    window_settings,
)

USERS = ["alice", "bob", "carol", "dave", "erin", "user:with:colons", "ユーザー", "pct%25user"]
#: Edges: first/last millisecond of months, of the leap day, of other days and of hours.
EDGES = [
    "2024-02-01T00:00:00.000Z",
    "2024-02-15T23:59:59.999Z",
    "2024-02-16T00:00:00.000Z",
    "2024-02-16T10:59:59.999Z",
    "2024-02-16T11:00:00.000Z",
    "2024-02-28T23:59:59.999Z",
    "2024-02-29T00:00:00.000Z",
    "2024-02-29T12:34:56.789Z",
    "2024-02-29T23:59:59.999Z",
    "2024-03-01T00:00:00.000Z",
    "2024-03-31T23:59:59.999Z",
]
BUSY_DAYS = ["2024-02-01", "2024-02-15", "2024-02-16", "2024-02-28", "2024-02-29",
             "2024-03-01", "2024-03-02", "2024-03-17", "2024-03-31"]  # fmt: skip
DAY_MS = 86_400_000
PERIODS = ["2024-02", "2024-03"]
ENTRIES = 2_600


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def old_stamps(maker: EntryMaker, n: int) -> list[int]:
    rnd = maker.rnd
    edges = [utc_ms(e) for e in EDGES]
    start, end = utc_ms("2024-02-01T00:00:00Z"), utc_ms("2024-04-01T00:00:00Z")
    out = []
    for _ in range(n):
        r = rnd.random()
        if r < 0.25:
            out.append(rnd.choice(edges))
        elif r < 0.85:
            out.append(utc_ms(rnd.choice(BUSY_DAYS) + "T00:00:00Z") + rnd.randrange(DAY_MS))
        else:
            out.append(rnd.randrange(start, end))
    return out


def current_month_stamps(maker: EntryMaker, n: int) -> list[int]:
    """The first millisecond of the current UTC month, and times up to a minute ago."""
    now = now_ms()
    _, _, period = utc_labels(now)
    first = utc_ms(period + "-01T00:00:00Z")
    latest = max(first, now - 60_000)
    return [first] + [maker.rnd.randint(first, latest) for _ in range(n - 1)]


def auth(key: str | None) -> dict[str, str] | None:
    return None if key is None else {"Authorization": f"Bearer {key}"}


async def check_everything(
    http: httpx.AsyncClient,
    redis: aioredis.Redis,
    settings: Settings,
    truth: UserWindowsTruth,
    tenant: str,
    *,
    key: str | None = None,
    billing_limit: int = 3,
) -> None:
    """Every user's windows (API and hours in Redis) and every billing list of a tenant."""
    keys = Keys(settings.key_prefix)
    users = truth.users(tenant)
    await asyncio.gather(*(check_user(http, truth, tenant, u, headers=auth(key)) for u in users))
    for user in users:
        await check_user_hours(redis, keys, truth, tenant, user)
    for period in truth.periods(tenant):
        await check_billing(http, truth, tenant, period, limit=billing_limit, headers=auth(key))


async def check_dashboards(
    http: httpx.AsyncClient, truth: UserWindowsTruth, tenant: str, key: str | None = None
) -> None:
    for user in truth.users(tenant):
        before = now_ms()
        response = await http.get(f"/v1/users/{quote(user, safe='')}/dashboard", headers=auth(key))
        after = now_ms()
        assert response.status_code == 200, (user, response.text)
        got = response.json()
        # the answer depends on "now": it must match the model at the time of the request
        wants = [truth.dashboard(tenant, user, before), truth.dashboard(tenant, user, after)]
        assert got in wants, f"dashboard of {tenant}/{user}: got {got}, want {wants[0]}"


async def generate_and_check(
    http: httpx.AsyncClient,
    truth: UserWindowsTruth,
    tenant: str,
    period: str,
    key: str | None = None,
) -> dict[str, dict[str, Any]]:
    """POST generate twice: each answer lists one invoice per user with usage, the same ids
    both times; then the list and each invoice by id equal the model."""
    truth.generate(tenant, period)
    want = {inv.user: inv for inv in truth.period_invoices(tenant, period)}
    ids: list[dict[str, str]] = []
    for attempt in range(2):
        response = await http.post(f"/v1/billing/{period}/invoices", headers=auth(key))
        assert response.status_code == 200, (period, attempt, response.status_code, response.text)
        body = response.json()
        assert set(body) == {"invoices"}, body
        got = {inv["userId"]: inv for inv in body["invoices"]}
        assert len(got) == len(body["invoices"]), f"{period}: a user invoiced twice"
        assert sorted(got) == sorted(want), (period, sorted(got), sorted(want))
        for user, inv in got.items():
            problem = invoice_matches(inv, want[user])
            assert problem is None, f"POST {period} #{attempt}, {tenant}/{user}: {problem}"
            assert inv["status"] == "pending", inv
        ids.append({u: inv["invoiceId"] for u, inv in got.items()})
    assert ids[0] == ids[1], f"{period}: generating again changed the invoice ids"
    listed = await check_invoices(http, truth, tenant, period, headers=auth(key))
    assert {u: inv["invoiceId"] for u, inv in listed.items()} == ids[0]
    return listed


async def test_every_window_billing_list_and_invoice_is_exact(
    settings: Settings, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    settings = window_settings(settings, batch_max_entries=300)
    p = settings.app_id
    maker = EntryMaker(20240229, p, USERS, runs_per_user=6)
    old = maker.many(old_stamps(maker, ENTRIES))
    # the last millisecond of the leap day (and of February) for everyone
    for user in USERS:
        old.append(maker.entry(utc_ms("2024-02-29T23:59:59.999Z"), user=user, kind="tokens"))
    recent = [
        maker.entry(ts, user=maker.rnd.choice(USERS[:3])) for ts in current_month_stamps(maker, 40)
    ]
    stream, late_dups = with_duplicates(shuffled(old + recent, seed=1), fraction=0.10, seed=2)
    # a second wave: re-sent ids, and new entries for hours the first wave already filled
    late_new = maker.many(old_stamps(maker, 150))
    wave2 = shuffled(late_dups + late_new, seed=3)
    truth = UserWindowsTruth(load_catalog(None))
    truth.add_all(stream)
    truth.add_all(wave2)
    assert truth.duplicates == len(stream) + len(wave2) - truth.accepted
    assert truth.duplicates >= 0.09 * len(old + recent)
    assert set(truth.accepted_by_kind) == {"tokens", "tool", "subagent", "custom"}

    await create_topics(settings)
    await produce(settings, settings.topic_entries, messages(stream))
    redis = decoding_redis(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        async with (
            worker,
            httpx.AsyncClient(base_url=worker.url, timeout=30.0) as http,
        ):
            first_wave = len({e["id"] for e in stream})
            await wait_applied(redis, settings, first_wave, workers=[worker])
            await produce(settings, settings.topic_entries, messages(wave2))
            await wait_applied(redis, settings, truth.accepted, workers=[worker])
            await wait_caught_up(settings, ingest_group_id(settings), timeout=60)
            assert await applied_count(redis, settings) == truth.accepted

            await check_everything(http, redis, settings, truth, "default")
            await check_dashboards(http, truth, "default")

            _, _, current = utc_labels(now_ms())
            for period in [*PERIODS, current]:
                await generate_and_check(http, truth, "default", period)
            # a month without usage: no invoices, an empty list
            response = await http.post("/v1/billing/2023-07/invoices")
            assert response.status_code == 200 and response.json() == {"invoices": []}, (
                response.text
            )
            # generating changed no figure
            await check_everything(http, redis, settings, truth, "default", billing_limit=5)

            # unknown user, unknown invoice: 404; malformed parameters: 400
            for path in ("usage", "usage/monthly/2024-02", "dashboard"):
                response = await http.get(f"/v1/users/{p}-nobody/{path}")
                assert response.status_code == 404, (path, response.text)
            response = await http.get(
                f"/v1/users/{p}-nobody/usage/daily",
                params={"from": "2024-02-01", "to": "2024-02-02"},
            )
            assert response.status_code == 404, response.text
            response = await http.get("/v1/invoices/inv_does_not_exist")
            assert response.status_code == 404, response.text
            assert response.json()["error"]["code"], response.text
            bad = [
                ("/v1/users/alice/usage/daily", {"from": "2024-03-02", "to": "2024-03-01"}),
                ("/v1/users/alice/usage/daily", {"from": "2024-02-30", "to": "2024-03-01"}),
                ("/v1/users/alice/usage/daily", {"from": "2024-02-01"}),
                ("/v1/users/alice/usage/monthly/2024-13", {}),
                ("/v1/billing/2024-02/users", {"limit": 0}),
                ("/v1/billing/2024-02/users", {"limit": 1001}),
                ("/v1/billing/2024-02/users", {"cursor": "not-a-cursor!"}),
            ]
            for path, params in bad:
                response = await http.get(path, params=params)
                assert response.status_code == 400, (path, params, response.text)
                assert set(response.json()) == {"error"}, response.text
    finally:
        await redis.aclose()


TENANT_KEYS = {"key-acme": "acme", "key-globex": "globex"}


async def test_two_tenants_with_the_same_user_ids_see_only_their_own(
    settings: Settings, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    settings = window_settings(
        settings, api_keys=SecretStr(",".join(f"{k}:{t}" for k, t in TENANT_KEYS.items()))
    )
    p = settings.app_id
    # the same user ids and run ids in both tenants (and in ``default``, which no key serves)
    acme = EntryMaker(1, f"{p}-a", ["alice", "bob", "carol"], tenant="acme", run_prefix=p)
    globex = EntryMaker(2, f"{p}-g", ["alice", "bob"], tenant="globex", run_prefix=p)
    nobody = EntryMaker(3, f"{p}-d", ["alice"], run_prefix=p)
    entries: list[Entry] = []
    for maker, n in ((acme, 500), (globex, 300), (nobody, 60)):
        entries += maker.many(old_stamps(maker, n))
        entries.append(maker.entry(utc_ms("2024-02-29T23:59:59.999Z"), kind="tokens", cost="1.25"))
    stream, late = with_duplicates(shuffled(entries, seed=4), fraction=0.10, seed=5)
    stream += late
    truth = UserWindowsTruth(load_catalog(None))
    truth.add_all(stream)
    assert truth.tenants() == ["acme", "default", "globex"]

    await create_topics(settings)
    await produce(settings, settings.topic_entries, messages(stream))
    redis = decoding_redis(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        async with (
            worker,
            httpx.AsyncClient(base_url=worker.url, timeout=30.0) as http,
        ):
            await wait_applied(redis, settings, truth.accepted, workers=[worker])
            await wait_caught_up(settings, ingest_group_id(settings), timeout=60)

            response = await http.get("/v1/users/alice/usage")
            assert response.status_code == 401, response.text
            invoices: dict[str, dict[str, dict[str, Any]]] = {}
            for key, tenant in TENANT_KEYS.items():
                await check_everything(
                    http, redis, settings, truth, tenant, key=key, billing_limit=1
                )
                for period in PERIODS:
                    invoices[f"{tenant} {period}"] = await generate_and_check(
                        http, truth, tenant, period, key
                    )
                await check_everything(
                    http, redis, settings, truth, tenant, key=key, billing_limit=2
                )

            g = auth("key-globex")
            # carol exists only in acme: globex's key does not find her anywhere
            for path in ("usage", "usage/monthly/2024-02", "dashboard"):
                response = await http.get(f"/v1/users/carol/{path}", headers=g)
                assert response.status_code == 404, (path, response.text)
            response = await http.get(
                "/v1/users/carol/usage/daily",
                params={"from": "2024-02-01", "to": "2024-03-31"},
                headers=g,
            )
            assert response.status_code == 404, response.text
            # acme's invoices (alice's id differs per tenant) are not globex's
            for period in PERIODS:
                mine = {i["invoiceId"] for i in invoices[f"globex {period}"].values()}
                for user, inv in invoices[f"acme {period}"].items():
                    assert inv["invoiceId"] not in mine, (user, period)
                    url = f"/v1/invoices/{inv['invoiceId']}"
                    response = await http.get(url, headers=g)
                    assert response.status_code == 404, (url, response.text)
                    response = await http.post(url + "/status", json={"status": "paid"}, headers=g)
                    assert response.status_code == 404, (url, response.text)
                    response = await http.get(url, headers=auth("key-acme"))
                    assert response.json()["status"] == "pending", response.text
            # and nothing moved
            for key, tenant in TENANT_KEYS.items():
                await check_everything(http, redis, settings, truth, tenant, key=key)
                for period in PERIODS:
                    await check_invoices(http, truth, tenant, period, headers=auth(key))
    finally:
        await redis.aclose()
