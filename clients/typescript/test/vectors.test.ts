// Every example vector under schemas/examples/ is classified exactly as the Python
// processor classifies it (schemas/examples/expected.json is written from Python's
// parse_entry): valid stays valid, invalid gets the same code and field.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { EntryValidationError, encodeEntry, parseEntry } from "../src/validate.js";
import { EXAMPLES_DIR, VECTOR_NOW_MS } from "./paths.js";

const expected = JSON.parse(readFileSync(join(EXAMPLES_DIR, "expected.json"), "utf8")) as Record<
  string,
  { code: string; field: string | null }
>;
const files = (dir: string): string[] =>
  readdirSync(join(EXAMPLES_DIR, dir))
    .filter((f) => f.endsWith(".json"))
    .sort();

function classify(raw: Uint8Array): { code: string; field: string | null } {
  try {
    parseEntry(raw, VECTOR_NOW_MS);
    return { code: "ok", field: null };
  } catch (err) {
    if (err instanceof EntryValidationError) return { code: err.code, field: err.field };
    throw err;
  }
}

test("there are vectors, and expected.json covers exactly the invalid ones", () => {
  assert.ok(files("valid").length >= 20);
  assert.deepEqual(Object.keys(expected).sort(), files("invalid"));
});

for (const name of files("valid")) {
  test(`valid/${name} is accepted`, () => {
    const raw = readFileSync(join(EXAMPLES_DIR, "valid", name));
    assert.deepEqual(classify(raw), { code: "ok", field: null });
  });
}

for (const name of files("invalid")) {
  test(`invalid/${name} is rejected like in Python`, () => {
    const raw = readFileSync(join(EXAMPLES_DIR, "invalid", name));
    const want = expected[name];
    assert.ok(want, `${name} missing from expected.json`);
    const got = classify(raw);
    assert.equal(got.code, want.code, `${name}: code`);
    assert.equal(got.field, want.field, `${name}: field`);
    const prefix = name.split("--")[0];
    assert.equal(got.code, prefix, `${name}: code matches the file name`);
  });
}

// The object path (encodeEntry, used by the recorder): every vector that is one JSON text
// decodes (JSON.parse; lone surrogates survive as JS strings) and is refused with the same
// code and field as its bytes, as the Python client does. Left out: size cases (the size is
// that of the re-encoding), faults under a key a later duplicate overrides (JSON.parse
// drops them), integral floats such as `1.0`, which a JS number cannot tell from `1`, and
// the int64 edges (2^63 - 1, -2^63), which a JS number rounds (JSON.stringify writes
// -2^63 as -9223372036854776000, beyond 64 bits).
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const OBJECT_PATH_SKIP = /^too_large--|overridden-by-duplicate|integral-float|completion-float|--int64-m/;

function decodeStrict(raw: Uint8Array): { ok: true; value: unknown } | { ok: false } {
  try {
    return { ok: true, value: JSON.parse(strictUtf8.decode(raw)) as unknown };
  } catch {
    return { ok: false };
  }
}

function classifyObject(value: unknown): { code: string; field: string | null } {
  try {
    encodeEntry(value as Record<string, unknown>, VECTOR_NOW_MS);
    return { code: "ok", field: null };
  } catch (err) {
    if (err instanceof EntryValidationError) return { code: err.code, field: err.field };
    throw err;
  }
}

test("the object path covers the RFC 8259 corner cases", () => {
  const decodable = files("invalid").filter(
    (n) => !OBJECT_PATH_SKIP.test(n) && decodeStrict(readFileSync(join(EXAMPLES_DIR, "invalid", n))).ok,
  );
  for (const name of ["json--lone-surrogate-in-key.json", "schema--top-level-array.json", "schema--timestamp-2-pow-70.json"]) {
    assert.ok(decodable.includes(name), name);
  }
  assert.ok(!decodable.includes("json--custom-value-nan.json"));
});

for (const name of files("valid")) {
  test(`valid/${name} is accepted by encodeEntry`, () => {
    const decoded = decodeStrict(readFileSync(join(EXAMPLES_DIR, "valid", name)));
    assert.ok(decoded.ok);
    assert.deepEqual(classifyObject(decoded.value), { code: "ok", field: null });
  });
}

for (const name of files("invalid")) {
  if (OBJECT_PATH_SKIP.test(name)) continue;
  const decoded = decodeStrict(readFileSync(join(EXAMPLES_DIR, "invalid", name)));
  if (!decoded.ok) continue;
  test(`invalid/${name} is refused by encodeEntry like in Python`, () => {
    const want = expected[name] as { code: string; field: string | null };
    assert.deepEqual(classifyObject(decoded.value), { code: want.code, field: want.field });
  });
}

test("non-finite numbers and lone surrogates in objects", () => {
  const base = { id: "e", runId: "r", userId: "u", timestamp: VECTOR_NOW_MS - 1000 };
  const custom = { ...base, kind: "custom", type: "t", name: "n" };
  const tool = { ...base, kind: "tool", toolName: "t", success: true };
  for (const v of [Number.NaN, Infinity, -Infinity]) {
    assert.deepEqual(classifyObject({ ...custom, value: v }), { code: "schema", field: "value" });
  }
  assert.deepEqual(classifyObject({ ...custom, value: 1, userId: "\ud800" }), { code: "json", field: null });
  assert.deepEqual(classifyObject({ ...custom, value: 1, "\udc00": 1 }), { code: "json", field: null });
  assert.deepEqual(classifyObject({ ...custom, value: 1, userId: "\ud83d\ude00" }), { code: "ok", field: null });
  assert.deepEqual(classifyObject([custom]), { code: "schema", field: null });
  // bounds: durationMs 0..1e10, value -1e15..1e15, counts and stepCount <= 2^53 - 1
  assert.deepEqual(classifyObject({ ...tool, durationMs: 1e10 }), { code: "ok", field: null });
  assert.deepEqual(classifyObject({ ...tool, durationMs: -0 }), { code: "ok", field: null });
  assert.deepEqual(classifyObject({ ...tool, durationMs: 1e10 + 1 }), { code: "schema", field: "durationMs" });
  assert.deepEqual(classifyObject({ ...tool, durationMs: 1e308 }), { code: "schema", field: "durationMs" });
  assert.deepEqual(classifyObject({ ...custom, value: 1e15 }), { code: "ok", field: null });
  assert.deepEqual(classifyObject({ ...custom, value: -1e15 }), { code: "ok", field: null });
  assert.deepEqual(classifyObject({ ...custom, value: 5e-324 }), { code: "ok", field: null });
  assert.deepEqual(classifyObject({ ...custom, value: 1.0000001e15 }), { code: "schema", field: "value" });
  assert.deepEqual(classifyObject({ ...custom, value: 1, stepCount: 2 ** 53 }), { code: "schema", field: "stepCount" });
  assert.deepEqual(classifyObject({ ...custom, value: 1, timestamp: 2 ** 70 }), { code: "schema", field: "timestamp" });
  assert.deepEqual(classifyObject({ ...custom, value: 1, timestamp: 2 ** 62 }), { code: "timestamp", field: "timestamp" });
});
