// Live changes: GET /api/v2/changes read as server-sent events through fetch(), so the
// bearer token travels in the Authorization header as on every other call (EventSource
// cannot send one, and a token in the URL would end up in logs). When the stream is down
// the page polls instead; while it is up it still polls slowly, as a safety net.

import { authHeaders } from "./api.js";

const FAST_POLL_MS = 2000;
const SLOW_POLL_MS = 15000;

export class Live {
  constructor(onStatus) {
    this.onStatus = onStatus;
    this.listeners = new Set();
    this.connected = false;
    this.abort = null;
    this.pollTimer = null;
    this.backoff = 500;
    this.stopped = true;
  }

  // fn(change) is called for each change (null for "refetch everything").
  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  emit(change) {
    for (const fn of [...this.listeners]) {
      try { fn(change); } catch (err) { console.error(err); }
    }
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.connect();
    this.schedulePoll();
  }

  stop() {
    this.stopped = true;
    if (this.abort) this.abort.abort();
    clearTimeout(this.pollTimer);
    this.setConnected(false);
  }

  setConnected(value) {
    this.connected = value;
    this.onStatus(value ? "live" : (this.stopped ? "" : "polling"));
  }

  schedulePoll() {
    clearTimeout(this.pollTimer);
    if (this.stopped) return;
    this.pollTimer = setTimeout(() => {
      this.emit(null);
      this.schedulePoll();
    }, this.connected ? SLOW_POLL_MS : FAST_POLL_MS);
  }

  async connect() {
    while (!this.stopped) {
      this.abort = new AbortController();
      try {
        const resp = await fetch("/api/v2/changes", {
          headers: { Accept: "text/event-stream", ...authHeaders() },
          signal: this.abort.signal, cache: "no-store",
        });
        if (resp.status === 401) { this.emit({ kind: "unauthorized" }); return; }
        if (!resp.ok || !resp.body) throw new Error(`stream answered ${resp.status}`);
        await this.read(resp.body);
        this.backoff = 500;  // a stream that ran and ended: reconnect at once
      } catch (err) {
        if (this.stopped) return;
        this.backoff = Math.min(this.backoff * 2, 10000);
      }
      this.setConnected(false);
      this.schedulePoll();
      await new Promise((r) => setTimeout(r, this.backoff));
    }
  }

  async read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        this.dispatch(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  }

  dispatch(block) {
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const [field, ...rest] = line.split(":");
      const value = rest.join(":").replace(/^ /, "");
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    if (event === "hello") {
      this.setConnected(true);
      this.schedulePoll();
      this.emit(null);  // catch up on anything missed while connecting
    } else if (event === "resync") {
      this.emit(null);
    } else if (event === "change") {
      try { this.emit(JSON.parse(data.join("\n"))); } catch { this.emit(null); }
    }
  }
}
