"""Read side over the HTTP API (CONTRACT §3.1), stdlib only: ``urllib`` in a worker thread."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from usage_client.errors import RunNotFoundError, UsageApiError

__all__ = ["EntriesPage", "UsageReader"]


@dataclass(frozen=True, slots=True)
class EntriesPage:
    """One page of a run's raw entries, ordered by (timestamp, id); ``total`` counts every
    entry that passes the filters."""

    entries: list[dict[str, Any]]
    total: int


class UsageReader:
    """``reader = UsageReader("http://127.0.0.1:6066", api_key=None)``; every method is
    async and raises :class:`UsageApiError` (``RunNotFoundError`` for a 404)."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    async def get_rollup(self, run_id: str, *, include_sub_agents: bool = True) -> dict[str, Any]:
        """``GET /v1/runs/{runId}/rollup``: the run's rollup object."""
        query = {"includeSubAgents": "true" if include_sub_agents else "false"}
        return await self._get(f"/v1/runs/{_seg(run_id)}/rollup", query, run_id=run_id)

    async def get_entries(
        self,
        run_id: str,
        *,
        kinds: Iterable[str] | None = None,
        step_range: tuple[int | None, int | None] | None = None,
        time_range: tuple[int | None, int | None] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> EntriesPage:
        """``GET /v1/runs/{runId}/entries``; ranges are inclusive ``(min, max)`` pairs, either
        end may be None; times in epoch milliseconds."""
        query: dict[str, str] = {}
        if kinds is not None:
            query["kinds"] = ",".join(kinds)
        for (low_name, high_name), pair in (
            (("stepMin", "stepMax"), step_range),
            (("start", "end"), time_range),
        ):
            if pair is not None:
                low, high = pair
                if low is not None:
                    query[low_name] = str(low)
                if high is not None:
                    query[high_name] = str(high)
        if limit is not None:
            query["limit"] = str(limit)
        if offset is not None:
            query["offset"] = str(offset)
        body = await self._get(f"/v1/runs/{_seg(run_id)}/entries", query, run_id=run_id)
        return EntriesPage(entries=list(body.get("entries", [])), total=int(body.get("total", 0)))

    async def list_runs(
        self,
        *,
        user_id: str | None = None,
        agent_name: str | None = None,
        since: int | None = None,
        limit: int | None = None,
    ) -> list[str]:
        """``GET /v1/runs``: run ids, newest first."""
        values = {"userId": user_id, "agentName": agent_name, "since": since, "limit": limit}
        query = {k: str(v) for k, v in values.items() if v is not None}
        body = await self._get("/v1/runs", query)
        return [str(r) for r in body.get("runIds", [])]

    # --- transport -----------------------------------------------------------------------

    async def _get(
        self, path: str, query: Mapping[str, str], *, run_id: str | None = None
    ) -> dict[str, Any]:
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        return await asyncio.to_thread(self._request, "GET", url, None, run_id)

    def _request(
        self, method: str, url: str, body: bytes | None, run_id: str | None
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raise _api_error(exc.code, exc.read(), run_id) from None
        except (urllib.error.URLError, OSError) as exc:
            raise UsageApiError(0, "unreachable", f"{method} {url} failed: {exc}") from None
        try:
            decoded = json.loads(payload)
        except ValueError:
            raise UsageApiError(200, "bad_response", f"{url} did not answer JSON") from None
        if not isinstance(decoded, dict):
            raise UsageApiError(200, "bad_response", f"{url} answered {type(decoded).__name__}")
        return decoded


def _seg(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _api_error(status: int, payload: bytes, run_id: str | None) -> UsageApiError:
    code, message = "http_error", payload[:500].decode("utf-8", "replace")
    try:
        error = json.loads(payload)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        pass
    if status == 404 and run_id is not None:
        return RunNotFoundError(status, code, message)
    return UsageApiError(status, code, message)
