"""schemas.tokens: the one token-count type of the domain, the API and the client, and the
conversions between its shapes."""

from __future__ import annotations

import dataclasses
import doctest

from hypothesis import given
from hypothesis import strategies as st

import processor.domain.counts
import schemas.tokens
import usage_client
from schemas import api
from schemas.tokens import TOKEN_TYPES, TokenCounts, TokenUsage
from usage_client.adapters import from_openai_chat

counts = st.integers(min_value=0, max_value=2**53 - 1)


def test_the_domain_and_the_client_use_these_types() -> None:
    assert processor.domain.counts.TokenCounts is TokenCounts
    assert usage_client.TokenUsage is TokenUsage
    assert type(from_openai_chat({"prompt_tokens": 3, "completion_tokens": 1})) is TokenUsage


def test_the_api_model_has_the_same_counts() -> None:
    fields = [f.name for f in dataclasses.fields(TokenCounts)]
    assert list(api.TokenCounts.model_fields) == fields
    aliases = [api.TokenCounts.model_fields[f].alias for f in fields]
    assert aliases == list(TOKEN_TYPES)


@given(st.tuples(counts, counts, counts, counts, counts, counts))
def test_to_wire_is_the_api_model_and_round_trips(values: tuple[int, ...]) -> None:
    tokens = TokenCounts(*values)
    wire = tokens.to_wire()
    assert api.TokenCounts.model_validate(wire).model_dump() == wire
    assert TokenCounts.from_wire(wire) == tokens


@given(st.tuples(counts, counts, counts, counts, counts))
def test_a_call_is_counts_with_the_derived_total(values: tuple[int, ...]) -> None:
    usage = TokenUsage(*values)
    summed = usage.to_counts()
    assert summed.total == usage.prompt + usage.completion
    assert summed.to_wire() == {**usage.to_wire(), "total": usage.total}
    assert "total" not in usage.to_wire()  # the processor derives it


def test_sums() -> None:
    total = sum([TokenCounts(1, 2, 0, 1, 0, 3), TokenCounts(0, 0, 0, 0, 0, 7)], TokenCounts())
    assert total == TokenCounts(prompt=1, completion=2, cached=1, total=10)


def test_docstring_examples() -> None:
    result = doctest.testmod(schemas.tokens)
    assert result.attempted >= 3
    assert result.failed == 0
