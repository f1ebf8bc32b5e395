"""Provider adapters, checked on the real SDK objects (openai, anthropic, google-genai)."""

from __future__ import annotations

from typing import Any

import pytest
from anthropic.types import MessageDeltaUsage
from anthropic.types import Usage as AnthropicUsage
from google.genai import types as genai_types
from hypothesis import given
from hypothesis import strategies as st
from openai.types import CompletionUsage
from openai.types.completion_usage import CompletionTokensDetails, PromptTokensDetails
from openai.types.responses import ResponseUsage
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from usage_client import (
    TokenUsage,
    from_ai_sdk,
    from_anthropic,
    from_gemini,
    from_openai_chat,
    from_openai_responses,
    to_token_usage,
)
from usage_client.ids import new_id
from usage_client.validation import encode_entry, now_ms

counts = st.integers(min_value=0, max_value=10**9)


def assert_valid(tokens: TokenUsage) -> None:
    """The contract's invariants, and the processor's validation of an entry built from it."""
    assert tokens.reasoning <= tokens.completion
    assert tokens.cached + tokens.cache_write <= tokens.prompt
    entry = {
        "id": new_id(),
        "kind": "tokens",
        "runId": "r",
        "userId": "u",
        "timestamp": now_ms(),
        "model": "m",
        "tokens": tokens.to_wire(),
    }
    encode_entry(entry)


# --- OpenAI Chat Completions -----------------------------------------------------------


def test_openai_chat_full() -> None:
    usage = CompletionUsage(
        prompt_tokens=1200,
        completion_tokens=300,
        total_tokens=1500,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=1024, audio_tokens=0),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=128),
    )
    tokens = from_openai_chat(usage)
    assert tokens == TokenUsage(prompt=1200, completion=300, reasoning=128, cached=1024)
    assert tokens.total == usage.total_tokens
    assert_valid(tokens)


def test_openai_chat_cache_write_tokens_of_newer_sdks() -> None:
    details = PromptTokensDetails(cached_tokens=100, cache_write_tokens=400)
    usage = CompletionUsage(
        prompt_tokens=1000, completion_tokens=5, total_tokens=1005, prompt_tokens_details=details
    )
    assert from_openai_chat(usage) == TokenUsage(
        prompt=1000, completion=5, cached=100, cache_write=400
    )


def test_openai_chat_without_details_and_none_fields() -> None:
    usage = CompletionUsage(prompt_tokens=10, completion_tokens=2, total_tokens=12)
    assert from_openai_chat(usage) == TokenUsage(prompt=10, completion=2)
    details = CompletionUsage(
        prompt_tokens=10,
        completion_tokens=2,
        total_tokens=12,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=None),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=None),
    )
    assert from_openai_chat(details) == TokenUsage(prompt=10, completion=2)


@given(
    prompt=counts, cached_share=st.floats(0, 1), completion=counts, reasoning_share=st.floats(0, 1)
)
def test_openai_chat_invariants(
    prompt: int, cached_share: float, completion: int, reasoning_share: float
) -> None:
    cached, reasoning = int(prompt * cached_share), int(completion * reasoning_share)
    usage = CompletionUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning),
    )
    tokens = from_openai_chat(usage)
    assert (tokens.prompt, tokens.cached, tokens.completion, tokens.reasoning) == (
        prompt,
        cached,
        completion,
        reasoning,
    )
    assert tokens.total == usage.total_tokens
    assert_valid(tokens)


# --- OpenAI Responses ------------------------------------------------------------------


def test_openai_responses() -> None:
    usage = ResponseUsage(
        input_tokens=2000,
        input_tokens_details=InputTokensDetails(cached_tokens=1500, cache_write_tokens=0),
        output_tokens=800,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=600),
        total_tokens=2800,
    )
    tokens = from_openai_responses(usage)
    assert tokens == TokenUsage(prompt=2000, completion=800, reasoning=600, cached=1500)
    assert tokens.total == usage.total_tokens
    assert_valid(tokens)
    assert to_token_usage(usage) == tokens


def test_openai_responses_cache_write() -> None:
    usage = ResponseUsage(
        input_tokens=2000,
        input_tokens_details=InputTokensDetails(cached_tokens=500, cache_write_tokens=1000),
        output_tokens=10,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
        total_tokens=2010,
    )
    assert from_openai_responses(usage).cache_write == 1000
    assert_valid(from_openai_responses(usage))


