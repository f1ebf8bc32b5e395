/**
 * Local validation of usage entries with the processor's rules and rejection codes
 * (CONTRACT §2, §5): the same `code` and the same camelCase `field` path as
 * `schemas.entry.parse_entry` in Python, checked in the same order:
 * `too_large` (size), `json`, `schema`, `timestamp`, `invariant`.
 *
 * Field constraints come from the committed JSON Schema (see src/generated/); what JSON
 * Schema cannot say is encoded here:
 * - the order in which fields are checked (the Python models' declaration order: the
 *   first `schema` error in that order is the one reported, unknown fields last);
 * - strict types: integers must be integer literals (`1.0`, `1e3` are not), numbers must
 *   be finite, booleans are not numbers;
 * - the numeric bounds (`minimum`/`maximum` of the schema: durationMs 0..1e10, custom
 *   value -1e15..1e15, counts 0..2^53-1) hold for integer and fractional literals alike;
 *   integers are compared exactly (as `bigint`), so 2^53 is out of range;
 * - `json` is "not exactly one RFC 8259 JSON text" (see json.ts); a JSON text that is not
 *   an object (array, string, number, boolean, null) is `schema` with field `null`;
 * - `null` on a nullable (`anyOf [X, null]`) field means absent; on any other field it is
 *   a `schema` rejection;
 * - a `timestamp` out of range is code `timestamp` (not `schema`), reported only when the
 *   entry has no `schema` error; one that does not fit in 64 bits is `schema`;
 * - a missing `tokens` object and the token invariants are code `invariant`.
 */
import { JsonSyntaxError, parseJsonBytes, toPlain, type JsonNode } from "./json.js";
import { USAGE_ENTRY_SCHEMA } from "./generated/usage-entry-schema.js";
import type { EntryKind, UsageEntry } from "./types.js";

export type RejectionCode = "json" | "schema" | "invariant" | "too_large" | "timestamp";

/** The codes, in precedence order (the earliest class of check wins). */
export const REJECTION_CODES: readonly RejectionCode[] = ["too_large", "json", "schema", "timestamp", "invariant"];

/** A message on `usage.entries` larger than this is a dead letter (64 KiB). */
export const DEFAULT_MAX_BYTES = 64 * 1024;
/** 2020-01-01T00:00:00Z: the earliest accepted `timestamp`. */
export const MIN_TIMESTAMP_MS = 1_577_836_800_000;
/** How far after the receiver's clock a `timestamp` may lie. */
export const MAX_FUTURE_MS = 24 * 3600 * 1000;
export const MAX_SAFE_INT = Number.MAX_SAFE_INTEGER;
/** `timestamp` must fit in 64 bits (else `schema`); inside, its range is checked. */
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/**
 * An entry the processor would reject (it was not sent): `code` is the dead-letter code
 * it would get, `field` the camelCase dotted path of the offending field (`null` when
 * the value as a whole is at fault: `json`, `too_large`).
 */
export class EntryValidationError extends Error {
  override name = "EntryValidationError";
  constructor(
    readonly code: RejectionCode,
    message: string,
    readonly field: string | null = null,
  ) {
    super(message);
  }
  toJSON(): { code: RejectionCode; message: string; field: string | null } {
    return { code: this.code, message: this.message, field: this.field };
  }
}

// --- field specs from the JSON Schema --------------------------------------------------

type Prop = Record<string, unknown>;
interface Def {
  properties: Record<string, Prop>;
  required?: readonly string[];
}
const DEFS = USAGE_ENTRY_SCHEMA.$defs as unknown as Record<string, Def>;

/** Declaration order of the Python models (JSON Schema lists properties alphabetically). */
const BASE_ORDER = [
  "id",
  "runId",
  "userId",
  "tenantId",
  "timestamp",
  "stepCount",
  "source",
  "threadId",
  "agentName",
  "parentRunId",
  "schemaVersion",
  "kind",
] as const;
export const FIELD_ORDER: Readonly<Record<string, readonly string[]>> = {
  TokensEntry: [...BASE_ORDER, "model", "provider", "tokens", "costUsd"],
  ToolEntry: [...BASE_ORDER, "toolName", "durationMs", "success", "error"],
  SubagentEntry: [...BASE_ORDER, "subAgentType", "subAgentRunId", "durationMs", "success", "error"],
  CustomEntry: [...BASE_ORDER, "type", "name", "value"],
  Source: ["type", "name"],
  Tokens: ["prompt", "completion", "reasoning", "cached", "cacheWrite", "total"],
};

const DEF_OF_KIND: Readonly<Record<EntryKind, string>> = {
  tokens: "TokensEntry",
  tool: "ToolEntry",
  subagent: "SubagentEntry",
  custom: "CustomEntry",
};

