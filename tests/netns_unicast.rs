//! Unicast where multicast does not work: three `fault_node` processes (examples/fault_node.rs)
//! in their own network namespaces on a bridge whose nftables rules drop every multicast frame.
//! Peers are DNS names resolved from the namespaces' hosts files (`/etc/netns/<ns>/hosts`,
//! written and removed by the test). First multicast is shown not to form a cluster there; then
//! unicast converges with 5 % and 20 % loss (nftables `numgen`, per copy) and through a killed
//! and restarted node, and a node started later is found.
//!
//! Needs root, iproute2 and nftables; otherwise it prints why it is skipped and passes.
//! Namespaces `mcu-<pid>-<n>-<role>`, addresses 10.211.0.0/24, port 47260, cluster `t11-netns`.

#[path = "support/netns.rs"]
mod netns;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const PORT: u16 = 47260;
const ANSWER: Duration = Duration::from_secs(30);
/// Bound on convergence after writes, in seconds (10 pulses of 1 s).
const CONVERGE: Duration = Duration::from_secs(10);

fn fault_node_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("profile dir");
    let target_dir = profile_dir.parent().expect("target dir");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "build",
        "--quiet",
        "--example",
        "fault_node",
        "--target-dir",
    ])
    .arg(target_dir)
    .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().expect("cargo build").success(),
        "build fault_node"
    );
    profile_dir.join("examples").join("fault_node")
}

/// One `fault_node` process in a namespace; killed and reaped on drop.
struct Proc {
    name: String,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn start(bin: &PathBuf, ns: &str, addr: &str, name: &str, env: &[(&str, String)]) -> Proc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(bin)
            .env("MCCACHE_CONFIG", "")
            .env("MCCACHE_INTERFACE", addr)
            .env("MCCACHE_MULTICAST_IP", "239.255.102.1")
            .env("MCCACHE_MULTICAST_PORT", PORT.to_string())
            .env("MCCACHE_DAEMON_SLEEP", "0.2")
            .env("MCCACHE_CACHE_PULSE", "1")
            .env("MCCACHE_CRYPTO_KEY", KEY)
            .env("MCCACHE_CACHE_MAX", "1000000")
            .env("MCCACHE_CACHE_SIZE", "1 GiB")
            .env("MCCACHE_CACHE_TTL", "0")
            .env("MCCACHE_NODE_NAME", name)
            .env("MCCACHE_CLUSTER_NAME", "t11-netns");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fault_node");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = Proc {
            name: name.to_string(),
            child,
            stdin,
            lines,
        };
        let hello = p.read();
        assert!(hello.get("error").is_none(), "{name}: {hello}");
        p
    }

    fn read(&mut self) -> Value {
        let line = self
            .lines
            .recv_timeout(ANSWER)
            .unwrap_or_else(|e| panic!("{}: no answer ({e})", self.name));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{}: {line:?}: {e}", self.name))
    }

    fn ask(&mut self, cmd: &str) -> Value {
        writeln!(self.stdin, "{cmd}")
            .and_then(|()| self.stdin.flush())
            .unwrap();
        let v = self.read();
        assert!(v.get("error").is_none(), "{}: {cmd}: {v}", self.name);
        v
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Hosts files written for the namespaces; removed on drop (before the lab deletes them).
struct HostsFiles(Vec<PathBuf>);

impl HostsFiles {
    fn write(&mut self, ns: &str, text: &str) {
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), text).unwrap();
        self.0.push(dir);
    }
}

