/**
 * Kafka transport (Node.js): a kafkajs idempotent producer, acks = -1 (all in-sync
 * replicas), one request in flight per broker, key = runId (so a run's entries stay in
 * order on one partition, with the Java-compatible murmur2 partitioner that the Python
 * producers use too).
 *
 * kafkajs retries a request itself; on top of that every batch has a delivery deadline:
 * whatever kafkajs gives up on before it (broker down, leader unknown) is sent again with
 * the same bytes, hence the same entry ids, which the processor de-duplicates. A producer
 * that kafkajs declares broken is replaced. Permanent broker errors (authorization,
 * record too large, ...) fail the batch at once.
 */
import kafkajs from "kafkajs";
import type { Kafka as KafkaT, KafkaConfig, Producer, SASLOptions } from "kafkajs";
import { TransportError } from "../errors.js";
import { backoffMs, sleep, type EncodedEntry, type SendResult, type Transport } from "./transport.js";

const { Kafka, Partitioners, logLevel } = kafkajs;

export interface KafkaTransportOptions {
  /** Bootstrap servers: `"host:9092"`, `"h1:9092,h2:9092"` or an array. */
  brokers: string | string[];
  /** Default `usage.entries`. */
  topic?: string;
  clientId?: string;
  ssl?: KafkaConfig["ssl"];
  sasl?: SASLOptions;
  /** Per-request timeout (default 30 s). */
  requestTimeoutMs?: number;
  /** TCP connect timeout (default 3 s). */
  connectionTimeoutMs?: number;
  /** First delay between attempts of the outer retry loop (default 250 ms, up to 5 s). */
  retryBackoffMs?: number;
  /** Entries per produce call (default 500). */
  maxBatchEntries?: number;
  /** kafkajs log level name (default "warn"; "nothing" silences it). */
  logLevel?: "nothing" | "error" | "warn" | "info" | "debug";
  /** Extra kafkajs client settings (merged over the defaults above). */
  kafkaConfig?: Partial<KafkaConfig>;
}

const LEVELS = { nothing: 0, error: 1, warn: 2, info: 4, debug: 5 } as const;

/** Broker answers that no retry can fix. */
const PERMANENT = new Set([
  "MESSAGE_TOO_LARGE",
  "RECORD_LIST_TOO_LARGE",
  "INVALID_RECORD",
  "CORRUPT_MESSAGE",
  "INVALID_REQUIRED_ACKS",
  "TOPIC_AUTHORIZATION_FAILED",
  "CLUSTER_AUTHORIZATION_FAILED",
  "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
  "SASL_AUTHENTICATION_FAILED",
  "INVALID_TOPIC_EXCEPTION",
  "UNSUPPORTED_VERSION",
]);

function describe(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const cause = (err as { originalError?: unknown; cause?: unknown }).originalError ?? err.cause;
  const base = `${err.name}: ${err.message}`;
  return cause instanceof Error && cause.message !== err.message ? `${base} (${cause.message})` : base;
}

