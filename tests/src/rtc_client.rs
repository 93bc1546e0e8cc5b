//! A conference participant built on the async `webrtc` crate: the same two-connection
//! dance a browser does, with synthetic media whose every byte can be checked on arrival.
//!
//! - **publish** connection: we offer two sendonly tracks (Opus, VP8) and write synthetic RTP
//!   from [`crate::synthetic`] once the connection is up; keyframe requests (PLI/FIR) the server
//!   sends about them are recorded and answered with a keyframe on the next video packet;
//! - **subscribe** connection: we answer every `subscribe_offer` (renegotiations included) and
//!   record each received RTP payload under (publisher participant id, kind), the publisher
//!   being the track's SDP stream id, cross-checked against the offer's `tracks` map.
//!
//! Everything observed lands in [`Observed`], which tests read or wait on with a deadline.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{
    MediaEngine, MIME_TYPE_OPUS, MIME_TYPE_VP8,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use wardlink_signaling::protocol::{
    ClientMessage, IceCandidate, RosterEntry, ServerMessage, TrackDescription, WaitingEntry,
};
use wardlink_signaling::{ErrorCode, MediaKind, PcKind};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceGatheringState, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCSessionDescription, SettingEngineBuilder,
};

use crate::signal_client::{
    joined_from, random_device, Inbound, JoinOutcome, Joined, SignalClient, SignalSender,
    WaitingInfo, DEFAULT_WAIT,
};
use crate::synthetic::{build_payload, parse_marker, Marker};
use crate::tls::TlsTrust;

/// Payload type we register for Opus (the server's answer decides what is actually used).
const OPUS_PT: u8 = 111;
/// Payload type we register for VP8.
const VP8_PT: u8 = 96;

/// How a participant behaves.
#[derive(Debug, Clone)]
pub struct ParticipantOptions {
    /// Tag written into every payload we publish (identifies us independently of the server).
    pub tag: String,
    /// Whether to open the publish connection and send media.
    pub publish: bool,
    /// Opus packet interval.
    pub audio_interval: Duration,
    /// VP8 frame interval (one packet per frame).
    pub video_interval: Duration,
    /// A periodic keyframe every this many video frames (0: only the first frame and frames
    /// answering a keyframe request).
    pub keyframe_every: u32,
    /// Audio payload length in bytes.
    pub audio_len: usize,
    /// Video payload length in bytes (delta frames; keyframes get a little more).
    pub video_len: usize,
    /// Local address for our UDP sockets (concrete, never a wildcard).
    pub bind_ip: IpAddr,
    /// Trickle our ICE candidates with `ice_candidate` (as browsers do), including the
    /// end-of-candidates marker. Off: candidates only travel inside the SDP.
    pub trickle: bool,
    /// Device secret sent with `join` (a browser keeps one per profile).
    pub device: Option<String>,
    /// Display name override sent with `join`.
    pub display_name: Option<String>,
}

impl ParticipantOptions {
    /// Publishing participant with browser-like pacing (50 audio packets/s, 30 frames/s).
    pub fn publisher(tag: &str) -> Self {
        ParticipantOptions {
            tag: tag.to_owned(),
            publish: true,
            audio_interval: Duration::from_millis(20),
            video_interval: Duration::from_millis(33),
            keyframe_every: 90,
            audio_len: 120,
            video_len: 900,
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            trickle: true,
            device: Some(random_device()),
            display_name: None,
        }
    }
}

/// One received RTP packet.
#[derive(Debug, Clone)]
pub struct ReceivedPacket {
    /// When it was handed to us.
    pub at: Instant,
    /// RTP SSRC as received.
    pub ssrc: u32,
    /// RTP sequence number as received.
    pub rtp_seq: u16,
    /// RTP payload type as received.
    pub payload_type: u8,
    /// The payload bytes.
    pub payload: Bytes,
}

/// A keyframe request the server sent about one of our published tracks.
#[derive(Debug, Clone)]
pub struct KeyframeRequest {
    /// When it reached us.
    pub at: Instant,
    /// Which of our tracks it concerned.
    pub kind: MediaKind,
    /// FIR (true) or PLI (false).
    pub fir: bool,
    /// Publish connection generation it arrived on.
    pub generation: u64,
}

/// A server `error` message we received.
#[derive(Debug, Clone)]
pub struct ServerError {
    /// Stable code.
    pub code: ErrorCode,
    /// Text.
    pub message: String,
    /// Whether the server closes after it.
    pub fatal: bool,
}

/// One `subscribe_offer` and what became of it.
#[derive(Debug, Clone)]
pub struct SubscribeOfferRecord {
    /// Offer revision.
    pub revision: u32,
    /// Tracks map from the offer.
    pub tracks: Vec<TrackDescription>,
    /// When the offer arrived.
    pub received_at: Instant,
    /// When our answer went out (None: we failed to answer, see `failures`).
    pub answered_at: Option<Instant>,
}