# --- Anthropic -------------------------------------------------------------------------


def test_anthropic_input_tokens_exclude_cache_reads_and_writes() -> None:
    usage = AnthropicUsage(
        input_tokens=50,
        cache_read_input_tokens=3000,
        cache_creation_input_tokens=1200,
        output_tokens=400,
    )
    tokens = from_anthropic(usage)
    assert tokens == TokenUsage(prompt=4250, completion=400, cached=3000, cache_write=1200)
    assert_valid(tokens)
    assert to_token_usage(usage) == tokens


def test_anthropic_none_cache_fields_and_thinking() -> None:
    usage = AnthropicUsage(
        input_tokens=10,
        output_tokens=90,
        cache_read_input_tokens=None,
        cache_creation_input_tokens=None,
    )
    assert from_anthropic(usage) == TokenUsage(prompt=10, completion=90)
    with_thinking = AnthropicUsage.model_validate(
        {"input_tokens": 10, "output_tokens": 90, "output_tokens_details": {"thinking_tokens": 60}}
    )
    assert from_anthropic(with_thinking) == TokenUsage(prompt=10, completion=90, reasoning=60)
    assert_valid(from_anthropic(with_thinking))


def test_anthropic_message_delta_usage() -> None:
    usage = MessageDeltaUsage(
        output_tokens=25,
        input_tokens=None,
        cache_read_input_tokens=7,
        cache_creation_input_tokens=None,
    )
    assert from_anthropic(usage) == TokenUsage(prompt=7, completion=25, cached=7)


@given(inp=counts, read=counts, write=counts, out=counts)
def test_anthropic_invariants(inp: int, read: int, write: int, out: int) -> None:
    usage = AnthropicUsage(
        input_tokens=inp,
        cache_read_input_tokens=read,
        cache_creation_input_tokens=write,
        output_tokens=out,
    )
    tokens = from_anthropic(usage)
    assert tokens.prompt == inp + read + write
    assert tokens.prompt - tokens.cached - tokens.cache_write == inp  # uncached input
    assert_valid(tokens)


# --- Gemini ----------------------------------------------------------------------------


def test_gemini_thoughts_are_added_to_candidates() -> None:
    meta = genai_types.GenerateContentResponseUsageMetadata(
        prompt_token_count=1000,
        cached_content_token_count=600,
        candidates_token_count=200,
        thoughts_token_count=300,
        total_token_count=1500,
    )
    tokens = from_gemini(meta)
    assert tokens == TokenUsage(prompt=1000, completion=500, reasoning=300, cached=600)
    assert tokens.total == meta.total_token_count
    assert_valid(tokens)
    assert to_token_usage(meta) == tokens


def test_gemini_tool_use_prompt_tokens_and_nones() -> None:
    meta = genai_types.GenerateContentResponseUsageMetadata(
        prompt_token_count=100,
        tool_use_prompt_token_count=40,
        candidates_token_count=10,
        total_token_count=150,
    )
    tokens = from_gemini(meta)
    assert tokens == TokenUsage(prompt=140, completion=10)
    assert tokens.total == meta.total_token_count
    assert from_gemini(genai_types.GenerateContentResponseUsageMetadata()) == TokenUsage()


@given(prompt=counts, cached_share=st.floats(0, 1), cand=counts, thoughts=counts, tool=counts)
def test_gemini_invariants(
    prompt: int, cached_share: float, cand: int, thoughts: int, tool: int
) -> None:
    meta = genai_types.GenerateContentResponseUsageMetadata(
        prompt_token_count=prompt,
        cached_content_token_count=int(prompt * cached_share),
        candidates_token_count=cand,
        thoughts_token_count=thoughts,
        tool_use_prompt_token_count=tool,
        total_token_count=prompt + cand + thoughts + tool,
    )
    tokens = from_gemini(meta)
    assert tokens.total == meta.total_token_count
    assert tokens.completion - tokens.reasoning == cand
    assert_valid(tokens)


# --- Vercel AI SDK ---------------------------------------------------------------------


def test_ai_sdk_v4() -> None:
    tokens = from_ai_sdk({"promptTokens": 30, "completionTokens": 12, "totalTokens": 42})
    assert tokens == TokenUsage(prompt=30, completion=12)


