"""Token counts as plain values, shared by the processor, the API and the Python client.

Two shapes of the same six counts (contract semantics: ``prompt`` is ALL input tokens, cache
reads and writes included; ``completion`` ALL output tokens, reasoning included):

* :class:`TokenCounts`, a sum: the processor builds one per accepted entry and adds them up
  into rollups and windows, and the API serves it (:meth:`TokenCounts.to_wire`, the object
  :class:`schemas.api.TokenCounts` describes). ``total`` is its own count, since an entry
  may carry a bare ``total`` without prompt or completion.
* :class:`TokenUsage`, one LLM call as a producer reports it (the client's adapters return
  it): ``total`` is always ``prompt + completion``, so it is derived, and left out of the
  entry (:meth:`TokenUsage.to_wire`) for the processor to derive too.

Frozen slotted dataclasses rather than pydantic models: one is built per entry on the
ingest path. Both spell the wire names from :data:`TOKEN_TYPES`, so the spellings live here
once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = ["TOKEN_TYPES", "TokenCounts", "TokenUsage"]

#: The wire names of the counts (camelCase, as in entries and API responses), in the order
#: of the dataclasses' fields.
TOKEN_TYPES: Final = ("prompt", "completion", "reasoning", "cached", "cacheWrite", "total")


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """Token counts of one entry or of a sum of them.

    >>> (TokenCounts(prompt=3, total=3) + TokenCounts(completion=2, total=2)).to_wire()
    {'prompt': 3, 'completion': 2, 'reasoning': 0, 'cached': 0, 'cacheWrite': 0, 'total': 5}
    """

    prompt: int = 0
    completion: int = 0
    reasoning: int = 0
    cached: int = 0
    cache_write: int = 0
    total: int = 0

    def __add__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(
            self.prompt + other.prompt,
            self.completion + other.completion,
            self.reasoning + other.reasoning,
            self.cached + other.cached,
            self.cache_write + other.cache_write,
            self.total + other.total,
        )

    def as_tuple(self) -> tuple[int, int, int, int, int, int]:
        return (
            self.prompt,
            self.completion,
            self.reasoning,
            self.cached,
            self.cache_write,
            self.total,
        )

    def to_wire(self) -> dict[str, int]:
        """The API's token counts object (camelCase, every count present)."""
        return dict(zip(TOKEN_TYPES, self.as_tuple(), strict=True))

    @classmethod
    def from_wire(cls, wire: Mapping[str, int]) -> TokenCounts:
        """The reverse of :meth:`to_wire`; a missing count is 0.

        >>> TokenCounts.from_wire({"prompt": 3, "cacheWrite": 1, "total": 3})
        TokenCounts(prompt=3, completion=0, reasoning=0, cached=0, cache_write=1, total=3)
        """
        return cls(*(wire.get(name, 0) for name in TOKEN_TYPES))


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts of one LLM call in contract semantics (all integers >= 0)."""

    prompt: int = 0
    completion: int = 0
    reasoning: int = 0
    cached: int = 0
    cache_write: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.completion

    def to_wire(self) -> dict[str, int]:
        """The entry's ``tokens`` object (camelCase); ``total`` is left to the processor.

        >>> TokenUsage(prompt=5, completion=2, cache_write=1).to_wire()
        {'prompt': 5, 'completion': 2, 'reasoning': 0, 'cached': 0, 'cacheWrite': 1}
        """
        counts = (self.prompt, self.completion, self.reasoning, self.cached, self.cache_write)
        return dict(zip(TOKEN_TYPES[:5], counts, strict=True))

    def to_counts(self) -> TokenCounts:
        """The :class:`TokenCounts` the processor folds this call into."""
        return TokenCounts(
            self.prompt, self.completion, self.reasoning, self.cached, self.cache_write, self.total
        )
