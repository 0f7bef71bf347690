//! `mccache report <dir>`: reads the node results of a run, prints a per-node table and two
//! coherence verdicts, and draws `chart.svg` (throughput and replication lag over time).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::result::{CHECKSUM_SAMPLE_MS, ChecksumChange, NodeResult};

/// Arguments of `mccache report`.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Directory holding the nodes' `*.json` results.
    pub dir: PathBuf,
    /// Fail unless exactly this many node results are present.
    #[arg(long)]
    pub expect: Option<usize>,
    /// Where to write the chart (default: `<dir>/chart.svg`).
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Pass on the lenient rule alone (the strict verdict is still printed).
    #[arg(long)]
    pub lenient: bool,
}

/// The outcome of one coherence rule.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the rule holds.
    pub pass: bool,
    /// Why not (first few problems), or what was compared.
    pub notes: Vec<String>,
}

const MAX_NOTES: usize = 10;

/// The ancestor's lenient rule: for every pair of nodes and every key present on both, the
/// versions and crcs must be equal, unless one of the two writes happened after the other node
/// finished its workload. Missing keys are not failures.
pub fn lenient(results: &[NodeResult]) -> Verdict {
    let mut problems = Vec::new();
    let mut compared = 0u64;
    for (i, a) in results.iter().enumerate() {
        for b in &results[i + 1..] {
            for (cache, ca) in &a.caches {
                let Some(cb) = b.caches.get(cache) else {
                    continue;
                };
                for (key, ka) in &ca.keys {
                    let Some(kb) = cb.keys.get(key) else { continue };
                    compared += 1;
                    if ka != kb && ka.written_ms < b.done_ms && kb.written_ms < a.done_ms {
                        problems.push(format!(
                            "{cache}/{key}: {} has v{}@{} crc {:08x}, {} has v{}@{} crc {:08x}",
                            a.node_name,
                            ka.hlc,
                            ka.node,
                            ka.crc,
                            b.node_name,
                            kb.hlc,
                            kb.node,
                            kb.crc
                        ));
                    }
                }
            }
        }
    }
    let pass = problems.is_empty();
    let mut notes = vec![format!(
        "{compared} shared key pairs compared, {} differ",
        problems.len()
    )];
    notes.extend(problems.into_iter().take(MAX_NOTES));
    Verdict { pass, notes }
}

/// The strict rule: after quiesce every node holds the same caches with the same key sets,
/// versions and crcs (hence the same checksums).
pub fn strict(results: &[NodeResult]) -> Verdict {
    let mut notes = Vec::new();
    let Some(first) = results.first() else {
        return Verdict {
            pass: false,
            notes: vec!["no results".into()],
        };
    };
    let names: BTreeSet<&String> = results.iter().flat_map(|r| r.caches.keys()).collect();
    let mut differing = 0usize;
    for name in names {
        let reference = first.caches.get(name);
        for r in &results[1..] {
            let this = r.caches.get(name);
            let (Some(x), Some(y)) = (reference, this) else {
                differing += 1;
                notes.push(format!(
                    "{name}: only on some nodes ({} vs {})",
                    first.node_name, r.node_name
                ));
                continue;
            };
            let keys: BTreeSet<&String> = x.keys.keys().chain(y.keys.keys()).collect();
            let bad: Vec<&String> = keys
                .into_iter()
                .filter(|k| x.keys.get(*k) != y.keys.get(*k))
                .collect();
            if x.checksum != y.checksum || !bad.is_empty() {
                differing += 1;
                notes.push(format!(
                    "{name}: {} ({:016x}, {} keys) vs {} ({:016x}, {} keys): {} keys differ{}",
                    first.node_name,
                    x.checksum,
                    x.keys.len(),
                    r.node_name,
                    y.checksum,
                    y.keys.len(),
                    bad.len(),
                    bad.first()
                        .map(|k| format!(", e.g. {k}"))
                        .unwrap_or_default()
                ));
            }
        }
    }
    let unquiesced: Vec<&str> = results
        .iter()
        .filter(|r| !r.quiesced)
        .map(|r| r.node_name.as_str())
        .collect();
    if !unquiesced.is_empty() {
        notes.push(format!("did not quiesce: {}", unquiesced.join(", ")));
    }
    notes.truncate(MAX_NOTES);
    Verdict {
        pass: differing == 0,
        notes,
    }
}

/// Reads every `*.json` in `dir` (sorted by name) as a node result.
pub fn load(dir: &Path) -> Result<Vec<NodeResult>, String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| format!("{}: not a node result: {e}", p.display()))
        })
        .collect()
}

