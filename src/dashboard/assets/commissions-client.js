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
const OPEN = 1;
const OFFLINE_CLOSES = new Map([
    [4001, 'token expired: sign in again'],
    [4003, 'forbidden for this token'],
]);
const CLOSE_REASONS = new Map([
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
export function decodeTokenPayload(token) {
    try {
        const part = String(token).split('.')[1] ?? '';
        const base64 = part.replace(/-/g, '+').replace(/_/g, '/');
        const padded = base64 + '='.repeat((4 - (base64.length % 4)) % 4);
        const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
        return JSON.parse(new TextDecoder().decode(bytes));
    }
    catch {
        return null;
    }
}
function expired(token) {
    const exp = decodeTokenPayload(token)?.exp;
    return typeof exp === 'number' && exp * 1000 <= Date.now();
}
export class CommissionsClient extends EventTarget {
    url;
    partnerId;
    tokenIn;
    backoff;
    pingMs;
    /** The last seq (partner room) or position (admin room) applied, or null. */
    cursor;
    room = null;
    state = 'offline';
    reason = 'not started';
    tokenSource;
    WebSocketImpl;
    attempt = 0;
    socket = null;
    timers = {};
    replayLeft = 0;
    stopped = true;
    refreshedAfterExpiry = false;
    onOnline = () => {
        // Waiting out a backoff delay (no socket open): try at once.
        if (this.state === 'reconnecting' && !this.socket)
            this.connectNow();
    };
    constructor(options) {
        super();
        const { url, token, since, partnerId, tokenIn = 'protocol', backoff = {}, pingMs = 25000, webSocket } = options;
        if (!token)
            throw new TypeError('CommissionsClient needs a token');
        this.url = url || defaultUrl();
        this.tokenSource = token;
        this.partnerId = partnerId ?? null;
        this.tokenIn = tokenIn;
        this.backoff = { baseMs: 500, capMs: 30000, healthyMs: 10000, ...backoff };
        this.pingMs = pingMs;
        this.cursor = since !== null && since !== undefined && Number.isSafeInteger(Number(since)) ? Number(since) : null;
        const impl = webSocket ?? globalThis.WebSocket;
        if (!impl)
            throw new TypeError('no WebSocket here: pass { webSocket } (in Node 20, the `ws` package)');
        this.WebSocketImpl = impl;
    }
    /** Typed `addEventListener` for the four events. */
    on(type, listener) {
        const handler = (e) => listener(e.detail);
        this.addEventListener(type, handler);
        return () => this.removeEventListener(type, handler);
    }
    start() {
        if (!this.stopped)
            return this;
        this.stopped = false;
        globalThis.addEventListener?.('online', this.onOnline);
        void this.connect('connecting', 'opening the connection');
        return this;
    }
    stop(reason = 'stopped') {
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
    async token() {
        return typeof this.tokenSource === 'function' ? await this.tokenSource() : this.tokenSource;
    }
    async connect(state, reason) {
        if (this.stopped)
            return;
        let token;
        try {
            token = await this.token();
        }
        catch (err) {
            this.scheduleReconnect(`cannot get a token: ${err.message}`);
            return;
        }
        if (this.stopped)
            return;
        if (expired(token)) {
            this.stop(OFFLINE_CLOSES.get(4001));
            return;
        }
        this.setState(state, reason);
        const target = new URL(this.url, globalThis.location?.href);
        if (this.tokenIn === 'query')
            target.searchParams.set('token', token);
        if (this.cursor !== null)
            target.searchParams.set('since', String(this.cursor));
        if (this.partnerId !== null)
            target.searchParams.set('partner_id', String(this.partnerId));
        let socket;
        try {
            socket =
                this.tokenIn === 'protocol' ? new this.WebSocketImpl(target, ['bearer', token]) : new this.WebSocketImpl(target);
        }
        catch (err) {
            this.scheduleReconnect(`cannot open: ${err.message}`);
            return;
        }
        this.socket = socket;
        socket.onopen = () => this.armPing();
        socket.onmessage = (m) => this.onMessage(socket, m);
        socket.onclose = (c) => this.onClose(socket, c);
        // An error is always followed by a close, which decides what happens next.
        socket.onerror = () => { };
    }
    onMessage(socket, message) {
        if (socket !== this.socket)
            return;
        this.armPing();
        let msg;
        try {
            msg = JSON.parse(String(message.data));
        }
        catch {
            this.emit('error', { code: 'bad_message', message: 'the server sent a frame that is not JSON' });
            return;
        }
        switch (msg.type) {
            case 'ready':
                return this.onReady(msg);
            case 'pong':
                return;
            case 'error':
                return this.emit('error', { code: String(msg.code), message: String(msg.message) });
            default:
                if (typeof msg.type === 'string' && msg.data !== undefined)
                    this.onEvent(socket, msg);
        }
    }
    onReady(msg) {
        this.room = msg.room === 'admin' ? 'admin' : 'partner';
        this.refreshedAfterExpiry = false;
        const head = Number(this.room === 'admin' ? msg.position : msg.seq);
        this.replayLeft = Number(msg.replay) || 0;
        // Live only (no since), or the server's log is behind our cursor (a
        // restored database): start from the server's head.
        if (this.cursor === null || (this.replayLeft === 0 && this.cursor > head))
            this.cursor = head;
        this.setState('live', '');
        this.emit('ready', msg);
        clearTimeout(this.timers.healthy);
        this.timers.healthy = setTimeout(() => {
            this.attempt = 0;
        }, this.backoff.healthyMs);
    }
    onEvent(socket, event) {
        const cursor = Number(this.room === 'admin' ? event.position : event.seq);
        const replayed = this.replayLeft > 0;
        if (replayed)
            this.replayLeft -= 1;
        if (!Number.isSafeInteger(cursor))
            return;
        if (this.cursor !== null && cursor <= this.cursor)
            return; // already applied: never twice
        if (this.room === 'partner' && this.cursor !== null && cursor > this.cursor + 1) {
            // The protocol promises no gap; if one shows anyway, resume from what we have.
            this.emit('error', { code: 'gap', message: `expected seq ${this.cursor + 1}, got ${cursor}; resuming` });
            this.abandon(socket, 4000, 'resuming after a gap');
            return;
        }
        this.cursor = cursor;
        this.emit('event', { event, replayed });
    }
    onClose(socket, close) {
        if (socket !== this.socket)
            return;
        this.socket = null;
        clearTimeout(this.timers.ping);
        clearTimeout(this.timers.dead);
        clearTimeout(this.timers.healthy);
        if (this.stopped)
            return;
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
    abandon(socket, code, reason) {
        if (socket !== this.socket)
            return;
        this.onClose(socket, { code, reason });
        socket.onmessage = null;
        socket.onclose = null;
        socket.close(code, reason);
    }
    scheduleReconnect(reason) {
        const ceiling = Math.min(this.backoff.capMs, this.backoff.baseMs * 2 ** this.attempt);
        const delay = Math.round(Math.random() * ceiling);
        this.attempt = Math.min(this.attempt + 1, 30);
        this.setState('reconnecting', `${reason}; retrying in ${(delay / 1000).toFixed(1)} s`);
        clearTimeout(this.timers.retry);
        this.timers.retry = setTimeout(() => void this.connect('reconnecting', reason), delay);
    }
    connectNow() {
        clearTimeout(this.timers.retry);
        void this.connect('reconnecting', 'back online');
    }
    armPing() {
        clearTimeout(this.timers.ping);
        clearTimeout(this.timers.dead);
        this.timers.ping = setTimeout(() => {
            const socket = this.socket;
            if (!socket || socket.readyState !== OPEN)
                return;
            socket.send('{"type":"ping"}');
            this.timers.dead = setTimeout(() => this.abandon(socket, 4002, 'no answer to ping'), this.pingMs);
        }, this.pingMs);
    }
    clearTimers() {
        for (const timer of Object.values(this.timers))
            clearTimeout(timer);
        this.timers = {};
    }
    setState(state, reason) {
        if (this.state === state && this.reason === reason)
            return;
        this.state = state;
        this.reason = reason;
        this.emit('state', { state, reason });
    }
    emit(type, detail) {
        this.dispatchEvent(new CustomEvent(type, { detail }));
    }
}
function defaultUrl() {
    const loc = globalThis.location;
    if (!loc)
        throw new TypeError('CommissionsClient needs a url outside a browser');
    return `${loc.protocol === 'https:' ? 'wss:' : 'ws:'}//${loc.host}/notifications`;
}
