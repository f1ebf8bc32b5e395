"""The summed figures of a rollup: token counts and call statistics (value types)."""

from __future__ import annotations

from dataclasses import dataclass

# One token-count type for the domain, the API and the client: it lives in the schemas
# distribution, which all three depend on, and is re-exported here for the domain's modules.
from schemas.tokens import TokenCounts

__all__ = ["CallStats", "TokenCounts"]


@dataclass(frozen=True, slots=True)
class CallStats:
    calls: int = 0
    successful: int = 0
    failed: int = 0
    duration_us: int = 0

    def __add__(self, other: CallStats) -> CallStats:
        return CallStats(
            self.calls + other.calls,
            self.successful + other.successful,
            self.failed + other.failed,
            self.duration_us + other.duration_us,
        )
