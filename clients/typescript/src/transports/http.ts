/**
 * HTTP transport: `POST {baseUrl}/v1/entries` with `{"entries": [...]}` (CONTRACT §3.5b),
 * for runtimes that cannot speak the Kafka protocol (serverless functions, Convex actions,
 * edge workers). Uses only `fetch`, so it runs wherever `fetch` does.
 *
 * The server validates each entry, publishes the valid ones to `usage.entries` (broker
 * acknowledged) before it answers 202 `{accepted, rejected: [{index, error}]}`. Batches
 * hold at most 1,000 entries and 5 MiB. 408/429/5xx answers and network errors are retried
 * with exponential back-off (honouring `Retry-After`) until the batch's deadline: entry ids
 * make a retry idempotent, even after a request that reached the server but lost its answer.
 */
import { TransportError } from "../errors.js";
import { backoffMs, sleep, type EncodedEntry, type SendResult, type ServerRejection, type Transport } from "./transport.js";

export const HTTP_MAX_BATCH_ENTRIES = 1000;
export const HTTP_MAX_BATCH_BYTES = 5 * 1024 * 1024;

export interface HttpTransportOptions {
  /** Base URL of the usage-stream API, e.g. `http://localhost:6066` (a trailing `/v1/entries` is accepted too). */
  url: string;
  /** API key, sent as `Authorization: Bearer <key>` (required when the server has keys configured). */
  apiKey?: string;
  /** Extra request headers. */
  headers?: Record<string, string>;
  /** Timeout of one request (default 10 s). */
  requestTimeoutMs?: number;
  /** First retry delay (default 200 ms); doubles per attempt up to `maxBackoffMs` (default 5 s). */
  retryBackoffMs?: number;
  maxBackoffMs?: number;
  /** At most this many entries per request (default and maximum 1,000). */
  maxBatchEntries?: number;
  /** At most this many body bytes per request (default and maximum 5 MiB). */
  maxBatchBytes?: number;
  /** A `fetch` implementation (default: the global one). */
  fetch?: typeof fetch;
}

const RETRIABLE_STATUS = new Set([408, 425, 429, 500, 502, 503, 504]);
const encoder = new TextEncoder();

function entriesUrl(url: string): string {
  const trimmed = url.replace(/\/+$/, "");
  return trimmed.endsWith("/v1/entries") ? trimmed : `${trimmed}/v1/entries`;
}

/** Split a batch into request bodies of at most `maxEntries` entries and `maxBytes` bytes. */
export function chunkBodies(
  batch: readonly EncodedEntry[],
  maxEntries: number,
  maxBytes: number,
): { entries: EncodedEntry[]; body: Uint8Array }[] {
  const head = encoder.encode('{"entries":[');
  const tail = encoder.encode("]}");
  const out: { entries: EncodedEntry[]; body: Uint8Array }[] = [];
  let current: EncodedEntry[] = [];
  let size = head.length + tail.length;
  const finish = (): void => {
    if (!current.length) return;
    const body = new Uint8Array(size);
    body.set(head, 0);
    let at = head.length;
    current.forEach((e, i) => {
      if (i > 0) body[at++] = 0x2c; // ","
      body.set(e.value, at);
      at += e.value.length;
    });
    body.set(tail, at);
    out.push({ entries: current, body });
    current = [];
    size = head.length + tail.length;
  };
  for (const e of batch) {
    const extra = e.value.length + (current.length ? 1 : 0);
    if (current.length && (current.length >= maxEntries || size + extra > maxBytes)) finish();
    size += e.value.length + (current.length ? 1 : 0);
    current.push(e);
  }
  finish();
  return out;
}

interface IngestResponse {
  accepted: number;
  rejected: { index: number; error: { code: string; message: string; field: string | null } }[];
}

export class HttpTransport implements Transport {
  readonly description: string;
  readonly maxBatchEntries: number;
  private readonly url: string;
  private readonly maxBatchBytes: number;
  private readonly headers: Record<string, string>;
  private readonly requestTimeoutMs: number;
  private readonly retryBackoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly fetchImpl: typeof fetch;

