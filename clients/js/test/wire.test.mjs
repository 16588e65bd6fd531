import { test } from "node:test";
import assert from "node:assert/strict";
import { decodeJsonPush, decodeProtobufPush, encodeClientFrame, encodeJsonAck } from "../dist/index.js";
import { isReconnectable } from "../dist/index.js";

const hex = (bytes) => Buffer.from(bytes).toString("hex");

test("json push and ack envelope", () => {
  const push = decodeJsonPush('{"sid":123,"msg":"aGk="}');
  assert.equal(push.sid, 123);
  assert.equal(new TextDecoder().decode(push.msg), "hi");
  assert.deepEqual(decodeJsonPush('{"msg":"aGk="}').sid, 0);
  assert.equal(decodeJsonPush("{}").msg.length, 0);
  assert.equal(encodeJsonAck([5]), '{"ack":5}');
  assert.equal(encodeJsonAck([5, 6]), '{"ack":[5,6]}');
});

test("protobuf PushToClient decodes, sids up to 2^53 exactly", () => {
  // PushToClient{sid: 300, msg: "x"}
  const push = decodeProtobufPush(Uint8Array.from([0x08, 0xac, 0x02, 0x12, 0x01, 0x78]));
  assert.equal(push.sid, 300);
  assert.equal(hex(push.msg), "78");
  const big = Number.MAX_SAFE_INTEGER;
  const frame = encodeClientFrame([big]); // same varint layout as field 1 of PushToClient
  const varint = frame.slice(2);
  const pushBig = decodeProtobufPush(Uint8Array.from([0x08, ...varint]));
  assert.equal(pushBig.sid, big);
  assert.equal(decodeProtobufPush(new Uint8Array(0)).sid, 0);
  assert.throws(() => decodeProtobufPush(Uint8Array.from([0x12, 0x05, 0x01])));
});

test("protobuf ClientFrame encodes acks packed and data", () => {
  assert.equal(hex(encodeClientFrame([1])), "0a0101");
  assert.equal(hex(encodeClientFrame([1, 300])), "0a0301ac02");
  assert.equal(hex(encodeClientFrame([], new TextEncoder().encode("hi"))), "12026869");
  assert.equal(hex(encodeClientFrame([], new Uint8Array(0))), "1200");
  assert.equal(hex(encodeClientFrame([])), "");
  assert.throws(() => encodeClientFrame([0]));
});

test("close-code classes", () => {
  for (const code of [1001, 1006, 1011, 4000, 4001, 4002, 4499]) assert.ok(isReconnectable(code), String(code));
  for (const code of [1000, 1002, 1007, 1009, 4500, 4501, 4502, 4999]) assert.ok(!isReconnectable(code), String(code));
});
