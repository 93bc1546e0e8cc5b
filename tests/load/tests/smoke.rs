//! Smoke run of the load generator against a real wardlink started in-process: one room,
//! one publisher, two subscribers, a few seconds of media over real ICE/DTLS/SRTP.
//! Every forwarded packet must arrive intact, exactly once, at the right subscriber.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use wardlink::media::sfu::SfuStats;
use wardlink_load::peer::MediaPlan;
use wardlink_load::publisher_thread::PublisherThread;
use wardlink_load::scenario::Report;
use wardlink_load::scenario::{print_table, run, ScenarioConfig, Target};
use wardlink_load::stats::SETTLED_BACKLOG;
use wardlink_load::InProcessWardlink;

/// One room, one publisher, two subscribers, 4 s measured after 1 s of warm-up.
fn one_to_two(label: &str, plan: MediaPlan) -> ScenarioConfig {
    ScenarioConfig {
        label: label.into(),
        rooms: 1,
        publishers: 1,
        subscribers: 2,
        duration: Duration::from_secs(4),
        warmup: Duration::from_secs(1),
        setup_timeout: Duration::from_secs(30),
        join_concurrency: 4,
        server_pid: Some(std::process::id()),
        plan,
        bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

/// Runs `cfg` against a fresh in-process wardlink: the report, printed, and the server's
/// media counters read before it shut down.
async fn run_against_wardlink(cfg: ScenarioConfig) -> (Report, SfuStats) {
    let server = InProcessWardlink::start().await.expect("start wardlink");
    let report = run(Target::Wardlink(server.target.clone()), cfg)
        .await
        .expect("scenario ran");
    let (stats, _) = server
        .server
        .state()
        .rooms
        .media_stats()
        .await
        .expect("media stats");
    server.shutdown().await;
    print_table(&report);
    eprintln!("server: {stats:?}");
    (report, stats)
}

/// Every packet sent in the window arrived, once, intact, at the subscribers it was for.
fn assert_delivered_intact(report: &Report) {
    assert_eq!(report.lost_packets, 0, "loss: {report:#?}");
    assert_eq!(report.corrupt, 0, "corrupted payloads: {report:#?}");
    assert_eq!(report.duplicates, 0, "duplicates: {report:#?}");
    assert_eq!(report.unexpected_packets, 0, "misrouted: {report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publisher_two_subscribers_lose_nothing() {
    // As the command line runs it by default: the publisher on a thread of its own.
    let publishers = PublisherThread::start().expect("publisher thread");
    let plan = MediaPlan {
        publisher_runtime: Some(publishers.handle()),
        ..MediaPlan::default()
    };
    let (report, _) = run_against_wardlink(one_to_two("smoke", plan)).await;
    drop(publishers);
    assert!(report.publisher_thread);

    assert_eq!(report.streams_expected, 4, "2 subscribers × audio+video");
    assert_eq!(
        report.streams_flowing_at_start, 4,
        "every stream delivered before the window: {report:#?}"
    );
    // 4 s of 50 audio + ~130 video packets per second, to each of 2 subscribers.
    assert!(
        report.expected_packets > 2 * 4 * 150,
        "too few packets sent: {}",
        report.expected_packets
    );
    assert_delivered_intact(&report);
    assert_eq!(report.reordered, 0, "reordered: {report:#?}");
    assert_eq!(report.failed_participants, 0, "{:?}", report.errors);
    assert_eq!(report.send_errors, 0);
    assert!(
        report.paced_backlog_at_start <= SETTLED_BACKLOG,
        "the window opened with {} video packets queued in the pacer",
        report.paced_backlog_at_start
    );
    assert!(report.latency.count >= report.received_packets);
    assert!(
        report.latency.p99_us < 500_000,
        "p99 latency {} µs on loopback",
        report.latency.p99_us
    );
    // The subscribers decrypted their media outside rtc (all but the packets before the
    // key was found), so the payload checks above also prove that path on a real
    // connection.
    assert_eq!(report.subscriber_srtp, "direct");
    assert!(
        report.subscriber_direct_pct > 90.0,
        "direct path: {} %",
        report.subscriber_direct_pct
    );
}

/// Every 20th video datagram is dropped at each subscriber before SRTP sees it. The server
/// must answer the subscribers' NACKs with those exact packets (from its per-source
/// history, encrypted on the direct path), or they count as lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_video_is_recovered_by_the_servers_retransmissions() {
    let plan = MediaPlan {
        downlink_drop_every: 20,
        ..MediaPlan::default()
    };
    let (report, stats) = run_against_wardlink(one_to_two("smoke-nack", plan)).await;

    // 2 subscribers × ~130 video packets/s × 4 s, one in 20 dropped.
    assert!(
        report.downlink_dropped > 40,
        "the emulated loss happened: {report:#?}"
    );
    // A drop in the last moments may have its NACK arrive after the stats were read.
    assert!(
        stats.retransmissions * 10 >= report.downlink_dropped * 9,
        "drops answered: {} retransmissions for {} drops",
        stats.retransmissions,
        report.downlink_dropped
    );
    // Recovery needs rtc's NACK generator, so this run read everything through rtc.
    assert_eq!(report.subscriber_direct_pct, 0.0);
    // After recovery; retransmissions arrive after later packets, so no reordering check.
    assert_delivered_intact(&report);
}

/// The server reads a publisher's RTP outside `rtc` (`direct_rx`), yet its receive-side
/// interceptors must still see every packet. Every 20th video datagram is dropped on the
/// publisher's way out, after SRTP: the server's NACK generator must ask for each (a
/// generator that saw only `rtc`'s share would ask for nearly everything), the publisher's
/// NACK responder resends it, and the subscribers must end up missing nothing. Its TWCC
/// feedback must cover the stream, and its receiver reports must arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_loss_is_recovered_while_the_server_reads_outside_rtc() {
    let plan = MediaPlan {
        uplink_drop_every: 20,
        ..MediaPlan::default()
    };
    let (report, stats) = run_against_wardlink(one_to_two("smoke-uplink", plan)).await;
    let fb = report.server_feedback;

    // ~130 video packets/s for 4 s plus warm-up, one in 20 dropped.
    assert!(
        report.uplink_dropped > 25,
        "the emulated loss happened: {report:#?}"
    );
    // Each drop asked for: NACK packets can carry several, and a drop in the last moments
    // may go unasked before the end, hence the margins.
    assert!(
        fb.nacks * 10 >= report.uplink_dropped * 5 && fb.nacks <= report.uplink_dropped * 3,
        "{} NACKs for {} drops",
        fb.nacks,
        report.uplink_dropped
    );
    assert_delivered_intact(&report);
    // Most of the publisher's RTP was read outside rtc: all but each stream's first
    // packets, which arrive before rtc has reported the track. (The retransmissions keep
    // their stream, this publisher negotiating no RTX, so they are read directly too.)
    let sent = report.ingress_pps * (report.window_s + 1.0);
    assert!(
        stats.direct_reads as f64 > 0.8 * sent,
        "{} publisher packets read outside rtc of about {sent:.0}",
        stats.direct_reads
    );
    assert!(fb.receiver_reports >= 4, "receiver reports: {fb:?}");
    // TWCC feedback covers the publisher's packets and reports the lost ones lost: in
    // the runs that wrote this test, 95 % received.
    assert!(fb.twcc > 20 && fb.twcc_covered > 300, "TWCC: {fb:?}");
    let received = fb.twcc_received as f64 / fb.twcc_covered as f64;
    assert!(
        (0.9..1.0).contains(&received),
        "TWCC reported {:.1} % received",
        100.0 * received
    );
}

/// One publisher to 70 subscribers: every packet goes to 70 legs, over the large fan-out
/// threshold, so the media loop sends most of them (60 %) from its second
/// thread (and at real-time priority, where the test runs with the permission). Nothing
/// may be lost, duplicated, corrupted or misrouted on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_fan_out_is_sent_from_two_threads_without_loss() {
    let cfg = ScenarioConfig {
        subscribers: 70,
        join_concurrency: 8,
        setup_timeout: Duration::from_secs(60),
        ..one_to_two("smoke-fanout", MediaPlan::default())
    };
    let (report, stats) = run_against_wardlink(cfg).await;

    assert_eq!(report.streams_flowing_at_start, 140, "{report:#?}");
    assert!(
        report.expected_packets > 70 * 4 * 150,
        "too few packets sent: {}",
        report.expected_packets
    );
    assert_delivered_intact(&report);
    assert_eq!(
        report.reordered, 0,
        "a peer's packets overtook each other: {report:#?}"
    );
    assert_eq!(stats.helper_drops, 0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores >= 2 {
        // About 60 % of the ~70 × 190 datagrams a second went out from the second thread.
        assert!(
            stats.helper_sent * 4 > report.received_packets,
            "second thread sent {} of {} received datagrams",
            stats.helper_sent,
            report.received_packets
        );
    } else {
        eprintln!("one core: the second send thread is never started");
        assert_eq!(stats.helper_sent, 0);
    }
}
