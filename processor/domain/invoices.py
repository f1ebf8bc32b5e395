"""Invoices: ids, lines, statuses. Pure.

An invoice's id is derived from (tenant, user, period), so every worker and every
process that generates the same period computes the same ids and Redis keeps one of
each (the generation step creates it only when absent).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from processor.domain.windows import WindowUsage

STATUSES = ("pending", "paid", "failed")
#: status -> the statuses it may become
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"paid", "failed"}),
    "failed": frozenset({"paid"}),
    "paid": frozenset(),
}


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        raw = p.encode()
        h.update(b"%d:" % len(raw))  # length-prefixed: no two part lists collide
        h.update(raw)
    return h.hexdigest()[:32]


def invoice_id(tenant: str, user: str, period: str) -> str:
    """
    >>> invoice_id("default", "alice", "2024-02")
    'inv_7f573c674b717e46f56ef29c2613c2db'
    """
    return "inv_" + _digest("invoice", tenant, user, period)


def adjustment_id(invoice: str, entry_id: str) -> str:
    return "adj_" + _digest("adjustment", invoice, entry_id)


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    model: str
    tokens: int  # the model's tokens.total
    amount_pico: int


@dataclass(frozen=True, slots=True)
class Invoice:
    invoice_id: str
    tenant_id: str
    user_id: str
    period: str
    amount_pico: int
    lines: tuple[InvoiceLine, ...]
    adjustment_pico: int
    status: str
    generated_at: int


def draft_invoice(
    tenant: str, user: str, period: str, month: WindowUsage, generated_at: int
) -> Invoice:
    """The invoice of a month's rollup: one line per model, summing to the amount exactly.

    Lines are ordered by amount, descending, then model.
    """
    lines = tuple(
        sorted(
            (
                InvoiceLine(model, month.tokens_by_model[model].total, cost)
                for model, cost in month.cost_by_model.items()
            ),
            key=lambda line: (-line.amount_pico, line.model),
        )
    )
    return Invoice(
        invoice_id=invoice_id(tenant, user, period),
        tenant_id=tenant,
        user_id=user,
        period=period,
        amount_pico=sum(line.amount_pico for line in lines),
        lines=lines,
        adjustment_pico=0,
        status="pending",
        generated_at=generated_at,
    )


class TransitionRefused(Exception):
    """A status change the lifecycle does not allow (HTTP 409)."""


def check_transition(current: str, new: str) -> None:
    """Raise ValueError for an unknown status, TransitionRefused for a refused change.

    >>> check_transition("pending", "paid")
    >>> check_transition("paid", "failed")
    Traceback (most recent call last):
    ...
    processor.domain.invoices.TransitionRefused: an invoice that is paid cannot become failed
    """
    if new not in STATUSES:
        raise ValueError(f"unknown status {new!r}: expected one of {', '.join(STATUSES)}")
    if new not in TRANSITIONS[current]:
        raise TransitionRefused(f"an invoice that is {current} cannot become {new}")