impl Drop for HostsFiles {
    fn drop(&mut self) {
        for dir in self.0.drain(..) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn nft(ns: &str, script: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nft");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The bridge's rules: multicast frames never cross it; `loss` percent of the unicast copies
/// to the test port are dropped, each copy on its own.
fn bridge_rules(ns: &str, loss: u32) {
    nft(
        ns,
        &format!(
            "add table bridge mcu\n\
             delete table bridge mcu\n\
             table bridge mcu {{\n\
             chain mcufilter {{\n\
             type filter hook forward priority 0;\n\
             ether type ip ip daddr 224.0.0.0/4 counter drop\n\
             ether type ip udp dport {PORT} numgen random mod 100 < {loss} counter drop\n\
             }}\n\
             }}\n"
        ),
    );
}

fn digests(procs: &mut [Proc]) -> Vec<Value> {
    procs.iter_mut().map(|p| p.ask("digest")).collect()
}

/// Polls until every node holds `len` entries with one checksum and sees all others.
fn converge(procs: &mut [Proc], len: usize, what: &str) {
    let start = Instant::now();
    let n = procs.len();
    loop {
        let ds = digests(procs);
        let same = ds.iter().all(|d| {
            d["len"] == len && d["checksum"] == ds[0]["checksum"] && d["members"] == n - 1
        });
        if same {
            eprintln!("{what}: converged in {:?}", start.elapsed());
            return;
        }
        assert!(start.elapsed() < CONVERGE, "{what}: no convergence: {ds:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn write(procs: &mut [Proc], who: &[usize], n: usize, prefix: &str) {
    for &i in who {
        let v = procs[i].ask(&format!("write {n} {prefix}{i}-"));
        assert_eq!(v["written"], n);
    }
}

#[test]
fn unicast_converges_where_multicast_is_dropped_under_loss_and_restarts() {
    let have_nft = Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_nft {
        eprintln!("skipped: needs nftables (apt-get install nftables)");
        return;
    }
    let Some(mut lab) = netns::Lab::with_prefix("netns_unicast", "mcu") else {
        return;
    };
    let bin = fault_node_bin();
    let br_ns = lab.ns("br");
    let bridge = lab.bridge(&br_ns);
    let mut nodes = Vec::new();
    for i in 0..4 {
        let ns = lab.ns(&format!("u{i}"));
        let addr = format!("10.211.0.{}", i + 1);
        let dev = lab.attach(&bridge, &ns, &format!("{addr}/24"), 1500);
        netns::ip(&["-n", &ns.name, "route", "add", "224.0.0.0/4", "dev", &dev]);
        nodes.push((ns.name.clone(), addr));
    }
    bridge_rules(&br_ns.name, 0);
    // `mcu-cache` is the service name: one address per replica, as a headless Service answers.
    // The fourth node is not in it yet.
    let mut hosts = HostsFiles(Vec::new());
    let service = |n: usize| -> String {
        let mut t = String::from("127.0.0.1 localhost\n");
        for (_, a) in nodes.iter().take(n) {
            t.push_str(&format!("{a} mcu-cache\n"));
        }
        t
    };
    for (ns, _) in &nodes {
        hosts.write(ns, &service(3));
    }

    // Multicast across this bridge: the nodes never meet.
    {
        let mut mc: Vec<Proc> = (0..2)
            .map(|i| Proc::start(&bin, &nodes[i].0, &nodes[i].1, &format!("m{i}"), &[]))
            .collect();
        std::thread::sleep(Duration::from_secs(2));
        let ds = digests(&mut mc);
        assert!(
            ds.iter().all(|d| d["members"] == 0),
            "multicast is blocked: {ds:?}"
        );
    }

    let unicast = [
        ("MCCACHE_TRANSPORT", "unicast".to_string()),
        ("MCCACHE_PEERS", format!("mcu-cache:{PORT}")),
        ("MCCACHE_BIND_PORT", PORT.to_string()),
        ("MCCACHE_DISCOVERY_INTERVAL", "0.5".to_string()),
    ];
    let start = |i: usize| Proc::start(&bin, &nodes[i].0, &nodes[i].1, &format!("u{i}"), &unicast);
    let mut procs: Vec<Proc> = (0..3).map(start).collect();
    converge(&mut procs, 0, "unicast membership");
    let mut total = 0;
    for (loss, round) in [(5, "l5"), (20, "l20")] {
        bridge_rules(&br_ns.name, loss);
        write(&mut procs, &[0, 1, 2], 1000, round);
        total += 3000;
        converge(&mut procs, total, &format!("{loss}% loss"));
    }
    bridge_rules(&br_ns.name, 5);
    // Kill node 2; the others write while it is gone; it restarts and gets everything.
    drop(procs.pop());
    write(&mut procs, &[0, 1], 500, "dead");
    total += 1000;
    procs.push(start(2));
    converge(&mut procs, total, "after the restart");
    write(&mut procs, &[2], 300, "back");
    total += 300;
    converge(&mut procs, total, "writes from the restarted node");
    // A fourth node appears in the service name: the others find it on re-resolution.
    for (ns, _) in &nodes {
        hosts.write(ns, &service(4));
    }
    procs.push(start(3));
    converge(&mut procs, total, "a node added later");
    write(&mut procs, &[3], 100, "late");
    converge(&mut procs, total + 100, "writes from the added node");
    drop(procs);
    drop(hosts);
}