/// Runs `mccache report`; returns whether the run passes.
pub fn main(args: ReportArgs) -> Result<bool, String> {
    let results = load(&args.dir)?;
    if results.is_empty() {
        return Err(format!(
            "no node results (*.json) in {}",
            args.dir.display()
        ));
    }
    print_table(&results);
    let count_ok = args.expect.is_none_or(|n| n == results.len());
    let l = lenient(&results);
    let s = strict(&results);
    println!();
    if let Some(n) = args.expect {
        println!(
            "nodes:   {} ({} expected)  {}",
            results.len(),
            n,
            if count_ok { "PASS" } else { "FAIL" }
        );
    }
    for (name, v) in [("lenient", &l), ("strict", &s)] {
        println!("{name}: {}", if v.pass { "PASS" } else { "FAIL" });
        for n in &v.notes {
            println!("    {n}");
        }
    }
    let chart = args.chart.unwrap_or_else(|| args.dir.join("chart.svg"));
    draw_chart(&results, &chart)?;
    println!("chart:   {}", chart.display());
    let pass = count_ok && l.pass && (args.lenient || s.pass);
    println!("verdict: {}", if pass { "PASS" } else { "FAIL" });
    Ok(pass)
}

fn print_table(results: &[NodeResult]) {
    println!(
        "{:<22} {:>8} {:>7} {:>7} {:>7} {:>8} {:>8} {:>18} {:>9} {:>10} {:>10} {:>8}",
        "node",
        "ops",
        "ins",
        "upd",
        "del",
        "gets",
        "entries",
        "checksum",
        "ops/s",
        "lag p50µs",
        "lag p99µs",
        "quiesced"
    );
    for r in results {
        let (entries, checksum) = r
            .caches
            .values()
            .next()
            .map_or((0, 0), |c| (c.entries, c.checksum));
        let secs = (r.done_ms.saturating_sub(r.started_ms) as f64 / 1000.0).max(1e-3);
        println!(
            "{:<22} {:>8} {:>7} {:>7} {:>7} {:>8} {:>8} {:>18} {:>9.0} {:>10} {:>10} {:>8}",
            r.node_name,
            r.ops.total(),
            r.ops.inserts,
            r.ops.updates,
            r.ops.deletes,
            r.ops.gets,
            entries,
            format!("{checksum:016x}"),
            r.ops.total() as f64 / secs,
            r.lag.p50_us,
            r.lag.p99_us,
            if r.quiesced { "yes" } else { "no" }
        );
    }
    let dropped: BTreeMap<&str, u64> = results.iter().fold(BTreeMap::new(), |mut m, r| {
        for (k, v) in &r.network.dropped {
            *m.entry(k.as_str()).or_default() += v;
        }
        m
    });
    let sum = |f: fn(&NodeResult) -> u64| results.iter().map(f).sum::<u64>();
    println!("{}", aggregate_line(results));
    if let Some(line) = converged_line(results) {
        println!("{line}");
    }
    if let Some(line) = identical_line(results) {
        println!("{line}");
    }
    println!("{}", ready_line(results));
    println!(
        "network: {} datagrams sent, {} received, {} tantrum drops, {} retransmits, {} repairs ({} not repeated, {} pushes deferred), {} key versions listed, {} stalls, {} peers removed as failed, drops {:?}",
        sum(|r| r.network.datagrams_sent),
        sum(|r| r.network.datagrams_received),
        sum(|r| r.network.tantrum_drops),
        sum(|r| r.network.retransmits_served),
        sum(|r| r.network.ae_repairs),
        sum(|r| r.network.repairs_coalesced),
        sum(|r| r.network.pushes_deferred),
        sum(|r| r.network.ae_keys_listed),
        sum(|r| r.network.stalls),
        sum(|r| r.network.peers_failed),
        dropped
    );
}

