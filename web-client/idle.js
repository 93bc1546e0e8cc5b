// Idle detection for the staff pages: the screen locks after a period without real input
// (a PC left unlocked at the nurses' station shows patient-related conference details).

const ACTIVITY_EVENTS = ['pointerdown', 'pointermove', 'keydown', 'touchstart', 'wheel'];
const CHECK_INTERVAL_MS = 5000;

/**
 * Calls `onIdle` once after `timeoutMs` without input, and `onActivity` on every input while
 * armed. Wall-clock based: background tabs throttle timers, so the check also runs when the
 * tab becomes visible again.
 */
export class IdleWatcher {
  constructor({ timeoutMs, onIdle, onActivity }) {
    this.timeoutMs = timeoutMs;
    this.onIdle = onIdle;
    this.onActivity = onActivity ?? (() => {});
    this.last = Date.now();
    this.timer = null;
    this.armed = false;
    this.activity = () => {
      if (!this.armed) return;
      this.last = Date.now();
      this.onActivity();
    };
    this.check = () => {
      if (this.armed && Date.now() - this.last >= this.timeoutMs) {
        this.stop();
        this.onIdle();
      }
    };
  }

  /** Starts watching from now. */
  start() {
    this.stop();
    this.armed = true;
    this.last = Date.now();
    for (const type of ACTIVITY_EVENTS) window.addEventListener(type, this.activity, { capture: true, passive: true });
    document.addEventListener('visibilitychange', this.check);
    this.timer = setInterval(this.check, Math.min(CHECK_INTERVAL_MS, Math.max(250, this.timeoutMs / 4)));
  }

  /** Stops watching (idempotent). */
  stop() {
    this.armed = false;
    clearInterval(this.timer);
    this.timer = null;
    for (const type of ACTIVITY_EVENTS) window.removeEventListener(type, this.activity, { capture: true });
    document.removeEventListener('visibilitychange', this.check);
  }
}

/**
 * Keeps the server session alive while the user is active, at most once per `intervalMs`
 * and only after real input since the last ping, so an unattended page lets it expire.
 */
export class ActivityPinger {
  constructor({ intervalMs, ping }) {
    this.intervalMs = intervalMs;
    this.ping = ping;
    this.lastPing = Date.now();
    this.dirty = false;
    this.timer = null;
  }

  /** Notes input; pings now or when the interval since the last ping has passed. */
  activity() {
    this.dirty = true;
    if (this.timer) return;
    const wait = Math.max(0, this.lastPing + this.intervalMs - Date.now());
    this.timer = setTimeout(() => this.fire(), wait);
  }

  fire() {
    this.timer = null;
    if (!this.dirty) return;
    this.dirty = false;
    this.lastPing = Date.now();
    this.ping();
  }

  /** Forgets pending activity (on lock or sign-out). `now` restarts the interval, e.g. at sign-in. */
  reset() {
    clearTimeout(this.timer);
    this.timer = null;
    this.dirty = false;
    this.lastPing = Date.now();
  }
}