interface FieldSpec {
  name: string;
  required: boolean;
  nullable: boolean;
  type: "string" | "integer" | "number" | "boolean" | "ref";
  ref?: string;
  minLength?: number;
  maxLength?: number;
  minimum?: bigint | number;
  maximum?: bigint | number;
  pattern?: RegExp;
  enum?: readonly unknown[];
  const?: unknown;
}

function fieldSpec(defName: string, name: string, prop: Prop, required: boolean): FieldSpec {
  let inner = prop;
  let nullable = false;
  if (Array.isArray(prop.anyOf)) {
    const branches = prop.anyOf as Prop[];
    nullable = branches.some((b) => b.type === "null");
    const rest = branches.filter((b) => b.type !== "null");
    if (rest.length !== 1) throw new Error(`validate: unsupported anyOf at ${defName}.${name}`);
    inner = rest[0] as Prop;
  }
  const ref = typeof inner.$ref === "string" ? inner.$ref.replace("#/$defs/", "") : undefined;
  const type = ref ? "ref" : (inner.type as FieldSpec["type"]);
  if (!["string", "integer", "number", "boolean", "ref"].includes(type)) {
    throw new Error(`validate: unsupported type at ${defName}.${name}: ${String(type)}`);
  }
  const bound = (v: unknown): bigint | number | undefined =>
    typeof v === "number" ? (type === "integer" ? BigInt(v) : v) : undefined;
  const spec: FieldSpec = { name, required, nullable, type };
  if (ref !== undefined) spec.ref = ref;
  if (typeof inner.minLength === "number") spec.minLength = inner.minLength;
  if (typeof inner.maxLength === "number") spec.maxLength = inner.maxLength;
  const min = bound(inner.minimum);
  const max = bound(inner.maximum);
  if (min !== undefined) spec.minimum = min;
  if (max !== undefined) spec.maximum = max;
  if (typeof inner.pattern === "string") spec.pattern = new RegExp(inner.pattern, "u");
  if (Array.isArray(inner.enum)) spec.enum = inner.enum;
  if ("const" in inner) spec.const = inner.const;
  return spec;
}

function buildSpecs(): Map<string, FieldSpec[]> {
  const specs = new Map<string, FieldSpec[]>();
  for (const [defName, order] of Object.entries(FIELD_ORDER)) {
    const def = DEFS[defName];
    if (!def) throw new Error(`validate: $defs.${defName} missing from the schema`);
    const props = Object.keys(def.properties);
    const missing = props.filter((p) => !order.includes(p));
    const extra = order.filter((p) => !props.includes(p));
    if (missing.length || extra.length) {
      throw new Error(`validate: FIELD_ORDER.${defName} out of date (missing ${missing}, unknown ${extra})`);
    }
    const required = new Set(def.required ?? []);
    // `tokens` is required by the JSON Schema, but the processor reports its absence as
    // an invariant ("at least one count"), not a schema error.
    if (defName === "TokensEntry") required.delete("tokens");
    specs.set(
      defName,
      order.map((name) => fieldSpec(defName, name, def.properties[name] as Prop, required.has(name))),
    );
  }
  return specs;
}

const SPECS = buildSpecs();

// --- checking --------------------------------------------------------------------------

function jsonType(node: JsonNode): string {
  switch (node.t) {
    case "null":
      return "null";
    case "bool":
      return "boolean";
    case "num":
      return "number";
    case "str":
      return "string";
    case "arr":
      return "array";
    case "obj":
      return "object";
  }
}

function codePoints(s: string): number {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        n--;
        i++;
      }
    }
  }
  return n;
}

class SchemaIssue {
  constructor(
    readonly field: string,
    readonly message: string,
  ) {}
}

interface Deferred {
  timestamp?: EntryValidationError;
}

