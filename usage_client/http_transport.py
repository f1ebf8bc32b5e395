"""``HttpUsageRecorder``: the same run API over ``POST /v1/entries`` (CONTRACT §3.5b), for
runtimes that cannot speak the Kafka protocol. Stdlib only (``urllib`` in a thread).

Entries are validated locally, buffered, and posted in batches of up to ``batch_size``
(at most 1,000) when the buffer fills, on ``flush()`` and on exit. A batch that fails with a
network error or a 5xx (e.g. 503 while Kafka is unavailable) is re-posted unchanged, with
the same entry ids, until ``delivery_timeout_s``: the processor de-duplicates on the id.
Entries the server rejects raise :class:`UsageRecorderError` with the server's reasons.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from usage_client.base import RecorderBase
from usage_client.errors import UsageApiError, UsageRecorderError
from usage_client.reader import UsageReader
from usage_client.validation import encode_entry

__all__ = ["HttpUsageRecorder", "IngestResult", "post_entries"]

MAX_BATCH = 1000

log = logging.getLogger("usage_client")


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int
    rejected: list[dict[str, Any]] = field(default_factory=list)


async def post_entries(reader: UsageReader, entries: list[dict[str, Any]]) -> IngestResult:
    """One ``POST /v1/entries``; raises :class:`UsageApiError` on an error status."""
    body = json.dumps({"entries": entries}, separators=(",", ":")).encode()
    url = reader.base_url + "/v1/entries"
    answer = await asyncio.to_thread(reader._request, "POST", url, body, None)
    return IngestResult(int(answer.get("accepted", 0)), list(answer.get("rejected", [])))


class HttpUsageRecorder(RecorderBase):
    """``async with HttpUsageRecorder("http://127.0.0.1:6066", user_id="u") as rec:``"""

    def __init__(
        self,
        base_url: str,
        *,
        user_id: str,
        api_key: str | None = None,
        tenant_id: str | None = None,
        agent_name: str | None = None,
        thread_id: str | None = None,
        batch_size: int = 100,
        delivery_timeout_s: float = 60.0,
        request_timeout_s: float = 30.0,
        retry_backoff_s: float = 0.5,
        strict_metrics: bool = False,
    ) -> None:
        super().__init__(
            user_id=user_id,
            tenant_id=tenant_id,
            agent_name=agent_name,
            thread_id=thread_id,
            strict_metrics=strict_metrics,
        )
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size: must be 1..{MAX_BATCH}")
        self._reader = UsageReader(base_url, api_key=api_key, timeout_s=request_timeout_s)
        self.batch_size = batch_size
        self.delivery_timeout_s = delivery_timeout_s
        self._backoff = retry_backoff_s
        self._buffer: list[dict[str, Any]] = []
        self._lock = asyncio.Lock()
        self._closed = False
        self.accepted = 0

    async def _submit(self, entry: dict[str, Any]) -> str:
        if self._closed:
            raise UsageRecorderError("the recorder is closed")
        encode_entry(entry)  # validation only; the server re-validates and re-encodes
        self._buffer.append(entry)
        if len(self._buffer) >= self.batch_size:
            await self.flush()
        return str(entry["id"])

    async def flush(self) -> None:
        """Post everything buffered; raises :class:`UsageRecorderError` on failure."""
        async with self._lock:
            while self._buffer:
                batch = self._buffer[: self.batch_size]
                result = await self._post_with_retries(batch)
                del self._buffer[: len(batch)]
                self.accepted += result.accepted
                if result.rejected:
                    raise UsageRecorderError(
                        f"{len(result.rejected)} entries rejected by the server: "
                        f"{result.rejected[:5]}"
                    )

    async def _post_with_retries(self, batch: list[dict[str, Any]]) -> IngestResult:
        deadline = time.monotonic() + self.delivery_timeout_s
        while True:
            try:
                return await post_entries(self._reader, batch)
            except UsageApiError as exc:
                retriable = exc.status == 0 or exc.status >= 500 or exc.status == 429
                if not retriable or time.monotonic() + self._backoff >= deadline:
                    raise UsageRecorderError(
                        f"POST {self._reader.base_url}/v1/entries failed: {exc}"
                    ) from exc
            await asyncio.sleep(self._backoff)

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await self.flush()
        finally:
            self._closed = True

    async def __aenter__(self) -> HttpUsageRecorder:
        return self
