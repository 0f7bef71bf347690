//! Unicast where multicast does not work: three `fault_node` processes (examples/fault_node.rs)
//! in their own network namespaces on a bridge whose nftables rules drop every multicast frame.
//! Peers are DNS names resolved from the namespaces' hosts files (`/etc/netns/<ns>/hosts`,
//! written and removed by the test). First multicast is shown not to form a cluster there; then
//! unicast converges with 5 % and 20 % loss (nftables `numgen`, per copy) and through a killed
//! and restarted node, and a node started later is found.
//!
//! Needs root, iproute2 and nftables; otherwise it prints why it is skipped and passes.
//! Namespaces `mcu-<pid>-<n>-<role>`, addresses 10.211.0.0/24, port 47260, cluster `t11-netns`.

use crate::support::fault_node;
use crate::support::netns;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fault_node::{Proc, nft};
use serde_json::Value;

const PORT: u16 = 47260;
/// Bound on convergence after writes, in seconds (10 pulses of 1 s).
const CONVERGE: Duration = Duration::from_secs(10);

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

/// Starts node `name` in namespace `ns` with the test's group, port and cluster, plus `env`.
fn start(ns: &str, addr: &str, name: &str, env: &[(&str, String)]) -> Proc {
    let mut all = vec![
        ("MCCACHE_MULTICAST_IP", "239.255.102.1".to_string()),
        ("MCCACHE_MULTICAST_PORT", PORT.to_string()),
        ("MCCACHE_CACHE_PULSE", "1".to_string()),
        ("MCCACHE_CACHE_MAX", "1000000".to_string()),
        ("MCCACHE_CACHE_SIZE", "1 GiB".to_string()),
        ("MCCACHE_CLUSTER_NAME", "t11-netns".to_string()),
    ];
    all.extend(env.iter().cloned());
    Proc::start(ns, addr, name, &all).0
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
    if !fault_node::have_nft() {
        eprintln!("skipped: needs nftables (apt-get install nftables)");
        return;
    }
    let Some(mut lab) = netns::Lab::with_prefix("netns_unicast", "mcu") else {
        return;
    };
    let _ = fault_node::bin();
    let (br_ns, hosts) = lab.hosts_on_bridge("u", "10.211.0", 4);
    let nodes: Vec<(String, String)> = hosts.into_iter().map(|(ns, a, _)| (ns.name, a)).collect();
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
            .map(|i| start(&nodes[i].0, &nodes[i].1, &format!("m{i}"), &[]))
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
    let start_u = |i: usize| start(&nodes[i].0, &nodes[i].1, &format!("u{i}"), &unicast);
    let mut procs: Vec<Proc> = (0..3).map(start_u).collect();
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
    procs.push(start_u(2));
    converge(&mut procs, total, "after the restart");
    write(&mut procs, &[2], 300, "back");
    total += 300;
    converge(&mut procs, total, "writes from the restarted node");
    // A fourth node appears in the service name: the others find it on re-resolution.
    for (ns, _) in &nodes {
        hosts.write(ns, &service(4));
    }
    procs.push(start_u(3));
    converge(&mut procs, total, "a node added later");
    write(&mut procs, &[3], 100, "late");
    converge(&mut procs, total + 100, "writes from the added node");
    drop(procs);
    drop(hosts);
}
