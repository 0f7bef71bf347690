//! Real faults across network namespaces: packet loss (netem), a killed and restarted node, and
//! a cut link. Each node is its own `fault_node` process (examples/fault_node.rs) in its own
//! namespace, plugged into a bridge namespace; the test drives it over stdin/stdout.
//!
//! Needs root, iproute2 and tc; otherwise each test prints "skipped: needs root and iproute2"
//! and passes. Addresses (10.231.x.y/24) exist only inside the test's namespaces, which are
//! deleted on drop, processes killed and reaped first, even on panic. The scenarios run one at
//! a time (a lock) so their measured times are not skewed by each other.

use crate::support::fault_node;
use crate::support::netns;

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fault_node::Proc;
use serde_json::Value;

const GROUP: &str = "239.255.94.1";
/// Anti-entropy pulse of the nodes (MCCACHE_CACHE_PULSE), seconds.
const PULSE: Duration = Duration::from_secs(1);

static SERIAL: Mutex<()> = Mutex::new(());

/// The convergence bound, in pulses: the brief's 10 pulses after writers stop under loss and
/// 3 after a cut heals (pulse = 1 s here).
fn pulses(n: u32) -> Duration {
    PULSE * n
}

/// Starts node `name` of the cluster on `port` in `ns`: the big caps and the 1 s pulse the
/// fault scenarios assume.
fn start(ns: &netns::Ns, addr: &str, name: &str, port: u16) -> (Proc, Value) {
    let env = [
        ("MCCACHE_MULTICAST_IP", GROUP.to_string()),
        ("MCCACHE_MULTICAST_PORT", port.to_string()),
        ("MCCACHE_CACHE_PULSE", PULSE.as_secs_f64().to_string()),
        ("MCCACHE_CACHE_MAX", "1000000".to_string()),
        ("MCCACHE_CACHE_SIZE", "1 GiB".to_string()),
        ("MCCACHE_CLUSTER_NAME", format!("faults-{port}")),
    ];
    let (p, hello) = Proc::start(&ns.name, addr, name, &env);
    assert_eq!(hello["ready"], true, "{name} did not start ready: {hello}");
    (p, hello)
}

/// A bridge namespace and three node namespaces, each with one `fault_node`.
/// Field order matters: the processes drop (die) before the lab deletes the namespaces.
struct Cluster {
    procs: Vec<Proc>,
    nodes: Vec<(netns::Ns, String, String)>, // namespace, address, veth
    bridge_ns: netns::Ns,
    port: u16,
    _lab: netns::Lab,
}

impl Cluster {
    fn new(test: &str, port: u16) -> Option<Cluster> {
        let mut lab = netns::Lab::new(test)?;
        let _ = fault_node::bin();
        let (br_ns, nodes) = lab.hosts_on_bridge("n", "10.231.0", 3);
        let mut c = Cluster {
            procs: Vec::new(),
            nodes,
            bridge_ns: br_ns,
            port,
            _lab: lab,
        };
        for i in 0..3 {
            let p = c.spawn(i);
            c.procs.push(p);
        }
        c.wait_members(Duration::from_secs(20));
        Some(c)
    }

    fn spawn(&self, i: usize) -> Proc {
        let (ns, addr, _) = &self.nodes[i];
        start(ns, addr, &format!("f{i}"), self.port).0
    }

