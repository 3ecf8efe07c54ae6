// Loyalty points: a tollgate aggregate (world `tollgate:eventsourcing/aggregate@0.1.0`).
//
// Behaves like the Rust template (`tollgate new`, cli/src/templates/aggregate.rs) run through
// tollgate-sdk: same stream, versions, JSON bytes, rejection kinds and codes, and the same order
// of checks (content type, command type, payload, state, business rules).
//
// Commands  earn {points}    redeem {points}      points: integer 1 ..= 2^64-1
// Events    earned {points}  redeemed {points}
// State     {"balance":N}    (the state before the first event is {"balance":0})
//
// Integers: points and balances are BigInt throughout, parsed by the strict JSON reader below
// (JSON.parse would round anything above Number.MAX_SAFE_INTEGER), so the full u64 range is
// exact and the bytes match the Python and Rust guests.

const STREAM = "loyalty";
const JSON_TYPE = "application/json";
const EVENT_SCHEMA_VERSION = 1;
const STATE_VERSION = 1;
const U64_MAX = (1n << 64n) - 1n;
const MAX_DEPTH = 128; // serde_json's recursion limit

// ---------------------------------------------------------------------------------------------
// JSON, read the way serde_json reads it: strict UTF-8, RFC 8259 grammar only, integers kept
// as BigInt, `-0` is a float, lone surrogate escapes refused, nothing after the value.

class JsonError extends Error {}

const utf8 = new TextDecoder("utf-8", { fatal: true });
const encoder = new TextEncoder();

function parseJson(bytes) {
  let text;
  try {
    text = utf8.decode(bytes);
  } catch (e) {
    throw new JsonError("invalid UTF-8");
  }
  let i = 0;
  const fail = (what) => {
    throw new JsonError(`${what} at offset ${i}`);
  };
  const ws = () => {
    while (i < text.length) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) i++;
      else break;
    }
  };
  const hex4 = () => {
    const h = text.slice(i, i + 4);
    if (!/^[0-9a-fA-F]{4}$/.test(h)) fail("invalid \\u escape");
    i += 4;
    return parseInt(h, 16);
  };
  const str = () => {
    i++; // opening quote
    let out = "";
    for (;;) {
      if (i >= text.length) fail("EOF while parsing a string");
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        i++;
        return out;
      }
      if (c < 0x20) fail("control character in string");
      if (c !== 0x5c) {
        out += text[i++];
        continue;
      }
      i++;
      const e = text[i++];
      switch (e) {
        case '"': out += '"'; break;
        case "\\": out += "\\"; break;
        case "/": out += "/"; break;
        case "b": out += "\b"; break;
        case "f": out += "\f"; break;
        case "n": out += "\n"; break;
        case "r": out += "\r"; break;
        case "t": out += "\t"; break;
        case "u": {
          const u = hex4();
          if (u >= 0xdc00 && u <= 0xdfff) fail("lone trailing surrogate in hex escape");
          if (u >= 0xd800 && u <= 0xdbff) {
            if (text.slice(i, i + 2) !== "\\u") fail("lone leading surrogate in hex escape");
            i += 2;
            const l = hex4();
            if (l < 0xdc00 || l > 0xdfff) fail("lone leading surrogate in hex escape");
            out += String.fromCharCode(u, l);
          } else {
            out += String.fromCharCode(u);
          }
          break;
        }
        default:
          fail("invalid escape");
      }
    }
  };
  const num = () => {
    const m = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/.exec(text.slice(i, i + 4096));
    if (!m || m[0] === "-") fail("invalid number");
    i += m[0].length;
    if (m[2] === undefined && m[3] === undefined && m[0] !== "-0") {
      return { t: "int", v: BigInt(m[0]) };
    }
    return { t: "float", v: Number(m[0]) };
  };
  const lit = (word, value) => {
    if (text.startsWith(word, i)) {
      i += word.length;
      return value;
    }
    fail("expected value");
  };
  const value = (depth) => {
    ws();
    if (i >= text.length) fail("EOF while parsing a value");
    const c = text[i];
    if (c === "{" || c === "[") {
      if (depth >= MAX_DEPTH) fail("recursion limit exceeded");
      i++;
      ws();
      if (c === "[") {
        const items = [];
        if (text[i] === "]") {
          i++;
          return { t: "arr", v: items };
        }
        for (;;) {
          items.push(value(depth + 1));
          ws();
          if (text[i] === ",") { i++; continue; }
          if (text[i] === "]") { i++; return { t: "arr", v: items }; }
          fail("expected `,` or `]`");
        }
      }
      const map = new Map();
      const dups = new Set();
      if (text[i] === "}") {
        i++;
        return { t: "obj", v: map, dups };
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail("key must be a string");
        const k = str();
        ws();
        if (text[i] !== ":") fail("expected `:`");
        i++;
        const v = value(depth + 1);
        if (map.has(k)) dups.add(k);
        map.set(k, v);
        ws();
        if (text[i] === ",") { i++; continue; }
        if (text[i] === "}") { i++; return { t: "obj", v: map, dups }; }
        fail("expected `,` or `}`");
      }
    }
    if (c === '"') return { t: "str", v: str() };
    if (c === "-" || (c >= "0" && c <= "9")) return num();
    if (c === "t") return lit("true", { t: "bool", v: true });
    if (c === "f") return lit("false", { t: "bool", v: false });
    if (c === "n") return lit("null", { t: "null", v: null });
    fail("expected value");
  };
  const v = value(0);
  ws();
  if (i !== text.length) fail("trailing characters");
  return v;
}

