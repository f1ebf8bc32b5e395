/**
 * Read side over the HTTP API: `GET {baseUrl}/v1/budgets` (CONTRACT §3.8). Uses only
 * `fetch`, so it runs wherever `fetch` does (Node, serverless, edge, Convex actions).
 *
 * Decimal figures (`observed`, thresholds, `remaining`) stay decimal strings, as money does
 * elsewhere in this client: compare them with a decimal library or `Number(...)` when the
 * precision loss does not matter.
 */

/** A budget's state: `critical` means the rule's critical threshold has been reached. */
export type BudgetLevel = "ok" | "warning" | "critical";

/** One configured rule applied to a user's current window or to a run's tree. */
export interface Budget {
  /** Rule name, e.g. `"user-daily-spend"`. */
  rule: string;
  subject: { type: "user" | "run"; id: string };
  /** Epoch milliseconds; `end` is null for a run's lifetime (`kind: "run"`), `start` null for an unknown run. */
  window: { kind: "hour" | "day" | "month" | "run"; start: number | null; end: number | null };
  /** `"costUsd"`, `"tokens"`, `"toolFailureRate"`, ... */
  metric: string;
  /** Decimal string. */
  observed: string;
  /** Decimal strings; null when the rule has no such threshold. */
  thresholds: { warning: string | null; critical: string | null };
  level: BudgetLevel;
  /** The critical (else warning) threshold minus observed, never below "0" (decimal string). */
  remaining: string;
}

/** `GET /v1/budgets`: `exceeded` is true when any listed rule is at `critical`. */
export interface Budgets {
  budgets: Budget[];
  exceeded: boolean;
}

/** At least one of them. */
export interface BudgetsQuery {
  userId?: string;
  runId?: string;
}

export interface UsageReaderOptions {
  /** Base URL of the usage-stream API, e.g. `http://localhost:6066`. */
  url: string;
  /** API key, sent as `Authorization: Bearer <key>` (required when the server has keys configured). */
  apiKey?: string;
  /** Extra request headers. */
  headers?: Record<string, string>;
  /** Timeout of one request (default 10 s). */
  requestTimeoutMs?: number;
  /** A `fetch` implementation (default: the global one). */
  fetch?: typeof fetch;
}

/**
 * The HTTP API answered with an error (`status`/`code` from its §3.7 body), answered
 * something unexpected (`code` "bad_response"), or could not be reached (`status` 0,
 * `code` "unreachable").
 */
export class UsageApiError extends Error {
  override name = "UsageApiError";
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string, options?: { cause?: unknown }) {
    super(status ? `HTTP ${status} ${code}: ${message}` : message, options);
    this.status = status;
    this.code = code;
  }
}

const LEVELS: readonly string[] = ["ok", "warning", "critical"];
const DECIMAL = /^-?\d+(\.\d+)?$/;

export class UsageReader {
  private readonly baseUrl: string;
  private readonly headers: Record<string, string>;
  private readonly requestTimeoutMs: number;
  private readonly fetchImpl: typeof fetch;

  constructor(options: UsageReaderOptions) {
    if (!options.url) throw new TypeError("UsageReader: url is required");
    this.baseUrl = options.url.replace(/\/+$/, "");
    this.headers = { accept: "application/json", ...options.headers };
    if (options.apiKey) this.headers.authorization = `Bearer ${options.apiKey}`;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
    const f = options.fetch ?? globalThis.fetch;
    if (typeof f !== "function") throw new TypeError("UsageReader: no fetch implementation available");
    this.fetchImpl = f;
  }

  /**
   * `GET /v1/budgets?userId=&runId=`: the budgets of a user's current hour/day/month windows
   * and/or of a run's tree (sub-agents included). Ask before the next LLM call and stop the
   * run when `exceeded` is true.
   */
  async budgets(query: BudgetsQuery): Promise<Budgets> {
    const params = new URLSearchParams();
    if (query.userId !== undefined) params.set("userId", query.userId);
    if (query.runId !== undefined) params.set("runId", query.runId);
    if (!params.size) throw new TypeError("UsageReader.budgets: give userId, runId or both");
    const body = await this.get(`/v1/budgets?${params.toString()}`);
    try {
      return parseBudgets(body);
    } catch (problem) {
      throw new UsageApiError(200, "bad_response", `/v1/budgets answered an unexpected body: ${String(problem)}`);
    }
  }

