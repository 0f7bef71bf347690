//! The network thread sleeps while the node's writers send their own changes (the express
//! lane): a datagram sent wakes no thread of the sender.
//!
//! A UDP socket turns writable each time the kernel frees a datagram it sent. While the
//! runtime watched the sockets for writability, each such edge woke the network thread, which
//! found nothing to do: a wake-up per datagram sent, on a core the datagram's receivers on the
//! same host were waiting for. The thread's voluntary context switches (`/proc`) count its
//! wake-ups; no time is measured.
//!
//! One node per process (this test binary holds this one test): group 239.255.107.1, port
//! 47950, cluster `t14-wakeups`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use mccache::{Config, Node};

/// Writes, one at a time, each after the previous one's tail announcement (2 ms) has gone.
const WRITES: u64 = 200;
const GAP: Duration = Duration::from_millis(5);

/// The status file of the node's network thread (the only one named so in this process),
/// once the thread has named itself (bounded poll).
fn network_thread() -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
        let found = tasks.flatten().find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "mccache-net")
        });
        if let Some(task) = found {
            return task.path().join("status").display().to_string();
        }
        assert!(Instant::now() < deadline, "no thread named mccache-net");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Times the thread went to sleep and was woken again.
fn wakeups(status: &str) -> u64 {
    let text = std::fs::read_to_string(status).expect("the thread's status");
    let line = (text.lines())
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .expect("voluntary_ctxt_switches");
    line.trim().parse().expect("a count")
}

#[test]
fn a_writers_own_sends_do_not_wake_the_network_thread() {
    let mut config = Config::default();
    config.interface = Ipv4Addr::LOCALHOST;
    config.multicast_ip = Ipv4Addr::new(239, 255, 107, 1);
    config.multicast_port = 47950;
    config.cluster_name = "t14-wakeups".into();
    config.crypto_key = Some(mccache::generate_key());
    config.cache_ttl = 0.0;
    let node = Node::start(config).expect("a loopback node starts");
    let cache = node.cache::<u64, u64>("w").expect("the cache opens");
    let status = network_thread();

    // The thread's wake-ups per write: the write's data message leaves from the writer's
    // thread, and the thread wakes once, for the tail announcement 2 ms after it.
    let (w0, m0) = (wakeups(&status), node.network_metrics());
    for k in 0..WRITES {
        cache.insert(k, k).expect("insert");
        std::thread::sleep(GAP);
    }
    let (w1, m1) = (wakeups(&status), node.network_metrics());

    let express = m1.express_changes - m0.express_changes;
    let data = m1.data_messages_sent - m0.data_messages_sent;
    assert!(
        express >= WRITES * 9 / 10,
        "the writes went out through the express lane ({express} of {WRITES})"
    );
    assert!(data >= express, "each went out in a data message ({data})");
    // Once per write (its tail) plus housekeeping; a wake-up per datagram sent made it at
    // least twice per write (the data message and the tail's own datagram).
    let woken = w1 - w0;
    eprintln!("{WRITES} writes: {express} express, {data} data messages, {woken} wake-ups");
    assert!(
        woken <= WRITES * 3 / 2,
        "the network thread woke {woken} times for {WRITES} writes (express {express})"
    );
    node.shutdown();
}