def test_ai_sdk_v5_output_includes_reasoning() -> None:
    usage = {
        "inputTokens": 1000,
        "outputTokens": 300,
        "totalTokens": 1300,
        "reasoningTokens": 200,
        "cachedInputTokens": 800,
    }
    tokens = from_ai_sdk(usage)
    assert tokens == TokenUsage(prompt=1000, completion=300, reasoning=200, cached=800)
    assert_valid(tokens)


def test_ai_sdk_v5_output_excluding_reasoning_is_detected_from_the_total() -> None:
    # e.g. Google through AI SDK 5: outputTokens = candidates, reasoningTokens = thoughts
    usage = {"inputTokens": 100, "outputTokens": 20, "reasoningTokens": 50, "totalTokens": 170}
    assert from_ai_sdk(usage) == TokenUsage(prompt=100, completion=70, reasoning=50)
    no_total = {"inputTokens": 100, "outputTokens": 20, "reasoningTokens": 50}
    assert from_ai_sdk(no_total) == TokenUsage(prompt=100, completion=70, reasoning=50)


def test_ai_sdk_v5_anthropic_input_excludes_cache() -> None:
    usage = {"inputTokens": 5, "outputTokens": 10, "totalTokens": 15, "cachedInputTokens": 900}
    tokens = from_ai_sdk(usage, input_excludes_cache=True)
    assert tokens == TokenUsage(prompt=905, completion=10, cached=900)
    assert_valid(tokens)


def test_ai_sdk_v5_undefined_fields() -> None:
    usage: dict[str, Any] = {
        "inputTokens": 13,
        "outputTokens": 127,
        "totalTokens": 140,
        "reasoningTokens": None,
        "cachedInputTokens": None,
    }
    assert from_ai_sdk(usage) == TokenUsage(prompt=13, completion=127)


def test_ai_sdk_v6_details() -> None:
    usage = {
        "inputTokens": 4250,
        "inputTokenDetails": {
            "noCacheTokens": 50,
            "cacheReadTokens": 3000,
            "cacheWriteTokens": 1200,
        },
        "outputTokens": 400,
        "outputTokenDetails": {"textTokens": 100, "reasoningTokens": 300},
        "totalTokens": 4650,
        "reasoningTokens": 300,
        "cachedInputTokens": 3000,
    }
    tokens = from_ai_sdk(usage)
    assert tokens == TokenUsage(
        prompt=4250, completion=400, reasoning=300, cached=3000, cache_write=1200
    )
    assert_valid(tokens)
    assert to_token_usage(usage) == tokens


def test_ai_sdk_v6_missing_totals_are_summed() -> None:
    usage = {
        "inputTokens": None,
        "inputTokenDetails": {"noCacheTokens": 10, "cacheReadTokens": 5, "cacheWriteTokens": None},
        "outputTokens": None,
        "outputTokenDetails": {"textTokens": 7, "reasoningTokens": 3},
    }
    assert from_ai_sdk(usage) == TokenUsage(prompt=15, completion=10, reasoning=3, cached=5)


def test_ai_sdk_unknown_shape() -> None:
    with pytest.raises(ValueError, match="not an AI SDK LanguageModelUsage"):
        from_ai_sdk({"tokens": 3})


# --- detection and errors --------------------------------------------------------------


def test_to_token_usage_detects_each_sdk() -> None:
    chat = CompletionUsage(prompt_tokens=3, completion_tokens=4, total_tokens=7)
    assert to_token_usage(chat) == TokenUsage(prompt=3, completion=4)
    same = TokenUsage(prompt=1)
    assert to_token_usage(same) is same


def test_to_token_usage_rejects_ambiguous_input() -> None:
    with pytest.raises(TypeError, match="ambiguous"):
        to_token_usage({"prompt_tokens": 3, "completion_tokens": 4})
    with pytest.raises(TypeError, match="cannot tell"):
        to_token_usage(object())


def test_non_integer_counts_are_rejected() -> None:
    with pytest.raises(TypeError, match="inputTokens"):
        from_ai_sdk({"inputTokens": "3", "outputTokens": 1})
    with pytest.raises(TypeError, match="inputTokens"):
        from_ai_sdk({"inputTokens": True, "outputTokens": 1})
