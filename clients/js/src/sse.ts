/**
 * im's Server-Sent Events transport (docs/protocol.md, "SSE") behind the same small
 * WebSocket-like surface the client drives: `onopen` on the `session` event,
 * `onmessage` with each push's JSON text, `onclose` with the code of the server's
 * `close` event (1006 when the stream ends without one), `send` POSTing one client
 * message to `/sse/send?session=ID`, and a heartbeat POST (an empty body) every
 * `heartbeatInterval` ms, since only a POST counts as a sign of life.
 *
 * Browsers use the global `EventSource`; elsewhere (Node) a small reader over
 * `fetch` and the streamed body parses the event stream.
 */

export interface SseCloseEvent {
  code: number;
  reason: string;
}

export interface SseErrorEvent {
  message: string;
  /** The HTTP status of a refused stream, when known. */
  status?: number;
}

interface EventSourceLike {
  onmessage: ((ev: { data: string; lastEventId?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  addEventListener(type: string, listener: (ev: { data: string }) => void): void;
  close(): void;
}

type EventSourceConstructor = new (url: string) => EventSourceLike;

/** `ws(s)://host/…/conn?…` → `http(s)://host/…/sse` (query dropped). */
export function sseUrlFrom(wsUrl: string): string {
  const url = new URL(wsUrl);
  if (url.protocol === "ws:") url.protocol = "http:";
  else if (url.protocol === "wss:") url.protocol = "https:";
  url.pathname = /\/conn$/.test(url.pathname)
    ? url.pathname.replace(/\/conn$/, "/sse")
    : url.pathname.replace(/\/?$/, "/sse");
  url.search = "";
  url.hash = "";
  return url.toString();
}

/** Splits an event stream into events (the WHATWG parsing rules, minus `retry:`). */
export class SseParser {
  private buffer = "";
  private data: string[] = [];
  private event = "";
  private id = "";
  private sawCR = false;

  constructor(private readonly dispatch: (event: string, data: string, id: string) => void) {}

  feed(chunk: string): void {
    let text = chunk;
    if (this.sawCR && text.startsWith("\n")) text = text.slice(1); // a CRLF split across chunks
    this.sawCR = false;
    this.buffer += text;
    for (;;) {
      const m = /\r\n|\r|\n/.exec(this.buffer);
      if (!m) return;
      if (m[0] === "\r" && m.index === this.buffer.length - 1) {
        this.sawCR = true; // its LF may come in the next chunk
      }
      const line = this.buffer.slice(0, m.index);
      this.buffer = this.buffer.slice(m.index + m[0].length);
      this.line(line);
    }
  }

  private line(line: string): void {
    if (line === "") {
      if (this.data.length) this.dispatch(this.event || "message", this.data.join("\n"), this.id);
      this.data = [];
      this.event = "";
      this.id = "";
      return;
    }
    if (line.startsWith(":")) return; // a comment (`: ping`)
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id") this.id = value;
  }
}

const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 3;

export class SseConnection {
  readyState = CONNECTING;
  binaryType = "arraybuffer";
  /** The stream's session id, once the `session` event came. */
  session = "";
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onerror: ((ev: SseErrorEvent) => void) | null = null;
  onclose: ((ev: SseCloseEvent) => void) | null = null;

  private readonly abort = new AbortController();
  private source: EventSourceLike | null = null;
  private heartbeat: ReturnType<typeof setInterval> | null = null;
  private queue: Promise<void> = Promise.resolve();
  private readonly sendUrl: string;

  constructor(
    url: string,
    private readonly heartbeatInterval: number,
    EventSourceImpl?: EventSourceConstructor,
  ) {
    const u = new URL(url);
    u.pathname = u.pathname.replace(/\/?$/, "/send");
    u.search = "";
    this.sendUrl = u.toString();
    const ES = EventSourceImpl ?? (globalThis as { EventSource?: EventSourceConstructor }).EventSource;
    if (typeof ES === "function") this.openEventSource(ES, url);
    else void this.openFetch(url);
  }

  /** POST one client message (in order with the others); empty = a heartbeat. */
  send(data: string | Uint8Array): void {
    if (this.readyState !== OPEN) throw new Error("not connected");
    const url = `${this.sendUrl}?session=${encodeURIComponent(this.session)}`;
    this.queue = this.queue.then(async () => {
      if (this.readyState !== OPEN) return;
      try {
        const res = await fetch(url, { method: "POST", body: data as BodyInit });
        await res.arrayBuffer().catch(() => undefined);
        if (res.status !== 204 && this.readyState === OPEN) {
          this.onerror?.({ message: `POST /sse/send answered HTTP ${res.status}`, status: res.status });
        }
      } catch (err) {
        if (this.readyState === OPEN) this.onerror?.({ message: `POST /sse/send: ${String((err as Error)?.message ?? err)}` });
      }
    });
  }

  /** Stop reading; the server sees the socket go and closes with 1000. */
  close(code = 1000, reason = ""): void {
    this.end(code, reason);
  }

  private end(code: number, reason: string): void {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    if (this.heartbeat !== null) clearInterval(this.heartbeat);
    this.heartbeat = null;
    this.source?.close();
    this.abort.abort();
    const onclose = this.onclose;
    setTimeout(() => onclose?.({ code, reason }), 0);
  }

  private dispatch(event: string, data: string): void {
    if (this.readyState === CLOSED) return;
    if (event === "session") {
      let session = "";
      try {
        session = String((JSON.parse(data) as { session?: unknown }).session ?? "");
      } catch {
        // left empty: refused below
      }
      if (!session) {
        this.onerror?.({ message: "bad session event" });
        this.end(1006, "");
        return;
      }
      this.session = session;
      this.readyState = OPEN;
      this.heartbeat = setInterval(() => {
        if (this.readyState === OPEN) this.send("");
      }, this.heartbeatInterval);
      this.onopen?.({});
    } else if (event === "close") {
      let code = 1006;
      let reason = "";
      try {
        const body = JSON.parse(data) as { code?: unknown; reason?: unknown };
        code = Number(body.code ?? 1006);
        reason = String(body.reason ?? "");
      } catch {
        // an unreadable close: abnormal
      }
      this.end(code, reason);
    } else if (event === "message" && this.readyState === OPEN) {
      this.onmessage?.({ data });
    }
  }

  private openEventSource(ES: EventSourceConstructor, url: string): void {
    const source = new ES(url);
    this.source = source;
    source.addEventListener("session", (ev) => this.dispatch("session", ev.data));
    source.addEventListener("close", (ev) => this.dispatch("close", ev.data));
    source.onmessage = (ev) => this.dispatch("message", ev.data);
    // An EventSource retries by itself; the client's own rules decide instead.
    source.onerror = () => {
      if (this.readyState === CONNECTING) this.onerror?.({ message: "event stream failed" });
      this.end(1006, "");
    };
  }

  private async openFetch(url: string): Promise<void> {
    let res: Response;
    try {
      res = await fetch(url, { headers: { accept: "text/event-stream" }, signal: this.abort.signal });
    } catch (err) {
      if (this.readyState !== CLOSED) {
        this.onerror?.({ message: `event stream failed: ${String((err as Error)?.message ?? err)}` });
        this.end(1006, "");
      }
      return;
    }
    if (res.status !== 200 || !res.body) {
      let detail = "";
      try {
        const body = (await res.json()) as { error?: { message?: unknown }; data?: unknown };
        detail = String(body.error?.message ?? body.data ?? "");
      } catch {
        // no JSON body
      }
      this.onerror?.({
        message: `event stream refused with HTTP ${res.status}${detail ? `: ${detail}` : ""}`,
        status: res.status,
      });
      this.end(1006, "");
      return;
    }
    const parser = new SseParser((event, data) => this.dispatch(event, data));
    const decoder = new TextDecoder();
    const reader = res.body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        parser.feed(decoder.decode(value, { stream: true }));
        if (this.readyState === CLOSED) break;
      }
    } catch {
      // aborted by close(), or the connection broke
    }
    reader.cancel().catch(() => undefined);
    this.end(1006, ""); // no-op after a `close` event or close()
  }
}