function isPermanent(err: unknown): boolean {
  const e = err as { type?: string; name?: string; originalError?: unknown };
  if (e?.type && PERMANENT.has(e.type)) return true;
  if (e?.name === "KafkaJSSASLAuthenticationError") return true;
  const inner = e?.originalError as { type?: string } | undefined;
  return Boolean(inner?.type && PERMANENT.has(inner.type));
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TransportError(`${what} timed out after ${ms} ms`, { retriable: true })), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export class KafkaTransport implements Transport {
  readonly description: string;
  readonly maxBatchEntries: number;
  readonly topic: string;
  private readonly brokers: string[];
  private readonly kafka: KafkaT;
  private readonly retryBackoffMs: number;
  private producer: Producer | null = null;
  private connected: Promise<void> | null = null;

  constructor(options: KafkaTransportOptions) {
    this.brokers = (Array.isArray(options.brokers) ? options.brokers : options.brokers.split(","))
      .map((b) => b.trim())
      .filter(Boolean);
    if (!this.brokers.length) throw new TypeError("KafkaTransport: brokers is required");
    this.topic = options.topic ?? "usage.entries";
    this.description = `Kafka at ${this.brokers.join(",")} (topic ${this.topic})`;
    this.maxBatchEntries = options.maxBatchEntries ?? 500;
    this.retryBackoffMs = options.retryBackoffMs ?? 250;
    const config: KafkaConfig = {
      brokers: this.brokers,
      clientId: options.clientId ?? "usage-client-ts",
      connectionTimeout: options.connectionTimeoutMs ?? 3_000,
      requestTimeout: options.requestTimeoutMs ?? 30_000,
      logLevel: LEVELS[options.logLevel ?? "warn"],
      retry: { initialRetryTime: 100, maxRetryTime: 2_000, retries: 5 },
      ...options.kafkaConfig,
    };
    if (options.ssl !== undefined) config.ssl = options.ssl;
    if (options.sasl !== undefined) config.sasl = options.sasl;
    this.kafka = new Kafka(config);
  }

  private newProducer(): Producer {
    return this.kafka.producer({
      idempotent: true,
      maxInFlightRequests: 1,
      allowAutoTopicCreation: false,
      createPartitioner: Partitioners.DefaultPartitioner,
      retry: { initialRetryTime: 100, maxRetryTime: 2_000, retries: 5 },
    });
  }

  private connect(): Promise<void> {
    if (!this.connected) {
      const producer = this.newProducer();
      this.producer = producer;
      this.connected = producer.connect().catch((err: unknown) => {
        this.connected = null;
        this.producer = null;
        void producer.disconnect().catch(() => undefined);
        throw err;
      });
    }
    return this.connected;
  }

  private async reset(): Promise<void> {
    const producer = this.producer;
    this.producer = null;
    this.connected = null;
    if (producer) await producer.disconnect().catch(() => undefined);
  }

  /** Connect and check that the topic exists, within `timeoutMs`. */
  async start(timeoutMs: number): Promise<void> {
    const admin = this.kafka.admin();
    const check = async (): Promise<void> => {
      await this.connect();
      await admin.connect();
      try {
        const meta = await admin.fetchTopicMetadata({ topics: [this.topic] });
        const partitions = meta.topics[0]?.partitions.length ?? 0;
        if (!partitions) throw new Error(`topic ${this.topic} has no partitions`);
      } finally {
        await admin.disconnect().catch(() => undefined);
      }
    };
    try {
      await withTimeout(check(), timeoutMs, "connecting");
    } catch (err) {
      await admin.disconnect().catch(() => undefined);
      await this.reset();
      const reason = err instanceof TransportError ? "no broker answered" : describe(err);
      throw new TransportError(`cannot connect within ${timeoutMs} ms: ${reason}`, {
        retriable: false,
        cause: err,
      });
    }
  }

  async send(batch: readonly EncodedEntry[], deadline: number): Promise<SendResult> {
    const messages = batch.map((e) => ({
      key: e.key,
      value: Buffer.from(e.value.buffer, e.value.byteOffset, e.value.byteLength),
    }));
    let attempt = 0;
    let last: unknown;
    for (;;) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) {
        throw new TransportError(
          `${batch.length} entries not acknowledged by ${this.description} before the delivery deadline` +
            (last ? `: ${describe(last)}` : ""),
          { retriable: false, cause: last },
        );
      }
      try {
        await withTimeout(
          (async () => {
            await this.connect();
            await (this.producer as Producer).send({ topic: this.topic, acks: -1, messages });
          })(),
          remaining,
          "produce",
        );
        return { rejected: [] };
      } catch (err) {
        last = err;
        if (isPermanent(err)) {
          throw new TransportError(`${this.description} refused ${batch.length} entries: ${describe(err)}`, {
            retriable: false,
            cause: err,
          });
        }
        // kafkajs gave up (retries exhausted, connection lost, sequence error): start
        // over with a fresh producer; duplicates are harmless (same entry ids).
        await this.reset();
      }
      await sleep(Math.min(backoffMs(attempt++, this.retryBackoffMs, 5_000), Math.max(0, deadline - Date.now())));
    }
  }

  async close(): Promise<void> {
    await this.reset();
  }
}

/** `new KafkaTransport(options)`. */
export function kafkaTransport(options: KafkaTransportOptions): KafkaTransport {
  return new KafkaTransport(options);
}
