//! Path MTU, hop count and multicast checks across real network namespaces.
//!
//! Needs root and iproute2; otherwise each test prints "skipped: needs root and iproute2" and
//! passes. Every test builds its own namespaces (deleted on drop, even on panic) with private
//! 10.x addresses that exist only inside them.

use crate::support::netns;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use mccache::{check_multicast, get_hops, get_mtu};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn mtu_of_a_1400_byte_veth_is_1400() {
    let Some(mut lab) = netns::Lab::new("mtu_of_a_1400_byte_veth_is_1400") else {
        return;
    };
    let a = lab.ns("a");
    let b = lab.ns("b");
    lab.veth(&a, "10.201.0.1/24", &b, "10.201.0.2/24", 1400);
    let t = std::time::Instant::now();
    let mtu = lab.run_in(&a, || get_mtu(ip("10.201.0.2")));
    eprintln!("get_mtu over a veth took {:?}", t.elapsed());
    assert_eq!(mtu.unwrap(), 1400);
    // packet_mtu for this link would be 1400 - 28.
    assert_eq!(lab.run_in(&a, || get_hops(ip("10.201.0.2"))).unwrap(), 1);
}

#[test]
fn hops_through_a_router() {
    let Some(mut lab) = netns::Lab::new("hops_through_a_router") else {
        return;
    };
    let a = lab.ns("a");
    let r = lab.ns("r");
    let b = lab.ns("b");
    lab.veth(&a, "10.202.1.1/24", &r, "10.202.1.254/24", 1500);
    lab.veth(&r, "10.202.2.254/24", &b, "10.202.2.2/24", 1500);
    lab.forward(&r);
    lab.route(&a, "10.202.2.0/24", "10.202.1.254");
    lab.route(&b, "default", "10.202.2.254");

    let t = std::time::Instant::now();
    assert_eq!(lab.run_in(&a, || get_hops(ip("10.202.2.2"))).unwrap(), 2);
    eprintln!("get_hops through a router took {:?}", t.elapsed());
    assert_eq!(lab.run_in(&a, || get_hops(ip("10.202.1.254"))).unwrap(), 1);
    // The router's far address is on the router itself: one hop.
    assert_eq!(lab.run_in(&a, || get_hops(ip("10.202.2.254"))).unwrap(), 1);
    // And back the other way.
    assert_eq!(lab.run_in(&b, || get_hops(ip("10.202.1.1"))).unwrap(), 2);
}

#[test]
fn mtu_of_a_smaller_far_link_comes_from_frag_needed() {
    let Some(mut lab) = netns::Lab::new("mtu_of_a_smaller_far_link") else {
        return;
    };
    let a = lab.ns("a");
    let r = lab.ns("r");
    let b = lab.ns("b");
    lab.veth(&a, "10.203.1.1/24", &r, "10.203.1.254/24", 1500);
    lab.veth(&r, "10.203.2.254/24", &b, "10.203.2.2/24", 1280);
    lab.forward(&r);
    lab.route(&a, "10.203.2.0/24", "10.203.1.254");
    lab.route(&b, "default", "10.203.2.254");

    // A's own link is 1500: only the router's ICMP frag-needed can reveal 1280.
    let t = std::time::Instant::now();
    assert_eq!(lab.run_in(&a, || get_mtu(ip("10.203.2.2"))).unwrap(), 1280);
    eprintln!("get_mtu through a router took {:?}", t.elapsed());
    assert_eq!(
        lab.run_in(&a, || get_mtu(ip("10.203.1.254"))).unwrap(),
        1500
    );
}

#[test]
fn unreachable_destination_is_a_diagnostic_error() {
    let Some(mut lab) = netns::Lab::new("unreachable_destination") else {
        return;
    };
    let a = lab.ns("a");
    let r = lab.ns("r");
    lab.veth(&a, "10.204.1.1/24", &r, "10.204.1.254/24", 1500);
    lab.forward(&r);
    lab.route(&a, "10.204.9.0/24", "10.204.1.254");
    // R has no route to 10.204.9.0/24: it answers network-unreachable.
    let err = lab.run_in(&a, || get_hops(ip("10.204.9.9"))).unwrap_err();
    assert!(matches!(err, mccache::Error::Diagnostic(_)), "{err}");
}

#[test]
fn bridge_lan_hops_and_multicast() {
    let Some(mut lab) = netns::Lab::new("bridge_lan_hops_and_multicast") else {
        return;
    };
    let sw = lab.ns("sw");
    let n1 = lab.ns("n1");
    let n2 = lab.ns("n2");
    let br = lab.bridge(&sw);
    lab.attach(&br, &n1, "10.205.0.1/24", 1500);
    lab.attach(&br, &n2, "10.205.0.2/24", 1500);
    // A bridge is not a router: peers on it are one hop apart.
    assert_eq!(lab.run_in(&n1, || get_hops(ip("10.205.0.2"))).unwrap(), 1);
    assert_eq!(lab.run_in(&n1, || get_mtu(ip("10.205.0.2"))).unwrap(), 1500);
    let group = "239.255.91.21:49121".parse().unwrap();
    let iface = Ipv4Addr::new(10, 205, 0, 1);
    let check = lab
        .run_in(&n1, || {
            check_multicast(group, iface, Duration::from_secs(5))
        })
        .unwrap();
    assert!(check.received, "{check:?}");
}

#[test]
fn multicast_loops_back_on_127_0_0_1() {
    // Host namespace, so no root needed; the group and port are unique to this test.
    let group = "239.255.91.22:49122".parse().unwrap();
    let check = check_multicast(group, Ipv4Addr::LOCALHOST, Duration::from_secs(5)).unwrap();
    assert!(check.received, "{check:?}");
    assert_eq!(check.group, group);
    assert!(check.elapsed <= Duration::from_secs(5));
}

#[test]
fn lab_deletes_its_namespaces_even_on_panic() {
    let Some(mut lab) = netns::Lab::new("lab_cleanup") else {
        return;
    };
    let a = lab.ns("a");
    let b = lab.ns("b");
    lab.veth(&a, "10.206.0.1/24", &b, "10.206.0.2/24", 1500);
    let paths = [a, b].map(|ns| format!("/var/run/netns/{}", ns.name));
    assert!(paths.iter().all(|p| std::path::Path::new(p).exists()));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _lab = lab;
        panic!("test body failed");
    }));
    assert!(result.is_err());
    for p in &paths {
        assert!(!std::path::Path::new(p).exists(), "{p} left behind");
    }
}
