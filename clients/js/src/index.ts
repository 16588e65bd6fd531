/**
 * A WebSocket client for the im push server (docs/protocol.md): receive pushes, ack
 * them, send business data, and reconnect with backoff by im's close-code rules
 * (4000-4499 and abnormal closures reconnect, 4500-4999 do not).
 *
 * The browser path uses the global `WebSocket` and nothing else. In Node the global
 * `WebSocket` is used when present (Node 22+), else the `ws` package (an optional
 * peer dependency), else the constructor given as the `WebSocket` option.
 *
 * With `transport: "auto"` (the default) a WebSocket that cannot open makes the
 * client try im's Server-Sent Events transport (`/sse`) at once; whichever opens
 * first is kept for that client's later reconnects. `transport: "sse"` forces it.
 */

import {
  type Codec,
  decodeJsonPush,
  decodeProtobufPush,
  encodeClientFrame,
  encodeJsonAck,
  toBytes,
} from "./wire.js";
import { SseConnection, sseUrlFrom } from "./sse.js";

export type { Codec } from "./wire.js";
export { decodeJsonPush, decodeProtobufPush, encodeClientFrame, encodeJsonAck } from "./wire.js";
export { SseParser, sseUrlFrom } from "./sse.js";

/** How the client reaches im: WebSocket, Server-Sent Events, or WebSocket with SSE fallback. */
export type Transport = "websocket" | "sse" | "auto";

export interface ReconnectOptions {
  /** Milliseconds before the first retry (default 500). */
  initialDelay?: number;
  /** Upper bound of the delay, in milliseconds (default 30000). */
  maxDelay?: number;
  /** Growth of the delay per failed attempt (default 2). */
  factor?: number;
  /** Randomisation of each delay: delay * (1 ± jitter) (0..1, default 0.5). */
  jitter?: number;
  /** Give up after this many attempts in a row that did not open (default: never). */
  maxAttempts?: number;
}

/** The subset of the WHATWG WebSocket this client uses (browsers, Node 22+, `ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  binaryType: string;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onerror: ((ev: any) => void) | null;
  onclose: ((ev: { code: number; reason: string; wasClean?: boolean }) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ImClientOptions {
  /** The token (with the default `token_auth` plugin: the user id). */
  token?: string;
  /** Called before each (re)connect; takes precedence over `token`. */
  getToken?: () => string | Promise<string>;
  /** How pushes are encoded (default "json"). */
  codec?: Codec;
  /** Ack every push that carries a sid as soon as it arrives (default true). */
  autoAck?: boolean;
  /** Backoff of reconnects, or false to never reconnect. */
  reconnect?: ReconnectOptions | false;
  /** Extra query parameters, e.g. `{tags: "a,b", message_type: "binary"}`. */
  params?: Record<string, string>;
  /** WebSocket constructor to use instead of the global one or `ws`. */
  WebSocket?: WebSocketConstructor;
  /**
   * "websocket", "sse" (Server-Sent Events + POSTs; json codec only) or "auto"
   * (default): WebSocket first, SSE when the WebSocket cannot open; the transport
   * that opened is kept for later reconnects. "auto" with protobuf is WebSocket only.
   */
  transport?: Transport;
  /** SSE only: the stream's URL (default: the WebSocket URL, http(s), `/conn` → `/sse`). */
  sseUrl?: string;
  /**
   * SSE only: milliseconds between heartbeat POSTs (default 30000). Must be below
   * the server's `--heartbeat-interval`, or the server closes the stream with 4000.
   */
  heartbeatInterval?: number;
  /** SSE only: EventSource constructor to use instead of the global one (else fetch). */
  EventSource?: new (url: string) => any;
}

/** A push: its sid (0 when no ack is wanted) and its payload. */
export class ImMessage {
  constructor(
    readonly sid: number,
    readonly data: Uint8Array,
  ) {}

  /** The payload decoded as UTF-8. */
  text(): string {
    return new TextDecoder().decode(this.data);
  }
}

