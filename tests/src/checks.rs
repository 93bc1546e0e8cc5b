//! Assertions over what participants sent and received: payload integrity, routing,
//! delivery ratio. They return descriptions of problems rather than panicking, so a test can
//! report every problem at once together with the participants' state.

use std::collections::BTreeSet;
use std::ops::Range;
use std::time::Duration;

use wardlink_signaling::MediaKind;

use crate::rtc_client::{kind_name, Participant, SentLog};
use crate::synthetic::parse_marker;

/// What a receiver needs to know about one publisher to check its media.
#[derive(Debug, Clone)]
pub struct PublisherInfo {
    /// Server-assigned participant id (the SDP stream id subscribers see).
    pub id: String,
    /// Payload tag.
    pub tag: String,
    /// Everything it sent.
    pub sent: SentLog,
}

impl PublisherInfo {
    /// Snapshot of a participant as a publisher.
    pub fn of(p: &Participant) -> Self {
        PublisherInfo {
            id: p.id().to_owned(),
            tag: p.tag().to_owned(),
            sent: p.sent(),
        }
    }
}

/// Stops every publisher in `people` and, once their sending tasks have settled, snapshots
/// what each sent. A sending task that passed its on/off check just before the flag flipped
/// still records and sends one more packet; snapshotting before that would make the packet
/// look "never sent" to [`verify_received_payloads`].
pub async fn stop_and_snapshot(people: &[&Participant]) -> Vec<PublisherInfo> {
    for p in people {
        p.set_sending(false);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    people.iter().map(|p| PublisherInfo::of(p)).collect()
}

/// Checks every payload `receiver` got: it must come from a known publisher other than the
/// receiver, carry that publisher's tag and the stream's kind, and equal byte for byte the
/// payload the publisher sent under that sequence number. Returns the problems found.
pub fn verify_received_payloads(
    receiver: &Participant,
    publishers: &[PublisherInfo],
) -> Vec<String> {
    let mut problems = Vec::new();
    let own_id = receiver.id().to_owned();
    let own_tag = receiver.tag().to_owned();
    receiver.observe(|o| {
        for ((stream, kind), packets) in &o.received {
            let label = format!("{} <- {stream} {}", receiver.tag(), kind_name(*kind));
            if *stream == own_id {
                problems.push(format!("{label}: received its own media ({} packets)", packets.len()));
                continue;
            }
            let Some(publisher) = publishers.iter().find(|p| p.id == *stream) else {
                problems.push(format!(
                    "{label}: stream id is not a known publisher ({} packets)",
                    packets.len()
                ));
                continue;
            };
            let sent = publisher.sent.of(*kind);
            let mut stream_problems = 0;
            let mut report = |text: String| {
                stream_problems += 1;
                if stream_problems <= 5 {
                    problems.push(format!("{label}: {text}"));
                }
            };
            for (i, packet) in packets.iter().enumerate() {
                if packet.payload.is_empty() {
                    continue; // padding-only (bandwidth probing) carries no media
                }
                let Some(marker) = parse_marker(&packet.payload) else {
                    report(format!("packet #{i} is not a synthetic payload ({} bytes)", packet.payload.len()));
                    continue;
                };
                if marker.tag == own_tag {
                    report(format!("packet #{i} carries the receiver's own tag"));
                    continue;
                }
                if marker.tag != publisher.tag {
                    report(format!("packet #{i} carries tag {:?}, expected {:?}", marker.tag, publisher.tag));
                    continue;
                }
                if marker.kind != *kind {
                    report(format!("packet #{i} is {} media on a {} track", kind_name(marker.kind), kind_name(*kind)));
                    continue;
                }
                match sent.get(marker.seq as usize) {
                    Some(Some(original)) if *original == packet.payload => {}
                    Some(Some(original)) => {
                        let at = original
                            .iter()
                            .zip(packet.payload.iter())
                            .position(|(a, b)| a != b)
                            .unwrap_or(original.len().min(packet.payload.len()));
                        report(format!(
                            "packet #{i} (seq {}) differs from what was sent: {} vs {} bytes, first difference at byte {at}",
                            marker.seq,
                            packet.payload.len(),
                            original.len()
                        ));
                    }
                    _ => report(format!("packet #{i} has seq {} which was never sent", marker.seq)),
                }
            }
            if stream_problems > 5 {
                problems.push(format!("{label}: ... {} problems in total", stream_problems));
            }
        }
    });
    problems
}

/// Distinct marker seqs in `range` that `receiver` got from `publisher`'s `kind` stream.
pub fn received_seqs(
    receiver: &Participant,
    publisher: &PublisherInfo,
    kind: MediaKind,
    range: Range<u32>,
) -> BTreeSet<u32> {
    receiver.observe(|o| {
        o.received_from(&publisher.id, kind)
            .iter()
            .filter_map(|p| parse_marker(&p.payload))
            .filter(|m| m.tag == publisher.tag && range.contains(&m.seq))
            .map(|m| m.seq)
            .collect()
    })
}

/// Payloads `publisher` actually handed to the transport in `range`.
pub fn sent_in(publisher: &PublisherInfo, kind: MediaKind, range: Range<u32>) -> usize {
    publisher
        .sent
        .of(kind)
        .iter()
        .enumerate()
        .filter(|(seq, p)| range.contains(&(*seq as u32)) && p.is_some())
        .count()
}

/// Highest marker seq `receiver` has seen from `publisher`'s `kind` stream.
pub fn max_seq_received(
    receiver: &Participant,
    publisher_id: &str,
    publisher_tag: &str,
    kind: MediaKind,
) -> Option<u32> {
    receiver.observe(|o| o.max_seq(publisher_id, publisher_tag, kind))
}

/// Waits until `receiver` has at least `audio` and `video` packets from each of `from`.
pub async fn wait_receiving(
    receiver: &Participant,
    from: &[(String, String)],
    audio: usize,
    video: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let names: Vec<&str> = from.iter().map(|(_, tag)| tag.as_str()).collect();
    receiver
        .wait_until(
            timeout,
            &format!(
                "{} receiving ≥{audio} audio and ≥{video} video packets from each of {names:?}",
                receiver.tag()
            ),
            |o| {
                from.iter().all(|(id, _)| {
                    o.count_from(id, MediaKind::Audio) >= audio
                        && o.count_from(id, MediaKind::Video) >= video
                })
            },
        )
        .await
}

/// Waits, participant by participant in order, until each of `people` has at least
/// `audio` and `video` packets from every other one of them.
pub async fn wait_receiving_each_other(
    people: &[&Participant],
    audio: usize,
    video: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    for p in people {
        let others: Vec<(String, String)> = people
            .iter()
            .filter(|o| o.id() != p.id())
            .map(|o| (o.id().to_owned(), o.tag().to_owned()))
            .collect();
        wait_receiving(p, &others, audio, video, timeout).await?;
    }
    Ok(())
}

/// Waits until `receiver`'s packet count from each of `from` (both kinds) exceeds the
/// counts in `baseline` by at least `more`.
pub async fn wait_growth(
    receiver: &Participant,
    from: &[String],
    baseline: &[(String, MediaKind, usize)],
    more: usize,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<()> {
    receiver
        .wait_until(
            timeout,
            &format!("{}: counts growing by {more} ({what})", receiver.tag()),
            |o| {
                from.iter().all(|id| {
                    [MediaKind::Audio, MediaKind::Video].iter().all(|kind| {
                        let base = baseline
                            .iter()
                            .find(|(b_id, b_kind, _)| b_id == id && b_kind == kind)
                            .map(|b| b.2)
                            .unwrap_or(0);
                        o.count_from(id, *kind) >= base + more
                    })
                })
            },
        )
        .await
}

/// Participant ids of `people`.
pub fn ids(people: &[&Participant]) -> Vec<String> {
    people.iter().map(|p| p.id().to_owned()).collect()
}

/// Records how much each of `people` has received from the others now, and returns a future
/// that fails unless every one of those counts grows by 10 within `timeout`: media is still
/// flowing `stage` (e.g. "during token attacks").
pub fn still_flowing<'a>(
    people: &'a [&'a Participant],
    timeout: Duration,
    stage: &'static str,
) -> impl std::future::Future<Output = anyhow::Result<()>> + 'a {
    let baseline: Vec<_> = people
        .iter()
        .map(|p| {
            let others: Vec<String> = ids(people).into_iter().filter(|id| id != p.id()).collect();
            (counts(p, &others), others)
        })
        .collect();
    async move {
        for (p, (base, others)) in people.iter().zip(baseline) {
            wait_growth(p, &others, &base, 10, timeout, stage)
                .await
                .map_err(|e| e.context(format!("media stopped flowing {stage}")))?;
        }
        anyhow::Ok(())
    }
}

/// Current per-(publisher, kind) counts for `from`.
pub fn counts(receiver: &Participant, from: &[String]) -> Vec<(String, MediaKind, usize)> {
    receiver.observe(|o| {
        from.iter()
            .flat_map(|id| {
                [MediaKind::Audio, MediaKind::Video]
                    .into_iter()
                    .map(move |kind| (id.clone(), kind, o.count_from(id, kind)))
            })
            .collect()
    })
}
