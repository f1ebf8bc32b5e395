// Every example vector under schemas/examples/ is classified exactly as the Python
// processor classifies it (schemas/examples/expected.json is written from Python's
// parse_entry): valid stays valid, invalid gets the same code and field.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { EntryValidationError, parseEntry } from "../src/validate.js";
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
