//! One WebRTC peer connection of the load generator, on the sans-I/O `rtc` crate.
//!
//! The async `webrtc` crate runs a driver task per connection plus bounded channels that
//! drop media when the application falls behind: under load that would show up as loss
//! the server did not cause. Here each connection is exactly one tokio task owning its
//! UDP socket and its `RTCPeerConnection`; media is generated and verified inside that task,
//! so nothing queues between the network and the counters.
//!
//! A [`Peer`] is negotiated synchronously (offer/answer are plain function calls), then
//! [`Peer::spawn`]ed as a publisher or subscriber. Later renegotiations (the server
//! re-offering a subscribe connection) reach the task as [`PeerCmd::Offer`].

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use bytes::{Bytes, BytesMut};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_nack, configure_rtcp_reports, configure_twcc_sender_only,
};
use rtc::peer_connection::configuration::media_engine::{
    MediaEngine, MIME_TYPE_OPUS, MIME_TYPE_VP8,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use wardlink::media::direct_srtp::KeyTap;

use crate::payload::{self, Clock, RecordInfo, StreamKind, MAGIC};
use crate::stats::{lock, PublisherCounters, SharedRx, Window};
use crate::{rxstamp, sockopt};
use wardlink::media::direct_rx::DirectRx;

/// Payload type we offer for Opus.
const OPUS_PT: u8 = 111;
/// Payload type we offer for VP8.
const VP8_PT: u8 = 96;
/// Datagrams read per wake-up before the task looks at timers and commands again.
const READ_BATCH: usize = 64;
/// Receive buffer we ask the kernel for (capped by net.core.rmem_max): a generator task
/// that is briefly descheduled must not turn into kernel drops counted against the server.
const RECV_BUFFER: usize = 4 << 20;
/// Shortest time between two timeout passes when the connection reports an expired
/// deadline, so a deadline that never advances cannot spin the task.
const MIN_TIMEOUT_INTERVAL: Duration = Duration::from_millis(1);
/// How far behind its schedule the pacer may catch up in one burst after a late wake-up.
const MAX_PACE_DEBT: Duration = Duration::from_millis(10);
/// RTP header + SRTP tag + UDP/IP bytes a paced video packet adds to its payload.
const RTP_OVERHEAD: usize = 12 + 10 + 28;

/// Connection state as the coordinator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Negotiating / connecting.
    Connecting,
    /// ICE + DTLS up, SRTP keys in place.
    Connected,
    /// Failed or closed by the remote side.
    Failed,
    /// Closed by us.
    Closed,
}

/// The media a publisher sends.
#[derive(Debug, Clone)]
pub struct MediaPlan {
    /// Audio packet interval (Opus: 20 ms).
    pub audio_interval: Duration,
    /// Audio payload bytes.
    pub audio_bytes: usize,
    /// Video frame interval (30 fps).
    pub video_interval: Duration,
    /// Average video bitrate, bit/s (keyframes included).
    pub video_bitrate: u64,
    /// Keyframe size, bytes.
    pub keyframe_bytes: usize,
    /// A keyframe every this many frames (and on request, at most once a second).
    pub keyframe_every: u32,
    /// Spread video packets out at this multiple of `video_bitrate`, as WebRTC senders
    /// do (libwebrtc's pacer uses 2.5): a 30 KB keyframe then leaves over ~80 ms instead
    /// of in one burst. `None` sends each frame's packets back to back.
    pub pace_multiplier: Option<f64>,
    /// Subscribers drop every Nth video RTP datagram on arrival, before SRTP sees it:
    /// emulated downlink loss that only the server's NACK retransmissions can repair
    /// (0: none).
    pub downlink_drop_every: u32,
    /// Publishers drop every Nth video RTP datagram on the way out, after SRTP: emulated
    /// uplink loss that only the server's NACKs (and the publisher's retransmissions) can
    /// repair (0: none).
    pub uplink_drop_every: u32,
    /// Subscribers decrypt received RTP outside `rtc`'s read pipeline once a tapped key
    /// authenticates it ([`DirectRx`]): the generator then takes less of the CPU it shares
    /// with the server under test. `false`: everything through `rtc`, as before session 9.
    pub direct_rx: bool,
    /// Publishers' connection tasks run on this runtime, a thread of their own
    /// ([`crate::publisher_thread`]), so the subscribers' receive work cannot make their
    /// pacers late. `None`: on the caller's runtime with everything else.
    pub publisher_runtime: Option<tokio::runtime::Handle>,
}

impl Default for MediaPlan {
    fn default() -> Self {
        MediaPlan {
            audio_interval: Duration::from_millis(20),
            audio_bytes: 100,
            video_interval: Duration::from_nanos(1_000_000_000 / 30),
            video_bitrate: 1_200_000,
            keyframe_bytes: 30_000,
            keyframe_every: 75,
            pace_multiplier: Some(DEFAULT_PACE_MULTIPLIER),
            downlink_drop_every: 0,
            uplink_drop_every: 0,
            direct_rx: true,
            publisher_runtime: None,
        }
    }
}

