// Entry point: reads the join link, runs the join -> conference -> left/error flow and keeps
// the signaling session, the two peer connections and the screen in step.

import { applyI18n, toggleLang, errorText, t } from './i18n.js';
import { tokenFromHash, decodeClaims, looksExpired } from './token.js';
import { Signaling, signalingUrl, PROTOCOL_VERSION } from './signaling.js';
import {
  acquireLocalMedia,
  stopStream,
  pcState,
  PublishConnection,
  SubscribeConnection,
  switchCamera,
  publishQuality,
} from './media.js';
import * as ui from './ui.js';
import { deviceSecret } from './device.js';
import { allowed, Action } from './permissions.js';
import { initLobby, setLobby, setCanAdmit, resetLobby } from './lobby.js';
import { initHostControls, decorateTile, decorateScreen, requestEndConference } from './hostcontrols.js';
import { startStaff } from './staff.js';
import { ScreenShare } from './screenshare.js';

const MAX_NAME_CHARS = 64;
const QUALITY_INTERVAL_MS = 2000;
const RETRY_MAX_MS = 10_000;
const LEAVE_CLOSE_GRACE_MS = 1500;

/** Mutable session state. Only this module writes it. */
const state = {
  token: null,
  claims: null,
  /** {stream, audio, video, facing} from acquireLocalMedia, or null when released. */
  local: null,
  mediaPromise: null,
  mediaGeneration: 0,
  micMuted: false,
  cameraMuted: false,
  /** The current Signaling instance; events from older instances are ignored. */
  sig: null,
  /** connecting | connected | reconnecting | disconnected | null (no session). */
  sigState: null,
  participantId: null,
  roomId: null,
  roomTitle: '',
  role: null,
  displayName: '',
  publish: null,
  subscribe: null,
  remoteStreams: new Map(),
  roster: [],
  /** True once the user pressed leave: closes and byes after that are expected. */
  leaving: false,
  /** Set by a fatal server error: no automatic retry after it. */
  fatal: null,
  retryCount: 0,
  retryTimer: null,
  qualityTimer: null,
  wakeLock: null,
  cameraSwitching: false,
  /** True between `waiting` and `joined`: admitted to nothing yet, so nothing is sent. */
  waiting: false,
  /** Set when the server ended the session for good (denied, removed, ended, replaced, left). */
  final: null,
  /** Publish renegotiations run one after another: the server answers one offer at a time. */
  negotiation: Promise.resolve(),
};

/**
 * Test and debugging hook. End-to-end tests read the participant id and call getStats() on
 * the live peer connections; `pcs` entries are replaced whenever a connection is recreated.
 */
const wardlink = {
  participantId: null,
  roomId: null,
  pcs: { publish: null, subscribe: null },
  /** Overall connection state, the same value as data-state on the indicator (or "idle"). */
  state: 'idle',
  /** The visible view: join | waiting | conference | left | denied | removed | ended | replaced | error. */
  view: null,
  /** Our current role (it changes when host rights are passed). */
  role: null,
};
window.wardlink = wardlink;

function showView(name) {
  wardlink.view = name;
  ui.showView(name);
}

// ---------------------------------------------------------------- connection indicator

/** Collapses a peer connection state into the four words the nurse sees. */
function linkState(conn) {
  switch (pcState(conn?.pc)) {
    case null:
    case undefined:
      return null;
    case 'connected':
      return 'connected';
    case 'disconnected':
      // ICE often recovers from "disconnected" on its own (Wi-Fi roaming), hence not "切断".
      return 'reconnecting';
    case 'failed':
    case 'closed':
      return 'disconnected';
    default:
      return 'connecting';
  }
}

