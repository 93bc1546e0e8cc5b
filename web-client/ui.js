// Everything that touches the DOM. Each setter remembers what it last showed so a language
// switch can redraw the same state in the other language without asking app.js again.

import { t, roleName, errorText, onLangChange } from './i18n.js';
import { formatDateTime } from './datetime.js';

const $ = (id) => document.getElementById(id);

const VIEWS = ['join', 'waiting', 'conference', 'left', 'denied', 'removed', 'ended', 'replaced', 'error'];

/** Shows one view and hides the others; the body's data-view lets CSS adapt the header. */
export function showView(name) {
  for (const view of VIEWS) $(`view-${view}`).hidden = view !== name;
  document.body.dataset.view = name;
  // Conference toasts mean nothing on the left/error pages.
  if (name !== 'conference') $('toasts').replaceChildren();
  // Move focus to the new view's heading so screen readers announce the change.
  const heading = $(`view-${name}`).querySelector('h1, h2');
  if (heading) {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
}

function setIcon(svgUse, id) {
  svgUse.setAttribute('href', `#${id}`);
}

// ---------------------------------------------------------------- join view

let joinInfo = null;
let deviceResult = null;
let joinBusy = null;
let nameErrorKey = null;

/** Fills title, role and the prefilled name from the token claims (all optional). */
export function setJoinInfo({ title, role, name, noteKey }) {
  joinInfo = { title, role, noteKey };
  const input = $('display-name');
  if (name && !input.value) input.value = name;
  renderJoinInfo();
}

function renderJoinInfo() {
  if (!joinInfo) return;
  $('join-title').textContent = joinInfo.title || '—';
  $('join-role').textContent = joinInfo.role ? roleName(joinInfo.role) : '—';
  const note = $('join-note');
  note.hidden = !joinInfo.noteKey;
  note.textContent = joinInfo.noteKey ? t(joinInfo.noteKey) : '';
}

/** The trimmed display name from the form. */
export function getDisplayName() {
  return $('display-name').value.trim();
}

/** Shows (or clears, with null) the name field's validation message. */
export function setNameError(key, focus = true) {
  nameErrorKey = key;
  const input = $('display-name');
  const msg = $('display-name-error');
  msg.hidden = !key;
  msg.textContent = key ? t(key) : '';
  if (key) {
    input.setAttribute('aria-invalid', 'true');
    if (focus) input.focus();
  } else {
    input.removeAttribute('aria-invalid');
  }
}

/** Shows the camera preview (mirrored for the front camera, as people expect of a mirror). */
export function setPreview(stream, facing) {
  const video = $('preview');
  const hasVideo = Boolean(stream?.getVideoTracks().length);
  video.srcObject = hasVideo ? stream : null;
  video.classList.toggle('mirror', facing !== 'environment');
  $('preview-empty').hidden = hasVideo;
  if (hasVideo) video.play().catch(() => {});
}

/** Shows microphone/camera status lines and the matching advice; null while checking. */
export function setDeviceStatus(result) {
  deviceResult = result;
  renderDeviceStatus();
}

function renderDeviceStatus() {
  const r = deviceResult;
  for (const [kind, id] of [
    ['audio', 'device-mic'],
    ['video', 'device-camera'],
  ]) {
    const status = r ? r[kind] : 'checking';
    const el = $(id);
    el.dataset.status = status;
    el.querySelector('.device-state').textContent = t(`device_${status}`);
  }
  const help = $('device-help');
  const retry = $('device-retry');
  let key = null;
  if (r) {
    const statuses = [r.audio, r.video];
    if (statuses.includes('insecure')) key = 'device_help_insecure';
    else if (statuses.includes('denied')) key = 'device_help_denied';
    else if (statuses.includes('busy')) key = 'device_help_busy';
    else if (statuses.every((s) => s !== 'ok')) key = 'device_help_none';
    else if (statuses.some((s) => s !== 'ok')) key = 'device_help_notfound';
  }
  help.hidden = !key;
  help.textContent = key ? t(key) : '';
  retry.hidden = !r || (r.audio === 'ok' && r.video === 'ok') || r.audio === 'insecure';
}

// ---------------------------------------------------------------- waiting room

let waitingInfo = null;

/** Fills the waiting screen: conference title, our name and role (from the `waiting` message). */
export function setWaitingInfo(info) {
  waitingInfo = info;
  renderWaitingInfo();
}

function renderWaitingInfo() {
  if (!waitingInfo) return;
  $('waiting-title').textContent = waitingInfo.title || '—';
  $('waiting-name').textContent = waitingInfo.name || '—';
  $('waiting-role').textContent = waitingInfo.role ? roleName(waitingInfo.role) : '—';
}

/** The optional local preview while waiting (camera only; nothing is sent yet). */
export function setWaitingPreview(stream, facing) {
  const video = $('waiting-preview');
  const hasVideo = Boolean(stream?.getVideoTracks().length);
  video.srcObject = hasVideo ? stream : null;
  video.classList.toggle('mirror', facing !== 'environment');
  video.parentElement.hidden = !hasVideo;
  if (hasVideo) video.play().catch(() => {});
}

/** Disables the form while joining and shows progress text (a key), or re-enables it with null. */
export function setJoinBusy(key) {
  joinBusy = key;
  $('join-button').disabled = Boolean(key);
  $('display-name').disabled = Boolean(key);
  $('device-retry').disabled = Boolean(key);
  const status = $('join-status');
  status.hidden = !key;
  status.textContent = key ? t(key) : '';
}

// ---------------------------------------------------------------- header status

let connection = null;
let quality = null;
let roomTitle = '';
let participantCount = 0;

/** Sets the conference title and participant count shown in the header. */
export function setRoomHeader(title, count) {
  roomTitle = title ?? roomTitle;
  participantCount = count ?? participantCount;
  $('room-title').textContent = roomTitle;
  // The header truncates long titles; the tooltip shows the whole one on a PC.
  $('room-title').title = roomTitle;
  $('participant-count').textContent = participantCount ? t('participants_count', { n: participantCount }) : '';
}

/**
 * Shows the overall state (connecting|connected|reconnecting|disconnected) with a colored dot,
 * plus one line per link (signaling, publish, subscribe; null hides a link that does not exist).
 */
export function setConnection(state, links) {
  connection = { state, links };
  const el = $('connection-state');
  el.hidden = !state;
  if (!state) return;
  el.dataset.state = state;
  $('connection-label').textContent = t(`state_${state}`);
  for (const name of ['signaling', 'publish', 'subscribe']) {
    const item = $(`link-${name}`);
    const linkState = links?.[name] ?? null;
    item.dataset.state = linkState ?? 'none';
    item.querySelector('.link-name').textContent = t(`link_${name}`);
    item.querySelector('.link-state').textContent = linkState ? t(`state_${linkState}`) : t('link_none');
  }
}

/** Shows publish-connection quality ({rttMs, lossPct, level}) or hides it with null. */
export function setQuality(q) {
  quality = q;
  const el = $('quality');
  el.hidden = !q;
  if (!q) return;
  el.dataset.level = q.level;
  $('quality-label').textContent = `${t('quality')}: ${t(`quality_${q.level}`)}`;
  $('quality-detail').textContent = t('quality_detail', {
    rtt: q.rttMs === null ? '—' : `${q.rttMs} ms`,
    loss: q.lossPct === null ? '—' : `${q.lossPct.toFixed(1)}%`,
  });
}

// ---------------------------------------------------------------- controls

let micState = { available: false, muted: false };
let cameraState = { available: false, muted: false };

/** Microphone button: disabled without a microphone; the label states the current state. */
export function setMicState(state) {
  micState = state;
  renderToggle($('mic-toggle'), state, 'i-mic', 'i-mic-off', 'mic');
}

/** Camera button, and the front/rear switch which only makes sense with a camera. */
export function setCameraState(state) {
  cameraState = state;
  renderToggle($('camera-toggle'), state, 'i-cam', 'i-cam-off', 'camera');
  $('camera-switch').hidden = !state.available;
}

// The visible text says the current state ("マイク オフ"); the accessible name starts with the
// same words (so voice control users can say what they see) and adds what a press does.
function renderToggle(button, { available, muted }, iconOn, iconOff, prefix) {
  const mode = !available ? 'none' : muted ? 'off' : 'on';
  button.disabled = !available;
  // Stable hook for tests and styling: "true" only when the user muted an existing device.
  button.dataset.muted = String(mode === 'off');
  button.classList.toggle('is-off', mode !== 'on');
  setIcon(button.querySelector('use'), mode === 'on' ? iconOn : iconOff);
  button.querySelector('.btn-text').textContent = t(`${prefix}_${mode}`);
  button.setAttribute('aria-label', t(mode === 'none' ? `${prefix}_none` : `${prefix}_${mode}_aria`));
}

/** Busy state for the camera switch so a double tap cannot start two switches. */
export function setCameraSwitchBusy(busy) {
  $('camera-switch').disabled = busy;
}

/** Shows the "watching only" notice when nothing can be published. */
export function setPublishNotice(show) {
  $('publish-notice').hidden = !show;
}

// ---------------------------------------------------------------- tiles

/** id -> {el, entry, local, stream} */
const tiles = new Map();
let localFacing = 'user';

function tileVideoVisible(tile) {
  const { entry, stream, local } = tile;
  if (!stream || stream.getVideoTracks().length === 0) return false;
  if (entry?.video_muted) return false;
  // The roster's publishing list says whether the server is forwarding video for this person.
  if (!local && entry && Array.isArray(entry.publishing) && !entry.publishing.includes('video')) return false;
  return true;
}

function renderTile(tile) {
  const { el, entry, local } = tile;
  const name = entry?.display_name ?? '';
  el.querySelector('.tile-name').textContent = name;
  el.querySelector('.tile-you').textContent = local ? t('you') : '';
  el.querySelector('.tile-role').textContent = entry ? roleName(entry.role) : '';
  el.querySelector('.avatar-initial').textContent = [...name][0] ?? '?';
  el.setAttribute('aria-label', [name, local ? t('you') : '', entry ? roleName(entry.role) : ''].join(' ').trim());
  el.dataset.role = entry?.role ?? '';
  const micIcon = el.querySelector('.mute-mic');
  const camIcon = el.querySelector('.mute-cam');
  // SVG elements have no .hidden property; the attribute works through the [hidden] CSS rule.
  micIcon.toggleAttribute('hidden', !entry?.audio_muted);
  camIcon.toggleAttribute('hidden', !entry?.video_muted);
  micIcon.setAttribute('aria-label', t('muted_mic_aria'));
  camIcon.setAttribute('aria-label', t('muted_camera_aria'));
  const showVideo = tileVideoVisible(tile);
  el.classList.toggle('no-video', !showVideo);
  el.querySelector('video').classList.toggle('mirror', local && localFacing !== 'environment');
  tileDecorator?.(el, entry, local);
}

let tileDecorator = null;

/**
 * Registers `fn(tileElement, rosterEntry, isLocal)`, called after every tile render, so the
 * host controls can add or drop their buttons without ui.js knowing the permission rules.
 */
export function setTileDecorator(fn) {
  tileDecorator = fn;
}

/** Re-renders every tile (after our own role changed, for instance). */
export function refreshTiles() {
  for (const tile of tiles.values()) renderTile(tile);
  renderScreens();
}

/** The roster entry behind a tile, for labels elsewhere (screen tiles, lobby toasts). */
export function entryFor(id) {
  return tiles.get(id)?.entry ?? null;
}

function layoutTiles() {
  const grid = $('tiles');
  grid.dataset.count = String(Math.min(tiles.size, 9));
  setRoomHeader(undefined, tiles.size);
}

let onAutoplayBlocked = () => {};

/** Called when the browser refuses to start remote audio without a tap. */
export function setAutoplayBlockedHandler(fn) {
  onAutoplayBlocked = fn;
}

function playVideo(video) {
  video.play().catch((err) => {
    if (err?.name === 'NotAllowedError') onAutoplayBlocked();
  });
}

/** Creates or updates a tile from a roster entry. The local tile is muted (no echo). */
export function upsertTile(entry, { local = false } = {}) {
  let tile = tiles.get(entry.id);
  if (!tile) {
    const el = $('tile-template').content.firstElementChild.cloneNode(true);
    el.dataset.participantId = entry.id;
    if (local) el.dataset.local = 'true';
    const video = el.querySelector('video');
    // Remote tiles play the participant's audio through the same element, so only ours is muted.
    video.muted = local;
    tile = { el, entry, local, stream: null };
    tiles.set(entry.id, tile);
    const grid = $('tiles');
    if (local) grid.prepend(el);
    else grid.append(el);
    layoutTiles();
  }
  tile.entry = entry;
  tile.local = tile.local || local;
  renderTile(tile);
  renderScreens();
}

/** Attaches a participant's MediaStream (audio+video) to its tile, creating a placeholder if needed. */
export function setTileStream(id, stream) {
  let tile = tiles.get(id);
  if (!tile) {
    // Media can arrive before the roster that names it; the roster fills in the label.
    upsertTile({ id, display_name: '', role: '', audio_muted: false, video_muted: false, publishing: null });
    tile = tiles.get(id);
  }
  tile.stream = stream;
  const video = tile.el.querySelector('video');
  if (video.srcObject !== stream) video.srcObject = stream;
  if (stream && !tile.watching?.has(stream)) {
    // Tracks come and go inside the same stream on renegotiation; re-check the avatar then.
    tile.watching = tile.watching ?? new WeakSet();
    tile.watching.add(stream);
    const refresh = () => {
      renderTile(tile);
      if (tile.stream === stream) playVideo(video);
    };
    stream.addEventListener('addtrack', refresh);
    stream.addEventListener('removetrack', refresh);
  }
  renderTile(tile);
  if (stream) playVideo(video);
}

/** Removes tiles whose ids are not in `keep` (the local tile is always kept). */
export function retainTiles(keep) {
  for (const [id, tile] of tiles) {
    if (tile.local || keep.has(id)) continue;
    tile.el.querySelector('video').srcObject = null;
    tile.el.remove();
    tiles.delete(id);
  }
  layoutTiles();
}

/** Removes every tile (before a fresh join, whose participant id differs). */
export function clearTiles() {
  for (const tile of tiles.values()) {
    tile.el.querySelector('video').srcObject = null;
    tile.el.remove();
  }
  tiles.clear();
  layoutTiles();
  setScreens(new Map());
}

// ---------------------------------------------------------------- screen shares

/** participant id -> {el, track, stream} */
const screens = new Map();
let screenDecorator = null;

/** Registers `fn(screenTileElement, participantId, displayName)`, called after each screen tile render. */
export function setScreenDecorator(fn) {
  screenDecorator = fn;
}

/**
 * Shows one large tile per remote screen share (`shares`: participant id -> track), above
 * (or beside, in landscape) the people. Tiles whose share ended are removed.
 */
export function setScreens(shares) {
  for (const [id, screen] of screens) {
    if (shares.get(id) === screen.track) continue;
    screen.el.querySelector('video').srcObject = null;
    screen.el.remove();
    screens.delete(id);
  }
  for (const [id, track] of shares) {
    if (screens.has(id)) continue;
    const el = $('screen-template').content.firstElementChild.cloneNode(true);
    el.dataset.participantId = id;
    const stream = new MediaStream([track]);
    const video = el.querySelector('video');
    video.srcObject = stream;
    screens.set(id, { el, track, stream });
    $('screens').append(el);
    playVideo(video);
  }
  renderScreens();
}

function renderScreens() {
  const box = $('screens');
  for (const [id, screen] of screens) {
    const name = tiles.get(id)?.entry?.display_name;
    const label = name ? t('screen_of', { name }) : t('screen_of_unknown');
    screen.el.querySelector('.screen-name').textContent = label;
    screen.el.setAttribute('aria-label', label);
    screenDecorator?.(screen.el, id, name);
  }
  box.hidden = screens.size === 0;
  box.dataset.count = String(screens.size);
  $('view-conference').dataset.screens = String(screens.size);
}

// ---------------------------------------------------------------- host and sharing controls

let screenShare = { visible: false, sharing: false, busy: false };

/** The share button: hidden when the role or the browser cannot share; shows its state. */
export function setScreenShareState(state) {
  screenShare = state;
  const button = $('screen-share-button');
  button.hidden = !state.visible;
  button.disabled = state.busy;
  button.dataset.sharing = String(state.sharing);
  button.classList.toggle('is-active', state.sharing);
  setIcon(button.querySelector('use'), state.sharing ? 'i-screen-off' : 'i-screen');
  button.querySelector('.btn-text').textContent = t(state.sharing ? 'screen_share_stop' : 'screen_share');
  button.setAttribute('aria-label', t(state.sharing ? 'screen_share_stop_aria' : 'screen_share_aria'));
  button.setAttribute('aria-pressed', String(state.sharing));
  $('sharing-notice').hidden = !state.sharing;
}

/** The end-conference button in the control bar (host only). */
export function setEndConferenceVisible(visible) {
  $('end-conference-button').hidden = !visible;
}

/** Remembers which way the local camera faces so only the front camera is mirrored. */
export function setLocalFacing(facing) {
  localFacing = facing;
  for (const tile of tiles.values()) if (tile.local) renderTile(tile);
}

/** Re-renders the local tile after a local mute or track change. */
export function refreshTile(id) {
  const tile = tiles.get(id);
  if (tile) renderTile(tile);
}

/** Retries playback of every tile after a user tap (autoplay policy). */
export function playAllTiles() {
  for (const tile of tiles.values()) if (tile.stream) playVideo(tile.el.querySelector('video'));
}

/** Shows or hides the "tap to enable audio" banner. */
export function setAudioBlocked(blocked) {
  $('audio-unblock').hidden = !blocked;
}

// ---------------------------------------------------------------- error, toast

let errorState = null;

/**
 * Fills the error view: localized by code when known, plus the server's own words as detail.
 * `window` ({from, to?} as Dates) adds when a not-yet-valid link can be used.
 */
export function setError({ code, message, textKey, canRetry, window: validWindow }) {
  errorState = { code, message, textKey, canRetry, validWindow };
  renderError();
}

function renderError() {
  if (!errorState) return;
  const { code, message, textKey, canRetry, validWindow } = errorState;
  $('error-message').textContent = textKey ? t(textKey) : errorText(code, message);
  const windowEl = $('error-window');
  windowEl.hidden = !validWindow;
  windowEl.textContent = !validWindow
    ? ''
    : validWindow.to
      ? t('err_not_yet_valid_window', { from: formatDateTime(validWindow.from), to: formatDateTime(validWindow.to) })
      : t('err_not_yet_valid_from', { from: formatDateTime(validWindow.from) });
  const detail = $('error-detail');
  detail.hidden = !message;
  detail.textContent = message ? t('error_detail', { msg: message }) : '';
  $('error-back').hidden = !canRetry;
}

/** A short, self-dismissing message (non-fatal errors, camera switch failures). */
export function toast(text, timeoutMs = 6000) {
  const el = document.createElement('div');
  el.className = 'toast';
  el.dataset.testid = 'toast';
  el.textContent = text;
  $('toasts').append(el);
  setTimeout(() => el.remove(), timeoutMs);
}

onLangChange(() => {
  // The staff pages remove the guest views; nothing here to redraw then.
  if (!$('view-conference')) return;
  renderJoinInfo();
  renderWaitingInfo();
  setScreenShareState(screenShare);
  renderDeviceStatus();
  if (joinBusy) setJoinBusy(joinBusy);
  if (nameErrorKey) setNameError(nameErrorKey, false);
  setRoomHeader();
  if (connection) setConnection(connection.state, connection.links);
  if (quality) setQuality(quality);
  setMicState(micState);
  setCameraState(cameraState);
  refreshTiles();
  renderError();
});
