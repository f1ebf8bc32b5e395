"""Invoices in Redis: generated from the monthly rollups, at most one per user and period.

Generation reads a page of users' month hashes, drafts their invoices, and creates them
in one script call that, per user, creates the invoice only if it does not exist yet and
only if the month has not moved since it was read (its entry counter is unchanged), and
appends the new invoice to the invoices outbox in the same step. So two processes
generating the same period at once create each invoice once, an entry applied while an
invoice is drafted is either in its amount or in its adjustment, never both or neither,
and each invoice is published once (processor/outbox.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped]
from redis.asyncio import Redis

from processor.domain.fields import F_COUNT
from processor.domain.invoices import (
    STATUSES,
    TRANSITIONS,
    Invoice,
    InvoiceLine,
    check_transition,
    draft_invoice,
    invoice_id,
)
from processor.domain.money import format_usd
from processor.domain.windows import WindowUsage
from processor.store.keys import Keys
from processor.store.runs import INVOICES_OUTBOX

#: Users drafted per script call.
GENERATE_PAGE = 500
# A user whose month keeps moving while it is drafted (entries still arriving) is read
# again; this bounds how often.
_MAX_ATTEMPTS = 50

_CREATE_LUA = """
local arg = cmsgpack.unpack(ARGV[1])
local out = {}
for i, it in ipairs(arg.items) do
  local inv_key, month_key, expected_n, user = it[1], it[2], it[3], it[4]
  if redis.call('EXISTS', inv_key) == 1 then
    out[i] = 'exists'
  elseif (redis.call('HGET', month_key, 'n') or '') ~= expected_n then
    out[i] = 'moved'
  else
    redis.call('HSET', inv_key, unpack(it[5]))
    redis.call('ZADD', arg.invoiced, 0, user)
    redis.call('XADD', arg.outbox, '*', 'k', user, 'v', it[6], 'id', it[7])
    out[i] = 'created'
  end
end
return out
"""

_STATUS_LUA = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {'missing', ''} end
for _, allowed in ipairs(cjson.decode(ARGV[2])) do
  if cur == allowed then
    redis.call('HSET', KEYS[1], 'status', ARGV[1])
    return {'ok', cur}
  end
end
return {'refused', cur}
"""


class InvoiceNotFound(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Generated:
    invoices: list[Invoice]  # every invoice of the period, by user id
    created: int  # how many this call created


def invoice_to_wire(inv: Invoice) -> dict[str, Any]:
    return {
        "invoiceId": inv.invoice_id,
        "tenantId": inv.tenant_id,
        "userId": inv.user_id,
        "period": inv.period,
        "amountUsd": format_usd(inv.amount_pico),
        "lines": [
            {"model": line.model, "tokens": line.tokens, "amountUsd": format_usd(line.amount_pico)}
            for line in inv.lines
        ],
        "adjustmentUsd": format_usd(inv.adjustment_pico),
        "status": inv.status,
        "generatedAt": inv.generated_at,
    }


def _to_fields(inv: Invoice) -> list[str]:
    lines = [[line.model, line.tokens, str(line.amount_pico)] for line in inv.lines]
    return [
        "id", inv.invoice_id,
        "tenant", inv.tenant_id,
        "user", inv.user_id,
        "period", inv.period,
        "amount", str(inv.amount_pico),
        "lines", json.dumps(lines),
        "status", inv.status,
        "generatedAt", str(inv.generated_at),
    ]  # fmt: skip


def _from_fields(f: dict[str, str]) -> Invoice:
    return Invoice(
        invoice_id=f["id"],
        tenant_id=f["tenant"],
        user_id=f["user"],
        period=f["period"],
        amount_pico=int(f["amount"]),
        lines=tuple(InvoiceLine(m, int(t), int(a)) for m, t, a in json.loads(f["lines"])),
        adjustment_pico=int(f.get("adj", "0")),
        status=f["status"],
        generated_at=int(f["generatedAt"]),
    )


class InvoiceStore:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._create = redis.register_script(_CREATE_LUA)
        self._status = redis.register_script(_STATUS_LUA)

    async def generate(self, tenant: str, period: str, now_ms: int) -> Generated:
        """Create the missing invoices of ``period`` for every user with usage in it."""
        key = self._keys.billing_users(tenant, period)
        created = 0
        start = "-"
        while True:
            users: list[str] = await self._redis.zrangebylex(
                key, start, "+", start=0, num=GENERATE_PAGE
            )
            if users:
                created += await self._generate_page(tenant, period, users, now_ms)
                start = "(" + users[-1]
            if len(users) < GENERATE_PAGE:
                return Generated(await self.list_period(tenant, period), created)

    async def _generate_page(self, tenant: str, period: str, users: list[str], now_ms: int) -> int:
        k = self._keys
        created = 0
        todo = list(users)
        for _ in range(_MAX_ATTEMPTS):
            if not todo:
                return created
            async with self._redis.pipeline(transaction=False) as pipe:
                for user in todo:
                    pipe.hgetall(k.user_month(tenant, user, period))
                months = await pipe.execute()
            items = []
            for user, fields in zip(todo, months, strict=True):
                inv = draft_invoice(tenant, user, period, WindowUsage.from_fields(fields), now_ms)
                message = json.dumps({"type": "invoice", "invoice": invoice_to_wire(inv)})
                items.append(
                    [
                        k.invoice(tenant, inv.invoice_id),
                        k.user_month(tenant, user, period),
                        fields.get(F_COUNT, ""),
                        user,
                        _to_fields(inv),
                        message,
                        inv.invoice_id,
                    ]
                )
            payload = msgpack.packb(
                {
                    "invoiced": k.invoiced_users(tenant, period),
                    "outbox": k.outbox(INVOICES_OUTBOX),
                    "items": items,
                }
            )
            verdicts = await self._create(keys=[], args=[payload])
            created += sum(1 for v in verdicts if v == "created")
            todo = [u for u, v in zip(todo, verdicts, strict=True) if v == "moved"]
        raise RuntimeError(f"the month {period} of {len(todo)} user(s) kept changing")

    async def get(self, tenant: str, invoice: str) -> Invoice | None:
        fields = await self._redis.hgetall(self._keys.invoice(tenant, invoice))  # type: ignore[misc]
        return _from_fields(fields) if fields else None

    async def list_period(self, tenant: str, period: str) -> list[Invoice]:
        k = self._keys
        users = await self._redis.zrange(k.invoiced_users(tenant, period), 0, -1)
        async with self._redis.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.hgetall(k.invoice(tenant, invoice_id(tenant, user, period)))
            replies = await pipe.execute()
        return [_from_fields(f) for f in replies if f]

    async def set_status(self, tenant: str, invoice: str, status: str) -> Invoice:
        """Raises ValueError (unknown status), InvoiceNotFound, TransitionRefused."""
        if status not in STATUSES:
            check_transition("pending", status)  # raises ValueError naming the statuses
        allowed = [cur for cur, nxt in TRANSITIONS.items() if status in nxt]
        verdict, current = await self._status(
            keys=[self._keys.invoice(tenant, invoice)], args=[status, json.dumps(allowed)]
        )
        if verdict == "missing":
            raise InvoiceNotFound(invoice)
        if verdict == "refused":
            check_transition(current, status)  # raises TransitionRefused
        got = await self.get(tenant, invoice)
        if got is None:
            raise InvoiceNotFound(invoice)
        return got

    async def tenants_of(self, period: str) -> list[str]:
        return sorted(await self._redis.smembers(self._keys.billing_tenants(period)))  # type: ignore[misc]
