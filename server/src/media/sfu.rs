//! The SFU core: every peer connection of the server, as one sans-I/O state machine.
//!
//! [`Sfu`] takes datagrams, room commands and timeouts, each with an [`Instant`], and
//! produces datagrams to send ([`Sfu::poll_transmit`]) and events for the rooms (sent
//! on each participant's event channel). It never touches a socket, so the event loop
//! in `media/mod.rs` stays a thin shell and this logic can be driven in tests.
//!
//! Media is forwarded inside the same call that received it: no task hop, no lock, no
//! queue between publisher and subscriber other than each subscriber's bounded outbox.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverId};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rustc_hash::FxHashMap;
use tokio::sync::mpsc::UnboundedSender;
use wardlink_signaling::protocol::{MediaKind, ParticipantId, PcKind, TrackDescription};
use wardlink_signaling::room::{MediaCommand, MediaEvent, TrackRef};
use wardlink_signaling::ErrorCode;

use super::codecs;
use super::demux::{Demux, PeerId};
use super::direct_rx::DirectRx;
use super::direct_srtp::{self, DirectSrtp, KeyTap};
use super::feedback::ReceiveFeedback;
use super::forwarder::{DedupWindow, KeyframeThrottle, LegRewriter, PacketHistory, SentCounters};
use super::remote_path::RemotePath;

pub use super::outbound::Transmit;

/// Most datagrams queued for one peer connection before new ones are dropped. A dead or
/// slow subscriber fills only its own outbox; the publisher and the others never wait.
pub const OUTBOX_LIMIT: usize = 1024;

/// How often each subscriber leg gets an RTCP sender report (what `rtc`'s sender-report
/// interceptor used): receivers use it to line audio and video up and to measure RTT.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Seconds from the NTP epoch (1900) to the Unix epoch.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// Counters for tests, logs and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SfuStats {
    /// RTP packets written to subscriber legs.
    pub forwarded: u64,
    /// Incoming RTP packets dropped as duplicates (RTX copies, probes).
    pub duplicates: u64,
    /// Datagrams dropped because a peer's outbox was full.
    pub outbox_drops: u64,
    /// Keyframe requests sent to publishers.
    pub keyframe_requests: u64,
    /// Peer connections torn down by the connect watchdog.
    pub connect_timeouts: u64,
    /// Packets sent again because a subscriber reported them lost (NACK).
    pub retransmissions: u64,
    /// Forwarded packets encrypted by the SFU itself rather than by `rtc` (see
    /// [`super::direct_srtp`]).
    pub direct: u64,
    /// Publishers' RTP packets decrypted by the SFU itself rather than read through `rtc`
    /// (see [`super::direct_rx`]).
    pub direct_reads: u64,
    /// Times a connection followed its client to a new address (see
    /// [`super::remote_path`]).
    pub path_moves: u64,
    /// Connections torn down because nothing arrived from their client for the silence
    /// limit.
    pub silence_teardowns: u64,
    /// Datagrams sent by the media loop's second sending thread in large fan-outs (filled
    /// in by the loop, not the SFU; see [`super::send_lanes`]).
    pub helper_sent: u64,
    /// Datagrams dropped because that thread's backlog was full (filled in by the loop).
    pub helper_drops: u64,
}

/// SFU settings.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// The address advertised in our ICE candidate (public IP or the bound address).
    pub advertised: SocketAddr,
    /// How long a peer connection may take to reach `connected`.
    pub connect_timeout: Duration,
    /// How long a connection may hear nothing from its client before it is torn down (and
    /// the client told to reconnect).
    pub silence_limit: Duration,
}

/// The default of [`SfuConfig::silence_limit`]: what `rtc`'s ICE agent allowed by default
/// (5 s to disconnected, then 25 s to failed), which that agent no longer judges.
pub const DEFAULT_SILENCE_LIMIT: Duration = Duration::from_secs(30);

/// A published track as received from one publisher connection.
struct InboundTrack {
    kind: MediaKind,
    receiver_id: RTCRtpReceiverId,
    ssrc: u32,
    codec: rtc::rtp_transceiver::rtp_sender::RTCRtpCodec,
    dedup: DedupWindow,
    keyframes: KeyframeThrottle,
    /// Recent packets, to answer subscribers' NACKs (video and screen only: Opus is not
    /// negotiated with NACK).
    history: PacketHistory,
}

/// One forwarded track on a subscriber connection.
struct Leg {
    sender_id: RTCRtpSenderId,
    track_id: String,
    mime: String,
    fmtp: String,
    rewriter: LegRewriter,
    /// Payload type resolved from the answer; nothing is sent before that.
    negotiated: bool,
    /// For the leg's sender reports.
    sent: SentCounters,
}

enum Side {
    Publisher {
        /// Keyed by the `rtc` track id that RTP arrives with. Shared, so that the direct
        /// read path can name a packet's track without allocating.
        tracks: HashMap<Arc<str>, InboundTrack>,
        /// The media section the client declared as its screen share.
        screen_mid: Option<String>,
        /// Decrypts the client's RTP outside `rtc` once a tapped key is proven.
        rx: DirectRx,
        /// The receive-side interceptors, shared with `rtc`'s chain.
        feedback: ReceiveFeedback,
    },
    Subscriber {
        /// Publisher participant → [audio, video, screen] legs. Keyed by the publisher's
        /// [`Route::publisher`], so the forwarding path finds a leg by pointer (`Arc<str>`
        /// equality compares pointers first) instead of reading the string: at 1 → 450 the
        /// string comparison was 3 % of the server's samples (session 13). A key from
        /// elsewhere still matches by content.
        legs: FxHashMap<Arc<str>, [Option<Leg>; KINDS]>,
        /// Our sender track id → the publisher track it carries (for keyframe requests).
        by_track_id: HashMap<String, TrackRef>,
        /// Counter making every sender track id unique within the connection.
        next_track: u64,
        /// Rewriters of removed legs, by the transceiver they used. `rtc` keeps statistics
        /// for every SSRC a connection ever sent (they are never dropped) and gives a
        /// freed transceiver to the next track of its kind, so the next leg on that
        /// transceiver takes the old SSRC over, numbering continued as at a source switch.
        /// With a fresh SSRC per leg, a participant who stayed while others came and went
        /// grew by one statistics entry per leg (the leak check's growth).
        spare: BTreeMap<RTCRtpTransceiverId, (RtpCodecKind, LegRewriter)>,
        /// An answer has been applied at least once.
        answered: bool,
    },
}

