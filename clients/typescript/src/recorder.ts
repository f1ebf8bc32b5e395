/**
 * `UsageRecorder`: validated usage entries onto `usage.entries`, over Kafka or HTTP, with a
 * bounded buffer (back-pressure) and a delivery deadline per entry. Mirrors the Python
 * client's `usage_client.UsageRecorder`.
 *
 * - `record*` validates the entry locally with the processor's own rules (an invalid one
 *   throws {@link EntryValidationError} naming the field and is not sent), then waits for
 *   a free buffer slot (at most `maxBuffer` entries recorded but not yet acknowledged) for
 *   up to `deliveryTimeoutMs`, and resolves to the entry id.
 * - A background pump sends batches through the transport, which retries until each
 *   entry's deadline (`deliveryTimeoutMs` from the moment it was recorded).
 * - An entry that could not be delivered (or that the server rejected, unless
 *   `onRejected` handles it) makes every later `record*`, `flush` and `close` throw
 *   {@link UsageRecorderError}.
 * - `flush()` waits until everything recorded is acknowledged; `close()` flushes and
 *   disconnects. `await using recorder = await UsageRecorder.open(...)` does both.
 */
import { EntryValidationError, UsageRecorderError } from "./errors.js";
import { MetricDefinition, RunHandle, type EntrySink, type RunOptions } from "./run.js";
import type { EncodedEntry, ServerRejection, Transport } from "./transports/transport.js";
import type { UsageEntry } from "./types.js";
import { DEFAULT_MAX_BYTES, encodeEntry } from "./validate.js";

export interface UsageRecorderOptions {
  /** Where entries go: `kafkaTransport({...})` or `httpTransport({...})`. */
  transport: Transport;
  /** The billed subject of runs that do not name one. */
  userId: string;
  tenantId?: string;
  agentName?: string;
  threadId?: string;
  /** Entries recorded but not yet acknowledged, at most (default 10,000). */
  maxBuffer?: number;
  /** `start()` fails after this long (default 10 s). */
  startTimeoutMs?: number;
  /** An entry not acknowledged this long after it was recorded is lost (default 120 s). */
  deliveryTimeoutMs?: number;
  /** Wait this long for more entries before sending a batch (default 5 ms). */
  lingerMs?: number;
  /** Largest accepted entry (default 64 KiB, the processor's limit). */
  maxEntryBytes?: number;
  /** Only metric types declared with `defineMetric` may be recorded. */
  strictMetrics?: boolean;
  /**
   * Entries the server refused (HTTP ingest answers 202 with `rejected`; they are in the
   * dead-letter topic). Without a handler they count as failed deliveries.
   */
  onRejected?: (rejections: readonly ServerRejection[]) => void;
  /** Clock for entry timestamps (epoch ms; default `Date.now`). */
  clock?: () => number;
}

export interface RecorderStats {
  /** Recorded, not yet acknowledged. */
  buffered: number;
  delivered: number;
  failed: number;
  rejected: number;
}

interface Pending extends EncodedEntry {
  readonly deadline: number;
}

type State = "new" | "starting" | "running" | "closed";

export class UsageRecorder implements EntrySink, AsyncDisposable {
  readonly transport: Transport;
  readonly userId: string;
  readonly tenantId: string | undefined;
  readonly agentName: string | undefined;
  readonly threadId: string | undefined;
  readonly maxBuffer: number;
  readonly startTimeoutMs: number;
  readonly deliveryTimeoutMs: number;
  readonly lingerMs: number;
  readonly maxEntryBytes: number;
  readonly strictMetrics: boolean;
  private readonly onRejected: UsageRecorderOptions["onRejected"];
  private readonly clock: () => number;

  private state: State = "new";
  private starting: Promise<void> | null = null;
  private readonly queue: Pending[] = [];
  private outstanding = 0;
  private delivered = 0;
  private failed = 0;
  private rejectedCount = 0;
  private error: UsageRecorderError | null = null;
  private lastError: unknown = null;
  private pumping: Promise<void> | null = null;
  private readonly slotWaiters: (() => void)[] = [];
  private readonly idleWaiters: (() => void)[] = [];
  private readonly metricDefs = new Map<string, MetricDefinition>();

  constructor(options: UsageRecorderOptions) {
    if (!options.transport) throw new TypeError("transport: required (kafkaTransport(...) or httpTransport(...))");
    if (typeof options.userId !== "string" || !options.userId) throw new TypeError("userId: must be a non-empty string");
    this.transport = options.transport;
    this.userId = options.userId;
    this.tenantId = options.tenantId;
    this.agentName = options.agentName;
    this.threadId = options.threadId;
    this.maxBuffer = options.maxBuffer ?? 10_000;
    this.startTimeoutMs = options.startTimeoutMs ?? 10_000;
    this.deliveryTimeoutMs = options.deliveryTimeoutMs ?? 120_000;
    this.lingerMs = options.lingerMs ?? 5;
    this.maxEntryBytes = options.maxEntryBytes ?? DEFAULT_MAX_BYTES;
    this.strictMetrics = options.strictMetrics ?? false;
    this.onRejected = options.onRejected;
    this.clock = options.clock ?? Date.now;
    if (!(this.maxBuffer >= 1)) throw new RangeError("maxBuffer: must be >= 1");
    if (!(this.startTimeoutMs > 0)) throw new RangeError("startTimeoutMs: must be > 0");
    if (!(this.deliveryTimeoutMs > 0)) throw new RangeError("deliveryTimeoutMs: must be > 0");
  }

