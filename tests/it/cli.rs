//! The `mccache` binary: argument parsing, keygen, check-multicast and the report verdicts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;
use serde_json::{Value, json};

fn mccache(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mccache"))
        .args(args)
        .output()
        .expect("run mccache")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn every_subcommand_has_help() {
    let top = mccache(&["--help"]);
    assert!(top.status.success());
    let subcommands = [
        "demo",
        "node",
        "report",
        "mtu",
        "hops",
        "keygen",
        "check-multicast",
    ];
    for sub in subcommands {
        assert!(stdout(&top).contains(sub), "top-level help lists {sub}");
        let o = mccache(&[sub, "--help"]);
        assert!(o.status.success(), "{sub} --help: {}", stderr(&o));
        assert!(
            stdout(&o).contains("Usage: mccache"),
            "{sub} --help prints usage"
        );
    }
    let node = stdout(&mccache(&["node", "--help"]));
    for flag in [
        "--keys",
        "--aperture",
        "--mix",
        "--duration",
        "--seed",
        "--tantrum",
        "--key",
        "--out",
        "--interface-from-route",
        "TEST_KEY_ENTRIES",
    ] {
        assert!(node.contains(flag), "node --help mentions {flag}");
    }
}

#[test]
fn bad_arguments_are_refused_with_usage_errors() {
    for args in [
        &["frobnicate"][..],
        &["mtu"],
        &["mtu", "not-an-ip"],
        &["hops", "300.1.1.1"],
        &["node", "--mix", "huge"],
        &["node", "--keys", "-5"],
        &["demo", "--nodes", "0"],
        &["check-multicast", "--group", "239.1.1.1"],
        &["report"],
    ] {
        let o = mccache(args);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{args:?} is a usage error: {}",
            stderr(&o)
        );
        assert!(
            stderr(&o).contains("error"),
            "{args:?} explains: {}",
            stderr(&o)
        );
    }
    // Parsed but invalid values fail before any network activity.
    let o = mccache(&["node", "--duration=-1"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--duration"), "{}", stderr(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_mccache"))
        .args(["node", "--duration", "0"])
        .env("MCCACHE_CACHE_MAX", "0")
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "an invalid MCCACHE_* value is an error"
    );
    assert!(
        stderr(&o).to_lowercase().contains("cache_max"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn keygen_prints_32_random_bytes_in_base64() {
    let a = mccache(&["keygen"]);
    let b = mccache(&["keygen"]);
    assert!(a.status.success());
    let key = stdout(&a).trim().to_string();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&key)
        .expect("base64");
    assert_eq!(bytes.len(), 32);
    assert_ne!(key, stdout(&b).trim(), "each key is fresh");
}

#[test]
fn check_multicast_succeeds_on_loopback() {
    let o = mccache(&[
        "check-multicast",
        "--group",
        "239.255.94.31:46231",
        "--interface",
        "127.0.0.1",
    ]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("multicast OK"));
    // An interface address this host does not have cannot be used.
    let o = mccache(&[
        "check-multicast",
        "--group",
        "239.255.94.31:46231",
        "--interface",
        "192.0.2.77",
    ]);
    assert!(!o.status.success());
}

// ---------------------------------------------------------------------------------------------
// report

/// A synthetic node result: `keys` = [(key, hlc, writer, written_ms, crc)].
fn node(name: &str, done_ms: u64, keys: &[(&str, u64, &str, u64, u32)]) -> Value {
    let map: serde_json::Map<String, Value> = keys
        .iter()
        .map(|(k, hlc, writer, ms, crc)| {
            (
                k.to_string(),
                json!({"hlc": hlc, "node": writer, "written_ms": ms, "crc": crc}),
            )
        })
        .collect();
    let checksum: u64 = keys
        .iter()
        .map(|k| u64::from(k.4).wrapping_mul(k.1))
        .fold(0, u64::wrapping_add);
    json!({
        "node_id": name, "node_name": name, "started_ms": 1_000, "done_ms": done_ms,
        "finished_ms": done_ms + 500, "quiesced": true,
        "ops": {"inserts": 5, "updates": 2, "deletes": 1, "gets": 10},
        "caches": {"stress": {"checksum": checksum, "entries": keys.len(), "keys": map}},
        "samples": [
            {"at_ms": 2_000, "ops": 10, "writes": 3, "lag_n": 3, "lag_p50_us": 800, "lag_p99_us": 1500},
            {"at_ms": 3_000, "ops": 12, "writes": 4, "lag_n": 0, "lag_p50_us": 0, "lag_p99_us": 0}
        ]
    })
}

fn result_dir(name: &str, nodes: &[Value]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mccache-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, n) in nodes.iter().enumerate() {
        std::fs::write(dir.join(format!("node{:02}.json", i + 1)), n.to_string()).unwrap();
    }
    dir
}

