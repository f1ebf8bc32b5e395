export * from "./http-only.js";
export { KafkaTransport, kafkaTransport, type KafkaTransportOptions } from "./transports/kafka.js";
export {
  KafkaSecurityError,
  kafkaSecurityFromEnv,
  type KafkaSecurityOptions,
  type KafkaSecurityProtocol,
} from "./transports/kafka-security.js";