/// Pacing multiplier of libwebrtc's sender (`kDefaultPaceMultiplier`).
pub const DEFAULT_PACE_MULTIPLIER: f64 = 2.5;

impl MediaPlan {
    /// Average delta-frame size that, with the periodic keyframe, yields the bitrate.
    fn delta_bytes(&self) -> usize {
        let fps = 1.0 / self.video_interval.as_secs_f64();
        let per_gop = self.video_bitrate as f64 / 8.0 / fps * f64::from(self.keyframe_every);
        let delta = (per_gop - self.keyframe_bytes as f64) / f64::from(self.keyframe_every - 1);
        delta.max(200.0) as usize
    }

    /// Packets per second one publisher sends by this plan: audio, and video frames of the
    /// average size after [`jittered`] (keyframes on schedule; requested ones add more).
    /// What a run's publishers should have offered the server, to tell a starved
    /// generator from a full load.
    pub fn nominal_pps(&self) -> f64 {
        let parts = |base: usize| {
            (0..JITTER_STEPS)
                .map(|j| f64::from(payload::split_frame(jittered(base, j)).0))
                .sum::<f64>()
                / JITTER_STEPS as f64
        };
        let every = f64::from(self.keyframe_every.max(1));
        let per_frame =
            (parts(self.keyframe_bytes) + (every - 1.0) * parts(self.delta_bytes())) / every;
        1.0 / self.audio_interval.as_secs_f64() + per_frame / self.video_interval.as_secs_f64()
    }

    /// Time one video packet of `bytes` occupies at the pacing rate (zero unpaced).
    fn pace_time(&self, bytes: usize) -> Duration {
        match self.pace_multiplier {
            Some(m) if m > 0.0 && self.video_bitrate > 0 => {
                Duration::from_secs_f64((bytes * 8) as f64 / (m * self.video_bitrate as f64))
            }
            _ => Duration::ZERO,
        }
    }
}

/// What a spawned connection does.
pub enum Role {
    /// Sends synthetic audio + video once connected.
    Publisher {
        /// Global publisher index, embedded in every payload.
        index: u32,
        /// Shared counters (continuous across reconnects).
        counters: Arc<PublisherCounters>,
        /// Media shape.
        plan: MediaPlan,
    },
    /// Verifies and counts everything received.
    Subscriber {
        /// Where the counts go.
        rx: SharedRx,
        /// See [`MediaPlan::downlink_drop_every`].
        drop_every: u32,
        /// Decrypt received RTP outside `rtc` once a tapped key opens it (see
        /// [`DirectRx`]); never with `drop_every`, whose recovery needs `rtc`'s NACKs.
        direct: bool,
    },
}

/// Requests to a running connection task.
pub enum PeerCmd {
    /// Apply a (re-)offer from the remote side and reply with our answer SDP.
    Offer(String, oneshot::Sender<anyhow::Result<String>>),
    /// A remote ICE candidate (`candidate:` line).
    Candidate(String),
    /// Close and end the task.
    Close,
}

/// A running connection.
pub struct PeerHandle {
    cmd: mpsc::UnboundedSender<PeerCmd>,
    /// Current state.
    pub state: watch::Receiver<PeerState>,
    task: Option<JoinHandle<()>>,
}

impl PeerHandle {
    /// Sends a command (ignored if the task has ended).
    pub fn send(&self, cmd: PeerCmd) {
        let _ = self.cmd.send(cmd);
    }

    /// Renegotiates with a new remote offer; returns our answer.
    pub async fn reoffer(&self, sdp: String) -> anyhow::Result<String> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(PeerCmd::Offer(sdp, tx))
            .map_err(|_| anyhow!("connection task has ended"))?;
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .context("connection task did not answer the re-offer in time")?
            .map_err(|_| anyhow!("connection task has ended"))?
    }

    /// Waits (bounded) until connected; fails if the connection fails first.
    pub async fn wait_connected(&self, timeout: Duration) -> anyhow::Result<()> {
        let mut rx = self.state.clone();
        let r = tokio::time::timeout(timeout, rx.wait_for(|s| *s != PeerState::Connecting))
            .await
            .context("peer connection did not connect in time")?
            .map_err(|_| anyhow!("connection task has ended"))?;
        match *r {
            PeerState::Connected => Ok(()),
            s => Err(anyhow!("peer connection ended as {s:?}")),
        }
    }

    /// Current state.
    pub fn current(&self) -> PeerState {
        *self.state.borrow()
    }

    /// Closes the connection and waits (bounded) for its task to end.
    pub async fn close(mut self) {
        let _ = self.cmd.send(PeerCmd::Close);
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(3), task)
                .await
                .is_err()
            {
                tracing::debug!("peer task did not end in time");
            }
        }
    }
}

