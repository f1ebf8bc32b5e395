// Round trip against a real stack (driven by tests/integration/test_typescript_client.py):
// records the same set of entries for one run through each transport, flushes, and
// prints what it recorded as JSON on stdout.
//
// env: USAGE_KAFKA_BOOTSTRAP, USAGE_TOPIC_ENTRIES, USAGE_API_URL, USAGE_API_KEY (optional),
//      RT_TENANT_ID, RT_USER_ID, RT_RUN_ID_KAFKA, RT_RUN_ID_HTTP; the Kafka transport's TLS
//      and SASL from USAGE_KAFKA_SECURITY_PROTOCOL etc. (kafkaSecurityFromEnv), none by default
import {
  HttpTransport,
  KafkaTransport,
  UsageRecorder,
  kafkaSecurityFromEnv,
  type RunHandle,
  type Transport,
} from "../src/index.js";

function env(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`environment variable ${name} is required`);
  return value;
}

async function recordRun(run: RunHandle): Promise<{ childRunId: string; entryIds: string[]; childEntryIds: string[] }> {
  const entryIds: string[] = [];
  const childEntryIds: string[] = [];
  entryIds.push(await run.recordTokens("gpt-4o-mini", { prompt: 100, completion: 20, cached: 40, provider: "openai" }));
  // An AI SDK v6+ usage object (what generateText returns in ai@6/ai@7).
  entryIds.push(
    await run.recordUsage(
      "claude-3-5-sonnet-20241022",
      {
        inputTokens: 1210,
        inputTokenDetails: { noCacheTokens: 10, cacheReadTokens: 1000, cacheWriteTokens: 200 },
        outputTokens: 50,
        outputTokenDetails: { textTokens: 20, reasoningTokens: 30 },
        totalTokens: 1260,
      },
      { provider: "anthropic" },
    ),
  );
  await run.tool("search", async () => "ok");
  await run.tool("fetch", async () => {
    throw new Error("HTTP 500");
  }).catch(() => undefined);
  await run.recordCustom("api_calls", "tavily", 1);
  const childRunId = await run.subagent("researcher", async (child) => {
    childEntryIds.push(await child.recordTokens("gpt-4o-mini", { prompt: 7, completion: 3 }));
    return child.runId;
  });
  return { childRunId, entryIds, childEntryIds };
}

async function viaTransport(transport: Transport, runId: string) {
  const recorder = await UsageRecorder.open({
    transport,
    userId: env("RT_USER_ID"),
    tenantId: env("RT_TENANT_ID"),
    agentName: "ts-roundtrip",
    deliveryTimeoutMs: 60_000,
  });
  try {
    const run = recorder.run({ runId });
    const recorded = await recordRun(run);
    await recorder.flush();
    return { runId, ...recorded, stats: recorder.stats };
  } finally {
    await recorder.close();
  }
}

const apiKey = process.env.USAGE_API_KEY;
const result = {
  kafka: await viaTransport(
    new KafkaTransport({
      brokers: env("USAGE_KAFKA_BOOTSTRAP"),
      topic: env("USAGE_TOPIC_ENTRIES"),
      logLevel: "error",
      ...kafkaSecurityFromEnv(),
    }),
    env("RT_RUN_ID_KAFKA"),
  ),
  http: await viaTransport(
    new HttpTransport({ url: env("USAGE_API_URL"), ...(apiKey ? { apiKey } : {}) }),
    env("RT_RUN_ID_HTTP"),
  ),
};
process.stdout.write(JSON.stringify(result) + "\n");
