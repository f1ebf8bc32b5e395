/**
 * AI SDK usage objects -> the contract's token semantics (CONTRACT §2): `prompt` is ALL
 * input tokens (cache reads and writes included), `completion` ALL output tokens
 * (reasoning included), `reasoning` part of completion, `cached`/`cacheWrite` parts of
 * prompt. Mirrors `usage_client.adapters.from_ai_sdk` in the Python client.
 *
 * Shapes, told apart by their keys:
 * - v6+ (`ai@6`, `ai@7`): `inputTokens` (all input), `inputTokenDetails: {noCacheTokens,
 *   cacheReadTokens, cacheWriteTokens}`, `outputTokens` (all output), `outputTokenDetails:
 *   {textTokens, reasoningTokens}`. A missing `inputTokens`/`outputTokens` is the sum of
 *   its details.
 * - v5 (`ai@5`): `inputTokens`, `outputTokens`, `totalTokens`, `reasoningTokens`,
 *   `cachedInputTokens`. Whether `outputTokens` includes reasoning depends on the provider
 *   (Google's does not): when `totalTokens == inputTokens + outputTokens + reasoningTokens`,
 *   or reasoning exceeds output, reasoning is added to completion. v5's Anthropic provider
 *   reports `inputTokens` WITHOUT cache reads and writes: with `inputExcludesCache` the
 *   cached reads (and `cacheWrite`, from provider metadata) are added to prompt.
 * - v4 (`ai@4`): `promptTokens`, `completionTokens`, `totalTokens`.
 */
import type { RunHandle } from "./run.js";
import type { UsageRecorder } from "./recorder.js";

type Count = number | null | undefined;

/** The AI SDK's `LanguageModelUsage`, any of v4, v5, v6+ (all fields optional). */
export interface AiSdkUsage {
  // v5, v6+
  inputTokens?: Count;
  outputTokens?: Count;
  totalTokens?: Count;
  // v5
  reasoningTokens?: Count;
  cachedInputTokens?: Count;
  // v6+
  inputTokenDetails?: { noCacheTokens?: Count; cacheReadTokens?: Count; cacheWriteTokens?: Count } | null;
  outputTokenDetails?: { textTokens?: Count; reasoningTokens?: Count } | null;
  // v4
  promptTokens?: Count;
  completionTokens?: Count;
  raw?: unknown;
}

/** Token counts of one LLM call in contract semantics (all integers >= 0). */
export interface TokenUsage {
  prompt: number;
  completion: number;
  reasoning: number;
  cached: number;
  cacheWrite: number;
}

export interface FromAiSdkOptions {
  /** v5 only: the provider's `inputTokens` excludes cache reads and writes (Anthropic). */
  inputExcludesCache?: boolean;
  /** v5/v4: cache writes reported elsewhere (Anthropic provider metadata). */
  cacheWrite?: number;
}

function n(obj: object | null | undefined, name: string): number {
  if (!obj) return 0;
  const v = (obj as Record<string, unknown>)[name];
  if (v === undefined || v === null) return 0;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0) {
    throw new TypeError(`${name}: expected an integer token count >= 0, got ${JSON.stringify(v)}`);
  }
  return v;
}

const has = (obj: object, name: string): boolean => {
  const v = (obj as Record<string, unknown>)[name];
  return v !== undefined && v !== null;
};

function isTokenUsage(u: object): u is TokenUsage {
  return ["prompt", "completion", "reasoning", "cached", "cacheWrite"].every((k) => typeof (u as Record<string, unknown>)[k] === "number");
}

/** Convert an AI SDK `LanguageModelUsage` (v4, v5, v6+) to contract token counts. */
export function fromAiSdkUsage(usage: AiSdkUsage | TokenUsage, options: FromAiSdkOptions = {}): TokenUsage {
  if (!usage || typeof usage !== "object") throw new TypeError("usage: expected an object");
  if (isTokenUsage(usage)) return { ...usage };
  const u = usage as AiSdkUsage;
  const inp = u.inputTokenDetails;
  const out = u.outputTokenDetails;
  if ((inp && typeof inp === "object") || (out && typeof out === "object")) {
    const cacheRead = n(inp, "cacheReadTokens");
    const cacheWrite = n(inp, "cacheWriteTokens");
    const prompt = has(u, "inputTokens") ? n(u, "inputTokens") : n(inp, "noCacheTokens") + cacheRead + cacheWrite;
    const reasoning = out ? n(out, "reasoningTokens") : n(u, "reasoningTokens");
    const completion = has(u, "outputTokens") ? n(u, "outputTokens") : n(out, "textTokens") + reasoning;
    return { prompt, completion, reasoning, cached: cacheRead, cacheWrite };
  }
  if ("inputTokens" in u || "outputTokens" in u) {
    const cached = n(u, "cachedInputTokens");
    const extraWrite = options.cacheWrite ?? 0;
    const input = n(u, "inputTokens");
    const prompt = input + (options.inputExcludesCache ? cached + extraWrite : 0);
    const output = n(u, "outputTokens");
    const reasoning = n(u, "reasoningTokens");
    const total = has(u, "totalTokens") ? n(u, "totalTokens") : null;
    const outputExcludesReasoning =
      reasoning > output || (reasoning > 0 && total !== null && total === input + output + reasoning);
    return {
      prompt,
      completion: outputExcludesReasoning ? output + reasoning : output,
      reasoning,
      cached,
      // Without inputExcludesCache the writes are assumed to be inside inputTokens.
      cacheWrite: extraWrite,
    };
  }
  if ("promptTokens" in u || "completionTokens" in u) {
    return { prompt: n(u, "promptTokens"), completion: n(u, "completionTokens"), reasoning: 0, cached: 0, cacheWrite: 0 };
  }
  throw new TypeError(
    "not an AI SDK LanguageModelUsage: expected inputTokens/outputTokens (v5, v6+) or " +
      `promptTokens/completionTokens (v4), got keys ${JSON.stringify(Object.keys(u).sort())}`,
  );
}

