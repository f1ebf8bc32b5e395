// TLS and SASL options of the Kafka transport from the worker's USAGE_KAFKA_* variables.
// (Connecting through a real SASL_SSL listener is tests/integration/test_kafka_sasl_ssl.py.)
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { KafkaSecurityError, kafkaSecurityFromEnv } from "../src/transports/kafka-security.js";
import { KafkaTransport } from "../src/transports/kafka.js";

const PASSWORD = "s3cr3t-never-shown";

function pemFiles(): { ca: string; cert: string; key: string } {
  const dir = mkdtempSync(join(tmpdir(), "usage-ts-security-"));
  const files = { ca: join(dir, "ca.pem"), cert: join(dir, "client.pem"), key: join(dir, "client.key") };
  writeFileSync(files.ca, "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n");
  writeFileSync(files.cert, "-----BEGIN CERTIFICATE-----\nCLIENT\n-----END CERTIFICATE-----\n");
  writeFileSync(files.key, "-----BEGIN PRIVATE KEY-----\nKEY\n-----END PRIVATE KEY-----\n");
  return files;
}

function refused(env: Record<string, string>, ...patterns: RegExp[]): void {
  assert.throws(
    () => kafkaSecurityFromEnv(env),
    (err: Error) => {
      assert.ok(err instanceof KafkaSecurityError, String(err));
      for (const pattern of patterns) assert.match(err.message, pattern);
      assert.ok(!err.message.includes(PASSWORD), "the password must never be in a message");
      return true;
    },
  );
}

test("nothing set, or PLAINTEXT: no ssl, no sasl", () => {
  assert.deepEqual(kafkaSecurityFromEnv({}), {});
  assert.deepEqual(kafkaSecurityFromEnv({ USAGE_KAFKA_SECURITY_PROTOCOL: "plaintext", USAGE_KAFKA_SASL_USERNAME: "" }), {});
});

test("SASL_SSL with SCRAM-SHA-512 and a CA file: kafkajs sasl and ssl options, certificates verified", () => {
  const files = pemFiles();
  const options = kafkaSecurityFromEnv({
    USAGE_KAFKA_SECURITY_PROTOCOL: "sasl_ssl",
    USAGE_KAFKA_SASL_MECHANISM: "scram-sha-512",
    USAGE_KAFKA_SASL_USERNAME: "alice",
    USAGE_KAFKA_SASL_PASSWORD: PASSWORD,
    USAGE_KAFKA_SSL_CAFILE: files.ca,
  });
  assert.deepEqual(options.sasl, { mechanism: "scram-sha-512", username: "alice", password: PASSWORD });
  assert.ok(typeof options.ssl === "object");
  assert.equal(options.ssl.rejectUnauthorized, true);
  assert.deepEqual(
    (options.ssl.ca as Buffer[]).map((b) => b.toString()),
    ["-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"],
  );
  // the transport takes them as they are
  const transport = new KafkaTransport({ brokers: "127.0.0.1:1", ...options });
  assert.match(transport.description, /Kafka at 127\.0\.0\.1:1/);
});

test("SASL mechanism defaults to PLAIN; SSL with a client certificate and key", () => {
  assert.deepEqual(
    kafkaSecurityFromEnv({
      USAGE_KAFKA_SECURITY_PROTOCOL: "SASL_PLAINTEXT",
      USAGE_KAFKA_SASL_USERNAME: "bob",
      USAGE_KAFKA_SASL_PASSWORD: PASSWORD,
    }),
    { sasl: { mechanism: "plain", username: "bob", password: PASSWORD } },
  );
  const files = pemFiles();
  const options = kafkaSecurityFromEnv({
    USAGE_KAFKA_SECURITY_PROTOCOL: "SSL",
    USAGE_KAFKA_SSL_CERTFILE: files.cert,
    USAGE_KAFKA_SSL_KEYFILE: files.key,
    USAGE_KAFKA_SSL_KEY_PASSWORD: PASSWORD,
  });
  assert.equal(options.sasl, undefined);
  assert.ok(typeof options.ssl === "object");
  assert.match(String(options.ssl.cert), /CLIENT/);
  assert.match(String(options.ssl.key), /KEY/);
  assert.equal(options.ssl.passphrase, PASSWORD);
  assert.equal(options.ssl.ca, undefined); // the system's CAs
});

test("bad combinations are refused, naming the variables", () => {
  refused(
    { USAGE_KAFKA_SECURITY_PROTOCOL: "SASL_SSL" },
    /USAGE_KAFKA_SASL_USERNAME is required with USAGE_KAFKA_SECURITY_PROTOCOL=SASL_SSL/,
    /USAGE_KAFKA_SASL_PASSWORD is required/,
  );
  refused(
    { USAGE_KAFKA_SASL_USERNAME: "alice", USAGE_KAFKA_SASL_PASSWORD: PASSWORD },
    /USAGE_KAFKA_SASL_USERNAME, USAGE_KAFKA_SASL_PASSWORD set but USAGE_KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use SASL/,
  );
  refused(
    { USAGE_KAFKA_SECURITY_PROTOCOL: "SASL_PLAINTEXT", USAGE_KAFKA_SASL_USERNAME: "a", USAGE_KAFKA_SASL_PASSWORD: PASSWORD, USAGE_KAFKA_SSL_CAFILE: "/x" },
    /USAGE_KAFKA_SSL_CAFILE set but USAGE_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT does not use TLS/,
  );
  refused({ USAGE_KAFKA_SECURITY_PROTOCOL: "TLS" }, /USAGE_KAFKA_SECURITY_PROTOCOL: must be one of PLAINTEXT, SSL/);
  refused(
    { USAGE_KAFKA_SECURITY_PROTOCOL: "SASL_SSL", USAGE_KAFKA_SASL_MECHANISM: "GSSAPI", USAGE_KAFKA_SASL_USERNAME: "a", USAGE_KAFKA_SASL_PASSWORD: PASSWORD },
    /USAGE_KAFKA_SASL_MECHANISM: must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512/,
  );
  refused({ USAGE_KAFKA_SECURITY_PROTOCOL: "SSL", USAGE_KAFKA_SSL_CAFILE: "/nonexistent/ca.pem" }, /USAGE_KAFKA_SSL_CAFILE: file not found: \/nonexistent\/ca\.pem/);
  refused(
    { USAGE_KAFKA_SECURITY_PROTOCOL: "SSL", USAGE_KAFKA_SSL_KEYFILE: pemFiles().key },
    /USAGE_KAFKA_SSL_KEYFILE needs USAGE_KAFKA_SSL_CERTFILE/,
  );
});
