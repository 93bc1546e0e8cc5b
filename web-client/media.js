// Camera/microphone access and the two peer connections. Publish (browser -> server) is always
// offered by us; subscribe (server -> browser) is always offered by the server. Keeping the
// offer direction fixed per connection is what makes renegotiation glare-free.

const PC_CONFIG = { bundlePolicy: 'max-bundle' };

// Everyone receives everyone through the server without simulcast, so a capped bitrate keeps
// a six-person conference usable on a hospital Wi-Fi or a tablet's mobile line.
const VIDEO_MAX_BITRATE = 1_000_000;
// Documents and charts need sharp text more than motion; a low frame rate keeps the cost down.
const SCREEN_MAX_BITRATE = 1_500_000;
const SCREEN_MAX_FPS = 5;
const STABLE_WAIT_MS = 15_000;

const AUDIO_CONSTRAINTS = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };

function videoConstraints(facingMode) {
  return {
    facingMode,
    width: { ideal: 1280 },
    height: { ideal: 720 },
    frameRate: { ideal: 24, max: 30 },
  };
}

/**
 * Maps a getUserMedia error to what we tell the user:
 * ok | denied | notfound | busy | insecure | error.
 */
export function classifyMediaError(err) {
  switch (err?.name) {
    case 'NotAllowedError':
    case 'PermissionDeniedError':
      return 'denied';
    case 'SecurityError':
      return 'insecure';
    case 'NotFoundError':
    case 'DevicesNotFoundError':
    case 'OverconstrainedError':
    case 'ConstraintNotSatisfiedError':
      return 'notfound';
    case 'NotReadableError':
    case 'TrackStartError':
    case 'AbortError':
      return 'busy';
    default:
      return 'error';
  }
}

async function permissionState(name) {
  try {
    return (await navigator.permissions.query({ name })).state;
  } catch {
    // Not every browser can query camera/microphone permissions; "unknown" means "just try".
    return 'unknown';
  }
}

/**
 * Opens microphone and camera for the preview and for publishing.
 * Resolves to {stream, audio, video, facing} where audio/video are statuses (see
 * classifyMediaError). Never rejects: joining without a device must stay possible.
 */
export async function acquireLocalMedia(facing = 'user') {
  const stream = new MediaStream();
  if (!navigator.mediaDevices?.getUserMedia) {
    // Browsers hide mediaDevices entirely on non-secure origins.
    return { stream, audio: 'insecure', video: 'insecure', facing };
  }
  try {
    const both = await navigator.mediaDevices.getUserMedia({
      audio: AUDIO_CONSTRAINTS,
      video: videoConstraints(facing),
    });
    for (const track of both.getTracks()) stream.addTrack(track);
    return { stream, audio: 'ok', video: 'ok', facing };
  } catch (err) {
    console.warn('getUserMedia(audio+video) failed', err);
  }
  // The combined request fails when either device is missing or refused; the other one may
  // still work. Skip devices the user has explicitly blocked so we do not nag with prompts.
  const result = { stream, audio: 'error', video: 'error', facing };
  for (const [kind, permName, constraints] of [
    ['audio', 'microphone', { audio: AUDIO_CONSTRAINTS }],
    ['video', 'camera', { video: videoConstraints(facing) }],
  ]) {
    if ((await permissionState(permName)) === 'denied') {
      result[kind] = 'denied';
      continue;
    }
    try {
      const single = await navigator.mediaDevices.getUserMedia(constraints);
      for (const track of single.getTracks()) stream.addTrack(track);
      result[kind] = 'ok';
    } catch (err) {
      console.warn(`getUserMedia(${kind}) failed`, err);
      result[kind] = classifyMediaError(err);
    }
  }
  return result;
}

/** Stops every track so the camera light goes off. */
export function stopStream(stream) {
  for (const track of stream?.getTracks() ?? []) track.stop();
}

/** A peer connection's state, for browsers that lack `connectionState` too. */
export function pcState(pc) {
  if (!pc) return null;
  if (pc.connectionState) return pc.connectionState;
  const ice = pc.iceConnectionState;
  return ice === 'completed' ? 'connected' : ice === 'checking' ? 'connecting' : ice;
}

