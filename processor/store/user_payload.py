"""What one script call adds to its users' windows, in the shape apply_batch.lua reads.

The windows are summed over all the call's groups (20 users with 200 runs in a batch
cost 20 sets of increments, not 200), which is why a call is all or nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from processor.domain.alert_rules import AlertRule
from processor.domain.alerts import user_checks
from processor.domain.fold import AcceptedEntry, RunDelta, Slot
from processor.domain.invoices import adjustment_id, invoice_id
from processor.domain.money import format_usd
from processor.domain.windows import (
    F_COST_TOTAL,
    F_TOKENS_TOTAL,
    F_TOOL_FAIL,
    F_TOOL_OK,
    HOUR_MS,
    Retention,
    hour_info,
    merge_slots,
    user_deltas,
)
from processor.store.keys import Keys

# Lua numbers are doubles: integers beyond 2^53 travel as strings.
_EXACT = 2**53

#: (tenant, user, YYYY-MM) of months known to be invoiced
Invoiced = set[tuple[str, str, str]]
#: (tenant, user, window kind, label)
WindowIdent = tuple[str, str, str, str]


@dataclass(slots=True)
class Alerting:
    """What the call needs to evaluate alert rules on the windows it writes."""

    rules: Sequence[AlertRule]
    #: the batch, in the order in which its entries count
    entries: Sequence[AcceptedEntry] = ()
    #: windows whose entries must travel with the call (a rule fires on them)
    detail: set[WindowIdent] = field(default_factory=set)
    _order: dict[str, int] | None = None

    @property
    def order(self) -> Mapping[str, int]:
        """entry id -> position in the batch (built the first time a rule fires)."""
        if self._order is None:
            self._order = {e.entry_id: i for i, e in enumerate(self.entries)}
        return self._order


@dataclass(slots=True)
class UsersPart:
    payload: list[Any]
    #: per user, the (tenant, user, month) of each entry of its ``months`` list
    months: list[list[tuple[str, str, str]]]
    #: per user, each window's identity, in payload order
    windows: list[list[WindowIdent]]


def user_payloads(
    keys: Keys,
    groups: Sequence[tuple[Sequence[AcceptedEntry], RunDelta]],
    *,
    now_ms: int,
    keep: Retention,
    invoiced: Invoiced,
    tenants: dict[str, int],
    fields: dict[str, int],
    alerting: Alerting | None = None,
) -> UsersPart:
    """The ``users`` part of a call (``tenants`` and ``fields`` are the call's interned
    names, extended as needed), and per user, the (tenant, user, month) of each entry of
    its ``months`` list, in the same order (to read the script's verdict back).

    Positional per user: [tenant index, all-time key, windows (all time first): [key,
    expire at (epoch s, 0: never), [field index, increment, ...]], billing: [users key,
    user, tenants key, tenant, ...], months: [invoice key, 1 if expected invoiced else 0,
    adjustments: [id, pico, message, user]], 1-based indices of the call's groups with
    entries of the user]. A window with alert checks carries, after its increments:
    [checks (domain.alerts.Check.payload), [cost, tokens, tool ok, tool failed] increments,
    1 if the entries follow, the entries in batch order: [id, pico, tokens, 0 | 1 ok | 2
    failed tool call], kind, start, end].
    """
    by_tenant: dict[str, list[dict[tuple[str, int], Slot]]] = {}
    groups_of: dict[tuple[str, str], list[int]] = {}
    for gi, (_, delta) in enumerate(groups):
        by_tenant.setdefault(delta.tenant_id, []).append(delta.slots)
        for user in {u for u, _ in delta.slots}:
            groups_of.setdefault((delta.tenant_id, user), []).append(gi + 1)
    # the call's entries per (tenant, user), indexed the first time a window wants them:
    # a rescan of every group per window would grow with the square of the batch
    entries_of: dict[tuple[str, str], list[AcceptedEntry]] | None = None
    payload: list[Any] = []
    months_read: list[list[tuple[str, str, str]]] = []
    windows_read: list[list[WindowIdent]] = []
    for tenant, parts in by_tenant.items():
        for ud in user_deltas(merge_slots(parts), now_ms, keep):
            user = ud.user_id
            windows: list[Any] = []
            billing: list[str] = []
            months: list[Any] = []
            read: list[tuple[str, str, str]] = []
            idents: list[WindowIdent] = []
            for w in sorted(ud.windows, key=lambda w: w.kind != "all"):
                if w.kind == "all":
                    key = keys.user_all(tenant, user)
                elif w.kind == "month":
                    key = keys.user_month(tenant, user, w.label)
                    billing += [
                        keys.billing_users(tenant, w.label),
                        user,
                        keys.billing_tenants(w.label),
                        tenant,
                    ]
                    expected = (tenant, user, w.label) in invoiced
                    inv = invoice_id(tenant, user, w.label)
                    months.append(
                        [
                            keys.invoice(tenant, inv),
                            int(expected),
                            _adjustments(groups, tenant, user, w.label, inv, now_ms)
                            if expected
                            else [],
                        ]
                    )
                    read.append((tenant, user, w.label))
                elif w.kind == "day":
                    key = keys.user_day(tenant, user, w.label)
                else:
                    key = keys.user_hour(tenant, user, w.label)
                expire = 0 if w.expire_at_ms is None else -(-w.expire_at_ms // 1000)
                flat: list[Any] = []
                for f, v in w.incr.items():
                    index = fields.get(f)
                    if index is None:
                        index = fields[f] = len(fields) + 1
                    flat.append(index)
                    flat.append(v if -_EXACT < v < _EXACT else str(v))
                item: list[Any] = [key, expire, flat]
                ident = (tenant, user, w.kind, w.label)
                checks = (
                    user_checks(alerting.rules, tenant, user, w.kind, w.start_ms)
                    if alerting is not None and w.kind != "all"
                    else []
                )
                if checks and alerting is not None:
                    want = ident in alerting.detail
                    if want and entries_of is None:
                        entries_of = _entries_by_user(groups)
                    incr = w.incr
                    item += [
                        [
                            c.payload(
                                keys.alert_marker(tenant, c.alert_id),
                                keys.alert(tenant, c.alert_id),
                            )
                            for c in checks
                        ],
                        [
                            _lua(incr.get(F_COST_TOTAL, 0)),
                            _lua(incr.get(F_TOKENS_TOTAL, 0)),
                            incr.get(F_TOOL_OK, 0),
                            incr.get(F_TOOL_FAIL, 0),
                        ],
                        int(want),
                        _detail(entries_of or {}, ident, alerting.order) if want else [],
                        w.kind,
                        w.start_ms,
                        w.end_ms,
                    ]
                windows.append(item)
                idents.append(ident)
            months_read.append(read)
            windows_read.append(idents)
            payload.append(
                [
                    tenants.setdefault(tenant, len(tenants) + 1),
                    keys.user_all(tenant, user),
                    windows,
                    billing,
                    months,
                    groups_of[(tenant, user)],
                    keys.alerts(tenant),
                    keys.alerts_by_user(tenant, user),
                    tenant,
                    user,
                ]
            )
    return UsersPart(payload, months_read, windows_read)


def _entries_by_user(
    groups: Sequence[tuple[Sequence[AcceptedEntry], RunDelta]],
) -> dict[tuple[str, str], list[AcceptedEntry]]:
    out: dict[tuple[str, str], list[AcceptedEntry]] = {}
    for members, _ in groups:
        for e in members:
            out.setdefault((e.tenant_id, e.user_id), []).append(e)
    return out


def _detail(
    entries_of: Mapping[tuple[str, str], Sequence[AcceptedEntry]],
    ident: WindowIdent,
    order: Mapping[str, int],
) -> list[list[Any]]:
    """The entries of one user's window in the call, in batch order, with what each adds
    to the alert metrics (the script finds the one that crossed a threshold)."""
    tenant, user, kind, label = ident
    found = []
    for e in entries_of.get((tenant, user), ()):
        info = hour_info(e.timestamp // HOUR_MS)
        if (info.hour, info.day, info.month)[_KIND_INDEX[kind]] != label:
            continue
        tool = 0 if e.kind != "tool" else (1 if e.success else 2)
        total = e.tokens.total if e.tokens is not None else 0
        found.append((order.get(e.entry_id, 0), [e.entry_id, _lua(e.cost_pico), total, tool]))
    found.sort(key=lambda pair: pair[0])
    return [item for _, item in found]


_KIND_INDEX = {"hour": 0, "day": 1, "month": 2}


def _lua(v: int) -> int | str:
    return v if -_EXACT < v < _EXACT else str(v)


def _adjustments(
    groups: Sequence[tuple[Sequence[AcceptedEntry], RunDelta]],
    tenant: str,
    user: str,
    month: str,
    invoice: str,
    now_ms: int,
) -> list[list[Any]]:
    """One adjustment per priced LLM call of an invoiced month (entries without cost
    change the rollup, not what is owed)."""
    out = []
    for members, delta in groups:
        if delta.tenant_id != tenant:
            continue
        for e in members:
            if (
                e.user_id == user
                and e.cost_pico > 0
                and hour_info(e.timestamp // HOUR_MS).month == month
            ):
                adj = adjustment_id(invoice, e.entry_id)
                message = {
                    "type": "adjustment",
                    "adjustmentId": adj,
                    "invoiceId": invoice,
                    "amountUsd": format_usd(e.cost_pico),
                    "entryId": e.entry_id,
                    "at": now_ms,
                }
                out.append([adj, str(e.cost_pico), json.dumps(message), user])
    return out
