//! What the SFU negotiates: codecs, header extensions and the interceptor chain.

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::interceptor::{
    NackGeneratorBuilder, NackResponderBuilder, ReceiverReportBuilder, SenderReportBuilder,
};
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::{
    MediaEngine, MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::error::Error;
use wardlink_signaling::protocol::PcKind;

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

/// Packets kept per forwarded video stream to answer NACKs from. A retransmission is only
/// useful within about one round trip; 256 packets is over 2 s at 1.2 Mbit/s and about
/// 1 s at 2.5 Mbit/s, while `rtc`'s default of 1024 cost ~1 MB per subscriber leg.
pub const NACK_HISTORY: u16 = 256;

/// The interceptor chain for one connection, cut to what its direction uses. Every
/// interceptor in `rtc`'s chain sees (and moves) every packet both ways, so the defaults
/// (all six on every connection) cost per forwarded packet for work that can never
/// happen: a publish connection sends no RTP and a subscribe connection receives none.
///
/// - Publish (we receive): NACK generator (recovers the publisher's uplink loss), receiver
///   reports, TWCC feedback so the browser's send-side estimator adapts to its link.
/// - Subscribe (we send): NACK responder with a [`NACK_HISTORY`]-packet history, sender
///   reports, and [`KeyframeRequestTap`] to let PLI/FIR through to the forwarder.
///
/// The media engine gets the same codecs, feedback and header extensions either way, so
/// the SDP does not depend on the direction.
pub fn interceptors(me: &mut MediaEngine, direction: PcKind) -> Result<Registry, Error> {
    configure_simulcast_extension_headers(me)?;
    let twcc = configure_twcc_receiver_only(Registry::new(), me)?;
    Ok(match direction {
        PcKind::Publish => twcc
            .with(Slot::NackGenerator, NackGeneratorBuilder::new().build())
            .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build()),
        PcKind::Subscribe => Registry::new()
            // Application-ward of the others, so they have seen the packet first.
            .with(Slot::from(14_000), KeyframeRequestTap::default())
            .with(
                Slot::NackResponder,
                NackResponderBuilder::new().with_size(NACK_HISTORY).build(),
            )
            .with(Slot::SenderReport, SenderReportBuilder::new().build()),
    })
}

/// Lets a subscriber's PLI and FIR through to the application, which forwards them to the
/// publisher as a keyframe request. By default `rtc` consumes inbound RTCP inside the
/// interceptor chain; only packets marked [`Attribute::DeliverToApplication`] get out.
/// Nothing else is marked, to keep reports and NACKs off the forwarding path.
#[derive(Default)]
pub struct KeyframeRequestTap {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

/// Whether an RTCP compound packet asks for a keyframe.
pub fn is_keyframe_request(packets: &[Box<dyn rtc::rtcp::Packet>]) -> bool {
    packets.iter().any(|p| {
        let any = p.as_any();
        any.downcast_ref::<PictureLossIndication>().is_some()
            || any.downcast_ref::<FullIntraRequest>().is_some()
    })
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            if is_keyframe_request(packets) {
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

impl Interceptor for KeyframeRequestTap {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