function watchState(pc, onStateChange) {
  const report = () => onStateChange(pcState(pc));
  pc.addEventListener('connectionstatechange', report);
  pc.addEventListener('iceconnectionstatechange', report);
}

function watchCandidates(pc, onCandidate) {
  pc.addEventListener('icecandidate', (event) => {
    // The null candidate (end of gathering) is not sent: the server is ICE-lite and does not need it.
    if (event.candidate && event.candidate.candidate) onCandidate(event.candidate.toJSON());
  });
}

/** The browser -> server connection. We offer; the server answers. */
export class PublishConnection {
  /**
   * @param {MediaStream} stream local tracks to send (may be empty of either kind)
   * @param {{onCandidate: (c: object) => void, onStateChange: (s: string) => void}} handlers
   */
  constructor(stream, { onCandidate, onStateChange }) {
    this.pc = new RTCPeerConnection(PC_CONFIG);
    for (const track of stream.getTracks()) {
      const init = { direction: 'sendonly', streams: [stream] };
      if (track.kind === 'video') init.sendEncodings = [{ maxBitrate: VIDEO_MAX_BITRATE }];
      this.pc.addTransceiver(track, init);
    }
    /** The transceiver carrying the screen share, kept (inactive) after the share stops. */
    this.screenTransceiver = null;
    watchCandidates(this.pc, onCandidate);
    watchState(this.pc, onStateChange);
  }

  /**
   * Starts sending `track` (from getDisplayMedia) on a third, sendonly transceiver. A second
   * share reuses the transceiver of the first, so the SDP does not grow a section per share.
   * Renegotiate afterwards; `screenMid` is known once the offer is created.
   */
  async addScreen(track) {
    if ('contentHint' in track) track.contentHint = 'detail';
    const t = this.screenTransceiver;
    if (t && !t.stopped && t.currentDirection !== 'stopped') {
      await t.sender.replaceTrack(track);
      t.direction = 'sendonly';
    } else {
      this.screenTransceiver = this.pc.addTransceiver(track, {
        direction: 'sendonly',
        streams: [new MediaStream([track])],
        sendEncodings: [{ maxBitrate: SCREEN_MAX_BITRATE, maxFramerate: SCREEN_MAX_FPS }],
      });
    }
  }

  /** Stops sending the screen (the section stays, inactive). Renegotiate afterwards. */
  async removeScreen() {
    const t = this.screenTransceiver;
    if (!t) return;
    await t.sender.replaceTrack(null);
    t.direction = 'inactive';
  }

  /** The a=mid of the section carrying a screen share, or null when none is being sent. */
  get screenMid() {
    const t = this.screenTransceiver;
    return t && t.direction === 'sendonly' && t.sender.track ? t.mid : null;
  }

  /**
   * Resolves once no offer is outstanding. The server answers one publish offer at a time
   * and rejects a second one meanwhile, so a renegotiation must wait for the answer.
   */
  waitStable(timeoutMs = STABLE_WAIT_MS) {
    if (this.pc.signalingState === 'stable') return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (ok) => {
        clearTimeout(timer);
        this.pc.removeEventListener('signalingstatechange', check);
        resolve(ok);
      };
      const check = () => {
        if (this.pc.signalingState === 'stable') done(true);
        else if (this.pc.signalingState === 'closed') done(false);
      };
      const timer = setTimeout(() => done(false), timeoutMs);
      this.pc.addEventListener('signalingstatechange', check);
    });
  }

  /** Creates and applies a local offer; returns its SDP for publish_offer. */
  async createOffer() {
    const offer = await this.pc.createOffer();
    await this.pc.setLocalDescription(offer);
    return this.pc.localDescription.sdp;
  }

  /** Applies publish_answer. Returns false for an answer we are not waiting for (stale). */
  async applyAnswer(sdp) {
    if (this.pc.signalingState !== 'have-local-offer') return false;
    await this.pc.setRemoteDescription({ type: 'answer', sdp });
    return true;
  }

  /** Adds a server candidate; failures are logged only (the server normally puts them in SDP). */
  async addCandidate(candidate) {
    try {
      await this.pc.addIceCandidate(candidate);
    } catch (err) {
      console.warn('publish addIceCandidate failed', err);
    }
  }

  /** Swaps the camera without renegotiation (same codec, same m-line). */
  async replaceVideoTrack(track) {
    const transceiver = this.pc
      .getTransceivers()
      .find((t) => t !== this.screenTransceiver && t.receiver.track?.kind === 'video');
    if (!transceiver) return false;
    await transceiver.sender.replaceTrack(track);
    return true;
  }

  /** Closes the connection; the object is not reusable. */
  close() {
    this.pc.close();
  }
}