impl Drop for PeerHandle {
    fn drop(&mut self) {
        let _ = self.cmd.send(PeerCmd::Close);
    }
}

/// A negotiated-but-not-yet-running connection.
pub struct Peer {
    pc: RTCPeerConnection,
    socket: UdpSocket,
    local: SocketAddr,
    candidate: String,
    audio: Option<(RTCRtpSenderId, u32)>,
    video: Option<(RTCRtpSenderId, u32)>,
    /// The connection's crypto provider, which notes its SRTP keys (see [`DirectRx`]).
    tap: Arc<KeyTap>,
}

fn opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

fn vp8() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    }
}

/// Widens a UDP socket's receive buffer as far as the kernel allows.
fn widen_recv_buffer(socket: &UdpSocket) {
    if !sockopt::set_int(socket, libc::SO_RCVBUF, RECV_BUFFER as libc::c_int) {
        tracing::debug!("SO_RCVBUF not widened");
    }
}

impl Peer {
    /// A connection with one UDP socket on `ip` (a concrete loopback address), Opus + VP8
    /// only, no header extensions, NACK and RTCP reports, and our host candidate already
    /// in place so it is embedded in our SDP.
    pub async fn new(ip: IpAddr) -> anyhow::Result<Peer> {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0))
            .await
            .context("binding a UDP socket")?;
        widen_recv_buffer(&socket);
        if !rxstamp::enable(&socket) {
            tracing::debug!(
                "no kernel receive timestamps: latency includes the generator's scheduling"
            );
        }
        let local = socket.local_addr()?;
        let mut me = MediaEngine::default();
        me.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: opus(),
                payload_type: OPUS_PT,
            },
            RtpCodecKind::Audio,
        )?;
        me.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: vp8(),
                payload_type: VP8_PT,
            },
            RtpCodecKind::Video,
        )?;
        let registry = configure_rtcp_reports(configure_nack(Registry::new(), &mut me));
        // Transport-wide sequence numbers on what publishers send, as browsers do: the
        // server then runs its TWCC feedback for them, as it would for a browser.
        let registry = configure_twcc_sender_only(registry, &mut me)?;
        let registry = registry.with(Slot::from(14_000), KeyframeRequestTap::default());
        let tap = KeyTap::new();
        let setting = SettingEngineBuilder::new()
            .with_crypto_provider(tap.clone())
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_setting_engine(setting)
            .with_media_engine(me)
            .with_interceptor_registry(registry)
            .build(Instant::now())?;
        let host = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: local.ip().to_string(),
                port: local.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()?;
        let init = RTCIceCandidate::from(&host).to_json()?;
        let candidate = init.candidate.clone();
        pc.add_local_candidate(init)?;
        pc.add_local_candidate(RTCIceCandidateInit::default())?;
        Ok(Peer {
            pc,
            socket,
            local,
            candidate,
            audio: None,
            video: None,
            tap,
        })
    }

    /// Our host candidate line (for servers that want it trickled).
    pub fn candidate(&self) -> &str {
        &self.candidate
    }

    /// Adds sendonly Opus and VP8 tracks under `stream_id`.
    pub fn add_publish_tracks(&mut self, stream_id: &str) -> anyhow::Result<()> {
        for (kind, codec, label) in [
            (RtpCodecKind::Audio, opus(), "audio"),
            (RtpCodecKind::Video, vp8(), "video"),
        ] {
            let ssrc = rand::random::<u32>() | 1;
            let track = MediaStreamTrack::new(
                stream_id.to_owned(),
                format!("{stream_id}-{label}"),
                label.to_owned(),
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec,
                    ..Default::default()
                }],
            );
            let transceiver = self.pc.add_transceiver_from_track(
                track,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec![stream_id.to_owned()],
                    send_encodings: vec![],
                }),
            )?;
            let sender = self
                .pc
                .rtp_transceiver(transceiver)
                .and_then(|t| t.sender())
                .context("new transceiver has no sender")?;
            match kind {
                RtpCodecKind::Audio => self.audio = Some((sender, ssrc)),
                _ => self.video = Some((sender, ssrc)),
            }
        }
        Ok(())
    }

    /// Creates and applies our offer; returns its SDP.
    pub fn create_offer(&mut self) -> anyhow::Result<String> {
        let offer = self.pc.create_offer(None)?;
        self.pc
            .set_local_description(Instant::now(), offer.clone())?;
        Ok(offer.sdp)
    }

    /// Applies the remote answer to our offer.
    pub fn apply_answer(&mut self, sdp: String) -> anyhow::Result<()> {
        let answer = RTCSessionDescription::answer(sdp)?;
        self.pc.set_remote_description(Instant::now(), answer)?;
        Ok(())
    }

    /// Applies a remote offer and returns our answer SDP.
    pub fn answer_offer(&mut self, sdp: String) -> anyhow::Result<String> {
        answer(&mut self.pc, sdp)
    }

    /// Adds a remote ICE candidate line (ignored when empty or mDNS).
    pub fn add_remote_candidate(&mut self, candidate: String) {
        add_candidate(&mut self.pc, candidate);
    }

    /// Registers the socket with `runtime`'s reactor instead of the current one, so that
    /// runtime's thread alone is woken for it.
    fn move_to(mut self, runtime: &tokio::runtime::Handle) -> std::io::Result<Peer> {
        let std_socket = self.socket.into_std()?;
        let _entered = runtime.enter();
        self.socket = UdpSocket::from_std(std_socket)?;
        Ok(self)
    }

    /// Starts the connection task.
    pub fn spawn(self, role: Role, clock: Clock, window: Arc<Window>) -> PeerHandle {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(PeerState::Connecting);
        let elsewhere = match &role {
            Role::Publisher { plan, .. } => plan.publisher_runtime.clone(),
            Role::Subscriber { .. } => None,
        };
        let task = match elsewhere {
            Some(runtime) => match self.move_to(&runtime) {
                Ok(peer) => runtime.spawn(run(peer, role, clock, window, cmd_rx, state_tx)),
                Err(e) => {
                    tracing::warn!(%e, "publisher socket could not move to its runtime");
                    let _ = state_tx.send(PeerState::Failed);
                    tokio::spawn(async {})
                }
            },
            None => tokio::spawn(run(self, role, clock, window, cmd_rx, state_tx)),
        };
        PeerHandle {
            cmd: cmd_tx,
            state: state_rx,
            task: Some(task),
        }
    }
}

