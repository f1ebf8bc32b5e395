"""Prices of one period: exact integer rates, long-context tiers, effective dates.

Prices are USD per million tokens with at most 6 decimal places, so one token costs a whole
number of pico-dollars (``price * 10**12 / 10**6``) and every entry's cost is an exact
integer. A price with more decimals is refused, never rounded: it could not be summed
exactly (see docs/decisions.md).
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect_left
from dataclasses import dataclass, field
from decimal import Decimal

from processor.domain.money import usd_to_pico

PICO_PER_MICRO = 10**6  # pico-dollars per token for 1 USD / million tokens
MAX_PRICE_DECIMALS = 6
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_MS_PER_DAY = 86_400_000


def pico_per_token(value: Decimal, where: str) -> int:
    """Pico-dollars per token for a USD-per-million price; ValueError naming ``where``.

    >>> pico_per_token(Decimal("2.5"), "input"), pico_per_token(Decimal("0.000001"), "input")
    (2500000, 1)
    """
    if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        raise ValueError(f"{where}: {value!r} must be a finite decimal >= 0")
    try:
        pico_per_million = usd_to_pico(value)
    except ValueError:
        pico_per_million = -1
    if pico_per_million < 0 or pico_per_million % PICO_PER_MICRO:
        raise ValueError(
            f"{where}: {value} has more than {MAX_PRICE_DECIMALS} decimal places (USD per "
            "million tokens must give a whole number of pico-dollars per token)"
        )
    return pico_per_million // PICO_PER_MICRO


def per_call_pico(per_thousand: Decimal) -> int:
    """Pico-dollars per call for a USD-per-1,000-calls fee (at most 9 decimals).

    >>> per_call_pico(Decimal("5"))  # $5 per 1,000 calls: half a cent each
    5000000000
    """
    try:
        pico = usd_to_pico(per_thousand)
    except ValueError:
        pico = -1
    if pico < 0 or pico % 1000:
        raise ValueError(f"{per_thousand}: a fee per 1,000 calls with more than 9 decimals")
    return pico // 1000


@dataclass(frozen=True, slots=True)
class Tier:
    """Above ``above`` prompt tokens, every token of the component costs ``price``."""

    above: int
    price: Decimal


@dataclass(frozen=True, slots=True)
class Rate:
    """One price component (USD per million tokens), optionally tiered by prompt size."""

    base: Decimal
    tiers: tuple[Tier, ...] = ()
    _base_pico: int = field(init=False, repr=False, compare=False)
    _aboves: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _tier_pico: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_base_pico", pico_per_token(self.base, "base"))
        last = -1
        for i, tier in enumerate(self.tiers):
            if isinstance(tier.above, bool) or not isinstance(tier.above, int):
                raise ValueError(f"tiers[{i}].above: {tier.above!r} must be an integer")
            if tier.above < 0:
                raise ValueError(f"tiers[{i}].above: {tier.above} must be >= 0")
            if tier.above <= last:
                raise ValueError(
                    f"tiers[{i}].above: {tier.above} must be greater than the tier before ({last})"
                )
            last = tier.above
        object.__setattr__(self, "_aboves", tuple(t.above for t in self.tiers))
        object.__setattr__(
            self,
            "_tier_pico",
            tuple(pico_per_token(t.price, f"tiers[{i}].price") for i, t in enumerate(self.tiers)),
        )

    def pico_at(self, prompt_tokens: int) -> int:
        """Pico-dollars per token for a call of ``prompt_tokens``: the highest tier whose
        ``above`` the prompt exceeds, else the base."""
        if not self._aboves:
            return self._base_pico
        i = bisect_left(self._aboves, prompt_tokens)  # tiers with above < prompt_tokens
        return self._base_pico if i == 0 else self._tier_pico[i - 1]

    def usd_at(self, prompt_tokens: int) -> Decimal:
        """The USD-per-million price for a call of ``prompt_tokens`` (for reference code)."""
        for tier in reversed(self.tiers):
            if prompt_tokens > tier.above:
                return tier.price
        return self.base

    @property
    def tiered(self) -> bool:
        return bool(self.tiers)


@dataclass(frozen=True, slots=True)
class PricePeriod:
    """The prices of a model from ``effective_from`` (None: since ever) on, during the
    UTC minutes of the day ``utc_minutes`` = [start, end) when given (an off-peak price;
    end < start wraps past midnight).

    ``cached_input`` and ``cache_write`` default to ``input``, ``reasoning`` to ``output``.
    """

    effective_from: dt.date | None
    input: Rate
    output: Rate
    cached_input: Rate
    cache_write: Rate
    reasoning: Rate
    utc_minutes: tuple[int, int] | None = None
    #: a fee per call (USD per 1,000 calls; Perplexity charges one besides tokens)
    per_thousand_calls: Decimal | None = None
    _per_call_pico: int = field(init=False, repr=False, compare=False)

    #: the five rates when none is tiered (the common case, priced without a lookup)
    _flat: tuple[int, int, int, int, int] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fee = self.per_thousand_calls
        object.__setattr__(self, "_per_call_pico", 0 if fee is None else per_call_pico(fee))
        rates = (self.input, self.cached_input, self.cache_write, self.output, self.reasoning)
        flat = None
        if not any(r.tiered for r in rates):
            i, c, w, o, r = (rate.pico_at(0) for rate in rates)
            flat = (i, c, w, o, r)
        object.__setattr__(self, "_flat", flat)

    def active(self, timestamp_ms: int) -> bool:
        starts = self.starts_ms
        if starts is not None and timestamp_ms < starts:
            return False
        if self.utc_minutes is None:
            return True
        minute = timestamp_ms % _MS_PER_DAY // 60_000
        start, end = self.utc_minutes
        if end < start:
            return minute >= start or minute < end
        return start <= minute < end

    @classmethod
    def of(
        cls,
        effective_from: dt.date | None,
        input: Rate,
        output: Rate,
        *,
        cached_input: Rate | None = None,
        cache_write: Rate | None = None,
        reasoning: Rate | None = None,
        utc_minutes: tuple[int, int] | None = None,
        per_thousand_calls: Decimal | None = None,
    ) -> PricePeriod:
        return cls(
            effective_from,
            input,
            output,
            cached_input if cached_input is not None else input,
            cache_write if cache_write is not None else input,
            reasoning if reasoning is not None else output,
            utc_minutes,
            per_thousand_calls,
        )

    @property
    def starts_ms(self) -> int | None:
        if self.effective_from is None:
            return None
        return (self.effective_from.toordinal() - _EPOCH_ORDINAL) * _MS_PER_DAY

    def cost_pico(
        self,
        *,
        prompt: int,
        completion: int,
        reasoning: int,
        cached: int,
        cache_write: int,
        total_only: int | None,
    ) -> int:
        """The exact cost of one call (CONTRACT §7): uncached input, cache reads, cache
        writes, completion less reasoning, reasoning; a bare total at ``input``."""
        if total_only is not None:
            return total_only * self.input.pico_at(0) + self._per_call_pico
        # (PriceCatalog.price_tokens prices a flat period inline, from ``_flat``)
        return (
            self._per_call_pico
            + (prompt - cached - cache_write) * self.input.pico_at(prompt)
            + cached * self.cached_input.pico_at(prompt)
            + cache_write * self.cache_write.pico_at(prompt)
            + (completion - reasoning) * self.output.pico_at(prompt)
            + reasoning * self.reasoning.pico_at(prompt)
        )


def period_in_effect(periods: tuple[PricePeriod, ...], timestamp_ms: int) -> PricePeriod:
    """The last period in the list that is active at ``timestamp_ms`` (started, and within
    its hours); when none is, the first (before the first dated price: a model that was
    used was not free, and first dates are approximate). The rule genai-prices applies to
    its conditional prices, so lists in its order price as it does; for periods ordered
    by date it is the latest started one."""
    for period in reversed(periods):
        if period.active(timestamp_ms):
            return period
    return periods[0]
