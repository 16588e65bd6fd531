/**
 * The client side of im's two wire formats (docs/protocol.md):
 *
 * - json: `{"sid": N, "msg": "<base64>"}` down (either key omitted when empty);
 *   `{"ack": sid}` or `{"ack": [sid, ...]}` up, any other frame being data as is.
 * - protobuf: `PushToClient {int64 sid = 1; bytes msg = 2}` down,
 *   `ClientFrame {repeated int64 ack = 1; optional bytes data = 2}` up.
 *
 * The two protobuf messages are encoded by hand (varints and length-delimited
 * fields), so the package has no runtime dependency. Sids are below 2^53 (the server
 * guarantees it), so they are plain JavaScript numbers.
 */

export type Codec = "json" | "protobuf";

export interface Push {
  sid: number;
  msg: Uint8Array;
}

const utf8 = new TextEncoder();

export function toBytes(data: string | Uint8Array | ArrayBuffer): Uint8Array {
  if (typeof data === "string") return utf8.encode(data);
  if (data instanceof Uint8Array) return data;
  return new Uint8Array(data);
}

function base64ToBytes(b64: string): Uint8Array {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

// ---- json ----------------------------------------------------------------

export function decodeJsonPush(frame: string | Uint8Array): Push {
  const text = typeof frame === "string" ? frame : new TextDecoder().decode(frame);
  const obj = JSON.parse(text) as { sid?: number; msg?: string };
  return { sid: Number(obj.sid ?? 0), msg: base64ToBytes(obj.msg ?? "") };
}

export function encodeJsonAck(sids: readonly number[]): string {
  return JSON.stringify({ ack: sids.length === 1 ? sids[0] : [...sids] });
}

// ---- protobuf ------------------------------------------------------------

function checkSid(n: number): void {
  if (!Number.isSafeInteger(n) || n <= 0) throw new RangeError(`bad sid ${n}`);
}

function pushVarint(out: number[], n: number): void {
  // n is a non-negative safe integer; no bit operations (they are 32-bit).
  while (n >= 0x80) {
    out.push((n % 0x80) + 0x80);
    n = Math.floor(n / 0x80);
  }
  out.push(n);
}

function readVarint(buf: Uint8Array, pos: number): [number, number] {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < 10; i++) {
    if (pos >= buf.length) throw new RangeError("truncated varint");
    const b = buf[pos++];
    value += (b & 0x7f) * scale;
    if (b < 0x80) return [value, pos];
    scale *= 0x80;
  }
  throw new RangeError("varint too long");
}

/** Decode a serialized `PushToClient`; unknown fields are skipped. */
export function decodeProtobufPush(buf: Uint8Array): Push {
  let sid = 0;
  let msg: Uint8Array = new Uint8Array(0);
  let pos = 0;
  while (pos < buf.length) {
    let key: number;
    [key, pos] = readVarint(buf, pos);
    const field = Math.floor(key / 8);
    const wireType = key % 8;
    if (wireType === 0) {
      let v: number;
      [v, pos] = readVarint(buf, pos);
      if (field === 1) sid = v;
    } else if (wireType === 2) {
      let len: number;
      [len, pos] = readVarint(buf, pos);
      if (pos + len > buf.length) throw new RangeError("truncated field");
      if (field === 2) msg = buf.slice(pos, pos + len);
      pos += len;
    } else if (wireType === 1) {
      pos += 8;
    } else if (wireType === 5) {
      pos += 4;
    } else {
      throw new RangeError(`unsupported wire type ${wireType}`);
    }
  }
  if (pos > buf.length) throw new RangeError("truncated field");
  return { sid, msg };
}

/** Encode a `ClientFrame`: acks (packed) and/or data (present when given, even empty). */
export function encodeClientFrame(acks: readonly number[], data?: Uint8Array): Uint8Array {
  const out: number[] = [];
  if (acks.length) {
    const packed: number[] = [];
    for (const sid of acks) {
      checkSid(sid);
      pushVarint(packed, sid);
    }
    out.push(0x0a); // field 1, length-delimited (packed)
    pushVarint(out, packed.length);
    out.push(...packed);
  }
  const head = new Uint8Array(out);
  if (data === undefined) return head;
  const dataHead: number[] = [0x12]; // field 2, length-delimited
  pushVarint(dataHead, data.length);
  const frame = new Uint8Array(head.length + dataHead.length + data.length);
  frame.set(head, 0);
  frame.set(dataHead, head.length);
  frame.set(data, head.length + dataHead.length);
  return frame;
}

export { checkSid };
