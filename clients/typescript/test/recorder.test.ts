import assert from "node:assert/strict";
import { test } from "node:test";
import { EntryValidationError, UsageRecorderError } from "../src/errors.js";
import { UsageRecorder } from "../src/recorder.js";
import { uuidv7 } from "../src/ids.js";
import { FakeTransport } from "./fakes.js";

const UUID7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

async function open(transport = new FakeTransport(), extra: Partial<ConstructorParameters<typeof UsageRecorder>[0]> = {}) {
  const recorder = await UsageRecorder.open({ transport, userId: "u1", lingerMs: 0, ...extra });
  return { recorder, transport };
}

test("uuidv7 ids are v7, unique and increasing", () => {
  const ids = Array.from({ length: 5000 }, () => uuidv7());
  for (const id of ids) assert.match(id, UUID7);
  assert.equal(new Set(ids).size, ids.length);
  assert.deepEqual([...ids].sort(), ids);
  const ms = parseInt(ids[0]!.replace(/-/g, "").slice(0, 12), 16);
  assert.ok(Math.abs(ms - Date.now()) < 5000);
});

test("entries of every kind, keyed by runId, with step counts and links", async () => {
  const { recorder, transport } = await open(undefined, { agentName: "planner", tenantId: "t1" });
  const run = recorder.run({ threadId: "th" });
  assert.match(run.runId, UUID7);
  await run.recordCustom("api_calls", "tavily", 1); // step 0: before any LLM call
  const id1 = await run.recordTokens("gpt-4o-mini", { prompt: 100, completion: 20, cached: 40, provider: "openai" });
  const result = await run.tool("search", async () => 42);
  assert.equal(result, 42);
  await assert.rejects(
    run.tool("fetch", () => {
      throw new TypeError("boom");
    }),
    TypeError,
  );
  await run.recordTokens("gpt-4o-mini", { prompt: 10, completion: 5, reasoning: 2, costUsd: "0.0001" });
  const childId = await run.subagent("researcher", async (child) => {
    await child.recordTokens("claude-3-5-haiku-20241022", { prompt: 7, completion: 3 });
    return child.runId;
  });
  const started = run.startChild("critic");
  await started.run.recordTokens("gpt-4o-mini", { total: 9 });
  await started.finish({ error: new Error("bad") });
  await recorder.flush();
  assert.equal(recorder.stats.buffered, 0);
  assert.equal(recorder.stats.delivered, 9);

  const entries = transport.entries;
  assert.equal(entries.length, 9);
  for (const batch of transport.batches) for (const e of batch) assert.equal(e.key, e.entry.runId);
  const own = entries.filter((e) => e.runId === run.runId);
  assert.deepEqual(
    own.map((e) => [e.kind, e.stepCount]),
    [
      ["custom", 0],
      ["tokens", 1],
      ["tool", 1],
      ["tool", 1],
      ["tokens", 2],
      ["subagent", 2],
      ["subagent", 2],
    ],
  );
  assert.equal(own[1]!.id, id1);
  for (const e of entries) {
    assert.match(e.id, UUID7);
    assert.equal(e.userId, "u1");
    assert.equal(e.tenantId, "t1");
    assert.equal(e.threadId, "th");
    assert.ok(Number.isInteger(e.timestamp) && Math.abs(e.timestamp - Date.now()) < 60_000);
  }
  const tools = own.filter((e) => e.kind === "tool");
  assert.deepEqual(
    tools.map((e) => e.kind === "tool" && [e.toolName, e.success, e.error ?? null]),
    [
      ["search", true, null],
      ["fetch", false, "TypeError: boom"],
    ],
  );
  const subs = own.filter((e) => e.kind === "subagent");
  const [researcher, critic] = subs;
  assert.ok(researcher?.kind === "subagent" && critic?.kind === "subagent");
  assert.equal(researcher.subAgentRunId, childId);
  assert.equal(researcher.success, true);
  assert.equal(critic.subAgentRunId, started.runId);
  assert.equal(critic.success, false);
  assert.equal(critic.error, "Error: bad");
  const childEntries = entries.filter((e) => e.runId === childId);
  assert.equal(childEntries.length, 1);
  assert.equal(childEntries[0]!.parentRunId, run.runId);
  assert.equal(childEntries[0]!.agentName, "researcher");
  assert.equal(childEntries[0]!.stepCount, 1);
  assert.equal(entries.find((e) => e.runId === started.runId)?.parentRunId, run.runId);
  await recorder.close();
  assert.ok(transport.closed);
});

