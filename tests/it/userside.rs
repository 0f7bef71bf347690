//! mccache as applications use it: separate OS processes that use only the public API and
//! `MCCACHE_*` variables. Each application process is this test binary run again with
//! `T9_ROLE` set (see [`child`]): it opens the cache `users` either through the process-wide
//! default node (`mccache::get_cache`, role `default`) or through
//! `Node::start(Config::load()?)` (role `node`), then follows commands read from stdin,
//! answering each with one line `@@ …` on stdout. The parent waits on answers with bounded
//! polls, never fixed sleeps.
//!
//! Groups 239.255.101.x, ports 47100-47199, cluster names `t9-…`: this file's own range.

use crate::support::app_env;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use mccache::{Cache, Config, MemberEvent, Node};

/// The cache every application process uses.
const CACHE: &str = "users";
/// How long any single answer or condition may take.
const T: Duration = Duration::from_secs(30);
/// The shared key of the test clusters.
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

// ---------------------------------------------------------------------------------------------
// The application process

/// The application side, run in a child process (`T9_ROLE` set); ignored in a normal test run.
#[test]
#[ignore = "the application process of the other tests in this file; they start it"]
fn child() {
    let role = std::env::var("T9_ROLE").expect("started by a test of this file with T9_ROLE");
    let out = std::io::stdout();
    let say = |line: String| {
        let mut o = out.lock();
        let _ = writeln!(o, "@@ {line}");
        let _ = o.flush();
    };
    let app = match App::open(&role) {
        Ok(app) => app,
        Err(e) => {
            say(format!("err {e}"));
            return;
        }
    };
    say(format!("ready {}", app.node.id()));
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"exit") {
            // Return from the test: the process exits normally, and the default node (role
            // `default`) must announce its leave by itself.
            say("bye".into());
            return;
        }
        say(app.run(&words));
    }
}