function updateConnection() {
  const links = {
    signaling: state.sigState,
    publish: linkState(state.publish),
    subscribe: linkState(state.subscribe),
  };
  let overall = state.sigState;
  if (overall === 'connected') {
    const media = [links.publish, links.subscribe].filter(Boolean);
    if (media.some((s) => s === 'reconnecting' || s === 'disconnected')) overall = 'reconnecting';
    else if (media.includes('connecting')) overall = 'connecting';
  }
  ui.setConnection(overall, links);
  wardlink.state = overall ?? 'idle';
  wardlink.pcs.publish = state.publish?.pc ?? null;
  wardlink.pcs.subscribe = state.subscribe?.pc ?? null;
}

function startQualityTimer() {
  stopQualityTimer();
  state.qualityTimer = setInterval(async () => {
    const conn = state.publish;
    if (!conn || pcState(conn.pc) !== 'connected') {
      ui.setQuality(conn ? { rttMs: null, lossPct: null, level: 'unknown' } : null);
      return;
    }
    try {
      const q = await publishQuality(conn.pc);
      if (state.publish === conn) ui.setQuality(q);
    } catch (err) {
      console.warn('getStats failed', err);
    }
  }, QUALITY_INTERVAL_MS);
}

function stopQualityTimer() {
  clearInterval(state.qualityTimer);
  state.qualityTimer = null;
  ui.setQuality(null);
}

// ---------------------------------------------------------------- local media

function hasTrack(kind) {
  return Boolean(state.local?.stream.getTracks().some((t) => t.kind === kind && t.readyState === 'live'));
}

function localMediaLive() {
  return Boolean(state.local?.stream.getTracks().some((t) => t.readyState === 'live'));
}

/** (Re)opens camera and microphone for the preview; older attempts lose if the user retries. */
function startPreview() {
  const generation = ++state.mediaGeneration;
  stopStream(state.local?.stream);
  state.local = null;
  ui.setDeviceStatus(null);
  ui.setPreview(null, 'user');
  state.mediaPromise = acquireLocalMedia('user').then((result) => {
    if (generation !== state.mediaGeneration) {
      stopStream(result.stream);
      return;
    }
    state.local = result;
    ui.setPreview(result.stream, result.facing);
    ui.setDeviceStatus(result);
  });
  return state.mediaPromise;
}

function releaseLocalMedia() {
  state.mediaGeneration++;
  stopStream(state.local?.stream);
  state.local = null;
  ui.setPreview(null, 'user');
  ui.setWaitingPreview(null, 'user');
  screenShare.drop();
}

function applyLocalEnabled() {
  for (const track of state.local?.stream.getAudioTracks() ?? []) track.enabled = !state.micMuted;
  for (const track of state.local?.stream.getVideoTracks() ?? []) track.enabled = !state.cameraMuted;
}

function renderControls() {
  ui.setMicState({ available: hasTrack('audio'), muted: state.micMuted });
  ui.setCameraState({ available: hasTrack('video'), muted: state.cameraMuted });
}

/** The roster entry for ourselves, with mute flags from local truth (the server echo may lag). */
function localEntry(entry) {
  return {
    ...entry,
    audio_muted: state.micMuted || !hasTrack('audio'),
    video_muted: state.cameraMuted || !hasTrack('video'),
  };
}

function sendMute(kind, muted) {
  state.sig?.send({ type: 'mute', kind, muted });
}

function toggleMic() {
  if (!hasTrack('audio')) return;
  state.micMuted = !state.micMuted;
  applyLocalEnabled();
  sendMute('audio', state.micMuted);
  renderControls();
  applyRoster(state.roster);
}

function toggleCamera() {
  if (!hasTrack('video')) return;
  state.cameraMuted = !state.cameraMuted;
  applyLocalEnabled();
  sendMute('video', state.cameraMuted);
  renderControls();
  applyRoster(state.roster);
}

