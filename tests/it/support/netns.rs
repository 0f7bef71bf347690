//! A network-namespace lab for integration tests: namespaces, veth links, bridges and routes,
//! built with `ip` (iproute2) and deleted again when the [`Lab`] is dropped, even on panic.
//!
//! Use it from a test module with `use crate::support::netns;` and start every test with
//! `let Some(mut lab) = netns::Lab::new("name") else { return };`: without root or iproute2 the
//! test prints "skipped: needs root and iproute2" and passes.
//!
//! Namespace names are `mcd-<pid>-<n>-<role>`, unique across parallel tests and processes.
//! Addresses given to the lab exist only inside its namespaces.
#![allow(dead_code)]

use std::fs::File;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One namespace of a [`Lab`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ns {
    /// The name under /var/run/netns.
    pub name: String,
}

/// A bridge living in one namespace of a [`Lab`].
#[derive(Debug, Clone)]
pub struct Bridge {
    /// The namespace that holds the bridge device.
    pub ns: Ns,
    /// The bridge device name inside it.
    pub dev: String,
}

/// Namespaces created for one test; all deleted on drop.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    namespaces: Vec<Ns>,
    links: u32,
}

/// Runs `ip ARGS`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether this process can build namespaces: root and an `ip` binary.
pub fn available() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let has_ip = Command::new("ip")
        .arg("-V")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    root && has_ip
}

impl Lab {
    /// A new, empty lab for the test `test`, or `None` (after printing why) when namespaces
    /// cannot be built here.
    pub fn new(test: &str) -> Option<Lab> {
        Lab::with_prefix(test, "mcd")
    }

    /// Like [`Lab::new`], with namespaces named `<prefix>-<pid>-<n>-<role>` (each test
    /// family keeps its own prefix).
    pub fn with_prefix(test: &str, prefix: &str) -> Option<Lab> {
        if !available() {
            eprintln!("{test}: skipped: needs root and iproute2");
            return None;
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Some(Lab {
            prefix: format!("{prefix}-{}-{n}", std::process::id()),
            namespaces: Vec::new(),
            links: 0,
        })
    }

    /// Like [`Lab::new`], with namespace names starting `<tag>-` instead of `mcd-` (so a test
    /// can keep to the names it was given).
    pub fn with_tag(test: &str, tag: &str) -> Option<Lab> {
        let mut lab = Lab::new(test)?;
        lab.prefix = lab.prefix.replacen("mcd", tag, 1);
        Some(lab)
    }

    /// Creates the namespace `mcd-<pid>-<n>-<role>` with its loopback up.
    pub fn ns(&mut self, role: &str) -> Ns {
        let ns = Ns {
            name: format!("{}-{role}", self.prefix),
        };
        ip(&["netns", "add", &ns.name]);
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn next_link(&mut self) -> String {
        self.links += 1;
        format!("v{}", self.links)
    }

    /// Connects `a` and `b` with a veth pair of MTU `mtu`, addresses `a_cidr` / `b_cidr`
    /// (e.g. `10.1.0.1/24`), both ends up. Returns the device names (in `a`, in `b`).
    pub fn veth(
        &mut self,
        a: &Ns,
        a_cidr: &str,
        b: &Ns,
        b_cidr: &str,
        mtu: u32,
    ) -> (String, String) {
        let base = self.next_link();
        let (da, db) = (format!("{base}a"), format!("{base}b"));
        let mtu = mtu.to_string();
        ip(&[
            "-n", &a.name, "link", "add", &da, "mtu", &mtu, "type", "veth", "peer", "name", &db,
            "mtu", &mtu, "netns", &b.name,
        ]);
        for (ns, dev, cidr) in [(a, &da, a_cidr), (b, &db, b_cidr)] {
            ip(&["-n", &ns.name, "addr", "add", cidr, "dev", dev]);
            ip(&["-n", &ns.name, "link", "set", dev, "up"]);
        }
        (da, db)
    }

    /// Creates a bridge device (multicast snooping off, so every port sees every group) in `ns`.
    pub fn bridge(&mut self, ns: &Ns) -> Bridge {
        let dev = format!("br{}", self.next_link());
        ip(&[
            "-n",
            &ns.name,
            "link",
            "add",
            &dev,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &ns.name, "link", "set", &dev, "up"]);
        Bridge {
            ns: ns.clone(),
            dev,
        }
    }

    /// Plugs `member` into `bridge` with a veth of MTU `mtu` and gives the member end the
    /// address `cidr`. Returns the member's device name.
    pub fn attach(&mut self, bridge: &Bridge, member: &Ns, cidr: &str, mtu: u32) -> String {
        let base = self.next_link();
        let (dm, dp) = (format!("{base}m"), format!("{base}p"));
        let mtu = mtu.to_string();
        ip(&[
            "-n",
            &member.name,
            "link",
            "add",
            &dm,
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            &dp,
            "mtu",
            &mtu,
            "netns",
            &bridge.ns.name,
        ]);
        ip(&[
            "-n",
            &bridge.ns.name,
            "link",
            "set",
            &dp,
            "master",
            &bridge.dev,
            "up",
        ]);
        ip(&["-n", &member.name, "addr", "add", cidr, "dev", &dm]);
        ip(&["-n", &member.name, "link", "set", &dm, "up"]);
        dm
    }

    /// A bridge namespace `br` and `n` hosts `<role><i>` plugged into it (MTU 1500), host `i`
    /// at `<subnet>.<i + 1>/24` with multicast routed out of its veth. Returns the bridge's
    /// namespace and, per host, its namespace, address and device.
    pub fn hosts_on_bridge(
        &mut self,
        role: &str,
        subnet: &str,
        n: usize,
    ) -> (Ns, Vec<(Ns, String, String)>) {
        let br_ns = self.ns("br");
        let bridge = self.bridge(&br_ns);
        let hosts = (0..n)
            .map(|i| {
                let ns = self.ns(&format!("{role}{i}"));
                let addr = format!("{subnet}.{}", i + 1);
                let dev = self.attach(&bridge, &ns, &format!("{addr}/24"), 1500);
                ip(&["-n", &ns.name, "route", "add", "224.0.0.0/4", "dev", &dev]);
                (ns, addr, dev)
            })
            .collect();
        (br_ns, hosts)
    }

    /// Adds a route in `ns`: `dest` (a CIDR or `default`) via the gateway `via`.
    pub fn route(&self, ns: &Ns, dest: &str, via: &str) {
        ip(&["-n", &ns.name, "route", "add", dest, "via", via]);
    }

    /// Turns `ns` into an IPv4 router (`net.ipv4.ip_forward = 1`).
    pub fn forward(&self, ns: &Ns) {
        self.run_in(ns, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("set ip_forward");
            let v = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
            assert_eq!(v.trim(), "1", "ip_forward did not stick in {}", ns.name);
        });
    }

    /// Runs `f` on a fresh thread that has entered `ns`; sockets `f` opens live there.
    pub fn run_in<T: Send>(&self, ns: &Ns, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", ns.name);
        let handle = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        std::thread::scope(|s| {
            s.spawn(move || {
                mccache::unstable::enter_netns(&handle).expect("setns");
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace also destroys its veth ends and their peers.
        for ns in self.namespaces.drain(..).rev() {
            let ok = Command::new("ip")
                .args(["netns", "del", &ns.name])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                eprintln!("warning: could not delete netns {}", ns.name);
            }
        }
    }
}
