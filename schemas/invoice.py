"""Invoices (CONTRACT §3.5), as answered by the API and published on ``usage.invoices``."""

from __future__ import annotations

from enum import StrEnum
from typing import Final, Literal

from pydantic import Field

from schemas.common import UsdStr, WireModel

__all__ = [
    "ALLOWED_STATUS_TRANSITIONS",
    "Invoice",
    "InvoiceLine",
    "InvoiceStatus",
    "InvoiceStatusUpdate",
    "is_allowed_transition",
]

PERIOD_PATTERN: Final = r"^[0-9]{4}-(0[1-9]|1[0-2])$"


class InvoiceStatus(StrEnum):
    """``pending`` may become ``paid`` or ``failed``; ``failed`` may become ``paid``."""

    PENDING = "pending"
    PAID = "paid"
    FAILED = "failed"


#: Allowed status changes; anything else (including any change of ``paid``) is a 409.
ALLOWED_STATUS_TRANSITIONS: Final[frozenset[tuple[InvoiceStatus, InvoiceStatus]]] = frozenset(
    {
        (InvoiceStatus.PENDING, InvoiceStatus.PAID),
        (InvoiceStatus.PENDING, InvoiceStatus.FAILED),
        (InvoiceStatus.FAILED, InvoiceStatus.PAID),
    }
)


def is_allowed_transition(old: InvoiceStatus | str, new: InvoiceStatus | str) -> bool:
    """True when an invoice in status ``old`` may be set to ``new``."""
    return (InvoiceStatus(old), InvoiceStatus(new)) in ALLOWED_STATUS_TRANSITIONS


class InvoiceLine(WireModel):
    """One model's share of the invoice; ``tokens`` is the model's ``tokens.total``."""

    model: str
    tokens: int
    amount_usd: UsdStr


class Invoice(WireModel):
    """Invoice of one user for one month. ``amountUsd`` equals the period's ``costUsd`` at
    generation time and the sum of ``lines[].amountUsd``; costs of entries arriving later
    for the period go to ``adjustmentUsd`` ("0" when none)."""

    invoice_id: str
    tenant_id: str
    user_id: str
    period: str = Field(pattern=PERIOD_PATTERN, description="UTC month, YYYY-MM.")
    amount_usd: UsdStr
    lines: list[InvoiceLine]
    adjustment_usd: UsdStr = "0"
    status: InvoiceStatus = InvoiceStatus.PENDING
    generated_at: int = Field(description="Epoch ms.")


class InvoiceStatusUpdate(WireModel):
    """Body of ``POST /v1/invoices/{invoiceId}/status``: the status to move to. A status
    that does not exist is a 400; ``pending`` exists but no invoice may return to it (409)."""

    status: Literal["paid", "failed"]