async function flipCamera() {
  const current = state.local?.stream.getVideoTracks()[0];
  if (!current || state.cameraSwitching) return;
  state.cameraSwitching = true;
  ui.setCameraSwitchBusy(true);
  try {
    const result = await switchCamera(current, state.local.facing);
    if (!state.local) {
      // Left the conference while the camera was opening.
      result.track?.stop();
      return;
    }
    if (result.track !== current) {
      if (result.track) result.track.enabled = !state.cameraMuted;
      await state.publish?.replaceVideoTrack(result.track);
      if (current.readyState === 'live') current.stop();
      // A fresh MediaStream makes the local <video> re-bind reliably to the new track.
      const tracks = state.local.stream.getAudioTracks();
      if (result.track) tracks.push(result.track);
      state.local = { ...state.local, stream: new MediaStream(tracks), facing: result.facing };
      ui.setLocalFacing(result.facing);
      if (state.participantId) ui.setTileStream(state.participantId, state.local.stream);
      renderControls();
    }
    if (result.error) ui.toast(t(result.error === 'none' ? 'camera_switch_none' : 'camera_switch_failed'));
  } finally {
    state.cameraSwitching = false;
    ui.setCameraSwitchBusy(false);
  }
}

async function keepAwake(on) {
  try {
    if (on && !state.wakeLock && 'wakeLock' in navigator && document.visibilityState === 'visible') {
      // The tablet sits on a bed table for the whole conference; it must not dim and lock.
      state.wakeLock = await navigator.wakeLock.request('screen');
      state.wakeLock.addEventListener('release', () => (state.wakeLock = null));
    } else if (!on && state.wakeLock) {
      await state.wakeLock.release();
      state.wakeLock = null;
    }
  } catch {
    // Wake lock is a comfort, not a requirement (unsupported, or battery saver).
  }
}

// ---------------------------------------------------------------- peer connections

async function startPublish() {
  closePublish();
  const stream = state.local?.stream;
  const live = stream?.getTracks().filter((t) => t.readyState === 'live') ?? [];
  ui.setPublishNotice(live.length === 0);
  const screen = screenShare.liveTrack;
  if (live.length === 0 && !screen) return;
  const sig = state.sig;
  const conn = new PublishConnection(new MediaStream(live), {
    onCandidate: (candidate) => sig.send({ type: 'ice_candidate', pc: 'publish', candidate }),
    onStateChange: updateConnection,
  });
  state.publish = conn;
  state.negotiation = Promise.resolve();
  updateConnection();
  if (screen) await conn.addScreen(screen);
  const sdp = await conn.createOffer();
  if (state.publish === conn) sig.send(publishOffer(conn, sdp));
}

function publishOffer(conn, sdp) {
  const msg = { type: 'publish_offer', sdp };
  const mid = conn.screenMid;
  if (mid !== null && mid !== undefined) msg.screen_mid = String(mid);
  return msg;
}

/** Re-offers on the current publish connection once its previous offer has been answered. */
function renegotiatePublish() {
  const conn = state.publish;
  if (!conn) return Promise.resolve();
  state.negotiation = state.negotiation
    .then(async () => {
      const stable = await conn.waitStable();
      if (state.publish !== conn) return;
      // No answer in time: start the connection over rather than offer on top of a stuck one.
      if (!stable) return startPublish();
      const sdp = await conn.createOffer();
      if (state.publish === conn) state.sig?.send(publishOffer(conn, sdp));
    })
    .catch((err) => console.error('publish renegotiation failed', err));
  return state.negotiation;
}

// ---------------------------------------------------------------- screen share

/** Puts a new screen track on the publish connection (or takes it off, with null). */
async function publishScreen(track) {
  const conn = state.publish;
  if (!conn) {
    // Nothing published yet (no camera or microphone): a connection for the screen alone.
    if (track) await startPublish();
    return;
  }
  if (track) await conn.addScreen(track);
  else await conn.removeScreen();
  await renegotiatePublish();
}

const screenShare = new ScreenShare({
  getRole: () => state.role,
  inConference: () => wardlink.view === 'conference',
  onChange: publishScreen,
});

function closePublish() {
  state.publish?.close();
  state.publish = null;
  updateConnection();
}

