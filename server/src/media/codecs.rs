//! What the SFU negotiates: codecs, header extensions and the interceptor chain.

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::interceptor::{NackGeneratorBuilder, ReceiverReportBuilder};
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::{
    MediaEngine, MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::error::Error;
use wardlink_signaling::protocol::PcKind;

use super::feedback::ReceiveFeedback;

/// RFC 4588 retransmission payload MIME type.
const MIME_TYPE_RTX: &str = "video/rtx";

fn video_feedback() -> Vec<RTCPFeedback> {
    [
        ("goog-remb", ""),
        ("transport-cc", ""),
        ("ccm", "fir"),
        ("nack", ""),
        ("nack", "pli"),
    ]
    .into_iter()
    .map(|(typ, parameter)| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    })
    .collect()
}

fn codec(
    mime: &str,
    clock_rate: u32,
    channels: u16,
    fmtp: &str,
    pt: u8,
    fb: Vec<RTCPFeedback>,
) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.to_owned(),
            clock_rate,
            channels,
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback: fb,
        },
        payload_type: pt,
    }
}

/// Builds the media engine: Opus; VP8 first (every browser decodes it), then H.264
/// constrained baseline so iPad Safari can publish; RTX for each video codec.
pub fn media_engine() -> Result<MediaEngine, Error> {
    let mut me = MediaEngine::default();
    me.register_codec(
        codec(
            MIME_TYPE_OPUS,
            48000,
            2,
            "minptime=10;useinbandfec=1",
            111,
            vec![RTCPFeedback {
                typ: "transport-cc".into(),
                parameter: String::new(),
            }],
        ),
        RtpCodecKind::Audio,
    )?;
    let video = [
        (MIME_TYPE_VP8, "", 96u8),
        (
            MIME_TYPE_H264,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
            102,
        ),
        (
            MIME_TYPE_H264,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
            104,
        ),
    ];
    for (mime, fmtp, pt) in video {
        me.register_codec(
            codec(mime, 90000, 0, fmtp, pt, video_feedback()),
            RtpCodecKind::Video,
        )?;
        me.register_codec(
            codec(
                MIME_TYPE_RTX,
                90000,
                0,
                &format!("apt={pt}"),
                pt + 1,
                vec![],
            ),
            RtpCodecKind::Video,
        )?;
    }
    Ok(me)
}

/// The interceptor chain for one connection, cut to what its direction uses. Every
/// interceptor in `rtc`'s chain sees (and moves) every packet both ways, so the defaults
/// (all six on every connection) cost per forwarded packet for work that can never
/// happen: a publish connection sends no RTP and a subscribe connection receives none.
///
/// - Publish (we receive): NACK generator (recovers the publisher's uplink loss), receiver
///   reports, TWCC feedback so the browser's send-side estimator adapts to its link. They
///   are returned as well ([`ReceiveFeedback`]): the SFU shows them the RTP it decrypts
///   outside `rtc` (see `direct_rx`).
/// - Subscribe (we send): only [`FeedbackTap`]. Forwarded RTP is encrypted by the SFU
///   itself once the connection's keys are proven (see `direct_srtp`), so `rtc`'s NACK
///   responder and sender-report interceptor would never see it; the SFU answers NACKs
///   from one history per source and writes the sender reports (see `sfu`).
///
/// The media engine gets the same codecs, feedback and header extensions either way, so
/// the SDP does not depend on the direction.
pub fn interceptors(
    me: &mut MediaEngine,
    direction: PcKind,
) -> Result<(Registry, Option<ReceiveFeedback>), Error> {
    configure_simulcast_extension_headers(me)?;
    let twcc = configure_twcc_receiver_only(Registry::new(), me)?;
    Ok(match direction {
        PcKind::Publish => {
            let feedback = ReceiveFeedback::new(
                twcc.with(Slot::NackGenerator, NackGeneratorBuilder::new().build())
                    .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
                    .build(),
            );
            // One link where the three were: the earliest of their slots.
            let chain = Registry::new().with(Slot::NackGenerator, feedback.clone());
            (chain, Some(feedback))
        }
        PcKind::Subscribe => (
            Registry::new().with(Slot::from(14_000), FeedbackTap::default()),
            None,
        ),
    })
}

/// Lets a subscriber's PLI, FIR and NACK through to the application: the forwarder turns
/// the first two into a keyframe request to the publisher and answers NACKs itself. By
/// default `rtc` consumes inbound RTCP inside the interceptor chain; only packets marked
/// [`Attribute::DeliverToApplication`] get out. Receiver reports stay inside.
#[derive(Default)]
pub struct FeedbackTap {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

/// The sequence numbers an RTCP compound packet reports lost, by media SSRC.
pub fn nacked(packets: &[Box<dyn rtc::rtcp::Packet>]) -> Vec<(u32, Vec<u16>)> {
    packets
        .iter()
        .filter_map(|p| p.as_any().downcast_ref::<TransportLayerNack>())
        .map(|n| {
            let seqs = n.nacks.iter().flat_map(|pair| pair.packet_list()).collect();
            (n.media_ssrc, seqs)
        })
        .collect()
}

/// Whether an RTCP compound packet asks for a keyframe.
pub fn is_keyframe_request(packets: &[Box<dyn rtc::rtcp::Packet>]) -> bool {
    packets.iter().any(|p| {
        let any = p.as_any();
        any.downcast_ref::<PictureLossIndication>().is_some()
            || any.downcast_ref::<FullIntraRequest>().is_some()
    })
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for FeedbackTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let nack = packets
                .iter()
                .any(|p| p.as_any().downcast_ref::<TransportLayerNack>().is_some());
            if nack || is_keyframe_request(packets) {
                msg.message.add(Attribute::DeliverToApplication);
            }
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }

    fn handle_timeout(&mut self, _now: Instant) -> Result<(), Self::Error> {
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Self::Time> {
        None
    }
}

impl Interceptor for FeedbackTap {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
