import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import { UsageRecorderError } from "../src/errors.js";
import { UsageRecorder } from "../src/recorder.js";
import { HttpTransport, chunkBodies } from "../src/transports/http.js";
import type { EncodedEntry, ServerRejection } from "../src/transports/transport.js";

interface Req {
  auth: string | undefined;
  body: { entries: Record<string, unknown>[] };
}

async function serve(handler: (req: Req, n: number) => { status: number; body: unknown; headers?: Record<string, string> }) {
  const requests: Req[] = [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      assert.equal(req.method, "POST");
      assert.equal(req.url, "/v1/entries");
      const r: Req = { auth: req.headers.authorization, body: JSON.parse(Buffer.concat(chunks).toString("utf8")) };
      requests.push(r);
      const answer = handler(r, requests.length);
      res.writeHead(answer.status, { "content-type": "application/json", ...answer.headers });
      res.end(JSON.stringify(answer.body));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

const accepted = (r: Req) => ({ status: 202, body: { accepted: r.body.entries.length, rejected: [] } });

test("batches of at most 1000 entries, with the API key, every entry delivered once", async () => {
  const srv = await serve(accepted);
  try {
    const recorder = await UsageRecorder.open({
      transport: new HttpTransport({ url: srv.url, apiKey: "k1" }),
      userId: "u",
      lingerMs: 0,
    });
    const run = recorder.run();
    for (let i = 0; i < 2500; i++) await run.recordCustom("n", "x", i);
    await recorder.close();
    const sizes = srv.requests.map((r) => r.body.entries.length);
    assert.ok(sizes.every((s) => s >= 1 && s <= 1000), `batch sizes ${sizes}`);
    assert.equal(sizes.reduce((a, b) => a + b, 0), 2500);
    assert.ok(srv.requests.every((r) => r.auth === "Bearer k1"));
    const values = srv.requests.flatMap((r) => r.body.entries.map((e) => e.value));
    assert.deepEqual(values, Array.from({ length: 2500 }, (_, i) => i));
  } finally {
    await srv.close();
  }
});

test("503 and network errors are retried with the same entries (same ids)", async () => {
  const srv = await serve((r, n) => (n <= 2 ? { status: 503, body: { error: { code: "unavailable", message: "kafka down" } } } : accepted(r)));
  try {
    const recorder = await UsageRecorder.open({
      transport: new HttpTransport({ url: srv.url + "/", retryBackoffMs: 5 }),
      userId: "u",
    });
    await recorder.run().recordTokens("m", { prompt: 1, completion: 2 });
    await recorder.close();
    assert.equal(srv.requests.length, 3);
    const ids = srv.requests.map((r) => r.body.entries[0]!.id);
    assert.equal(new Set(ids).size, 1);
    assert.equal(srv.requests[0]!.auth, undefined);
  } finally {
    await srv.close();
  }
  // nothing listening: retried until the deadline, then a clear error
  const recorder = await UsageRecorder.open({
    transport: new HttpTransport({ url: srv.url, retryBackoffMs: 5 }),
    userId: "u",
    deliveryTimeoutMs: 300,
  });
  await recorder.run().recordCustom("a", "b", 1);
  await assert.rejects(recorder.flush(), (err: unknown) => {
    assert.ok(err instanceof UsageRecorderError);
    assert.match(err.message, /not accepted by http:\/\/127\.0\.0\.1:\d+\/v1\/entries before the delivery deadline/);
    return true;
  });
});

test("401 fails at once; server rejections go to onRejected or fail the recorder", async () => {
  const srv = await serve(() => ({ status: 401, body: { error: { code: "unauthorized", message: "bad key" } } }));
  try {
    const recorder = await UsageRecorder.open({ transport: new HttpTransport({ url: srv.url, apiKey: "x" }), userId: "u" });
    await recorder.run().recordCustom("a", "b", 1);
    await assert.rejects(recorder.flush(), /HTTP 401: unauthorized: bad key/);
    assert.equal(srv.requests.length, 1);
  } finally {
    await srv.close();
  }

  const reject = (r: Req) => ({
    status: 202,
    body: {
      accepted: r.body.entries.length - 1,
      rejected: [{ index: 1, error: { code: "schema", message: "tenantId: not your tenant", field: "tenantId" } }],
    },
  });
  const srv2 = await serve(reject);
  try {
    const seen: ServerRejection[] = [];
    const recorder = await UsageRecorder.open({
      transport: new HttpTransport({ url: srv2.url }),
      userId: "u",
      lingerMs: 20,
      onRejected: (r) => seen.push(...r),
    });
    const run = recorder.run();
    await run.recordCustom("a", "b", 0);
    const second = await run.recordCustom("a", "b", 1);
    await recorder.close();
    assert.equal(seen.length, 1);
    assert.equal(seen[0]!.entry.id, second);
    assert.equal(seen[0]!.error.field, "tenantId");
    assert.deepEqual(recorder.stats, { buffered: 0, delivered: 1, failed: 0, rejected: 1 });

    const strict = await UsageRecorder.open({ transport: new HttpTransport({ url: srv2.url }), userId: "u", lingerMs: 20 });
    const r2 = strict.run();
    await r2.recordCustom("a", "b", 0);
    await r2.recordCustom("a", "b", 1);
    await assert.rejects(strict.close(), /1 usage entries rejected by .*schema tenantId: tenantId: not your tenant/);
  } finally {
    await srv2.close();
  }
});

test("chunkBodies respects the byte limit and builds valid JSON", () => {
  const entry = (i: number): EncodedEntry => {
    const value = new TextEncoder().encode(JSON.stringify({ i, pad: "x".repeat(100) }));
    return { id: String(i), key: "r", value, entry: {} as EncodedEntry["entry"] };
  };
  const batch = Array.from({ length: 50 }, (_, i) => entry(i));
  const chunks = chunkBodies(batch, 1000, 1200);
  assert.ok(chunks.length > 1);
  let n = 0;
  for (const c of chunks) {
    assert.ok(c.body.length <= 1200, `body of ${c.body.length} bytes`);
    const parsed = JSON.parse(new TextDecoder().decode(c.body)) as { entries: { i: number }[] };
    for (const e of parsed.entries) assert.equal(e.i, n++);
  }
  assert.equal(n, 50);
});
