"""Provider usage objects -> the contract's token semantics (CONTRACT §2).

Contract semantics: ``prompt`` is ALL input tokens (cache reads and cache writes included),
``completion`` ALL output tokens (reasoning included), ``reasoning`` part of completion,
``cached`` and ``cacheWrite`` parts of prompt. Providers count differently:

* OpenAI Chat: ``prompt_tokens`` includes cached, ``completion_tokens`` includes reasoning.
* OpenAI Responses: ``input_tokens`` includes cached, ``output_tokens`` includes reasoning.
* Anthropic Messages: ``input_tokens`` EXCLUDES cache reads and cache writes, so
  prompt = input + cache read + cache write; ``output_tokens`` includes thinking.
* Google Gemini: ``prompt_token_count`` includes cached content (tool-use prompt tokens
  are counted apart and added); ``candidates_token_count`` EXCLUDES thoughts, so
  completion = candidates + thoughts.

Every adapter reads attributes duck-typed (``getattr``), so it works with the SDK's
pydantic objects, with other objects of the same shape, and with SDK versions that lack a
newer field; a missing or ``None`` count is 0. The adapters do not re-check the invariants:
the entry built from the result is validated before it is sent, and a provider that reports
inconsistent counts gets a ``ValueError`` naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The adapters' result type is the schemas distribution's, beside the processor's
# TokenCounts, so that both shapes of the same counts are defined (and converted) in one place.
from schemas.tokens import TokenUsage

__all__ = [
    "TokenUsage",
    "from_ai_sdk",
    "from_anthropic",
    "from_gemini",
    "from_openai_chat",
    "from_openai_responses",
    "to_token_usage",
]


def _n(obj: Any, name: str) -> int:
    """``obj.name`` (or ``obj[name]`` for mappings) as an int; missing or None -> 0."""
    if obj is None:
        return 0
    value = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an integer token count, got {value!r}")
    return value


def _sub(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def from_openai_chat(usage: Any) -> TokenUsage:
    """OpenAI Chat Completions ``CompletionUsage`` (``response.usage``).

    prompt = ``prompt_tokens`` (includes ``prompt_tokens_details.cached_tokens``),
    completion = ``completion_tokens`` (includes ``completion_tokens_details.reasoning_tokens``),
    cached = ``prompt_tokens_details.cached_tokens``, cacheWrite =
    ``prompt_tokens_details.cache_write_tokens`` (newer SDKs; 0 when absent).
    """
    prompt_details = _sub(usage, "prompt_tokens_details")
    completion_details = _sub(usage, "completion_tokens_details")
    return TokenUsage(
        prompt=_n(usage, "prompt_tokens"),
        completion=_n(usage, "completion_tokens"),
        reasoning=_n(completion_details, "reasoning_tokens"),
        cached=_n(prompt_details, "cached_tokens"),
        cache_write=_n(prompt_details, "cache_write_tokens"),
    )


def from_openai_responses(usage: Any) -> TokenUsage:
    """OpenAI Responses API ``ResponseUsage`` (``response.usage``).

    prompt = ``input_tokens`` (includes ``input_tokens_details.cached_tokens``), completion =
    ``output_tokens`` (includes ``output_tokens_details.reasoning_tokens``), cacheWrite =
    ``input_tokens_details.cache_write_tokens`` (newer SDKs; 0 when absent).
    """
    input_details = _sub(usage, "input_tokens_details")
    output_details = _sub(usage, "output_tokens_details")
    return TokenUsage(
        prompt=_n(usage, "input_tokens"),
        completion=_n(usage, "output_tokens"),
        reasoning=_n(output_details, "reasoning_tokens"),
        cached=_n(input_details, "cached_tokens"),
        cache_write=_n(input_details, "cache_write_tokens"),
    )


def from_anthropic(usage: Any) -> TokenUsage:
    """Anthropic Messages ``Usage`` (``message.usage``; also ``MessageDeltaUsage``).

    Anthropic's ``input_tokens`` EXCLUDES cache reads and cache writes, so prompt =
    ``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``, cached =
    ``cache_read_input_tokens``, cacheWrite = ``cache_creation_input_tokens``. completion =
    ``output_tokens`` (thinking included), reasoning = ``output_tokens_details.thinking_tokens``
    (newer SDKs; 0 when absent).
    """
    cache_read = _n(usage, "cache_read_input_tokens")
    cache_write = _n(usage, "cache_creation_input_tokens")
    return TokenUsage(
        prompt=_n(usage, "input_tokens") + cache_read + cache_write,
        completion=_n(usage, "output_tokens"),
        reasoning=_n(_sub(usage, "output_tokens_details"), "thinking_tokens"),
        cached=cache_read,
        cache_write=cache_write,
    )


def from_gemini(usage_metadata: Any) -> TokenUsage:
    """Google Gemini ``GenerateContentResponseUsageMetadata`` (``response.usage_metadata``).

    prompt = ``prompt_token_count`` (includes ``cached_content_token_count``) +
    ``tool_use_prompt_token_count`` (tool results fed back as input, billed as input and
    counted separately by Gemini), cached = ``cached_content_token_count``; completion =
    ``candidates_token_count + thoughts_token_count`` (candidates EXCLUDE thoughts),
    reasoning = ``thoughts_token_count``. prompt + completion equals ``total_token_count``.
    """
    thoughts = _n(usage_metadata, "thoughts_token_count")
    return TokenUsage(
        prompt=_n(usage_metadata, "prompt_token_count")
        + _n(usage_metadata, "tool_use_prompt_token_count"),
        completion=_n(usage_metadata, "candidates_token_count") + thoughts,
        reasoning=thoughts,
        cached=_n(usage_metadata, "cached_content_token_count"),
    )


def from_ai_sdk(usage: Mapping[str, Any], *, input_excludes_cache: bool = False) -> TokenUsage:
    """The Vercel AI SDK's ``LanguageModelUsage`` as a dict (e.g. parsed from JSON).

    Handled shapes, told apart by their keys:

    * v6 (``ai@6``): ``inputTokens`` (all input), ``inputTokenDetails: {noCacheTokens,
      cacheReadTokens, cacheWriteTokens}``, ``outputTokens`` (all output),
      ``outputTokenDetails: {textTokens, reasoningTokens}``. When ``inputTokens`` is
      missing it is the sum of the details.
    * v5 (``ai@5``): ``inputTokens``, ``outputTokens``, ``totalTokens``, ``reasoningTokens``,
      ``cachedInputTokens``. Whether ``outputTokens`` includes reasoning depends on the
      provider in v5 (Google's does not): when ``totalTokens == inputTokens + outputTokens +
      reasoningTokens``, or reasoning exceeds output, reasoning is added to completion.
      v5's Anthropic provider reports ``inputTokens`` WITHOUT cache reads: pass
      ``input_excludes_cache=True`` for it and ``cachedInputTokens`` is added to prompt
      (its cache writes only appear in provider metadata and cannot be recovered here).
    * v4 (``ai@4``): ``promptTokens``, ``completionTokens``, ``totalTokens``.
    """
    input_details = usage.get("inputTokenDetails")
    output_details = usage.get("outputTokenDetails")
    if isinstance(input_details, Mapping) or isinstance(output_details, Mapping):
        return _ai_sdk_v6(usage, input_details, output_details)
    if "inputTokens" in usage or "outputTokens" in usage:
        return _ai_sdk_v5(usage, input_excludes_cache)
    if "promptTokens" in usage or "completionTokens" in usage:
        return TokenUsage(
            prompt=_n(usage, "promptTokens"), completion=_n(usage, "completionTokens")
        )
    raise ValueError(
        "not an AI SDK LanguageModelUsage: expected inputTokens/outputTokens (v5, v6) or "
        f"promptTokens/completionTokens (v4), got keys {sorted(usage)}"
    )


def _ai_sdk_v6(usage: Mapping[str, Any], inp: Any, out: Any) -> TokenUsage:
    cache_read = _n(inp, "cacheReadTokens")
    cache_write = _n(inp, "cacheWriteTokens")
    prompt = (
        _n(usage, "inputTokens")
        if usage.get("inputTokens") is not None
        else _n(inp, "noCacheTokens") + cache_read + cache_write
    )
    reasoning = _n(out, "reasoningTokens") if out is not None else _n(usage, "reasoningTokens")
    completion = (
        _n(usage, "outputTokens")
        if usage.get("outputTokens") is not None
        else _n(out, "textTokens") + reasoning
    )
    return TokenUsage(
        prompt=prompt,
        completion=completion,
        reasoning=reasoning,
        cached=cache_read,
        cache_write=cache_write,
    )


def _ai_sdk_v5(usage: Mapping[str, Any], input_excludes_cache: bool) -> TokenUsage:
    cached = _n(usage, "cachedInputTokens")
    prompt = _n(usage, "inputTokens") + (cached if input_excludes_cache else 0)
    output = _n(usage, "outputTokens")
    reasoning = _n(usage, "reasoningTokens")
    total = usage.get("totalTokens")
    input_reported = _n(usage, "inputTokens")
    output_excludes_reasoning = reasoning > output or (
        reasoning > 0 and total is not None and total == input_reported + output + reasoning
    )
    return TokenUsage(
        prompt=prompt,
        completion=output + reasoning if output_excludes_reasoning else output,
        reasoning=reasoning,
        cached=cached,
    )


def to_token_usage(usage: Any) -> TokenUsage:
    """Detect the shape of ``usage`` and convert it (used by ``RunHandle.record_usage``).

    Accepts a :class:`TokenUsage`, an OpenAI Chat or Responses usage, an Anthropic usage, a
    Gemini usage metadata object, or an AI SDK usage dict. Ambiguous objects raise
    ``TypeError``; call the specific ``from_...`` function instead.
    """
    if isinstance(usage, TokenUsage):
        return usage
    if isinstance(usage, Mapping):
        if "prompt_tokens" in usage or "input_tokens" in usage or "prompt_token_count" in usage:
            raise TypeError(
                "a provider usage given as a dict is ambiguous; call from_openai_chat, "
                "from_openai_responses, from_anthropic or from_gemini explicitly"
            )
        return from_ai_sdk(usage)

    def has(name: str) -> bool:
        return hasattr(usage, name)

    if type(usage).__module__.startswith("anthropic") or has("cache_read_input_tokens"):
        return from_anthropic(usage)
    if has("prompt_token_count") or has("candidates_token_count"):
        return from_gemini(usage)
    if has("prompt_tokens") and has("completion_tokens"):
        return from_openai_chat(usage)
    if has("input_tokens") and has("output_tokens"):
        return from_openai_responses(usage)
    raise TypeError(
        f"cannot tell which provider {type(usage).__qualname__} comes from; pass a TokenUsage "
        "or call one of from_openai_chat, from_openai_responses, from_anthropic, from_gemini, "
        "from_ai_sdk"
    )
