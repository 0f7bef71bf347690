//! The overload policy (`overload = "repair" | "block" | "error"`), from the user's side: a
//! writer in its own OS process, configured only through `MCCACHE_*` variables
//! (`Node::start(Config::load())`), writes flat out into a tiny outbound queue
//! (`MCCACHE_QUEUE_MAX=4`); an observer node in this process (`Node::start`) must end with the
//! writer's exact cache, through the targeted repair and not through anti-entropy pulses
//! (`cache_pulse` is 600 s on both nodes). Under sustained overload (a writer that never
//! pauses), keys whose changes found no room must reach the observer while the writer is still
//! writing (`sustained_overload_repairs_while_writing`).
//!
//! The writer is this test binary re-run with `MCCACHE_T12_WRITER=1` (the `writer_role` test
//! does nothing otherwise). Groups 239.255.103.10x, ports 4731x, clusters `t12-overload-*`.
#![forbid(unsafe_code)]

use crate::support::cluster;

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mccache::{Config, Error, Node};

const WRITES: u32 = 100_000;

/// In a writer process (`flag` set): its node, started from `MCCACHE_*` alone, once it has a
/// peer. `None` in the test run itself.
fn joined_writer(flag: &str) -> Option<Node> {
    std::env::var_os(flag)?;
    let node = Node::start(Config::load().expect("config from MCCACHE_*")).expect("start");
    assert!(
        cluster::wait_until(Duration::from_secs(20), || !node.members().is_empty()),
        "no peer"
    );
    Some(node)
}

/// The observer node in this process on `group:port` of cluster `name` (pulses 600 s apart:
/// only the stream and the targeted repair can bring it the writer's keys).
fn observer(group: Ipv4Addr, port: u16, name: &str) -> Node {
    let mut c = Config::default();
    c.interface = Ipv4Addr::LOCALHOST;
    c.multicast_ip = group;
    c.multicast_port = port;
    c.cluster_name = name.to_string();
    c.crypto_key = Some(cluster::KEY.to_string());
    c.daemon_sleep = 0.1;
    c.cache_pulse = 600.0;
    c.cache_ttl = 0.0;
    c.cache_max = 1_000_000;
    c.cache_size = 1 << 30;
    Node::start(c).expect("observer starts")
}

/// This test binary re-run as the writer `role` (with `flag` set), configured only through
/// `MCCACHE_*` variables for the observer's group, port and cluster, plus `extra`.
fn spawn_writer(
    (role, flag): (&str, &str),
    (group, port, name): (Ipv4Addr, u16, &str),
    extra: &[(&str, &str)],
) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .arg("--exact")
        .arg(crate::support::test_name(module_path!(), role))
        .args(["--nocapture", "--test-threads=1"])
        .env(flag, "1")
        .env("MCCACHE_CONFIG", "")
        .env("MCCACHE_INTERFACE", "127.0.0.1")
        .env("MCCACHE_MULTICAST_IP", group.to_string())
        .env("MCCACHE_MULTICAST_PORT", port.to_string())
        .env("MCCACHE_CLUSTER_NAME", name)
        .env("MCCACHE_CRYPTO_KEY", cluster::KEY)
        .env("MCCACHE_DAEMON_SLEEP", "0.1")
        .env("MCCACHE_CACHE_PULSE", "600")
        .env("MCCACHE_CACHE_TTL", "0")
        .env("MCCACHE_CACHE_MAX", "1000000")
        .env("MCCACHE_CACHE_SIZE", "1 GiB")
        .envs(extra.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the writer")
}

/// The writer process: joins, writes `WRITES` keys flat out, reports, then answers `sum`.
#[test]
fn writer_role() {
    let Some(node) = joined_writer("MCCACHE_T12_WRITER") else {
        return;
    };
    let cache = node.cache::<u32, u64>("load").expect("cache");
    // `T12_HOT_KEYS=n`: the writes cycle over n keys instead of writing each key once.
    let hot: u32 = std::env::var("T12_HOT_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(WRITES);
    let (mut ok, mut refused) = (0u64, Vec::new());
    for i in 0..WRITES {
        let k = i % hot;
        match cache.insert(k, u64::from(i) * 7) {
            Ok(_) => ok += 1,
            Err(Error::Overloaded { .. }) => refused.push(k),
            Err(e) => panic!("insert {k}: {e}"),
        }
    }
    // Refused writes stored nothing.
    let present = refused.iter().filter(|k| cache.contains_key(k)).count();
    let m = node.network_metrics();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "wrote {ok} {} {present} {} {}",
        refused.len(),
        m.outbound_overflow,
        m.changes_superseded
    )
    .unwrap();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        match line.unwrap().trim() {
            "sum" => writeln!(out, "sum {} {}", cache.checksum(), cache.len()).unwrap(),
            _ => break,
        }
        out.flush().unwrap();
    }
    node.shutdown();
}

