export * from "./http-only.js";
export { KafkaTransport, kafkaTransport, type KafkaTransportOptions } from "./transports/kafka.js";