function ensureSubscribe() {
  if (state.subscribe) return state.subscribe;
  const sig = state.sig;
  const conn = new SubscribeConnection({
    onTrack: (participantId, stream) => {
      if (state.subscribe !== conn || participantId === state.participantId) return;
      state.remoteStreams.set(participantId, stream);
      ui.setTileStream(participantId, stream);
    },
    onScreens: (screens) => {
      if (state.subscribe !== conn) return;
      screens.delete(state.participantId);
      // A screen track that slipped into a camera stream (shared msid) would compete with
      // the camera for the tile's <video>.
      for (const track of screens.values()) {
        for (const stream of state.remoteStreams.values()) {
          if (stream.getTracks().includes(track)) stream.removeTrack(track);
        }
      }
      ui.setScreens(screens);
    },
    onCandidate: (candidate) => sig.send({ type: 'ice_candidate', pc: 'subscribe', candidate }),
    onStateChange: updateConnection,
  });
  state.subscribe = conn;
  updateConnection();
  return conn;
}

function closeSubscribe() {
  state.subscribe?.close();
  state.subscribe = null;
  for (const id of state.remoteStreams.keys()) ui.setTileStream(id, null);
  state.remoteStreams.clear();
  ui.setScreens(new Map());
  updateConnection();
}

async function handleSubscribeOffer(msg) {
  const conn = ensureSubscribe();
  try {
    const sdp = await conn.handleOffer(msg.sdp, msg.tracks);
    if (state.subscribe === conn) state.sig.send({ type: 'subscribe_answer', sdp, revision: msg.revision });
  } catch (err) {
    // The server notices the missing answer and sends reconnect; tell the user meanwhile.
    console.error('subscribe offer failed', err);
    ui.toast(errorText('invalid_sdp'));
  }
}

function pcFor(kind) {
  return kind === 'publish' ? state.publish : kind === 'subscribe' ? state.subscribe : null;
}

// ---------------------------------------------------------------- roster

function applyRoster(participants) {
  state.roster = Array.isArray(participants) ? participants : [];
  const self = state.roster.find((e) => e && e.id === state.participantId);
  if (self?.role && self.role !== state.role) setRole(self.role, state.roster);
  const ids = new Set();
  for (const entry of state.roster) {
    if (!entry || typeof entry.id !== 'string') continue;
    ids.add(entry.id);
    if (entry.id === state.participantId) {
      ui.upsertTile(localEntry(entry), { local: true });
    } else {
      ui.upsertTile(entry);
      const stream = state.remoteStreams.get(entry.id);
      if (stream) ui.setTileStream(entry.id, stream);
    }
  }
  for (const id of state.remoteStreams.keys()) if (!ids.has(id)) state.remoteStreams.delete(id);
  ui.retainTiles(ids);
}

/** Our role changed (host rights passed to or from us): redraw what depends on it. */
function setRole(role, roster = []) {
  const previous = state.role;
  state.role = role;
  wardlink.role = role;
  if (previous && previous !== role) {
    if (role === 'host') ui.toast(t('host_received'));
    else if (previous === 'host') {
      const host = roster.find((e) => e?.role === 'host');
      if (host) ui.toast(t('host_passed', { name: host.display_name }));
    }
  }
  renderRoleControls();
}

function renderRoleControls() {
  ui.setEndConferenceVisible(allowed(state.role, Action.EndConference));
  screenShare.render();
  setCanAdmit(allowed(state.role, Action.Admit));
  ui.refreshTiles();
}

// ---------------------------------------------------------------- signaling session

/** The server put us in the waiting room: show that and wait for `joined` (or `bye`). */
function handleWaiting(msg) {
  state.retryCount = 0;
  state.sigState = 'connected';
  state.waiting = true;
  state.participantId = msg.participant_id ?? null;
  state.roomTitle = msg.room_title ?? '';
  state.role = msg.role ?? state.role;
  wardlink.participantId = state.participantId;
  wardlink.role = state.role;
  ui.clearTiles();
  ui.setWaitingInfo({ title: msg.room_title, name: msg.display_name, role: msg.role });
  ui.setWaitingPreview(state.local?.stream ?? null, state.local?.facing ?? 'user');
  ui.setJoinBusy(null);
  if (wardlink.view !== 'waiting') showView('waiting');
  updateConnection();
}