/// Everything a participant has observed so far.
#[derive(Debug, Default)]
pub struct Observed {
    /// The `joined` message, once admitted.
    pub joined: Option<Joined>,
    /// The `waiting` message, if we were put in the waiting room.
    pub waiting: Option<WaitingInfo>,
    /// Latest waiting-room list (sent to those who may admit).
    pub lobby: Vec<WaitingEntry>,
    /// `muted_by` notices: (kind, by whom).
    pub muted_by: Vec<(MediaKind, String)>,
    /// Received RTP per (publisher participant id, kind), in arrival order.
    pub received: HashMap<(String, MediaKind), Vec<ReceivedPacket>>,
    /// Keyframe requests received on our publish senders.
    pub keyframe_requests: Vec<KeyframeRequest>,
    /// Server `error` messages.
    pub errors: Vec<ServerError>,
    /// Latest roster.
    pub roster: Vec<RosterEntry>,
    /// Every subscribe offer, in order.
    pub subscribe_offers: Vec<SubscribeOfferRecord>,
    /// Number of `publish_answer`s applied.
    pub publish_answers: u32,
    /// Latest publish connection state.
    pub publish_state: Option<RTCPeerConnectionState>,
    /// When the publish connection (latest generation) reached `connected`.
    pub publish_connected_at: Option<Instant>,
    /// Latest subscribe connection state.
    pub subscribe_state: Option<RTCPeerConnectionState>,
    /// When the subscribe connection (latest generation) reached `connected`.
    pub subscribe_connected_at: Option<Instant>,
    /// `reconnect` instructions received.
    pub reconnects: Vec<PcKind>,
    /// `bye` reason, once received.
    pub bye: Option<String>,
    /// Set when the signaling socket closed (with how).
    pub signal_closed: Option<String>,
    /// Server behaviour that contradicts the protocol (e.g. stream id vs tracks map).
    pub violations: Vec<String>,
    /// Things that failed on our side (SDP rejected, write errors...).
    pub failures: Vec<String>,
    /// Timeline of notable events, for failure diagnostics (bounded).
    pub events: VecDeque<(Instant, String)>,
}

impl Observed {
    fn event(&mut self, text: String) {
        if self.events.len() >= 200 {
            self.events.pop_front();
        }
        self.events.push_back((Instant::now(), text));
    }

    /// Packets received from `publisher` of `kind`.
    pub fn received_from(&self, publisher: &str, kind: MediaKind) -> &[ReceivedPacket] {
        self.received
            .get(&(publisher.to_owned(), kind))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Count of packets received from `publisher` of `kind`.
    pub fn count_from(&self, publisher: &str, kind: MediaKind) -> usize {
        self.received_from(publisher, kind).len()
    }

    /// Highest synthetic marker seq received from `publisher` (payloads tagged `tag`).
    pub fn max_seq(&self, publisher: &str, tag: &str, kind: MediaKind) -> Option<u32> {
        self.received_from(publisher, kind)
            .iter()
            .rev()
            .take(64)
            .filter_map(|p| parse_marker(&p.payload))
            .filter(|m| m.tag == tag)
            .map(|m| m.seq)
            .max()
    }

    /// Total received packets.
    pub fn total_received(&self) -> usize {
        self.received.values().map(Vec::len).sum()
    }

    /// A compact multi-line summary for assertion messages.
    pub fn summary(&self) -> String {
        let mut keys: Vec<_> = self.received.keys().collect();
        keys.sort_by(|a, b| (&a.0, kind_name(a.1)).cmp(&(&b.0, kind_name(b.1))));
        let mut s = String::new();
        for key in keys {
            s += &format!(
                "  received {} {}: {}\n",
                key.0,
                kind_name(key.1),
                self.received[key].len()
            );
        }
        s += &format!(
            "  publish={:?} subscribe={:?} publish_answers={} subscribe_offers={:?}\n",
            self.publish_state,
            self.subscribe_state,
            self.publish_answers,
            self.subscribe_offers
                .iter()
                .map(|o| (o.revision, o.tracks.len(), o.answered_at.is_some()))
                .collect::<Vec<_>>()
        );
        s += &format!(
            "  keyframe_requests={} errors={:?}\n  violations={:?}\n  failures={:?}\n  reconnects={:?} bye={:?} signal_closed={:?}\n",
            self.keyframe_requests.len(),
            self.errors,
            self.violations,
            self.failures,
            self.reconnects,
            self.bye,
            self.signal_closed
        );
        let start = self.events.front().map(|e| e.0);
        for (at, text) in self.events.iter().rev().take(25).rev() {
            let t = start.map(|s| at.duration_since(s).as_millis()).unwrap_or(0);
            s += &format!("    +{t}ms {text}\n");
        }
        s
    }
}

/// Lower-case name of a media kind.
pub fn kind_name(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Audio => "audio",
        MediaKind::Video => "video",
        MediaKind::Screen => "screen",
    }
}

/// Payloads we sent, indexed by marker sequence number (None: that write failed).
#[derive(Debug, Default, Clone)]
pub struct SentLog {
    /// Audio payloads by seq.
    pub audio: Vec<Option<Bytes>>,
    /// Video payloads by seq.
    pub video: Vec<Option<Bytes>>,
    /// Screen payloads by seq (this client never shares a screen, so always empty).
    pub screen: Vec<Option<Bytes>>,
    /// Seqs of video payloads sent as keyframes, with when.
    pub keyframes: Vec<(u32, Instant)>,
}

impl SentLog {
    /// Payloads of one kind.
    pub fn of(&self, kind: MediaKind) -> &[Option<Bytes>] {
        match kind {
            MediaKind::Audio => &self.audio,
            MediaKind::Video => &self.video,
            MediaKind::Screen => &self.screen,
        }
    }

    fn of_mut(&mut self, kind: MediaKind) -> &mut Vec<Option<Bytes>> {
        match kind {
            MediaKind::Audio => &mut self.audio,
            MediaKind::Video => &mut self.video,
            MediaKind::Screen => &mut self.screen,
        }
    }

    /// Number of payloads of `kind` successfully handed to the transport.
    pub fn count(&self, kind: MediaKind) -> usize {
        self.of(kind).iter().filter(|p| p.is_some()).count()
    }

    /// Highest seq allocated for `kind` plus one (the next seq).
    pub fn next_seq(&self, kind: MediaKind) -> u32 {
        self.of(kind).len() as u32
    }
}

/// State shared between the control task, PC callbacks, media writers and the test.
struct Shared {
    opts: ParticipantOptions,
    observed: watch::Sender<Observed>,
    sent: Mutex<SentLog>,
    sending: AtomicBool,
    force_keyframe: AtomicBool,
}

