//! `mccache report <dir>`: reads the node results of a run, prints a per-node table and two
//! coherence verdicts, and draws `chart.svg` (throughput and replication lag over time).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::result::NodeResult;

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
    println!(
        "network: {} datagrams sent, {} received, {} tantrum drops, {} retransmits, {} repairs, drops {:?}",
        sum(|r| r.network.datagrams_sent),
        sum(|r| r.network.datagrams_received),
        sum(|r| r.network.tantrum_drops),
        sum(|r| r.network.retransmits_served),
        sum(|r| r.network.ae_repairs),
        dropped
    );
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

/// Draws throughput (ops/s) and replication lag (p50 and p99, ms) per node over time.
pub fn draw_chart(results: &[NodeResult], path: &Path) -> Result<(), String> {
    let t0 = results
        .iter()
        .flat_map(|r| r.samples.first().map(|_| r.started_ms))
        .min()
        .unwrap_or(0);
    let secs = |at: u64| at.saturating_sub(t0) as f64 / 1000.0;
    let t_max = results
        .iter()
        .flat_map(|r| r.samples.iter().map(|s| secs(s.at_ms)))
        .fold(1.0f64, f64::max);
    let ops_max = results
        .iter()
        .flat_map(|r| r.samples.iter().map(|s| s.ops))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let lag_max = results
        .iter()
        .flat_map(|r| r.samples.iter().map(|s| s.lag_p99_us))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        / 1000.0;
    let err = |e: &dyn std::fmt::Display| format!("chart {}: {e}", path.display());
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(350);
    let mut ops = ChartBuilder::on(&top)
        .caption("throughput per node (ops/s)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..ops_max * 1.1)
        .map_err(|e| err(&e))?;
    ops.configure_mesh()
        .x_desc("seconds")
        .draw()
        .map_err(|e| err(&e))?;
    let mut lag = ChartBuilder::on(&bottom)
        .caption(
            "replication lag p50 (solid) and p99 (thin), ms",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..lag_max * 1.1)
        .map_err(|e| err(&e))?;
    lag.configure_mesh()
        .x_desc("seconds")
        .draw()
        .map_err(|e| err(&e))?;
    for (i, r) in results.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        ops.draw_series(LineSeries::new(
            r.samples.iter().map(|s| (secs(s.at_ms), s.ops as f64)),
            color.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label(r.node_name.clone())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        let with_lag: Vec<_> = r.samples.iter().filter(|s| s.lag_n > 0).collect();
        lag.draw_series(LineSeries::new(
            with_lag
                .iter()
                .map(|s| (secs(s.at_ms), s.lag_p50_us as f64 / 1000.0)),
            color.stroke_width(2),
        ))
        .map_err(|e| err(&e))?;
        lag.draw_series(LineSeries::new(
            with_lag
                .iter()
                .map(|s| (secs(s.at_ms), s.lag_p99_us as f64 / 1000.0)),
            color.stroke_width(1),
        ))
        .map_err(|e| err(&e))?;
    }
    ops.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