    /// Waits until every node sees both others as live (not suspect) members.
    fn wait_members(&mut self, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            let ds = self.digests();
            if ds.iter().all(|d| d["members"] == 2 && d["suspects"] == 0) {
                return;
            }
            assert!(Instant::now() < end, "membership did not form: {ds:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn digests(&mut self) -> Vec<Value> {
        self.procs.iter_mut().map(|p| p.ask("digest")).collect()
    }

    /// Sends `write N PREFIX` to the given nodes at once, then collects the answers.
    fn write(&mut self, who: &[usize], n: usize, prefix: &str) {
        for &i in who {
            self.procs[i].send(&format!("write {n} {prefix}{i}-"));
        }
        for &i in who {
            let v = self.procs[i].read();
            assert_eq!(v["written"], n, "{}: {v}", self.procs[i].name);
        }
    }

    /// Polls digests until every node holds `len` entries with one checksum, or `bound`
    /// passes (then panics with the last digests). Returns the time it took.
    fn converge(&mut self, len: usize, bound: Duration, what: &str) -> Duration {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            let ds = self.digests();
            let took = start.elapsed();
            // A line per change of the picture: len/members/suspects per node.
            let view: Vec<String> = ds
                .iter()
                .map(|d| {
                    format!(
                        "{}:{}/{}m{}s",
                        d["node"], d["len"], d["members"], d["suspects"]
                    )
                })
                .collect();
            let view = view.join(" ");
            if view != last {
                eprintln!("  {:>6.2}s {view}", took.as_secs_f64());
                last = view;
            }
            let same = ds
                .iter()
                .all(|d| d["len"] == len && d["checksum"] == ds[0]["checksum"]);
            assert!(
                same || took < bound,
                "{what}: no convergence within {bound:?} (want {len} entries): {ds:?}"
            );
            if same {
                assert!(
                    took <= bound,
                    "{what}: converged only after {took:?} > {bound:?}"
                );
                eprintln!("{what}: converged in {took:?} ({len} entries)");
                return took;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn metrics_summary(&mut self) -> String {
        let mut out = Vec::new();
        for p in &mut self.procs {
            let m = p.ask("metrics");
            out.push(format!(
                "{}: naks {} served {} gone {} abandoned {} ae_repairs {} state_transfers {} dropped {}",
                p.name,
                m["retransmits_requested"],
                m["retransmits_served"],
                m["retransmits_gone"],
                m["gaps_abandoned"],
                m["ae_repairs"],
                m["state_transfers"],
                m["dropped"]
            ));
        }
        out.join("; ")
    }

    /// Drops `loss` percent of the cluster's datagrams: with tc netem (`loss N% delay 1ms`) on
    /// every node's veth where the kernel has netem; else (CONFIG_NET_SCH_NETEM unset) with an
    /// nftables rule on the bridge (`numgen random mod 100 < N drop`, no delay), which drops
    /// each copy of a datagram independently on its way to each receiver, silently to the
    /// sender. Returns the method used, or `None` when neither is available.
    fn set_loss(&self, loss: u32) -> Option<&'static str> {
        let pct = format!("{loss}%");
        let netem = self.nodes.iter().all(|(ns, _, dev)| {
            Command::new("tc")
                .args([
                    "-n", &ns.name, "qdisc", "replace", "dev", dev, "root", "netem",
                ])
                .args(["loss", &pct, "delay", "1ms"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if netem {
            return Some("netem");
        }
        if !fault_node::have_nft() {
            return None;
        }
        fault_node::nft(
            &self.bridge_ns.name,
            &format!(
                "add table bridge mcfault\n\
                 delete table bridge mcfault\n\
                 table bridge mcfault {{\n\
                 chain lossy {{\n\
                 type filter hook forward priority 0;\n\
                 ether type ip udp dport {} numgen random mod 100 < {loss} counter drop\n\
                 }}\n\
                 }}\n",
                self.port
            ),
        );
        Some("nftables on the bridge")
    }

    /// A firewall that lets only the group's port through: every other UDP datagram between
    /// the nodes (the probes of a direct path, and what would go over it) is dropped on the
    /// bridge. Returns false when nftables is not available.
    fn only_the_groups_port(&self) -> bool {
        if !fault_node::have_nft() {
            return false;
        }
        fault_node::nft(
            &self.bridge_ns.name,
            &format!(
                "add table bridge mcfw\n\
                 delete table bridge mcfw\n\
                 table bridge mcfw {{\n\
                 chain fw {{\n\
                 type filter hook forward priority 0;\n\
                 ether type ip udp dport != {} counter drop\n\
                 }}\n\
                 }}\n",
                self.port
            ),
        );
        true
    }

    /// Datagram copies dropped so far by the nftables loss rule (0 with netem).
    fn nft_drops(&self) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.bridge_ns.name])
            .args(["nft", "list", "table", "bridge", "mcfault"])
            .output()
            .expect("run nft");
        String::from_utf8_lossy(&out.stdout)
            .split("packets ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

fn loss_scenario(test: &str, port: u16, loss: u32) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut c) = Cluster::new(test, port) else {
        return;
    };
    let Some(how) = c.set_loss(loss) else {
        eprintln!(
            "skipped: {test} needs tc netem in the kernel or nftables (apt-get install nftables)"
        );
        return;
    };
    c.write(&[0, 1, 2], 2000, "a");
    c.converge(
        6000,
        pulses(10),
        &format!("{loss}% loss ({how}), 3 x 2000 writes"),
    );
    // Conflicting writes to the same keys from all three nodes.
    c.write(&[0, 1, 2], 500, "shared");
    c.converge(
        7500,
        pulses(10),
        &format!("{loss}% loss, 3 x 500 more writes"),
    );
    eprintln!(
        "metrics: {}; nft drops {}",
        c.metrics_summary(),
        c.nft_drops()
    );
}

#[test]
fn loss_of_5_percent_converges() {
    loss_scenario("netns_loss5", 47201, 5);
}

#[test]
fn loss_of_20_percent_converges() {
    loss_scenario("netns_loss20", 47204, 20);
}

/// Over multicast a message meant for one member goes to it alone while the probes sent there
/// come back. Here the nodes confirm their paths while they join, and then a firewall that
/// passes nothing but the group's port closes them: within three unanswered probes (1.5 s)
/// each falls back to the group, and the retransmissions and anti-entropy answers of a lossy
/// network still arrive; the cluster converges within the same bound as without the firewall.
/// (With paths never re-checked, the messages for one member went into the firewall for good
/// and the cluster did not converge.)
#[test]
fn loss_behind_a_firewall_that_passes_only_the_groups_port_converges() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut c) = Cluster::new("netns_fw", 47205) else {
        return;
    };
    if !c.only_the_groups_port() {
        eprintln!("skipped: needs nftables (apt-get install nftables)");
        return;
    }
    let Some(how) = c.set_loss(5) else {
        return;
    };
    c.write(&[0, 1, 2], 2000, "a");
    c.converge(
        6000,
        pulses(10),
        &format!("5% loss ({how}) behind the firewall, 3 x 2000 writes"),
    );
    c.write(&[0, 1, 2], 500, "shared");
    c.converge(7500, pulses(10), "behind the firewall, 3 x 500 more writes");
    eprintln!("metrics: {}", c.metrics_summary());
}

#[test]
fn a_killed_node_restarts_gets_the_state_and_converges() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut c) = Cluster::new("netns_restart", 47202) else {
        return;
    };
    c.write(&[0, 1, 2], 1000, "before");
    c.converge(3000, pulses(10), "before the kill");
    c.procs[2].kill();
    // Writes while node 2 is dead: the survivors must carry them to its successor.
    c.write(&[0, 1], 1000, "during");
    let restarted = Instant::now();
    let (ns, addr, _) = &c.nodes[2];
    let (p, hello) = start(ns, addr, "f2", c.port);
    eprintln!("restart: ready in {:?} ({hello})", restarted.elapsed());
    c.procs[2] = p;
    let d = c.procs[2].ask("digest");
    assert_eq!(d["ready"], true);
    c.converge(5000, pulses(10), "after restart");
    c.wait_members(Duration::from_secs(20));
    // The restarted node writes too, and everyone gets it.
    c.write(&[2], 200, "after");
    c.converge(5200, pulses(10), "writes from the restarted node");
    eprintln!("metrics: {}", c.metrics_summary());
}

