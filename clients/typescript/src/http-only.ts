/**
 * Everything except the Kafka transport: for serverless, Convex and edge runtimes, where
 * `kafkajs` (which needs `node:net`/`node:tls`) cannot be bundled. `import ... from "@usage-stream/client/http"`.
 */
export * from "./types.js";
export {
  DEFAULT_MAX_BYTES,
  EntryValidationError,
  MAX_FUTURE_MS,
  MIN_TIMESTAMP_MS,
  REJECTION_CODES,
  encodeEntry,
  parseEntry,
  validateEntry,
  type RejectionCode,
} from "./validate.js";
export { TransportError, UsageRecorderError } from "./errors.js";
export { uuidv7 } from "./ids.js";
export { UsageRecorder, type RecorderStats, type UsageRecorderOptions } from "./recorder.js";
export {
  ChildRun,
  MAX_ERROR_CHARS,
  MetricDefinition,
  RunHandle,
  type RecordTokensOptions,
  type RecordToolOptions,
  type RecordUsageOptions,
  type RunOptions,
  type TokenCounts,
} from "./run.js";
export {
  convexUsageHandler,
  fromAiSdkUsage,
  providerName,
  tokensFromProviderCall,
  type AiSdkUsage,
  type ConvexUsageArgs,
  type ConvexUsageHandler,
  type ConvexUsageHandlerOptions,
  type FromAiSdkOptions,
  type TokenUsage,
} from "./adapters.js";
export {
  UsageApiError,
  UsageReader,
  usageReader,
  type Budget,
  type BudgetLevel,
  type Budgets,
  type BudgetsQuery,
  type UsageReaderOptions,
} from "./reader.js";
export { HttpTransport, httpTransport, type HttpTransportOptions } from "./transports/http.js";
export type { EncodedEntry, SendResult, ServerRejection, Transport } from "./transports/transport.js";
