// Classify raw message values with the TypeScript validation, for the cross-language
// agreement test (tests/unit/test_typescript_unit.py compares with Python's parse_entry).
// stdin: {"nowMs": int, "cases": [{"name": str, "b64": str}]}
// stdout: [{"name", "code" ("ok" when valid), "field"}]
import { EntryValidationError, parseEntry } from "../src/validate.js";

const chunks: Buffer[] = [];
for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
const input = JSON.parse(Buffer.concat(chunks).toString("utf8")) as { nowMs: number; cases: { name: string; b64: string }[] };
const out = input.cases.map(({ name, b64 }) => {
  try {
    parseEntry(Buffer.from(b64, "base64"), input.nowMs);
    return { name, code: "ok", field: null };
  } catch (err) {
    if (err instanceof EntryValidationError) return { name, code: err.code, field: err.field };
    return { name, code: "crash", field: String(err) };
  }
});
process.stdout.write(JSON.stringify(out));
