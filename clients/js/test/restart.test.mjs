// The server goes away (1001) and comes back on the same port: the client reconnects.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ImClient } from "../dist/index.js";
import { Im, next, record } from "./im.mjs";

test("reconnects to a restarted server on the same port", async () => {
  const first = await new Im().start();
  const c = new ImClient(first.wsUrl, {
    token: "restart",
    codec: "protobuf",
    reconnect: { initialDelay: 50, maxDelay: 250, factor: 2, jitter: 0.2 },
  });
  const seen = record(c);
  try {
    await next(c, "connected");
    const closed = next(c, "disconnected");
    await first.stop();
    const ev = await closed;
    assert.equal(ev.code, 1001);
    assert.equal(ev.willReconnect, true);
    // While the port is closed the attempts fail and are retried.
    const failed = await next(c, "disconnected");
    assert.equal(failed.willReconnect, true);
    // Listen first: the client may reconnect before start() has seen the server up.
    const reconnected = next(c, "connected", { timeout: 20_000 });
    const second = await new Im([], first.port).start();
    try {
      assert.equal((await reconnected).connects, 2);
      const got = next(c, "message");
      await second.api("push_user", { user: "restart", text: "new server" });
      assert.equal((await got).text(), "new server");
      assert.ok(seen.error.length >= 1); // the refused attempts were reported
      assert.ok(seen.error.every((e) => !e.fatal));
    } finally {
      await c.close();
      await second.stop();
    }
  } finally {
    await c.close();
    await first.stop();
  }
});
