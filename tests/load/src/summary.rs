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
/// A run carried its scenario's load only if its publishers sent at least this share of
/// what their plan calls for (`nominal_ingress_pps`). Below it the generator was starved,
/// usually because the server under test held the cores it needed, and the run's loss and
/// latency are those of a smaller load: it does not count as healthy.
pub const FULL_LOAD_SHARE: f64 = 0.9;

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

/// Whether a run stayed within [`LOSS_LIMIT_PCT`] and [`P99_LIMIT_MS`] with every
/// stream flowing, under its scenario's whole load ([`FULL_LOAD_SHARE`]; reports from
/// before that was recorded are taken as carrying it).
pub fn healthy(r: &Value) -> bool {
    let loss = f(r, &["loss_pct"]).unwrap_or(100.0);
    let p99 = f(r, &["latency", "p99_us"]).unwrap_or(f64::MAX) / 1000.0;
    let flowing = f(r, &["streams_flowing_at_start"]) == f(r, &["streams_expected"]);
    let failed = f(r, &["failed_participants"]).unwrap_or(1.0);
    let carried = offered_share(r).is_none_or(|o| o >= FULL_LOAD_SHARE);
    loss <= LOSS_LIMIT_PCT && p99 <= P99_LIMIT_MS && flowing && failed == 0.0 && carried
}

/// The publishers' packets per second into the server as a share of their plan's;
/// `None` for a report without the plan's rate (before session 9).
fn offered_share(r: &Value) -> Option<f64> {
    let nominal = f(r, &["nominal_ingress_pps"]).filter(|n| *n > 0.0)?;
    Some(f(r, &["ingress_pps"]).unwrap_or(0.0) / nominal)
}

/// The round a report file belongs to: `…-r3.json` is round 3, anything else round 1
/// (`run-benchmark.sh --rounds`).
fn round_of(path: &Path) -> u32 {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.rsplit_once("-r"))
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(1)
}

/// Median of a non-empty list.
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// One server's runs of one scenario, by round.
type Rounds = BTreeMap<u32, Value>;

/// wardlink/Janus ratio of one metric over the rounds both servers ran: the ratio itself
/// for one round; for several, the median of the per-round ratios (each round's two runs
/// ran back to back) followed by every round's ratio.
fn ratio_over_rounds(w: &Rounds, j: &Rounds, path: &[&str]) -> String {
    let per_round: Vec<f64> = w
        .iter()
        .filter_map(|(round, wr)| {
            let (a, b) = (f(wr, path)?, f(j.get(round)?, path)?);
            (b > 0.0).then(|| a / b)
        })
        .collect();
    match per_round.len() {
        0 => "–".to_owned(),
        1 => format!("{:.2}", per_round[0]),
        _ => {
            let each: Vec<String> = per_round.iter().map(|r| format!("{r:.2}")).collect();
            let n = each.len();
            format!(
                "{:.2} (median of {n}: {})",
                median(per_round),
                each.join(", ")
            )
        }
    }
}