fn report(dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["report", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = mccache(&args);
    (o.status.code(), stdout(&o) + &stderr(&o))
}

const A: (&str, u64, &str, u64, u32) = ("K000-1", 100, "aa", 1_500, 0x11);
const B: (&str, u64, &str, u64, u32) = ("K000-2", 200, "bb", 1_600, 0x22);

#[test]
fn report_passes_identical_nodes_and_draws_the_chart() {
    let dir = result_dir(
        "same",
        &[
            node("n1", 5_000, &[A, B]),
            node("n2", 5_000, &[A, B]),
            node("n3", 5_000, &[A, B]),
        ],
    );
    let (code, out) = report(&dir, &["--expect", "3"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("lenient: PASS")
            && out.contains("strict: PASS")
            && out.contains("verdict: PASS"),
        "{out}"
    );
    for n in ["n1", "n2", "n3"] {
        assert!(
            out.lines().any(|l| l.starts_with(n)),
            "table row for {n}: {out}"
        );
    }
    let svg = std::fs::read_to_string(dir.join("chart.svg")).expect("chart written");
    assert!(
        svg.starts_with("<svg") && svg.contains("polyline") && svg.contains("n2"),
        "an SVG with lines and a legend"
    );
    // The wrong node count fails.
    let (code, out) = report(&dir, &["--expect", "4"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("verdict: FAIL"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn report_says_when_the_caches_were_seen_identical_after_the_last_writer_stopped() {
    let with = |mut n: Value, at: u64| {
        n["identical_ms"] = json!(at);
        n
    };
    let dir = result_dir(
        "identical",
        &[
            with(node("n1", 5_000, &[A, B]), 5_450),
            with(node("n2", 5_200, &[A, B]), 5_600),
            with(node("n3", 4_900, &[A, B]), 5_500),
        ],
    );
    let (code, out) = report(&dir, &["--expect", "3"]);
    assert_eq!(code, Some(0), "{out}");
    // From the last writer's stop (5,200) to the last node's check (5,600).
    assert!(
        out.contains("identical: 0.40 s after the last writer stopped")
            && out.contains("0.25, 0.40, 0.30 s"),
        "{out}"
    );
    // A result without the field (older runs, or no quiesce) leaves the line out.
    let dir2 = result_dir(
        "identical-old",
        &[
            node("n1", 5_000, &[A]),
            with(node("n2", 5_000, &[A]), 5_100),
        ],
    );
    let (_, out) = report(&dir2, &["--expect", "2"]);
    assert!(!out.contains("identical:"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&dir2);
}

#[test]
fn report_says_when_each_node_first_read_its_final_checksum() {
    let with = |mut n: Value, readings: &[(u64, u64)]| {
        n["checksums"] = readings
            .iter()
            .map(|(at, sum)| json!({"at_ms": at, "checksum": sum}))
            .collect();
        n
    };
    let dir = result_dir(
        "converged",
        &[
            // Final value first read 0.12 s after the last writer's stop (5,200).
            with(
                node("n1", 5_000, &[A, B]),
                &[(5_000, 1), (5_250, 2), (5_320, 7)],
            ),
            // Changed back and forth: counted from its last change.
            with(
                node("n2", 5_200, &[A, B]),
                &[(5_200, 7), (5_300, 3), (5_460, 7)],
            ),
            // Held its final value before the last writer stopped: 0.
            with(node("n3", 4_900, &[A, B]), &[(4_900, 5), (5_100, 7)]),
        ],
    );
    let (code, out) = report(&dir, &["--expect", "3"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("converged: 0.26 s after the last writer stopped")
            && out.contains("final value: 0.12, 0.26, 0.00 s"),
        "{out}"
    );
    // Nodes that ended with different checksums did not converge.
    let dir2 = result_dir(
        "converged-not",
        &[
            with(node("n1", 5_000, &[A, B]), &[(5_000, 1), (5_250, 2)]),
            with(node("n2", 5_000, &[A, B]), &[(5_000, 1)]),
        ],
    );
    let (_, out) = report(&dir2, &["--expect", "2"]);
    assert!(out.contains("converged: no"), "{out}");
    // Results without readings (older runs) leave the line out.
    let dir3 = result_dir("converged-old", &[node("n1", 5_000, &[A])]);
    let (_, out) = report(&dir3, &["--expect", "1"]);
    assert!(!out.contains("converged:"), "{out}");
    for d in [dir, dir2, dir3] {
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn report_fails_both_rules_when_a_key_differs_before_the_end() {
    let stale = ("K000-2", 150, "aa", 1_550, 0x99);
    let dir = result_dir(
        "diverged",
        &[node("n1", 5_000, &[A, B]), node("n2", 5_000, &[A, stale])],
    );
    let (code, out) = report(&dir, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("lenient: FAIL") && out.contains("strict: FAIL"),
        "{out}"
    );
    assert!(out.contains("K000-2"), "names the key: {out}");
    // --lenient does not excuse a lenient failure.
    assert_eq!(report(&dir, &["--lenient"]).0, Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn report_excuses_late_writes_and_missing_keys_only_under_the_lenient_rule() {
    // n2's copy of K000-2 was written after n1 finished (6000 > 5000): excused by the ancestor's rule.
    let late = ("K000-2", 300, "bb", 6_000, 0x33);
    let dir = result_dir(
        "late",
        &[node("n1", 5_000, &[A, B]), node("n2", 7_000, &[A, late])],
    );
    let (code, out) = report(&dir, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("lenient: PASS") && out.contains("strict: FAIL"),
        "{out}"
    );
    assert_eq!(report(&dir, &["--lenient"]).0, Some(0));
    let _ = std::fs::remove_dir_all(&dir);

    // A key missing on one node: not a lenient failure, a strict one.
    let dir = result_dir(
        "missing",
        &[node("n1", 5_000, &[A, B]), node("n2", 5_000, &[A])],
    );
    let (code, out) = report(&dir, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("lenient: PASS") && out.contains("strict: FAIL"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn report_says_when_each_node_was_ready_and_started() {
    let joined = |mut n: Value, ready: u64, started: u64| {
        n["ready_ms"] = json!(ready);
        n["started_ms"] = json!(started);
        n
    };
    let dir = result_dir(
        "ready",
        &[
            joined(node("n1", 5_000, &[A, B]), 20, 1_000),
            joined(node("n2", 5_000, &[A, B]), 25, 1_010),
            joined(node("n3", 6_500, &[A, B]), 1_234, 2_500),
        ],
    );
    let (code, out) = report(&dir, &["--expect", "3"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("ready: n1 20 ms (+0.00 s), n2 25 ms (+0.01 s), n3 1234 ms (+1.50 s)"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn report_on_an_empty_or_bad_directory_is_an_error() {
    let dir = result_dir("empty", &[]);
    let (code, out) = report(&dir, &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("no node results"), "{out}");
    std::fs::write(dir.join("junk.json"), "[1, 2").unwrap();
    let (code, out) = report(&dir, &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("junk.json"), "names the bad file: {out}");
    let _ = std::fs::remove_dir_all(&dir);
}