  private async get(pathAndQuery: string): Promise<unknown> {
    const url = this.baseUrl + pathAndQuery;
    let response: Response;
    try {
      response = await this.fetchImpl(url, {
        method: "GET",
        headers: this.headers,
        signal: AbortSignal.timeout(this.requestTimeoutMs),
      });
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause;
      const detail = cause?.code ? `${(err as Error).message} (${cause.code})` : (err as Error).message;
      throw new UsageApiError(0, "unreachable", `GET ${url} failed: ${detail}`, { cause: err });
    }
    const text = await response.text().catch(() => "");
    if (!response.ok) {
      let code = "http_error";
      let message = text.slice(0, 500);
      try {
        const e = (JSON.parse(text) as { error?: { code?: unknown; message?: unknown } }).error;
        if (typeof e?.code === "string" && typeof e.message === "string") {
          code = e.code;
          message = e.message;
        }
      } catch {
        // not JSON: keep the text
      }
      throw new UsageApiError(response.status, code, message);
    }
    try {
      return JSON.parse(text) as unknown;
    } catch {
      throw new UsageApiError(response.status, "bad_response", `${url} did not answer JSON: ${text.slice(0, 200)}`);
    }
  }
}

/** `new UsageReader(options)`. */
export function usageReader(options: UsageReaderOptions): UsageReader {
  return new UsageReader(options);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

const isMs = (v: unknown): boolean => typeof v === "number" && Number.isInteger(v);

/** The §3.8 answer in `body`, normalized (a missing threshold or window bound becomes null); throws a string naming what is wrong. */
function parseBudgets(body: unknown): Budgets {
  if (!isObject(body) || typeof body.exceeded !== "boolean" || !Array.isArray(body.budgets)) {
    throw "want {budgets: [...], exceeded: boolean}";
  }
  const budgets = body.budgets.map((b: unknown, i): Budget => {
    const at = `budgets[${i}]`;
    if (!isObject(b) || !isObject(b.subject) || !isObject(b.window)) throw `${at}: not a budget`;
    const { subject: s, window: w } = b;
    const t = isObject(b.thresholds) ? b.thresholds : {};
    if (typeof b.rule !== "string" || typeof b.metric !== "string") throw `${at}: rule and metric must be strings`;
    if (typeof s.type !== "string" || typeof s.id !== "string") throw `${at}.subject`;
    if (typeof w.kind !== "string" || !(w.start == null || isMs(w.start)) || !(w.end == null || isMs(w.end))) throw `${at}.window`;
    if (typeof b.level !== "string" || !LEVELS.includes(b.level)) throw `${at}.level: ${String(b.level)}`;
    return {
      rule: b.rule,
      subject: { type: s.type as Budget["subject"]["type"], id: s.id },
      window: { kind: w.kind as Budget["window"]["kind"], start: (w.start as number | undefined) ?? null, end: (w.end as number | undefined) ?? null },
      metric: b.metric,
      observed: decimal(b.observed, `${at}.observed`),
      thresholds: {
        warning: optDecimal(t.warning, `${at}.thresholds.warning`),
        critical: optDecimal(t.critical, `${at}.thresholds.critical`),
      },
      level: b.level as BudgetLevel,
      remaining: decimal(b.remaining, `${at}.remaining`),
    };
  });
  return { budgets, exceeded: body.exceeded };
}

function decimal(v: unknown, at: string): string {
  if (typeof v !== "string" || !DECIMAL.test(v)) throw `${at}: ${JSON.stringify(v)} is not a decimal string`;
  return v;
}

function optDecimal(v: unknown, at: string): string | null {
  return v == null ? null : decimal(v, at);
}