impl Shared {
    fn modify(&self, f: impl FnOnce(&mut Observed)) {
        self.observed.send_modify(f);
    }

    fn event(&self, text: impl Into<String>) {
        let text = text.into();
        tracing::debug!(tag = %self.opts.tag, "{text}");
        self.modify(|o| o.event(text));
    }

    fn failure(&self, text: impl Into<String>) {
        let text = text.into();
        tracing::warn!(tag = %self.opts.tag, "{text}");
        self.modify(|o| {
            o.event(format!("FAILURE {text}"));
            o.failures.push(text);
        });
    }

    /// Allocates the next marker seq for `kind` and decides whether it is a keyframe.
    fn allocate(&self, kind: MediaKind, generation_first: bool) -> (u32, bool) {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        let list = sent.of_mut(kind);
        let seq = list.len() as u32;
        list.push(None);
        let keyframe = kind == MediaKind::Video && {
            let forced = self.force_keyframe.swap(false, Ordering::AcqRel);
            let last_key = sent.keyframes.last().map(|k| k.0);
            let periodic = self.opts.keyframe_every > 0
                && last_key.is_none_or(|k| seq - k >= self.opts.keyframe_every);
            forced || periodic || generation_first
        };
        (seq, keyframe)
    }

    fn record_sent(&self, kind: MediaKind, seq: u32, payload: Option<Bytes>, keyframe: bool) {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        let list = sent.of_mut(kind);
        if let Some(slot) = list.get_mut(seq as usize) {
            *slot = payload;
        }
        if keyframe {
            sent.keyframes.push((seq, Instant::now()));
        }
    }
}

/// Events from peer-connection callbacks to the control task.
enum PcEvent {
    Candidate {
        pc: PcKind,
        generation: u64,
        candidate: Option<RTCIceCandidateInit>,
    },
    State {
        pc: PcKind,
        generation: u64,
        state: RTCPeerConnectionState,
    },
    Track {
        generation: u64,
        track_id: String,
        stream_id: String,
    },
}

/// Commands from the test to the control task.
enum Command {
    Leave,
    Send(ClientMessage),
    Shutdown(oneshot::Sender<()>),
}

/// Callback sink for one peer connection.
struct PcHandler {
    pc: PcKind,
    generation: u64,
    events: mpsc::UnboundedSender<PcEvent>,
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for PcHandler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => {
                let _ = self.events.send(PcEvent::Candidate {
                    pc: self.pc,
                    generation: self.generation,
                    candidate: Some(init),
                });
            }
            Err(err) => self
                .shared
                .failure(format!("{:?}: candidate to_json: {err}", self.pc)),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.events.send(PcEvent::Candidate {
                pc: self.pc,
                generation: self.generation,
                candidate: None,
            });
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.events.send(PcEvent::State {
            pc: self.pc,
            generation: self.generation,
            state,
        });
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let shared = self.shared.clone();
        let events = self.events.clone();
        let generation = self.generation;
        // Poll on a task of its own, promptly: the driver's queue to this track holds 256
        // events and drops the rest.
        tokio::spawn(async move {
            let stream_id = track.stream_id().await;
            let track_id = track.track_id().await;
            let kind = match track.kind().await {
                RtpCodecKind::Audio => MediaKind::Audio,
                _ => MediaKind::Video,
            };
            shared.event(format!(
                "subscribe: on_track stream={stream_id} track={track_id} kind={}",
                kind_name(kind)
            ));
            let _ = events.send(PcEvent::Track {
                generation,
                track_id: track_id.clone(),
                stream_id: stream_id.clone(),
            });
            let key = (stream_id.clone(), kind);
            while let Some(event) = track.poll().await {
                match event {
                    TrackRemoteEvent::OnRtpPacket(pkt) => {
                        let rec = ReceivedPacket {
                            at: Instant::now(),
                            ssrc: pkt.header.ssrc,
                            rtp_seq: pkt.header.sequence_number,
                            payload_type: pkt.header.payload_type,
                            payload: pkt.payload.clone(),
                        };
                        shared.modify(|o| o.received.entry(key.clone()).or_default().push(rec));
                    }
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
            shared.event(format!(
                "subscribe: track ended stream={stream_id} track={track_id}"
            ));
        });
    }
}

/// Marks inbound keyframe requests (PLI, FIR) for delivery to the application: inbound RTCP
/// otherwise stops at the end of the interceptor chain and the test could not see it.
struct KeyframeRequestTap {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| is_keyframe_request(p.as_ref()))
                .cloned()
                .collect();
            if requests.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
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
}

impl Interceptor for KeyframeRequestTap {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

fn vp8_codec() -> RTCRtpCodec {
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![
            fb("goog-remb", ""),
            fb("ccm", "fir"),
            fb("nack", ""),
            fb("nack", "pli"),
        ],
    }
}

/// Builds one peer connection: Opus + VP8 only, default interceptors plus the keyframe-request
/// tap, mDNS off, one UDP socket on `bind_ip`.
async fn build_pc(
    bind_ip: IpAddr,
    handler: Arc<PcHandler>,
) -> anyhow::Result<Arc<dyn PeerConnection>> {
    let mut media_engine = MediaEngine::default();
    media_engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus_codec(),
            payload_type: OPUS_PT,
        },
        RtpCodecKind::Audio,
    )?;
    media_engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: vp8_codec(),
            payload_type: VP8_PT,
        },
        RtpCodecKind::Video,
    )?;
    let registry = register_default_interceptors(Registry::new(), &mut media_engine)?;
    let registry = registry.with(
        Slot::from(14_000),
        KeyframeRequestTap {
            read: VecDeque::new(),
            write: VecDeque::new(),
        },
    );
    let setting_engine = SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .with_setting_engine(setting_engine)
        .with_handler(handler)
        .with_udp_addrs(vec![std::net::SocketAddr::new(bind_ip, 0)])
        .build()
        .await?;
    Ok(Arc::new(pc))
}

