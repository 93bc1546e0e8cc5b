//! Turns a directory of run reports (`--json` files) into Markdown tables: both servers
//! side by side per scenario, wardlink/Janus ratios, and where each server broke.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

/// A run is "healthy" below these: loss at most this %, p99 added latency at most this.
pub const LOSS_LIMIT_PCT: f64 = 0.1;
/// p99 latency limit, ms.
pub const P99_LIMIT_MS: f64 = 50.0;

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_f64()
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |x| format!("{x:.digits$}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".to_owned(),
    }
}

/// Whether a run stayed within [`LOSS_LIMIT_PCT`] and [`P99_LIMIT_MS`] with every
/// stream flowing.
pub fn healthy(r: &Value) -> bool {
    let loss = f(r, &["loss_pct"]).unwrap_or(100.0);
    let p99 = f(r, &["latency", "p99_us"]).unwrap_or(f64::MAX) / 1000.0;
    let flowing = f(r, &["streams_flowing_at_start"]) == f(r, &["streams_expected"]);
    let failed = f(r, &["failed_participants"]).unwrap_or(1.0);
    loss <= LOSS_LIMIT_PCT && p99 <= P99_LIMIT_MS && flowing && failed == 0.0
}

/// Reads every report in `dir` and renders the summary.
pub fn summarize(dir: &Path) -> anyhow::Result<String> {
    let mut runs: BTreeMap<(String, String), Value> = BTreeMap::new();
    let mut leak: Option<Value> = None;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path)?;
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if v.get("cycles_ok").is_some() {
            leak = Some(v);
            continue;
        }
        let (Some(t), Some(l)) = (v["target"].as_str(), v["label"].as_str()) else {
            continue;
        };
        runs.insert((l.to_owned(), t.to_owned()), v);
    }
    let mut labels: Vec<String> = runs.keys().map(|(l, _)| l.clone()).collect();
    labels.dedup();
    // Fan-out runs sort by size, not text.
    labels.sort_by_key(|l| {
        let n: u64 = l
            .rsplit('-')
            .next()
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        (l.split('-').next().unwrap_or("").to_owned(), n, l.clone())
    });

    let mut out = String::new();
    writeln!(out, "### Runs\n")?;
    let mut pacing: Vec<String> = runs
        .values()
        .map(|r| match r.get("pace_multiplier") {
            Some(serde_json::Value::Number(m)) => format!(
                "video paced at {m}x its bitrate; latency from the send time to the kernel's receive timestamp at the subscriber"
            ),
            Some(_) => "video frames sent back to back; latency from the send time to the kernel's receive timestamp at the subscriber".to_owned(),
            // Reports written before pacing and kernel timestamps existed.
            None => "video frames sent back to back; latency from the send time to the subscriber task reading the packet".to_owned(),
        })
        .collect();
    pacing.sort();
    pacing.dedup();
    writeln!(out, "Publishers: {}.\n", pacing.join(" / "))?;
    writeln!(
        out,
        "| scenario | server | participants | streams | fwd pkt/s | fwd Mbit/s | loss % | lat p50 ms | lat p99 ms | lat max ms | server CPU (cores) | CPU ms per Mbit | RSS before MiB | RSS max MiB | RSS per participant KiB | generator CPU | generator lag p99 ms | UDP drops server / others | machine busy / other cores |"
    )?;
    writeln!(out, "|{}", "---|".repeat(19))?;
    for label in &labels {
        for target in ["wardlink", "janus"] {
            let Some(r) = runs.get(&(label.clone(), target.to_owned())) else {
                continue;
            };
            let ms = |p: &[&str]| f(r, p).map(|v| v / 1000.0);
            let mib = |p: &[&str]| f(r, p).map(|v| v / 1024.0);
            writeln!(
                out,
                "| {label} | {target} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} |",
                fmt(f(r, &["participants"]), 0),
                fmt(f(r, &["streams_expected"]), 0),
                fmt(f(r, &["forwarded_pps"]), 0),
                fmt(f(r, &["forwarded_mbps"]), 1),
                fmt(f(r, &["loss_pct"]), 3),
                fmt(ms(&["latency", "p50_us"]), 2),
                fmt(ms(&["latency", "p99_us"]), 2),
                fmt(ms(&["latency", "max_us"]), 1),
                fmt(f(r, &["server", "cpu_s_per_s"]), 3),
                fmt(f(r, &["server", "cpu_ms_per_mbit"]), 2),
                fmt(mib(&["server", "rss_before_kib"]), 1),
                fmt(mib(&["server", "rss_max_kib"]), 1),
                fmt(f(r, &["server", "rss_per_participant_kib"]), 0),
                fmt(f(r, &["generator_cpu_s_per_s"]), 2),
                fmt(ms(&["generator_lag_p99_us"]), 2),
                fmt(f(r, &["socket_drops", "server"]), 0),
                fmt(f(r, &["socket_drops", "others"]), 0),
                fmt(f(r, &["machine_cpu_s_per_s"]), 2),
                fmt(f(r, &["other_cpu_s_per_s"]), 2),
            )?;
        }
    }

    writeln!(
        out,
        "\n### wardlink / Janus ratios (below 1.00: wardlink uses less)\n"
    )?;
    writeln!(
        out,
        "| scenario | CPU per forwarded Mbit | added latency p99 | RSS per participant | loss wardlink % | loss Janus % |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    for label in &labels {
        let (Some(w), Some(j)) = (
            runs.get(&(label.clone(), "wardlink".to_owned())),
            runs.get(&(label.clone(), "janus".to_owned())),
        ) else {
            continue;
        };
        writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {} |",
            ratio(
                f(w, &["server", "cpu_ms_per_mbit"]),
                f(j, &["server", "cpu_ms_per_mbit"])
            ),
            ratio(f(w, &["latency", "p99_us"]), f(j, &["latency", "p99_us"])),
            ratio(
                f(w, &["server", "rss_per_participant_kib"]),
                f(j, &["server", "rss_per_participant_kib"])
            ),
            fmt(f(w, &["loss_pct"]), 3),
            fmt(f(j, &["loss_pct"]), 3),
        )?;
    }

    writeln!(
        out,
        "\n### Where each server stopped being healthy (loss > {LOSS_LIMIT_PCT} % or p99 > {P99_LIMIT_MS} ms or a stream never flowed)\n"
    )?;
    for target in ["wardlink", "janus"] {
        let mut last_good: Option<&Value> = None;
        let mut first_bad: Option<&Value> = None;
        for label in labels.iter().filter(|l| l.starts_with("a-")) {
            let Some(r) = runs.get(&(label.clone(), target.to_owned())) else {
                continue;
            };
            if first_bad.is_some() {
                break;
            }
            if healthy(r) {
                last_good = Some(r);
            } else {
                first_bad = Some(r);
            }
        }
        let describe = |r: &Value| {
            format!(
                "{} ({} streams forwarded, {:.0} pkt/s, loss {:.3} %, p99 {:.1} ms)",
                r["label"].as_str().unwrap_or("?"),
                fmt(f(r, &["streams_expected"]), 0),
                f(r, &["forwarded_pps"]).unwrap_or(0.0),
                f(r, &["loss_pct"]).unwrap_or(0.0),
                f(r, &["latency", "p99_us"]).unwrap_or(0.0) / 1000.0
            )
        };
        writeln!(
            out,
            "- **{target}** fan-out: last healthy {}; first unhealthy {}",
            last_good.map_or_else(|| "none".to_owned(), describe),
            first_bad.map_or_else(|| "none within the sizes run".to_owned(), describe),
        )?;
    }

    if let Some(l) = leak {
        writeln!(out, "\n### Leak check (wardlink)\n")?;
        writeln!(out, "```json\n{}\n```", serde_json::to_string_pretty(&l)?)?;
    }
    Ok(out)
}
