import type { UsageEntry } from "../types.js";
import type { RejectionCode } from "../validate.js";

/** One validated entry, ready to send: the Kafka key (its runId) and the wire bytes. */
export interface EncodedEntry {
  readonly id: string;
  readonly key: string;
  readonly value: Uint8Array;
  readonly entry: UsageEntry;
}

/** An entry the server refused (HTTP ingest); it is in the dead-letter topic. */
export interface ServerRejection {
  readonly entry: UsageEntry;
  readonly error: { code: RejectionCode; message: string; field: string | null };
}

export interface SendResult {
  readonly rejected: readonly ServerRejection[];
}

/**
 * Where entries go. `send` delivers one batch (acknowledged by the broker when it
 * resolves), retrying transient failures until `deadline` (epoch ms); it throws when the
 * batch could not be delivered. Sending the same entries twice is harmless: the processor
 * de-duplicates on the entry `id`.
 */
export interface Transport {
  /** For messages: "Kafka at host:9092 (topic usage.entries)", "HTTP http://host/v1/entries". */
  readonly description: string;
  /** Largest number of entries `send` should be given at once. */
  readonly maxBatchEntries: number;
  start(timeoutMs: number): Promise<void>;
  send(batch: readonly EncodedEntry[], deadline: number): Promise<SendResult>;
  close(): Promise<void>;
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

/** Exponential back-off with full jitter, capped. */
export function backoffMs(attempt: number, baseMs: number, maxMs: number): number {
  const cap = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 16));
  return cap / 2 + Math.random() * (cap / 2);
}