function checkValue(spec: FieldSpec, path: string, node: JsonNode, deferred: Deferred): SchemaIssue | null {
  const bad = (msg: string): SchemaIssue => new SchemaIssue(path, `${path}: ${msg}`);
  const typeMsg = (what: string): SchemaIssue => bad(`Input should be ${what} (got ${jsonType(node)})`);
  switch (spec.type) {
    case "ref": {
      if (node.t !== "obj") return typeMsg("a valid dictionary or instance of " + spec.ref);
      return checkObject(spec.ref as string, node.v, path + ".", deferred);
    }
    case "string": {
      if (node.t !== "str") return typeMsg("a valid string");
      const s = node.v;
      if (spec.enum && !spec.enum.includes(s)) {
        return bad(`Input should be ${spec.enum.map((e) => `'${String(e)}'`).join(", ")}`);
      }
      if (spec.const !== undefined && s !== spec.const) return bad(`Input should be '${String(spec.const)}'`);
      const n = codePoints(s);
      if (spec.minLength !== undefined && n < spec.minLength) {
        return bad(`String should have at least ${spec.minLength} character${spec.minLength === 1 ? "" : "s"}`);
      }
      if (spec.maxLength !== undefined && n > spec.maxLength) {
        return bad(`String should have at most ${spec.maxLength} characters`);
      }
      if (spec.pattern && !spec.pattern.test(s)) {
        if (path === "costUsd") {
          return bad(
            `must be a plain decimal string >= 0 (no sign, no exponent) matching ${spec.pattern.source}, ` +
              `e.g. "0.0012" (got ${JSON.stringify(s)})`,
          );
        }
        return bad(`String should match pattern '${spec.pattern.source}'`);
      }
      return null;
    }
    case "boolean":
      return node.t === "bool" ? null : typeMsg("a valid boolean");
    case "integer": {
      if (node.t !== "num" || !node.int) return typeMsg("a valid integer");
      const v = BigInt(node.text);
      if (path === "timestamp") {
        // Not a 64-bit integer: a type error (schema), like `1.0`. Within 64 bits, range
        // errors of the timestamp have their own code, below schema in precedence.
        if (v < INT64_MIN || v > INT64_MAX) {
          return bad("Input should be a 64-bit integer (-2**63 <= timestamp < 2**63)");
        }
        if (spec.minimum !== undefined && v < (spec.minimum as bigint)) {
          deferred.timestamp = new EntryValidationError(
            "timestamp",
            `timestamp ${v} is before 2020-01-01T00:00:00Z (${MIN_TIMESTAMP_MS})`,
            "timestamp",
          );
        }
        return null;
      }
      if (path === "schemaVersion" && (v < 1n || v > 1n)) {
        return bad(`unsupported schema version ${v}; this processor accepts schemaVersion 1`);
      }
      if (spec.minimum !== undefined && v < (spec.minimum as bigint)) {
        return bad(`Input should be greater than or equal to ${spec.minimum}`);
      }
      if (spec.maximum !== undefined && v > (spec.maximum as bigint)) {
        return bad(`Input should be less than or equal to ${spec.maximum}`);
      }
      return null;
    }
    case "number": {
      if (node.t !== "num") return typeMsg("a valid number");
      if (!Number.isFinite(node.v)) return bad("Input should be a finite number");
      // Bounds of number fields (1e10, +-1e15) are integers below 2^53, exact as doubles,
      // and so is every integer literal near them: comparing doubles is exact here.
      if (spec.minimum !== undefined && node.v < (spec.minimum as number)) {
        return bad(`Input should be greater than or equal to ${spec.minimum}`);
      }
      if (spec.maximum !== undefined && node.v > (spec.maximum as number)) {
        return bad(`Input should be less than or equal to ${spec.maximum}`);
      }
      return null;
    }
  }
}

function checkObject(
  defName: string,
  obj: Map<string, JsonNode>,
  prefix: string,
  deferred: Deferred,
): SchemaIssue | null {
  const specs = SPECS.get(defName) as FieldSpec[];
  for (const spec of specs) {
    const path = prefix + spec.name;
    const node = obj.get(spec.name);
    if (node === undefined) {
      if (spec.required) return new SchemaIssue(path, `${path}: field required`);
      continue;
    }
    if (node.t === "null") {
      if (spec.nullable) continue;
      if (spec.type === "ref") return new SchemaIssue(path, `${path}: Input should be an object (got null)`);
    }
    const issue = checkValue(spec, path, node, deferred);
    if (issue) return issue;
  }
  for (const key of obj.keys()) {
    if (!specs.some((s) => s.name === key)) {
      const path = prefix + key;
      return new SchemaIssue(path, `${path}: unknown field (not part of schema version 1)`);
    }
  }
  return null;
}

function count(tokens: Map<string, JsonNode> | undefined, name: string): number | null {
  const node = tokens?.get(name);
  return node && node.t === "num" ? node.v : null;
}

function checkInvariants(obj: Map<string, JsonNode>): EntryValidationError | null {
  const t = obj.get("tokens");
  const tokens = t && t.t === "obj" ? t.v : undefined;
  const prompt = count(tokens, "prompt");
  const completion = count(tokens, "completion");
  const total = count(tokens, "total");
  const reasoning = count(tokens, "reasoning");
  const inv = (field: string, message: string): EntryValidationError =>
    new EntryValidationError("invariant", message, field);
  if (prompt === null && completion === null && total === null) {
    return inv("tokens", "tokens: at least one of prompt, completion, total must be present");
  }
  const p = prompt ?? 0;
  const c = completion ?? 0;
  if (reasoning !== null && reasoning > c) {
    return inv("tokens.reasoning", `tokens.reasoning (${reasoning}) must be <= tokens.completion (${c})`);
  }
  const cached = count(tokens, "cached") ?? 0;
  const cacheWrite = count(tokens, "cacheWrite") ?? 0;
  if (cached + cacheWrite > p) {
    const field = cached > p ? "tokens.cached" : "tokens.cacheWrite";
    return inv(
      field,
      `${field}: tokens.cached (${cached}) + tokens.cacheWrite (${cacheWrite}) must be <= tokens.prompt (${p})`,
    );
  }
  if (total !== null && (prompt !== null || completion !== null) && total !== p + c) {
    return inv("tokens.total", `tokens.total (${total}) must equal tokens.prompt + tokens.completion (${p + c})`);
  }
  return null;
}

