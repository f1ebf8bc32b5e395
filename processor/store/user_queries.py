"""Reads of users' windows and of billing periods.

Every answer reads a fixed number of window hashes (one per day asked for, one month,
all time): the cost is independent of how many entries the windows hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from redis.asyncio import Redis

from processor.domain.windows import F_VERSION, WindowUsage
from processor.store.keys import Keys

#: Users of a billing period read per page (also the API's largest page).
BILLING_PAGE_MAX = 1000


@dataclass(frozen=True, slots=True)
class AllTimeUsage:
    usage: WindowUsage
    run_count: int


@dataclass(frozen=True, slots=True)
class BillingRow:
    user_id: str
    usage: WindowUsage


class UserQueries:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def user_exists(self, tenant: str, user_id: str) -> bool:
        return bool(await self._redis.exists(self._keys.user_all(tenant, user_id)))

    async def all_time(self, tenant: str, user_id: str) -> AllTimeUsage | None:
        """None for a user without any accepted entry (in this tenant)."""
        k = self._keys
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(k.user_all(tenant, user_id))
            pipe.zcard(k.runs_by_user(tenant, user_id))
            fields, runs = await pipe.execute()
        if not fields:
            return None
        return AllTimeUsage(WindowUsage.from_fields(fields), int(runs))

    async def daily(
        self, tenant: str, user_id: str, first: date, last: date
    ) -> list[tuple[str, WindowUsage]] | None:
        """Days from ``first`` to ``last`` (inclusive) with usage, in order; None for an
        unknown user."""
        versions = await self.day_versions(tenant, user_id, first, last)
        if versions is None:
            return None
        days = [day for day, _ in versions]
        return list(zip(days, await self.days(tenant, user_id, days), strict=True))

    async def day_versions(
        self, tenant: str, user_id: str, first: date, last: date
    ) -> list[tuple[str, str]] | None:
        """(day, version) of the days from ``first`` to ``last`` with usage; None for an
        unknown user. A day's version changes with every write to it (apply_batch.lua),
        so what a reader made of one version may be kept."""
        k = self._keys
        days = [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(k.user_all(tenant, user_id))
            for day in days:
                pipe.hget(k.user_day(tenant, user_id, day), F_VERSION)
            known, *versions = await pipe.execute()
        if not known:
            return None
        return [(day, v) for day, v in zip(days, versions, strict=True) if v is not None]

    async def days(self, tenant: str, user_id: str, days: list[str]) -> list[WindowUsage]:
        k = self._keys
        async with self._redis.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.hgetall(k.user_day(tenant, user_id, day))
            replies = await pipe.execute()
        return [WindowUsage.from_fields(f) for f in replies]

    async def month(self, tenant: str, user_id: str, period: str) -> WindowUsage | None:
        """The month's figures (zeros for a known user without usage in it); None for an
        unknown user."""
        k = self._keys
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(k.user_all(tenant, user_id))
            pipe.hgetall(k.user_month(tenant, user_id, period))
            known, fields = await pipe.execute()
        if not known:
            return None
        return WindowUsage.from_fields(fields)

    async def month_and_all_time(
        self, tenant: str, user_id: str, period: str
    ) -> tuple[WindowUsage, WindowUsage] | None:
        k = self._keys
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(k.user_month(tenant, user_id, period))
            pipe.hgetall(k.user_all(tenant, user_id))
            month, all_time = await pipe.execute()
        if not all_time:
            return None
        return WindowUsage.from_fields(month), WindowUsage.from_fields(all_time)

    async def billing_page(
        self, tenant: str, period: str, *, limit: int, after: str | None
    ) -> tuple[list[BillingRow], str | None]:
        """Users with usage in ``period`` ordered by id, after the id ``after``; and the
        last id of the page when more follow (the next page's ``after``)."""
        if not 1 <= limit <= BILLING_PAGE_MAX:
            raise ValueError(f"limit must be 1..{BILLING_PAGE_MAX}")
        k = self._keys
        start = "-" if after is None else "(" + after
        users: list[str] = await self._redis.zrangebylex(
            k.billing_users(tenant, period), start, "+", start=0, num=limit + 1
        )
        more = len(users) > limit
        users = users[:limit]
        async with self._redis.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.hgetall(k.user_month(tenant, user, period))
            replies = await pipe.execute()
        rows = [
            BillingRow(u, WindowUsage.from_fields(f)) for u, f in zip(users, replies, strict=True)
        ]
        return rows, (users[-1] if more and users else None)
