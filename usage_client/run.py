"""One agent run: builds entries of every kind and hands them to the recorder.

Step counting: ``stepCount`` is the number of LLM calls recorded in the run so far. Each
``record_tokens``/``record_usage`` starts a new step (1, 2, 3, ...); tool, sub-agent and
custom entries carry the current step, i.e. the LLM call that led to them (0 before the
first call). ``step=`` on any call overrides it (and moves the counter there).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Protocol

from usage_client.adapters import TokenUsage, to_token_usage
from usage_client.ids import new_id
from usage_client.validation import now_ms

__all__ = ["MetricDefinition", "RunHandle", "ToolTimer"]

#: Error messages of failed tool / sub-agent calls are cut to this many characters.
MAX_ERROR_CHARS = 2000


class MetricDefinition:
    """A custom metric type declared with ``UsageRecorder.define_metric``."""

    __slots__ = ("description", "type")

    def __init__(self, type: str, description: str) -> None:
        self.type = type
        self.description = description

    def __repr__(self) -> str:
        return f"MetricDefinition(type={self.type!r}, description={self.description!r})"


class _Sink(Protocol):
    async def _submit(self, entry: dict[str, Any]) -> str: ...

    def _metric_type(self, metric: str | MetricDefinition) -> str: ...


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:MAX_ERROR_CHARS]


class RunHandle:
    """Records the entries of one run; obtained from ``UsageRecorder.run()``."""

    def __init__(
        self,
        sink: _Sink,
        *,
        run_id: str,
        user_id: str,
        tenant_id: str | None = None,
        agent_name: str | None = None,
        thread_id: str | None = None,
        parent_run_id: str | None = None,
    ) -> None:
        self._sink = sink
        self.run_id = run_id
        self.user_id = user_id
        self.tenant_id = tenant_id
        self.agent_name = agent_name
        self.thread_id = thread_id
        self.parent_run_id = parent_run_id
        self._step = 0

    def __repr__(self) -> str:
        return f"RunHandle(run_id={self.run_id!r}, step={self._step})"

    # --- steps ---------------------------------------------------------------------------

    @property
    def step(self) -> int:
        """The current ``stepCount``: LLM calls recorded in this run so far."""
        return self._step

    def next_step(self) -> int:
        """Advance the step counter by hand (e.g. for an agent step without an LLM call)."""
        self._step += 1
        return self._step

    # --- entries -------------------------------------------------------------------------

    def _base(self, kind: str, step: int | None, timestamp_ms: int | None) -> dict[str, Any]:
        if step is not None:
            self._step = step
        entry: dict[str, Any] = {
            "id": new_id(),
            "kind": kind,
            "runId": self.run_id,
            "userId": self.user_id,
            "timestamp": now_ms() if timestamp_ms is None else timestamp_ms,
            "stepCount": self._step,
        }
        if self.tenant_id is not None:
            entry["tenantId"] = self.tenant_id
        if self.agent_name is not None:
            entry["agentName"] = self.agent_name
        if self.thread_id is not None:
            entry["threadId"] = self.thread_id
        if self.parent_run_id is not None:
            entry["parentRunId"] = self.parent_run_id
        return entry

    async def record_tokens(
        self,
        model: str,
        *,
        prompt: int | None = None,
        completion: int | None = None,
        reasoning: int | None = None,
        cached: int | None = None,
        cache_write: int | None = None,
        total: int | None = None,
        provider: str | None = None,
        cost_usd: str | None = None,
        step: int | None = None,
        timestamp_ms: int | None = None,
    ) -> str:
        """One LLM call, counts in contract semantics (prompt includes cached and cache
        writes, completion includes reasoning). Starts a new step. Returns the entry id."""
        previous = self._step
        if step is None:
            self._step += 1
        entry = self._base("tokens", step, timestamp_ms)
        entry["model"] = model
        if provider is not None:
            entry["provider"] = provider
        counts = {
            "prompt": prompt,
            "completion": completion,
            "reasoning": reasoning,
            "cached": cached,
            "cacheWrite": cache_write,
            "total": total,
        }
        entry["tokens"] = {k: v for k, v in counts.items() if v is not None}
        if cost_usd is not None:
            entry["costUsd"] = cost_usd
        try:
            return await self._sink._submit(entry)
        except ValueError:
            self._step = previous  # a rejected call is not a step
            raise

    async def record_usage(
        self,
        model: str,
        usage: Any,
        *,
        provider: str | None = None,
        cost_usd: str | None = None,
        step: int | None = None,
    ) -> str:
        """``record_tokens`` from a provider's usage object (OpenAI Chat/Responses,
        Anthropic, Gemini), an AI SDK usage dict or a :class:`TokenUsage`."""
        tokens: TokenUsage = to_token_usage(usage)
        return await self.record_tokens(
            model,
            prompt=tokens.prompt,
            completion=tokens.completion,
            reasoning=tokens.reasoning or None,
            cached=tokens.cached or None,
            cache_write=tokens.cache_write or None,
            provider=provider,
            cost_usd=cost_usd,
            step=step,
        )

    async def record_tool(
        self,
        tool_name: str,
        *,
        duration_ms: float,
        success: bool = True,
        error: str | None = None,
        step: int | None = None,
    ) -> str:
        """One tool call."""
        entry = self._base("tool", step, None)
        entry.update(toolName=tool_name, durationMs=duration_ms, success=success)
        if error is not None:
            entry["error"] = error[:MAX_ERROR_CHARS]
        return await self._sink._submit(entry)

    def tool(self, tool_name: str) -> ToolTimer:
        """``async with run.tool("search"): ...`` times the block and records a tool entry:
        success when it ends normally, failure (with the error) when it raises; the
        exception propagates."""
        return ToolTimer(self, tool_name)

    async def record_subagent(
        self,
        sub_agent_type: str,
        sub_agent_run_id: str,
        *,
        duration_ms: float,
        success: bool = True,
        error: str | None = None,
        step: int | None = None,
    ) -> str:
        """One sub-agent invocation; links this run to ``sub_agent_run_id``."""
        entry = self._base("subagent", step, None)
        entry.update(
            subAgentType=sub_agent_type,
            subAgentRunId=sub_agent_run_id,
            durationMs=duration_ms,
            success=success,
        )
        if error is not None:
            entry["error"] = error[:MAX_ERROR_CHARS]
        return await self._sink._submit(entry)

    def child(
        self,
        *,
        run_id: str | None = None,
        agent_name: str | None = None,
        user_id: str | None = None,
    ) -> RunHandle:
        """A handle for a sub-agent's run: its entries carry ``parentRunId`` = this run.
        Link the other way with :meth:`record_subagent` (or use :meth:`subagent`)."""
        return RunHandle(
            self._sink,
            run_id=run_id or new_id(),
            user_id=user_id or self.user_id,
            tenant_id=self.tenant_id,
            agent_name=agent_name,
            thread_id=self.thread_id,
            parent_run_id=self.run_id,
        )

    @asynccontextmanager
    async def subagent(
        self,
        sub_agent_type: str,
        *,
        run_id: str | None = None,
        agent_name: str | None = None,
    ) -> AsyncIterator[RunHandle]:
        """``async with run.subagent("researcher") as child: ...`` yields the child run
        (``parentRunId`` = this run) and, when the block ends, records the ``subagent``
        entry on this run (``subAgentRunId`` = the child) with the block's duration and
        success; an exception is recorded as a failure and propagates."""
        child = self.child(run_id=run_id, agent_name=agent_name or sub_agent_type)
        started = time.monotonic()
        try:
            yield child
        except BaseException as exc:
            await self.record_subagent(
                sub_agent_type,
                child.run_id,
                duration_ms=_elapsed_ms(started),
                success=False,
                error=_error_text(exc),
            )
            raise
        await self.record_subagent(
            sub_agent_type, child.run_id, duration_ms=_elapsed_ms(started), success=True
        )

    async def record_custom(
        self,
        metric: str | MetricDefinition,
        name: str,
        value: float,
        *,
        step: int | None = None,
    ) -> str:
        """A custom metric: ``metric`` is its type (e.g. ``api_calls``, or a definition from
        ``define_metric``), ``name`` what it counts (e.g. ``tavily``), ``value`` a finite
        number (negative allowed)."""
        entry = self._base("custom", step, None)
        entry.update(type=self._sink._metric_type(metric), name=name, value=value)
        return await self._sink._submit(entry)


def _elapsed_ms(started: float) -> float:
    return round(max(0.0, time.monotonic() - started) * 1000.0, 3)


class ToolTimer:
    """Async context manager returned by ``RunHandle.tool``; ``entry_id`` is set on exit."""

    def __init__(self, run: RunHandle, tool_name: str) -> None:
        self._run = run
        self.tool_name = tool_name
        self.entry_id: str | None = None
        self._started = 0.0

    async def __aenter__(self) -> ToolTimer:
        self._started = time.monotonic()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        duration = _elapsed_ms(self._started)
        self.entry_id = await self._run.record_tool(
            self.tool_name,
            duration_ms=duration,
            success=exc is None,
            error=None if exc is None else _error_text(exc),
        )
