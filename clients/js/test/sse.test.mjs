// The SSE transport against a real im node (heartbeat interval 1 s): pushes, acks,
// send, heartbeat POSTs, close codes, and "auto" falling back from a failed WebSocket.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { ImClient, SseParser, sseUrlFrom } from "../dist/index.js";
import { Im, clientsOf, next, record, sleep, unackedDropsToZero } from "./im.mjs";

const HEARTBEAT = 300; // ms between heartbeat POSTs; the server's interval is 1 s
let im;
const { client, connected, closeAll } = clientsOf(ImClient, () => im, { transport: "sse", heartbeatInterval: HEARTBEAT });

/** A WebSocket that never opens, as behind a proxy that blocks upgrades. */
class BlockedWebSocket {
  constructor() {
    this.readyState = 0;
    this.binaryType = "blob";
    this.onopen = this.onmessage = this.onerror = this.onclose = null;
    setTimeout(() => {
      this.readyState = 3;
      this.onerror?.({ message: "blocked" });
      this.onclose?.({ code: 1006, reason: "" });
    }, 0);
  }
  send() { throw new Error("not open"); }
  close() {}
}

before(async () => {
  im = await new Im(["--plugin", "tests.plugins.echo", "--ack-interval", "0.5", "--heartbeat-interval", "1"]).start();
});

after(async () => {
  await closeAll();
  await im.stop();
});

test("sse url and event parsing", () => {
  assert.equal(sseUrlFrom("ws://h:1/conn?token=x"), "http://h:1/sse");
  assert.equal(sseUrlFrom("wss://h/im/conn"), "https://h/im/sse");
  const got = [];
  const p = new SseParser((event, data, id) => got.push([event, data, id]));
  p.feed("event: session\ndata: {\"session\":\"s\"}\n\n: ping\n\nid: 7\r");
  p.feed("\ndata: a\ndata: b\r\n\r\ndata:c\n");
  p.feed("\n");
  assert.deepEqual(got, [["session", "{\"session\":\"s\"}", ""], ["message", "a\nb", "7"], ["message", "c", ""]]);
  assert.throws(() => new ImClient(im.wsUrl, { token: "x", transport: "sse", codec: "protobuf" }), /json codec only/);
});

test("sse: receives text and binary pushes", async () => {
  const c = await connected("sse-recv");
  assert.equal(c.using, "sse");
  const got = next(c, "message");
  await im.api("push_user", { user: "sse-recv", text: "héllo" });
  const msg = await got;
  assert.equal(msg.sid, 0);
  assert.equal(msg.text(), "héllo");
  const bytes = Uint8Array.from([0, 1, 10, 13, 254, 255]);
  const got2 = next(c, "message");
  await im.api("push_user", { user: "sse-recv", data_b64: Buffer.from(bytes).toString("base64") });
  assert.deepEqual((await got2).data, bytes);
});

test("sse: auto-ack POSTs the ack", async () => {
  const c = await connected("sse-ack");
  const seen = record(c);
  const { sid } = await im.api("push_user", { user: "sse-ack", text: "ack me", ack: true });
  assert.ok(sid > 0);
  await unackedDropsToZero(im);
  await sleep(1000); // two ack intervals: a missing receipt would have been re-sent
  assert.deepEqual(seen.message.map((m) => m.sid), [sid]);
});

test("sse: manual ack", async () => {
  const c = await connected("sse-manual", { autoAck: false });
  const first = next(c, "message");
  const { sid } = await im.api("push_user", { user: "sse-manual", text: "later", ack: true });
  assert.equal((await first).sid, sid);
  assert.ok(c.ack(sid));
  await unackedDropsToZero(im);
});

test("sse: send() reaches the server's receive hook", async () => {
  const c = await connected("sse-send");
  const echo = next(c, "message");
  c.send("ping 1");
  assert.equal((await echo).text(), "echo:ping 1");
  const echo2 = next(c, "message");
  c.send(new TextEncoder().encode("bytes"));
  assert.equal((await echo2).text(), "echo:bytes");
});

test("sse: heartbeat POSTs keep the stream past 2 x the server's interval", async () => {
  const c = await connected("sse-alive");
  const quiet = await connected("sse-quiet", { heartbeatInterval: 60_000 });
  const seen = record(c);
  // Without heartbeats the server closes with 4000, and the client reconnects.
  const ev = await next(quiet, "disconnected", { timeout: 4000 });
  assert.equal(ev.code, 4000);
  assert.equal(ev.willReconnect, true);
  await sleep(500); // c has now been open for more than 2 x 1 s
  assert.deepEqual(seen.disconnected, []);
  const got = next(c, "message");
  await im.api("push_user", { user: "sse-alive", text: "still here" });
  assert.equal((await got).text(), "still here");
  assert.equal(c.connected, true);
  await quiet.close();
});

test("sse: a kick (4502) is final", async () => {
  const c = await connected("sse-kicked");
  const seen = record(c);
  const closed = next(c, "disconnected"); // the close event can beat the API's answer
  await im.api("kick", { user: "sse-kicked", reason: "test" });
  const ev = await closed;
  assert.equal(ev.code, 4502);
  assert.equal(ev.willReconnect, false);
  await sleep(300);
  assert.equal(seen.connected.length, 0);
  assert.equal(c.connected, false);
  assert.throws(() => c.send("x"), /not connected/);
});

test("sse: close() stops, the server sees the stream go", async () => {
  const c = await connected("sse-closer");
  const seen = record(c);
  const before = (await im.api("stats")).connections;
  await c.close();
  assert.deepEqual(seen.disconnected.map((e) => [e.code, e.willReconnect]), [[1000, false]]);
  const deadline = Date.now() + 3000;
  while ((await im.api("stats")).connections !== before - 1) {
    if (Date.now() > deadline) assert.fail("server kept the stream");
    await sleep(50);
  }
});

test("sse: a refused stream (HTTP 400) is a fatal error", async () => {
  const c = client(undefined, { getToken: () => "" });
  const seen = record(c);
  const err = await next(c, "error");
  assert.equal(err.status, 400);
  assert.equal(err.fatal, true);
  await sleep(200);
  assert.deepEqual(seen.disconnected.map((e) => e.willReconnect), [false]);
});

test("auto: falls back to SSE when the WebSocket cannot open, and keeps it", async () => {
  let made = 0;
  class Counted extends BlockedWebSocket {
    constructor(url) { super(url); made += 1; }
  }
  // No heartbeat POSTs: the server closes with 4000 after 2 s, so the client reconnects.
  const c = client("fallback", { transport: "auto", WebSocket: Counted, heartbeatInterval: 60_000 });
  const seen = record(c);
  await next(c, "connected");
  assert.equal(c.using, "sse");
  assert.equal(made, 1);
  assert.equal(seen.error.length, 0); // the blocked WebSocket is not reported
  const echo = next(c, "message");
  c.send("via sse");
  assert.equal((await echo).text(), "echo:via sse");
  // The reconnect goes straight to SSE: no second WebSocket.
  const closed = await next(c, "disconnected", { timeout: 4000 });
  assert.deepEqual([closed.code, closed.willReconnect], [4000, true]);
  assert.equal((await next(c, "connected")).connects, 2);
  assert.equal(c.using, "sse");
  assert.equal(made, 1);
});

test("auto: uses the WebSocket when it opens", async () => {
  const c = client("auto-ws", { transport: "auto" });
  await next(c, "connected");
  assert.equal(c.using, "websocket");
});
