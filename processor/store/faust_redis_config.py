"""Configuration and Redis key naming of the Redis-backed Faust table store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from yarl import URL

__all__ = [
    "DEFAULT_FLUSH_INTERVAL_MS",
    "DEFAULT_MAX_DIRTY",
    "DEFAULT_PREFIX",
    "RedisStoreConfig",
]

DEFAULT_PREFIX = "us"
DEFAULT_FLUSH_INTERVAL_MS = 100
DEFAULT_MAX_DIRTY = 10_000
_OPTION_NAMES = ("prefix", "flush_interval_ms", "max_dirty")


@dataclass(frozen=True, slots=True)
class RedisStoreConfig:
    redis_url: str
    prefix: str = DEFAULT_PREFIX
    flush_interval: float = DEFAULT_FLUSH_INTERVAL_MS / 1000
    max_dirty: int = DEFAULT_MAX_DIRTY

    @classmethod
    def from_url(cls, url: URL | str, options: Mapping[str, Any] | None = None) -> RedisStoreConfig:
        """Parse ``redis://[:pw@]host:port/db?prefix=..&flush_interval_ms=..&max_dirty=..``.

        Table ``options={...}`` with the same names override the query string.
        """
        url = URL(url)
        opts: dict[str, Any] = {k: url.query[k] for k in _OPTION_NAMES if k in url.query}
        opts.update({k: v for k, v in (options or {}).items() if k in _OPTION_NAMES})
        rest = {k: v for k, v in url.query.items() if k not in _OPTION_NAMES}
        base = URL.build(
            scheme=url.scheme or "redis",
            user=url.user,
            password=url.password,
            host=url.host or "localhost",
            port=url.port or 6379,
            path=url.path if url.path not in ("", "/") else "/0",
            query=rest,
        )
        interval_ms = float(opts.get("flush_interval_ms", DEFAULT_FLUSH_INTERVAL_MS))
        max_dirty = int(opts.get("max_dirty", DEFAULT_MAX_DIRTY))
        if interval_ms <= 0 or max_dirty <= 0:
            raise ValueError("flush_interval_ms and max_dirty must be positive")
        return cls(
            redis_url=str(base),
            prefix=str(opts.get("prefix", DEFAULT_PREFIX)),
            flush_interval=interval_ms / 1000,
            max_dirty=max_dirty,
        )
