"""Regenerate the example vectors: ``python schemas/examples/generate_examples.py``.

Writes ``valid/*.json``, ``invalid/<code>--<what>.json`` and ``expected.json`` (invalid file
name -> ``{"code", "field"}``). Vectors are meant to be checked with the receiver's clock
fixed at ``NOW_MS`` (2026-11-23T00:00:00Z); valid timestamps lie in 2025/2026 before it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Final

HERE: Final = Path(__file__).resolve().parent
NOW_MS: Final = 1_795_392_000_000  # 2026-11-23T00:00:00Z
T: Final = 1_779_969_600_000  # 2026-05-28T12:00:00Z
T_2025: Final = 1_740_787_200_000  # 2025-03-01T00:00:00Z
DAY_MS: Final = 24 * 3600 * 1000

Json = dict[str, Any]


def common(**extra: Any) -> Json:
    return {"id": "e-0001", "runId": "run-1", "userId": "user-1", "timestamp": T, **extra}


def tok(tokens: Any = None, **extra: Any) -> Json:
    entry = common(kind="tokens", model="gpt-4o-mini")
    entry["tokens"] = {"prompt": 120, "completion": 30} if tokens is None else tokens
    entry.update(extra)
    return entry


def tool(**extra: Any) -> Json:
    return {**common(kind="tool", toolName="web_search", durationMs=812, success=True), **extra}


def sub(**extra: Any) -> Json:
    base = common(
        kind="subagent",
        subAgentType="researcher",
        subAgentRunId="run-2",
        durationMs=15034.5,
        success=True,
    )
    return {**base, **extra}


def custom(**extra: Any) -> Json:
    return {**common(kind="custom", type="api_calls", name="tavily", value=3), **extra}


def without(entry: Json, *keys: str) -> Json:
    return {k: v for k, v in entry.items() if k not in keys}


def padded_tool(size: int) -> bytes:
    """A tool entry whose compact JSON is exactly ``size`` bytes (padding in ``error``)."""
    entry = tool(success=False, error="")
    base = len(dumps(entry))
    entry["error"] = "x" * (size - base)
    data = dumps(entry)
    assert len(data) == size, (len(data), size)
    return data


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def replace_number(entry: Json, field: str, literal: bytes) -> bytes:
    """The compact JSON of ``entry`` with the number of top-level ``field`` written as
    ``literal`` (e.g. ``b"1e10"``, ``b"-0.0"``, ``b"NaN"``): forms ``json.dumps`` would not
    produce."""
    marker = "__number__"
    data = dumps({**entry, field: marker})
    assert data.count(b'"__number__"') == 1
    return data.replace(b'"__number__"', literal)


VALID: Final[dict[str, Json | bytes]] = {
    "tokens-minimal": tok(),
    "tokens-all-fields": common(
        kind="tokens",
        tenantId="acme",
        stepCount=7,
        threadId="thread-9",
        agentName="planner",
        parentRunId="run-0",
        schemaVersion=1,
        source={"type": "agent", "name": "planner"},
        model="claude-3-5-sonnet-20241022",
        provider="anthropic",
        tokens={
            "prompt": 2000,
            "completion": 500,
            "reasoning": 200,
            "cached": 1200,
            "cacheWrite": 300,
            "total": 2500,
        },
        costUsd="0.012345",
    ),
    "tokens-only-total": tok({"total": 4096}),
    "tokens-only-completion": tok({"completion": 42}),
    "tokens-zero": tok({"prompt": 0, "completion": 0, "total": 0}),
    "tokens-cost-12-decimals": tok(costUsd="0.000000123456"),
    "tokens-cost-zero": tok(costUsd="0"),
    "tokens-cost-integer": tok(costUsd="12"),
    "tokens-cache-fills-prompt": tok(
        {"prompt": 1000, "completion": 10, "cached": 600, "cacheWrite": 400}
    ),
    "tokens-reasoning-equals-completion": tok({"prompt": 10, "completion": 64, "reasoning": 64}),
    "tokens-null-optionals": tok(
        {"prompt": 5, "completion": None, "total": None}, provider=None, threadId=None, source=None
    ),
    "tokens-timestamp-2020": tok(timestamp=1_577_836_800_000),
    "tokens-2025-unicode-ids": tok(timestamp=T_2025, userId="usér-😀", runId="run/ü/1"),
    "tokens-max-lengths": tok(
        id="i" * 128, runId="r" * 256, userId="u" * 256, tenantId="t" * 128, model="m" * 200
    ),
    "tool-success": tool(),
    "tool-failure-with-error": tool(
        success=False,
        error="HTTP 503",
        durationMs=12.5,
        source={"type": "tool", "name": "web_search"},
    ),
    "tool-zero-duration": tool(durationMs=0),
    "tool-exactly-64kib": padded_tool(65536),
    "subagent": sub(
        parentRunId="run-0",
        agentName="orchestrator",
        source={"type": "subagent", "name": "researcher"},
    ),
    "subagent-failed": sub(success=False, error="timeout"),
    "custom-integer-value": custom(),
    "custom-negative-value": custom(type="credits", name="refund", value=-2.75),
    "custom-zero-value": custom(type="llm.embeddings", name="openai", value=0),
    # --- numeric bounds (inclusive)
    "tool-duration-max": tool(durationMs=10_000_000_000),
    "tool-duration-max-float": replace_number(tool(), "durationMs", b"1e10"),
    "tool-duration-negative-zero": replace_number(tool(), "durationMs", b"-0.0"),
    "subagent-duration-max": sub(durationMs=10_000_000_000),
    "custom-value-max": replace_number(custom(), "value", b"1e15"),
    "custom-value-max-integer": custom(value=10**15),
    "custom-value-min": replace_number(custom(), "value", b"-1e15"),
    "custom-value-min-integer": custom(value=-(10**15)),
    "custom-value-subnormal": replace_number(custom(), "value", b"5e-324"),
    "custom-value-negative-zero": replace_number(custom(), "value", b"-0.0"),
    # the producer's cost: priced from the catalog, 2**53 - 1 tokens would take the run's
    # cost past 64 bits of pico-dollars (dead-lettered as invariant when applied)
    "tokens-max-safe-integer": tok({"total": 2**53 - 1}, costUsd="1"),
    # --- RFC 8259 corner cases that are valid
    "tokens-duplicate-key-last-wins": dumps(tok())[:-1] + b',"userId":"user-2"}',
    "tokens-escaped-surrogate-pair": dumps(tok()).replace(b'"user-1"', b'"user-\\ud83d\\ude00"'),
    "tokens-json-whitespace-around": b" \t\r\n" + dumps(tok()) + b"\r\n\t ",
}

NOT_UTF8: Final = (
    b'{"id":"e-0001","runId":"run-\xff\xfe","userId":"user-1","timestamp":'
    + str(T).encode()
    + b',"kind":"custom","type":"a","name":"b","value":1}'
)

# name -> (content, field)
INVALID: Final[dict[str, tuple[Json | bytes | list[Any] | str | float | None, str | None]]] = {
    # --- too_large: size is checked before anything else
    "too_large--70kib": (padded_tool(70 * 1024), None),
    "too_large--65537-bytes": (padded_tool(65537), None),
    "too_large--not-json-70kib": (b"\x00garbage" * (70 * 128), None),
    # --- json
    "json--empty": (b"", None),
    "json--whitespace-only": (b" \n\t ", None),
    "json--truncated": (dumps(tok())[:-7], None),
    "json--trailing-comma": (dumps(tok())[:-1] + b",}", None),
    "json--trailing-garbage": (dumps(tok()) + b" {}", None),
    "json--single-quotes": (b"{'id': 'e-0001', 'kind': 'tokens'}", None),
    "json--invalid-utf8-bytes": (NOT_UTF8, None),
    "json--utf8-encoded-surrogate": (dumps(tok()).replace(b'"user-1"', b'"\xed\xa0\x80"'), None),
    "json--overlong-utf8": (dumps(tok()).replace(b'"user-1"', b'"\xc0\xaf"'), None),
    "json--two-objects": (dumps(tok()) + dumps(tok()), None),
    "json--trailing-nul-byte": (dumps(tok()) + b"\x00", None),
    "json--trailing-number": (dumps(tok()) + b" 1", None),
    "json--non-json-whitespace": (b"\x0c" + dumps(tok()), None),
    # lone surrogates: allowed by RFC 8259's grammar, but not Unicode text (entry.py)
    "json--lone-surrogate-escape": (dumps(tok()).replace(b'"user-1"', b'"\\ud800"'), None),
    "json--lone-trailing-surrogate": (dumps(tok()).replace(b'"user-1"', b'"u\\udc00"'), None),
    "json--reversed-surrogate-pair": (
        dumps(tok()).replace(b'"user-1"', b'"\\udc00\\ud800"'),
        None,
    ),
    "json--lone-surrogate-in-error": (
        dumps(tool(success=False, error="x")).replace(b'"x"', b'"bad \\uDBFF"'),
        None,
    ),
    "json--lone-surrogate-in-unknown-field": (
        dumps(tok(note="x")).replace(b'"x"', b'"\\ud800"'),
        None,
    ),
    "json--lone-surrogate-in-key": (dumps(tok())[:-1] + b',"\\ud800":1}', None),
    "json--lone-surrogate-overridden-by-duplicate": (
        dumps(tok())[:-1] + b',"userId":"\\ud800","userId":"user-1"}',
        None,
    ),
    # byte order marks: RFC 8259 8.1, not JSON whitespace
    "json--utf8-bom": (b"\xef\xbb\xbf" + dumps(tok()), None),
    "json--utf8-bom-after-whitespace": (b" \xef\xbb\xbf" + dumps(tok()), None),
    "json--utf16-le-bom": (b"\xff\xfe" + dumps(tok()).decode().encode("utf-16-le"), None),
    # NaN and +-Infinity are not JSON numbers, wherever they appear
    "json--custom-value-nan": (replace_number(custom(), "value", b"NaN"), None),
    "json--custom-value-infinity": (replace_number(custom(), "value", b"Infinity"), None),
    "json--custom-value-negative-infinity": (replace_number(custom(), "value", b"-Infinity"), None),
    "json--tool-duration-infinity": (replace_number(tool(), "durationMs", b"Infinity"), None),
    "json--subagent-duration-nan": (replace_number(sub(), "durationMs", b"NaN"), None),
    "json--nan-in-string-field": (replace_number(tok(), "userId", b"NaN"), None),
    "json--nan-in-unknown-field": (replace_number(tok(note=0), "note", b"NaN"), None),
    "json--infinity-nested-in-unknown-field": (
        replace_number(tok(note=0), "note", b'[1,{"a":-Infinity}]'),
        None,
    ),
    "json--nan-overridden-by-duplicate-key": (
        replace_number(custom(), "value", b'NaN,"value":3'),
        None,
    ),
    "json--nan-as-kind": (replace_number(tok(), "kind", b"NaN"), None),
    "json--nan-top-level": (b"NaN", None),
    "json--nan-in-top-level-array": (b"[NaN]", None),
    # --- schema: a JSON text that is not an object
    "schema--top-level-array": ([tok()], None),
    "schema--top-level-empty-array": ([], None),
    "schema--top-level-string": ("tokens", None),
    "schema--top-level-number": (42, None),
    "schema--top-level-float": (1.5, None),
    "schema--top-level-true": (True, None),
    "schema--top-level-false": (False, None),
    "schema--top-level-null": (None, None),
    # --- schema: common fields
    "schema--unknown-field": (tok(costUSD="0.1"), "costUSD"),
    "schema--snake-case-field": ({**without(tok(), "runId"), "run_id": "run-1"}, "runId"),
    "schema--missing-id": (without(tok(), "id"), "id"),
    "schema--missing-run-id": (without(tok(), "runId"), "runId"),
    "schema--missing-user-id": (without(tok(), "userId"), "userId"),
    "schema--missing-timestamp": (without(tok(), "timestamp"), "timestamp"),
    "schema--missing-kind": (without(tok(), "kind"), "kind"),
    "schema--unknown-kind": (tok(kind="embedding"), "kind"),
    "schema--kind-not-string": (tok(kind=1), "kind"),
    "schema--id-empty": (tok(id=""), "id"),
    "schema--id-too-long": (tok(id="i" * 129), "id"),
    "schema--id-number": (tok(id=1), "id"),
    "schema--run-id-too-long": (tok(runId="r" * 257), "runId"),
    "schema--user-id-empty": (tok(userId=""), "userId"),
    "schema--tenant-id-too-long": (tok(tenantId="t" * 129), "tenantId"),
    "schema--tenant-id-null": (tok(tenantId=None), "tenantId"),
    "schema--timestamp-string": (tok(timestamp=str(T)), "timestamp"),
    "schema--timestamp-fraction": (tok(timestamp=T + 0.5), "timestamp"),
    "schema--timestamp-integral-float": (tok(timestamp=float(T)), "timestamp"),
    "schema--timestamp-2-pow-63": (tok(timestamp=2**63), "timestamp"),
    "schema--timestamp-2-pow-70": (tok(timestamp=2**70), "timestamp"),
    "schema--timestamp-below-int64": (tok(timestamp=-(2**63) - 1), "timestamp"),
    "schema--step-count-negative": (tok(stepCount=-1), "stepCount"),
    "schema--step-count-string": (tok(stepCount="3"), "stepCount"),
    "schema--step-count-float": (tok(stepCount=1.5), "stepCount"),
    "schema--step-count-2-pow-53": (tok(stepCount=2**53), "stepCount"),
    "schema--step-count-2-pow-63": (tok(stepCount=2**63), "stepCount"),
    "schema--source-bad-type": (tok(source={"type": "human", "name": "x"}), "source.type"),
    "schema--source-missing-name": (tok(source={"type": "agent"}), "source.name"),
    "schema--source-unknown-field": (
        tok(source={"type": "agent", "name": "a", "v": 1}),
        "source.v",
    ),
    "schema--source-not-object": (tok(source="agent"), "source"),
    "schema--thread-id-number": (tok(threadId=9), "threadId"),
    "schema--agent-name-empty": (tok(agentName=""), "agentName"),
    "schema--parent-run-id-empty": (tok(parentRunId=""), "parentRunId"),
    "schema--schema-version-2": (tok(schemaVersion=2), "schemaVersion"),
    "schema--schema-version-string": (tok(schemaVersion="1"), "schemaVersion"),
    # --- schema: tokens entries
    "schema--model-missing": (without(tok(), "model"), "model"),
    "schema--model-empty": (tok(model=""), "model"),
    "schema--model-too-long": (tok(model="m" * 201), "model"),
    "schema--provider-empty": (tok(provider=""), "provider"),
    "schema--tokens-not-object": (tok(tokens=[120, 30]), "tokens"),
    "schema--tokens-null": (tok(tokens=None) | {"tokens": None}, "tokens"),
    "schema--tokens-unknown-field": (tok({"prompt": 1, "output": 2}), "tokens.output"),
    "schema--tokens-prompt-negative": (tok({"prompt": -1}), "tokens.prompt"),
    "schema--tokens-prompt-string": (tok({"prompt": "120"}), "tokens.prompt"),
    "schema--tokens-completion-float": (tok({"prompt": 1, "completion": 2.0}), "tokens.completion"),
    "schema--tokens-cache-write-bool": (
        tok({"prompt": 1, "cacheWrite": True}),
        "tokens.cacheWrite",
    ),
    "schema--tokens-total-over-2-53": (tok({"total": 2**53}), "tokens.total"),
    "schema--tokens-prompt-2-pow-53": (tok({"prompt": 2**53}), "tokens.prompt"),
    "schema--tokens-prompt-2-pow-63": (tok({"prompt": 2**63}), "tokens.prompt"),
    "schema--tokens-completion-2-pow-64": (
        tok({"prompt": 1, "completion": 2**64}),
        "tokens.completion",
    ),
    "schema--tokens-prompt-1e20": (
        dumps(tok()).replace(b'"prompt":120', b'"prompt":1e20'),
        "tokens.prompt",
    ),
    "schema--tokens-prompt-integral-float": (
        dumps(tok()).replace(b'"prompt":120', b'"prompt":1.0'),
        "tokens.prompt",
    ),
    "schema--duplicate-key-last-wins": (
        dumps(tok())[:-1] + b',"stepCount":3,"stepCount":-3}',
        "stepCount",
    ),
    "schema--cost-usd-exponent": (tok(costUsd="1e-3"), "costUsd"),
    "schema--cost-usd-negative": (tok(costUsd="-0.01"), "costUsd"),
    "schema--cost-usd-number": (tok(costUsd=0.001), "costUsd"),
    "schema--cost-usd-13-decimals": (tok(costUsd="0.0000000000001"), "costUsd"),
    "schema--cost-usd-nan": (tok(costUsd="NaN"), "costUsd"),
    "schema--cost-usd-leading-zero": (tok(costUsd="01.5"), "costUsd"),
    "schema--cost-usd-empty": (tok(costUsd=""), "costUsd"),
    "schema--cost-usd-a-million": (tok(costUsd="1000000"), "costUsd"),
    # --- schema: tool / subagent / custom
    "schema--tool-name-missing": (without(tool(), "toolName"), "toolName"),
    "schema--tool-duration-negative": (tool(durationMs=-1), "durationMs"),
    "schema--tool-duration-string": (tool(durationMs="812"), "durationMs"),
    "schema--tool-success-string": (tool(success="true"), "success"),
    "schema--tool-success-number": (tool(success=1), "success"),
    "schema--tool-error-number": (tool(success=False, error=503), "error"),
    "schema--tool-with-model-field": (tool(model="gpt-4o-mini"), "model"),
    "schema--subagent-run-id-missing": (without(sub(), "subAgentRunId"), "subAgentRunId"),
    "schema--subagent-run-id-empty": (sub(subAgentRunId=""), "subAgentRunId"),
    "schema--subagent-duration-missing": (without(sub(), "durationMs"), "durationMs"),
    "schema--custom-value-string": (custom(value="3"), "value"),
    "schema--custom-value-bool": (custom(value=True), "value"),
    # a number literal that overflows a double is JSON, but out of range
    "schema--custom-value-overflow": (replace_number(custom(), "value", b"1e400"), "value"),
    "schema--custom-value-over-1e15": (
        replace_number(custom(), "value", b"1.0000001e15"),
        "value",
    ),
    "schema--custom-value-integer-over-1e15": (custom(value=10**15 + 1), "value"),
    "schema--custom-value-under-minus-1e15": (
        replace_number(custom(), "value", b"-1.0000001e15"),
        "value",
    ),
    "schema--custom-value-2-pow-70": (custom(value=2**70), "value"),
    "schema--custom-value-1e308": (replace_number(custom(), "value", b"1e308"), "value"),
    # durationMs: 0 <= value <= 1e10
    "schema--tool-duration-1e308": (replace_number(tool(), "durationMs", b"1e308"), "durationMs"),
    "schema--subagent-duration-1e308": (
        replace_number(sub(), "durationMs", b"1e308"),
        "durationMs",
    ),
    "schema--tool-duration-over-1e10": (tool(durationMs=10_000_000_001), "durationMs"),
    "schema--subagent-duration-over-1e10": (sub(durationMs=10_000_000_001), "durationMs"),
    "schema--tool-duration-just-over-1e10": (tool(durationMs=10_000_000_000.001), "durationMs"),
    "schema--tool-duration-overflow": (
        replace_number(tool(), "durationMs", b"1e400"),
        "durationMs",
    ),
    "schema--tool-duration-huge-integer": (tool(durationMs=10**30), "durationMs"),
    "schema--tool-duration-tiny-negative": (tool(durationMs=-5e-324), "durationMs"),
    "schema--custom-type-missing": (without(custom(), "type"), "type"),
    "schema--custom-name-too-long": (custom(name="n" * 201), "name"),
    "schema--unknown-field-beats-invariant": (tok({"prompt": 1, "total": 5}, extra=1), "extra"),
    # --- timestamp
    "timestamp--before-2020": (tok(timestamp=1_577_836_799_999), "timestamp"),
    "timestamp--zero": (tok(timestamp=0), "timestamp"),
    "timestamp--negative": (tok(timestamp=-1), "timestamp"),
    "timestamp--seconds-not-ms": (tok(timestamp=T // 1000), "timestamp"),
    "timestamp--far-future": (tok(timestamp=4_102_444_800_000), "timestamp"),
    # a 64-bit integer out of range is 'timestamp'; a larger one is not an int64: 'schema'
    "timestamp--int64-max": (tok(timestamp=2**63 - 1), "timestamp"),
    "timestamp--int64-min": (tok(timestamp=-(2**63)), "timestamp"),
    "timestamp--just-over-24h-ahead": (tok(timestamp=NOW_MS + DAY_MS + 1), "timestamp"),
    "timestamp--beats-invariant": (tok({"prompt": 1, "reasoning": 9}, timestamp=0), "timestamp"),
    # --- invariant
    "invariant--tokens-missing": (without(tok(), "tokens"), "tokens"),
    "invariant--no-counts": (tok({}), "tokens"),
    "invariant--only-cached-and-reasoning": (tok({"cached": 0, "reasoning": 0}), "tokens"),
    "invariant--reasoning-gt-completion": (
        tok({"prompt": 10, "completion": 5, "reasoning": 6}),
        "tokens.reasoning",
    ),
    "invariant--reasoning-without-completion": (
        tok({"prompt": 10, "reasoning": 1}),
        "tokens.reasoning",
    ),
    "invariant--cached-gt-prompt": (
        tok({"prompt": 10, "completion": 1, "cached": 11}),
        "tokens.cached",
    ),
    "invariant--cache-write-gt-prompt": (
        tok({"prompt": 10, "cacheWrite": 11}),
        "tokens.cacheWrite",
    ),
    "invariant--cached-plus-cache-write-gt-prompt": (
        tok({"prompt": 10, "cached": 6, "cacheWrite": 5}),
        "tokens.cacheWrite",
    ),
    "invariant--cached-without-prompt": (tok({"total": 100, "cached": 10}), "tokens.cached"),
    "invariant--total-mismatch": (
        tok({"prompt": 10, "completion": 5, "total": 16}),
        "tokens.total",
    ),
    "invariant--total-lt-prompt-plus-completion": (
        tok({"prompt": 10, "completion": 5, "total": 14}),
        "tokens.total",
    ),
    "invariant--total-mismatch-prompt-only": (tok({"prompt": 10, "total": 11}), "tokens.total"),
    "invariant--total-mismatch-completion-only": (
        tok({"completion": 3, "total": 0}),
        "tokens.total",
    ),
}


def encode(content: Any) -> bytes:
    if isinstance(content, bytes):
        return content
    return json.dumps(content, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"


def main() -> None:
    for sub_dir in ("valid", "invalid"):
        shutil.rmtree(HERE / sub_dir, ignore_errors=True)
        (HERE / sub_dir).mkdir()
    for name, entry in VALID.items():
        (HERE / "valid" / f"{name}.json").write_bytes(encode(entry))
    expected: dict[str, dict[str, str | None]] = {}
    for name, (content, field) in INVALID.items():
        file_name = f"{name}.json"
        (HERE / "invalid" / file_name).write_bytes(encode(content))
        expected[file_name] = {"code": name.split("--", 1)[0], "field": field}
    text = json.dumps(expected, indent=2, sort_keys=True) + "\n"
    (HERE / "expected.json").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
