//! Three `mccache node` processes on loopback (their own group and port) run the stress
//! workload and must end with identical caches.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mccache-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn three_node_processes_end_with_identical_caches() {
    let dir = out_dir("multiprocess");
    let mut children: Vec<_> = (1..=3)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_mccache"))
                .args([
                    "node",
                    "--duration",
                    "2",
                    "--aperture",
                    "0.002",
                    "--mix",
                    "mixed",
                ])
                .args([
                    "--peers",
                    "3",
                    "--seed",
                    &i.to_string(),
                    "--quiesce-timeout",
                    "30",
                ])
                .arg("--out")
                .arg(dir.join(format!("node{i}.json")))
                .env("MCCACHE_INTERFACE", "127.0.0.1")
                .env("MCCACHE_MULTICAST_IP", "239.255.94.17")
                .env("MCCACHE_MULTICAST_PORT", "46217")
                .env("MCCACHE_DAEMON_SLEEP", "0.2")
                .env("MCCACHE_CACHE_PULSE", "1")
                .env("MCCACHE_CLUSTER_NAME", "multiprocess-test")
                .env("TEST_CRYPTO_KEY", KEY)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn mccache node")
        })
        .collect();
    // Bounded: each node gives up joining and quiescing after 30 s; a hung one is killed.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut outputs = Vec::new();
    for mut child in children.drain(..) {
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        outputs.push(child.wait_with_output().unwrap());
    }
    for out in &outputs {
        assert!(
            out.status.success(),
            "node failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let results: Vec<serde_json::Value> = (1..=3)
        .map(|i| {
            let text = std::fs::read_to_string(dir.join(format!("node{i}.json"))).unwrap();
            serde_json::from_str(&text).unwrap()
        })
        .collect();
    for r in &results {
        assert_eq!(r["quiesced"], true, "quiesced: {}", r["node_name"]);
        assert!(
            r["ops"]["inserts"].as_u64().unwrap() > 0,
            "the workload wrote"
        );
        assert!(
            r["lag"]["count"].as_u64().unwrap() > 0,
            "remote writes were measured"
        );
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
