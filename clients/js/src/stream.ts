/**
 * The live stream: `GET /notifications` over WebSocket, with resume from
 * the last cursor, de-duplication, backoff and token refresh. Standalone (no
 * imports at run time): its build is also what every node serves at
 * `/client/commissions-client.js`, and what the dashboard runs.
 *
 *   const client = new CommissionsClient({ url: 'wss://host/notifications', token, since: lastSeq });
 *   client.addEventListener('state', (e) => console.log(e.detail.state, e.detail.reason));
 *   client.addEventListener('event', (e) => apply(e.detail.event, e.detail.replayed));
 *   client.start();
 *
 * Events (an EventTarget; read `event.detail`):
 *   state   { state, reason }: 'connecting' | 'live' | 'reconnecting' | 'offline'.
 *   ready   the server's `ready` message (room, cursor, `totals`, `replay`).
 *   event   { event, replayed }: one event, in cursor order, never twice
 *           (anything at or below the last applied cursor is dropped here).
 *           Replayed events carry the totals of their time: apply totals from
 *           `ready` and from events with `replayed === false` only.
 *   error   { code, message }: a server `error` message, or 'gap' / 'bad_message'.
 *
 * Close codes: 4001 (token expired) asks the token source for a new token
 * and reconnects if it gives one that has not expired, else goes offline;
 * 4003 (forbidden) goes offline; every other close is retried with "full
 * jitter" backoff and resumed with `since`, so a missed event is replayed
 * and a repeated one ignored.
 */

import type { CommissionEvent, ConnectionState, ReadyMessage, TokenSource } from './types.js';

export interface Backoff {
  baseMs: number;
  capMs: number;
  /** A connection live this long resets the backoff. */
  healthyMs: number;
}

export interface StreamOptions {
  /** `ws(s)://host/notifications`; defaults to the page's own host. */
  url?: string;
  /** The JWT, or a function returning it (called before every connection: refresh there). */
  token: TokenSource;
  /** The last cursor already applied (partner room: seq; admin room: position). Omit for live events only. */
  since?: number | null;
  /** An admin watching one partner (for a partner token, its own partner). */
  partnerId?: number | null;
  /** 'protocol' (default: the token rides in Sec-WebSocket-Protocol, out of every URL and log) or 'query'. */
  tokenIn?: 'protocol' | 'query';
  backoff?: Partial<Backoff>;
  /** A ping every `pingMs`; no frame within `pingMs` after it = a dead connection. */
  pingMs?: number;
  /** The WebSocket class, where there is no global one (Node 20: `ws`). */
  webSocket?: WebSocketClass;
}

export interface StreamEvents {
  state: { state: ConnectionState; reason: string };
  ready: ReadyMessage;
  event: { event: CommissionEvent; replayed: boolean };
  error: { code: string; message: string };
}

type WebSocketClass = new (url: string | URL, protocols?: string | string[]) => WebSocket;

const OPEN = 1;

const OFFLINE_CLOSES = new Map<number, string>([
  [4001, 'token expired: sign in again'],
  [4003, 'forbidden for this token'],
]);

const CLOSE_REASONS = new Map<number, string>([
  [4000, 'client resumed'],
  [1000, 'closed by the server'],
  [1001, 'server going away'],
  [1003, 'server refused a message'],
  [1006, 'connection lost'],
  [1009, 'message too big'],
  [4002, 'heartbeat timeout'],
  [4008, 'too slow to keep up'],
]);