fn answer(pc: &mut RTCPeerConnection, sdp: String) -> anyhow::Result<String> {
    let offer = RTCSessionDescription::offer(sdp)?;
    pc.set_remote_description(Instant::now(), offer)
        .context("set_remote_description(offer)")?;
    let answer = pc.create_answer(None).context("create_answer")?;
    pc.set_local_description(Instant::now(), answer.clone())
        .context("set_local_description(answer)")?;
    Ok(answer.sdp)
}

fn add_candidate(pc: &mut RTCPeerConnection, candidate: String) {
    if candidate.is_empty() || candidate.contains(".local") {
        return;
    }
    let init = RTCIceCandidateInit {
        candidate,
        ..Default::default()
    };
    if let Err(e) = pc.add_remote_candidate(init) {
        tracing::debug!(%e, "remote candidate ignored");
    }
}

/// Per-publisher sending state inside the task.
struct Sender {
    index: u32,
    counters: Arc<PublisherCounters>,
    plan: MediaPlan,
    delta_bytes: usize,
    audio: (u32, u8),
    video: (u32, u8),
    audio_rtp_seq: u16,
    video_rtp_seq: u16,
    audio_ts: u32,
    video_ts: u32,
    frame: u32,
    keyframe_phase: u32,
    next_audio: Instant,
    next_video: Instant,
    keyframe_wanted: bool,
    last_keyframe: Instant,
    rng: u32,
    buf: Vec<u8>,
    /// Video packets generated but not yet released by the pacer, oldest first.
    paced: VecDeque<PendingVideo>,
    /// When the pacer may release the next video packet.
    next_paced: Instant,
}

/// A video packet waiting in the pacer. Its payload (with the send time) is written when
/// it is released, so pacing delay is not counted as server latency.
struct PendingVideo {
    frame: u32,
    part: u16,
    parts: u16,
    keyframe: bool,
    record_len: usize,
    rtp_seq: u16,
    rtp_ts: u32,
}

impl Sender {
    fn rand(&mut self) -> u32 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 17;
        self.rng ^= self.rng << 5;
        self.rng
    }

    fn next_due(&self) -> Instant {
        let media = self.next_audio.min(self.next_video);
        if self.paced.is_empty() {
            media
        } else {
            media.min(self.next_paced)
        }
    }
}

fn negotiated_pt(pc: &mut RTCPeerConnection, sender: RTCRtpSenderId) -> Option<u8> {
    let mut s = pc.rtp_sender(sender)?;
    s.get_parameters()
        .rtp_parameters
        .codecs
        .first()
        .map(|c| c.payload_type)
}

fn write_rtp(
    pc: &mut RTCPeerConnection,
    now: Instant,
    header: rtc::rtp::header::Header,
    payload: Bytes,
) -> bool {
    pc.handle_write(TaggedRTCMessage {
        now,
        message: RTCMessage::RtpPacket(String::new(), rtc::rtp::Packet { header, payload }),
    })
    .is_ok()
}

