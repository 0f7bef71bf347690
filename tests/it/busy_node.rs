//! A node whose outbound path is jammed still answers its own metrics, from the user's side.
//!
//! The peer is a separate OS process (this test binary re-run as `peer_role`, configured only
//! through `MCCACHE_*` variables), stopped with SIGSTOP once it has joined: it no longer
//! acknowledges anything, so the writer's flow-control window fills and its outbox stays full
//! until the peer is suspected (3 heartbeats of 5 s). Meanwhile `Node::network_metrics` must
//! come from the network thread, fresh: it used to take requests only while the outbox had
//! room, so under overload (or a targeted repair) the call waited its 2 s out and returned the
//! previous snapshot. Group 239.255.93.200, port 47700 (`cluster::config`), the peer
//! configured from the same settings through `cluster::env_of`.
#![forbid(unsafe_code)]

use crate::support::cluster;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mccache::Node;

/// 239.255.93.200 ([`cluster::config`]).
const GROUP: u8 = 200;
const PORT: u16 = 47700;
const FLAG: &str = "BUSY_NODE_PEER";

/// The peer process: joins, says so, then waits for its stdin to close.
#[test]
fn peer_role() {
    if std::env::var_os(FLAG).is_none() {
        return;
    }
    let (node, _cache) = cluster::member_process_joined("busy");
    for _ in std::io::stdin().lock().lines() {}
    node.shutdown();
}

/// Kills the peer (after letting it run again) when the test ends, whatever happened.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-CONT", &pid]).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn metrics_are_fresh_while_the_outbox_is_full() {
    let mut c = cluster::config(GROUP, PORT);
    c.daemon_sleep = 5.0;
    c.cache_pulse = 600.0;
    c.cache_max = 1_000_000;
    c.cache_size = 1 << 30;
    let mut peer = Peer(
        Command::new(std::env::current_exe().unwrap())
            .arg("--exact")
            .arg(crate::support::test_name(module_path!(), "peer_role"))
            .args(["--nocapture", "--test-threads=1"])
            .env(FLAG, "1")
            .envs(cluster::env_of(&c))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the peer"),
    );
    let node = Node::start(c).expect("the writer's node starts");
    let cache = node.cache::<u32, u64>("busy").expect("cache");
    // The test harness's own lines come first ("test peer_role ... " starts the line).
    let joined = std::io::BufReader::new(peer.0.stdout.as_mut().unwrap())
        .lines()
        .map_while(Result::ok)
        .any(|l| l.trim_end().ends_with("joined"));
    assert!(joined, "the peer did not join");
    assert!(
        cluster::wait_until(Duration::from_secs(20), || node.members().len() == 1),
        "the writer never saw the peer"
    );
    let before = node.network_metrics();
    assert_eq!(before.outbound_queue, 0);

    let stopped = Command::new("kill")
        .args(["-STOP", &peer.0.id().to_string()])
        .status()
        .expect("kill -STOP");
    assert!(stopped.success());
    // Far more than a window of data messages (1,024 of ~40 changes) plus the outbox (4,096).
    for k in 0..300_000u32 {
        cache.insert(k, u64::from(k)).unwrap();
    }
    assert!(
        cluster::wait_until(Duration::from_secs(5), || {
            node.network_metrics().outbound_queue >= 1_000
        }),
        "the outbox never filled"
    );
    let jammed = node.network_metrics();
    assert!(
        jammed.changes_sent > before.changes_sent && jammed.outbound_queue >= 1_000,
        "stale metrics while the outbox is full: sent {} (before {}), outbox {}",
        jammed.changes_sent,
        before.changes_sent,
        jammed.outbound_queue
    );
    assert!(
        !node.members().iter().any(|m| m.suspect),
        "the peer was suspected already: the outbox was not jammed throughout"
    );
    drop(peer);
    node.shutdown();
}