fn first_mid(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=mid:").map(str::to_owned))
}

/// The publish connection of one generation.
struct PublishPc {
    pc: Arc<dyn PeerConnection>,
    generation: u64,
    audio: Arc<TrackLocalStaticRTP>,
    video: Arc<TrackLocalStaticRTP>,
    audio_ssrc: u32,
    video_ssrc: u32,
    sdp_sent: bool,
    mid: String,
    queued: Vec<IceCandidate>,
    tasks: Vec<JoinHandle<()>>,
    media_started: bool,
}

/// The subscribe connection of one generation.
struct SubscribePc {
    pc: Arc<dyn PeerConnection>,
    generation: u64,
    answered: bool,
    mid: String,
    queued: Vec<IceCandidate>,
    tracks_by_mid: HashMap<String, TrackDescription>,
}

struct Control {
    shared: Arc<Shared>,
    signal: SignalSender,
    inbox: mpsc::UnboundedReceiver<Inbound>,
    commands: mpsc::UnboundedReceiver<Command>,
    pc_events_tx: mpsc::UnboundedSender<PcEvent>,
    pc_events: mpsc::UnboundedReceiver<PcEvent>,
    publish: Option<PublishPc>,
    subscribe: Option<SubscribePc>,
    generation: u64,
    signal_open: bool,
    admitted: bool,
    id: String,
}

