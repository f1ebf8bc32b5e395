/**
 * A strict JSON reader: exactly one RFC 8259 JSON text, as the processor's `parse_entry`
 * requires, so that a value rejected as `json` on the server is rejected here too:
 *
 * - RFC 8259 grammar, no BOM, no trailing commas, no comments, JSON whitespace only,
 *   nothing after the value;
 * - `NaN`, `Infinity`, `-Infinity` are not JSON numbers: a syntax error wherever they are
 *   (the server's parser reads them, then `parse_entry` rejects them as `json` too);
 * - numbers too large for a double (`1e400`) are JSON: they are read as `Infinity` and
 *   then fail the field's range (`schema`), as on the server;
 * - strings: control characters must be escaped, `\u` escapes must not leave a lone
 *   surrogate (RFC 8259's grammar admits one, but it is not Unicode text: the processor
 *   rejects it as `json`, see schemas/entry.py);
 * - a non-empty array/object nested deeper than 200 levels is an error (jiter's recursion
 *   limit);
 * - numbers keep their literal text, so integers (`1`) and floats (`1.0`, `1e3`) stay
 *   distinct and integers of any size compare exactly (as `bigint`);
 * - a duplicated object key: the last occurrence wins.
 */

export type JsonNode =
  | { readonly t: "null" }
  | { readonly t: "bool"; readonly v: boolean }
  | { readonly t: "num"; readonly int: boolean; readonly text: string; readonly v: number }
  | { readonly t: "str"; readonly v: string }
  | { readonly t: "arr"; readonly v: JsonNode[] }
  | { readonly t: "obj"; readonly v: Map<string, JsonNode> };

export class JsonSyntaxError extends Error {
  override name = "JsonSyntaxError";
}

const MAX_DEPTH = 200;

class Reader {
  pos = 0;
  constructor(readonly s: string) {}

  fail(what: string): never {
    throw new JsonSyntaxError(`Invalid JSON: ${what} at offset ${this.pos}`);
  }

