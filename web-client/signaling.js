// The WebSocket signaling client. One instance per connection attempt: a reconnect makes a
// new instance, so late events from an old socket can never touch the new session.

/** Protocol version sent in the join message; must match the server's PROTOCOL_VERSION. */
export const PROTOCOL_VERSION = 1;

const PING_INTERVAL_MS = 20_000;
// Two missed pongs plus slack. Mobile networks can leave a socket "open" but dead for minutes;
// without this the tablet would sit silently on a frozen conference.
const SILENCE_LIMIT_MS = 50_000;

/** The signaling endpoint on the same host that served the page. */
export function signalingUrl(loc = location) {
  // The server always runs TLS; plain ws only matters when a developer serves the page over http.
  const scheme = loc.protocol === 'http:' ? 'ws' : 'wss';
  return `${scheme}://${loc.host}/ws`;
}

/**
 * A WebSocket wrapper that hands parsed messages to `onMessage` strictly one at a time:
 * each handler's promise settles before the next message is delivered. That ordering is what
 * keeps subscribe offers, answers and roster updates from interleaving.
 */
export class Signaling {
  /**
   * @param {string} url
   * @param {{onOpen?: () => void, onMessage: (msg: object) => (void|Promise<void>),
   *          onClose?: (info: {code: number, reason: string, wasOpen: boolean}) => void}} handlers
   */
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers;
    this.ws = null;
    this.queue = Promise.resolve();
    this.closed = false;
    // Set only by close(): we walked away, so queued messages are no longer wanted.
    this.abandoned = false;
    this.wasOpen = false;
    this.lastReceived = 0;
    this.pingTimer = null;
  }

  /** Opens the socket. Failures arrive through onClose, like any other disconnect. */
  connect() {
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      console.error('WebSocket could not be created', err);
      queueMicrotask(() => this.finish(1006, String(err)));
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (this.closed) return;
      this.wasOpen = true;
      this.lastReceived = Date.now();
      this.pingTimer = setInterval(() => this.keepAlive(), PING_INTERVAL_MS);
      this.handlers.onOpen?.();
    };
    ws.onmessage = (event) => {
      if (this.closed) return;
      this.lastReceived = Date.now();
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        console.warn('ignoring non-JSON signaling message');
        return;
      }
      if (!msg || typeof msg.type !== 'string') return;
      this.queue = this.queue
        .then(() => (this.abandoned ? undefined : this.handlers.onMessage(msg)))
        .catch((err) => console.error(`handling ${msg.type} failed`, err));
    };
    ws.onclose = (event) => this.finish(event.code, event.reason);
    // onerror carries no detail in browsers; onclose always follows it.
  }

  /** Sends one message; returns false when the socket is not open (the caller decides what that means). */
  send(msg) {
    if (this.closed || !this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  /** True while the socket is open and usable. */
  get isOpen() {
    return !this.closed && this.ws?.readyState === WebSocket.OPEN;
  }

  /** Closes on our initiative. onClose is not called: the caller already knows. */
  close() {
    this.abandoned = true;
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.pingTimer);
    try {
      this.ws?.close(1000, 'client closing');
    } catch {
      // Already closing.
    }
  }

  keepAlive() {
    if (Date.now() - this.lastReceived > SILENCE_LIMIT_MS) {
      console.warn('signaling silent for too long; treating the connection as lost');
      try {
        this.ws?.close(4000, 'silent');
      } catch {
        // Ignore: finish() below reports the loss either way.
      }
      // A dead TCP connection may take minutes to report close, so report it ourselves.
      this.finish(4000, 'silent');
      return;
    }
    this.send({ type: 'ping' });
  }

  finish(code, reason) {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.pingTimer);
    // Let already-queued messages (e.g. a fatal error just before the close) run first.
    this.queue = this.queue.then(() =>
      this.abandoned ? undefined : this.handlers.onClose?.({ code, reason: reason || '', wasOpen: this.wasOpen }),
    );
  }
}
