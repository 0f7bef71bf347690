//! `fault_node` processes (examples/fault_node.rs) for the namespace tests: each runs in a
//! network namespace, is driven over stdin/stdout with one JSON line per command, and is
//! killed and reaped on drop (also on panic). Also the nftables helpers those tests share.
//!
//! Use it from a test module with `use crate::support::fault_node;`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// The shared test key (32 bytes, base64).
pub const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// How long one command may take to be answered.
pub const ANSWER: Duration = Duration::from_secs(30);

/// The `fault_node` example binary, built once per test process (a no-op when fresh: `cargo
/// test --test X` alone does not build examples).
pub fn bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // The test runs from <target>/<profile>/deps/; cargo puts examples in
        // <target>/<profile>/examples/.
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
        let status = cmd.status().expect("run cargo build --example fault_node");
        assert!(status.success(), "cargo build --example fault_node failed");
        let bin = profile_dir.join("examples").join("fault_node");
        assert!(bin.is_file(), "{} missing", bin.display());
        bin
    })
    .clone()
}

/// One `fault_node` process in a namespace. Killed and reaped on drop.
pub struct Proc {
    /// The node's name (`MCCACHE_NODE_NAME`), used in failure messages.
    pub name: String,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts a node named `name` in namespace `ns` on interface address `addr` and waits for
    /// its first line (returned: `{"ready":..}`, which must not be an error). The environment holds what every namespace
    /// test shares (no config file, the test key, no TTL, a 0.2 s housekeeper); `env` adds
    /// the test's own group, port, cluster name, pulse and caps, and may override any of them.
    pub fn start(ns: &str, addr: &str, name: &str, env: &[(&str, String)]) -> (Proc, Value) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(bin())
            .env("MCCACHE_CONFIG", "")
            .env("MCCACHE_INTERFACE", addr)
            .env("MCCACHE_DAEMON_SLEEP", "0.2")
            .env("MCCACHE_CRYPTO_KEY", KEY)
            .env("MCCACHE_CACHE_TTL", "0")
            .env("MCCACHE_NODE_NAME", name);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ip netns exec fault_node");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
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
        assert!(
            hello.get("error").is_none(),
            "{name} did not start: {hello}"
        );
        (p, hello)
    }

    /// The next line the node printed, as JSON (bounded by [`ANSWER`]).
    pub fn read(&mut self) -> Value {
        let line = self
            .lines
            .recv_timeout(ANSWER)
            .unwrap_or_else(|e| panic!("{}: no answer ({e})", self.name));
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{}: bad line {line:?}: {e}", self.name))
    }

    /// Sends one command line without waiting for the answer.
    pub fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}")
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|e| panic!("{}: cannot send {cmd:?}: {e}", self.name));
    }

    /// Sends one command and returns its answer, which must not be an error.
    pub fn ask(&mut self, cmd: &str) -> Value {
        self.send(cmd);
        let v = self.read();
        assert!(v.get("error").is_none(), "{}: {cmd}: {v}", self.name);
        v
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether the `nft` tool is installed.
pub fn have_nft() -> bool {
    Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs an nft script inside namespace `ns`, panicking with nft's stderr on failure.
pub fn nft(ns: &str, script: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write nft script");
    let out = child.wait_with_output().expect("wait nft");
    assert!(
        out.status.success(),
        "nft: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}