struct App {
    node: Node,
    cache: Cache<String, String>,
    /// True when the module functions (`mccache::clear_cache`, …) are used.
    default: bool,
    /// Clean leaves seen (`MemberEvent::Left { failed: false }`).
    leaves: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl App {
    fn open(role: &str) -> mccache::Result<App> {
        let (node, cache, default) = match role {
            "default" => {
                let cache = mccache::try_get_cache::<String, String>(CACHE)?;
                (mccache::default_node()?, cache, true)
            }
            "node" => {
                let node = Node::start(Config::load()?)?;
                let cache = node.cache::<String, String>(CACHE)?;
                (node, cache, false)
            }
            other => panic!("unknown role {other}"),
        };
        let leaves = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let l = leaves.clone();
        node.on_member_event(move |e| {
            if matches!(e, MemberEvent::Left { failed: false, .. }) {
                l.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        Ok(App {
            node,
            cache,
            default,
            leaves,
        })
    }

    fn run(&self, words: &[&str]) -> String {
        let t = Duration::from_secs(5);
        match words {
            ["insert", k, v] => format!(
                "{:?}",
                self.cache.insert(k.to_string(), v.to_string()).map(|_| ())
            ),
            ["get", k] => match self.cache.get(&k.to_string()) {
                Some(v) => format!("val {v}"),
                None => "none".into(),
            },
            ["remove", k] => format!("{:?}", self.cache.remove(&k.to_string()).map(|_| ())),
            // `n` inserts as fast as the process can write them.
            ["burst", n, prefix] => {
                let n: usize = n.parse().expect("a count");
                for i in 0..n {
                    if let Err(e) = self.cache.insert(format!("{prefix}-{i}"), "v".into()) {
                        return format!("err {e}");
                    }
                }
                format!("burst {n}")
            }
            // Request and response between two processes, one write in flight: the leader
            // writes `ping-i` and waits until the follower's `pong-i` has arrived before it
            // writes the next; the follower answers each ping as it arrives. Answers how many
            // of this node's changes its writer threads sent themselves (the express lane).
            ["pingpong", n, side] => {
                let n: usize = n.parse().expect("a count");
                let lead = *side == "lead";
                let (mine, theirs) = if lead {
                    ("ping", "pong")
                } else {
                    ("pong", "ping")
                };
                let (tx, rx) = channel();
                let listener = self.cache.on_change(move |e| {
                    if matches!(e.origin, mccache::Origin::Remote(_)) {
                        let _ = tx.send(e.key.clone());
                    }
                });
                let before = self.node.network_metrics();
                let mut result = Ok(());
                for i in 0..n {
                    if lead && let Err(e) = self.cache.insert(format!("{mine}-{i}"), "v".into()) {
                        result = Err(format!("err {e}"));
                        break;
                    }
                    // Whatever arrived before the listener was registered is in the cache.
                    let want = format!("{theirs}-{i}");
                    let arrived = || self.cache.contains_key(&want);
                    if !arrived()
                        && !std::iter::from_fn(|| rx.recv_timeout(t).ok()).any(|k| k == want)
                    {
                        result = Err(format!("err {want} did not arrive"));
                        break;
                    }
                    if !lead && let Err(e) = self.cache.insert(format!("{mine}-{i}"), "v".into()) {
                        result = Err(format!("err {e}"));
                        break;
                    }
                }
                self.cache.remove_listener(listener);
                let after = self.node.network_metrics();
                match result {
                    Ok(()) => format!(
                        "pingpong {n} lingered alone {} sent {}",
                        after.lingered_alone - before.lingered_alone,
                        after.changes_sent - before.changes_sent
                    ),
                    Err(e) => e,
                }
            }
            ["len"] => format!("len {}", self.cache.len()),
            ["members"] => format!("members {}", self.node.members().len()),
            ["leaves"] => format!(
                "leaves {}",
                self.leaves.load(std::sync::atomic::Ordering::SeqCst)
            ),
            ["clear"] if self.default => format!("{:?}", mccache::clear_cache(CACHE)),
            ["clear"] => format!("{:?}", self.node.clear_cache(CACHE)),
            ["metrics"] => {
                let r = if self.default {
                    mccache::get_cluster_metrics(Some(CACHE), t)
                } else {
                    self.node.get_cluster_metrics(Some(CACHE), t)
                };
                match r {
                    Ok(a) => {
                        let entries: Vec<u64> = a
                            .values()
                            .map(|m| m.get(CACHE).map_or(0, |c| c.entries))
                            .collect();
                        format!(
                            "metrics {} missing {} entries {entries:?}",
                            a.len(),
                            a.missing.len()
                        )
                    }
                    Err(e) => format!("err {e}"),
                }
            }
            ["checksum"] => {
                let r = if self.default {
                    mccache::get_cluster_checksum(CACHE, None::<&String>, t)
                } else {
                    self.node.get_cluster_checksum(CACHE, None::<&String>, t)
                };
                match r {
                    Ok(a) => {
                        let distinct: std::collections::BTreeSet<_> = a.values().collect();
                        format!(
                            "checksum {} missing {} distinct {}",
                            a.len(),
                            a.missing.len(),
                            distinct.len()
                        )
                    }
                    Err(e) => format!("err {e}"),
                }
            }
            ["localsum"] => format!(
                "localsum {:?}",
                if self.default {
                    mccache::get_local_checksum::<String>(CACHE, None)
                } else {
                    Some(self.cache.checksum())
                }
            ),
            ["health"] => {
                let h = self.node.health();
                format!(
                    "health peers {} plaintext {} unopened {:?} warnings {:?}",
                    h.peers, h.plaintext, h.unopened, h.config_warnings
                )
            }
            other => format!("err unknown command {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The test side

/// One application process, killed on drop.
struct App9 {
    proc: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    stderr: Receiver<String>,
}

impl App9 {
    /// Starts an application process with `role` and the `MCCACHE_*` variables `env`.
    fn start(role: &str, env: &[(&str, String)]) -> App9 {
        let mut cmd = Command::new(std::env::current_exe().expect("test binary path"));
        cmd.arg(crate::support::test_name(module_path!(), "child"))
            .args(["--exact", "--ignored", "--nocapture", "--quiet"])
            .env("T9_ROLE", role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Only what the test sets: nothing inherited from the environment the tests run in.
        app_env::clear_mccache_vars(&mut cmd);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = cmd.spawn().expect("spawn the application process");
        let stdin = proc.stdin.take().expect("stdin");
        let stdout = proc.stdout.take().expect("stdout");
        let err_pipe = proc.stderr.take().expect("stderr");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(answer) = line.strip_prefix("@@ ") {
                    if tx.send(answer.to_string()).is_err() {
                        break;
                    }
                }
            }
        });
        let (etx, stderr) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                if etx.send(line).is_err() {
                    break;
                }
            }
        });
        App9 {
            proc,
            stdin,
            lines,
            stderr,
        }
    }

    /// The next answer line.
    fn answer(&self) -> String {
        self.lines
            .recv_timeout(T)
            .expect("the application process answers within the time limit")
    }

    /// Sends one command (its answer is read later, with [`App9::answer`]).
    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("write a command");
        self.stdin.flush().expect("flush");
    }

    /// Sends one command and returns its answer.
    fn ask(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.answer()
    }

    /// Asks `cmd` until the answer satisfies `ok` (bounded); returns the last answer.
    fn poll(&mut self, cmd: &str, ok: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + T;
        loop {
            let a = self.ask(cmd);
            if ok(&a) || Instant::now() >= end {
                return a;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the process wrote to stderr, collected until it contains `needle` (bounded).
    fn stderr_until(&self, needle: &str) -> String {
        let end = Instant::now() + T;
        let mut text = String::new();
        while !text.contains(needle) {
            let left = end.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    text.push_str(&line);
                    text.push('\n');
                }
                Err(_) => break,
            }
        }
        text
    }
}

impl Drop for App9 {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

/// The `MCCACHE_*` variables of a loopback test cluster on group 239.255.101.`group`.
fn env(group: u8, port: u16, name: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MCCACHE_INTERFACE", "127.0.0.1".into()),
        ("MCCACHE_MULTICAST_IP", format!("239.255.101.{group}")),
        ("MCCACHE_MULTICAST_PORT", port.to_string()),
        ("MCCACHE_CLUSTER_NAME", format!("t9-{name}")),
        ("MCCACHE_CRYPTO_KEY", KEY.into()),
        ("MCCACHE_DAEMON_SLEEP", "0.1".into()),
        ("MCCACHE_CACHE_PULSE", "0.5".into()),
        ("MCCACHE_NODE_NAME", name.into()),
    ]
}

fn started(app: &App9) {
    let a = app.answer();
    assert!(a.starts_with("ready "), "the application started: {a}");
}

/// Waits until every process sees `n - 1` peers.
fn formed(apps: &mut [App9]) {
    let n = apps.len();
    let want = format!("members {}", n - 1);
    for app in apps.iter_mut() {
        let a = app.poll("members", |a| a == want);
        assert_eq!(a, want, "membership formed");
    }
}

/// Two processes on `get_cache` and one on `Node::start(Config::load())`: inserts, updates,
/// deletes and `clear_cache` reach every process; cluster metrics and checksums answer for all.
#[test]
fn get_cache_and_node_start_processes_replicate() {
    let e = env(10, 47110, "replicate");
    let mut apps = vec![
        App9::start("default", &e),
        App9::start("default", &e),
        App9::start("node", &e),
    ];
    for a in &apps {
        started(a);
    }
    formed(&mut apps);

    // Insert on a get_cache process; the others see it.
    assert_eq!(apps[0].ask("insert alice ada"), "Ok(())");
    for i in [1, 2] {
        assert_eq!(apps[i].poll("get alice", |a| a == "val ada"), "val ada");
    }
    // Update on the Node::start process.
    assert_eq!(apps[2].ask("insert alice grace"), "Ok(())");
    for i in [0, 1] {
        assert_eq!(apps[i].poll("get alice", |a| a == "val grace"), "val grace");
    }
    // More keys from each process, then a delete from the second get_cache process.
    for (i, app) in apps.iter_mut().enumerate() {
        for k in 0..5 {
            assert_eq!(app.ask(&format!("insert k{i}-{k} v{k}")), "Ok(())");
        }
    }
    assert_eq!(apps[1].ask("remove alice"), "Ok(())");
    for app in apps.iter_mut() {
        assert_eq!(app.poll("get alice", |a| a == "none"), "none");
        assert_eq!(app.poll("len", |a| a == "len 15"), "len 15");
    }
    // Cluster questions from both kinds of process: every node answers, all agree.
    for i in [0, 2] {
        let m = apps[i].ask("metrics");
        assert_eq!(
            m, "metrics 3 missing 0 entries [15, 15, 15]",
            "from process {i}"
        );
        let c = apps[i].poll("checksum", |a| a == "checksum 3 missing 0 distinct 1");
        assert_eq!(c, "checksum 3 missing 0 distinct 1", "from process {i}");
    }
    let sums: Vec<String> = apps.iter_mut().map(|a| a.ask("localsum")).collect();
    assert!(sums[0].starts_with("localsum Some("), "{sums:?}");
    // clear_cache through the module function clears every process, the caller included.
    assert_eq!(apps[1].ask("clear"), "Ok(())");
    for app in apps.iter_mut() {
        assert_eq!(app.poll("len", |a| a == "len 0"), "len 0");
    }
    // And the Node API's clear from the other kind of process.
    assert_eq!(apps[0].ask("insert bob x"), "Ok(())");
    for app in apps.iter_mut() {
        assert_eq!(app.poll("len", |a| a == "len 1"), "len 1");
    }
    assert_eq!(apps[2].ask("clear"), "Ok(())");
    for app in apps.iter_mut() {
        assert_eq!(app.poll("len", |a| a == "len 0"), "len 0");
    }
}

/// A burst of writes and then silence: the node streams, so the burst's last small changes
/// linger for company, and no later write comes to push them out. They must still reach the
/// other process on their own (the network thread's timer at the linger's deadline), not at
/// an anti-entropy pulse: the pulse is an hour here.
#[test]
fn the_tail_of_a_burst_reaches_the_other_process_without_anti_entropy() {
    let mut e = env(16, 47116, "tail");
    e.retain(|(k, _)| *k != "MCCACHE_CACHE_PULSE");
    e.push(("MCCACHE_CACHE_PULSE", "3600".into()));
    // Room for every key (the default, McCache's, is 256 entries).
    e.push(("MCCACHE_CACHE_MAX", "100000".into()));
    // A writer on `get_cache`, an observer on `Node::start(Config::load())`.
    let mut apps = vec![App9::start("default", &e), App9::start("node", &e)];
    for a in &apps {
        started(a);
    }
    formed(&mut apps);
    for round in 0..3 {
        let prefix = format!("r{round}");
        assert_eq!(apps[0].ask(&format!("burst 2000 {prefix}")), "burst 2000");
        let want = format!("len {}", 2000 * (round + 1));
        let got = apps[1].poll("len", |a| a == want);
        assert_eq!(
            got, want,
            "round {round}: every change of the burst arrived"
        );
        assert_eq!(apps[1].ask(&format!("get {prefix}-1999")), "val v");
    }
}

/// Request and response between two processes (each writes, then waits for the other's
/// answer): with one write in flight at a time no change ever has company, so none should
/// wait for it. After a data message a small change waits up to the linger (500 µs) for others
/// to share its datagram; two changes in a row that waited and left alone tell the node that
/// waiting does not pay here (`lingered_alone` in the network metrics), and the next ones
/// leave at once, but for the linger's ever rarer probes of whether waiting pays again (writes
/// 20, 53 and 118 of 200). Before, every write but each process's first waited out the linger for nothing:
/// 199 of 200 here, a lag p50 of 254 µs in the replication bench.
#[test]
fn a_writer_with_one_write_in_flight_does_not_wait_for_company() {
    let e = env(17, 47117, "pingpong");
    // A leader on `get_cache`, a follower on `Node::start(Config::load())`.
    let mut apps = vec![App9::start("default", &e), App9::start("node", &e)];
    for a in &apps {
        started(a);
    }
    formed(&mut apps);
    let n = 200;
    let [leader, follower] = &mut apps[..] else {
        unreachable!()
    };
    follower.send(&format!("pingpong {n} follow"));
    leader.send(&format!("pingpong {n} lead"));
    for app in &apps {
        let a = app.answer();
        let words: Vec<&str> = a.split_whitespace().collect();
        let ["pingpong", _, "lingered", "alone", alone, "sent", sent] = words[..] else {
            panic!("{a}")
        };
        let (alone, sent): (usize, usize) = (alone.parse().unwrap(), sent.parse().unwrap());
        // The follower's last answer may still be on its way out.
        assert!(sent >= n - 1, "{a}");
        // The second and third writes, and the probes: 5 (fewer if a pause longer than the
        // linger came).
        assert!(alone <= 5, "{alone} of {n} writes waited for nothing: {a}");
    }
}

/// The TTL as applications run it (`MCCACHE_CACHE_TTL`, the housekeeper refreshing the coarse
/// clock that read hits compare expiries with): once its TTL has passed, an entry is gone in
/// the process that wrote it and in the peer that received it, and the next hits keep missing.
#[test]
fn entries_expire_at_their_ttl_in_every_process() {
    let mut e = env(15, 47115, "ttl");
    e.push(("MCCACHE_CACHE_TTL", "1.5".into()));
    let mut apps = vec![App9::start("default", &e), App9::start("node", &e)];
    for a in &apps {
        started(a);
    }
    formed(&mut apps);
    assert_eq!(apps[0].ask("insert k v"), "Ok(())");
    assert_eq!(apps[1].poll("get k", |a| a == "val v"), "val v");
    // Both processes stored the entry before this instant; its TTL counts from there (rounded
    // up to the millisecond).
    let stored = Instant::now();
    let expired = stored + Duration::from_millis(1_510);
    while Instant::now() < expired {
        std::thread::sleep(expired - Instant::now());
    }
    for app in apps.iter_mut() {
        for _ in 0..100 {
            assert_eq!(app.ask("get k"), "none", "an expired entry was returned");
        }
    }
}

/// A process that only uses `get_cache` and returns from `main` announces its leave: its peer
/// sees a clean leave, not a failure.
#[test]
fn default_node_leaves_at_process_exit() {
    let e = env(11, 47111, "exit");
    let mut apps = vec![App9::start("node", &e), App9::start("default", &e)];
    for a in &apps {
        started(a);
    }
    formed(&mut apps);
    assert_eq!(apps[1].ask("exit"), "bye");
    let status = apps[1].proc.wait().expect("the process exits");
    assert!(status.success(), "{status}");
    assert_eq!(apps[0].poll("leaves", |a| a == "leaves 1"), "leaves 1");
    assert_eq!(apps[0].ask("members"), "members 0");
}

/// Two processes with different keys on one group: each is alone, and each says why in its
/// health (datagrams sealed with another key).
#[test]
fn processes_with_different_keys_report_the_cause() {
    let a_env = env(12, 47112, "keys");
    let mut b_env = a_env.clone();
    for (k, v) in b_env.iter_mut() {
        if *k == "MCCACHE_CRYPTO_KEY" {
            *v = mccache::generate_key();
        }
    }
    let mut a = App9::start("default", &a_env);
    let mut b = App9::start("default", &b_env);
    started(&a);
    started(&b);
    for app in [&mut a, &mut b] {
        let h = app.poll("health", |h| h.contains("OtherKey"));
        assert!(h.contains("health peers 0"), "{h}");
        assert!(h.contains("OtherKey"), "{h}");
    }
    // Without a tracing subscriber the warning reaches stderr, naming the cause.
    let text = a.stderr_until("another crypto_key");
    assert!(text.contains("could not be opened"), "{text}");
    assert!(text.contains("another crypto_key"), "{text}");
}

/// A mistyped variable is reported with the nearest known key (on stderr with no subscriber,
/// and in `health()`); a wrong interface is an error naming the key and the value.
#[test]
fn mistyped_variable_and_wrong_interface_are_visible() {
    let mut e = env(13, 47113, "typo");
    e.push(("MCCACHE_CACHE_TLL", "5".into()));
    let mut app = App9::start("default", &e);
    started(&app);
    let h = app.ask("health");
    assert!(
        h.contains("MCCACHE_CACHE_TLL is not a configuration key and is ignored (did you mean MCCACHE_CACHE_TTL?)"),
        "{h}"
    );
    drop(app);

    // 192.0.2.1 (TEST-NET-1) is never an address of this host.
    let mut e = env(14, 47114, "iface");
    e.retain(|(k, _)| *k != "MCCACHE_INTERFACE");
    e.push(("MCCACHE_INTERFACE", "192.0.2.1".into()));
    e.push(("MCCACHE_CACHE_TLL", "5".into()));
    for role in ["default", "node"] {
        let app = App9::start(role, &e);
        let a = app.answer();
        assert!(
            a.starts_with(r#"err interface: "192.0.2.1" is not an address of this host"#),
            "{role}: {a}"
        );
        let text = app.stderr_until("did you mean");
        assert!(
            text.contains("did you mean MCCACHE_CACHE_TTL?"),
            "{role}: stderr {text}"
        );
    }
}

/// The `mccache` tool, as a user runs it.
fn tool(args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mccache"));
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("MCCACHE_")
        {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run mccache")
}

/// The demo reports lag in milliseconds, explains retransmits and repairs, and converges.
#[test]
fn demo_is_readable() {
    let group = ["--group", "239.255.101.40", "--port", "47140"];
    let out = tool(
        &[&["demo", "-n", "2", "-d", "1"][..], &group[..]].concat(),
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("lag p99"), "{text}");
    assert!(text.contains(" ms "), "lag with units: {text}");
    assert!(text.contains("retransmits: datagrams"), "{text}");
    assert!(text.contains("repairs: entries"), "{text}");
    assert!(text.contains("all caches identical"), "{text}");

    let out = tool(
        &[&["demo", "-n", "2", "-d", "1", "--json"][..], &group[..]].concat(),
        &[],
    );
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["converged"], true, "{v}");
    assert!(v["lag_p99_ms"].is_number(), "{v}");
    assert_eq!(v["per_node"].as_array().map(Vec::len), Some(2));
}

/// `mccache node`: the aperture alone sets the pace (no breathers unless `--breather`), and a
/// plaintext node prints the plaintext warning (the tool installs a tracing subscriber).
#[test]
fn stress_node_paces_by_aperture_and_warns_in_plaintext() {
    let dir = std::env::temp_dir().join(format!("t9-node-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut e = env(41, 47141, "tool");
    e.retain(|(k, _)| *k != "MCCACHE_CRYPTO_KEY");
    let run = |extra: &[&str], file: &str| {
        let out_file = dir.join(file);
        let args = [
            &["node", "--seed", "7", "--out"][..],
            &[out_file.to_str().unwrap()][..],
            extra,
        ]
        .concat();
        let out = tool(&args, &e);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stderr}");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap();
        (json, stderr)
    };
    let (flat, stderr) = run(&["--aperture", "0", "--duration", "1"], "flat.json");
    assert!(stderr.contains("no crypto_key set"), "{stderr}");
    assert_eq!(flat["ops"]["breathers"], 0, "no breathers unless asked");
    assert!(flat["ops"]["gets"].as_u64().unwrap() > 0);
    let (paced, _) = run(
        &["--aperture", "0.001", "--duration", "2", "--breather"],
        "paced.json",
    );
    assert!(
        paced["ops"]["breathers"].as_u64().unwrap() > 0,
        "--breather restores the ancestor's pauses: {}",
        paced["ops"]
    );
    assert_eq!(paced["settings"]["breather"], true);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same over unicast (issue 11's range: ports 47280-47282, cluster `t11-userside`): two
/// `get_cache` processes and one `Node::start(Config::load())` process, each configured only by
/// `MCCACHE_TRANSPORT=unicast`, its own `MCCACHE_BIND_PORT` and `MCCACHE_PEERS` naming the first.
#[test]
fn get_cache_processes_replicate_over_unicast() {
    let unicast = |port: u16| {
        let mut e = env(12, 47299, "userside");
        e.retain(|(k, _)| *k != "MCCACHE_CLUSTER_NAME");
        e.push(("MCCACHE_CLUSTER_NAME", "t11-userside".into()));
        e.push(("MCCACHE_TRANSPORT", "unicast".into()));
        e.push(("MCCACHE_BIND_PORT", port.to_string()));
        e.push(("MCCACHE_PEERS", "127.0.0.1:47280".into()));
        e
    };
    let mut apps = vec![
        App9::start("default", &unicast(47280)),
        App9::start("default", &unicast(47281)),
        App9::start("node", &unicast(47282)),
    ];
    for a in &apps {
        started(a);
    }
    formed(&mut apps);
    assert_eq!(apps[1].ask("insert alice ada"), "Ok(())");
    assert_eq!(apps[2].ask("insert bob grace"), "Ok(())");
    for app in apps.iter_mut() {
        assert_eq!(app.poll("len", |a| a == "len 2"), "len 2");
    }
    assert_eq!(apps[0].ask("remove alice"), "Ok(())");
    for app in apps.iter_mut() {
        assert_eq!(app.poll("get alice", |a| a == "none"), "none");
    }
    let m = apps[2].ask("metrics");
    assert_eq!(m, "metrics 3 missing 0 entries [1, 1, 1]");
    assert_eq!(apps[1].ask("clear"), "Ok(())");
    for app in apps.iter_mut() {
        assert_eq!(app.poll("len", |a| a == "len 0"), "len 0");
    }
}