/** An error of the client; `status` is the HTTP status of a refused upgrade, if known. */
export class ImError extends Error {
  constructor(
    message: string,
    readonly status?: number,
    readonly fatal = false,
  ) {
    super(message);
    this.name = "ImError";
  }
}

export interface ConnectedEvent {
  /** Connections opened so far by this client, this one included. */
  connects: number;
}

export interface DisconnectedEvent {
  code: number;
  reason: string;
  /** Whether the client will try to connect again. */
  willReconnect: boolean;
}

export interface ImClientEvents {
  connected: ConnectedEvent;
  disconnected: DisconnectedEvent;
  message: ImMessage;
  error: ImError;
}

type Listener<T> = (event: T) => void;

/** Close codes after which a client reconnects (besides 4000-4499). */
const RECONNECT_CODES = new Set([1001, 1005, 1006, 1011, 1012, 1013, 1014]);

/** Whether im's close-code rules say to reconnect after `code`. */
export function isReconnectable(code: number): boolean {
  return (code >= 4000 && code < 4500) || RECONNECT_CODES.has(code);
}

/** Whether a refused upgrade's HTTP status is worth retrying (overload, timeouts). */
function retryableStatus(status: number): boolean {
  return status === 408 || status === 429 || status >= 500;
}

const OPEN = 1;

async function resolveWebSocket(given?: WebSocketConstructor): Promise<WebSocketConstructor> {
  if (given) return given;
  const global = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (typeof global === "function") return global;
  const name = "ws"; // a variable, so browser bundlers do not try to resolve it
  try {
    const mod = (await import(name)) as { WebSocket?: WebSocketConstructor; default?: WebSocketConstructor };
    const ctor = mod.WebSocket ?? mod.default;
    if (ctor) return ctor;
  } catch {
    // fall through
  }
  throw new ImError("no WebSocket implementation: install the `ws` package or pass `WebSocket`", undefined, true);
}

/** The HTTP status out of a failed handshake's error event, when the library tells it. */
function handshakeStatus(ev: unknown): number | undefined {
  const e = ev as { message?: unknown; status?: unknown; error?: { message?: unknown } } | undefined;
  if (typeof e?.status === "number") return e.status; // the SSE transport's refusals
  for (const text of [e?.message, e?.error?.message]) {
    const m = typeof text === "string" ? /Unexpected server response: (\d{3})/.exec(text) : null;
    if (m) return Number(m[1]);
  }
  return undefined;
}

export class ImClient {
  readonly url: string;
  readonly codec: Codec;
  readonly autoAck: boolean;
  readonly transport: Transport;
  /** The transport of the current or last connection. */
  using: "websocket" | "sse" | undefined;
  /** The code of the last close, if any. */
  closeCode: number | undefined;

  private readonly options: ImClientOptions;
  private readonly backoff: Required<ReconnectOptions> | null;
  private readonly listeners: { [K in keyof ImClientEvents]: Set<Listener<ImClientEvents[K]>> } = {
    connected: new Set(),
    disconnected: new Set(),
    message: new Set(),
    error: new Set(),
  };
  private ws: WebSocketLike | null = null;
  /** The transport to use; null while "auto" has not opened one yet. */
  private chosen: "websocket" | "sse" | null = null;
  private closing = false;
  private stopped = false;
  private failures = 0;
  private connects = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private closeWaiters: Array<() => void> = [];