/// When the caches reached their final state, after the last writer stopped: for each node,
/// the first local reading of the checksum it ended with (its own readings every
/// [`CHECKSUM_SAMPLE_MS`], no network in between), the latest of them counted from the last
/// writer's stop (0 if a node ended with a value it held before then). Unlike the
/// `identical:` line it leaves out the quiesce's own round trips through the loaded cluster
/// (done marks, checksum queries). `None` unless every node recorded readings; says so when
/// the nodes ended with different checksums.
fn converged_line(results: &[NodeResult]) -> Option<String> {
    let stopped = results.iter().map(|r| r.done_ms).max()?;
    let last: Vec<&ChecksumChange> = results
        .iter()
        .map(|r| r.checksums.last())
        .collect::<Option<_>>()?;
    if last.iter().any(|c| c.checksum != last[0].checksum) {
        return Some("converged: no, the nodes' last checksum readings differ".to_string());
    }
    let per_node: Vec<u64> = last
        .iter()
        .map(|c| c.at_ms.saturating_sub(stopped))
        .collect();
    let secs = |ms: u64| format!("{:.2}", ms as f64 / 1000.0);
    Some(format!(
        "converged: {} s after the last writer stopped (each node's own checksum, read every {CHECKSUM_SAMPLE_MS} ms, first at its final value: {} s)",
        secs(*per_node.iter().max()?),
        per_node
            .iter()
            .map(|&ms| secs(ms))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// When the caches were seen identical, after the last writer stopped: the latest of the
/// nodes' `identical_ms` (each node's first agreeing check of the two that ended its quiesce;
/// checks run every 50 ms, and each asks every peer). `None` unless every node quiesced and
/// says when.
fn identical_line(results: &[NodeResult]) -> Option<String> {
    let stopped = results.iter().map(|r| r.done_ms).max()?;
    let seen: Vec<u64> = results
        .iter()
        .map(|r| r.identical_ms)
        .collect::<Option<_>>()?;
    let last = seen.iter().max()?;
    let per_node: Vec<String> = seen
        .iter()
        .map(|&t| format!("{:.2}", t.saturating_sub(stopped) as f64 / 1000.0))
        .collect();
    Some(format!(
        "identical: {:.2} s after the last writer stopped (checked by each node, every 50 ms: {} s)",
        last.saturating_sub(stopped) as f64 / 1000.0,
        per_node.join(", ")
    ))
}

/// When each node started its workload: milliseconds from its `Node::start` to readiness
/// (the wait for its peers, then its state transfer), and its start relative to the first
/// node's. A node that joins a busy cluster shows how long its copy took under load.
fn ready_line(results: &[NodeResult]) -> String {
    let first = results.iter().map(|r| r.started_ms).min().unwrap_or(0);
    let nodes: Vec<String> = results
        .iter()
        .map(|r| {
            format!(
                "{} {} ms (+{:.2} s)",
                r.node_name,
                r.ready_ms,
                r.started_ms.saturating_sub(first) as f64 / 1000.0
            )
        })
        .collect();
    format!(
        "ready: {} (from Node::start; workload start after the first node's)",
        nodes.join(", ")
    )
}

/// The whole cluster's throughput: operations and writes of every node over the span from
/// the first node's start to the last node's end of workload, and the remote changes the
/// nodes received by the end of the run (after quiesce) per second of that span, with how many
/// were newer than the local copy (with few keys, most are superseded before they arrive).
fn aggregate_line(results: &[NodeResult]) -> String {
    let start = results.iter().map(|r| r.started_ms).min().unwrap_or(0);
    let end = results.iter().map(|r| r.done_ms).max().unwrap_or(0);
    let secs = (end.saturating_sub(start) as f64 / 1000.0).max(1e-3);
    let ops: u64 = results.iter().map(|r| r.ops.total()).sum();
    let writes: u64 = results.iter().map(|r| r.ops.writes()).sum();
    let applied: u64 = results.iter().map(|r| r.network.changes_applied).sum();
    let stale: u64 = results.iter().map(|r| r.network.changes_stale).sum();
    format!(
        "aggregate: {} nodes, {ops} ops in {secs:.1} s = {:.0} ops/s ({:.0} writes/s); remote changes received {:.0}/s, newer than the local copy {:.0}/s (counted to the end of the run)",
        results.len(),
        ops as f64 / secs,
        writes as f64 / secs,
        (applied + stale) as f64 / secs,
        applied as f64 / secs
    )
}

/// One node's per-interval series: `(start s, end s, ops/s, lag p50 ms, lag p99 ms, lag n)`.
/// Each interval's rate is its operations over its own length, so a last partial second is
/// not drawn as a drop.
fn intervals(r: &NodeResult, t0: u64) -> Vec<(f64, f64, f64, f64, f64, u64)> {
    let secs = |at: u64| at.saturating_sub(t0) as f64 / 1000.0;
    let mut prev = r.started_ms;
    let mut out = Vec::new();
    for s in &r.samples {
        let (a, b) = (secs(prev), secs(s.at_ms));
        prev = s.at_ms;
        // Intervals under 200 ms (a workload ending just after a tick) are too short to rate.
        if b - a < 0.2 {
            continue;
        }
        out.push((
            a,
            b,
            s.ops as f64 / (b - a),
            s.lag_p50_us as f64 / 1000.0,
            s.lag_p99_us as f64 / 1000.0,
            s.lag_n,
        ));
    }
    out
}

/// Draws the run: aggregate throughput in bold over faint per-node lines, replication lag as
/// bands across nodes (p50 and p99, min to max, with the median node's p50 as a line, log
/// scale), the moments the writers stopped and the caches converged, and a legend beside the
/// plots rather than over them.
pub fn draw_chart(results: &[NodeResult], path: &Path) -> Result<(), String> {
    let t0 = results.iter().map(|r| r.started_ms).min().unwrap_or(0);
    let secs = |at: u64| at.saturating_sub(t0) as f64 / 1000.0;
    let series: Vec<_> = results.iter().map(|r| intervals(r, t0)).collect();
    let end = series
        .iter()
        .flat_map(|s| s.last().map(|x| x.1))
        .fold(1.0f64, f64::max);
    let stopped = results.iter().map(|r| secs(r.done_ms)).fold(0.0, f64::max);
    let converged = results.iter().all(|r| r.quiesced).then(|| {
        results
            .iter()
            .map(|r| secs(r.finished_ms))
            .fold(0.0, f64::max)
    });
    let t_max = end.max(converged.unwrap_or(0.0)) * 1.02;
    let at = |s: &[(f64, f64, f64, f64, f64, u64)], t: f64| {
        s.iter().find(|x| x.0 <= t && t < x.1).copied()
    };
    // The aggregate: the sum of every node's rate, evaluated every 0.25 s.
    let step = 0.25;
    let grid: Vec<f64> = (0..)
        .map(|i| f64::from(i) * step)
        .take_while(|t| *t <= end)
        .collect();
    let aggregate: Vec<(f64, f64)> = grid
        .iter()
        .map(|&t| (t, series.iter().filter_map(|s| at(s, t)).map(|x| x.2).sum()))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    let ops_max = aggregate.iter().map(|x| x.1).fold(1.0, f64::max);
    // Lag bands: per 0.25 s, min/max over nodes of p50 and of p99, and the median p50.
    struct Band {
        t: f64,
        p50: (f64, f64, f64),
        p99: (f64, f64),
    }
    // The log axis starts at the decade below the smallest lag drawn.
    let lag_min = series
        .iter()
        .flatten()
        .filter(|x| x.5 > 0 && x.3 > 0.0)
        .map(|x| x.3)
        .fold(f64::INFINITY, f64::min);
    let floor = if lag_min.is_finite() {
        10f64.powf(lag_min.log10().floor()).max(0.001)
    } else {
        0.01
    };
    let bands: Vec<Band> = grid
        .iter()
        .filter_map(|&t| {
            let mut p50: Vec<f64> = Vec::new();
            let mut p99: Vec<f64> = Vec::new();
            for x in series.iter().filter_map(|s| at(s, t)).filter(|x| x.5 > 0) {
                p50.push(x.3.max(floor));
                p99.push(x.4.max(floor));
            }
            if p50.is_empty() {
                return None;
            }
            p50.sort_by(f64::total_cmp);
            p99.sort_by(f64::total_cmp);
            Some(Band {
                t,
                p50: (p50[0], p50[p50.len() / 2], p50[p50.len() - 1]),
                p99: (p99[0], p99[p99.len() - 1]),
            })
        })
        .collect();
    let lag_max = bands.iter().map(|b| b.p99.1).fold(1.0, f64::max) * 2.0;

    let err = |e: &dyn std::fmt::Display| format!("chart {}: {e}", path.display());
    let root = SVGBackend::new(path, (1200, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (plots, legend) = root.split_horizontally(960);
    let (top, bottom) = plots.split_vertically(380);
    let title = format!(
        "{} nodes: throughput (ops/s), writes + reads, all nodes",
        results.len()
    );
    let mut ops = ChartBuilder::on(&top)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..ops_max * 1.1)
        .map_err(|e| err(&e))?;
    ops.configure_mesh()
        .x_desc("seconds since the first node started")
        .y_desc("ops/s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(WHITE)
        .draw()
        .map_err(|e| err(&e))?;
    let mut lag = ChartBuilder::on(&bottom)
        .caption(
            "replication lag across nodes (ms, log scale)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, (floor..lag_max).log_scale())
        .map_err(|e| err(&e))?;
    lag.configure_mesh()
        .x_desc("seconds since the first node started")
        .y_desc("ms")
        .light_line_style(WHITE)
        .draw()
        .map_err(|e| err(&e))?;

    let node_color = |i: usize| Palette99::pick(i).mix(0.45);
    for (i, s) in series.iter().enumerate() {
        // Faint per-node steps: each interval's rate held across it.
        let pts = s.iter().flat_map(|x| [(x.0, x.2), (x.1, x.2)]);
        ops.draw_series(LineSeries::new(pts, node_color(i).stroke_width(1)))
            .map_err(|e| err(&e))?;
    }
    let agg = RGBColor(20, 20, 20);
    ops.draw_series(LineSeries::new(
        aggregate.iter().copied(),
        agg.stroke_width(3),
    ))
    .map_err(|e| err(&e))?;

    let p99_fill = RGBColor(230, 120, 40).mix(0.25);
    let p50_fill = RGBColor(40, 110, 220).mix(0.35);
    let area = |lo: Vec<(f64, f64)>, hi: Vec<(f64, f64)>| {
        let mut pts = lo;
        pts.extend(hi.into_iter().rev());
        pts
    };
    // Split the bands where there are gaps (no lag samples) so no area spans them.
    let mut runs: Vec<Vec<&Band>> = Vec::new();
    for b in &bands {
        match runs.last_mut() {
            Some(run) if b.t - run[run.len() - 1].t <= step * 1.5 => run.push(b),
            _ => runs.push(vec![b]),
        }
    }
    for run in &runs {
        let p99 = area(
            run.iter().map(|b| (b.t, b.p99.0)).collect(),
            run.iter().map(|b| (b.t, b.p99.1)).collect(),
        );
        lag.draw_series(std::iter::once(Polygon::new(p99, p99_fill.filled())))
            .map_err(|e| err(&e))?;
        let p50 = area(
            run.iter().map(|b| (b.t, b.p50.0)).collect(),
            run.iter().map(|b| (b.t, b.p50.2)).collect(),
        );
        lag.draw_series(std::iter::once(Polygon::new(p50, p50_fill.filled())))
            .map_err(|e| err(&e))?;
        lag.draw_series(LineSeries::new(
            run.iter().map(|b| (b.t, b.p50.1)),
            RGBColor(40, 110, 220).stroke_width(2),
        ))
        .map_err(|e| err(&e))?;
    }

    // Markers: writers stopped, caches converged.
    let grey = RGBColor(120, 120, 120);
    let green = RGBColor(0, 150, 70);
    let mut marks = vec![(stopped, "writers stopped", grey)];
    if let Some(c) = converged {
        marks.push((c, "converged", green));
    }
    for (k, (t, label, color)) in marks.iter().enumerate() {
        let height = ops_max * (1.06 - 0.06 * k as f64);
        ops.draw_series(std::iter::once(PathElement::new(
            vec![(*t, 0.0), (*t, ops_max * 1.1)],
            color.stroke_width(2),
        )))
        .map_err(|e| err(&e))?;
        ops.draw_series(std::iter::once(Text::new(
            format!(" {label} {t:.1} s"),
            (*t, height),
            ("sans-serif", 13).into_font().color(color),
        )))
        .map_err(|e| err(&e))?;
        lag.draw_series(std::iter::once(PathElement::new(
            vec![(*t, floor), (*t, lag_max)],
            color.stroke_width(2),
        )))
        .map_err(|e| err(&e))?;
    }

    // The legend, beside the plots.
    let font = ("sans-serif", 14).into_font();
    let mut y = 40;
    let line = |text: String, style: ShapeStyle, y: i32, fill: bool| -> Result<(), String> {
        if fill {
            legend
                .draw(&Rectangle::new([(10, y - 6), (40, y + 6)], style))
                .map_err(|e| err(&e))?;
        } else {
            legend
                .draw(&PathElement::new(vec![(10, y), (40, y)], style))
                .map_err(|e| err(&e))?;
        }
        legend
            .draw(&Text::new(text, (48, y - 7), font.clone()))
            .map_err(|e| err(&e))?;
        Ok(())
    };
    line("all nodes (sum)".into(), agg.stroke_width(3), y, false)?;
    y += 24;
    for (i, r) in results.iter().enumerate() {
        let name: String = r.node_name.chars().take(18).collect();
        line(name, node_color(i).stroke_width(2), y, false)?;
        y += 20;
    }
    y = 420;
    line(
        "lag p50, median node".into(),
        RGBColor(40, 110, 220).stroke_width(2),
        y,
        false,
    )?;
    line("p50, min to max".into(), p50_fill.filled(), y + 24, true)?;
    line("p99, min to max".into(), p99_fill.filled(), y + 48, true)?;
    for (k, (_, label, color)) in marks.iter().enumerate() {
        line(
            (*label).to_string(),
            color.stroke_width(2),
            y + 84 + 24 * k as i32,
            false,
        )?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
