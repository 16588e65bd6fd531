// Test helpers: start a real im node (im_core.cli) on free ports, call its HTTP API,
// and wait for client events.
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import path from "node:path";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const PYTHON = process.env.IM_PYTHON || "python3";

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export class Im {
  constructor(args = [], port) {
    this.args = args;
    this.port = port;
    this.proc = null;
    this.stderr = "";
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/conn`;
  }

  async start() {
    this.port ??= await freePort();
    const rpcPort = await freePort();
    const env = {
      ...process.env,
      IM_DISABLE_PLUGIN_AUTOLOAD: "1",
      PYTHONPATH: [ROOT, process.env.PYTHONPATH].filter(Boolean).join(path.delimiter),
    };
    const argv = ["-m", "im_core.cli", "--host", "127.0.0.1", "--http-port", String(this.port),
      "--rpc-port", String(rpcPort), ...this.args];
    this.proc = spawn(PYTHON, argv, { cwd: ROOT, env, stdio: ["ignore", "ignore", "pipe"] });
    this.proc.stderr.on("data", (chunk) => { this.stderr += chunk; });
    const exited = new Promise((resolve) => this.proc.once("exit", resolve));
    this.exited = exited;
    const deadline = Date.now() + 15_000;
    for (;;) {
      if (this.proc.exitCode !== null) throw new Error(`im exited: ${this.stderr}`);
      try {
        const res = await fetch(`http://127.0.0.1:${this.port}/ping`);
        if (res.ok) return this;
      } catch {
        // not up yet
      }
      if (Date.now() > deadline) throw new Error(`im did not start: ${this.stderr}`);
      await sleep(50);
    }
  }

  /** SIGTERM and wait for the exit (im closes its connections with 1001). */
  async stop() {
    if (this.proc && this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill("SIGTERM");
      const timer = setTimeout(() => this.proc.kill("SIGKILL"), 5000);
      await this.exited;
      clearTimeout(timer);
    }
  }

  async api(route, body) {
    const res = await fetch(`http://127.0.0.1:${this.port}/api/v1/${route}`, body === undefined
      ? {}
      : { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    const json = await res.json();
    if (!res.ok) throw new Error(`${route}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Backoff fast enough for tests. */
export const FAST = { initialDelay: 50, maxDelay: 200, factor: 2, jitter: 0.2 };

/** Clients of one test file: `client()` makes one with `defaults` (and `im()`'s URL),
 * `connected()` waits for its first connection, `closeAll()` ends them. */
export function clientsOf(ImClient, im, defaults = {}) {
  const made = [];
  const client = (token, options = {}) => {
    const c = new ImClient(im().wsUrl, { token, reconnect: FAST, ...defaults, ...options });
    made.push(c);
    return c;
  };
  const connected = async (token, options) => {
    const c = client(token, options);
    await next(c, "connected");
    return c;
  };
  const closeAll = () => Promise.all(made.map((c) => c.close()));
  return { client, connected, closeAll };
}

/** Wait until the server tracks no unacked message (acks arrived). */
export async function unackedDropsToZero(im, timeout = 3000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const { unacked } = await im.api("stats");
    if (unacked === 0) return;
    if (Date.now() > deadline) throw new Error(`still ${unacked} unacked`);
    await sleep(50);
  }
}

/** The next `event` of `client` (optionally the next one `match` accepts). */
export function next(client, event, { timeout = 5000, match = () => true } = {}) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.off(event, listener);
      reject(new Error(`no ${event} within ${timeout} ms`));
    }, timeout);
    const listener = (ev) => {
      if (!match(ev)) return;
      clearTimeout(timer);
      client.off(event, listener);
      resolve(ev);
    };
    client.on(event, listener);
  });
}

/** Record every event of `client`, for assertions about what did not happen. */
export function record(client) {
  const seen = { connected: [], disconnected: [], message: [], error: [] };
  for (const name of Object.keys(seen)) client.on(name, (ev) => seen[name].push(ev));
  return seen;
}
