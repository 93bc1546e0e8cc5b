// Sharing our screen: the capture (getDisplayMedia), the share button and the rules for
// when a share ends (our button, the browser's own "stop sharing" bar, the host, leaving).
// Getting the track onto the publish connection is the caller's part (`onChange`).

import { t } from './i18n.js';
import { allowed, Action } from './permissions.js';
import * as ui from './ui.js';

// Documents and charts need sharp text rather than motion.
const CAPTURE = { video: { frameRate: { ideal: 5, max: 15 } }, audio: false };

/** The screen share of this page; one at a time. */
export class ScreenShare {
  /**
   * @param {{getRole: () => (string|null), inConference: () => boolean,
   *          onChange: (track: (MediaStreamTrack|null)) => Promise<void>}} deps
   *   `onChange` publishes the new track, or stops publishing with null.
   */
  constructor({ getRole, inConference, onChange }) {
    this.getRole = getRole;
    this.inConference = inConference;
    this.onChange = onChange;
    /** The live capture track while sharing, else null. */
    this.track = null;
    this.busy = false;
  }

  /** Browsers without getDisplayMedia (iPadOS, most phones) get no share button. */
  get supported() {
    return typeof navigator.mediaDevices?.getDisplayMedia === 'function';
  }

  /** Redraws the share button and the "you are sharing" notice. */
  render() {
    ui.setScreenShareState({
      visible: this.supported && allowed(this.getRole(), Action.PublishScreen),
      sharing: Boolean(this.track),
      busy: this.busy,
    });
  }

  /** The share button. */
  toggle() {
    return this.track ? this.stop() : this.start();
  }

  async start() {
    if (this.busy || this.track || !allowed(this.getRole(), Action.PublishScreen)) return;
    this.busy = true;
    this.render();
    try {
      let captured;
      try {
        captured = await navigator.mediaDevices.getDisplayMedia(CAPTURE);
      } catch (err) {
        // NotAllowedError is also what a cancelled picker reports: no message for that.
        if (err?.name !== 'NotAllowedError') ui.toast(t('screen_share_failed'));
        return;
      }
      const track = captured.getVideoTracks()[0];
      for (const extra of captured.getTracks()) if (extra !== track) extra.stop();
      if (!track || !this.inConference()) {
        track?.stop();
        return;
      }
      // The browser's own "stop sharing" bar ends the track without asking us.
      track.addEventListener('ended', () => {
        if (this.track === track) this.stop();
      });
      this.track = track;
      this.render();
      await this.onChange(track);
    } catch (err) {
      console.error('screen share failed', err);
      ui.toast(t('screen_share_failed'));
      this.drop();
    } finally {
      this.busy = false;
      this.render();
    }
  }

  /** Stops sharing and tells the server. */
  async stop() {
    if (!this.track) return;
    this.drop();
    try {
      await this.onChange(null);
    } catch (err) {
      console.error('stopping the screen share failed', err);
    }
  }

  /** Ends the capture without renegotiating (the connection is going away anyway). */
  drop() {
    const track = this.track;
    this.track = null;
    if (track && track.readyState === 'live') track.stop();
    this.render();
  }

  /** The track to include when a publish connection is (re)built, if still live. */
  get liveTrack() {
    return this.track?.readyState === 'live' ? this.track : null;
  }
}