function describeValue(x) {
  switch (x.t) {
    case "null": return "null";
    case "bool": return `boolean \`${x.v}\``;
    case "int": return `integer \`${x.v}\``;
    case "float": return `floating point \`${x.v}\``;
    case "str": return `string ${JSON.stringify(x.v)}`;
    case "arr": return "sequence";
    default: return "map";
  }
}

/** The u64 field `field` of a parsed JSON object, as a BigInt, or a JsonError. */
function u64Field(obj, field) {
  if (obj.t !== "obj") {
    throw new JsonError(`invalid type: ${describeValue(obj)}, expected an object with field \`${field}\``);
  }
  if (obj.dups.has(field)) throw new JsonError(`duplicate field \`${field}\``);
  if (!obj.v.has(field)) throw new JsonError(`missing field \`${field}\``);
  const x = obj.v.get(field);
  if (x.t !== "int") throw new JsonError(`invalid type: ${describeValue(x)}, expected u64 in \`${field}\``);
  if (x.v < 0n || x.v > U64_MAX) throw new JsonError(`invalid value: integer \`${x.v}\`, expected u64 in \`${field}\``);
  return x.v;
}

const encodePoints = (points) => encoder.encode(`{"points":${points}}`);
const encodeState = (balance) => encoder.encode(`{"balance":${balance}}`);

// ---------------------------------------------------------------------------------------------
// Rejections are thrown; componentize-js turns a thrown value into the `err` case.

const rejection = (kind, code, message) => ({ kind, code, message });
const malformed = (code, message) => rejection("malformed", code, message);
const business = (code, message) => rejection("business", code, message);

/** Runs `f`, turning a JSON error into the rejection `code` with `prefix: error` as message. */
function decoding(code, prefix, f) {
  try {
    return f();
  } catch (e) {
    if (e instanceof JsonError || e instanceof RangeError) throw malformed(code, `${prefix}: ${e.message}`);
    throw e;
  }
}

function checkContentType(contentType, what, name) {
  if (contentType !== JSON_TYPE) {
    throw malformed(
      "unsupported-content-type",
      `${what} \`${name}\` has content type \`${contentType}\`; this actor reads \`${JSON_TYPE}\``,
    );
  }
}

/** The balance in `state`; none (undefined or null) is the state before the first event. */
function decodeState(state) {
  if (state === undefined || state === null) return 0n;
  return decoding("malformed-state", `state of \`${STREAM}\` does not decode`, () =>
    u64Field(parseJson(state), "balance"),
  );
}

const COMMANDS = ["earn", "redeem"];
const EVENTS = ["earned", "redeemed"];

function decodeCommand(command) {
  checkContentType(command.contentType, "command", command.commandType);
  if (!COMMANDS.includes(command.commandType)) {
    throw rejection("unknown-command", "unknown-command", `unknown command type \`${command.commandType}\``);
  }
  return decoding("malformed-command", `payload of command \`${command.commandType}\` does not decode`, () =>
    u64Field(parseJson(command.payload), "points"),
  );
}

function decodeEvent(event) {
  checkContentType(event.contentType, "event", event.eventType);
  const where = `event \`${event.eventType}\` #${event.sequence} of ${event.stream}/${event.key}`;
  if (!EVENTS.includes(event.eventType)) {
    throw malformed("malformed-event", `${where} does not decode: unknown variant \`${event.eventType}\``);
  }
  return decoding("malformed-event", `${where} does not decode`, () => u64Field(parseJson(event.payload), "points"));
}

function upcastEvent(event) {
  if (event.schemaVersion === EVENT_SCHEMA_VERSION) return event;
  if (event.schemaVersion > EVENT_SCHEMA_VERSION) {
    throw malformed(
      "unsupported-schema-version",
      `event \`${event.eventType}\` has schema version ${event.schemaVersion}, newer than this actor's ${EVENT_SCHEMA_VERSION}`,
    );
  }
  throw malformed(
    "unsupported-schema-version",
    `event \`${event.eventType}\` has schema version ${event.schemaVersion} but this actor reads only version ${EVENT_SCHEMA_VERSION}`,
  );
}

const draft = (eventType, points) => ({
  eventType,
  schemaVersion: EVENT_SCHEMA_VERSION,
  contentType: JSON_TYPE,
  payload: encodePoints(points),
});

export const commandHandler = {
  describe() {
    return {
      stream: STREAM,
      contentType: JSON_TYPE,
      eventSchemaVersion: EVENT_SCHEMA_VERSION,
      stateVersion: STATE_VERSION,
    };
  },

  handle(state, command) {
    const points = decodeCommand(command);
    const balance = decodeState(state);
    if (points === 0n) throw malformed("zero-amount", "`points` must be > 0");
    if (command.commandType === "earn") {
      if (balance + points > U64_MAX) {
        // The Rust template would wrap the balance in a release build; refuse instead.
        throw malformed("points-out-of-range", `${points} points would take the balance of ${balance} past 2^64-1`);
      }
      return [draft("earned", points)];
    }
    if (points > balance) throw business("insufficient-points", `${points} asked, ${balance} available`);
    return [draft("redeemed", points)];
  },

  apply(state, events) {
    let balance = decodeState(state);
    for (const raw of events) {
      const event = upcastEvent(raw);
      const points = decodeEvent(event);
      balance = event.eventType === "earned" ? balance + points : balance - points;
      if (balance < 0n || balance > U64_MAX) {
        throw malformed(
          "malformed-event",
          `event \`${event.eventType}\` #${event.sequence} of ${event.stream}/${event.key} takes the balance out of range (0 ..= 2^64-1)`,
        );
      }
    }
    return encodeState(balance);
  },

  upcast(event) {
    return upcastEvent(event);
  },
};