struct Peer {
    participant: ParticipantId,
    pc_kind: PcKind,
    pc: RTCPeerConnection,
    connected: bool,
    /// When the connect watchdog fires if not yet connected.
    connect_deadline: Option<Instant>,
    /// `pc.poll_timeout()` as of the last time the connection was touched.
    timer: Option<Instant>,
    /// The connection was touched since `timer` was read. Asking every connection for its
    /// deadline on every wake-up walked each one's ICE, DTLS and interceptor timers, for
    /// every peer, for nearly every datagram.
    timer_stale: bool,
    outbox: VecDeque<Transmit>,
    side: Side,
    /// Who encrypts forwarded RTP on this connection (subscribers only).
    direct: DirectSrtp,
    /// When the subscriber legs' next sender reports are due (once connected).
    next_report: Option<Instant>,
    /// The client's address, followed across NAT rebinding, and its liveness.
    path: RemotePath,
}

/// A peer connection made by [`Sfu::new_pc`], before it is a [`Peer`].
struct NewPc {
    id: PeerId,
    pc: RTCPeerConnection,
    /// The connection's crypto provider, which notes its SRTP keys.
    tap: Arc<KeyTap>,
    /// Publish connections: their receive-side interceptors.
    feedback: Option<ReceiveFeedback>,
}

impl Peer {
    /// The connection's next protocol deadline, re-read only if it was touched since.
    fn timer(&mut self) -> Option<Instant> {
        if self.timer_stale {
            self.timer = self.pc.poll_timeout();
            self.timer_stale = false;
        }
        self.timer
    }
}

/// The subscriber connections one publisher's packets go to.
struct Route {
    /// The publisher's id, shared with the legs that carry it (see `Side::Subscriber::legs`).
    publisher: Arc<str>,
    /// Subscriber connections, per kind.
    subscribers: [Vec<PeerId>; KINDS],
}

impl Route {
    /// The route of `publisher`, made empty if it has none yet.
    fn of<'a>(routes: &'a mut HashMap<ParticipantId, Route>, publisher: &str) -> &'a mut Route {
        routes.entry(publisher.to_owned()).or_insert_with(|| Route {
            publisher: Arc::from(publisher),
            subscribers: Default::default(),
        })
    }
}

/// A participant known to the media plane.
struct Attachment {
    events: UnboundedSender<MediaEvent>,
    publish: Option<PeerId>,
    subscribe: Option<PeerId>,
    /// Kinds not forwarded because someone with the right muted them. Kept per
    /// participant, not per connection, so a republish cannot shake the mute off.
    suppressed: [bool; KINDS],
}

/// Number of track kinds a participant can publish (audio, video, screen).
const KINDS: usize = 3;
const ALL_KINDS: [MediaKind; KINDS] = [MediaKind::Audio, MediaKind::Video, MediaKind::Screen];

fn kind_index(kind: MediaKind) -> usize {
    match kind {
        MediaKind::Audio => 0,
        MediaKind::Video => 1,
        MediaKind::Screen => 2,
    }
}
/// The `rtc` media kind a track of `kind` is sent as (screen share is video).
fn rtc_kind(kind: MediaKind) -> RtpCodecKind {
    match kind {
        MediaKind::Audio => RtpCodecKind::Audio,
        MediaKind::Video | MediaKind::Screen => RtpCodecKind::Video,
    }
}

fn kind_name(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Audio => "audio",
        MediaKind::Video => "video",
        MediaKind::Screen => "screen",
    }
}

/// The SFU state machine.
pub struct Sfu {
    config: SfuConfig,
    next_peer: PeerId,
    /// Boxed: a `Peer` is about 9 KB (the `rtc` connection inline), and the table holds
    /// spare buckets too. Inline, 600 peers made a table of about 10 MB that the media
    /// thread copied whole whenever it grew, and that kept its high-water size.
    /// Looked up once per subscriber leg of every forwarded packet, hence the cheap hasher;
    /// the keys are ours (a counter), not a client's.
    peers: FxHashMap<PeerId, Box<Peer>>,
    demux: Demux,
    attachments: HashMap<ParticipantId, Attachment>,
    /// Publisher participant → where its packets go.
    routes: HashMap<ParticipantId, Route>,
    /// Peers whose outbox is non-empty, in the order they became so.
    ready: VecDeque<PeerId>,
    stats: SfuStats,
    /// Most legs one forwarded packet went to since [`Sfu::take_widest_fanout`].
    widest_fanout: usize,
}

