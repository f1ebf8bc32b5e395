export { EntryValidationError, type RejectionCode } from "./validate.js";

/**
 * The recorder cannot deliver entries: the transport unreachable at start, entries not
 * acknowledged within the delivery timeout, a permanent transport error (e.g. HTTP 401),
 * entries rejected by the server, or use after close.
 */
export class UsageRecorderError extends Error {
  override name = "UsageRecorderError";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** A transport failure; `retriable` tells the recorder whether trying again may help. */
export class TransportError extends Error {
  override name = "TransportError";
  readonly retriable: boolean;
  readonly status: number | undefined;
  constructor(message: string, options: { retriable: boolean; status?: number; cause?: unknown }) {
    super(message, { cause: options.cause });
    this.retriable = options.retriable;
    this.status = options.status;
  }
}
