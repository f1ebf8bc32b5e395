"""The TypeScript client (clients/typescript): its own node tests, and agreement with the
Python validation on every example vector plus extra edge cases.

``npm test`` builds the package (tsc --strict, generated types checked against the JSON
Schema) and runs ``node --test`` (example vectors, recorder, HTTP transport, adapters).
The agreement test feeds the same raw bytes to Python's ``parse_entry`` and to the
TypeScript ``parseEntry`` and requires the same outcome: valid stays valid, an invalid
value gets the same code and field.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

from schemas.entry import parse_entry
from schemas.errors import EntryRejected
from tests.typescript_client import (
    DIST,
    TS_DIR,
    build_lock,
    ensure_built,
    ensure_installed,
    node_tools,
    run,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"
NOW_MS = 1_795_392_000_000  # the clock the vectors assume (2026-11-23T00:00:00Z)

_HEAD = '{"id":"a","runId":"r","userId":"u","timestamp":1790000000000,'
_CUSTOM = _HEAD + '"kind":"custom","type":"t","name":"n","value":%s}'
_TOOL = _HEAD + '"kind":"tool","toolName":"t","success":true,"durationMs":%s}'
_TOKENS = _HEAD + '"kind":"tokens","model":"m","tokens":%s}'
_TS = (
    '{"id":"a","kind":"custom","runId":"r","userId":"u","type":"t","name":"n","value":1,'
    '"timestamp":%s}'
)


def _tok(fields: str) -> str:
    """A valid tokens entry with ``fields`` (JSON members) added before ``model``."""
    return (_TOKENS % '{"prompt":1}').replace('"model"', fields + ',"model"')


def _nested(inner: str) -> str:
    """A custom entry with an extra field ``x`` holding ``inner``."""
    return (_CUSTOM % "1")[:-1] + ',"x":' + inner + "}"


def _extra_cases() -> dict[str, bytes]:
    """Edge cases beyond the committed vectors (number forms, strings, nesting, order)."""
    cases: dict[str, str | bytes] = {}
    numbers = ["NaN", "Infinity", "-Infinity", "1e400", "9007199254740993", "1" + "0" * 30,
               "1" + "0" * 400, "-0", "-0.0", "1E2", "1.5e-400", "01", "+1", "1.", "-", "0x10",
               "nan", "-NaN", "1e", "1e+", "-01", "0.0e-0", "[1]", "{}", "null", "true", "-1",
               "-1e-400", '"1"',
               # bounds: durationMs 0..1e10, value -1e15..1e15 (integer or not)
               "1e10", "10000000000", "10000000001", "10000000000.000002", "9999999999.999999",
               "1e15", "1000000000000000", "1000000000000001", "-1e15", "-1000000000000001",
               "1.0000001e15", "-1.0000001e15", "999999999999999.9", "5e-324", "-5e-324",
               "1e308", "-1e308", "9007199254740992", "9223372036854775808", "1e-7", "-0e5",
               "-Infinityx", "-N", "Nx", "Inf", "[NaN]", '{"a":Infinity}']  # fmt: skip
    for v in numbers:
        cases[f"custom value {v[:20]}"] = _CUSTOM % v
        cases[f"tool duration {v[:20]}"] = _TOOL % v
    for v in ["1" + "0" * 30, "-" + "1" * 30, "1e12", "true", "-0", "1795478400000",
              "1795478400001", "1577836800000", "1577836799999", "1.0"]:  # fmt: skip
        cases[f"timestamp {v}"] = _TS % v
    strings = [r'"\ud83d\ude00"', r'"\ud800"', r'"\udc00"', '"a\x01b"', '"a\tb"', r'"\u0000"',
               r'"\/"', r'"\x"', r'"\ud83d\u0041"', r'"\ud83dx"', r'"\uD83D\uDE00"', '""',
               '"' + "é" * 200 + '"', '"' + "😀" * 200 + '"', '"' + "😀" * 201 + '"']  # fmt: skip
    for s in strings:
        cases[f"name {s[:16]!r}"] = _CUSTOM.replace('"name":"n"', '"name":' + s) % "1"
    tokens = ['{"prompt":1,"zz":1,"completion":"x"}', '{"prompt":null,"completion":null}',
              '{"prompt":5,"cached":3,"cacheWrite":3}', '{"prompt":5,"cached":6,"cacheWrite":1}',
              '{"completion":5,"reasoning":5,"total":5}', '{"total":0}',
              '{"reasoning":0,"total":1}', '{"cached":0,"completion":1}',
              '{"prompt":9007199254740991}', "[]", '"x"', '{"prompt":1.0}',
              '{"prompt":1,"total":2}', '{"prompt":1,"completion":1,"total":2}',
              '{"prompt":9007199254740992}', '{"prompt":9223372036854775808}',
              '{"prompt":18446744073709551616}', '{"prompt":1e20}', '{"total":1e0}',
              '{"prompt":-9223372036854775809}', '{"prompt":NaN}', '{"prompt":1,"prompt":NaN}',
              '{"prompt":NaN,"prompt":1}']  # fmt: skip
    for t in tokens:
        cases[f"tokens {t}"] = _TOKENS % t
    cases["extras in input order"] = '{"zz":1,' + (_CUSTOM % "1")[1:-1] + ',"aa":2}'
    cases["missing beats later type error"] = _CUSTOM.replace(',"name":"n"', "") % '"x"'
    cases["schema beats timestamp"] = (_TS % "10").replace('"value":1', '"value":"x"')
    cases["unknown kind first"] = '{"id":"a","kind":"zzz","runId":5}'
    cases["null kind"] = '{"id":"a","kind":null,"runId":5}'
    cases["kind number"] = '{"id":"a","kind":5}'
    cases["kind constructor"] = '{"id":"a","kind":"constructor"}'
    cases["duplicate key last wins"] = _tok('"id":5')
    cases["source wrong and extra"] = _tok('"source":{"name":"x","type":"bad","q":1}')
    cases["source null"] = _tok('"source":null')
    cases["stepCount null"] = _tok('"stepCount":null')
    cases["stepCount 2^53"] = _tok('"stepCount":9007199254740992')
    cases["stepCount 2^63"] = _tok('"stepCount":9223372036854775808')
    cases["stepCount 1e20"] = _tok('"stepCount":1e20')
    cases["lone surrogate key"] = _tok('"\\ud800":1')
    cases["lone surrogate in unknown field"] = _tok('"x":["\\udc00"]')
    cases["lone surrogate under overridden key"] = _tok('"id":"\\ud800","id":"b"')
    cases["lone surrogate plus schema error"] = _tok('"id":5,"x":"\\ud800"')
    cases["NaN plus schema error"] = _tok('"id":5,"x":NaN')
    cases["top-level array of entries"] = "[" + _tok('"stepCount":0') + "]"
    cases["top-level empty object"] = "{}"
    cases["top-level string NaN"] = '"NaN"'
    cases["schemaVersion 1.0"] = _tok('"schemaVersion":1.0')
    cases["schemaVersion 1"] = _tok('"schemaVersion":1')
    cases["costUsd null"] = _tok('"costUsd":null')
    cases["costUsd 999999.000000000001"] = _tok('"costUsd":"999999.000000000001"')
    cases["costUsd 1000000"] = _tok('"costUsd":"1000000"')
    cases["costUsd 10 digits"] = _tok('"costUsd":"1000000000"')
    cases["tool error empty"] = (_TOOL % "1").replace('"success"', '"error":"","success"')
    cases["custom with error field"] = (_CUSTOM % "1").replace('"name"', '"error":null,"name"')
    ok = _tok('"stepCount":0').encode()
    cases["whitespace around"] = b" \n\t" + ok + b"\r\n"
    cases["form feed"] = b"\x0c" + ok
    cases["nul after"] = ok + b"\x00"
    cases["bom"] = b"\xef\xbb\xbf" + ok
    cases["latin-1 byte"] = ok.replace(b'"m"', b'"\xe9"')
    cases["overlong utf-8"] = ok.replace(b'"m"', b'"\xc0\xaf"')
    cases["utf-8 surrogate bytes"] = ok.replace(b'"m"', b'"\xed\xa0\x80"')
    base = (_TOOL % "1").encode()
    pad = 65536 - len(base) - len(b',"error":""')
    cases["exactly 64 KiB"] = base[:-1] + b',"error":"' + b"x" * pad + b'"}'
    cases["64 KiB + 1"] = base[:-1] + b',"error":"' + b"x" * (pad + 1) + b'"}'
    for depth in (198, 199, 200, 201):
        cases[f"nested arrays {depth}"] = _nested("[" * depth + "1" + "]" * depth)
        cases[f"nested empty arrays {depth}"] = _nested("[" * depth + "]" * depth)
        cases[f"nested objects {depth}"] = _nested('{"a":' * depth + "{}" + "}" * depth)
    return {k: v if isinstance(v, bytes) else v.encode() for k, v in cases.items()}


def _python_outcome(raw: bytes) -> tuple[str, str | None]:
    try:
        parse_entry(raw, now_ms=NOW_MS)
    except EntryRejected as exc:
        return exc.code, exc.field
    return "ok", None


def test_node_unit_tests_pass() -> None:
    """``npm test``: tsc --strict build, then every ``node --test`` file under dist/test."""
    _node, npm = node_tools()
    with build_lock():
        ensure_installed()
        out = run([npm, "test"])
    assert "# fail 0" in out, out[-5000:]


def test_typescript_and_python_agree_on_every_vector_and_edge_case() -> None:
    node, _npm = node_tools()
    ensure_built()
    cases: dict[str, bytes] = {}
    for kind in ("valid", "invalid"):
        for path in sorted((EXAMPLES / kind).glob("*.json")):
            cases[f"{kind}/{path.name}"] = path.read_bytes()
    n_vectors = len(cases)
    cases.update({f"extra: {k}": v for k, v in _extra_cases().items()})
    payload = {
        "nowMs": NOW_MS,
        "cases": [{"name": k, "b64": base64.b64encode(v).decode()} for k, v in cases.items()],
    }
    proc = subprocess.run(
        [node, str(DIST / "scripts" / "classify.js")],
        cwd=TS_DIR,
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    ts = {r["name"]: (r["code"], r["field"]) for r in json.loads(proc.stdout)}
    python = {name: _python_outcome(raw) for name, raw in cases.items()}
    disagreements = {
        name: {"python": python[name], "typescript": ts.get(name)}
        for name in cases
        if python[name] != ts.get(name)
    }
    assert not disagreements, json.dumps(disagreements, indent=1, ensure_ascii=False)
    assert n_vectors >= 100
    valid = [n for n in cases if n.startswith("valid/")]
    assert all(ts[n] == ("ok", None) for n in valid)
