//! Memory per entry: fills 1,000,000 u64 → u64 entries into each cache, each in a fresh child
//! process, and prints the growth of the resident set per entry, side by side. For mccache it
//! also prints the serialized key + value bytes per entry and the overhead beyond them.
//!
//! Run: `cargo bench --bench memory` (optionally `-- <entries>`).

use std::process::Command;

const CACHES: [&str; 3] = ["mccache", "quick_cache", "moka"];

/// Resident set size of this process in bytes (Linux: `/proc/self/statm`).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // The page size of every Linux target this bench runs on.
    pages * 4096
}

/// Fills `n` entries into `cache` and prints the RSS growth per entry. The caches are leaked
/// on purpose: the process ends right after, and dropping them would only cost time.
fn child(cache: &str, n: u64) {
    let before = rss();
    match cache {
        "mccache" => {
            let mut config = mccache::Config::default();
            config.cache_ttl = 0.0;
            config.cache_max = n as usize;
            config.cache_size = 1 << 40;
            let node = mccache::Node::start_local(config).expect("valid config");
            let c: mccache::Cache<u64, u64> = node.cache("mem").expect("fresh node");
            for k in 0..n {
                c.insert(k, k).expect("u64 pairs fit");
            }
            let m = c.metrics();
            report(cache, before, rss(), m.entries, Some(m.bytes));
            std::mem::forget((c, node));
        }
        "quick_cache" => {
            let c = quick_cache::sync::Cache::<u64, u64>::new(n as usize);
            for k in 0..n {
                c.insert(k, k);
            }
            report(cache, before, rss(), c.len() as u64, None);
            std::mem::forget(c);
        }
        _ => {
            let c = moka::sync::Cache::<u64, u64>::new(n);
            for k in 0..n {
                c.insert(k, k);
            }
            c.run_pending_tasks();
            report(cache, before, rss(), c.entry_count(), None);
            std::mem::forget(c);
        }
    }
}

fn report(cache: &str, before: u64, after: u64, held: u64, serialized: Option<u64>) {
    let per = after.saturating_sub(before) as f64 / held.max(1) as f64;
    match serialized {
        Some(bytes) => {
            let ser = bytes as f64 / held.max(1) as f64;
            println!(
                "{cache:<12} {held:>9} entries  {per:>7.1} B/entry RSS  ({ser:.1} B serialized key+value, {:.1} B beyond)",
                per - ser
            );
        }
        None => println!("{cache:<12} {held:>9} entries  {per:>7.1} B/entry RSS"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let cache = &args[i + 1];
        let n = args[i + 2].parse().expect("entry count");
        child(cache, n);
        return;
    }
    // `cargo bench` passes `--bench`; a bare number sets the entry count.
    let n: u64 = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let exe = std::env::current_exe().expect("own path");
    println!("RSS growth per u64 -> u64 entry, {n} entries, one fresh process per cache:");
    for cache in CACHES {
        let out = Command::new(&exe)
            .args(["--child", cache, &n.to_string()])
            .output()
            .expect("spawn child");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            eprintln!("{cache}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}
