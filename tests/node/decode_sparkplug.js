// Sparkplug B payloads through Eclipse Tahu's JavaScript library (not Lineside's code).
// decode (default): stdin JSON lines {"topic", "hex"} -> stdout {"topic", "payload": <decoded>}; longs become
//   numbers, bytes hex; a payload Tahu cannot decode gives {"topic", "error"}.
// encode: stdin JSON lines {"topic", "payload": <Tahu payload object>} -> stdout {"topic", "hex"}.
"use strict";
const sparkplug = require("sparkplug-payload").get("spBv1.0");
const readline = require("readline");

function plain(v) {
  if (v === null || v === undefined) return v;
  if (typeof v === "object" && typeof v.toNumber === "function") return v.toNumber();
  if (Buffer.isBuffer(v) || v instanceof Uint8Array) return Buffer.from(v).toString("hex");
  if (Array.isArray(v)) return v.map(plain);
  if (typeof v === "object") {
    const out = {};
    for (const [k, x] of Object.entries(v)) out[k] = plain(x);
    return out;
  }
  return v;
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (!line.trim()) return;
  const msg = JSON.parse(line);
  if (process.argv[2] === "encode") {
    const bytes = Buffer.from(sparkplug.encodePayload(msg.payload));
    process.stdout.write(JSON.stringify({ topic: msg.topic, hex: bytes.toString("hex") }) + "\n");
    return;
  }
  try {
    const payload = sparkplug.decodePayload(Buffer.from(msg.hex, "hex"));
    process.stdout.write(JSON.stringify({ topic: msg.topic, payload: plain(payload) }) + "\n");
  } catch (err) {
    process.stdout.write(JSON.stringify({ topic: msg.topic, error: String(err) }) + "\n");
  }
});