  ws(): void {
    const s = this.s;
    let p = this.pos;
    for (;;) {
      const c = s.charCodeAt(p);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) p++;
      else break;
    }
    this.pos = p;
  }

  value(depth: number): JsonNode {
    this.ws();
    const c = this.s[this.pos];
    switch (c) {
      case "{":
        return this.object(depth);
      case "[":
        return this.array(depth);
      case '"':
        return { t: "str", v: this.string() };
      case "t":
        return this.word("true", { t: "bool", v: true });
      case "f":
        return this.word("false", { t: "bool", v: false });
      case "n":
        return this.word("null", { t: "null" });
      case "N":
      case "I":
        return this.fail("NaN, Infinity and -Infinity are not JSON numbers (RFC 8259)");
      case undefined:
        return this.fail("EOF while parsing a value");
      default:
        if (c === "-" || (c >= "0" && c <= "9")) return this.number();
        return this.fail("expected value");
    }
  }

  word<T extends JsonNode>(w: string, node: T): T {
    if (this.s.startsWith(w, this.pos)) {
      this.pos += w.length;
      return node;
    }
    return this.fail("expected ident");
  }

  number(): JsonNode {
    const s = this.s;
    const start = this.pos;
    let p = start;
    if (s[p] === "-") {
      p++;
      if (s[p] === "I" || s[p] === "N") {
        this.pos = p;
        this.fail("NaN, Infinity and -Infinity are not JSON numbers (RFC 8259)");
      }
    }
    const digit = (i: number): boolean => {
      const c = s.charCodeAt(i);
      return c >= 0x30 && c <= 0x39;
    };
    if (s[p] === "0") {
      p++;
      if (digit(p)) {
        this.pos = p;
        this.fail("invalid number");
      }
    } else if (digit(p)) {
      while (digit(p)) p++;
    } else {
      this.pos = p;
      this.fail("invalid number");
    }
    let int = true;
    if (s[p] === ".") {
      int = false;
      p++;
      if (!digit(p)) {
        this.pos = p;
        this.fail("invalid number");
      }
      while (digit(p)) p++;
    }
    if (s[p] === "e" || s[p] === "E") {
      int = false;
      p++;
      if (s[p] === "+" || s[p] === "-") p++;
      if (!digit(p)) {
        this.pos = p;
        this.fail("invalid number");
      }
      while (digit(p)) p++;
    }
    this.pos = p;
    const text = s.slice(start, p);
    return { t: "num", int, text, v: Number(text) };
  }

  hex4(): number {
    const h = this.s.slice(this.pos, this.pos + 4);
    if (!/^[0-9a-fA-F]{4}$/.test(h)) this.fail("invalid hex escape");
    this.pos += 4;
    return parseInt(h, 16);
  }

  string(): string {
    const s = this.s;
    this.pos++; // opening quote
    let out = "";
    let chunk = this.pos;
    for (;;) {
      const c = s.charCodeAt(this.pos);
      if (Number.isNaN(c)) this.fail("EOF while parsing a string");
      if (c === 0x22) {
        out += s.slice(chunk, this.pos);
        this.pos++;
        return out;
      }
      if (c < 0x20) this.fail("control character (\\u0000-\\u001F) found while parsing a string");
      if (c !== 0x5c) {
        this.pos++;
        continue;
      }
      out += s.slice(chunk, this.pos);
      this.pos++;
      const e = s[this.pos++];
      switch (e) {
        case '"':
        case "\\":
        case "/":
          out += e;
          break;
        case "b":
          out += "\b";
          break;
        case "f":
          out += "\f";
          break;
        case "n":
          out += "\n";
          break;
        case "r":
          out += "\r";
          break;
        case "t":
          out += "\t";
          break;
        case "u": {
          const u = this.hex4();
          if (u >= 0xdc00 && u <= 0xdfff) this.fail("lone trailing surrogate in hex escape");
          if (u >= 0xd800 && u <= 0xdbff) {
            if (s[this.pos] !== "\\" || s[this.pos + 1] !== "u") this.fail("unexpected end of hex escape");
            this.pos += 2;
            const low = this.hex4();
            if (low < 0xdc00 || low > 0xdfff) this.fail("lone leading surrogate in hex escape");
            out += String.fromCharCode(u, low);
          } else {
            out += String.fromCharCode(u);
          }
          break;
        }
        default:
          this.pos--;
          this.fail("invalid escape");
      }
      chunk = this.pos;
    }
  }

  array(depth: number): JsonNode {
    this.pos++;
    const items: JsonNode[] = [];
    this.ws();
    if (this.s[this.pos] === "]") {
      this.pos++;
      return { t: "arr", v: items };
    }
    if (depth > MAX_DEPTH) this.fail("recursion limit exceeded");
    for (;;) {
      items.push(this.value(depth + 1));
      this.ws();
      const c = this.s[this.pos];
      if (c === ",") {
        this.pos++;
        this.ws();
        if (this.s[this.pos] === "]") this.fail("trailing comma");
        continue;
      }
      if (c === "]") {
        this.pos++;
        return { t: "arr", v: items };
      }
      this.fail(c === undefined ? "EOF while parsing a list" : "expected `,` or `]`");
    }
  }

  object(depth: number): JsonNode {
    this.pos++;
    const map = new Map<string, JsonNode>();
    this.ws();
    if (this.s[this.pos] === "}") {
      this.pos++;
      return { t: "obj", v: map };
    }
    if (depth > MAX_DEPTH) this.fail("recursion limit exceeded");
    for (;;) {
      this.ws();
      if (this.s[this.pos] !== '"') this.fail("key must be a string");
      const key = this.string();
      this.ws();
      if (this.s[this.pos] !== ":") this.fail("expected `:`");
      this.pos++;
      const value = this.value(depth + 1);
      map.set(key, value);
      this.ws();
      const c = this.s[this.pos];
      if (c === ",") {
        this.pos++;
        this.ws();
        if (this.s[this.pos] === "}") this.fail("trailing comma");
        continue;
      }
      if (c === "}") {
        this.pos++;
        return { t: "obj", v: map };
      }
      this.fail(c === undefined ? "EOF while parsing an object" : "expected `,` or `}`");
    }
  }
}

/** Parse one JSON text (already decoded) into a {@link JsonNode} tree. */
export function parseJsonText(text: string): JsonNode {
  const r = new Reader(text);
  const node = r.value(1);
  r.ws();
  if (r.pos !== text.length) r.fail("trailing characters");
  return node;
}

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Decode strict UTF-8 (a BOM is kept, so it then fails as JSON), then parse. */
export function parseJsonBytes(raw: Uint8Array): JsonNode {
  let text: string;
  try {
    text = utf8.decode(raw);
  } catch {
    throw new JsonSyntaxError(`value is not valid UTF-8 (at ${firstInvalidUtf8(raw)})`);
  }
  if (text.trim() === "") throw new JsonSyntaxError("value is empty; expected a JSON object");
  return parseJsonText(text);
}

function firstInvalidUtf8(raw: Uint8Array): string {
  // Binary search for the longest valid prefix: only on the error path.
  let lo = 0;
  let hi = raw.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    try {
      new TextDecoder("utf-8", { fatal: true }).decode(raw.subarray(0, mid), { stream: true });
      lo = mid;
    } catch {
      hi = mid - 1;
    }
  }
  const b = raw[lo];
  return `byte 0x${(b ?? 0).toString(16).padStart(2, "0")} at offset ${lo}`;
}

/** Plain JavaScript value of a node (numbers as `number`). */
export function toPlain(node: JsonNode): unknown {
  switch (node.t) {
    case "null":
      return null;
    case "bool":
    case "str":
    case "num":
      return node.v;
    case "arr":
      return node.v.map(toPlain);
    case "obj": {
      const out: Record<string, unknown> = {};
      for (const [k, v] of node.v) {
        Object.defineProperty(out, k, { value: toPlain(v), enumerable: true, writable: true, configurable: true });
      }
      return out;
    }
  }
}