/** Decodes a JWT's payload for display and expiry checks only (no signature check: the server does that). */
export function decodeTokenPayload(token: string): Record<string, unknown> | null {
  try {
    const part = String(token).split('.')[1] ?? '';
    const base64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const padded = base64 + '='.repeat((4 - (base64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

function expired(token: string): boolean {
  const exp = decodeTokenPayload(token)?.exp;
  return typeof exp === 'number' && exp * 1000 <= Date.now();
}

export class CommissionsClient extends EventTarget {
  readonly url: string;
  readonly partnerId: number | null;
  readonly tokenIn: 'protocol' | 'query';
  readonly backoff: Backoff;
  readonly pingMs: number;
  /** The last seq (partner room) or position (admin room) applied, or null. */
  cursor: number | null;
  room: 'partner' | 'admin' | null = null;
  state: ConnectionState = 'offline';
  reason = 'not started';

  private readonly tokenSource: TokenSource;
  private readonly WebSocketImpl: WebSocketClass;
  private attempt = 0;
  private socket: WebSocket | null = null;
  private timers: Record<string, ReturnType<typeof setTimeout>> = {};
  private replayLeft = 0;
  private stopped = true;
  private refreshedAfterExpiry = false;
  private readonly onOnline = () => {
    // Waiting out a backoff delay (no socket open): try at once.
    if (this.state === 'reconnecting' && !this.socket) this.connectNow();
  };

  constructor(options: StreamOptions) {
    super();
    const { url, token, since, partnerId, tokenIn = 'protocol', backoff = {}, pingMs = 25000, webSocket } = options;
    if (!token) throw new TypeError('CommissionsClient needs a token');
    this.url = url || defaultUrl();
    this.tokenSource = token;
    this.partnerId = partnerId ?? null;
    this.tokenIn = tokenIn;
    this.backoff = { baseMs: 500, capMs: 30000, healthyMs: 10000, ...backoff };
    this.pingMs = pingMs;
    this.cursor = since !== null && since !== undefined && Number.isSafeInteger(Number(since)) ? Number(since) : null;
    const impl = webSocket ?? (globalThis as { WebSocket?: WebSocketClass }).WebSocket;
    if (!impl) throw new TypeError('no WebSocket here: pass { webSocket } (in Node 20, the `ws` package)');
    this.WebSocketImpl = impl;
  }

  /** Typed `addEventListener` for the four events. */
  on<K extends keyof StreamEvents>(type: K, listener: (detail: StreamEvents[K]) => void): () => void {
    const handler = (e: Event) => listener((e as CustomEvent<StreamEvents[K]>).detail);
    this.addEventListener(type, handler);
    return () => this.removeEventListener(type, handler);
  }

  start(): this {
    if (!this.stopped) return this;
    this.stopped = false;
    globalThis.addEventListener?.('online', this.onOnline);
    void this.connect('connecting', 'opening the connection');
    return this;
  }

  stop(reason = 'stopped'): void {
    this.stopped = true;
    globalThis.removeEventListener?.('online', this.onOnline);
    this.clearTimers();
    if (this.socket) {
      const socket = this.socket;
      this.socket = null;
      socket.close(1000, 'client stopped');
    }
    this.setState('offline', reason);
  }

  // ---- internals ----

  private async token(): Promise<string> {
    return typeof this.tokenSource === 'function' ? await this.tokenSource() : this.tokenSource;
  }

  private async connect(state: ConnectionState, reason: string): Promise<void> {
    if (this.stopped) return;
    let token: string;
    try {
      token = await this.token();
    } catch (err) {
      this.scheduleReconnect(`cannot get a token: ${(err as Error).message}`);
      return;
    }
    if (this.stopped) return;
    if (expired(token)) {
      this.stop(OFFLINE_CLOSES.get(4001));
      return;
    }
    this.setState(state, reason);
    const target = new URL(this.url, (globalThis as { location?: { href: string } }).location?.href);
    if (this.tokenIn === 'query') target.searchParams.set('token', token);
    if (this.cursor !== null) target.searchParams.set('since', String(this.cursor));
    if (this.partnerId !== null) target.searchParams.set('partner_id', String(this.partnerId));
    let socket: WebSocket;
    try {
      socket =
        this.tokenIn === 'protocol' ? new this.WebSocketImpl(target, ['bearer', token]) : new this.WebSocketImpl(target);
    } catch (err) {
      this.scheduleReconnect(`cannot open: ${(err as Error).message}`);
      return;
    }
    this.socket = socket;
    socket.onopen = () => this.armPing();
    socket.onmessage = (m) => this.onMessage(socket, m);
    socket.onclose = (c) => this.onClose(socket, c);
    // An error is always followed by a close, which decides what happens next.
    socket.onerror = () => {};
  }

  private onMessage(socket: WebSocket, message: MessageEvent): void {
    if (socket !== this.socket) return;
    this.armPing();
    let msg: { type?: unknown; data?: unknown; code?: string; message?: string };
    try {
      msg = JSON.parse(String(message.data));
    } catch {
      this.emit('error', { code: 'bad_message', message: 'the server sent a frame that is not JSON' });
      return;
    }
    switch (msg.type) {
      case 'ready':
        return this.onReady(msg as ReadyMessage);
      case 'pong':
        return;
      case 'error':
        return this.emit('error', { code: String(msg.code), message: String(msg.message) });
      default:
        if (typeof msg.type === 'string' && msg.data !== undefined) this.onEvent(socket, msg as CommissionEvent);
    }
  }

  private onReady(msg: ReadyMessage): void {
    this.room = msg.room === 'admin' ? 'admin' : 'partner';
    this.refreshedAfterExpiry = false;
    const head = Number(this.room === 'admin' ? msg.position : msg.seq);
    this.replayLeft = Number(msg.replay) || 0;
    // Live only (no since), or the server's log is behind our cursor (a
    // restored database): start from the server's head.
    if (this.cursor === null || (this.replayLeft === 0 && this.cursor > head)) this.cursor = head;
    this.setState('live', '');
    this.emit('ready', msg);
    clearTimeout(this.timers.healthy);
    this.timers.healthy = setTimeout(() => {
      this.attempt = 0;
    }, this.backoff.healthyMs);
  }

  private onEvent(socket: WebSocket, event: CommissionEvent): void {
    const cursor = Number(this.room === 'admin' ? event.position : event.seq);
    const replayed = this.replayLeft > 0;
    if (replayed) this.replayLeft -= 1;
    if (!Number.isSafeInteger(cursor)) return;
    if (this.cursor !== null && cursor <= this.cursor) return; // already applied: never twice
    if (this.room === 'partner' && this.cursor !== null && cursor > this.cursor + 1) {
      // The protocol promises no gap; if one shows anyway, resume from what we have.
      this.emit('error', { code: 'gap', message: `expected seq ${this.cursor + 1}, got ${cursor}; resuming` });
      this.abandon(socket, 4000, 'resuming after a gap');
      return;
    }
    this.cursor = cursor;
    this.emit('event', { event, replayed });
  }

  private onClose(socket: WebSocket, close: { code: number; reason: string }): void {
    if (socket !== this.socket) return;
    this.socket = null;
    clearTimeout(this.timers.ping);
    clearTimeout(this.timers.dead);
    clearTimeout(this.timers.healthy);
    if (this.stopped) return;
    if (close.code === 4001 && typeof this.tokenSource === 'function' && !this.refreshedAfterExpiry) {
      // Once per expiry: a source that keeps handing out dead tokens goes offline.
      this.refreshedAfterExpiry = true;
      void this.connect('reconnecting', 'token expired: refreshing it');
      return;
    }
    const offline = OFFLINE_CLOSES.get(close.code);
    if (offline) {
      this.stop(close.reason && !offline.startsWith(close.reason) ? `${offline} (${close.reason})` : offline);
      return;
    }
    const known = CLOSE_REASONS.get(close.code) || `closed (${close.code})`;
    this.scheduleReconnect(close.reason ? `${known}: ${close.reason}` : known);
  }

  /**
   * Leaves a socket we no longer trust without waiting for its close
   * handshake (a dead peer would never answer it), then resumes.
   */
  private abandon(socket: WebSocket, code: number, reason: string): void {
    if (socket !== this.socket) return;
    this.onClose(socket, { code, reason });
    socket.onmessage = null;
    socket.onclose = null;
    socket.close(code, reason);
  }

  private scheduleReconnect(reason: string): void {
    const ceiling = Math.min(this.backoff.capMs, this.backoff.baseMs * 2 ** this.attempt);
    const delay = Math.round(Math.random() * ceiling);
    this.attempt = Math.min(this.attempt + 1, 30);
    this.setState('reconnecting', `${reason}; retrying in ${(delay / 1000).toFixed(1)} s`);
    clearTimeout(this.timers.retry);
    this.timers.retry = setTimeout(() => void this.connect('reconnecting', reason), delay);
  }

  private connectNow(): void {
    clearTimeout(this.timers.retry);
    void this.connect('reconnecting', 'back online');
  }

  private armPing(): void {
    clearTimeout(this.timers.ping);
    clearTimeout(this.timers.dead);
    this.timers.ping = setTimeout(() => {
      const socket = this.socket;
      if (!socket || socket.readyState !== OPEN) return;
      socket.send('{"type":"ping"}');
      this.timers.dead = setTimeout(() => this.abandon(socket, 4002, 'no answer to ping'), this.pingMs);
    }, this.pingMs);
  }

  private clearTimers(): void {
    for (const timer of Object.values(this.timers)) clearTimeout(timer);
    this.timers = {};
  }

  private setState(state: ConnectionState, reason: string): void {
    if (this.state === state && this.reason === reason) return;
    this.state = state;
    this.reason = reason;
    this.emit('state', { state, reason });
  }

  private emit<K extends keyof StreamEvents>(type: K, detail: StreamEvents[K]): void {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

function defaultUrl(): string {
  const loc = (globalThis as { location?: { protocol: string; host: string } }).location;
  if (!loc) throw new TypeError('CommissionsClient needs a url outside a browser');
  return `${loc.protocol === 'https:' ? 'wss:' : 'ws:'}//${loc.host}/notifications`;
}
