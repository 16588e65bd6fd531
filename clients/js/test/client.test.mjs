// The client against a real im node: receive, acks, send, reconnect rules.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { ImClient } from "../dist/index.js";
import { Im, clientsOf, next, record, sleep, unackedDropsToZero } from "./im.mjs";

let im;
const { client, connected, closeAll } = clientsOf(ImClient, () => im, {});

before(async () => {
  im = await new Im(["--plugin", "tests.plugins.echo", "--ack-interval", "0.5", "--max-inbound-rate", "20"]).start();
});

after(async () => {
  await closeAll();
  await im.stop();
});

for (const codec of ["json", "protobuf"]) {
  test(`${codec}: receives text and binary pushes`, async () => {
    const c = await connected(`recv-${codec}`, { codec });
    const got = next(c, "message");
    await im.api("push_user", { user: `recv-${codec}`, text: "héllo" });
    const msg = await got;
    assert.equal(msg.sid, 0);
    assert.equal(msg.text(), "héllo");
    const bytes = Uint8Array.from([0, 1, 254, 255]);
    const got2 = next(c, "message");
    await im.api("push_user", { user: `recv-${codec}`, data_b64: Buffer.from(bytes).toString("base64") });
    assert.deepEqual((await got2).data, bytes);
  });

  test(`${codec}: auto-ack stops the re-sends`, async () => {
    const c = await connected(`auto-${codec}`, { codec });
    const seen = record(c);
    const { sid } = await im.api("push_user", { user: `auto-${codec}`, text: "ack me", ack: true });
    assert.ok(sid > 0);
    await unackedDropsToZero(im);
    await sleep(1200); // two ack intervals: a missing receipt would have been re-sent
    assert.deepEqual(seen.message.map((m) => m.sid), [sid]);
  });

  test(`${codec}: manual ack`, async () => {
    const user = `manual-${codec}`;
    const c = await connected(user, { codec, autoAck: false });
    const first = next(c, "message");
    const { sid } = await im.api("push_user", { user, text: "later", ack: true });
    assert.equal((await first).sid, sid);
    // Not acked: the server sends it again after the ack interval.
    const again = await next(c, "message", { timeout: 3000 });
    assert.equal(again.sid, sid);
    assert.ok(c.ack(sid));
    await unackedDropsToZero(im);
  });

  test(`${codec}: send() reaches the server's receive hook`, async () => {
    const c = await connected(`send-${codec}`, { codec });
    const echo = next(c, "message");
    c.send("ping 1");
    assert.equal((await echo).text(), "echo:ping 1");
    const echo2 = next(c, "message");
    c.send(new TextEncoder().encode("bytes"));
    assert.equal((await echo2).text(), "echo:bytes");
  });
}

test("reconnects after a reconnectable close (4002), asking getToken again", async () => {
  let calls = 0;
  const c = client(undefined, { getToken: async () => { calls += 1; return "flood"; } });
  await next(c, "connected");
  const closed = next(c, "disconnected");
  // --max-inbound-rate 20: the 21st frame in a second closes with 4002. No more than
  // that, so no unread frame makes the server's close a TCP reset (seen as 1006).
  for (let i = 0; i < 21; i++) c.send(`frame ${i}`);
  const ev = await closed;
  assert.equal(ev.code, 4002);
  assert.equal(ev.willReconnect, true);
  const again = await next(c, "connected");
  assert.equal(again.connects, 2);
  assert.equal(calls, 2);
  const got = next(c, "message", { match: (m) => m.text() === "back" });
  await im.api("push_user", { user: "flood", text: "back" });
  await got;
});

test("a kick (4502) is final", async () => {
  const c = await connected("kicked");
  const seen = record(c);
  await im.api("kick", { user: "kicked", reason: "test" });
  const ev = await next(c, "disconnected");
  assert.deepEqual(ev, { code: 4502, reason: ev.reason, willReconnect: false });
  await sleep(400);
  assert.equal(seen.connected.length, 0);
  assert.equal(c.connected, false);
});

test("a second login replaces the first (4501, final)", async () => {
  const a = await connected("twice");
  const closed = next(a, "disconnected");
  await connected("twice");
  assert.deepEqual(await closed, { code: 4501, reason: (await closed).reason, willReconnect: false });
});

test("close() closes with 1000 and does not reconnect", async () => {
  const c = await connected("closer");
  const seen = record(c);
  await c.close();
  assert.deepEqual(seen.disconnected.map((e) => [e.code, e.willReconnect]), [[1000, false]]);
  assert.throws(() => c.send("x"), /not connected/);
  assert.equal(c.ack(5), false);
  await sleep(200);
  assert.equal(seen.connected.length, 0);
});

test("a refused upgrade is an error and is not retried", async () => {
  let calls = 0;
  const c = client(undefined, { getToken: () => { calls += 1; return ""; } }); // token_auth: 400
  const seen = record(c);
  const err = await next(c, "error");
  assert.equal(err.status, 400);
  assert.equal(err.fatal, true);
  await sleep(300);
  assert.deepEqual(seen.disconnected.map((e) => e.willReconnect), [false]);
  assert.equal(calls, 1);
  assert.equal(seen.connected.length, 0);
});