impl Control {
    async fn run(mut self) {
        if self.admitted {
            self.on_admitted().await;
        }
        loop {
            tokio::select! {
                item = self.inbox.recv(), if self.signal_open => {
                    let item = item.unwrap_or(Inbound::Closed(None));
                    self.on_inbound(item).await;
                }
                Some(event) = self.pc_events.recv() => self.on_pc_event(event).await,
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Leave) => {
                        if let Err(err) = self.signal.send(&ClientMessage::Leave) {
                            self.shared.failure(format!("leave: {err}"));
                        }
                    }
                    Some(Command::Send(msg)) => {
                        if let Err(err) = self.signal.send(&msg) {
                            self.shared.failure(format!("send: {err}"));
                        }
                    }
                    Some(Command::Shutdown(done)) => {
                        self.teardown_publish().await;
                        self.teardown_subscribe().await;
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        self.teardown_publish().await;
                        self.teardown_subscribe().await;
                        return;
                    }
                },
            }
        }
    }

    /// In the conference: start publishing (if we publish at all).
    async fn on_admitted(&mut self) {
        if self.shared.opts.publish {
            if let Err(err) = self.start_publish().await {
                self.shared
                    .failure(format!("publish: start failed: {err:#}"));
            }
        }
    }

    fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    async fn start_publish(&mut self) -> anyhow::Result<()> {
        let generation = self.next_generation();
        let handler = Arc::new(PcHandler {
            pc: PcKind::Publish,
            generation,
            events: self.pc_events_tx.clone(),
            shared: self.shared.clone(),
        });
        let pc = build_pc(self.shared.opts.bind_ip, handler).await?;
        let stream_id = format!("{}-stream", self.shared.opts.tag);
        let make_track = |kind: RtpCodecKind, codec: RTCRtpCodec, ssrc: u32, label: &str| {
            Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                stream_id.clone(),
                format!("{}-{label}-{generation}", self.shared.opts.tag),
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
            )))
        };
        let audio_ssrc = rand::random::<u32>() | 1;
        let video_ssrc = rand::random::<u32>() | 2;
        let audio = make_track(RtpCodecKind::Audio, opus_codec(), audio_ssrc, "audio");
        let video = make_track(RtpCodecKind::Video, vp8_codec(), video_ssrc, "video");
        for track in [&audio, &video] {
            pc.add_transceiver_from_track(
                track.clone() as Arc<dyn TrackLocal>,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec![stream_id.clone()],
                    send_encodings: vec![],
                }),
            )
            .await
            .context("add_transceiver_from_track")?;
        }
        let offer = pc.create_offer(None).await.context("create_offer")?;
        pc.set_local_description(offer.clone())
            .await
            .context("set_local_description(offer)")?;
        let mid = first_mid(&offer.sdp).unwrap_or_else(|| "0".to_owned());
        self.publish = Some(PublishPc {
            pc,
            generation,
            audio,
            video,
            audio_ssrc,
            video_ssrc,
            sdp_sent: false,
            mid,
            queued: Vec::new(),
            tasks: Vec::new(),
            media_started: false,
        });
        self.signal.send(&ClientMessage::PublishOffer {
            sdp: offer.sdp,
            screen_mid: None,
        })?;
        self.shared
            .event(format!("publish: offer sent (gen {generation})"));
        if let Some(p) = self.publish.as_mut() {
            p.sdp_sent = true;
            for candidate in std::mem::take(&mut p.queued) {
                self.signal.send(&ClientMessage::IceCandidate {
                    pc: PcKind::Publish,
                    candidate,
                })?;
            }
        }
        Ok(())
    }

    async fn teardown_publish(&mut self) {
        if let Some(p) = self.publish.take() {
            for task in &p.tasks {
                task.abort();
            }
            if let Err(err) = p.pc.close().await {
                self.shared.event(format!("publish: close: {err}"));
            }
        }
    }

    async fn teardown_subscribe(&mut self) {
        if let Some(s) = self.subscribe.take() {
            if let Err(err) = s.pc.close().await {
                self.shared.event(format!("subscribe: close: {err}"));
            }
        }
    }

    async fn on_inbound(&mut self, item: Inbound) {
        match item {
            Inbound::Message(msg) => self.on_message(msg).await,
            Inbound::Unparseable(text) => self.shared.modify(|o| {
                o.violations.push(format!(
                    "unparseable server message: {}",
                    text.chars().take(200).collect::<String>()
                ))
            }),
            Inbound::Binary(data) => self.shared.modify(|o| {
                o.violations
                    .push(format!("binary frame from server ({} bytes)", data.len()))
            }),
            Inbound::Closed(close) => {
                self.signal_open = false;
                self.shared.modify(|o| {
                    o.event(format!("signal closed {close:?}"));
                    o.signal_closed = Some(format!("{close:?}"));
                });
            }
            Inbound::TransportError(err) => {
                self.signal_open = false;
                self.shared.modify(|o| {
                    o.event(format!("signal transport error {err}"));
                    o.signal_closed = Some(format!("transport error: {err}"));
                });
            }
        }
    }

    async fn on_message(&mut self, msg: ServerMessage) {
        match msg {
            ServerMessage::PublishAnswer { sdp } => {
                let Some(p) = self.publish.as_ref() else {
                    self.shared.modify(|o| {
                        o.violations
                            .push("publish_answer with no publish PC".into())
                    });
                    return;
                };
                let result = async {
                    let answer = RTCSessionDescription::answer(sdp)?;
                    p.pc.set_remote_description(answer).await?;
                    anyhow::Ok(())
                }
                .await;
                match result {
                    Ok(()) => self.shared.modify(|o| {
                        o.publish_answers += 1;
                        o.event("publish: answer applied".into());
                    }),
                    Err(err) => self
                        .shared
                        .failure(format!("publish: applying answer failed: {err:#}")),
                }
            }
            ServerMessage::SubscribeOffer {
                sdp,
                revision,
                tracks,
            } => {
                let index = {
                    let mut idx = 0;
                    self.shared.modify(|o| {
                        o.subscribe_offers.push(SubscribeOfferRecord {
                            revision,
                            tracks: tracks.clone(),
                            received_at: Instant::now(),
                            answered_at: None,
                        });
                        idx = o.subscribe_offers.len() - 1;
                        o.event(format!(
                            "subscribe: offer rev {revision} with {} tracks",
                            tracks.len()
                        ));
                    });
                    idx
                };
                match self.answer_subscribe(sdp, revision, tracks).await {
                    Ok(()) => self.shared.modify(|o| {
                        o.subscribe_offers[index].answered_at = Some(Instant::now());
                    }),
                    Err(err) => self.shared.failure(format!(
                        "subscribe: answering rev {revision} failed: {err:#}"
                    )),
                }
            }
            ServerMessage::IceCandidate { pc, candidate } => {
                if candidate.candidate.is_empty() {
                    return;
                }
                let target = match pc {
                    PcKind::Publish => self.publish.as_ref().map(|p| p.pc.clone()),
                    PcKind::Subscribe => self.subscribe.as_ref().map(|s| s.pc.clone()),
                };
                let Some(target) = target else {
                    self.shared
                        .event(format!("{pc:?}: candidate for absent PC ignored"));
                    return;
                };
                let init = RTCIceCandidateInit {
                    candidate: candidate.candidate,
                    sdp_mid: candidate.sdp_mid,
                    sdp_mline_index: candidate.sdp_m_line_index,
                    username_fragment: candidate.username_fragment,
                    url: None,
                };
                if let Err(err) = target.add_ice_candidate(init).await {
                    self.shared
                        .failure(format!("{pc:?}: add_ice_candidate failed: {err}"));
                }
            }
            ServerMessage::Reconnect { pc, reason } => {
                self.shared.modify(|o| {
                    o.reconnects.push(pc);
                    o.event(format!("reconnect {pc:?}: {reason}"));
                });
                match pc {
                    PcKind::Publish => {
                        self.teardown_publish().await;
                        if let Err(err) = self.start_publish().await {
                            self.shared
                                .failure(format!("publish: restart failed: {err:#}"));
                        }
                    }
                    PcKind::Subscribe => self.teardown_subscribe().await,
                }
            }
            ServerMessage::Roster { participants } => self.shared.modify(|o| {
                o.event(format!(
                    "roster: {:?}",
                    participants.iter().map(|p| &p.id).collect::<Vec<_>>()
                ));
                o.roster = participants.to_vec();
            }),
            ServerMessage::Error {
                code,
                message,
                fatal,
            } => self.shared.modify(|o| {
                o.event(format!("error {code}: {message} (fatal={fatal})"));
                o.errors.push(ServerError {
                    code,
                    message,
                    fatal,
                });
            }),
            ServerMessage::Bye { reason } => self.shared.modify(|o| {
                o.event(format!("bye: {reason}"));
                o.bye = Some(reason);
            }),
            ServerMessage::Pong => {}
            ServerMessage::Joined { .. } => {
                let Some(joined) = joined_from(&msg) else {
                    return;
                };
                if self.admitted {
                    self.shared
                        .modify(|o| o.violations.push("second joined message".into()));
                    return;
                }
                if joined.participant_id != self.id {
                    let text = format!(
                        "joined as {} after waiting as {}",
                        joined.participant_id, self.id
                    );
                    self.shared.modify(|o| o.violations.push(text));
                }
                self.admitted = true;
                self.shared.modify(|o| {
                    o.event("admitted: joined".into());
                    o.roster = joined.roster.clone();
                    o.joined = Some(joined);
                });
                self.on_admitted().await;
            }
            ServerMessage::Waiting {
                participant_id,
                room_title,
                display_name,
                role,
            } => self.shared.modify(|o| {
                o.event(format!("waiting as {participant_id}"));
                o.waiting = Some(WaitingInfo {
                    participant_id,
                    room_title,
                    display_name,
                    role,
                });
            }),
            ServerMessage::Lobby { waiting } => self.shared.modify(|o| {
                o.event(format!(
                    "lobby: {:?}",
                    waiting.iter().map(|w| &w.id).collect::<Vec<_>>()
                ));
                o.lobby = waiting;
            }),
            ServerMessage::MutedBy { kind, by } => self.shared.modify(|o| {
                o.event(format!("muted_by {by}: {}", kind_name(kind)));
                o.muted_by.push((kind, by));
            }),
        }
    }

    async fn answer_subscribe(
        &mut self,
        sdp: String,
        revision: u32,
        tracks: Vec<TrackDescription>,
    ) -> anyhow::Result<()> {
        if self.subscribe.is_none() {
            let generation = self.next_generation();
            let handler = Arc::new(PcHandler {
                pc: PcKind::Subscribe,
                generation,
                events: self.pc_events_tx.clone(),
                shared: self.shared.clone(),
            });
            let pc = build_pc(self.shared.opts.bind_ip, handler).await?;
            self.subscribe = Some(SubscribePc {
                pc,
                generation,
                answered: false,
                mid: "0".to_owned(),
                queued: Vec::new(),
                tracks_by_mid: HashMap::new(),
            });
        }
        let Some(s) = self.subscribe.as_mut() else {
            bail!("subscribe PC vanished");
        };
        for t in &tracks {
            s.tracks_by_mid.insert(t.mid.clone(), t.clone());
        }
        let offer = RTCSessionDescription::offer(sdp).context("parsing offer")?;
        s.pc.set_remote_description(offer)
            .await
            .context("set_remote_description(offer)")?;
        let answer = s.pc.create_answer(None).await.context("create_answer")?;
        s.pc.set_local_description(answer.clone())
            .await
            .context("set_local_description(answer)")?;
        if let Some(mid) = first_mid(&answer.sdp) {
            s.mid = mid;
        }
        self.signal.send(&ClientMessage::SubscribeAnswer {
            sdp: answer.sdp,
            revision,
        })?;
        s.answered = true;
        for candidate in std::mem::take(&mut s.queued) {
            self.signal.send(&ClientMessage::IceCandidate {
                pc: PcKind::Subscribe,
                candidate,
            })?;
        }
        Ok(())
    }

    async fn on_pc_event(&mut self, event: PcEvent) {
        match event {
            PcEvent::Candidate {
                pc,
                generation,
                candidate,
            } => {
                if !self.shared.opts.trickle {
                    return;
                }
                let (current, sent, mid, queue) = match pc {
                    PcKind::Publish => match self.publish.as_mut() {
                        Some(p) => (p.generation, p.sdp_sent, p.mid.clone(), &mut p.queued),
                        None => return,
                    },
                    PcKind::Subscribe => match self.subscribe.as_mut() {
                        Some(s) => (s.generation, s.answered, s.mid.clone(), &mut s.queued),
                        None => return,
                    },
                };
                if current != generation {
                    return;
                }
                let candidate = match candidate {
                    Some(init) => IceCandidate {
                        candidate: init.candidate,
                        sdp_mid: Some(mid),
                        sdp_m_line_index: Some(0),
                        username_fragment: init.username_fragment,
                    },
                    None => IceCandidate {
                        candidate: String::new(),
                        sdp_mid: Some(mid),
                        sdp_m_line_index: Some(0),
                        username_fragment: None,
                    },
                };
                if sent {
                    if let Err(err) = self
                        .signal
                        .send(&ClientMessage::IceCandidate { pc, candidate })
                    {
                        self.shared.event(format!("{pc:?}: trickle failed: {err}"));
                    }
                } else {
                    queue.push(candidate);
                }
            }
            PcEvent::State {
                pc,
                generation,
                state,
            } => {
                let current = match pc {
                    PcKind::Publish => self.publish.as_ref().map(|p| p.generation),
                    PcKind::Subscribe => self.subscribe.as_ref().map(|s| s.generation),
                };
                self.shared
                    .event(format!("{pc:?} gen {generation}: {state}"));
                if current != Some(generation) {
                    return;
                }
                let connected = state == RTCPeerConnectionState::Connected;
                self.shared.modify(|o| match pc {
                    PcKind::Publish => {
                        o.publish_state = Some(state);
                        if connected {
                            o.publish_connected_at = Some(Instant::now());
                        }
                    }
                    PcKind::Subscribe => {
                        o.subscribe_state = Some(state);
                        if connected {
                            o.subscribe_connected_at = Some(Instant::now());
                        }
                    }
                });
                if pc == PcKind::Publish && connected {
                    if let Err(err) = self.start_media().await {
                        self.shared
                            .failure(format!("publish: starting media: {err:#}"));
                    }
                }
            }
            PcEvent::Track {
                generation,
                track_id,
                stream_id,
            } => {
                self.check_track_mapping(generation, &track_id, &stream_id)
                    .await
            }
        }
    }

    /// The SDP stream id and the offer's `tracks` map must name the same publisher.
    async fn check_track_mapping(&mut self, generation: u64, track_id: &str, stream_id: &str) {
        let Some(s) = self.subscribe.as_ref() else {
            return;
        };
        if s.generation != generation {
            return;
        }
        for transceiver in s.pc.get_transceivers().await {
            let Ok(Some(receiver)) = transceiver.receiver().await else {
                continue;
            };
            if receiver.track().track_id().await != track_id {
                continue;
            }
            let mid = transceiver.mid().await.ok().flatten();
            let described = mid.as_ref().and_then(|m| s.tracks_by_mid.get(m));
            match described {
                Some(t) if t.participant_id == stream_id => {}
                Some(t) => self.shared.modify(|o| {
                    o.violations.push(format!(
                        "mid {:?}: SDP stream id {stream_id} but tracks map says {}",
                        mid, t.participant_id
                    ))
                }),
                None => self.shared.modify(|o| {
                    o.violations.push(format!(
                        "track {track_id} (stream {stream_id}) on mid {mid:?} is not in any tracks map"
                    ))
                }),
            }
            return;
        }
    }

    /// Starts the media writers and keyframe-request listeners for the current publish PC.
    async fn start_media(&mut self) -> anyhow::Result<()> {
        let Some(p) = self.publish.as_mut() else {
            return Ok(());
        };
        if p.media_started {
            return Ok(());
        }
        p.media_started = true;
        let mut payload_types = HashMap::new();
        for sender in p.pc.get_senders().await {
            let params = sender.get_parameters().await?;
            let ssrcs: Vec<u32> = params
                .encodings
                .iter()
                .filter_map(|e| e.rtp_coding_parameters.ssrc)
                .collect();
            let pt = params
                .rtp_parameters
                .codecs
                .first()
                .map(|c| c.payload_type)
                .context("sender has no negotiated codec")?;
            for ssrc in ssrcs {
                payload_types.insert(ssrc, pt);
            }
        }
        let generation = p.generation;
        for (kind, track, ssrc) in [
            (MediaKind::Audio, p.audio.clone(), p.audio_ssrc),
            (MediaKind::Video, p.video.clone(), p.video_ssrc),
        ] {
            let pt = *payload_types
                .get(&ssrc)
                .with_context(|| format!("no negotiated payload type for {kind:?} ssrc {ssrc}"))?;
            p.tasks.push(tokio::spawn(run_writer(
                self.shared.clone(),
                kind,
                track.clone(),
                ssrc,
                pt,
            )));
            p.tasks.push(tokio::spawn(run_feedback_listener(
                self.shared.clone(),
                kind,
                track,
                generation,
            )));
        }
        self.shared
            .event(format!("publish: media started (gen {generation})"));
        Ok(())
    }
}