/** Someone with the mute right muted one of our tracks; the server already stopped it. */
function handleMutedBy(msg) {
  if (msg.kind === 'audio' || msg.kind === 'video') {
    if (msg.kind === 'audio') state.micMuted = true;
    else state.cameraMuted = true;
    applyLocalEnabled();
    renderControls();
    applyRoster(state.roster);
  } else if (msg.kind === 'screen') {
    screenShare.stop();
  } else {
    return;
  }
  ui.toast(t(`muted_by_${msg.kind}`));
}

/** The server closes the session. Only an unexplained bye leads to an automatic rejoin. */
function handleBye(reason) {
  if (state.leaving) return;
  switch (reason) {
    case 'denied':
    case 'removed':
    case 'ended':
    case 'replaced':
    case 'left':
      finishSession(reason);
      return;
    default:
      console.warn('server ended the session', reason);
      scheduleRetry();
  }
}

/** Ends the session for good and shows the page for `reason` (no automatic rejoin). */
function finishSession(reason) {
  state.final = reason;
  teardownSession();
  releaseLocalMedia();
  keepAwake(false);
  state.waiting = false;
  state.sigState = null;
  state.participantId = null;
  wardlink.participantId = null;
  updateConnection();
  ui.clearTiles();
  resetLobby();
  ui.setAudioBlocked(false);
  ui.setJoinBusy(null);
  showView(reason);
}

function handleJoined(msg) {
  state.retryCount = 0;
  state.sigState = 'connected';
  state.waiting = false;
  state.participantId = msg.participant_id;
  state.roomId = msg.room_id;
  state.roomTitle = msg.room_title ?? '';
  state.role = msg.role;
  wardlink.participantId = msg.participant_id;
  wardlink.roomId = msg.room_id;
  wardlink.role = msg.role;
  ui.setWaitingPreview(null, 'user');

  ui.clearTiles();
  state.remoteStreams.clear();
  ui.setRoomHeader(state.roomTitle);
  const self = { id: msg.participant_id, display_name: msg.display_name, role: msg.role, publishing: [] };
  ui.upsertTile(localEntry(self), { local: true });
  ui.setLocalFacing(state.local?.facing ?? 'user');
  ui.setTileStream(msg.participant_id, state.local?.stream ?? null);
  applyRoster(msg.roster);
  renderControls();
  renderRoleControls();
  ui.setJoinBusy(null);
  if (wardlink.view !== 'conference') showView('conference');
  updateConnection();

  // A rejoin starts from a fresh server-side participant: restate our mute choices.
  if (state.micMuted) sendMute('audio', true);
  if (state.cameraMuted) sendMute('video', true);
  startQualityTimer();
  keepAwake(true);
  return startPublish();
}

async function handleMessage(msg) {
  switch (msg.type) {
    case 'joined':
      return handleJoined(msg);
    case 'waiting':
      return handleWaiting(msg);
    case 'lobby':
      return setLobby(msg.waiting, { admit: allowed(state.role, Action.Admit) });
    case 'muted_by':
      return handleMutedBy(msg);
    case 'roster':
      return applyRoster(msg.participants);
    case 'publish_answer':
      if (!state.publish) return;
      try {
        await state.publish.applyAnswer(msg.sdp);
      } catch (err) {
        console.error('publish answer failed', err);
        ui.toast(errorText('invalid_sdp'));
      }
      return;
    case 'subscribe_offer':
      return handleSubscribeOffer(msg);
    case 'ice_candidate':
      return pcFor(msg.pc)?.addCandidate(msg.candidate);
    case 'reconnect':
      console.info('server asked to reconnect', msg.pc, msg.reason);
      if (msg.pc === 'publish') return startPublish();
      // The server follows up with a fresh subscribe_offer, which recreates the connection.
      if (msg.pc === 'subscribe') closeSubscribe();
      return;
    case 'error':
      if (msg.fatal) return failFatal({ code: msg.code, message: msg.message });
      console.warn('server error', msg.code, msg.message);
      ui.toast(errorText(msg.code, msg.message));
      return;
    case 'bye':
      return handleBye(msg.reason);
    case 'pong':
      return;
    default:
      console.warn('unknown server message', msg.type);
  }
}