impl Sfu {
    /// Creates an SFU with no connections.
    pub fn new(config: SfuConfig) -> Self {
        Sfu {
            config,
            next_peer: 1,
            peers: FxHashMap::default(),
            demux: Demux::default(),
            attachments: HashMap::new(),
            routes: HashMap::new(),
            ready: VecDeque::new(),
            stats: SfuStats::default(),
            widest_fanout: 0,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> SfuStats {
        self.stats
    }

    /// Number of live peer connections.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Registers a participant and where its [`MediaEvent`]s go.
    pub fn attach(&mut self, participant: ParticipantId, events: UnboundedSender<MediaEvent>) {
        self.attachments.insert(
            participant,
            Attachment {
                events,
                publish: None,
                subscribe: None,
                suppressed: [false; KINDS],
            },
        );
    }

    /// Applies one command from a room.
    pub fn handle_command(&mut self, now: Instant, command: MediaCommand) {
        // Commands are rare (joins, leaves, renegotiation) and may touch any connection.
        for peer in self.peers.values_mut() {
            peer.timer_stale = true;
        }
        match command {
            MediaCommand::Publish {
                participant,
                sdp,
                screen_mid,
            } => self.publish(now, participant, sdp, screen_mid),
            MediaCommand::Suppress {
                participant,
                kind,
                suppressed,
            } => {
                if let Some(a) = self.attachments.get_mut(&participant) {
                    a.suppressed[kind_index(kind)] = suppressed;
                }
            }
            MediaCommand::Unpublish { participant } => {
                if let Some(id) = self
                    .attachments
                    .get_mut(&participant)
                    .and_then(|a| a.publish.take())
                {
                    self.drop_peer(id);
                }
            }
            MediaCommand::Subscribe {
                participant,
                revision,
                tracks,
            } => self.subscribe(now, participant, revision, tracks),
            MediaCommand::SubscribeAnswer { participant, sdp } => {
                self.subscribe_answer(now, participant, sdp)
            }
            MediaCommand::RemoteCandidate {
                participant,
                pc,
                candidate,
            } => self.remote_candidate(participant, pc, candidate),
            MediaCommand::Remove { participant } => {
                if let Some(a) = self.attachments.remove(&participant) {
                    for id in [a.publish, a.subscribe].into_iter().flatten() {
                        self.drop_peer(id);
                    }
                }
                self.routes.remove(&participant);
            }
        }
    }

    /// Feeds one received datagram.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, payload: &[u8]) {
        let Some(id) = self.demux.route(from, payload) else {
            return;
        };
        let transport = TransportContext {
            local_addr: self.config.advertised,
            peer_addr: from,
            ecn: None,
            transport_protocol: TransportProtocol::UDP,
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        peer.path.inbound(now, from, payload);
        if let Side::Publisher {
            rx,
            feedback,
            tracks,
            ..
        } = &mut peer.side
        {
            // Only a stream whose track `rtc` has reported: its first packets went through
            // `rtc`, which bound it in the interceptors. Anything else (a new stream, the
            // RTX stream, probes) goes on to `rtc` below, which decrypts it again.
            let opened = rx.open(payload).and_then(|packet| {
                let ssrc = packet.header.ssrc;
                tracks
                    .iter()
                    .find(|(_, t)| t.ssrc == ssrc)
                    .map(|(track_id, _)| (track_id.clone(), packet))
            });
            if let Some((track_id, packet)) = opened {
                let Some(packet) = feedback.read(now, transport, packet) else {
                    return;
                };
                // The interceptors' timers are part of the connection's deadline, which
                // is cached until `rtc` is touched; a packet can only bring one closer.
                if let Some(due) = feedback.deadline() {
                    peer.timer = Some(peer.timer.map_or(due, |t| t.min(due)));
                }
                self.stats.direct_reads += 1;
                let participant = peer.participant.clone();
                self.forward(now, id, &participant, &track_id, packet);
                return;
            }
        }
        let result = peer.pc.handle_read(TaggedBytesMut {
            now,
            transport,
            message: BytesMut::from(payload),
        });
        if let Err(err) = result {
            // One bad datagram (replay, auth failure, garbage) must not end the session.
            tracing::debug!(peer = id, %err, "datagram rejected");
        }
        self.process_peer(now, id);
    }

    /// The earliest instant at which [`Sfu::handle_timeout`] must be called.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.peers
            .values_mut()
            .flat_map(|p| {
                [
                    p.timer(),
                    p.connect_deadline,
                    p.next_report,
                    p.path.deadline(),
                ]
            })
            .flatten()
            .min()
    }

    /// Drives timers: retransmissions, reports, keep-alives and the connect watchdog.
    pub fn handle_timeout(&mut self, now: Instant) {
        let reports_due: Vec<PeerId> = self
            .peers
            .iter()
            .filter_map(|(id, p)| p.next_report.is_some_and(|t| t <= now).then_some(*id))
            .collect();
        for id in reports_due {
            self.send_reports(now, id);
        }
        let due: Vec<PeerId> = self
            .peers
            .iter_mut()
            .filter_map(|(id, p)| p.timer().is_some_and(|t| t <= now).then_some(*id))
            .collect();
        for id in due {
            if let Some(peer) = self.peers.get_mut(&id) {
                if let Err(err) = peer.pc.handle_timeout(now) {
                    tracing::debug!(peer = id, %err, "timeout handling failed");
                }
            }
            self.process_peer(now, id);
        }
        // Connections that never came up (connect watchdog) or whose client went silent.
        let over: Vec<(PeerId, bool)> = self
            .peers
            .iter()
            .filter_map(|(id, p)| {
                let stalled = !p.connected && p.connect_deadline.is_some_and(|d| d <= now);
                (stalled || p.path.is_gone(now)).then_some((*id, stalled))
            })
            .collect();
        for (id, stalled) in over {
            if stalled {
                self.stats.connect_timeouts += 1;
                self.fail_peer(id, "the connection did not come up in time");
            } else {
                self.stats.silence_teardowns += 1;
                self.fail_peer(id, "nothing arrived from the client for the silence limit");
            }
        }
    }

    /// The most legs one forwarded packet went to since the last call (the media loop
    /// decides from it how to send; see [`super::send_lanes::FanoutMode`]), and resets it.
    pub fn take_widest_fanout(&mut self) -> usize {
        std::mem::take(&mut self.widest_fanout)
    }

    /// Takes the next datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        while let Some(&id) = self.ready.front() {
            match self.peers.get_mut(&id).and_then(|p| p.outbox.pop_front()) {
                Some(transmit) => return Some(transmit),
                None => {
                    self.ready.pop_front();
                }
            }
        }
        None
    }

    fn emit(&self, participant: &str, event: MediaEvent) {
        if let Some(a) = self.attachments.get(participant) {
            // A closed channel means the room is gone; nothing left to tell.
            let _ = a.events.send(event);
        }
    }

    fn new_pc(&mut self, now: Instant, direction: PcKind) -> Result<NewPc, String> {
        let id = self.next_peer;
        self.next_peer += 1;
        let ufrag = random_token(16);
        let pwd = random_token(32);
        let tap = KeyTap::new();
        let setting_engine = SettingEngineBuilder::new()
            .with_crypto_provider(tap.clone())
            .with_lite(true)
            .with_ice_credentials(ufrag.clone(), pwd)
            // Its disconnected/failed timers watch only the first nominated address, so a
            // client whose NAT moved it would be failed while its media flows;
            // `RemotePath` judges liveness on the address it follows.
            .with_ice_timeouts(Some(Duration::ZERO), Some(Duration::ZERO), None)
            // The browser is the DTLS client on both connections: the field notes show the
            // server-as-client handshake stalling under loss.
            .with_answering_dtls_role(RTCDtlsRole::Server)
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .build();
        let mut media_engine = codecs::media_engine().map_err(|e| e.to_string())?;
        let (registry, feedback) =
            codecs::interceptors(&mut media_engine, direction).map_err(|e| e.to_string())?;
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_setting_engine(setting_engine)
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .build(now)
            .map_err(|e| e.to_string())?;
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: self.config.advertised.ip().to_string(),
                port: self.config.advertised.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .map_err(|e| e.to_string())?;
        let init = RTCIceCandidate::from(&candidate)
            .to_json()
            .map_err(|e| e.to_string())?;
        pc.add_local_candidate(init).map_err(|e| e.to_string())?;
        pc.add_local_candidate(RTCIceCandidateInit::default())
            .map_err(|e| e.to_string())?;
        self.demux.add_ufrag(ufrag, id);
        Ok(NewPc {
            id,
            pc,
            tap,
            feedback,
        })
    }

    fn insert_peer(
        &mut self,
        id: PeerId,
        participant: &str,
        pc_kind: PcKind,
        pc: RTCPeerConnection,
        side: Side,
        direct: DirectSrtp,
    ) {
        self.peers.insert(
            id,
            Box::new(Peer {
                participant: participant.to_string(),
                pc_kind,
                pc,
                connected: false,
                connect_deadline: None,
                timer: None,
                timer_stale: true,
                outbox: VecDeque::new(),
                side,
                direct,
                next_report: None,
                path: RemotePath::new(self.config.silence_limit),
            }),
        );
    }

    fn publish(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        sdp: String,
        screen_mid: Option<String>,
    ) {
        let Some(existing) = self.attachments.get(&participant).map(|a| a.publish) else {
            return;
        };
        let fail = |sfu: &mut Sfu, message: String| {
            sfu.emit(
                &participant,
                MediaEvent::NegotiationFailed {
                    participant: participant.clone(),
                    pc: PcKind::Publish,
                    code: ErrorCode::InvalidSdp,
                    message,
                },
            );
        };
        let offer = match RTCSessionDescription::offer(sdp) {
            Ok(o) => o,
            Err(e) => return fail(self, format!("invalid offer: {e}")),
        };
        let id = match existing {
            Some(id) => id,
            None => match self.new_pc(now, PcKind::Publish) {
                Ok(NewPc {
                    id,
                    pc,
                    tap,
                    feedback: Some(feedback),
                }) => {
                    self.insert_peer(
                        id,
                        &participant,
                        PcKind::Publish,
                        pc,
                        Side::Publisher {
                            tracks: HashMap::new(),
                            screen_mid: None,
                            rx: DirectRx::new(tap),
                            feedback,
                        },
                        DirectSrtp::Off,
                    );
                    if let Some(a) = self.attachments.get_mut(&participant) {
                        a.publish = Some(id);
                    }
                    id
                }
                Ok(NewPc { feedback: None, .. }) => {
                    return fail(
                        self,
                        "no receive interceptors for a publish connection".into(),
                    )
                }
                Err(e) => return fail(self, format!("could not create the connection: {e}")),
            },
        };
        let timeout = self.config.connect_timeout;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if let Side::Publisher { screen_mid: s, .. } = &mut peer.side {
            *s = screen_mid;
        }
        let answer = (|| {
            peer.pc.set_remote_description(now, offer)?;
            let answer = peer.pc.create_answer(None)?;
            peer.pc.set_local_description(now, answer.clone())?;
            Ok::<_, rtc::shared::error::Error>(answer.sdp)
        })();
        match answer {
            Ok(sdp) => {
                if !peer.connected && peer.connect_deadline.is_none() {
                    peer.connect_deadline = Some(now + timeout);
                }
                self.emit(
                    &participant,
                    MediaEvent::PublishAnswer {
                        participant: participant.clone(),
                        sdp,
                    },
                );
                self.process_peer(now, id);
            }
            Err(e) => {
                // A half-applied negotiation leaves the connection unusable; start clean.
                if existing.is_none() {
                    if let Some(a) = self.attachments.get_mut(&participant) {
                        a.publish = None;
                    }
                    self.drop_peer(id);
                }
                fail(self, format!("the offer could not be negotiated: {e}"));
            }
        }
    }

    fn subscribe(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        revision: u32,
        tracks: Vec<TrackRef>,
    ) {
        let Some(existing) = self.attachments.get(&participant).map(|a| a.subscribe) else {
            return;
        };
        let id = match existing {
            Some(id) => id,
            None => match self.new_pc(now, PcKind::Subscribe) {
                Ok(NewPc { id, pc, tap, .. }) => {
                    self.insert_peer(
                        id,
                        &participant,
                        PcKind::Subscribe,
                        pc,
                        Side::Subscriber {
                            legs: FxHashMap::default(),
                            by_track_id: HashMap::new(),
                            next_track: 0,
                            spare: BTreeMap::new(),
                            answered: false,
                        },
                        DirectSrtp::new(tap),
                    );
                    if let Some(a) = self.attachments.get_mut(&participant) {
                        a.subscribe = Some(id);
                    }
                    id
                }
                Err(e) => {
                    return self.emit(
                        &participant,
                        MediaEvent::NegotiationFailed {
                            participant: participant.clone(),
                            pc: PcKind::Subscribe,
                            code: ErrorCode::Internal,
                            message: format!("could not create the connection: {e}"),
                        },
                    )
                }
            },
        };

        // Codecs of the publishers' live tracks, looked up before borrowing the subscriber.
        let mut sources = Vec::new();
        for t in &tracks {
            let codec = self
                .attachments
                .get(&t.publisher)
                .and_then(|a| a.publish)
                .and_then(|pid| self.peers.get(&pid))
                .and_then(|p| match &p.side {
                    Side::Publisher { tracks, .. } => tracks
                        .values()
                        .find(|it| it.kind == t.kind)
                        .map(|it| it.codec.clone()),
                    Side::Subscriber { .. } => None,
                });
            // A track whose publisher vanished meanwhile is left out; the room re-offers.
            if let Some(codec) = codec {
                sources.push((t.clone(), codec));
            }
        }

        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Side::Subscriber {
            legs,
            by_track_id,
            next_track,
            spare,
            ..
        } = &mut peer.side
        else {
            return;
        };
        let mut removed = Vec::new();
        // Remove legs no longer wanted.
        for (publisher, slots) in legs.iter_mut() {
            for (slot, kind) in slots.iter_mut().zip(ALL_KINDS) {
                let keep = sources
                    .iter()
                    .any(|(t, _)| *t.publisher == **publisher && t.kind == kind);
                if !keep {
                    if let Some(leg) = slot.take() {
                        by_track_id.remove(&leg.track_id);
                        match peer.pc.remove_track(leg.sender_id) {
                            Ok(()) => {
                                spare.insert(
                                    RTCRtpTransceiverId::from(leg.sender_id),
                                    (rtc_kind(kind), leg.rewriter),
                                );
                            }
                            Err(e) => tracing::debug!(%e, "remove_track failed"),
                        }
                        removed.push((publisher.to_string(), kind));
                    }
                }
            }
        }
        legs.retain(|_, slots| slots.iter().any(Option::is_some));
        // Add new legs.
        let mut added = Vec::new();
        for (t, codec) in sources {
            let key = Route::of(&mut self.routes, &t.publisher).publisher.clone();
            let slot = &mut legs.entry(key).or_insert([None, None, None])[kind_index(t.kind)];
            if slot.is_some() {
                continue;
            }
            *next_track += 1;
            let track_id = format!("{}-{}-{}", t.publisher, kind_name(t.kind), next_track);
            let rtc_kind = rtc_kind(t.kind);
            // `rtc` hands this track the lowest freed transceiver of its kind: reuse the
            // SSRC that transceiver carried (see `spare`).
            let reused = spare
                .iter()
                .find(|(_, (k, _))| *k == rtc_kind)
                .map(|(index, _)| *index)
                .and_then(|index| spare.remove(&index).map(|(_, r)| (index, r)));
            let ssrc = reused
                .as_ref()
                .map_or_else(|| rand::random::<u32>() | 1, |(_, r)| r.ssrc());
            let track = MediaStreamTrack::new(
                t.publisher.clone(),
                track_id.clone(),
                format!("{} {}", t.publisher, kind_name(t.kind)),
                rtc_kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec: codec.clone(),
                    ..Default::default()
                }],
            );
            match peer.pc.add_track(track) {
                Ok(sender_id) => {
                    let rewriter = match reused {
                        Some((index, rewriter)) => {
                            let got = RTCRtpTransceiverId::from(sender_id);
                            if index != got {
                                // Still valid (the SSRC moved to another m-line), just
                                // not what `rtc` was expected to do.
                                tracing::debug!(index, got, "reused SSRC on another transceiver");
                            }
                            rewriter
                        }
                        None => {
                            let step = if rtc_kind == RtpCodecKind::Audio {
                                960
                            } else {
                                3000
                            };
                            LegRewriter::new(ssrc, 0, step)
                        }
                    };
                    *slot = Some(Leg {
                        sender_id,
                        track_id: track_id.clone(),
                        mime: codec.mime_type.clone(),
                        fmtp: codec.sdp_fmtp_line.clone(),
                        rewriter,
                        negotiated: false,
                        sent: SentCounters::default(),
                    });
                    by_track_id.insert(track_id, t.clone());
                    added.push(t);
                }
                Err(e) => {
                    tracing::warn!(%e, "add_track failed");
                    if let Some((index, rewriter)) = reused {
                        spare.insert(index, (rtc_kind, rewriter));
                    }
                }
            }
        }
        let offer = (|| {
            let offer = peer.pc.create_offer(None)?;
            peer.pc.set_local_description(now, offer.clone())?;
            Ok::<_, rtc::shared::error::Error>(offer.sdp)
        })();
        for (publisher, kind) in removed {
            if let Some(r) = self.routes.get_mut(&publisher) {
                r.subscribers[kind_index(kind)].retain(|p| *p != id);
            }
        }
        for t in &added {
            let list =
                &mut Route::of(&mut self.routes, &t.publisher).subscribers[kind_index(t.kind)];
            if !list.contains(&id) {
                list.push(id);
            }
        }
        match offer {
            Ok(sdp) => {
                let tracks = describe_tracks(&sdp);
                self.emit(
                    &participant,
                    MediaEvent::SubscribeOffer {
                        participant: participant.clone(),
                        revision,
                        sdp,
                        tracks,
                    },
                );
                self.process_peer(now, id);
            }
            Err(e) => {
                self.drop_subscriber(&participant, id);
                self.emit(
                    &participant,
                    MediaEvent::NegotiationFailed {
                        participant: participant.clone(),
                        pc: PcKind::Subscribe,
                        code: ErrorCode::Internal,
                        message: format!("could not create the subscribe offer: {e}"),
                    },
                );
            }
        }
    }

    fn subscribe_answer(&mut self, now: Instant, participant: ParticipantId, sdp: String) {
        let Some(id) = self.attachments.get(&participant).and_then(|a| a.subscribe) else {
            return;
        };
        let timeout = self.config.connect_timeout;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let applied =
            RTCSessionDescription::answer(sdp).and_then(|a| peer.pc.set_remote_description(now, a));
        if let Err(e) = applied {
            self.drop_subscriber(&participant, id);
            return self.emit(
                &participant,
                MediaEvent::NegotiationFailed {
                    participant: participant.clone(),
                    pc: PcKind::Subscribe,
                    code: ErrorCode::InvalidSdp,
                    message: format!("the answer could not be applied: {e}"),
                },
            );
        }
        let connected = peer.connected;
        let Side::Subscriber { legs, answered, .. } = &mut peer.side else {
            return;
        };
        if !*answered {
            *answered = true;
            peer.connect_deadline = Some(now + timeout);
        }
        // Resolve each new leg's payload type as negotiated on this connection.
        let mut new_video_sources = Vec::new();
        for (publisher, slots) in legs.iter_mut() {
            for (leg, kind) in slots.iter_mut().zip(ALL_KINDS) {
                let Some(leg) = leg else { continue };
                if leg.negotiated {
                    continue;
                }
                let Some(mut sender) = peer.pc.rtp_sender(leg.sender_id) else {
                    continue;
                };
                let params = sender.get_parameters();
                let pt = pick_payload_type(&params.rtp_parameters.codecs, &leg.mime, &leg.fmtp);
                if let Some(pt) = pt {
                    leg.rewriter.set_payload_type(pt);
                    leg.negotiated = true;
                    if kind != MediaKind::Audio {
                        new_video_sources.push((publisher.clone(), kind));
                    }
                } else {
                    tracing::warn!(mime = %leg.mime, "subscriber did not accept the codec");
                }
            }
        }
        // A new subscriber needs a keyframe to start decoding; once connected, ask now.
        if connected {
            for (publisher, kind) in new_video_sources {
                self.request_keyframe(now, &publisher, kind, "a new subscriber");
            }
        }
        self.process_peer(now, id);
    }

    fn remote_candidate(&mut self, participant: ParticipantId, pc: PcKind, candidate: String) {
        // ICE-lite: the browser's address is learned from its binding requests, so remote
        // candidates are informative only. mDNS (.local) ones could not be resolved anyway.
        if candidate.is_empty() || candidate.contains(".local") {
            return;
        }
        let Some(a) = self.attachments.get(&participant) else {
            return;
        };
        let id = match pc {
            PcKind::Publish => a.publish,
            PcKind::Subscribe => a.subscribe,
        };
        if let Some(peer) = id.and_then(|id| self.peers.get_mut(&id)) {
            if peer.pc.remote_description().is_some() {
                let init = RTCIceCandidateInit {
                    candidate,
                    ..Default::default()
                };
                if let Err(e) = peer.pc.add_remote_candidate(init) {
                    tracing::debug!(%e, "remote candidate ignored");
                }
            }
        }
    }

    /// Sends a PLI to the publisher's video stream, at most once per throttle interval;
    /// `why` is logged (at debug level), since every keyframe costs the publisher's uplink.
    fn request_keyframe(&mut self, now: Instant, publisher: &str, kind: MediaKind, why: &str) {
        let Some(pid) = self.attachments.get(publisher).and_then(|a| a.publish) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        let Side::Publisher { tracks, .. } = &mut peer.side else {
            return;
        };
        let Some(track) = tracks.values_mut().find(|t| t.kind == kind) else {
            return;
        };
        if !track.keyframes.allow(now) {
            return;
        }
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: track.ssrc,
        };
        let receiver_id = track.receiver_id;
        if let Some(mut receiver) = peer.pc.rtp_receiver(receiver_id) {
            match receiver.write_rtcp(now, vec![Box::new(pli)]) {
                Ok(()) => {
                    self.stats.keyframe_requests += 1;
                    tracing::debug!(%publisher, ?kind, why, "keyframe requested");
                }
                Err(e) => tracing::debug!(%e, "PLI not sent"),
            }
        }
        self.process_peer(now, pid);
    }

    /// Drains a connection's events, inbound media and outbound datagrams.
    fn process_peer(&mut self, now: Instant, id: PeerId) {
        let mut failed: Option<String> = None;
        let mut published = Vec::new();
        let mut became_connected = false;
        let mut inbound: Vec<(String, rtc::rtp::Packet)> = Vec::new();
        let mut keyframe_wanted = Vec::new();
        let mut nacked = Vec::new();
        {
            let Some(peer) = self.peers.get_mut(&id) else {
                return;
            };
            while let Some(event) = peer.pc.poll_event() {
                match event {
                    RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => match state {
                        RTCPeerConnectionState::Connected if !peer.connected => {
                            peer.connected = true;
                            peer.connect_deadline = None;
                            became_connected = true;
                        }
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                            failed = Some(format!("connection {state}"));
                        }
                        _ => {}
                    },
                    RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                        let is_screen = match &peer.side {
                            Side::Publisher {
                                screen_mid: Some(mid),
                                ..
                            } => {
                                receiver_mid(&mut peer.pc, init.receiver_id).as_deref()
                                    == Some(mid.as_str())
                            }
                            _ => false,
                        };
                        if let Side::Publisher { tracks, .. } = &mut peer.side {
                            if let Some(receiver) = peer.pc.rtp_receiver(init.receiver_id) {
                                let track = receiver.track();
                                let kind = match track.kind() {
                                    RtpCodecKind::Audio => MediaKind::Audio,
                                    _ if is_screen => MediaKind::Screen,
                                    _ => MediaKind::Video,
                                };
                                if let Some(codec) = track.codec(init.ssrc).cloned() {
                                    tracks.insert(
                                        Arc::from(init.track_id.as_str()),
                                        InboundTrack {
                                            kind,
                                            receiver_id: init.receiver_id,
                                            ssrc: init.ssrc,
                                            codec,
                                            dedup: DedupWindow::default(),
                                            keyframes: KeyframeThrottle::default(),
                                            history: PacketHistory::default(),
                                        },
                                    );
                                    published.push(kind);
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            while let Some(TaggedRTCMessage { message, .. }) = peer.pc.poll_read() {
                match message {
                    RTCMessage::RtpPacket(track_id, packet) => inbound.push((track_id, packet)),
                    RTCMessage::RtcpPacket(track_id, packets) => {
                        if let Side::Subscriber { by_track_id, .. } = &peer.side {
                            if codecs::is_keyframe_request(&packets) {
                                if let Some(t) = by_track_id.get(&track_id) {
                                    keyframe_wanted.push((
                                        t.publisher.clone(),
                                        t.kind,
                                        "a subscriber's PLI or FIR",
                                    ));
                                }
                            }
                            nacked.extend(codecs::nacked(&packets));
                        }
                    }
                    _ => {}
                }
            }
            self.drain_writes(id);
        }

        let participant = match self.peers.get(&id) {
            Some(p) => p.participant.clone(),
            None => return,
        };
        for kind in published {
            tracing::info!(participant = %participant, kind = kind_name(kind), "track published");
            self.emit(
                &participant,
                MediaEvent::TrackPublished {
                    participant: participant.clone(),
                    kind,
                },
            );
        }
        if became_connected {
            if let Some(peer) = self.peers.get_mut(&id) {
                if peer.pc_kind == PcKind::Subscribe {
                    peer.next_report = Some(now + REPORT_INTERVAL);
                }
            }
            let pc_kind = self.peers.get(&id).map(|p| p.pc_kind);
            tracing::info!(participant = %participant, pc = ?pc_kind, "peer connection connected");
            if let Some(Peer {
                side: Side::Subscriber { legs, .. },
                ..
            }) = self.peers.get(&id).map(|p| &**p)
            {
                for (publisher, slots) in legs {
                    for (leg, kind) in slots.iter().zip(ALL_KINDS) {
                        if kind != MediaKind::Audio && leg.as_ref().is_some_and(|l| l.negotiated) {
                            keyframe_wanted.push((
                                publisher.to_string(),
                                kind,
                                "a subscriber connected",
                            ));
                        }
                    }
                }
            }
        }
        for (track_id, packet) in inbound {
            self.forward(now, id, &participant, &track_id, packet);
        }
        for (publisher, kind, why) in keyframe_wanted {
            self.request_keyframe(now, &publisher, kind, why);
        }
        for (media_ssrc, seqs) in nacked {
            self.retransmit(now, id, media_ssrc, &seqs);
        }
        if let Some(reason) = failed {
            self.fail_peer(id, &reason);
        }
    }

    /// Forwards one RTP packet from a publisher connection to every subscriber leg of it.
    fn forward(
        &mut self,
        now: Instant,
        from: PeerId,
        publisher: &str,
        track_id: &str,
        mut packet: rtc::rtp::Packet,
    ) {
        // Extensions are negotiated per leg; forwarding the publisher's ids would get the
        // packet rejected (see the field notes), so the leg carries none.
        packet.header.extension = false;
        packet.header.extensions.clear();
        packet.header.extension_profile = 0;
        let kind = {
            let Some(Peer {
                side: Side::Publisher { tracks, .. },
                ..
            }) = self.peers.get_mut(&from).map(|p| &mut **p)
            else {
                return;
            };
            let Some(track) = tracks.get_mut(track_id) else {
                return;
            };

            if !track.dedup.insert(packet.header.sequence_number) {
                self.stats.duplicates += 1;
                return;
            }
            if track.kind != MediaKind::Audio {
                track.history.insert(&packet);
            }
            track.kind
        };
        // Muted by someone with the right: not forwarded until the owner unmutes.
        if self
            .attachments
            .get(publisher)
            .is_some_and(|a| a.suppressed[kind_index(kind)])
        {
            return;
        }
        let Some(route) = self.routes.get(publisher) else {
            return;
        };
        let source_ssrc = packet.header.ssrc;
        // Borrow the fields separately so the route list is read in place, not cloned.
        let (peers, ready, stats) = (&mut self.peers, &mut self.ready, &mut self.stats);
        let mut legs_sent = 0;
        for &sub in &route.subscribers[kind_index(kind)] {
            let Some(peer) = peers.get_mut(&sub) else {
                continue;
            };
            // Before DTLS completes `rtc` would drop the packet anyway.
            if !peer.connected {
                continue;
            }
            let Side::Subscriber { legs, .. } = &mut peer.side else {
                continue;
            };
            let Some(Some(leg)) = legs
                .get_mut(&route.publisher)
                .map(|s| &mut s[kind_index(kind)])
            else {
                continue;
            };
            if !leg.negotiated {
                continue;
            }
            let h = leg.rewriter.rewrite(
                source_ssrc,
                packet.header.sequence_number,
                packet.header.timestamp,
            );
            leg.sent.sent(h.timestamp, packet.payload.len(), now);
            let mut out = packet.clone();
            h.apply_to(&mut out.header);
            send_rtp(now, sub, peer, out, ready, stats);
            legs_sent += 1;
        }
        self.widest_fanout = self.widest_fanout.max(legs_sent);
    }

    /// Answers a subscriber's NACK: the packets it lists, from the source's history, with
    /// the leg's numbers as first sent. Packets no longer kept are skipped; the
    /// subscriber's own recovery (a keyframe request) takes over.
    fn retransmit(&mut self, now: Instant, id: PeerId, media_ssrc: u32, seqs: &[u16]) {
        // Which leg, and the source packets it asks for.
        let mut found = None;
        if let Some(Peer {
            side: Side::Subscriber { legs, .. },
            ..
        }) = self.peers.get(&id).map(|p| &**p)
        {
            found = legs.iter().find_map(|(publisher, slots)| {
                slots.iter().zip(ALL_KINDS).find_map(|(leg, kind)| {
                    leg.as_ref()
                        .filter(|l| l.negotiated && l.rewriter.ssrc() == media_ssrc)
                        .map(|l| (publisher.to_string(), kind, l.rewriter.clone()))
                })
            });
        }
        let Some((publisher, kind, rewriter)) = found else {
            return;
        };
        let Some(pid) = self.attachments.get(&publisher).and_then(|a| a.publish) else {
            return;
        };
        let Some(Peer {
            side: Side::Publisher { tracks, .. },
            ..
        }) = self.peers.get(&pid).map(|p| &**p)
        else {
            return;
        };
        let Some(track) = tracks.values().find(|t| t.kind == kind) else {
            return;
        };
        let packets: Vec<rtc::rtp::Packet> = seqs
            .iter()
            .filter_map(|&seq| {
                let (source, source_seq) = rewriter.source_of(seq)?;
                track.history.get(source, source_seq).cloned()
            })
            .collect();
        let (peers, ready, stats) = (&mut self.peers, &mut self.ready, &mut self.stats);
        let Some(peer) = peers.get_mut(&id) else {
            return;
        };
        let Side::Subscriber { legs, .. } = &mut peer.side else {
            return;
        };
        let Some(Some(leg)) = legs
            .get_mut(publisher.as_str())
            .map(|s| &mut s[kind_index(kind)])
        else {
            return;
        };
        let mut resend = Vec::with_capacity(packets.len());
        for mut out in packets {
            let Some(h) = leg.rewriter.repeat(
                out.header.ssrc,
                out.header.sequence_number,
                out.header.timestamp,
            ) else {
                continue;
            };
            leg.sent.sent(h.timestamp, out.payload.len(), now);
            h.apply_to(&mut out.header);
            resend.push(out);
        }
        for out in resend {
            stats.retransmissions += 1;
            send_rtp(now, id, peer, out, ready, stats);
        }
    }

    /// Writes one RTCP sender report per leg of a subscriber connection that has sent
    /// anything, through `rtc` (SRTCP), and schedules the next.
    fn send_reports(&mut self, now: Instant, id: PeerId) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        peer.next_report = Some(now + REPORT_INTERVAL);
        let Side::Subscriber { legs, .. } = &peer.side else {
            return;
        };
        let ntp_time = ntp_now();
        let mut reports = Vec::new();
        for slots in legs.values() {
            for (leg, kind) in slots.iter().zip(ALL_KINDS) {
                let Some(leg) = leg else { continue };
                let clock_rate = if kind == MediaKind::Audio {
                    48_000
                } else {
                    90_000
                };
                if let Some(rtp_time) = leg.sent.rtp_time_at(now, clock_rate) {
                    let report = SenderReport {
                        ssrc: leg.rewriter.ssrc(),
                        ntp_time,
                        rtp_time,
                        packet_count: leg.sent.packets,
                        octet_count: leg.sent.octets,
                        ..Default::default()
                    };
                    reports.push((leg.sender_id, report));
                }
            }
        }
        for (sender_id, report) in reports {
            if let Some(mut sender) = peer.pc.rtp_sender(sender_id) {
                if let Err(e) = sender.write_rtcp(now, vec![Box::new(report)]) {
                    tracing::debug!(%e, "sender report not sent");
                }
            }
        }
        self.drain_writes(id);
    }

    /// Moves a connection's outbound datagrams into its bounded outbox.
    fn drain_writes(&mut self, id: PeerId) {
        if let Some(peer) = self.peers.get_mut(&id) {
            drain_into_outbox(id, peer, &mut self.ready, &mut self.stats);
        }
    }

    fn drop_subscriber(&mut self, participant: &str, id: PeerId) {
        if let Some(a) = self.attachments.get_mut(participant) {
            if a.subscribe == Some(id) {
                a.subscribe = None;
            }
        }
        self.drop_peer(id);
    }

    /// Tears a connection down and tells its room to have the client start it again.
    fn fail_peer(&mut self, id: PeerId, reason: &str) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        let participant = peer.participant.clone();
        let pc = peer.pc_kind;
        tracing::warn!(participant = %participant, ?pc, reason, "peer connection torn down");
        if let Some(a) = self.attachments.get_mut(&participant) {
            match pc {
                PcKind::Publish if a.publish == Some(id) => a.publish = None,
                PcKind::Subscribe if a.subscribe == Some(id) => a.subscribe = None,
                _ => {}
            }
        }
        self.drop_peer(id);
        self.emit(
            &participant,
            MediaEvent::PeerFailed {
                participant: participant.clone(),
                pc,
                reason: reason.to_string(),
            },
        );
    }

    /// Removes a connection and every route through it, without telling anyone.
    fn drop_peer(&mut self, id: PeerId) {
        if let Some(mut peer) = self.peers.remove(&id) {
            let _ = peer.pc.close();
        }
        self.demux.remove_peer(id);
        for r in self.routes.values_mut() {
            for list in r.subscribers.iter_mut() {
                list.retain(|p| *p != id);
            }
        }
        self.ready.retain(|p| *p != id);
    }
}

/// Moves a connection's outbound datagrams into its bounded outbox; a full outbox drops
/// (and counts) rather than letting one slow subscriber grow memory or hold anyone up.
fn drain_into_outbox(
    id: PeerId,
    peer: &mut Peer,
    ready: &mut VecDeque<PeerId>,
    stats: &mut SfuStats,
) {
    // Every path that feeds a connection (datagram, timeout, forwarded packet, RTCP)
    // ends here, so this is where its deadline may have moved.
    peer.timer_stale = true;
    while let Some(mut msg) = peer.pc.poll_write() {
        let routed = peer
            .path
            .outbound(msg.now, msg.transport.peer_addr, &msg.message);
        msg.transport.peer_addr = routed.to;
        if let Some(moved) = routed.moved {
            stats.path_moves += 1;
            peer.direct.follow(moved.to);
            tracing::info!(
                participant = %peer.participant,
                pc = ?peer.pc_kind,
                to = %moved.to,
                by = if moved.nominated { "nomination" } else { "silence" },
                "the client's address moved; media follows"
            );
        }
        let transmit = Transmit::wire(msg.transport.peer_addr, msg.message);
        enqueue(id, peer, transmit, ready, stats);
    }
}

/// Queues one datagram in a connection's bounded outbox (or drops and counts it), and
/// marks the connection ready when its outbox stops being empty.
fn enqueue(
    id: PeerId,
    peer: &mut Peer,
    transmit: Transmit,
    ready: &mut VecDeque<PeerId>,
    stats: &mut SfuStats,
) {
    if peer.outbox.len() >= OUTBOX_LIMIT {
        stats.outbox_drops += 1;
        return;
    }
    if peer.outbox.is_empty() {
        ready.push_back(id);
    }
    peer.outbox.push_back(transmit);
}

/// Sends one rewritten RTP packet on a subscriber connection: once the connection's keys
/// are proven, queued for the sending thread to encrypt ([`super::outbound`]); until then
/// through `rtc` (whose output for the first packets is the proof, see
/// [`DirectSrtp::probe`]).
fn send_rtp(
    now: Instant,
    id: PeerId,
    peer: &mut Peer,
    out: rtc::rtp::Packet,
    ready: &mut VecDeque<PeerId>,
    stats: &mut SfuStats,
) {
    if peer.direct.is_ready() {
        if let Some(transmit) = peer.direct.defer(out) {
            stats.forwarded += 1;
            stats.direct += 1;
            enqueue(id, peer, transmit, ready, stats);
        }
        return;
    }
    let probe = peer.direct.is_probing().then(|| out.clone());
    // Straight into the connection: SSRC, payload type and (absent) extensions are
    // already what this leg negotiated, which is all `RTCRtpSender::write_rtp` checks,
    // and it would allocate the track id per packet (`rtc` ignores it here).
    let written = peer.pc.handle_write(TaggedRTCMessage {
        now,
        message: RTCMessage::RtpPacket(String::new(), out),
    });
    match written {
        Ok(()) => stats.forwarded += 1,
        Err(e) => tracing::trace!(%e, "forward write failed"),
    }
    let before = peer.outbox.len();
    drain_into_outbox(id, peer, ready, stats);
    if let Some(packet) = probe {
        let header = &packet.header;
        let sent = peer.outbox.iter().skip(before).find_map(|t| {
            let wire = t.wire_bytes()?;
            carries(wire, header.ssrc, header.sequence_number).then(|| (wire.to_vec(), t.to))
        });
        if let Some((wire, to)) = sent {
            peer.direct.probe(&packet, &wire, to);
        }
    }
}

/// Whether `datagram` is the SRTP packet of stream `ssrc` with sequence number `seq`
/// (the RTP header is sent in the clear).
fn carries(datagram: &[u8], ssrc: u32, seq: u16) -> bool {
    datagram.len() >= 12
        && direct_srtp::is_rtp_or_rtcp(datagram)
        && datagram[2..4] == seq.to_be_bytes()
        && datagram[8..12] == ssrc.to_be_bytes()
}

/// The wall clock as a 64-bit NTP timestamp (RFC 3550 §4).
fn ntp_now() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since.as_secs() + NTP_UNIX_OFFSET;
    let fraction = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    (seconds << 32) | fraction
}

