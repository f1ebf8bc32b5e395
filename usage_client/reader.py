"""Read side over the HTTP API (CONTRACT §3.1, §3.8), stdlib only: ``urllib`` in a worker
thread."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from usage_client.errors import RunNotFoundError, UsageApiError

__all__ = ["Budget", "BudgetLevel", "Budgets", "EntriesPage", "UsageReader"]

BudgetLevel = Literal["ok", "warning", "critical"]
_LEVELS: tuple[BudgetLevel, ...] = ("ok", "warning", "critical")


@dataclass(frozen=True, slots=True)
class EntriesPage:
    """One page of a run's raw entries, ordered by (timestamp, id); ``total`` counts every
    entry that passes the filters."""

    entries: list[dict[str, Any]]
    total: int


@dataclass(frozen=True, slots=True)
class Budget:
    """One configured rule applied to a user's current window or to a run's tree (§3.8).

    ``subject_type`` is ``"user"`` or ``"run"``; ``window_kind`` is ``"hour"``, ``"day"``,
    ``"month"`` or ``"run"``; ``window_start``/``window_end`` are epoch milliseconds
    (``window_end`` is None for a run's lifetime, ``window_start`` None for an unknown run).
    ``warning``/``critical`` are None when the rule has no such threshold; ``remaining`` is
    the critical (else warning) threshold minus observed, never below 0.
    """

    rule: str
    subject_type: str
    subject_id: str
    window_kind: str
    window_start: int | None
    window_end: int | None
    metric: str
    observed: Decimal
    warning: Decimal | None
    critical: Decimal | None
    level: BudgetLevel
    remaining: Decimal


@dataclass(frozen=True, slots=True)
class Budgets:
    """``GET /v1/budgets``: every rule that applies; ``exceeded`` is true when any of them
    is at ``critical``."""

    budgets: list[Budget]
    exceeded: bool


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

    async def budgets(self, *, user_id: str | None = None, run_id: str | None = None) -> Budgets:
        """``GET /v1/budgets``: the budgets of a user's current hour/day/month windows and/or
        of a run's tree (sub-agents included). At least one of ``user_id``, ``run_id``
        (ValueError otherwise). Ask before the next LLM call and stop when ``exceeded``."""
        if user_id is None and run_id is None:
            raise ValueError("budgets: give user_id, run_id or both")
        values = {"userId": user_id, "runId": run_id}
        query = {k: v for k, v in values.items() if v is not None}
        body = await self._get("/v1/budgets", query, run_id=run_id)
        try:
            return _parse_budgets(body)
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            raise UsageApiError(
                200, "bad_response", f"/v1/budgets answered an unexpected body: {exc!r}"
            ) from None

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


def _parse_budgets(body: Mapping[str, Any]) -> Budgets:
    exceeded = body["exceeded"]
    if not isinstance(exceeded, bool):
        raise TypeError(f"exceeded: {exceeded!r} is not a boolean")
    return Budgets(budgets=[_parse_budget(b) for b in body["budgets"]], exceeded=exceeded)


def _parse_budget(raw: Mapping[str, Any]) -> Budget:
    subject, window, thresholds = raw["subject"], raw["window"], raw.get("thresholds") or {}
    level = raw["level"]
    if level not in _LEVELS:
        raise ValueError(f"level: {level!r} is not one of {_LEVELS}")
    return Budget(
        rule=str(raw["rule"]),
        subject_type=str(subject["type"]),
        subject_id=str(subject["id"]),
        window_kind=str(window["kind"]),
        window_start=_opt_int(window.get("start")),
        window_end=_opt_int(window.get("end")),
        metric=str(raw["metric"]),
        observed=_decimal(raw["observed"]),
        warning=_opt_decimal(thresholds.get("warning")),
        critical=_opt_decimal(thresholds.get("critical")),
        level=level,
        remaining=_decimal(raw["remaining"]),
    )


def _decimal(value: Any) -> Decimal:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a decimal string")
    result = Decimal(value)
    if not result.is_finite():
        raise ValueError(f"{value!r} is not a finite decimal")
    return result


def _opt_decimal(value: Any) -> Decimal | None:
    return None if value is None else _decimal(value)


def _opt_int(value: Any) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise TypeError(f"{value!r} is not an integer")
    return value


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