function connectSignaling() {
  state.retryTimer = null;
  const sig = new Signaling(signalingUrl(), {
    onOpen: () =>
      sig.send({
        type: 'join',
        protocol: PROTOCOL_VERSION,
        token: state.token,
        display_name: state.displayName,
        device: deviceSecret(),
      }),
    onMessage: (msg) => (state.sig === sig ? handleMessage(msg) : undefined),
    onClose: (info) => {
      if (state.sig !== sig || state.leaving || state.fatal || state.final) return;
      console.warn('signaling closed', info);
      scheduleRetry();
    },
  });
  state.sig = sig;
  updateConnection();
  sig.connect();
}

/** Drops the socket and both peer connections, keeping camera and microphone open. */
function teardownSession() {
  stopQualityTimer();
  closePublish();
  closeSubscribe();
  state.sig?.close();
  state.sig = null;
  clearTimeout(state.retryTimer);
  state.retryTimer = null;
}

/** An unexpected loss: show 再接続中 and rejoin with exponential backoff (1 s, 2 s, 4 s ... 10 s). */
function scheduleRetry() {
  teardownSession();
  state.sigState = 'reconnecting';
  updateConnection();
  const delay = Math.min(1000 * 2 ** state.retryCount, RETRY_MAX_MS);
  state.retryCount++;
  state.retryTimer = setTimeout(connectSignaling, delay);
}

/** Going back to the join page cannot fix these, so it is not offered after them. */
const HOPELESS_CODES = ['invalid_token', 'token_expired', 'conference_ended', 'invitation_revoked'];

/**
 * When a not-yet-valid link becomes usable: the server's message names the start ("this link
 * works from 2025-06-01T04:30:00Z"); the token's `exp` is the end. Null when neither says.
 */
function validWindow(claims, message) {
  const match = /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})/.exec(String(message ?? ''));
  const fromMs = match ? Date.parse(match[0]) : Number.isFinite(claims?.nbf) ? claims.nbf * 1000 : NaN;
  if (Number.isNaN(fromMs)) return null;
  const to = Number.isFinite(claims?.exp) ? new Date(claims.exp * 1000) : null;
  return { from: new Date(fromMs), to };
}

function failFatal({ code, message, textKey }) {
  state.fatal = { code, message };
  teardownSession();
  releaseLocalMedia();
  keepAwake(false);
  state.waiting = false;
  state.sigState = null;
  updateConnection();
  ui.clearTiles();
  resetLobby();
  ui.setJoinBusy(null);
  ui.setError({
    code,
    message,
    textKey,
    canRetry: Boolean(state.token) && !HOPELESS_CODES.includes(code),
    window: code === 'not_yet_valid' ? validWindow(state.claims, message) : null,
  });
  showView('error');
}

async function join() {
  const name = ui.getDisplayName();
  const length = [...name].length;
  if (length === 0) return ui.setNameError('join_name_empty');
  if (length > MAX_NAME_CHARS) return ui.setNameError('join_name_too_long');
  ui.setNameError(null);
  ui.setJoinBusy('join_connecting');
  // Joining while the permission prompt is still open would publish nothing; wait for it
  // (and for any retry the user started meanwhile).
  let pending;
  do {
    pending = state.mediaPromise;
    await pending;
  } while (pending !== state.mediaPromise);
  state.displayName = name;
  state.leaving = false;
  state.fatal = null;
  state.final = null;
  state.waiting = false;
  state.retryCount = 0;
  state.sigState = 'connecting';
  applyLocalEnabled();
  connectSignaling();
}