  /** `new UsageRecorder(options)`, started. */
  static async open(options: UsageRecorderOptions): Promise<UsageRecorder> {
    return new UsageRecorder(options).start();
  }

  // --- lifecycle -----------------------------------------------------------------------

  /** Connect the transport (Kafka: reach a broker and find the topic) within `startTimeoutMs`. */
  async start(): Promise<this> {
    if (this.state !== "new") throw new UsageRecorderError(`the recorder cannot start twice (state ${this.state})`);
    await this.ensureStarted();
    return this;
  }

  /** Start unless already started (for lazily created recorders, e.g. in serverless handlers). */
  async ensureStarted(): Promise<void> {
    if (this.state === "running") return;
    if (this.state === "closed") throw new UsageRecorderError("the recorder is closed");
    if (!this.starting) {
      this.state = "starting";
      this.starting = this.transport.start(this.startTimeoutMs).then(
        () => {
          this.state = "running";
        },
        (err: unknown) => {
          this.state = "closed";
          throw new UsageRecorderError(
            `cannot start the usage recorder (${this.transport.description}): ${(err as Error)?.message ?? String(err)}`,
            { cause: err },
          );
        },
      );
    }
    await this.starting;
  }

  /**
   * Wait until every recorded entry is acknowledged; throws {@link UsageRecorderError}
   * when any was not delivered, or after `timeoutMs` (default: `deliveryTimeoutMs` plus
   * a second of grace, so that the transport reports its own, more telling, error first).
   */
  async flush(timeoutMs: number = this.deliveryTimeoutMs + 1000): Promise<void> {
    if (this.outstanding > 0) {
      this.kick();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const idle = new Promise<boolean>((resolve) => this.idleWaiters.push(() => resolve(true)));
      const timeout = new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), timeoutMs);
      });
      const ok = await Promise.race([idle, timeout]);
      clearTimeout(timer);
      if (!ok) {
        throw new UsageRecorderError(
          `${this.outstanding} usage entries not acknowledged by ${this.transport.description} within ${timeoutMs} ms` +
            (this.lastError ? ` (last error: ${(this.lastError as Error).message ?? String(this.lastError)})` : ""),
          { cause: this.lastError },
        );
      }
    }
    this.raiseIfFailed();
  }

  /** Flush, then disconnect; throws like {@link flush}. Idempotent. */
  async close(): Promise<void> {
    if (this.state !== "running") {
      if (this.state === "starting") await this.starting?.catch(() => undefined);
      if ((this.state as State) !== "running") {
        this.state = "closed";
        await this.transport.close().catch(() => undefined);
        return;
      }
    }
    try {
      await this.flush();
    } finally {
      this.state = "closed";
      await this.transport.close().catch(() => undefined);
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // --- runs and metrics ------------------------------------------------------------------

  /** A handle for one run; a UUIDv7 run id is generated when `runId` is not given. */
  run(options: RunOptions = {}): RunHandle {
    const pick = <T>(a: T | undefined, b: T | undefined): { v?: T } => (a !== undefined ? { v: a } : b !== undefined ? { v: b } : {});
    const tenantId = pick(options.tenantId, this.tenantId).v;
    const agentName = pick(options.agentName, this.agentName).v;
    const threadId = pick(options.threadId, this.threadId).v;
    return new RunHandle(this, {
      ...options,
      userId: options.userId ?? this.userId,
      ...(tenantId !== undefined ? { tenantId } : {}),
      ...(agentName !== undefined ? { agentName } : {}),
      ...(threadId !== undefined ? { threadId } : {}),
    });
  }

  /** Declare a custom metric type (e.g. `api_calls`). With `strictMetrics` only declared types may be recorded. */
  defineMetric(type: string, description: string): MetricDefinition {
    if (typeof type !== "string" || type.length < 1 || [...type].length > 200) {
      throw new EntryValidationError("schema", "type: must be a string of 1..200 characters", "type");
    }
    const def = new MetricDefinition(type, description);
    this.metricDefs.set(type, def);
    return def;
  }

  get metrics(): ReadonlyMap<string, MetricDefinition> {
    return new Map(this.metricDefs);
  }

  get stats(): RecorderStats {
    return { buffered: this.outstanding, delivered: this.delivered, failed: this.failed, rejected: this.rejectedCount };
  }

  /** @internal (EntrySink) */
  metricType(metric: string | MetricDefinition): string {
    const name = metric instanceof MetricDefinition ? metric.type : metric;
    if (this.strictMetrics && !this.metricDefs.has(name)) {
      throw new EntryValidationError("schema", `type: metric '${name}' is not defined; call defineMetric() first`, "type");
    }
    return name;
  }

  /** @internal (EntrySink) */
  now(): number {
    return Math.floor(this.clock());
  }

  /** Record a complete entry as is (ids, timestamps and all); resolves to its id. */
  async record(entry: UsageEntry): Promise<string> {
    return this.submit(entry as unknown as Record<string, unknown>);
  }

  // --- submission ------------------------------------------------------------------------

  private raiseIfFailed(): void {
    if (this.error) throw this.error;
  }

  private checkUsable(): void {
    if (this.state !== "running") {
      throw new UsageRecorderError(
        `the recorder is ${this.state}; call \`await recorder.start()\` (or \`UsageRecorder.open(...)\`) first`,
      );
    }
    this.raiseIfFailed();
  }

  /** @internal (EntrySink): validate, wait for buffer space, enqueue; resolves to the entry id. */
  async submit(entry: Record<string, unknown>): Promise<string> {
    this.checkUsable();
    const value = encodeEntry(entry, Date.now());
    if (value.length > this.maxEntryBytes) {
      throw new EntryValidationError("too_large", `entry is ${value.length} bytes; the limit is ${this.maxEntryBytes} bytes`, null);
    }
    await this.acquireSlot();
    try {
      this.checkUsable();
    } catch (err) {
      this.releaseSlots(1);
      throw err;
    }
    const id = String(entry.id);
    this.queue.push({
      id,
      key: String(entry.runId),
      value,
      entry: entry as unknown as UsageEntry,
      deadline: Date.now() + this.deliveryTimeoutMs,
    });
    this.kick();
    return id;
  }

  private async acquireSlot(): Promise<void> {
    if (this.outstanding < this.maxBuffer && this.slotWaiters.length === 0) {
      this.outstanding++;
      return;
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    let waiter: (() => void) | undefined;
    const got = await Promise.race([
      new Promise<boolean>((resolve) => {
        waiter = () => resolve(true);
        this.slotWaiters.push(waiter);
      }),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), this.deliveryTimeoutMs);
      }),
    ]);
    clearTimeout(timer);
    if (!got) {
      const i = this.slotWaiters.indexOf(waiter as () => void);
      if (i >= 0) this.slotWaiters.splice(i, 1);
      throw new UsageRecorderError(
        `the buffer of ${this.maxBuffer} entries stayed full for ${this.deliveryTimeoutMs} ms: ` +
          `${this.transport.description} does not acknowledge entries` +
          (this.lastError ? ` (last error: ${(this.lastError as Error).message ?? String(this.lastError)})` : ""),
      );
    }
    // the slot was handed over by releaseSlots (outstanding already counted)
  }

  private releaseSlots(n: number): void {
    for (let i = 0; i < n; i++) {
      const next = this.slotWaiters.shift();
      if (next) next(); // hand the slot over: outstanding stays the same
      else this.outstanding--;
    }
    if (this.outstanding === 0) {
      for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  // --- delivery --------------------------------------------------------------------------

  private kick(): void {
    if (!this.pumping && this.queue.length) {
      this.pumping = this.pump().finally(() => {
        this.pumping = null;
        if (this.queue.length) this.kick();
      });
    }
  }

  private async pump(): Promise<void> {
    if (this.lingerMs > 0 && this.queue.length < this.transport.maxBatchEntries) {
      await new Promise((resolve) => setTimeout(resolve, this.lingerMs));
    }
    while (this.queue.length) {
      const batch = this.queue.splice(0, this.transport.maxBatchEntries);
      const deadline = Math.min(...batch.map((p) => p.deadline));
      try {
        const result = await this.transport.send(batch, deadline);
        const rejected = result.rejected;
        this.delivered += batch.length - rejected.length;
        if (rejected.length) this.onServerRejections(rejected);
      } catch (err) {
        this.lastError = err;
        this.failed += batch.length;
        this.error ??= new UsageRecorderError(
          `usage entries could not be delivered to ${this.transport.description}: ${(err as Error)?.message ?? String(err)}`,
          { cause: err },
        );
      } finally {
        this.releaseSlots(batch.length);
      }
    }
  }

  private onServerRejections(rejected: readonly ServerRejection[]): void {
    this.rejectedCount += rejected.length;
    if (this.onRejected) {
      try {
        this.onRejected(rejected);
      } catch {
        // a failing callback must not stop delivery
      }
      return;
    }
    this.failed += rejected.length;
    const first = rejected[0] as ServerRejection;
    this.error ??= new UsageRecorderError(
      `${rejected.length} usage entries rejected by ${this.transport.description} ` +
        `(first: entry ${first.entry.id}: ${first.error.code} ${first.error.field ?? ""}: ${first.error.message})`,
    );
  }
}
