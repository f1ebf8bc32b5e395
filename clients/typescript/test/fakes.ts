import type { EncodedEntry, SendResult, Transport } from "../src/transports/transport.js";
import type { UsageEntry } from "../src/types.js";

/** In-memory transport: records batches; `fail`/`gate` simulate outages and slowness. */
export class FakeTransport implements Transport {
  readonly description = "fake transport";
  readonly batches: EncodedEntry[][] = [];
  started = false;
  closed = false;
  fail: Error | null = null;
  startError: Error | null = null;
  private gate: Promise<void> | null = null;
  private openGate: (() => void) | null = null;

  constructor(readonly maxBatchEntries = 100) {}

  get entries(): UsageEntry[] {
    return this.batches.flat().map((e) => JSON.parse(Buffer.from(e.value).toString("utf8")) as UsageEntry);
  }

  hold(): void {
    this.gate = new Promise((resolve) => (this.openGate = resolve));
  }

  release(): void {
    this.openGate?.();
    this.gate = null;
  }

  async start(): Promise<void> {
    if (this.startError) throw this.startError;
    this.started = true;
  }

  async send(batch: readonly EncodedEntry[]): Promise<SendResult> {
    if (this.gate) await this.gate;
    if (this.fail) throw this.fail;
    this.batches.push([...batch]);
    return { rejected: [] };
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}