async fn run_writer(
    shared: Arc<Shared>,
    kind: MediaKind,
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    payload_type: u8,
) {
    let (interval, ts_step, len) = match kind {
        MediaKind::Audio => (shared.opts.audio_interval, 960u32, shared.opts.audio_len),
        MediaKind::Video | MediaKind::Screen => {
            (shared.opts.video_interval, 2970u32, shared.opts.video_len)
        }
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rtp_seq: u16 = rand::random();
    let mut timestamp: u32 = rand::random();
    let mut first = true;
    let mut failures = 0u32;
    loop {
        ticker.tick().await;
        if !shared.sending.load(Ordering::Acquire) {
            continue;
        }
        let (seq, keyframe) = shared.allocate(kind, first);
        first = false;
        let len = if keyframe { len + 200 } else { len };
        let payload = build_payload(&shared.opts.tag, kind, seq, keyframe, len);
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker: kind == MediaKind::Video,
                payload_type,
                sequence_number: rtp_seq,
                timestamp,
                ssrc,
                ..Default::default()
            },
            payload: payload.clone(),
        };
        // Logged before the write so a receiver can never see a payload the log lacks.
        shared.record_sent(kind, seq, Some(payload), keyframe);
        match track.write_rtp(packet).await {
            Ok(()) => {}
            Err(err) => {
                shared.record_sent(kind, seq, None, false);
                failures += 1;
                if failures <= 3 {
                    shared.event(format!("{} write_rtp failed: {err}", kind_name(kind)));
                }
            }
        }
        rtp_seq = rtp_seq.wrapping_add(1);
        timestamp = timestamp.wrapping_add(ts_step);
    }
}