// --- Convex Agent ----------------------------------------------------------------------

/**
 * The arguments of `@convex-dev/agent`'s `UsageHandler` (checked against
 * @convex-dev/agent 0.7.3, `dist/vercel/client/types.d.ts`):
 * `(ctx, { userId, threadId, agentName, usage, providerMetadata, model, provider })`.
 */
export interface ConvexUsageArgs {
  userId: string | undefined;
  threadId: string | undefined;
  agentName: string | undefined;
  usage: AiSdkUsage;
  providerMetadata: Record<string, Record<string, unknown> | undefined> | undefined;
  model: string;
  provider: string;
}

export type ConvexUsageHandler = (ctx: unknown, args: ConvexUsageArgs) => Promise<void>;

export interface ConvexUsageHandlerOptions {
  /**
   * The recorder to use, or a function returning it (e.g. created lazily with an HTTP
   * transport: Convex actions cannot open Kafka connections).
   */
  recorder: UsageRecorder | (() => UsageRecorder | Promise<UsageRecorder>);
  /** The run an LLM call belongs to. Default: the thread id, else a new run per call. */
  runId?: (args: ConvexUsageArgs) => string | undefined;
  /** The billed user when the agent call has no `userId` (a string or a function). */
  userId?: string | ((args: ConvexUsageArgs) => string | undefined);
  /** Agent name when the call has none. */
  agentName?: string;
  tenantId?: string;
  /** Await delivery before returning (default true: an action may end right after). */
  flush?: boolean;
}

/** Contract provider from an AI SDK provider id: `"anthropic.messages"` -> `"anthropic"`. */
export function providerName(provider: string | undefined): string | undefined {
  if (!provider) return undefined;
  const name = provider.split(".")[0];
  return name ? name : undefined;
}

/**
 * Token counts of one Convex Agent / AI SDK call, including the Anthropic cache figures
 * that AI SDK v5 only reports in provider metadata (`anthropic.cacheCreationInputTokens`,
 * `anthropic.cacheReadInputTokens`, or the raw `anthropic.usage`).
 */
export function tokensFromProviderCall(
  usage: AiSdkUsage,
  provider: string | undefined,
  providerMetadata: ConvexUsageArgs["providerMetadata"],
): TokenUsage {
  const isV6 = Boolean(usage.inputTokenDetails || usage.outputTokenDetails);
  const name = providerName(provider);
  const anthropic = providerMetadata?.anthropic;
  if (isV6 || name !== "anthropic" || !("inputTokens" in usage)) return fromAiSdkUsage(usage);
  // AI SDK v5 + Anthropic: inputTokens excludes cache reads and writes.
  const raw = (anthropic?.usage ?? {}) as Record<string, unknown>;
  const num = (v: unknown): number | undefined => (typeof v === "number" && Number.isInteger(v) && v >= 0 ? v : undefined);
  const cacheWrite = num(anthropic?.cacheCreationInputTokens) ?? num(raw.cache_creation_input_tokens) ?? 0;
  const cacheRead = num(anthropic?.cacheReadInputTokens) ?? num(raw.cache_read_input_tokens);
  const withReads: AiSdkUsage =
    cacheRead !== undefined && !has(usage, "cachedInputTokens") ? { ...usage, cachedInputTokens: cacheRead } : usage;
  return fromAiSdkUsage(withReads, { inputExcludesCache: true, cacheWrite });
}

/**
 * A `usageHandler` for `new Agent(components.agent, { usageHandler })` of
 * `@convex-dev/agent`: records one `tokens` entry per LLM call and (by default) waits
 * until it is delivered. No runtime dependency on Convex.
 *
 * ```ts
 * const recorder = new UsageRecorder({ transport: httpTransport({ url, apiKey }), userId: "system" });
 * export const agent = new Agent(components.agent, { ..., usageHandler: convexUsageHandler({ recorder }) });
 * ```
 */
export function convexUsageHandler(options: ConvexUsageHandlerOptions): ConvexUsageHandler {
  const runs = new Map<string, RunHandle>(); // warm-instance cache: keeps step counts per run
  const getRecorder = async (): Promise<UsageRecorder> =>
    typeof options.recorder === "function" ? await options.recorder() : options.recorder;
  return async (_ctx, args) => {
    const recorder = await getRecorder();
    await recorder.ensureStarted();
    const fallbackUser = typeof options.userId === "function" ? options.userId(args) : options.userId;
    const userId = args.userId ?? fallbackUser ?? recorder.userId;
    const runId = options.runId?.(args) ?? args.threadId;
    let run = runId ? runs.get(runId) : undefined;
    if (!run) {
      const agentName = args.agentName ?? options.agentName;
      const tenantId = options.tenantId;
      run = recorder.run({
        ...(runId ? { runId } : {}),
        userId,
        ...(agentName ? { agentName } : {}),
        ...(args.threadId ? { threadId: args.threadId } : {}),
        ...(tenantId ? { tenantId } : {}),
      });
      if (runId) {
        runs.set(runId, run);
        if (runs.size > 1000) runs.delete(runs.keys().next().value as string);
      }
    }
    const t = tokensFromProviderCall(args.usage, args.provider, args.providerMetadata);
    const provider = providerName(args.provider);
    await run.recordUsage(args.model, t, provider ? { provider } : {});
    if (options.flush ?? true) await recorder.flush();
  };
}