const KINDS = Object.keys(DEF_OF_KIND).join(", ");

/**
 * Validate one parsed JSON value as a usage entry; throws {@link EntryValidationError}.
 * `nowMs` is the receiver's clock (timestamps may lie at most 24 h after it).
 */
export function validateNode(node: JsonNode, nowMs: number): UsageEntry {
  if (node.t !== "obj") {
    throw new EntryValidationError("schema", `an entry must be a JSON object, got ${jsonType(node)}`, null);
  }
  const obj = node.v;
  const kind = obj.get("kind");
  if (kind === undefined) {
    throw new EntryValidationError("schema", `kind: field required (one of ${KINDS})`, "kind");
  }
  const defName = kind.t === "str" && Object.hasOwn(DEF_OF_KIND, kind.v) ? DEF_OF_KIND[kind.v as EntryKind] : undefined;
  if (defName === undefined) {
    const shown = kind.t === "str" ? kind.v : kind.t === "null" ? "None" : JSON.stringify(toPlain(kind));
    throw new EntryValidationError("schema", `kind: unknown kind '${shown}' (expected one of ${KINDS})`, "kind");
  }
  const deferred: Deferred = {};
  const issue = checkObject(defName, obj, "", deferred);
  if (issue) throw new EntryValidationError("schema", issue.message, issue.field);
  if (deferred.timestamp) throw deferred.timestamp;
  const ts = obj.get("timestamp") as JsonNode & { t: "num" };
  if (BigInt(ts.text) > BigInt(nowMs) + BigInt(MAX_FUTURE_MS)) {
    throw new EntryValidationError(
      "timestamp",
      `timestamp ${ts.text} is more than 24 h after the receiver's clock (${nowMs})`,
      "timestamp",
    );
  }
  if (defName === "TokensEntry") {
    const broken = checkInvariants(obj);
    if (broken) throw broken;
  }
  return toPlain(node) as UsageEntry;
}

/**
 * Parse and validate one raw message value exactly like the processor's
 * `schemas.entry.parse_entry(raw, now_ms=...)`: size, then JSON, schema, timestamp,
 * invariants. Throws {@link EntryValidationError}.
 */
export function parseEntry(raw: Uint8Array, nowMs: number = Date.now(), maxBytes = DEFAULT_MAX_BYTES): UsageEntry {
  if (raw.length > maxBytes) {
    throw new EntryValidationError("too_large", `entry is ${raw.length} bytes; the limit is ${maxBytes} bytes`, null);
  }
  let node: JsonNode;
  try {
    node = parseJsonBytes(raw);
  } catch (err) {
    if (err instanceof JsonSyntaxError || err instanceof RangeError) {
      throw new EntryValidationError("json", err.message, null);
    }
    throw err;
  }
  return validateNode(node, nowMs);
}

const encoder = new TextEncoder();

/**
 * The wire bytes of an entry (compact UTF-8 JSON, as published on `usage.entries`), after
 * checking them exactly as the processor will: the same rules as {@link parseEntry}.
 * Fields set to `undefined` are left out; a non-finite number becomes `null` (and is
 * then rejected as `schema` on that field, as the Python client does), as JSON has no such
 * numbers; a string holding a lone surrogate is escaped (`\ud800`) and so rejected as
 * `json`, as the Python client and the processor do.
 */
export function encodeEntry(entry: UsageEntry | Record<string, unknown>, nowMs: number = Date.now()): Uint8Array {
  let text: string | undefined;
  try {
    text = JSON.stringify(entry);
  } catch (err) {
    throw new EntryValidationError("json", `entry is not encodable as JSON: ${(err as Error).message}`, null);
  }
  if (text === undefined) throw new EntryValidationError("json", "entry is not encodable as JSON", null);
  const raw = encoder.encode(text);
  parseEntry(raw, nowMs);
  return raw;
}

/** Validate an entry object (see {@link encodeEntry}); returns it unchanged. */
export function validateEntry<T extends UsageEntry>(entry: T, nowMs: number = Date.now()): T {
  encodeEntry(entry, nowMs);
  return entry;
}