  constructor(url: string, options: ImClientOptions = {}) {
    if (options.token === undefined && options.getToken === undefined) {
      throw new TypeError("ImClient: give `token` or `getToken`");
    }
    this.url = url;
    this.options = options;
    this.codec = options.codec ?? "json";
    if (this.codec !== "json" && this.codec !== "protobuf") throw new TypeError(`unknown codec ${this.codec}`);
    this.autoAck = options.autoAck ?? true;
    this.transport = options.transport ?? "auto";
    if (!["websocket", "sse", "auto"].includes(this.transport)) throw new TypeError(`unknown transport ${this.transport}`);
    if (this.transport === "sse" && this.codec !== "json") throw new TypeError("the sse transport carries the json codec only");
    if (this.transport === "websocket" || this.codec !== "json") this.chosen = "websocket";
    else if (this.transport === "sse") this.chosen = "sse";
    this.backoff =
      options.reconnect === false
        ? null
        : {
            initialDelay: 500,
            maxDelay: 30_000,
            factor: 2,
            jitter: 0.5,
            maxAttempts: Infinity,
            ...options.reconnect,
          };
    // Start on the next tick, so listeners added right after `new` see everything.
    this.timer = setTimeout(() => void this.open(), 0);
  }

  /** Whether a connection is open now. */
  get connected(): boolean {
    return this.ws !== null && this.ws.readyState === OPEN;
  }

  on<K extends keyof ImClientEvents>(event: K, listener: Listener<ImClientEvents[K]>): this {
    this.listeners[event].add(listener);
    return this;
  }

  off<K extends keyof ImClientEvents>(event: K, listener: Listener<ImClientEvents[K]>): this {
    this.listeners[event].delete(listener);
    return this;
  }

  once<K extends keyof ImClientEvents>(event: K, listener: Listener<ImClientEvents[K]>): this {
    const wrapper: Listener<ImClientEvents[K]> = (ev) => {
      this.off(event, wrapper);
      listener(ev);
    };
    return this.on(event, wrapper);
  }

  private emit<K extends keyof ImClientEvents>(event: K, payload: ImClientEvents[K]): void {
    for (const listener of [...this.listeners[event]]) {
      try {
        listener(payload);
      } catch (err) {
        // Like EventTarget: a throwing listener does not stop the others.
        setTimeout(() => {
          throw err;
        }, 0);
      }
    }
  }