async fn run_feedback_listener(
    shared: Arc<Shared>,
    kind: MediaKind,
    track: Arc<TrackLocalStaticRTP>,
    generation: u64,
) {
    while let Some(event) = track.poll().await {
        // The event enum is non-exhaustive; RTCP feedback is its only variant today.
        let TrackLocalEvent::OnRtcpPacket(packets) = event else {
            continue;
        };
        for packet in packets {
            let any = packet.as_any();
            let fir = any.is::<FullIntraRequest>();
            if !(fir || any.is::<PictureLossIndication>()) {
                continue;
            }
            if kind != MediaKind::Audio {
                shared.force_keyframe.store(true, Ordering::Release);
            }
            shared.modify(|o| {
                o.event(format!(
                    "keyframe request ({}) on {}",
                    if fir { "FIR" } else { "PLI" },
                    kind_name(kind)
                ));
                o.keyframe_requests.push(KeyframeRequest {
                    at: Instant::now(),
                    kind,
                    fir,
                    generation,
                });
            });
        }
    }
}

/// A joined conference participant.
pub struct Participant {
    id: String,
    shared: Arc<Shared>,
    observed: watch::Receiver<Observed>,
    commands: mpsc::UnboundedSender<Command>,
    control: Option<JoinHandle<()>>,
    signal_tasks: Vec<JoinHandle<()>>,
}

