//! A memcached server for a test: `memcached -l 127.0.0.1 -p PORT -m 16 -U 0`, started by the
//! test and killed when the guard drops (also on panic). Used by `tests/memcached.rs` (its own
//! test binary, with the `memcached` feature), not by the `it` binary.

#![allow(dead_code)]

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The memcached binary, if installed (`$MEMCACHED`, else `memcached` on `PATH` or in
/// `/usr/bin`).
pub fn binary() -> Option<String> {
    if let Ok(b) = std::env::var("MEMCACHED") {
        return Some(b);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/bin", "/usr/local/bin"])
        .map(|d| format!("{d}/memcached"))
        .find(|p| std::path::Path::new(p).is_file())
}

/// The binary, or `None` with a message when the test should be skipped. Under `CI=true` a
/// missing memcached is a failure (`.ci/run` installs it).
pub fn binary_or_skip(test: &str) -> Option<String> {
    match binary() {
        Some(b) => Some(b),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: memcached is not installed (CI must install the memcached package)")
        }
        None => {
            eprintln!("{test}: SKIPPED, no memcached binary found (apt-get install memcached)");
            None
        }
    }
}

/// A running memcached on 127.0.0.1:`port`.
pub struct Memcached {
    pub port: u16,
    bin: String,
    child: Option<Child>,
}

impl Memcached {
    /// Starts memcached on `port` (16 MiB, no UDP) and waits until it accepts connections.
    pub fn start(bin: &str, port: u16) -> Memcached {
        let mut m = Memcached {
            port,
            bin: bin.to_string(),
            child: None,
        };
        m.restart();
        m
    }

    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data is lost).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (empty).
    pub fn restart(&mut self) {
        self.kill();
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "-l",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-m",
            "16",
            "-U",
            "0",
        ]);
        // memcached refuses to run as root without -u.
        if is_root() {
            cmd.args(["-u", "root"]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start memcached");
        self.child = Some(child);
        let addr = self.addr();
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < end, "memcached on {addr} did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Whether this process runs as root (from /proc, without libc).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

impl Drop for Memcached {
    fn drop(&mut self) {
        self.kill();
    }
}
