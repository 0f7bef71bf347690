//! Helpers for loopback cluster tests: a config on a test-unique group/port leaving through
//! 127.0.0.1, and bounded polling.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use mccache::Config;

/// The shared test key (32 bytes, base64).
pub const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// A config for a loopback test: group 239.255.93.`group`, port `port`, interface 127.0.0.1,
/// fast heartbeats and pulses, roomy caps, sealed with [`KEY`].
pub fn config(group: u8, port: u16) -> Config {
    let mut c = Config::default();
    c.interface = Ipv4Addr::LOCALHOST;
    c.multicast_ip = Ipv4Addr::new(239, 255, 93, group);
    c.multicast_port = port;
    c.daemon_sleep = 0.1;
    c.cache_pulse = 0.5;
    c.cache_max = 100_000;
    c.cache_size = 512 << 20;
    c.cache_ttl = 0.0;
    c.crypto_key = Some(KEY.to_string());
    c.cluster_name = format!("test-{group}-{port}");
    c
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `MCCACHE_*` variables that configure another process like `c` (the keys [`config`]
/// sets, as an application's environment would): for tests whose peers are separate
/// processes configured only through the environment.
pub fn env_of(c: &Config) -> Vec<(&'static str, String)> {
    vec![
        ("MCCACHE_CONFIG", String::new()),
        ("MCCACHE_INTERFACE", c.interface.to_string()),
        ("MCCACHE_MULTICAST_IP", c.multicast_ip.to_string()),
        ("MCCACHE_MULTICAST_PORT", c.multicast_port.to_string()),
        ("MCCACHE_CLUSTER_NAME", c.cluster_name.clone()),
        (
            "MCCACHE_CRYPTO_KEY",
            c.crypto_key.clone().unwrap_or_default(),
        ),
        ("MCCACHE_DAEMON_SLEEP", c.daemon_sleep.to_string()),
        ("MCCACHE_CACHE_PULSE", c.cache_pulse.to_string()),
        ("MCCACHE_CACHE_TTL", c.cache_ttl.to_string()),
        ("MCCACHE_CACHE_MAX", c.cache_max.to_string()),
        ("MCCACHE_CACHE_SIZE", c.cache_size.to_string()),
    ]
}

/// The body of a member process (this test binary re-run as one test, configured only through
/// `MCCACHE_*` as an application would be): starts a node from `Config::load`, opens cache
/// `cache`, waits (at most 20 s) for a peer and says `joined` on stdout. Returns the node and
/// the cache, for the caller to keep open while the test drives it.
pub fn member_process_joined(cache: &str) -> (mccache::Node, mccache::Cache<u32, u64>) {
    use std::io::Write;
    let node = mccache::Node::start(Config::load().expect("config from MCCACHE_*")).expect("start");
    let cache = node.cache::<u32, u64>(cache).expect("cache");
    assert!(
        wait_until(Duration::from_secs(20), || !node.members().is_empty()),
        "no peer"
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "joined").unwrap();
    out.flush().unwrap();
    (node, cache)
}
