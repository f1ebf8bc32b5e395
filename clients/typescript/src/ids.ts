/**
 * UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then a 12-bit counter (monotonic within a
 * millisecond, randomly seeded), then 62 random bits. Ids sort by creation time, which
 * keeps the processor's (timestamp, id) order of one producer's entries stable.
 * Uses only Web Crypto, so it runs in Node, Convex, edge and browser runtimes.
 */
let lastMs = -1;
let counter = 0;

function randomBytes(n: number): Uint8Array {
  const bytes = new Uint8Array(n);
  globalThis.crypto.getRandomValues(bytes);
  return bytes;
}

export function uuidv7(nowMs: number = Date.now()): string {
  let ms = Math.floor(nowMs);
  if (ms <= lastMs) {
    ms = lastMs;
    counter++;
    if (counter > 0xfff) {
      // Counter exhausted within one millisecond: borrow the next one (stays monotonic).
      ms = lastMs + 1;
      counter = 0;
    }
  } else {
    const seed = randomBytes(2);
    counter = (((seed[0] as number) << 8) | (seed[1] as number)) & 0x7ff; // leave headroom
  }
  lastMs = ms;
  const b = randomBytes(16);
  let t = ms;
  for (let i = 5; i >= 0; i--) {
    b[i] = t % 256;
    t = Math.floor(t / 256);
  }
  b[6] = 0x70 | ((counter >> 8) & 0x0f);
  b[7] = counter & 0xff;
  b[8] = 0x80 | ((b[8] as number) & 0x3f);
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
