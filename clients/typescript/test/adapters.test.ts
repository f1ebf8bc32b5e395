import assert from "node:assert/strict";
import { test } from "node:test";
import { convexUsageHandler, fromAiSdkUsage, tokensFromProviderCall, type ConvexUsageArgs } from "../src/adapters.js";
import { UsageRecorder } from "../src/recorder.js";
import { validateEntry } from "../src/validate.js";
import { FakeTransport } from "./fakes.js";

test("AI SDK v4, v5, v6+ usage shapes", () => {
  assert.deepEqual(fromAiSdkUsage({ promptTokens: 10, completionTokens: 5, totalTokens: 15 }), {
    prompt: 10,
    completion: 5,
    reasoning: 0,
    cached: 0,
    cacheWrite: 0,
  });
  // v5, OpenAI: output includes reasoning, input includes cached reads
  assert.deepEqual(
    fromAiSdkUsage({ inputTokens: 100, outputTokens: 50, totalTokens: 150, reasoningTokens: 30, cachedInputTokens: 60 }),
    { prompt: 100, completion: 50, reasoning: 30, cached: 60, cacheWrite: 0 },
  );
  // v5, Google: total = input + output + reasoning -> output excludes reasoning
  assert.deepEqual(fromAiSdkUsage({ inputTokens: 100, outputTokens: 50, totalTokens: 180, reasoningTokens: 30 }), {
    prompt: 100,
    completion: 80,
    reasoning: 30,
    cached: 0,
    cacheWrite: 0,
  });
  // v5, Anthropic: input excludes cache reads and writes
  assert.deepEqual(
    fromAiSdkUsage({ inputTokens: 10, outputTokens: 5, totalTokens: 15, cachedInputTokens: 1000 }, { inputExcludesCache: true, cacheWrite: 200 }),
    { prompt: 1210, completion: 5, reasoning: 0, cached: 1000, cacheWrite: 200 },
  );
  // v6+ (ai@6, ai@7): details
  assert.deepEqual(
    fromAiSdkUsage({
      inputTokens: 1210,
      inputTokenDetails: { noCacheTokens: 10, cacheReadTokens: 1000, cacheWriteTokens: 200 },
      outputTokens: 50,
      outputTokenDetails: { textTokens: 20, reasoningTokens: 30 },
      totalTokens: 1260,
    }),
    { prompt: 1210, completion: 50, reasoning: 30, cached: 1000, cacheWrite: 200 },
  );
  assert.deepEqual(
    fromAiSdkUsage({
      inputTokens: undefined,
      inputTokenDetails: { noCacheTokens: 10, cacheReadTokens: 5, cacheWriteTokens: undefined },
      outputTokens: undefined,
      outputTokenDetails: { textTokens: 7, reasoningTokens: 3 },
    }),
    { prompt: 15, completion: 10, reasoning: 3, cached: 5, cacheWrite: 0 },
  );
  assert.throws(() => fromAiSdkUsage({ foo: 1 } as never), /not an AI SDK LanguageModelUsage/);
  assert.throws(() => fromAiSdkUsage({ inputTokens: 1.5 }), /inputTokens: expected an integer/);
});

test("Anthropic cache figures from Convex provider metadata (AI SDK v5)", () => {
  const t = tokensFromProviderCall({ inputTokens: 10, outputTokens: 5, totalTokens: 15 }, "anthropic.messages", {
    anthropic: { cacheCreationInputTokens: 300, cacheReadInputTokens: 700 },
  });
  assert.deepEqual(t, { prompt: 1010, completion: 5, reasoning: 0, cached: 700, cacheWrite: 300 });
  const raw = tokensFromProviderCall({ inputTokens: 10, outputTokens: 5, cachedInputTokens: 7 }, "anthropic.messages", {
    anthropic: { usage: { cache_creation_input_tokens: 3, cache_read_input_tokens: 7 } },
  });
  assert.deepEqual(raw, { prompt: 20, completion: 5, reasoning: 0, cached: 7, cacheWrite: 3 });
  // other providers and v6+ shapes: usage as is
  assert.deepEqual(
    tokensFromProviderCall({ inputTokens: 10, outputTokens: 5, cachedInputTokens: 4 }, "openai.responses", undefined),
    { prompt: 10, completion: 5, reasoning: 0, cached: 4, cacheWrite: 0 },
  );
});

test("convexUsageHandler records one tokens entry per call, run = thread, and flushes", async () => {
  const transport = new FakeTransport();
  const recorder = new UsageRecorder({ transport, userId: "fallback-user", lingerMs: 0 });
  const handler = convexUsageHandler({ recorder });
  const args: ConvexUsageArgs = {
    userId: "user-7",
    threadId: "thread-1",
    agentName: "support",
    model: "claude-3-5-sonnet-20241022",
    provider: "anthropic.messages",
    usage: { inputTokens: 10, outputTokens: 5, totalTokens: 15, cachedInputTokens: 100 },
    providerMetadata: { anthropic: { cacheCreationInputTokens: 20 } },
  };
  await handler({}, args);
  await handler({}, { ...args, userId: undefined, usage: { inputTokens: 1, outputTokens: 1 }, providerMetadata: undefined });
  assert.equal(transport.entries.length, 2, "delivered before the handler returned");
  const [a, b] = transport.entries;
  assert.ok(a?.kind === "tokens" && b?.kind === "tokens");
  assert.equal(a.runId, "thread-1");
  assert.equal(a.threadId, "thread-1");
  assert.equal(a.userId, "user-7");
  assert.equal(a.agentName, "support");
  assert.equal(a.provider, "anthropic");
  assert.deepEqual(a.tokens, { prompt: 130, completion: 5, cached: 100, cacheWrite: 20 });
  assert.equal(a.stepCount, 1);
  assert.equal(b.stepCount, 2);
  assert.equal(b.userId, "user-7", "the run's user (a run belongs to one user)");
  for (const e of transport.entries) validateEntry(e);
  await recorder.close();
});
