//! The memcached tier's costs, printed as figures: a local hit, a memcached hit (a local miss
//! read through), a load under memcached's lease, insert throughput with the tier on and off,
//! and a plain memcached `get` round trip over one TCP connection for comparison.
//!
//! `cargo bench --features memcached --bench memcached` (starts its own memcached on
//! 127.0.0.1:47670 with 64 MiB; needs the `memcached` binary).

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mccache::{Config, Node};

const PORT: u16 = 47670;
const N: u32 = 20_000;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start() -> Option<Server> {
    let mut cmd = Command::new("memcached");
    cmd.args([
        "-l",
        "127.0.0.1",
        "-p",
        &PORT.to_string(),
        "-m",
        "64",
        "-U",
        "0",
    ]);
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if root {
        cmd.args(["-u", "root"]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(child);
    let end = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", PORT)).is_err() {
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(server)
}

fn node(backing: bool) -> Node {
    Node::start_local({
        let mut c = Config::default();
        c.interface = Ipv4Addr::LOCALHOST;
        c.cache_max = 1_000_000;
        c.cache_size = 1 << 30;
        c.cache_ttl = 0.0;
        c.cluster_name = "t15-bench".into();
        c.backing = backing.then(|| format!("memcached://127.0.0.1:{PORT}"));
        c
    })
    .expect("node")
}

fn report(what: &str, n: u32, elapsed: Duration) {
    let per = elapsed.as_secs_f64() / f64::from(n);
    println!(
        "{what:<52} {:>10.2} us/op {:>12.0} ops/s",
        per * 1e6,
        1.0 / per
    );
}

fn main() {
    let Some(_server) = start() else {
        eprintln!(
            "memcached bench: SKIPPED, could not start memcached (apt-get install memcached)"
        );
        return;
    };
    let value = "v".repeat(100);

    // Write-through throughput (each insert also sets memcached) against the tier off.
    let off = node(false);
    let c_off = off.cache::<u32, String>("bench").unwrap();
    let t = Instant::now();
    for i in 0..N {
        c_off.insert(i, value.clone()).unwrap();
    }
    report("insert, tier off", N, t.elapsed());

    let writer = node(true);
    let c_w = writer.cache::<u32, String>("bench").unwrap();
    let t = Instant::now();
    for i in 0..N {
        c_w.insert(i, value.clone()).unwrap();
    }
    report("insert, tier on (write-through ms)", N, t.elapsed());

    // Local hits never touch memcached.
    let hits = N * 50;
    let t = Instant::now();
    for i in 0..hits {
        std::hint::black_box(c_w.get(&(i % N)));
    }
    report("get, local hit, tier on", hits, t.elapsed());
    let t = Instant::now();
    for i in 0..hits {
        std::hint::black_box(c_off.get(&(i % N)));
    }
    report("get, local hit, tier off", hits, t.elapsed());

    // A fresh node: every first get is a local miss read from memcached (and filled).
    let reader = node(true);
    let c_r = reader.cache::<u32, String>("bench").unwrap();
    let t = Instant::now();
    for i in 0..N {
        assert!(c_r.get(&i).is_some());
    }
    report(
        "get, local miss -> memcached hit (mg + fill)",
        N,
        t.elapsed(),
    );
    print_servers("after the read-through phase", &reader);

    // Loads under the lease: mg N (win) + loader + ms C + fill.
    let c_l = reader.cache::<u32, String>("loads").unwrap();
    let t = Instant::now();
    for i in 0..N {
        c_l.get_or_insert_with(i, || value.clone()).unwrap();
    }
    report(
        "get_or_insert_with, miss everywhere (lease load)",
        N,
        t.elapsed(),
    );
    let c_off_l = off.cache::<u32, String>("loads").unwrap();
    let t = Instant::now();
    for i in 0..N {
        c_off_l.get_or_insert_with(i, || value.clone()).unwrap();
    }
    report("get_or_insert_with, miss, tier off", N, t.elapsed());

    // A plain memcached client's get: one connection, text protocol, one round trip.
    let mut s = TcpStream::connect(("127.0.0.1", PORT)).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(format!("set plain 0 0 {}\r\n{value}\r\n", value.len()).as_bytes())
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let t = Instant::now();
    for _ in 0..N {
        s.write_all(b"get plain\r\n").unwrap();
        // VALUE line, data line, END.
        for _ in 0..3 {
            line.clear();
            r.read_line(&mut line).unwrap();
        }
    }
    report("plain memcached get (one TCP connection)", N, t.elapsed());

    print_servers("at the end", &reader);
}

fn print_servers(when: &str, node: &Node) {
    for tier in node.backing_metrics() {
        for s in tier.servers {
            println!(
                "  reader's exchanges with {} {when}: {} requests, avg {:.1} us, p99 <= {} us, max {} us",
                s.server, s.requests, s.latency_avg_us, s.latency_p99_us, s.latency_max_us
            );
        }
    }
}
