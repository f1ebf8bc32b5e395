// The Kafka transport without a broker: clear errors within the deadlines. (The round trip
// against a real broker is tests/integration/test_typescript_client.py.)
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { test } from "node:test";
import { UsageRecorder } from "../src/recorder.js";
import { KafkaTransport } from "../src/transports/kafka.js";
import { encodeEntry } from "../src/validate.js";

async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

test("start fails within startTimeoutMs, naming the brokers and topic", async () => {
  const port = await closedPort();
  const started = Date.now();
  await assert.rejects(
    UsageRecorder.open({
      transport: new KafkaTransport({ brokers: `127.0.0.1:${port}`, topic: "t.entries", logLevel: "nothing" }),
      userId: "u",
      startTimeoutMs: 1500,
    }),
    (err: Error) => {
      assert.equal(err.name, "UsageRecorderError");
      assert.match(err.message, new RegExp(`Kafka at 127\\.0\\.0\\.1:${port} \\(topic t\\.entries\\).*cannot connect within 1500 ms`));
      return true;
    },
  );
  assert.ok(Date.now() - started < 5000);
});

test("send gives up at the deadline with the last error", async () => {
  const port = await closedPort();
  const transport = new KafkaTransport({ brokers: [`127.0.0.1:${port}`], logLevel: "nothing", retryBackoffMs: 50 });
  const entry = { id: "e", kind: "custom", runId: "r", userId: "u", timestamp: Date.now(), type: "t", name: "n", value: 1 } as const;
  const value = encodeEntry(entry);
  const started = Date.now();
  await assert.rejects(transport.send([{ id: "e", key: "r", value, entry }], Date.now() + 1200), (err: Error) => {
    assert.equal(err.name, "TransportError");
    assert.match(err.message, /1 entries not acknowledged by Kafka at .* before the delivery deadline/);
    return true;
  });
  assert.ok(Date.now() - started < 5000);
  await transport.close();
});