/// Sends everything due at `now` (bounded catch-up).
fn send_due(pc: &mut RTCPeerConnection, s: &mut Sender, clock: &Clock, window: &Window) {
    let now = Instant::now();
    let mut budget = 8;
    while s.next_audio <= now && budget > 0 {
        budget -= 1;
        let lag = now.saturating_duration_since(s.next_audio);
        let seq = s.counters.next(StreamKind::Audio);
        let send_ns = clock.now_ns();
        if window.contains(send_ns) {
            lock(&s.counters.lag_us).record(lag.as_micros() as u64);
        }
        let info = RecordInfo {
            kind: StreamKind::Audio,
            layer: 0,
            publisher: s.index,
            seq,
            send_ns,
            frame: 0,
            part: 0,
            parts: 1,
        };
        payload::audio_payload(&mut s.buf, &info, s.plan.audio_bytes);
        let header = rtc::rtp::header::Header {
            version: 2,
            marker: false,
            payload_type: s.audio.1,
            sequence_number: s.audio_rtp_seq,
            timestamp: s.audio_ts,
            ssrc: s.audio.0,
            ..Default::default()
        };
        let ok = write_rtp(pc, now, header, Bytes::copy_from_slice(&s.buf));
        if ok {
            s.counters.sent(StreamKind::Audio, window.contains(send_ns));
        } else {
            s.counters.send_errors.fetch_add(1, Ordering::Relaxed);
        }
        s.audio_rtp_seq = s.audio_rtp_seq.wrapping_add(1);
        s.audio_ts = s.audio_ts.wrapping_add(960);
        s.next_audio += s.plan.audio_interval;
    }
    while s.next_video <= now && budget > 0 {
        budget -= 1;
        let lag = now.saturating_duration_since(s.next_video);
        if window.contains(clock.now_ns()) {
            lock(&s.counters.lag_us).record(lag.as_micros() as u64);
        }
        // The first frame is a keyframe; after that each publisher keeps its own phase, so
        // publishers that joined together do not send their keyframes in the same instant.
        let periodic = s.frame == 0
            || (s.frame + s.keyframe_phase).is_multiple_of(s.plan.keyframe_every.max(1));
        let requested = s.keyframe_wanted && now >= s.last_keyframe + Duration::from_secs(1);
        let keyframe = periodic || requested;
        if keyframe {
            s.keyframe_wanted = false;
            s.last_keyframe = now;
        }
        let base = if keyframe {
            s.plan.keyframe_bytes
        } else {
            s.delta_bytes
        };
        let bytes = jittered(base, s.rand() as usize % JITTER_STEPS);
        let (parts, per) = payload::split_frame(bytes);
        if s.paced.is_empty() {
            // An idle pacer has no budget saved up: this frame starts now.
            s.next_paced = s.next_paced.max(now);
        }
        for part in 0..parts {
            s.paced.push_back(PendingVideo {
                frame: s.frame,
                part,
                parts,
                keyframe,
                record_len: per,
                rtp_seq: s.video_rtp_seq,
                rtp_ts: s.video_ts,
            });
            s.video_rtp_seq = s.video_rtp_seq.wrapping_add(1);
        }
        s.video_ts = s.video_ts.wrapping_add(3000);
        s.frame += 1;
        s.next_video += s.plan.video_interval;
    }
    release_paced(pc, s, now, clock, window);
    s.counters
        .paced_backlog
        .store(s.paced.len() as u64, Ordering::Relaxed);
    // Far behind (the generator was starved): skip ahead instead of bursting, and let
    // the lag histogram tell.
    if s.next_audio + Duration::from_millis(200) < now {
        s.next_audio = now;
    }
    if s.next_video + Duration::from_millis(200) < now {
        s.next_video = now;
    }
}

/// Frame sizes vary by ±15 % in steps of 1 %, like an encoder's.
const JITTER_STEPS: usize = 31;

/// A frame of `base` bytes with variation step `step` (0..[`JITTER_STEPS`]).
fn jittered(base: usize, step: usize) -> usize {
    base * (85 + step) / 100
}