#[test]
fn a_cut_link_heals_and_converges() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut c) = Cluster::new("netns_cut", 47203) else {
        return;
    };
    c.write(&[0, 1, 2], 500, "before");
    c.converge(1500, pulses(10), "before the cut");
    let (ns, _, dev) = c.nodes[2].clone();
    netns::ip(&["-n", &ns.name, "link", "set", &dev, "down"]);
    let cut = Instant::now();
    // Longer than node 2 takes to be suspected (3 heartbeats) and removed (6): 0.6 s, 1.2 s.
    let mut written = 0;
    let mut round = 0;
    while cut.elapsed() < Duration::from_secs(3) {
        c.write(&[0, 1], 200, &format!("cut{round}x"));
        written += 400;
        round += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    // Node 2 writes on its side of the cut as well.
    c.write(&[2], 300, "island");
    let ds = c.digests();
    assert_eq!(
        ds[2]["len"],
        1500 + 300,
        "the cut node saw none of the others' writes"
    );
    let cut_for = cut.elapsed();
    netns::ip(&["-n", &ns.name, "link", "set", &dev, "up"]);
    // A device going down takes its routes with it.
    netns::ip(&[
        "-n",
        &ns.name,
        "route",
        "replace",
        "224.0.0.0/4",
        "dev",
        &dev,
    ]);
    let took = c.converge(1500 + written + 300, pulses(3), "after the cut heals");
    eprintln!(
        "cut for {cut_for:?}; healed in {took:?} ({:.1} pulses)",
        took.as_secs_f64() / PULSE.as_secs_f64()
    );
    c.wait_members(Duration::from_secs(10));
    eprintln!("metrics: {}", c.metrics_summary());
}
