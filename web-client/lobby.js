// The waiting-room panel for those who may admit (host and staff): who is waiting, from
// which invitation, whether from a device the invitation was not first used on, and the
// admit / deny buttons. A new arrival gets a toast and a short chime, because the host is
// usually looking at the patient, not at the screen.

import { t, roleName, onLangChange } from './i18n.js';
import { toast } from './ui.js';

// A click waits for the server's next lobby update; if none comes, the buttons come back.
const PENDING_TIMEOUT_MS = 5000;

let handlers = { onAdmit: () => {}, onDeny: () => {} };
/** Waiting entries from the latest `lobby` message, in arrival order. */
let entries = [];
let canAdmit = false;
/** Ids already announced, so a repeated lobby message does not chime again. */
const announced = new Set();
/** id -> timer of a pending admit/deny click. */
const pending = new Map();
let audio = null;

const $ = (id) => document.getElementById(id);

/** Wires the admit and deny actions (each receives the participant id). */
export function initLobby({ onAdmit, onDeny }) {
  handlers = { onAdmit, onDeny };
}

/** Applies a `lobby` message. `admit` says whether our role may admit at all. */
export function setLobby(waiting, { admit }) {
  entries = (Array.isArray(waiting) ? waiting : []).filter((e) => e && typeof e.id === 'string');
  canAdmit = admit;
  const present = new Set(entries.map((e) => e.id));
  for (const [id, timer] of pending) {
    if (!present.has(id)) {
      clearTimeout(timer);
      pending.delete(id);
    }
  }
  if (canAdmit) {
    const arrivals = entries.filter((e) => !announced.has(e.id));
    for (const entry of arrivals) {
      announced.add(entry.id);
      toast(t('lobby_arrived', { name: entry.display_name, role: roleName(entry.role) }));
    }
    if (arrivals.length) chime();
  }
  render();
}

/** Our role changed: hide the panel if we may no longer admit. */
export function setCanAdmit(admit) {
  canAdmit = admit;
  render();
}

/** Forgets everything (we left or were disconnected for good). */
export function resetLobby() {
  entries = [];
  announced.clear();
  for (const timer of pending.values()) clearTimeout(timer);
  pending.clear();
  render();
}

function act(id, fn) {
  if (pending.has(id)) return;
  pending.set(
    id,
    setTimeout(() => {
      pending.delete(id);
      render();
    }, PENDING_TIMEOUT_MS),
  );
  fn(id);
  render();
}

function render() {
  const panel = $('lobby');
  if (!panel) return;
  const show = canAdmit && entries.length > 0;
  panel.hidden = !show;
  $('lobby-count').textContent = show ? t('lobby_count', { n: entries.length }) : '';
  const list = $('lobby-list');
  const template = $('lobby-entry-template');
  list.replaceChildren(
    ...(show ? entries : []).map((entry) => {
      const li = template.content.firstElementChild.cloneNode(true);
      li.dataset.participantId = entry.id;
      li.querySelector('.lobby-name').textContent = entry.display_name;
      li.querySelector('.lobby-role').textContent = roleName(entry.role);
      li.querySelector('.lobby-invitation').textContent = t('lobby_invitation', { id: entry.invitation ?? '—' });
      const second = Boolean(entry.second_device);
      li.classList.toggle('is-second-device', second);
      const badge = li.querySelector('.lobby-second');
      badge.hidden = !second;
      badge.textContent = t('lobby_second_device');
      const hint = li.querySelector('.lobby-second-hint');
      hint.hidden = !second;
      hint.textContent = t('lobby_second_device_hint');
      const busy = pending.has(entry.id);
      for (const [selector, label, aria, fn] of [
        ['.lobby-admit', 'admit', 'admit_aria', handlers.onAdmit],
        ['.lobby-deny', 'deny', 'deny_aria', handlers.onDeny],
      ]) {
        const button = li.querySelector(selector);
        button.dataset.participantId = entry.id;
        button.textContent = t(label);
        button.setAttribute('aria-label', t(aria, { name: entry.display_name }));
        button.disabled = busy;
        button.addEventListener('click', () => act(entry.id, fn));
      }
      return li;
    }),
  );
}

/** Two short tones. Best effort: audio may be unavailable or still locked by autoplay rules. */
function chime() {
  try {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return;
    audio ??= new Ctx();
    if (audio.state === 'suspended') audio.resume().catch(() => {});
    const now = audio.currentTime;
    [880, 1175].forEach((freq, i) => {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      const start = now + i * 0.18;
      osc.type = 'sine';
      osc.frequency.value = freq;
      gain.gain.setValueAtTime(0.0001, start);
      gain.gain.exponentialRampToValueAtTime(0.2, start + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, start + 0.15);
      osc.connect(gain).connect(audio.destination);
      osc.start(start);
      osc.stop(start + 0.16);
    });
  } catch {
    // The toast already told the host; the chime is a courtesy.
  }
}

onLangChange(render);
