//! The network thread sleeps while the node's writers send their own changes (the express
//! lane): a datagram sent wakes no thread of the sender.
//!
//! A UDP socket turns writable each time the kernel frees a datagram it sent. While the
//! runtime watched the sockets for writability, each such edge woke the network thread, which
//! found nothing to do: a wake-up per datagram sent, on a core the datagram's receivers on the
//! same host were waiting for. The thread's voluntary context switches (`/proc`) count its
//! wake-ups; no time is measured.
//!
//! The application is this test binary run again (`T14_ROLE` set, see [`app`]): one process,
//! configured only by `MCCACHE_*` variables, writing through `mccache::get_cache`, so its
//! default node is the only node (and its network thread the only `mccache-net`) in it.
//! Group 239.255.107.1, port 47950, cluster `t14-wakeups`.

use crate::support::app_env;

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Writes, one at a time, each after the previous one's tail announcement (2 ms) has gone.
const WRITES: u64 = 200;
const GAP: Duration = Duration::from_millis(5);

/// The status file of the process's network thread, once the thread has named itself
/// (bounded poll).
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

/// The application process: writes `WRITES` keys one at a time through `get_cache` and prints
/// `@@ <express changes> <data messages> <wake-ups>` of those writes.
#[test]
#[ignore = "the application process of the test below, which starts it"]
fn app() {
    if std::env::var_os("T14_ROLE").is_none() {
        return;
    }
    let cache = mccache::get_cache::<u64, u64>("w");
    let node = mccache::default_node().expect("the default node");
    let status = network_thread();
    let (w0, m0) = (wakeups(&status), node.network_metrics());
    for k in 0..WRITES {
        cache.insert(k, k).expect("insert");
        std::thread::sleep(GAP);
    }
    let (w1, m1) = (wakeups(&status), node.network_metrics());
    println!(
        "@@ {} {} {}",
        m1.express_changes - m0.express_changes,
        m1.data_messages_sent - m0.data_messages_sent,
        w1 - w0
    );
}

#[test]
fn a_writers_own_sends_do_not_wake_the_network_thread() {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary path"));
    cmd.arg(crate::support::test_name(module_path!(), "app"))
        .args(["--exact", "--ignored", "--nocapture", "--quiet"])
        .env("T14_ROLE", "app")
        .stdout(Stdio::piped());
    // Only what the test sets: nothing inherited from the environment the tests run in.
    app_env::clear_mccache_vars(&mut cmd);
    let env = [
        ("MCCACHE_CONFIG", String::new()),
        ("MCCACHE_INTERFACE", Ipv4Addr::LOCALHOST.to_string()),
        ("MCCACHE_MULTICAST_IP", "239.255.107.1".into()),
        ("MCCACHE_MULTICAST_PORT", "47950".into()),
        ("MCCACHE_CLUSTER_NAME", "t14-wakeups".into()),
        ("MCCACHE_CRYPTO_KEY", mccache::generate_key()),
        ("MCCACHE_CACHE_TTL", "0".into()),
    ];
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the application process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the application failed:\n{stdout}");
    let line = (stdout.lines())
        .find_map(|l| l.strip_prefix("@@ "))
        .unwrap_or_else(|| panic!("no report from the application:\n{stdout}"));
    let n: Vec<u64> = line
        .split(' ')
        .map(|x| x.parse().expect("a count"))
        .collect();
    let [express, data, woken] = n[..] else {
        panic!("a report of three counts: {line:?}")
    };
    eprintln!("{WRITES} writes: {express} express, {data} data messages, {woken} wake-ups");
    assert!(
        express >= WRITES * 9 / 10,
        "the writes went out through the express lane ({express} of {WRITES})"
    );
    assert!(data >= express, "each went out in a data message ({data})");
    // Once per write (its tail) plus housekeeping; a wake-up per datagram sent made it at
    // least twice per write (the data message and the tail's own datagram).
    assert!(
        woken <= WRITES * 3 / 2,
        "the network thread woke {woken} times for {WRITES} writes (express {express})"
    );
}