  /** Acknowledge pushes by sid (sids <= 0 are ignored). Returns false when not connected. */
  ack(...sids: number[]): boolean {
    const wanted = sids.filter((sid) => sid > 0);
    if (!wanted.length) return true;
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN) return false;
    ws.send(this.codec === "json" ? encodeJsonAck(wanted) : encodeClientFrame(wanted));
    return true;
  }

  /**
   * Send business data to the server's receive hook. json: a string goes as a text
   * frame, bytes as a binary frame, as they are; protobuf: wrapped in `ClientFrame.data`.
   * Throws when not connected.
   */
  send(data: string | Uint8Array | ArrayBuffer): void {
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN) throw new ImError("not connected");
    if (this.codec === "protobuf") ws.send(encodeClientFrame([], toBytes(data)));
    else ws.send(typeof data === "string" ? data : toBytes(data));
  }

  /** Close for good (code 1000); resolves once the socket is closed. */
  close(code = 1000, reason = ""): Promise<void> {
    this.closing = true;
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    const ws = this.ws;
    if (!ws || this.stopped) {
      this.stopped = true;
      return Promise.resolve();
    }
    const done = new Promise<void>((resolve) => this.closeWaiters.push(resolve));
    ws.close(code, reason);
    return done;
  }

  private async token(): Promise<string> {
    return this.options.getToken ? await this.options.getToken() : (this.options.token as string);
  }

  private buildUrl(token: string, sse = false): string {
    const url = new URL(sse ? (this.options.sseUrl ?? sseUrlFrom(this.url)) : this.url);
    url.searchParams.set("token", token);
    url.searchParams.set("codec", this.codec);
    for (const [k, v] of Object.entries(this.options.params ?? {})) url.searchParams.set(k, v);
    return url.toString();
  }

  private async open(): Promise<void> {
    this.timer = null;
    if (this.closing) return this.finish();
    let token: string;
    try {
      token = await this.token();
    } catch (err) {
      this.emit("error", new ImError(`connect: ${String((err as Error)?.message ?? err)}`));
      this.afterClose(1006, "", false, false);
      return;
    }
    if (this.closing) return this.finish();
    this.attempt(this.chosen ?? "websocket", token);
  }

  /** One connection attempt over `mode`; "auto" follows a failed WebSocket with SSE. */
  private async attempt(mode: "websocket" | "sse", token: string): Promise<void> {
    const fallback = mode === "websocket" && this.chosen === null;
    let ws: WebSocketLike;
    try {
      if (mode === "sse") {
        ws = new SseConnection(
          this.buildUrl(token, true),
          this.options.heartbeatInterval ?? 30_000,
          this.options.EventSource,
        ) as WebSocketLike;
      } else {
        const WS = await resolveWebSocket(this.options.WebSocket);
        if (this.closing) return this.finish();
        ws = new WS(this.buildUrl(token));
      }
    } catch (err) {
      if (fallback) return this.attempt("sse", token);
      const error = err instanceof ImError ? err : new ImError(`connect: ${String((err as Error)?.message ?? err)}`);
      this.emit("error", error);
      this.afterClose(1006, "", false, error.fatal);
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.using = mode;
    let opened = false;
    let refused: ImError | undefined;
    ws.onopen = () => {
      opened = true;
      this.chosen = mode;
      this.failures = 0;
      this.connects += 1;
      this.emit("connected", { connects: this.connects });
    };
    ws.onmessage = (ev) => this.receive(ev.data);
    ws.onerror = (ev) => {
      if (opened) {
        this.emit("error", new ImError(String(ev?.message ?? "websocket error")));
        return;
      }
      const status = handshakeStatus(ev);
      const fatal = status !== undefined && !retryableStatus(status);
      refused = new ImError(
        status !== undefined ? `upgrade refused with HTTP ${status}` : `connect failed: ${String(ev?.message ?? "websocket error")}`,
        status,
        fatal,
      );
    };
    ws.onclose = (ev) => {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      if (this.ws === ws) this.ws = null;
      if (!opened) {
        // "auto": a WebSocket that did not open (blocked, refused) is followed by SSE
        // at once, with the same token; only the SSE attempt's outcome is reported.
        if (fallback && !this.closing) return void this.attempt("sse", token);
        const error = refused ?? new ImError(`connect failed (close ${ev.code})`);
        this.emit("error", error);
        this.afterClose(ev.code || 1006, ev.reason ?? "", false, error.fatal);
      } else {
        this.afterClose(ev.code || 1006, ev.reason ?? "", true, false);
      }
    };
  }

  private afterClose(code: number, reason: string, opened: boolean, fatal: boolean): void {
    this.closeCode = code;
    if (!opened) this.failures += 1; // attempts in a row that did not open
    const willReconnect =
      !this.closing &&
      !fatal &&
      this.backoff !== null &&
      isReconnectable(code) &&
      this.failures < this.backoff.maxAttempts;
    this.emit("disconnected", { code, reason, willReconnect });
    if (!willReconnect) return this.finish();
    const b = this.backoff as Required<ReconnectOptions>;
    const base = Math.min(b.initialDelay * b.factor ** this.failures, b.maxDelay);
    const delay = Math.max(0, base * (1 + b.jitter * (2 * Math.random() - 1)));
    this.timer = setTimeout(() => void this.open(), delay);
  }

  private finish(): void {
    this.stopped = true;
    const waiters = this.closeWaiters;
    this.closeWaiters = [];
    for (const resolve of waiters) resolve();
  }

  private receive(raw: unknown): void {
    let push;
    try {
      if (this.codec === "json") {
        push = decodeJsonPush(typeof raw === "string" ? raw : toBytes(raw as ArrayBuffer));
      } else {
        push = decodeProtobufPush(typeof raw === "string" ? toBytes(raw) : toBytes(raw as ArrayBuffer));
      }
    } catch (err) {
      this.emit("error", new ImError(`undecodable push: ${String((err as Error)?.message ?? err)}`));
      return;
    }
    if (push.sid > 0 && this.autoAck) this.ack(push.sid);
    this.emit("message", new ImMessage(push.sid, push.msg));
  }
}

export default ImClient;
