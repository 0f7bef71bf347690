//! Three `mccache node` processes on loopback (their own group and port) run the stress
//! workload and must end with identical caches.

#[path = "support/stress_nodes.rs"]
mod stress_nodes;

use std::process::Command;

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

#[test]
fn three_node_processes_end_with_identical_caches() {
    let dir = stress_nodes::out_dir("multiprocess");
    let results = stress_nodes::run(&dir, 3, |_| {
        [
            ("MCCACHE_INTERFACE", "127.0.0.1"),
            ("MCCACHE_MULTICAST_IP", "239.255.94.17"),
            ("MCCACHE_MULTICAST_PORT", "46217"),
            ("MCCACHE_DAEMON_SLEEP", "0.2"),
            ("MCCACHE_CACHE_PULSE", "1"),
            ("MCCACHE_CLUSTER_NAME", "multiprocess-test"),
            ("TEST_CRYPTO_KEY", KEY),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec()
    });
    for r in &results {
        assert!(
            r["samples"].as_array().unwrap().len() >= 2,
            "per-second samples"
        );
    }
    let stress = |r: &serde_json::Value| r["caches"]["stress"].clone();
    let first = stress(&results[0]);
    assert!(first["entries"].as_u64().unwrap() > 0);
    for r in &results[1..] {
        let other = stress(r);
        assert_eq!(
            first["checksum"], other["checksum"],
            "per-cache checksums agree"
        );
        assert_eq!(first["keys"], other["keys"], "same keys, versions and crcs");
    }
    // Every node saw writes from both others.
    let writers: std::collections::BTreeSet<&str> = first["keys"]
        .as_object()
        .unwrap()
        .values()
        .map(|k| k["node"].as_str().unwrap())
        .collect();
    assert_eq!(
        writers.len(),
        3,
        "entries written by all three nodes survive"
    );

    // The report agrees and draws the chart.
    let report = Command::new(env!("CARGO_BIN_EXE_mccache"))
        .args(["report", "--expect", "3"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(report.status.success(), "{text}");
    assert!(
        text.contains("strict: PASS") && text.contains("lenient: PASS"),
        "{text}"
    );
    assert!(dir.join("chart.svg").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}