  constructor(options: HttpTransportOptions) {
    if (!options.url) throw new TypeError("HttpTransport: url is required");
    this.url = entriesUrl(options.url);
    this.description = `HTTP ${this.url}`;
    this.maxBatchEntries = Math.min(options.maxBatchEntries ?? HTTP_MAX_BATCH_ENTRIES, HTTP_MAX_BATCH_ENTRIES);
    this.maxBatchBytes = Math.min(options.maxBatchBytes ?? HTTP_MAX_BATCH_BYTES, HTTP_MAX_BATCH_BYTES);
    this.headers = { "content-type": "application/json", accept: "application/json", ...options.headers };
    if (options.apiKey) this.headers.authorization = `Bearer ${options.apiKey}`;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
    this.retryBackoffMs = options.retryBackoffMs ?? 200;
    this.maxBackoffMs = options.maxBackoffMs ?? 5_000;
    const f = options.fetch ?? globalThis.fetch;
    if (typeof f !== "function") throw new TypeError("HttpTransport: no fetch implementation available");
    this.fetchImpl = f;
  }

  async start(): Promise<void> {
    // Nothing to connect: serverless callers should not pay for an extra round trip.
  }

  async close(): Promise<void> {}

  async send(batch: readonly EncodedEntry[], deadline: number): Promise<SendResult> {
    const rejected: ServerRejection[] = [];
    for (const chunk of chunkBodies(batch, this.maxBatchEntries, this.maxBatchBytes)) {
      const answer = await this.post(chunk.body, chunk.entries.length, deadline);
      for (const r of answer.rejected) {
        const entry = chunk.entries[r.index];
        if (entry) rejected.push({ entry: entry.entry, error: r.error as ServerRejection["error"] });
      }
    }
    return { rejected };
  }

  private async post(body: Uint8Array, count: number, deadline: number): Promise<IngestResponse> {
    let attempt = 0;
    let last: TransportError | undefined;
    for (;;) {
      const remaining = deadline - Date.now();
      if (remaining <= 0 && attempt > 0) {
        throw new TransportError(
          `${count} entries not accepted by ${this.url} before the delivery deadline` +
            (last ? ` (last error: ${last.message})` : ""),
          { retriable: false, cause: last },
        );
      }
      let retryAfterMs: number | undefined;
      try {
        return await this.once(body, Math.max(1, Math.min(this.requestTimeoutMs, remaining)));
      } catch (err) {
        if (!(err instanceof TransportError) || !err.retriable) throw err;
        last = err;
        retryAfterMs = (err as TransportError & { retryAfterMs?: number }).retryAfterMs;
      }
      const wait = retryAfterMs ?? backoffMs(attempt, this.retryBackoffMs, this.maxBackoffMs);
      attempt++;
      await sleep(Math.min(wait, Math.max(0, deadline - Date.now())));
    }
  }

  private async once(body: Uint8Array, timeoutMs: number): Promise<IngestResponse> {
    let response: Response;
    try {
      response = await this.fetchImpl(this.url, {
        method: "POST",
        headers: this.headers,
        body,
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause;
      const detail = cause?.code ? `${(err as Error).message} (${cause.code})` : (err as Error).message;
      throw new TransportError(`POST ${this.url} failed: ${detail}`, { retriable: true, cause: err });
    }
    const text = await response.text().catch(() => "");
    if (response.status === 202 || response.status === 200) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        throw new TransportError(`POST ${this.url}: answer ${response.status} is not JSON: ${text.slice(0, 200)}`, {
          retriable: false,
          status: response.status,
        });
      }
      const answer = parsed as Partial<IngestResponse>;
      if (typeof answer.accepted !== "number" || !Array.isArray(answer.rejected)) {
        throw new TransportError(`POST ${this.url}: unexpected answer ${text.slice(0, 200)}`, {
          retriable: false,
          status: response.status,
        });
      }
      return answer as IngestResponse;
    }
    let message = text.slice(0, 500);
    try {
      const e = (JSON.parse(text) as { error?: { code?: string; message?: string } }).error;
      if (e?.message) message = `${e.code ?? "error"}: ${e.message}`;
    } catch {
      // not JSON: keep the text
    }
    const err = new TransportError(`POST ${this.url} answered HTTP ${response.status}: ${message}`, {
      retriable: RETRIABLE_STATUS.has(response.status),
      status: response.status,
    });
    const retryAfter = response.headers.get("retry-after");
    if (retryAfter && /^\d+(\.\d+)?$/.test(retryAfter)) {
      (err as TransportError & { retryAfterMs?: number }).retryAfterMs = Math.min(
        Number(retryAfter) * 1000,
        this.maxBackoffMs * 4,
      );
    }
    throw err;
  }
}

/** `new HttpTransport(options)`. */
export function httpTransport(options: HttpTransportOptions): HttpTransport {
  return new HttpTransport(options);
}

