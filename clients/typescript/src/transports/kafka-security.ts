/**
 * TLS and SASL of the Kafka transport from the worker's own variables
 * (`USAGE_KAFKA_SECURITY_PROTOCOL`, `USAGE_KAFKA_SASL_MECHANISM`, `USAGE_KAFKA_SASL_USERNAME`,
 * `USAGE_KAFKA_SASL_PASSWORD`, `USAGE_KAFKA_SSL_CAFILE`, `USAGE_KAFKA_SSL_CERTFILE`,
 * `USAGE_KAFKA_SSL_KEYFILE`, `USAGE_KAFKA_SSL_KEY_PASSWORD`), so an agent deployed next to
 * the worker shares its configuration. The same combinations are accepted and refused as
 * by the worker and the Python client, with messages naming the variables (never a
 * password). Node's TLS checks the broker's certificate and host name.
 *
 *   kafkaTransport({ brokers: process.env.USAGE_KAFKA_BOOTSTRAP!, ...kafkaSecurityFromEnv() })
 */
import { readFileSync } from "node:fs";
import type { ConnectionOptions } from "node:tls";
import type { SASLOptions } from "kafkajs";

export type KafkaSecurityProtocol = "PLAINTEXT" | "SSL" | "SASL_PLAINTEXT" | "SASL_SSL";

/** The `ssl` and `sasl` options of `KafkaTransportOptions`. */
export interface KafkaSecurityOptions {
  ssl?: ConnectionOptions | boolean;
  sasl?: SASLOptions;
}

const PROTOCOLS: readonly KafkaSecurityProtocol[] = ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"];
const MECHANISMS = {
  PLAIN: "plain",
  "SCRAM-SHA-256": "scram-sha-256",
  "SCRAM-SHA-512": "scram-sha-512",
} as const;
type MechanismName = keyof typeof MECHANISMS;

/** A Kafka security configuration that cannot be used; the message names the variables. */
export class KafkaSecurityError extends Error {
  override name = "KafkaSecurityError";
}

function read(name: string, path: string, problems: string[]): Buffer | undefined {
  try {
    return readFileSync(path);
  } catch (err) {
    const code = (err as { code?: string }).code;
    problems.push(`${name}: ${code === "ENOENT" ? "file not found" : `cannot read (${code ?? String(err)})`}: ${path}`);
    return undefined;
  }
}

/**
 * `{ ssl, sasl }` for `kafkaTransport(...)` from `env` (default `process.env`); `{}` for
 * PLAINTEXT. Empty values count as unset. Throws `KafkaSecurityError` listing every problem.
 */
export function kafkaSecurityFromEnv(
  env: Readonly<Record<string, string | undefined>> = process.env,
  prefix = "USAGE_KAFKA_",
): KafkaSecurityOptions {
  const name = (field: string): string => prefix + field.toUpperCase();
  const get = (field: string): string | undefined => {
    const value = env[name(field)]?.trim();
    return value ? value : undefined;
  };
  const problems: string[] = [];
  const protocolRaw = (get("security_protocol") ?? "PLAINTEXT").toUpperCase();
  if (!(PROTOCOLS as readonly string[]).includes(protocolRaw)) {
    throw new KafkaSecurityError(`${name("security_protocol")}: must be one of ${PROTOCOLS.join(", ")}`);
  }
  const protocol = protocolRaw as KafkaSecurityProtocol;
  const stated = `${name("security_protocol")}=${protocol}`;
  const usesSasl = protocol === "SASL_SSL" || protocol === "SASL_PLAINTEXT";
  const usesTls = protocol === "SSL" || protocol === "SASL_SSL";

  const saslFields = ["sasl_mechanism", "sasl_username", "sasl_password"];
  const tlsFields = ["ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password"];
  const result: KafkaSecurityOptions = {};

  if (usesSasl) {
    const mechanismRaw = (get("sasl_mechanism") ?? "PLAIN").toUpperCase();
    const username = get("sasl_username");
    const password = env[name("sasl_password")]; // a password may start or end with spaces
    if (!(mechanismRaw in MECHANISMS)) {
      problems.push(`${name("sasl_mechanism")}: must be one of ${Object.keys(MECHANISMS).join(", ")}`);
    }
    if (!username) problems.push(`${name("sasl_username")} is required with ${stated}`);
    if (!password) problems.push(`${name("sasl_password")} is required with ${stated}`);
    if (mechanismRaw in MECHANISMS && username && password) {
      result.sasl = { mechanism: MECHANISMS[mechanismRaw as MechanismName], username, password };
    }
  } else {
    const given = saslFields.filter((f) => get(f) !== undefined).map(name);
    if (given.length) {
      problems.push(`${given.join(", ")} set but ${stated} does not use SASL (SASL_SSL or SASL_PLAINTEXT does)`);
    }
  }

  if (usesTls) {
    const cafile = get("ssl_cafile");
    const certfile = get("ssl_certfile");
    const keyfile = get("ssl_keyfile");
    const keyPassword = env[name("ssl_key_password")];
    if (keyfile && !certfile) problems.push(`${name("ssl_keyfile")} needs ${name("ssl_certfile")} (its certificate)`);
    if (keyPassword && !certfile) problems.push(`${name("ssl_key_password")} needs ${name("ssl_certfile")}`);
    // rejectUnauthorized is Node's default; stated so that no merged option turns it off
    const tls: ConnectionOptions = { rejectUnauthorized: true };
    if (cafile) {
      const ca = read(name("ssl_cafile"), cafile, problems);
      if (ca) tls.ca = [ca];
    }
    if (certfile) {
      const cert = read(name("ssl_certfile"), certfile, problems);
      // without a key file the key is expected in the certificate file (PEM blocks)
      const key = keyfile ? read(name("ssl_keyfile"), keyfile, problems) : cert;
      if (cert) tls.cert = cert;
      if (key) tls.key = key;
      if (keyPassword) tls.passphrase = keyPassword;
    }
    result.ssl = tls;
  } else {
    const given = tlsFields.filter((f) => get(f) !== undefined).map(name);
    if (given.length) {
      problems.push(`${given.join(", ")} set but ${stated} does not use TLS (SSL or SASL_SSL does)`);
    }
  }

  if (problems.length) throw new KafkaSecurityError(problems.join("; "));
  return result;
}