/// Reads every report in `dir` and renders the summary.
pub fn summarize(dir: &Path) -> anyhow::Result<String> {
    let mut runs: BTreeMap<(String, String), Rounds> = BTreeMap::new();
    // Every round run of a scenario, by either server.
    let mut rounds_of: BTreeMap<String, std::collections::BTreeSet<u32>> = BTreeMap::new();
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
        let round = round_of(&path);
        rounds_of.entry(l.to_owned()).or_default().insert(round);
        runs.entry((l.to_owned(), t.to_owned()))
            .or_default()
            .insert(round, v);
    }
    let rounds_run = rounds_of.values().map(|r| r.len()).max().unwrap_or(1);
    let mut labels: Vec<String> = runs.keys().map(|(l, _)| l.clone()).collect();
    labels.dedup();
    // Sizes sort as numbers, not text: a-fanout-50 before a-fanout-200, b-20x4 before b-100x4.
    labels.sort_by_key(|l| (series_of(l).to_owned(), size_of(l), l.clone()));

    let mut out = String::new();
    writeln!(out, "### Runs\n")?;
    let mut pacing: Vec<String> = runs
        .values()
        .flat_map(Rounds::values)
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
    let mut sched: Vec<&str> = runs
        .values()
        .flat_map(Rounds::values)
        // Reports written before `--sched` existed ran under the normal policy.
        .map(|r| {
            r.get("generator_sched")
                .and_then(|v| v.as_str())
                .unwrap_or("normal")
        })
        .collect();
    sched.sort_unstable();
    sched.dedup();
    writeln!(out, "Generator scheduling policy: {}.\n", sched.join(" / "))?;
    let mut threads: Vec<&str> = runs
        .values()
        .flat_map(Rounds::values)
        // Reports written before `--publisher-thread` existed shared the runtime.
        .map(|r| {
            if r.get("publisher_thread").and_then(|v| v.as_bool()) == Some(true) {
                "on a thread of their own"
            } else {
                "on the runtime shared with the subscribers"
            }
        })
        .collect();
    threads.sort_unstable();
    threads.dedup();
    writeln!(out, "Publishers' connections: {}.\n", threads.join(" / "))?;
    writeln!(
        out,
        "| scenario | server | participants | streams | fwd pkt/s | fwd Mbit/s | loss % | lat p50 ms | lat p99 ms | lat max ms | server CPU (cores) | CPU ms per Mbit | RSS before MiB | RSS max MiB | RSS per participant KiB | generator CPU | generator lag p99 ms | UDP drops server / others | machine busy / other cores |"
    )?;
    writeln!(out, "|{}", "---|".repeat(19))?;
    let rows = labels.iter().flat_map(|label| {
        rounds_of[label].iter().flat_map(move |&round| {
            ["wardlink", "janus"]
                .into_iter()
                .map(move |target| (label, round, target))
        })
    });
    for (label, round, target) in rows {
        let Some(r) = runs
            .get(&(label.clone(), target.to_owned()))
            .and_then(|rs| rs.get(&round))
        else {
            continue;
        };
        let label = if rounds_run > 1 {
            format!("{label} r{round}")
        } else {
            label.clone()
        };
        {
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
    if rounds_run > 1 {
        writeln!(
            out,
            "Several rounds: each cell is the median of the per-round ratios (wardlink's run and Janus's run of one round ran back to back), then every round's ratio. Loss columns: the worst round.\n"
        )?;
    }
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
        let worst_loss = |rs: &Rounds| {
            rs.values()
                .filter_map(|r| f(r, &["loss_pct"]))
                .reduce(f64::max)
        };
        writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {} |",
            ratio_over_rounds(w, j, &["server", "cpu_ms_per_mbit"]),
            ratio_over_rounds(w, j, &["latency", "p99_us"]),
            ratio_over_rounds(w, j, &["server", "rss_per_participant_kib"]),
            fmt(worst_loss(w), 3),
            fmt(worst_loss(j), 3),
        )?;
    }

    writeln!(
        out,
        "\n### Where each server stopped being healthy (loss > {LOSS_LIMIT_PCT} % or p99 > {P99_LIMIT_MS} ms or a stream never flowed, or the publishers sent under {:.0} % of their plan's packets)\n",
        FULL_LOAD_SHARE * 100.0
    )?;
    for (series, name) in [("a", "fan-out"), ("b", "rooms of 4")] {
        if !labels.iter().any(|l| series_of(l) == series) {
            continue;
        }
        for target in ["wardlink", "janus"] {
            writeln!(
                out,
                "- **{target}** {name}: {}",
                health_line(&runs, &labels, series, target)
            )?;
        }
    }

    if let Some(l) = leak {
        writeln!(out, "\n### Leak check (wardlink)\n")?;
        writeln!(out, "```json\n{}\n```", serde_json::to_string_pretty(&l)?)?;
    }
    Ok(out)
}

/// A label's scenario series: `a` for `a-fanout-200`, `b` for `b-20x4`.
fn series_of(label: &str) -> &str {
    label.split('-').next().unwrap_or("")
}

/// A label's size: the leading number of its last part (200 in `a-fanout-200`, 20 in
/// `b-20x4`), or 0.
fn size_of(label: &str) -> u64 {
    let last = label.rsplit('-').next().unwrap_or("");
    let digits = last.len() - last.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    last[..digits].parse().unwrap_or(0)
}