/// The `a=mid` of the transceiver that owns `receiver_id`.
fn receiver_mid(pc: &mut RTCPeerConnection, receiver_id: RTCRtpReceiverId) -> Option<String> {
    let ids: Vec<_> = pc.get_transceivers().collect();
    ids.into_iter().find_map(|t| {
        let transceiver = pc.rtp_transceiver(t)?;
        (transceiver.receiver() == Some(receiver_id))
            .then(|| transceiver.mid().clone())
            .flatten()
    })
}

/// Picks the payload type negotiated for `mime` on a sender, preferring an exact fmtp
/// match (H.264 profiles differ only there).
fn pick_payload_type(
    codecs: &[rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters],
    mime: &str,
    fmtp: &str,
) -> Option<u8> {
    let same_mime = |c: &&rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters| {
        c.rtp_codec.mime_type.eq_ignore_ascii_case(mime)
    };
    codecs
        .iter()
        .filter(same_mime)
        .find(|c| c.rtp_codec.sdp_fmtp_line == fmtp)
        .or_else(|| codecs.iter().find(same_mime))
        .map(|c| c.payload_type)
}

/// Lists which publisher and kind each active media section of our subscribe offer
/// carries, read from `a=mid` and `a=msid` (stream id = publisher participant id).
pub fn describe_tracks(sdp: &str) -> Vec<TrackDescription> {
    let mut out = Vec::new();
    let mut kind: Option<MediaKind> = None;
    let mut mid: Option<String> = None;
    let mut stream: Option<String> = None;
    let mut flush =
        |kind: &mut Option<MediaKind>, mid: &mut Option<String>, stream: &mut Option<String>| {
            if let (Some(k), Some(m), Some(s)) = (kind.take(), mid.take(), stream.take()) {
                out.push(TrackDescription {
                    mid: m,
                    participant_id: s,
                    kind: k,
                });
            }
            *kind = None;
            *mid = None;
            *stream = None;
        };
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("m=") {
            flush(&mut kind, &mut mid, &mut stream);
            kind = if rest.starts_with("audio") {
                Some(MediaKind::Audio)
            } else if rest.starts_with("video") {
                Some(MediaKind::Video)
            } else {
                None
            };
        } else if let Some(m) = line.strip_prefix("a=mid:") {
            mid = Some(m.to_string());
        } else if let Some(m) = line.strip_prefix("a=msid:") {
            let mut parts = m.split_whitespace();
            stream = parts.next().map(str::to_string);
            // Our sender track ids are `<publisher>-<kind>-<n>`; a screen is a video section.
            if parts.next().is_some_and(|t| t.contains("-screen-")) {
                kind = Some(MediaKind::Screen);
            }
        }
    }
    flush(&mut kind, &mut mid, &mut stream);
    out
}

/// A random alphanumeric string (ICE credentials).
fn random_token(len: usize) -> String {
    use rand::distributions::Alphanumeric;
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_tracks_from_offer() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=msid:pabc pabc-audio-1\r\na=sendonly\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=msid:pabc pabc-video-2\r\na=sendonly\r\n\
m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=inactive\r\n";
        let t = describe_tracks(sdp);
        assert_eq!(
            t,
            vec![
                TrackDescription {
                    mid: "0".into(),
                    participant_id: "pabc".into(),
                    kind: MediaKind::Audio
                },
                TrackDescription {
                    mid: "1".into(),
                    participant_id: "pabc".into(),
                    kind: MediaKind::Video
                },
            ]
        );
    }
}