/// Sends the video packets the pacer allows at `now`: one packet's worth of time per
/// packet at the pacing rate, everything at once when unpaced.
fn release_paced(
    pc: &mut RTCPeerConnection,
    s: &mut Sender,
    now: Instant,
    clock: &Clock,
    window: &Window,
) {
    // A late wake-up catches up, but by no more than MAX_PACE_DEBT in one burst.
    if let Some(floor) = now.checked_sub(MAX_PACE_DEBT) {
        s.next_paced = s.next_paced.max(floor);
    }
    while s.next_paced <= now {
        let Some(p) = s.paced.pop_front() else { break };
        let seq = s.counters.next(StreamKind::Video);
        let send_ns = clock.now_ns();
        let info = RecordInfo {
            kind: StreamKind::Video,
            layer: 0,
            publisher: s.index,
            seq,
            send_ns,
            frame: p.frame,
            part: p.part,
            parts: p.parts,
        };
        payload::video_payload(&mut s.buf, &info, p.keyframe, p.record_len);
        let header = rtc::rtp::header::Header {
            version: 2,
            marker: p.part + 1 == p.parts,
            payload_type: s.video.1,
            sequence_number: p.rtp_seq,
            timestamp: p.rtp_ts,
            ssrc: s.video.0,
            ..Default::default()
        };
        s.next_paced += s.plan.pace_time(s.buf.len() + RTP_OVERHEAD);
        let ok = write_rtp(pc, now, header, Bytes::copy_from_slice(&s.buf));
        if ok {
            s.counters.sent(StreamKind::Video, window.contains(send_ns));
        } else {
            s.counters.send_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Emulated uplink loss ([`MediaPlan::uplink_drop_every`]): a publisher's every Nth
/// video datagram is not sent. `rtc` has encrypted it and its NACK responder keeps it, so
/// the server can have it again by asking.
#[derive(Default)]
struct UplinkLoss {
    every: u32,
    seen: u32,
    counters: Option<Arc<PublisherCounters>>,
}

impl UplinkLoss {
    /// Whether `datagram` is one to lose (retransmissions count too, as on a real link).
    fn drops(&mut self, datagram: &[u8]) -> bool {
        if self.every == 0 || !is_video_rtp(datagram) {
            return false;
        }
        self.seen += 1;
        if !self.seen.is_multiple_of(self.every) {
            return false;
        }
        if let Some(c) = &self.counters {
            c.uplink_dropped.fetch_add(1, Ordering::Relaxed);
        }
        true
    }
}

async fn flush(pc: &mut RTCPeerConnection, socket: &UdpSocket, uplink: &mut UplinkLoss) {
    while let Some(msg) = pc.poll_write() {
        if uplink.drops(&msg.message) {
            continue;
        }
        match socket.try_send_to(&msg.message, msg.transport.peer_addr) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Err(e) = socket.send_to(&msg.message, msg.transport.peer_addr).await {
                    tracing::debug!(%e, "send failed");
                }
            }
            Err(e) => tracing::debug!(%e, "send failed"),
        }
    }
}

async fn run(
    peer: Peer,
    role: Role,
    clock: Clock,
    window: Arc<Window>,
    mut cmds: mpsc::UnboundedReceiver<PeerCmd>,
    state: watch::Sender<PeerState>,
) {
    let Peer {
        mut pc,
        socket,
        local,
        audio,
        video,
        tap,
        ..
    } = peer;
    let mut direct_rx = DirectRx::Off;
    let mut drop_every_video = 0;
    let mut video_seen: u32 = 0;
    let mut uplink = UplinkLoss::default();
    let (mut sender, rx) = match role {
        Role::Publisher {
            index,
            counters,
            plan,
        } => {
            uplink = UplinkLoss {
                every: plan.uplink_drop_every,
                seen: 0,
                counters: Some(counters.clone()),
            };
            let now = Instant::now();
            let delta_bytes = plan.delta_bytes();
            let far = now + Duration::from_secs(86_400);
            let s = match (audio, video) {
                (Some(a), Some(v)) => Some((a, v)),
                _ => None,
            };
            (
                s.map(|(a, v)| {
                    let a_pt = negotiated_pt(&mut pc, a.0).unwrap_or(OPUS_PT);
                    let v_pt = negotiated_pt(&mut pc, v.0).unwrap_or(VP8_PT);
                    Sender {
                        index,
                        counters,
                        delta_bytes,
                        audio: (a.1, a_pt),
                        video: (v.1, v_pt),
                        audio_rtp_seq: rand::random(),
                        video_rtp_seq: rand::random(),
                        audio_ts: rand::random(),
                        video_ts: rand::random(),
                        frame: 0,
                        keyframe_phase: rand::random::<u32>() % plan.keyframe_every.max(1),
                        next_audio: far,
                        next_video: far,
                        keyframe_wanted: false,
                        last_keyframe: now,
                        rng: rand::random::<u32>() | 1,
                        buf: Vec::with_capacity(payload::MAX_RTP_PAYLOAD),
                        paced: VecDeque::new(),
                        next_paced: now,
                        plan,
                    }
                }),
                None,
            )
        }
        Role::Subscriber {
            rx,
            drop_every,
            direct,
        } => {
            drop_every_video = drop_every;
            if direct && drop_every == 0 {
                direct_rx = DirectRx::new(tap);
            }
            (None, Some(rx))
        }
    };
    let mut buf = vec![0u8; 2048];
    let mut connected = false;
    let mut last_timeout = Instant::now() - MIN_TIMEOUT_INTERVAL;
    let mut closing = false;
    let mut batch: VecDeque<(u64, Bytes)> = VecDeque::new();
    // Packets of `batch` that DirectRx opened, not yet added to the counters.
    let mut direct_pending = 0u64;
    // Whether the connection has had an input since its outputs and deadline were last
    // read. A sans-I/O connection's outputs and timeout change only on an input, and most
    // wake-ups of a subscriber only bring RTP that DirectRx opens without `rtc`. Not
    // polling `rtc` after those took the generator from 0.61 to 0.52 cores at 1 → 450
    // (mean of 6 alternating runs each, session 15).
    let mut pc_touched = true;
    let mut pc_deadline = Instant::now();
    loop {
        if pc_touched {
            flush(&mut pc, &socket, &mut uplink).await;
            while let Some(event) = pc.poll_event() {
                if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = event {
                    match s {
                        RTCPeerConnectionState::Connected if !connected => {
                            connected = true;
                            let _ = state.send(PeerState::Connected);
                            if let Some(s) = sender.as_mut() {
                                let now = Instant::now();
                                s.next_audio = now;
                                s.next_video = now;
                            }
                        }
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                            let _ = state.send(PeerState::Failed);
                            closing = true;
                        }
                        _ => {}
                    }
                }
            }
            drain_reads(
                &mut pc,
                sender.as_mut(),
                rx.is_some(),
                clock.now_ns(),
                &mut batch,
            );
        }
        if let Some(rx) = &rx {
            if !batch.is_empty() {
                let mut rx = lock(rx);
                rx.direct += std::mem::take(&mut direct_pending);
                for (at, payload) in batch.drain(..) {
                    let parsed = if payload.starts_with(&MAGIC) {
                        payload::parse_payload(&payload, false)
                    } else {
                        payload::parse_payload(&payload, true)
                    };
                    rx.on_packet(parsed, payload.len(), at, &window);
                }
            }
        }
        if closing {
            flush(&mut pc, &socket, &mut uplink).await;
            return;
        }
        let now = Instant::now();
        if pc_touched {
            pc_deadline = pc.poll_timeout().unwrap_or(now + Duration::from_secs(3600));
            if pc_deadline <= now && now < last_timeout + MIN_TIMEOUT_INTERVAL {
                pc_deadline = last_timeout + MIN_TIMEOUT_INTERVAL;
            }
            pc_touched = false;
        }
        let deadline = pc_deadline;
        let media_due = sender.as_ref().filter(|_| connected).map(Sender::next_due);
        let wake = media_due.map_or(deadline, |m| m.min(deadline));
        tokio::select! {
            biased;
            cmd = cmds.recv() => {
                pc_touched = true;
                match cmd {
                    Some(PeerCmd::Offer(sdp, reply)) => {
                        let _ = reply.send(answer(&mut pc, sdp));
                    }
                    Some(PeerCmd::Candidate(c)) => add_candidate(&mut pc, c),
                    Some(PeerCmd::Close) | None => {
                        if let Err(e) = pc.close() {
                            tracing::debug!(%e, "close");
                        }
                        flush(&mut pc, &socket, &mut uplink).await;
                        let _ = state.send(PeerState::Closed);
                        return;
                    }
                }
            }
            r = socket.readable() => {
                if r.is_ok() {
                    for _ in 0..READ_BATCH {
                        match rxstamp::try_recv(&socket, &mut buf) {
                            Ok((n, from, stamp)) => {
                                if drop_every_video > 0 && is_video_rtp(&buf[..n]) {
                                    video_seen += 1;
                                    if video_seen.is_multiple_of(drop_every_video) {
                                        if let Some(rx) = &rx {
                                            lock(rx).dropped += 1;
                                        }
                                        continue;
                                    }
                                }
                                // Each datagram's packets get its own arrival time.
                                let at = stamp.map_or_else(|| clock.now_ns(), |t| clock.ns_from_realtime(t));
                                if let Some(payload) = direct_rx.open(&buf[..n]).map(|p| p.payload) {
                                    direct_pending += 1;
                                    batch.push_back((at, payload));
                                    continue;
                                }
                                read_one(&mut pc, local, from, &buf[..n]);
                                pc_touched = true;
                                drain_reads(&mut pc, sender.as_mut(), rx.is_some(), at, &mut batch);
                            }
                            Err(_) => break,
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                pc_touched = true;
                let now = Instant::now();
                if deadline <= now {
                    last_timeout = now;
                    if let Err(e) = pc.handle_timeout(now) {
                        tracing::debug!(%e, "timeout handling");
                    }
                }
                if connected {
                    if let Some(s) = sender.as_mut() {
                        if s.next_due() <= now {
                            send_due(&mut pc, s, &clock, &window);
                        }
                    }
                }
            }
        }
    }
}

/// Takes what the connection decoded: RTP for the subscriber's checks (stamped `at_ns`),
/// keyframe requests for the publisher.
fn drain_reads(
    pc: &mut RTCPeerConnection,
    sender: Option<&mut Sender>,
    receiving: bool,
    at_ns: u64,
    batch: &mut VecDeque<(u64, Bytes)>,
) {
    let mut wants_keyframe = false;
    while let Some(TaggedRTCMessage { message, .. }) = pc.poll_read() {
        match message {
            RTCMessage::RtpPacket(_, packet) if receiving => {
                batch.push_back((at_ns, packet.payload));
            }
            RTCMessage::RtcpPacket(_, packets) => {
                wants_keyframe |= packets.iter().any(|p| {
                    let any = p.as_any();
                    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
                });
                if let Some(s) = sender.as_deref() {
                    for p in &packets {
                        if let Some(kind) = feedback_kind(p.as_ref()) {
                            s.counters.server_feedback[kind].fetch_add(1, Ordering::Relaxed);
                        }
                        if let Some(cc) = p.as_any().downcast_ref::<TransportLayerCc>() {
                            let [covered, received] = &s.counters.twcc_packets;
                            covered.fetch_add(u64::from(cc.packet_status_count), Ordering::Relaxed);
                            received.fetch_add(cc.recv_deltas.len() as u64, Ordering::Relaxed);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if let (true, Some(s)) = (wants_keyframe, sender) {
        s.keyframe_wanted = true;
        s.counters.keyframe_requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// Which of [`crate::stats::PublisherCounters::server_feedback`] an RTCP packet from the
/// server counts in: 0 receiver report, 1 TWCC feedback, 2 NACK.
fn feedback_kind(p: &dyn rtc::rtcp::Packet) -> Option<usize> {
    let any = p.as_any();
    if any.is::<ReceiverReport>() {
        Some(0)
    } else if any.is::<TransportLayerCc>() {
        Some(1)
    } else if any.is::<TransportLayerNack>() {
        Some(2)
    } else {
        None
    }
}

/// Whether a datagram is RTP (not RTCP) with our video payload type; the RTP header is
/// sent in the clear (RFC 7983 first byte, RFC 5761 payload-type ranges).
fn is_video_rtp(datagram: &[u8]) -> bool {
    datagram.len() >= 12
        && wardlink::media::direct_srtp::is_rtp_or_rtcp(datagram)
        && datagram[1] & 0x7f == VP8_PT
}

fn read_one(pc: &mut RTCPeerConnection, local: SocketAddr, from: SocketAddr, data: &[u8]) {
    let r = pc.handle_read(TaggedBytesMut {
        now: Instant::now(),
        transport: TransportContext {
            local_addr: local,
            peer_addr: from,
            ecn: None,
            transport_protocol: TransportProtocol::UDP,
        },
        message: BytesMut::from(data),
    });
    if let Err(e) = r {
        tracing::trace!(%e, "datagram rejected");
    }
}

/// Lets inbound keyframe requests (PLI, FIR) out of the interceptor chain to the task,
/// which answers them with a keyframe, and the server's receiver reports, TWCC feedback
/// and NACKs, which the task counts; everything else stays inside `rtc`.
#[derive(Default)]
struct KeyframeRequestTap {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let wanted = packets.iter().any(|p| {
                let any = p.as_any();
                any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
            });
            // The server's feedback is counted too (the interceptors nearer the wire have
            // acted on it already: the NACK responder has resent).
            if wanted || packets.iter().any(|p| feedback_kind(p.as_ref()).is_some()) {
                msg.message.add(Attribute::DeliverToApplication);
            }
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }

    fn handle_timeout(&mut self, _now: Instant) -> Result<(), Self::Error> {
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }
}

impl Interceptor for KeyframeRequestTap {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nominal_rate_is_what_healthy_runs_measured() {
        // Healthy runs of session 9 measured 190.6-192.3 packets/s per publisher.
        let pps = MediaPlan::default().nominal_pps();
        assert!((188.0..195.0).contains(&pps), "{pps}");
        let doubled = MediaPlan {
            video_bitrate: 2_400_000,
            ..MediaPlan::default()
        };
        assert!(doubled.nominal_pps() > pps + 100.0);
    }

    #[test]
    fn pacing_spreads_a_keyframe_like_a_browser() {
        let plan = MediaPlan::default();
        // 2.5 × 1.2 Mbit/s = 3 Mbit/s: a 1,250-byte datagram every 3.33 ms.
        let one = plan.pace_time(1250);
        assert!((one.as_secs_f64() - 0.003_333).abs() < 1e-5, "{one:?}");
        // A 30 KB keyframe leaves over ~80 ms, not in one burst.
        let (parts, per) = payload::split_frame(plan.keyframe_bytes);
        let keyframe = plan.pace_time(per + RTP_OVERHEAD) * u32::from(parts);
        assert!(
            keyframe > Duration::from_millis(75) && keyframe < Duration::from_millis(90),
            "{keyframe:?}"
        );
        let unpaced = MediaPlan {
            pace_multiplier: None,
            ..MediaPlan::default()
        };
        assert_eq!(unpaced.pace_time(1250), Duration::ZERO);
    }
}