/// The largest healthy size of one series on one server and the first unhealthy one,
/// walking the sizes upwards (labels are sorted by size).
fn health_line(
    runs: &BTreeMap<(String, String), Rounds>,
    labels: &[String],
    series: &str,
    target: &str,
) -> String {
    let mut last_good: Option<&Value> = None;
    let mut first_bad: Option<&Value> = None;
    for label in labels.iter().filter(|l| series_of(l) == series) {
        let Some(rounds) = runs.get(&(label.clone(), target.to_owned())) else {
            continue;
        };
        if first_bad.is_some() {
            break;
        }
        // A size is healthy only if every round of it was.
        match rounds.values().find(|r| !healthy(r)) {
            Some(bad) => first_bad = Some(bad),
            None => last_good = rounds.values().next(),
        }
    }
    let describe = |r: &Value| {
        format!(
            "{} ({} streams forwarded, {:.0} pkt/s, loss {:.3} %, p99 {:.1} ms, publishers sent {} % of their plan's packets)",
            r["label"].as_str().unwrap_or("?"),
            fmt(f(r, &["streams_expected"]), 0),
            f(r, &["forwarded_pps"]).unwrap_or(0.0),
            f(r, &["loss_pct"]).unwrap_or(0.0),
            f(r, &["latency", "p99_us"]).unwrap_or(0.0) / 1000.0,
            fmt(offered_share(r).map(|o| o * 100.0), 0),
        )
    };
    format!(
        "last healthy {}; first unhealthy {}",
        last_good.map_or_else(|| "none".to_owned(), describe),
        first_bad.map_or_else(|| "none within the sizes run".to_owned(), describe),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(target: &str, label: &str, cpu_ms_per_mbit: f64, p99_us: f64) -> Value {
        serde_json::json!({
            "target": target,
            "label": label,
            "loss_pct": 0.0,
            "latency": { "p50_us": 100.0, "p99_us": p99_us, "max_us": 900.0 },
            "server": { "cpu_ms_per_mbit": cpu_ms_per_mbit, "rss_per_participant_kib": 100.0 },
            "streams_expected": 2,
            "streams_flowing_at_start": 2,
            "failed_participants": 0,
        })
    }

    /// Writes each (file name, report) into a fresh directory and summarizes it.
    fn summarize_reports(tag: &str, reports: Vec<(String, Value)>) -> String {
        let dir = std::env::temp_dir().join(format!("wl-summary-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (file, report) in reports {
            std::fs::write(dir.join(file), report.to_string()).unwrap();
        }
        let out = summarize(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        out
    }

    /// One report per (file, target, label, CPU ms per Mbit, p99 µs), summarized.
    fn summary_of(tag: &str, reports: &[(&str, &str, &str, f64, f64)]) -> String {
        let reports = reports
            .iter()
            .map(|(file, target, label, cpu, p99)| {
                (file.to_string(), report(target, label, *cpu, *p99))
            })
            .collect();
        summarize_reports(tag, reports)
    }

    #[test]
    fn rounds_pair_by_number_and_report_the_median_ratio() {
        // Round 1 has no suffix; rounds 2 and 3 do. CPU ratios 0.40, 0.60, 0.50 by round.
        let out = summary_of(
            "rounds",
            &[
                (
                    "a-fanout-1-wardlink.json",
                    "wardlink",
                    "a-fanout-1",
                    4.0,
                    300.0,
                ),
                ("a-fanout-1-janus.json", "janus", "a-fanout-1", 10.0, 400.0),
                (
                    "a-fanout-1-wardlink-r2.json",
                    "wardlink",
                    "a-fanout-1",
                    6.0,
                    300.0,
                ),
                (
                    "a-fanout-1-janus-r2.json",
                    "janus",
                    "a-fanout-1",
                    10.0,
                    400.0,
                ),
                (
                    "a-fanout-1-wardlink-r3.json",
                    "wardlink",
                    "a-fanout-1",
                    10.0,
                    300.0,
                ),
                (
                    "a-fanout-1-janus-r3.json",
                    "janus",
                    "a-fanout-1",
                    20.0,
                    400.0,
                ),
            ],
        );
        assert!(
            out.contains("| a-fanout-1 | 0.50 (median of 3: 0.40, 0.60, 0.50) | 0.75 (median of 3: 0.75, 0.75, 0.75) |"),
            "{out}"
        );
        // Every run gets its own row, named by round.
        for round in ["r1", "r2", "r3"] {
            assert!(
                out.contains(&format!("| a-fanout-1 {round} | wardlink |")),
                "{out}"
            );
            assert!(
                out.contains(&format!("| a-fanout-1 {round} | janus |")),
                "{out}"
            );
        }
    }

    #[test]
    fn a_single_round_keeps_the_plain_ratio() {
        let out = summary_of(
            "single",
            &[
                ("c-1x10-wardlink.json", "wardlink", "c-1x10", 1.5, 870.0),
                ("c-1x10-janus.json", "janus", "c-1x10", 3.75, 1390.0),
            ],
        );
        assert!(out.contains("| c-1x10 | 0.40 | 0.63 | 1.00 |"), "{out}");
        assert!(out.contains("| c-1x10 | wardlink |"), "{out}");
    }

    #[test]
    fn sizes_sort_as_numbers_and_each_series_gets_its_own_health_line() {
        let out = summary_of(
            "series",
            &[
                (
                    "b-100x4-wardlink.json",
                    "wardlink",
                    "b-100x4",
                    1.0,
                    60_000.0,
                ),
                ("b-20x4-wardlink.json", "wardlink", "b-20x4", 1.0, 2_000.0),
                ("b-60x4-wardlink.json", "wardlink", "b-60x4", 1.0, 9_000.0),
                (
                    "a-fanout-200-wardlink.json",
                    "wardlink",
                    "a-fanout-200",
                    1.0,
                    9_000.0,
                ),
                (
                    "a-fanout-50-wardlink.json",
                    "wardlink",
                    "a-fanout-50",
                    1.0,
                    3_000.0,
                ),
            ],
        );
        let at = |needle: &str| {
            out.find(needle)
                .unwrap_or_else(|| panic!("{needle}: {out}"))
        };
        assert!(at("| b-20x4 | wardlink |") < at("| b-60x4 | wardlink |"));
        assert!(at("| b-60x4 | wardlink |") < at("| b-100x4 | wardlink |"));
        assert!(at("| a-fanout-50 | wardlink |") < at("| a-fanout-200 | wardlink |"));
        // 100 rooms passed the 50 ms line: 60 is the last healthy size of that series.
        assert!(
            out.contains("- **wardlink** rooms of 4: last healthy b-60x4 "),
            "{out}"
        );
        assert!(out.contains("first unhealthy b-100x4 "), "{out}");
        assert!(
            out.contains("- **wardlink** fan-out: last healthy a-fanout-200 "),
            "{out}"
        );
        assert_eq!(size_of("b-20x4"), 20);
        assert_eq!(size_of("a-fanout-350"), 350);
        assert_eq!(size_of("c-1x10"), 1);
    }

    #[test]
    fn a_run_whose_publishers_could_not_send_the_load_is_not_healthy() {
        // Janus at 30 rooms: no loss and a low p99, but its publishers sent 80 % of their
        // plan's packets: the server held the cores the generator needed.
        let reports = [
            ("wardlink", 20.0, 196.0, 1_800.0),
            ("wardlink", 30.0, 195.0, 2_900.0),
            ("janus", 20.0, 194.0, 4_400.0),
            ("janus", 30.0, 157.0, 3_000.0),
        ]
        .into_iter()
        .map(|(target, rooms, ingress_per_publisher, p99)| {
            let label = format!("b-{rooms}x4");
            let mut v = report(target, &label, 1.0, p99);
            v["ingress_pps"] = (ingress_per_publisher * rooms * 4.0).into();
            v["nominal_ingress_pps"] = (196.0 * rooms * 4.0).into();
            (format!("{label}-{target}.json"), v)
        })
        .collect();
        let out = summarize_reports("load", reports);
        assert!(
            out.contains("- **janus** rooms of 4: last healthy b-20x4 "),
            "{out}"
        );
        assert!(out.contains("first unhealthy b-30x4 ("), "{out}");
        assert!(
            out.contains("publishers sent 80 % of their plan's packets"),
            "{out}"
        );
        assert!(
            out.contains("- **wardlink** rooms of 4: last healthy b-30x4 "),
            "{out}"
        );
    }

    #[test]
    fn the_round_comes_from_the_file_name() {
        assert_eq!(round_of(Path::new("a-fanout-200-janus.json")), 1);
        assert_eq!(round_of(Path::new("a-fanout-200-janus-r4.json")), 4);
        assert_eq!(round_of(Path::new("b-20x4-wardlink-r12.json")), 12);
    }
}
