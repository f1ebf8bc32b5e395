"""Views of billing (CONTRACT §3.3) and invoices (§3.5).

Decisions where the contract is silent:

* ``nextCursor`` is opaque (URL-safe base64 of the period and the page's last user id); a
  cursor that does not decode, or belongs to another period, is a 400. Pages are read by
  user id, so users that get usage while a client pages through appear if their id sorts
  after the cursor and are never repeated.
* ``POST /v1/billing/{YYYY-MM}/invoices`` takes no body and answers 200 with every invoice
  of the period (those it created and those that already existed), ordered by user id.
  Any month may be generated, the current one too: entries arriving after generation go
  to the invoice's ``adjustmentUsd``.
* ``POST /v1/invoices/{invoiceId}/status`` needs a JSON object with exactly the member
  ``status``; a value other than ``paid``/``failed``/``pending`` is a 400 (checked before
  the invoice is looked up), a change the lifecycle refuses (``pending`` as a target, any
  change of ``paid``, ``failed`` to ``failed``) is a 409 (``conflict``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, Final

from aiohttp import web

from processor.api.auth import tenant_of
from processor.api.context import Clock
from processor.api.errors import ApiError, bad_request, not_found
from processor.api.openapi import Param, RouteSpec
from processor.api.openapi_schemas import JsonSchema, model_schemas
from processor.api.params import get_int, get_str
from processor.api.users import PERIOD_SCHEMA, path_period
from processor.domain.invoices import STATUSES, TransitionRefused
from processor.domain.money import format_usd
from processor.store.invoices import InvoiceNotFound, InvoiceStore, invoice_to_wire
from processor.store.user_queries import BILLING_PAGE_MAX, UserQueries
from schemas.api import BillingUsers, InvoiceList
from schemas.invoice import Invoice, InvoiceStatusUpdate

_CURSOR_TAG: Final = "b1"
_TARGETS: Final = "'paid' or 'failed'"
_CURSOR_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,4096}", re.ASCII)
_PERIOD: Final = Param("period", "path", PERIOD_SCHEMA, "UTC month, YYYY-MM")
_INVOICE_ID: Final = Param("invoiceId", "path", {"type": "string"}, "the invoice's id")

BILLING_USERS: Final = RouteSpec(
    "GET",
    "/v1/billing/{period}/users",
    "listBillingUsers",
    "Users with usage in a UTC month and their month's totals, ordered by userId",
    "BillingUsers",
    params=(
        _PERIOD,
        Param(
            "limit",
            "query",
            {
                "type": "integer",
                "minimum": 1,
                "maximum": BILLING_PAGE_MAX,
                "default": BILLING_PAGE_MAX,
            },
            "page size",
        ),
        Param("cursor", "query", {"type": "string"}, "nextCursor of the previous page"),
    ),
    errors=(400,),
)
GENERATE_INVOICES: Final = RouteSpec(
    "POST",
    "/v1/billing/{period}/invoices",
    "generateInvoices",
    "Generate the month's invoices (idempotent: existing ones are kept and returned)",
    "InvoiceList",
    params=(_PERIOD,),
    errors=(400,),
)
LIST_INVOICES: Final = RouteSpec(
    "GET",
    "/v1/billing/{period}/invoices",
    "listInvoices",
    "The month's invoices, ordered by userId",
    "InvoiceList",
    params=(_PERIOD,),
    errors=(400,),
)
GET_INVOICE: Final = RouteSpec(
    "GET",
    "/v1/invoices/{invoiceId}",
    "getInvoice",
    "One invoice",
    "Invoice",
    params=(_INVOICE_ID,),
    errors=(404,),
)
SET_INVOICE_STATUS: Final = RouteSpec(
    "POST",
    "/v1/invoices/{invoiceId}/status",
    "setInvoiceStatus",
    "Mark an invoice paid or failed: pending -> paid|failed, failed -> paid; paid is final",
    "Invoice",
    params=(_INVOICE_ID,),
    errors=(400, 404, 409),
    request="InvoiceStatusUpdate",
)
#: Component schemas of the routes' bodies.
BILLING_SCHEMAS: Final[dict[str, JsonSchema]] = model_schemas(
    BillingUsers, InvoiceList, Invoice, InvoiceStatusUpdate
)


def encode_cursor(period: str, user_id: str) -> str:
    raw = f"{_CURSOR_TAG}|{period}|{user_id}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(period: str, cursor: str) -> str:
    """The user id after which the page starts; 400 unless a cursor of this period."""
    malformed = bad_request("query parameter 'cursor' is malformed; pass a nextCursor as given")
    if _CURSOR_RE.fullmatch(cursor) is None:
        raise malformed
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        raise malformed from None
    tag, _, rest = text.partition("|")
    cursor_period, sep, user_id = rest.partition("|")
    if tag != _CURSOR_TAG or not sep or not user_id:
        raise malformed
    if cursor_period != period:
        raise bad_request(
            f"query parameter 'cursor' belongs to period {cursor_period[:7]!r}, not {period!r}"
        )
    return user_id


async def _status_of_body(request: web.Request) -> str:
    expected = 'expected a JSON object {"status": "paid"|"failed"}'
    raw = await request.read()
    try:
        body: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request(f"request body is not valid JSON; {expected}") from None
    if not isinstance(body, dict) or set(body) != {"status"}:
        raise bad_request(f"request body: {expected}")
    status = body["status"]
    if not isinstance(status, str):
        raise bad_request(f"request body: 'status' must be a string; {expected}")
    return status


class BillingViews:
    def __init__(self, users: UserQueries) -> None:
        self._users = users

    async def users(self, request: web.Request) -> web.Response:
        period = path_period(request)
        q = request.query
        limit = get_int(q, "limit", default=BILLING_PAGE_MAX, minimum=1, maximum=BILLING_PAGE_MAX)
        assert limit is not None
        cursor = get_str(q, "cursor")
        after = None if cursor is None else decode_cursor(period, cursor)
        rows, last = await self._users.billing_page(
            tenant_of(request), period, limit=limit, after=after
        )
        users = [
            {
                "userId": row.user_id,
                "totalTokens": row.usage.tokens.total,
                "costUsd": format_usd(row.usage.cost_pico),
                "entryCount": row.usage.entry_count,
            }
            for row in rows
        ]
        next_cursor = None if last is None else encode_cursor(period, last)
        return web.json_response({"users": users, "nextCursor": next_cursor})


class InvoiceViews:
    def __init__(self, invoices: InvoiceStore, clock: Clock) -> None:
        self._invoices = invoices
        self._clock = clock

    async def generate(self, request: web.Request) -> web.Response:
        period = path_period(request)
        done = await self._invoices.generate(tenant_of(request), period, self._clock())
        return web.json_response({"invoices": [invoice_to_wire(i) for i in done.invoices]})

    async def list_period(self, request: web.Request) -> web.Response:
        period = path_period(request)
        found = await self._invoices.list_period(tenant_of(request), period)
        return web.json_response({"invoices": [invoice_to_wire(i) for i in found]})

    async def get(self, request: web.Request) -> web.Response:
        invoice_id = request.match_info["invoiceId"]
        found = await self._invoices.get(tenant_of(request), invoice_id)
        if found is None:
            raise _invoice_not_found(invoice_id)
        return web.json_response(invoice_to_wire(found))

    async def set_status(self, request: web.Request) -> web.Response:
        invoice_id = request.match_info["invoiceId"]
        status = await _status_of_body(request)
        if status not in STATUSES:
            raise bad_request(f"request body: unknown status {status[:40]!r}; expected {_TARGETS}")
        try:
            updated = await self._invoices.set_status(tenant_of(request), invoice_id, status)
        except InvoiceNotFound:
            raise _invoice_not_found(invoice_id) from None
        except TransitionRefused as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        return web.json_response(invoice_to_wire(updated))


def _invoice_not_found(invoice_id: str) -> ApiError:
    return not_found(f"invoice {invoice_id!r} not found")