impl Participant {
    /// Connects, joins with `token` and starts publishing/subscribing per `opts`.
    pub async fn join(
        ws_url: &str,
        tls: &TlsTrust,
        token: &str,
        opts: ParticipantOptions,
    ) -> anyhow::Result<Participant> {
        let mut client = SignalClient::connect(ws_url, tls).await?;
        let outcome = client
            .join_with(
                token,
                opts.display_name.clone(),
                opts.device.clone(),
                DEFAULT_WAIT,
            )
            .await
            .with_context(|| format!("{} joining", opts.tag))?;
        // Anything that arrived alongside `joined` (roster, first subscribe offer) must reach
        // the control loop too, in order.
        let early: Vec<Inbound> = std::mem::take(&mut client.skipped);
        let (signal, mut inbox, signal_tasks) = client.into_parts();
        let (replay_tx, replay_rx) = mpsc::unbounded_channel();
        for item in early {
            let _ = replay_tx.send(item);
        }
        tokio::spawn(async move {
            while let Some(item) = inbox.recv().await {
                if replay_tx.send(item).is_err() {
                    break;
                }
            }
        });

        let (id, admitted, initial) = match outcome {
            JoinOutcome::Joined(joined) => (
                joined.participant_id.clone(),
                true,
                Observed {
                    roster: joined.roster.clone(),
                    joined: Some(joined),
                    ..Default::default()
                },
            ),
            JoinOutcome::Waiting(waiting) => (
                waiting.participant_id.clone(),
                false,
                Observed {
                    waiting: Some(waiting),
                    ..Default::default()
                },
            ),
        };
        let (observed_tx, observed_rx) = watch::channel(initial);
        let shared = Arc::new(Shared {
            opts,
            observed: observed_tx,
            sent: Mutex::new(SentLog::default()),
            sending: AtomicBool::new(true),
            force_keyframe: AtomicBool::new(false),
        });
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (pc_tx, pc_rx) = mpsc::unbounded_channel();
        let control = Control {
            shared: shared.clone(),
            signal,
            inbox: replay_rx,
            commands: cmd_rx,
            pc_events_tx: pc_tx,
            pc_events: pc_rx,
            publish: None,
            subscribe: None,
            generation: 0,
            signal_open: true,
            admitted,
            id: id.clone(),
        };
        let control = tokio::spawn(control.run());
        Ok(Participant {
            id,
            shared,
            observed: observed_rx,
            commands: cmd_tx,
            control: Some(control),
            signal_tasks,
        })
    }

    /// Our participant id (from `joined`, or from `waiting` while in the waiting room).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The `joined` message, once we are in the conference.
    pub fn joined(&self) -> Option<Joined> {
        self.observe(|o| o.joined.clone())
    }

    /// Whether we are (still) in the waiting room.
    pub fn is_waiting(&self) -> bool {
        self.observe(|o| o.joined.is_none() && o.waiting.is_some())
    }

    /// Waits until we are in the conference (admitted, or never had to wait).
    pub async fn wait_joined(&self, timeout: Duration) -> anyhow::Result<Joined> {
        self.wait_until(timeout, "joined (admitted)", |o| o.joined.is_some())
            .await?;
        self.joined().context("joined vanished")
    }

    /// Sends any protocol message on our signaling connection.
    pub fn send(&self, msg: ClientMessage) -> anyhow::Result<()> {
        self.commands
            .send(Command::Send(msg))
            .map_err(|_| anyhow!("{}: control loop has stopped", self.tag()))
    }

    /// Admits `guest` once it shows up in our waiting-room list, and waits until it has
    /// joined. We must hold the admit right (host or staff).
    pub async fn admit(&self, guest: &Participant, timeout: Duration) -> anyhow::Result<Joined> {
        let guest_id = guest.id().to_owned();
        self.wait_until(timeout, &format!("{} in our lobby", guest.tag()), |o| {
            o.lobby.iter().any(|w| w.id == guest_id)
        })
        .await?;
        self.send(ClientMessage::Admit {
            participant_id: guest_id,
        })?;
        guest.wait_joined(timeout).await
    }

    /// Our payload tag.
    pub fn tag(&self) -> &str {
        &self.shared.opts.tag
    }

    /// Reads the observed state.
    pub fn observe<R>(&self, f: impl FnOnce(&Observed) -> R) -> R {
        f(&self.observed.borrow())
    }

    /// Summary of the observed state for assertion messages.
    pub fn summary(&self) -> String {
        format!(
            "participant {} ({}):\n{}",
            self.tag(),
            self.id(),
            self.observe(|o| o.summary())
        )
    }

    /// Waits (bounded) until `pred` holds on the observed state.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&Observed) -> bool,
    ) -> anyhow::Result<()> {
        let mut rx = self.observed.clone();
        let outcome = tokio::time::timeout(timeout, rx.wait_for(|o| pred(o)))
            .await
            .map(|r| r.map(drop));
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(anyhow!(
                "{}: state channel closed while waiting for {what}",
                self.tag()
            )),
            Err(_) => Err(anyhow!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.summary()
            )),
        }
    }

    /// A snapshot of what we have sent.
    pub fn sent(&self) -> SentLog {
        self.shared
            .sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Pauses or resumes our media writers (the connections stay up).
    pub fn set_sending(&self, on: bool) {
        self.shared.sending.store(on, Ordering::Release);
    }

    /// Decoded markers of everything received from `publisher` of `kind`.
    pub fn received_markers(&self, publisher: &str, kind: MediaKind) -> Vec<Option<Marker>> {
        self.observe(|o| {
            o.received_from(publisher, kind)
                .iter()
                .map(|p| parse_marker(&p.payload))
                .collect()
        })
    }

    /// Sends `leave` and waits for the server's `bye` (or the socket closing), then closes
    /// our peer connections.
    pub async fn leave(mut self, timeout: Duration) -> anyhow::Result<()> {
        let _ = self.commands.send(Command::Leave);
        let result = self
            .wait_until(timeout, "bye after leave", |o| {
                o.bye.is_some() || o.signal_closed.is_some()
            })
            .await;
        let got_bye = self.observe(|o| o.bye.is_some());
        self.shutdown_inner().await;
        result?;
        if !got_bye {
            bail!("{}: server closed without sending bye", self.tag());
        }
        Ok(())
    }

    /// Closes our peer connections and the signaling socket without saying goodbye.
    pub async fn shutdown(mut self) {
        self.shutdown_inner().await;
    }

    async fn shutdown_inner(&mut self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(done_tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), done_rx).await;
        }
        if let Some(control) = self.control.take() {
            control.abort();
        }
        for task in &self.signal_tasks {
            task.abort();
        }
    }
}

impl Drop for Participant {
    fn drop(&mut self) {
        // Best effort: ask the control loop to close the connections; a dropped command
        // channel makes it tear down too.
        let (done_tx, _done_rx) = oneshot::channel();
        let _ = self.commands.send(Command::Shutdown(done_tx));
        for task in &self.signal_tasks {
            task.abort();
        }
    }
}