struct Report {
    ok: u64,
    refused: u64,
    refused_present: u64,
    overflow: u64,
    superseded: u64,
    converged: Duration,
}

/// Runs an observer here and a writer process with `policy` and a 4-change queue; returns
/// what the writer reported and how long after its last write the observer held the same
/// cache.
fn run(policy: &str, slot: u8) -> Report {
    run_with(policy, slot, &[("MCCACHE_QUEUE_MAX", "4")])
}

/// [`run`] with the queue bounds in `queue` (`MCCACHE_QUEUE_MAX*` variables).
fn run_with(policy: &str, slot: u8, queue: &[(&str, &str)]) -> Report {
    let port = 47310 + u16::from(slot);
    let group = Ipv4Addr::new(239, 255, 103, 100 + slot);
    let cluster_name = format!("t12-overload-{policy}-{slot}");
    let observer = observer(group, port, &cluster_name);
    let seen = observer.cache::<u32, u64>("load").expect("cache");
    let mut env = vec![
        ("MCCACHE_OVERLOAD", policy),
        ("MCCACHE_OVERLOAD_TIMEOUT", "30"),
    ];
    env.extend_from_slice(queue);
    let mut child = spawn_writer(
        ("writer_role", "MCCACHE_T12_WRITER"),
        (group, port, &cluster_name),
        &env,
    );
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    // libtest prints its own text ("running 1 test", "test writer_role ... " without a line
    // break): skip to ours.
    let mut read = |prefix: &str| -> Vec<u64> {
        loop {
            let mut line = String::new();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "writer exited before saying {prefix:?}"
            );
            if let Some(at) = line.find(prefix) {
                return line[at + prefix.len()..]
                    .split_whitespace()
                    .map(|x| x.parse().unwrap())
                    .collect();
            }
        }
    };
    let w = read("wrote ");
    let done = Instant::now();
    let mut last = Vec::new();
    let same = cluster::wait_until(Duration::from_secs(20), || {
        writeln!(stdin, "sum").unwrap();
        stdin.flush().unwrap();
        last = read("sum ");
        last == [seen.checksum(), seen.len() as u64]
    });
    let converged = done.elapsed();
    let _ = writeln!(stdin, "quit");
    drop(stdin);
    let _ = child.wait();
    observer.shutdown();
    assert!(
        same,
        "{policy}: observer {} entries / {}, writer {last:?} after {converged:?}",
        seen.len(),
        seen.checksum()
    );
    eprintln!(
        "overload = {policy}: {} written, {} refused, overflow {}; identical {converged:?} after the last write",
        w[0], w[1], w[3]
    );
    Report {
        ok: w[0],
        refused: w[1],
        refused_present: w[2],
        overflow: w[3],
        superseded: w[4],
        converged,
    }
}

#[test]
fn repair_stores_every_write_and_repairs_at_once() {
    let r = run("repair", 1);
    assert_eq!(r.refused, 0, "repair never refuses");
    assert_eq!(r.ok, u64::from(WRITES));
    assert!(
        r.overflow > 0,
        "a 4-change queue overflowed under flat-out writes"
    );
    // Without the targeted repair the next pulse would come 600 s later.
    assert!(r.converged < Duration::from_secs(20));
}

#[test]
fn block_waits_for_room_and_loses_nothing() {
    let r = run("block", 2);
    assert_eq!(r.refused, 0, "a 30 s timeout is never reached");
    assert_eq!(r.ok, u64::from(WRITES));
    assert_eq!(r.overflow, 0, "writers waited instead of overflowing");
}

/// What `overload = "error"` must show on a queue too small for flat-out writes (`queue`
/// says which bound): some writes refused, the others stored, and no refused one stored.
fn assert_some_refused_none_stored(r: &Report, queue: &str) {
    assert!(r.refused > 0, "{queue} refused some flat-out writes");
    assert!(r.ok > 0);
    assert_eq!(r.ok + r.refused, u64::from(WRITES));
    assert_eq!(r.refused_present, 0, "a refused write stored nothing");
}

#[test]
fn error_refuses_writes_that_find_no_room() {
    assert_some_refused_none_stored(&run("error", 3), "a 4-change queue");
}

