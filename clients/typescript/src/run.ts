/**
 * One agent run: builds entries of every kind and hands them to the recorder.
 *
 * Step counting (as in the Python client): `stepCount` is the number of LLM calls
 * recorded in the run so far. Each `recordTokens`/`recordUsage` starts a new step
 * (1, 2, 3, ...); tool, sub-agent and custom entries carry the current step, i.e. the LLM
 * call that led to them (0 before the first call). `step` on any call overrides it (and
 * moves the counter there).
 */
import { fromAiSdkUsage, type AiSdkUsage, type TokenUsage } from "./adapters.js";
import { uuidv7 } from "./ids.js";
import type { Source, UsageEntry } from "./types.js";

/** Error messages of failed tool / sub-agent calls are cut to this many characters. */
export const MAX_ERROR_CHARS = 2000;

/** A custom metric type declared with `UsageRecorder.defineMetric`. */
export class MetricDefinition {
  constructor(
    readonly type: string,
    readonly description: string,
  ) {}
}

/** What a run hands its entries to (the recorder). */
export interface EntrySink {
  submit(entry: Record<string, unknown>): Promise<string>;
  metricType(metric: string | MetricDefinition): string;
  now(): number;
}

export interface RunOptions {
  /** Default: a new UUIDv7. */
  runId?: string;
  userId?: string;
  tenantId?: string;
  agentName?: string;
  threadId?: string;
  parentRunId?: string;
  source?: Source;
}

interface Common {
  /** Override the step (and move the run's counter there). */
  step?: number;
  /** Event time, epoch ms (default: now). */
  timestampMs?: number;
}

export interface TokenCounts {
  prompt?: number;
  completion?: number;
  reasoning?: number;
  cached?: number;
  cacheWrite?: number;
  total?: number;
}

export interface RecordTokensOptions extends TokenCounts, Common {
  provider?: string;
  /** Producer-reported cost: a plain decimal string (e.g. "0.00123"); wins over the price catalog. */
  costUsd?: string;
}

export interface RecordToolOptions extends Common {
  durationMs: number;
  success?: boolean;
  error?: string;
}

export interface RecordUsageOptions extends Omit<RecordTokensOptions, keyof TokenCounts> {
  /** AI SDK v5 only: the provider's `inputTokens` excludes cache reads/writes (Anthropic). */
  inputExcludesCache?: boolean;
  /** Cache writes reported outside the usage object (e.g. Anthropic provider metadata). */
  cacheWrite?: number;
}

function errorText(err: unknown): string {
  const text =
    err instanceof Error ? (err.message ? `${err.name}: ${err.message}` : err.name) : String(err ?? "error");
  return text.slice(0, MAX_ERROR_CHARS);
}

const elapsedMs = (started: number): number => Math.round(Math.max(0, performance.now() - started) * 1000) / 1000;

/** Records the entries of one run; obtained from `UsageRecorder.run()`. */
export class RunHandle {
  readonly runId: string;
  readonly userId: string;
  readonly tenantId: string | undefined;
  readonly agentName: string | undefined;
  readonly threadId: string | undefined;
  readonly parentRunId: string | undefined;
  readonly source: Source | undefined;
  private stepCounter = 0;

  constructor(
    private readonly sink: EntrySink,
    options: RunOptions & { userId: string },
  ) {
    this.runId = options.runId ?? uuidv7();
    this.userId = options.userId;
    this.tenantId = options.tenantId;
    this.agentName = options.agentName;
    this.threadId = options.threadId;
    this.parentRunId = options.parentRunId;
    this.source = options.source;
  }

  /** The current `stepCount`: LLM calls recorded in this run so far. */
  get step(): number {
    return this.stepCounter;
  }

  /** Advance the step counter by hand (e.g. for an agent step without an LLM call). */
  nextStep(): number {
    return ++this.stepCounter;
  }

  private base(kind: UsageEntry["kind"], step: number | undefined, timestampMs: number | undefined): Record<string, unknown> {
    if (step !== undefined) this.stepCounter = step;
    const entry: Record<string, unknown> = {
      id: uuidv7(),
      kind,
      runId: this.runId,
      userId: this.userId,
      timestamp: timestampMs ?? this.sink.now(),
      stepCount: this.stepCounter,
    };
    if (this.tenantId !== undefined) entry.tenantId = this.tenantId;
    if (this.agentName !== undefined) entry.agentName = this.agentName;
    if (this.threadId !== undefined) entry.threadId = this.threadId;
    if (this.parentRunId !== undefined) entry.parentRunId = this.parentRunId;
    if (this.source !== undefined) entry.source = this.source;
    return entry;
  }

  /**
   * One LLM call, counts in contract semantics (prompt includes cached reads and cache
   * writes, completion includes reasoning). Starts a new step. Resolves to the entry id
   * once the entry is validated and buffered (see `UsageRecorder.flush` for delivery).
   */
  async recordTokens(model: string, options: RecordTokensOptions): Promise<string> {
    const previous = this.stepCounter;
    if (options.step === undefined) this.stepCounter++;
    const entry = this.base("tokens", options.step, options.timestampMs);
    entry.model = model;
    if (options.provider !== undefined) entry.provider = options.provider;
    const tokens: Record<string, number> = {};
    for (const k of ["prompt", "completion", "reasoning", "cached", "cacheWrite", "total"] as const) {
      const v = options[k];
      if (v !== undefined && v !== null) tokens[k] = v;
    }
    entry.tokens = tokens;
    if (options.costUsd !== undefined) entry.costUsd = options.costUsd;
    try {
      return await this.sink.submit(entry);
    } catch (err) {
      this.stepCounter = previous; // a rejected call is not a step
      throw err;
    }
  }

