// The generated types and the validator's field table are in step with the JSON Schema
// committed under schemas/json/ (`npm run build` also fails when src/types.ts is stale).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { USAGE_ENTRY_SCHEMA } from "../src/generated/usage-entry-schema.js";
import { ENTRY_KINDS, type CustomEntry, type SubagentEntry, type TokensEntry, type ToolEntry, type UsageEntry } from "../src/types.js";
import { FIELD_ORDER, validateEntry } from "../src/validate.js";
import { REPO_ROOT } from "./paths.js";

const onDisk = JSON.parse(readFileSync(join(REPO_ROOT, "schemas/json/usage-entry.schema.json"), "utf8")) as typeof USAGE_ENTRY_SCHEMA;

test("the embedded schema is the committed one", () => {
  assert.deepEqual(USAGE_ENTRY_SCHEMA, onDisk);
});

test("every schema property is checked, in the Python models' order", () => {
  const defs = onDisk.$defs as unknown as Record<string, { properties: Record<string, unknown> }>;
  for (const [name, order] of Object.entries(FIELD_ORDER)) {
    assert.deepEqual([...order].sort(), Object.keys(defs[name]!.properties).sort(), name);
  }
  assert.deepEqual([...ENTRY_KINDS], ["tokens", "tool", "subagent", "custom"]);
});

test("the generated interfaces accept the schema's fields (compile-time) and validate", () => {
  const base = { id: "e", runId: "r", userId: "u", timestamp: Date.now(), tenantId: "t", stepCount: 2, schemaVersion: 1 as const };
  const tokens: TokensEntry = {
    ...base,
    kind: "tokens",
    model: "gpt-4o-mini",
    provider: "openai",
    tokens: { prompt: 10, completion: 5, reasoning: 1, cached: 2, cacheWrite: 3, total: 15 },
    costUsd: "0.000123",
    source: { type: "agent", name: "planner" },
    threadId: "th",
    agentName: "planner",
    parentRunId: "p",
  };
  const tool: ToolEntry = { ...base, kind: "tool", toolName: "search", durationMs: 1.5, success: false, error: "x" };
  const sub: SubagentEntry = { ...base, kind: "subagent", subAgentType: "r", subAgentRunId: "c", durationMs: 0, success: true };
  const custom: CustomEntry = { ...base, kind: "custom", type: "api_calls", name: "tavily", value: -1 };
  const all: UsageEntry[] = [tokens, tool, sub, custom];
  for (const e of all) assert.equal(validateEntry(e), e);
});