/// The queue is full at `queue_max_bytes` too: with room for a million changes but only 256
/// bytes (about five of these small changes), flat-out writes are refused under `error`, and
/// what was stored still reaches the observer.
#[test]
fn the_byte_bound_fills_the_queue_before_the_change_count() {
    let r = run_with(
        "error",
        5,
        &[
            ("MCCACHE_QUEUE_MAX", "1000000"),
            ("MCCACHE_QUEUE_MAX_BYTES", "256"),
        ],
    );
    assert_some_refused_none_stored(&r, "a 256-byte queue with room for a million changes");
}

/// A writer that keeps rewriting a few hot keys flat out queues many changes per key while
/// its network thread is behind: of one key's changes in a batch, only the newest is sent, and
/// the observer still ends with the writer's exact cache.
#[test]
fn hot_keys_written_flat_out_skip_superseded_changes_and_converge() {
    let r = run_with("repair", 6, &[("T12_HOT_KEYS", "20")]);
    assert_eq!(r.ok, u64::from(WRITES));
    assert!(
        r.superseded > 0,
        "100,000 writes over 20 keys flat out: some changes were superseded in a batch"
    );
}

/// Markers the sustained writer writes once each, one every 100 ms, while it overloads.
const MARKERS: u32 = 20;

/// The writer of `sustained_overload_repairs_while_writing`: joins, then writes 1 KiB values
/// flat out over 100 hot keys for 6 s, with [`MARKERS`] keys written once each during the
/// first 2 s; reports, then waits for `quit`.
#[test]
fn sustained_writer_role() {
    let Some(node) = joined_writer("MCCACHE_T12_SUSTAINED") else {
        return;
    };
    let cache = node.cache::<u32, Vec<u8>>("load").expect("cache");
    let value = vec![7u8; 1024];
    let start = Instant::now();
    let (mut i, mut marker) = (0u32, 0u32);
    while start.elapsed() < Duration::from_secs(6) {
        cache
            .insert(i % 100, value.clone())
            .expect("repair never refuses");
        i = i.wrapping_add(1);
        if marker < MARKERS
            && start.elapsed() >= Duration::from_millis(1_000 + 100 * u64::from(marker))
        {
            cache.insert(1_000 + marker, vec![1]).expect("marker");
            marker += 1;
        }
    }
    let m = node.network_metrics();
    let mut out = std::io::stdout().lock();
    writeln!(out, "done {i} {}", m.outbound_overflow).unwrap();
    out.flush().unwrap();
    let _ = std::io::stdin().lock().lines().next();
    node.shutdown();
}

/// Under sustained overload (a writer that never pauses, a queue that never drains), a key
/// whose change found no room still reaches the peers while the writer keeps writing: the
/// targeted repair runs every 100 ms even with the queue full, not only once it drains.
#[test]
fn sustained_overload_repairs_while_writing() {
    let (group, port) = (Ipv4Addr::new(239, 255, 103, 104), 47314);
    let cluster_name = "t12-overload-sustained";
    let observer = observer(group, port, cluster_name);
    let seen = observer.cache::<u32, Vec<u8>>("load").expect("cache");
    let mut child = spawn_writer(
        ("sustained_writer_role", "MCCACHE_T12_SUSTAINED"),
        (group, port, cluster_name),
        // Each 1 KiB change takes three datagrams: the writer outruns its network thread. A
        // 64-change queue is taken in batches too small to thin (a batch of 256 or more would
        // send only the newest change of each of the 100 keys, and the queue would never
        // overflow).
        &[("MCCACHE_PACKET_MTU", "576"), ("MCCACHE_QUEUE_MAX", "64")],
    );
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Read to the end: the writer's test harness prints after the report.
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            if let Some(at) = line.find("done ") {
                let _ = tx.send(line[at + 5..].to_string());
            }
        }
    });
    let markers = || {
        (0..MARKERS)
            .filter(|m| seen.contains_key(&(1_000 + m)))
            .count()
    };
    // Poll until the writer reports it stopped (bounded: it writes for 6 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut at_done, mut report) = (0, String::new());
    while Instant::now() < deadline {
        let count = markers();
        if let Ok(r) = rx.try_recv() {
            (at_done, report) = (count, r);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = writeln!(stdin, "quit");
    drop(stdin);
    let _ = child.wait();
    observer.shutdown();
    assert!(!report.is_empty(), "the writer reported within 60 s");
    let overflow: u64 = report.split_whitespace().nth(1).unwrap().parse().unwrap();
    eprintln!(
        "sustained overload: writes and overflows {report}; {at_done} of {MARKERS} markers seen while writing"
    );
    assert!(overflow > 0, "the queue overflowed: {report}");
    assert_eq!(
        at_done, MARKERS as usize,
        "every marker reached the observer while the writer kept writing"
    );
}