function leave() {
  state.leaving = true;
  const sig = state.sig;
  sig?.send({ type: 'leave' });
  // The server answers bye and closes; if it does not, stop waiting shortly after.
  if (sig) setTimeout(() => sig.close(), LEAVE_CLOSE_GRACE_MS);
  state.sig = null;
  stopQualityTimer();
  closePublish();
  closeSubscribe();
  clearTimeout(state.retryTimer);
  state.retryTimer = null;
  releaseLocalMedia();
  keepAwake(false);
  state.waiting = false;
  state.sigState = null;
  state.participantId = null;
  wardlink.participantId = null;
  updateConnection();
  ui.clearTiles();
  resetLobby();
  ui.setAudioBlocked(false);
  showView('left');
}

function showJoin() {
  const claims = state.claims;
  ui.setJoinInfo({
    title: claims?.title,
    role: claims?.role,
    name: state.displayName || claims?.name,
    noteKey: !claims ? 'join_token_unreadable' : looksExpired(claims) ? 'join_token_expired' : null,
  });
  ui.setJoinBusy(null);
  showView('join');
  if (!localMediaLive()) startPreview();
}

// ---------------------------------------------------------------- wiring

function wire() {
  const on = (id, event, fn) => document.getElementById(id).addEventListener(event, fn);
  on('language-toggle', 'click', toggleLang);
  on('join-form', 'submit', (event) => {
    event.preventDefault();
    join();
  });
  on('display-name', 'input', () => ui.setNameError(null));
  on('device-retry', 'click', () => startPreview());
  on('mic-toggle', 'click', toggleMic);
  on('camera-toggle', 'click', toggleCamera);
  on('camera-switch', 'click', flipCamera);
  on('leave-button', 'click', leave);
  on('waiting-leave', 'click', leave);
  on('screen-share-button', 'click', () => screenShare.toggle());
  on('end-conference-button', 'click', requestEndConference);
  on('rejoin-button', 'click', showJoin);
  on('replaced-rejoin', 'click', showJoin);
  on('error-back', 'click', showJoin);
  on('audio-unblock', 'click', () => {
    ui.setAudioBlocked(false);
    ui.playAllTiles();
  });
  ui.setAutoplayBlockedHandler(() => ui.setAudioBlocked(true));

  const send = (msg) => state.sig?.send(msg);
  initLobby({
    onAdmit: (id) => send({ type: 'admit', participant_id: id }),
    onDeny: (id) => send({ type: 'deny', participant_id: id }),
  });
  initHostControls({ send, getRole: () => state.role, getSelfId: () => state.participantId });
  ui.setTileDecorator(decorateTile);
  ui.setScreenDecorator(decorateScreen);

  // A pasted new link only changes the fragment, which does not reload the page by itself.
  window.addEventListener('hashchange', () => location.reload());
  // Coming back online: do not sit out the rest of a 10 s backoff.
  window.addEventListener('online', () => {
    if (state.retryTimer) {
      clearTimeout(state.retryTimer);
      connectSignaling();
    }
  });
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && ['conference', 'waiting'].includes(wardlink.view)) keepAwake(true);
  });
  // Closing the tab: tell the server now rather than after its timeout, so the tile disappears.
  window.addEventListener('pagehide', () => {
    if (state.sig && !state.leaving) state.sig.send({ type: 'leave' });
  });
}

/** /staff (and anything below it) is the staff app; every other path is the conference client. */
function isStaffPath(pathname) {
  return pathname === '/staff' || pathname.startsWith('/staff/');
}

function main() {
  applyI18n();
  if (isStaffPath(location.pathname)) {
    startStaff();
    return;
  }
  wire();
  renderControls();
  state.token = tokenFromHash(location.hash);
  if (!state.token) {
    ui.setError({ textKey: 'no_token', canRetry: false });
    showView('error');
    return;
  }
  state.claims = decodeClaims(state.token);
  showJoin();
}

main();
