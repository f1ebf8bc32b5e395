import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import { UsageApiError, UsageReader, type Budget } from "../src/reader.js";

interface Req {
  url: string;
  auth: string | undefined;
}

async function serve(handler: (req: Req) => { status: number; body: unknown }) {
  const requests: Req[] = [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    assert.equal(req.method, "GET");
    const r: Req = { url: req.url ?? "", auth: req.headers.authorization };
    requests.push(r);
    const answer = handler(r);
    res.writeHead(answer.status, { "content-type": "application/json" });
    res.end(typeof answer.body === "string" ? answer.body : JSON.stringify(answer.body));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

const userDay: Budget = {
  rule: "user-daily-spend",
  subject: { type: "user", id: "u/1 x" },
  window: { kind: "day", start: 1795392000000, end: 1795478400000 },
  metric: "costUsd",
  observed: "100.25",
  thresholds: { warning: "80", critical: "100" },
  level: "critical",
  remaining: "0",
};
const runTree: Budget = {
  rule: "run-token-budget",
  subject: { type: "run", id: "r&1" },
  window: { kind: "run", start: 1795392000000, end: null },
  metric: "tokens",
  observed: "1200",
  thresholds: { warning: null, critical: "100000" },
  level: "ok",
  remaining: "98800",
};

function answer(req: Req): { status: number; body: unknown } {
  const q = new URL(req.url, "http://x").searchParams;
  if (q.get("runId") === "unknown") {
    const unknown = { ...runTree, subject: { type: "run", id: "unknown" }, observed: "0", window: { kind: "run", start: null, end: null } };
    return { status: 200, body: { budgets: [unknown], exceeded: false } };
  }
  const listed = [...(q.has("userId") ? [userDay] : []), ...(q.has("runId") ? [runTree] : [])];
  return { status: 200, body: { budgets: listed, exceeded: listed.some((b) => b.level === "critical") } };
}

test("budgets: user and run ids URL-encoded, API key sent, decimals kept as strings", async () => {
  const srv = await serve(answer);
  try {
    const reader = new UsageReader({ url: srv.url + "/", apiKey: "k1" });
    const result = await reader.budgets({ userId: "u/1 x", runId: "r&1" });
    assert.equal(srv.requests[0]!.url, "/v1/budgets?userId=u%2F1+x&runId=r%261");
    assert.equal(srv.requests[0]!.auth, "Bearer k1");
    assert.deepEqual(result, { budgets: [userDay, runTree], exceeded: true });
    assert.equal(typeof result.budgets[0]!.observed, "string");

    const unknown = await reader.budgets({ runId: "unknown" });
    assert.equal(unknown.budgets[0]!.window.start, null);
    assert.equal(srv.requests.length, 2);

    const run = await new UsageReader({ url: srv.url }).budgets({ runId: "r&1" });
    assert.equal(srv.requests[2]!.url, "/v1/budgets?runId=r%261");
    assert.equal(srv.requests[2]!.auth, undefined);
    assert.deepEqual(run, { budgets: [runTree], exceeded: false });
  } finally {
    await srv.close();
  }
});

test("budgets: neither userId nor runId is an error, and nothing is requested", async () => {
  const srv = await serve(answer);
  try {
    const reader = new UsageReader({ url: srv.url });
    await assert.rejects(reader.budgets({}), /userId, runId or both/);
    assert.equal(srv.requests.length, 0);
  } finally {
    await srv.close();
  }
});

test("budgets: §3.7 error bodies, unexpected answers and an unreachable server", async () => {
  const srv = await serve((req) => {
    if (req.url.includes("userId=bad")) {
      return { status: 400, body: { error: { code: "bad_request", message: "userId: must not be empty" } } };
    }
    if (req.url.includes("userId=html")) return { status: 200, body: "<html>" };
    return { status: 200, body: { budgets: [{ ...runTree, observed: 12 }], exceeded: false } };
  });
  try {
    const reader = new UsageReader({ url: srv.url });
    await assert.rejects(reader.budgets({ userId: "bad" }), (err: unknown) => {
      assert.ok(err instanceof UsageApiError);
      assert.equal(err.status, 400);
      assert.equal(err.code, "bad_request");
      assert.match(err.message, /userId: must not be empty/);
      return true;
    });
    await assert.rejects(reader.budgets({ userId: "html" }), { code: "bad_response" });
    await assert.rejects(reader.budgets({ userId: "numbers" }), { code: "bad_response", message: /observed/ });
  } finally {
    await srv.close();
  }
  const gone = new UsageReader({ url: srv.url, requestTimeoutMs: 2000 });
  await assert.rejects(gone.budgets({ runId: "r" }), { name: "UsageApiError", status: 0, code: "unreachable" });
});
