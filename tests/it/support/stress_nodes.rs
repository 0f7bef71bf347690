//! Runs `mccache node` processes (the stress workload) side by side and collects their JSON
//! results: the separate-OS-process tests of the multicast and unicast transports share it.
//!
//! Use it from a test module with `use crate::support::stress_nodes;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A fresh, empty output folder for the test `name` of this process.
pub fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mccache-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts `n` `mccache node` processes (2 s of the mixed workload, `--aperture 0.002`, seeds
/// 1..=n, writing `dir/node<i>.json`), node `i` configured by the environment `env(i)` only;
/// waits for all of them (bounded: a node gives up quiescing after 30 s, a hung one is killed
/// after 120 s), checks that each exited successfully, quiesced, wrote and measured remote
/// writes, and returns their results in order.
pub fn run(dir: &Path, n: usize, env: impl Fn(usize) -> Vec<(String, String)>) -> Vec<Value> {
    run_with(dir, n, &["--duration", "2", "--aperture", "0.002"], env)
}

/// [`run`] with other workload flags (`--duration`, `--aperture`, ...) than its defaults.
pub fn run_with(
    dir: &Path,
    n: usize,
    workload: &[&str],
    env: impl Fn(usize) -> Vec<(String, String)>,
) -> Vec<Value> {
    run_joining(dir, n, workload, None, env)
}

/// [`run_with`], and with `late` the last node starts that long after the others, which
/// start their workload without it (`--start-with n-1`): it joins a cluster already writing.
pub fn run_joining(
    dir: &Path,
    n: usize,
    workload: &[&str],
    late: Option<Duration>,
    env: impl Fn(usize) -> Vec<(String, String)>,
) -> Vec<Value> {
    let spawn = |i: usize| {
        let start_with = match late {
            Some(_) if i + 1 < n => n - 1,
            _ => 0, // all of --peers
        };
        Command::new(env!("CARGO_BIN_EXE_mccache"))
            .arg("node")
            .args(workload)
            .args(["--mix", "mixed", "--peers", &n.to_string()])
            .args(["--start-with", &start_with.to_string()])
            .args(["--seed", &(i + 1).to_string(), "--quiesce-timeout", "30"])
            .arg("--out")
            .arg(dir.join(format!("node{i}.json")))
            .envs(env(i))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mccache node")
    };
    let mut children: Vec<_> = (0..n - usize::from(late.is_some())).map(spawn).collect();
    if let Some(after) = late {
        std::thread::sleep(after); // the point of the test: the others run meanwhile
        children.push(spawn(n - 1));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut results = Vec::new();
    for (i, mut child) in children.into_iter().enumerate() {
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if child.try_wait().unwrap().is_none() {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "node {i} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(dir.join(format!("node{i}.json"))).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["quiesced"], true, "node {i} quiesced");
        assert!(
            v["ops"]["inserts"].as_u64().unwrap() > 0,
            "the workload wrote"
        );
        assert!(
            v["lag"]["count"].as_u64().unwrap() > 0,
            "remote writes arrived"
        );
        results.push(v);
    }
    results
}