/** The server -> browser connection. The server offers; we answer. */
export class SubscribeConnection {
  /**
   * @param {{onTrack: (participantId: string, stream: MediaStream) => void,
   *          onScreens?: (screens: Map<string, MediaStreamTrack>) => void,
   *          onCandidate: (c: object) => void, onStateChange: (s: string) => void}} handlers
   */
  constructor({ onTrack, onScreens, onCandidate, onStateChange }) {
    this.pc = new RTCPeerConnection(PC_CONFIG);
    /** mid -> {participant_id, kind} from the latest subscribe_offer. */
    this.tracks = new Map();
    /** Streams we build ourselves when an offer carries no msid. */
    this.synthetic = new Map();
    this.onScreens = onScreens ?? (() => {});
    this.pc.addEventListener('track', (event) => {
      const desc = this.tracks.get(event.transceiver?.mid);
      if (desc?.kind === 'screen') {
        // A screen shares the publisher's msid stream with their camera; keep it out of
        // that stream so the camera tile's <video> never picks the screen instead.
        for (const stream of event.streams) stream.removeTrack(event.track);
        return;
      }
      // The msid stream id is the publisher's participant id; the tracks list is the fallback.
      const participantId = event.streams[0]?.id || desc?.participant_id;
      if (!participantId) {
        console.warn('track with no participant', event.transceiver?.mid);
        return;
      }
      onTrack(participantId, event.streams[0] || this.syntheticStream(participantId, event.track));
    });
    watchCandidates(this.pc, onCandidate);
    watchState(this.pc, onStateChange);
  }

  syntheticStream(participantId, track) {
    let stream = this.synthetic.get(participantId);
    if (!stream) {
      stream = new MediaStream();
      this.synthetic.set(participantId, stream);
    }
    for (const old of stream.getTracks()) if (old.kind === track.kind) stream.removeTrack(old);
    stream.addTrack(track);
    track.addEventListener('ended', () => stream.removeTrack(track));
    return stream;
  }

  /** Applies a subscribe_offer and returns the answer SDP. */
  async handleOffer(sdp, tracks) {
    this.tracks = new Map((Array.isArray(tracks) ? tracks : []).filter((t) => t && t.mid != null).map((t) => [String(t.mid), t]));
    await this.pc.setRemoteDescription({ type: 'offer', sdp });
    const answer = await this.pc.createAnswer();
    await this.pc.setLocalDescription(answer);
    this.reportScreens();
    return this.pc.localDescription.sdp;
  }

  /**
   * Tells the app which screen shares the latest offer carries (participant id -> track).
   * Worked out from the offer's track list rather than from track events, which do not
   * fire again when the server reuses a media section.
   */
  reportScreens() {
    const screens = new Map();
    for (const transceiver of this.pc.getTransceivers()) {
      const desc = this.tracks.get(transceiver.mid);
      if (desc?.kind !== 'screen' || !desc.participant_id) continue;
      const track = transceiver.receiver.track;
      if (!track || track.readyState === 'ended') continue;
      const receiving = (transceiver.currentDirection ?? transceiver.direction) !== 'inactive';
      if (receiving) screens.set(desc.participant_id, track);
    }
    this.onScreens(screens);
  }

  /** Whether `track` is a received screen share (it must not sit in a camera tile's stream). */
  isScreenTrack(track) {
    return this.pc
      .getTransceivers()
      .some((t) => t.receiver.track === track && this.tracks.get(t.mid)?.kind === 'screen');
  }

  /** Adds a server candidate; failures are logged only. */
  async addCandidate(candidate) {
    try {
      await this.pc.addIceCandidate(candidate);
    } catch (err) {
      console.warn('subscribe addIceCandidate failed', err);
    }
  }