  /** `recordTokens` from an AI SDK `LanguageModelUsage` (v4, v5 or v6+) or a {@link TokenUsage}. */
  async recordUsage(model: string, usage: AiSdkUsage | TokenUsage, options: RecordUsageOptions = {}): Promise<string> {
    const { inputExcludesCache, cacheWrite, ...rest } = options;
    const t = fromAiSdkUsage(usage, {
      ...(inputExcludesCache !== undefined ? { inputExcludesCache } : {}),
      ...(cacheWrite !== undefined ? { cacheWrite } : {}),
    });
    return this.recordTokens(model, {
      ...rest,
      prompt: t.prompt,
      completion: t.completion,
      ...(t.reasoning ? { reasoning: t.reasoning } : {}),
      ...(t.cached ? { cached: t.cached } : {}),
      ...(t.cacheWrite ? { cacheWrite: t.cacheWrite } : {}),
    });
  }

  /** One tool call. */
  async recordTool(toolName: string, options: RecordToolOptions): Promise<string> {
    const entry = this.base("tool", options.step, options.timestampMs);
    entry.toolName = toolName;
    entry.durationMs = options.durationMs;
    entry.success = options.success ?? true;
    if (options.error !== undefined) entry.error = options.error.slice(0, MAX_ERROR_CHARS);
    return this.sink.submit(entry);
  }

  /**
   * `await run.tool("search", () => search(q))` times `fn` and records a tool entry:
   * success when it resolves, failure (with the error) when it throws or rejects; the
   * result is returned and the error rethrown.
   */
  async tool<T>(toolName: string, fn: () => T | Promise<T>): Promise<T> {
    const started = performance.now();
    let result: T;
    try {
      result = await fn();
    } catch (err) {
      await this.recordTool(toolName, { durationMs: elapsedMs(started), success: false, error: errorText(err) });
      throw err;
    }
    await this.recordTool(toolName, { durationMs: elapsedMs(started), success: true });
    return result;
  }

  /** One sub-agent invocation; links this run to `subAgentRunId`. */
  async recordSubagent(subAgentType: string, subAgentRunId: string, options: RecordToolOptions): Promise<string> {
    const entry = this.base("subagent", options.step, options.timestampMs);
    entry.subAgentType = subAgentType;
    entry.subAgentRunId = subAgentRunId;
    entry.durationMs = options.durationMs;
    entry.success = options.success ?? true;
    if (options.error !== undefined) entry.error = options.error.slice(0, MAX_ERROR_CHARS);
    return this.sink.submit(entry);
  }

  /**
   * A handle for a sub-agent's run: its entries carry `parentRunId` = this run. Link the
   * other way with {@link recordSubagent}, or use {@link startChild} / {@link subagent}.
   */
  child(options: { runId?: string; agentName?: string; userId?: string } = {}): RunHandle {
    return new RunHandle(this.sink, {
      runId: options.runId ?? uuidv7(),
      userId: options.userId ?? this.userId,
      ...(this.tenantId !== undefined ? { tenantId: this.tenantId } : {}),
      ...(options.agentName !== undefined ? { agentName: options.agentName } : {}),
      ...(this.threadId !== undefined ? { threadId: this.threadId } : {}),
      parentRunId: this.runId,
    });
  }

  /**
   * Start a sub-agent run now; `await child.finish()` (or `finish({ error })`) records the
   * `subagent` entry on this run with the elapsed time, linking both ways.
   */
  startChild(subAgentType: string, options: { runId?: string; agentName?: string } = {}): ChildRun {
    const child = this.child({ ...options, agentName: options.agentName ?? subAgentType });
    return new ChildRun(this, child, subAgentType);
  }

  /**
   * `await run.subagent("researcher", async (child) => ...)`: runs `fn` with the child run
   * (`parentRunId` = this run), then records the `subagent` entry on this run
   * (`subAgentRunId` = the child) with the duration and success; an error is recorded as
   * a failure and rethrown.
   */
  async subagent<T>(
    subAgentType: string,
    fn: (child: RunHandle) => T | Promise<T>,
    options: { runId?: string; agentName?: string } = {},
  ): Promise<T> {
    const started = this.startChild(subAgentType, options);
    let result: T;
    try {
      result = await fn(started.run);
    } catch (err) {
      await started.finish({ error: err });
      throw err;
    }
    await started.finish();
    return result;
  }

  /**
   * A custom metric: `metric` is its type (e.g. `api_calls`, or a definition from
   * `defineMetric`), `name` what it counts (e.g. `tavily`), `value` a finite number.
   */
  async recordCustom(metric: string | MetricDefinition, name: string, value: number, options: Common = {}): Promise<string> {
    const entry = this.base("custom", options.step, options.timestampMs);
    entry.type = this.sink.metricType(metric);
    entry.name = name;
    entry.value = value;
    return this.sink.submit(entry);
  }
}

/** A started sub-agent run (from `RunHandle.startChild`). */
export class ChildRun {
  private readonly started = performance.now();
  private finished = false;

  constructor(
    readonly parent: RunHandle,
    readonly run: RunHandle,
    readonly subAgentType: string,
  ) {}

  get runId(): string {
    return this.run.runId;
  }

  /** Record the `subagent` entry on the parent run: failure when `error` is given. Once only. */
  async finish(options: { error?: unknown; success?: boolean } = {}): Promise<string> {
    if (this.finished) throw new Error(`sub-agent run ${this.run.runId} already finished`);
    this.finished = true;
    const failed = options.error !== undefined || options.success === false;
    return this.parent.recordSubagent(this.subAgentType, this.run.runId, {
      durationMs: elapsedMs(this.started),
      success: !failed,
      ...(options.error !== undefined ? { error: errorText(options.error) } : {}),
    });
  }
}