test("an invalid entry throws EntryValidationError naming the field and is not sent", async () => {
  const { recorder, transport } = await open();
  const run = recorder.run();
  await assert.rejects(run.recordTokens("m", { prompt: 5, cached: 6 }), (err: unknown) => {
    assert.ok(err instanceof EntryValidationError);
    assert.equal(err.code, "invariant");
    assert.equal(err.field, "tokens.cached");
    return true;
  });
  assert.equal(run.step, 0, "a rejected call is not a step");
  await assert.rejects(run.recordTokens("", { prompt: 1 }), { code: "schema", field: "model" });
  await assert.rejects(run.recordTokens("m", { prompt: 1.5 }), { code: "schema", field: "tokens.prompt" });
  await assert.rejects(run.recordCustom("t", "n", Number.NaN), { code: "schema", field: "value" });
  await assert.rejects(run.recordTool("x", { durationMs: -1 }), { code: "schema", field: "durationMs" });
  await assert.rejects(run.recordTokens("m", { prompt: 1, costUsd: "1e-3" }), { code: "schema", field: "costUsd" });
  await assert.rejects(run.recordTokens("m", { prompt: 1, timestampMs: Date.now() + 25 * 3600_000 }), {
    code: "timestamp",
    field: "timestamp",
  });
  await assert.rejects(run.recordTool("x".repeat(70_000), { durationMs: 1 }), { code: "too_large", field: null });
  await recorder.flush();
  assert.equal(transport.entries.length, 0);
  await recorder.close();
});

test("record() before start and after close is an error", async () => {
  const recorder = new UsageRecorder({ transport: new FakeTransport(), userId: "u" });
  await assert.rejects(recorder.run().recordCustom("a", "b", 1), UsageRecorderError);
  await recorder.start();
  await recorder.close();
  await assert.rejects(recorder.run().recordCustom("a", "b", 1), /closed/);
});

test("strict metrics need defineMetric", async () => {
  const { recorder, transport } = await open(undefined, { strictMetrics: true });
  const run = recorder.run();
  await assert.rejects(run.recordCustom("api_calls", "tavily", 1), { code: "schema", field: "type" });
  const metric = recorder.defineMetric("api_calls", "external API calls");
  await run.recordCustom(metric, "tavily", 2);
  await run.recordCustom("api_calls", "serp", -1.5);
  await recorder.close();
  assert.deepEqual(
    transport.entries.map((e) => e.kind === "custom" && [e.type, e.name, e.value]),
    [
      ["api_calls", "tavily", 2],
      ["api_calls", "serp", -1.5],
    ],
  );
  assert.equal(recorder.metrics.get("api_calls")?.description, "external API calls");
});

test("back-pressure: record waits for buffer space while the transport is slow", async () => {
  const transport = new FakeTransport(1);
  const { recorder } = await open(transport, { maxBuffer: 2 });
  transport.hold();
  const run = recorder.run();
  await run.recordCustom("a", "n", 1);
  await run.recordCustom("a", "n", 2);
  let third = false;
  const pending = run.recordCustom("a", "n", 3).then(() => (third = true));
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(third, false, "the third record waits for a free slot");
  transport.release();
  await pending;
  await recorder.close();
  assert.deepEqual(
    transport.entries.map((e) => e.kind === "custom" && e.value),
    [1, 2, 3],
  );
});

test("a delivery failure makes flush, close and later records throw", async () => {
  const transport = new FakeTransport();
  const { recorder } = await open(transport);
  transport.fail = new Error("broker down");
  const run = recorder.run();
  await run.recordCustom("a", "n", 1);
  await assert.rejects(recorder.flush(), (err: unknown) => {
    assert.ok(err instanceof UsageRecorderError);
    assert.match(err.message, /could not be delivered to fake transport: broker down/);
    return true;
  });
  assert.equal(recorder.stats.failed, 1);
  await assert.rejects(run.recordCustom("a", "n", 2), UsageRecorderError);
  await assert.rejects(recorder.close(), UsageRecorderError);
});

test("start failure is a clear UsageRecorderError", async () => {
  const transport = new FakeTransport();
  transport.startError = new Error("connection refused");
  await assert.rejects(UsageRecorder.open({ transport, userId: "u" }), /cannot start the usage recorder \(fake transport\): connection refused/);
});

test("flush times out with a clear error when nothing is acknowledged", async () => {
  const transport = new FakeTransport();
  const { recorder } = await open(transport);
  transport.hold();
  await recorder.run().recordCustom("a", "n", 1);
  await assert.rejects(recorder.flush(50), /1 usage entries not acknowledged by fake transport within 50 ms/);
  transport.release();
  await recorder.close();
});

test("await using closes the recorder", async () => {
  const transport = new FakeTransport();
  {
    await using recorder = await UsageRecorder.open({ transport, userId: "u", lingerMs: 0 });
    await recorder.run().recordTokens("m", { prompt: 1, completion: 1 });
  }
  assert.ok(transport.closed);
  assert.equal(transport.entries.length, 1);
});