  /** Closes the connection; the object is not reusable. */
  close() {
    this.pc.close();
  }
}

async function getVideo(constraints) {
  const stream = await navigator.mediaDevices.getUserMedia({ video: constraints });
  return stream.getVideoTracks()[0];
}

/**
 * Opens the other camera (front <-> rear). Resolves to {track, facing, error}:
 * - track: the camera track to use now. It is `current` when nothing changed, a new track on
 *   success, or a re-opened original when we had to release the camera and the switch failed.
 * - error: null, "none" (no other camera) or "failed".
 * Many phones and tablets cannot open two cameras at once, hence the release-and-retry path.
 */
export async function switchCamera(current, facing) {
  const next = facing === 'user' ? 'environment' : 'user';
  let released = false;
  const open = async (constraints) => {
    try {
      return await getVideo(constraints);
    } catch (err) {
      if (classifyMediaError(err) !== 'busy' || released) throw err;
      current.stop();
      released = true;
      return getVideo(constraints);
    }
  };
  const restore = async (error) => {
    if (!released) return { track: current, facing, error };
    try {
      return { track: await getVideo(videoConstraints(facing)), facing, error };
    } catch {
      return { track: null, facing, error };
    }
  };

  try {
    const track = await open({ ...videoConstraints(next), facingMode: { exact: next } });
    return { track, facing: next, error: null };
  } catch (err) {
    if (classifyMediaError(err) !== 'notfound') {
      console.warn('camera switch failed', err);
      return restore('failed');
    }
  }
  // No camera reports the wanted facing mode (typical for PCs with two webcams): cycle devices.
  try {
    const cams = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === 'videoinput');
    const currentId = current.getSettings?.().deviceId;
    const others = cams.filter((d) => d.deviceId && d.deviceId !== currentId);
    if (others.length === 0) return restore('none');
    const index = cams.findIndex((d) => d.deviceId === currentId);
    const target = index >= 0 ? cams[(index + 1) % cams.length] : others[0];
    const { facingMode: _ignored, ...anyFacing } = videoConstraints(next);
    const track = await open({ ...anyFacing, deviceId: { exact: target.deviceId } });
    return { track, facing: track.getSettings?.().facingMode || next, error: null };
  } catch (err) {
    console.warn('camera switch by device failed', err);
    return restore('failed');
  }
}

/**
 * Turns getStats() of the publish connection into {rttMs, lossPct, level}. RTT comes from the
 * selected ICE candidate pair (the ICE-lite server answers consent checks), loss from the
 * server's RTCP receiver reports when it sends them.
 */
export async function publishQuality(pc) {
  const report = await pc.getStats();
  let selectedPairId = null;
  report.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) selectedPairId = s.selectedCandidatePairId;
  });
  let rtt = null;
  let remoteRtt = null;
  let fractionLost = null;
  report.forEach((s) => {
    if (s.type === 'candidate-pair' && typeof s.currentRoundTripTime === 'number') {
      const selected = selectedPairId ? s.id === selectedPairId : s.nominated && s.state === 'succeeded';
      if (selected) rtt = s.currentRoundTripTime;
    }
    if (s.type === 'remote-inbound-rtp') {
      if (typeof s.roundTripTime === 'number') remoteRtt = Math.max(remoteRtt ?? 0, s.roundTripTime);
      if (typeof s.fractionLost === 'number') fractionLost = Math.max(fractionLost ?? 0, s.fractionLost);
    }
  });
  const rttSec = rtt ?? remoteRtt;
  const rttMs = rttSec === null ? null : Math.round(rttSec * 1000);
  const lossPct = fractionLost === null ? null : fractionLost * 100;
  return { rttMs, lossPct, level: qualityLevel(rttMs, lossPct) };
}

/** Coarse bands a nurse can act on: good, fair (may stutter), poor (move closer to the Wi-Fi). */
export function qualityLevel(rttMs, lossPct) {
  if (rttMs === null && lossPct === null) return 'unknown';
  const rtt = rttMs ?? 0;
  const loss = lossPct ?? 0;
  if (rtt < 150 && loss < 2) return 'good';
  if (rtt < 400 && loss < 8) return 'fair';
  return 'poor';
}
