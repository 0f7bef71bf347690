//! One mccache node as its own process, driven over stdin/stdout (used by the fault tests in
//! `tests/it/netns_faults.rs`, handy by hand too).
//!
//! Configuration comes from `mccache.toml` / `MCCACHE_*` variables ([`Config::load`]). Once the
//! node has started and is ready it prints `{"ready":true,"id":"..."}`; then it reads one
//! command per line and answers each with one JSON line:
//!
//! - `write N PREFIX`: inserts keys `PREFIX0` .. `PREFIX{N-1}` into the cache `faults`
//!   (values name this node and a running write counter) → `{"ok":true,"written":N}`
//! - `delete PREFIX I`: removes key `PREFIX{I}` → `{"ok":true,"removed":bool}`
//! - `get KEY` → `{"value":..}` (`null` when absent)
//! - `digest` → `{"node":..,"len":..,"checksum":..,"members":..,"suspects":..,"ready":..,"quiet":..}`
//!   where `quiet` means nothing is queued to send and the retransmit buffer is empty
//! - `metrics`: the network metrics as JSON
//! - `quit`: leaves the cluster and exits
//!
//! Bad input gets `{"error":"..."}` and the node carries on.
//!
//! ```text
//! MCCACHE_INTERFACE=127.0.0.1 MCCACHE_CACHE_MAX=100000 cargo run --example fault_node
//! ```

use std::io::{BufRead, Write};
use std::time::Duration;

use mccache::{Cache, Config, Node};
use serde_json::{Value, json};

/// How long to wait for the state transfer before reporting ready anyway (with `ready:false`).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest `write` batch accepted in one command.
const MAX_WRITE: u64 = 10_000_000;

fn main() {
    let node = match Config::load().map_err(Into::into).and_then(Node::start) {
        Ok(n) => n,
        Err(e) => {
            println!("{}", json!({ "ready": false, "error": e.to_string() }));
            std::process::exit(2);
        }
    };
    let cache: Cache<String, String> = match node.cache("faults") {
        Ok(c) => c,
        Err(e) => {
            println!("{}", json!({ "ready": false, "error": e.to_string() }));
            std::process::exit(2);
        }
    };
    let ready = node.wait_ready(READY_TIMEOUT).is_ready();
    let name = node.config().node_name_or_default();
    let mut out = std::io::stdout().lock();
    if !emit(
        &mut out,
        &json!({ "ready": ready, "id": node.id().to_string(), "name": name }),
    ) {
        return;
    }
    let mut counter: u64 = 0;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            [] => continue,
            ["quit"] => break,
            ["write", n, prefix] => match n.parse::<u64>() {
                Ok(n) if n <= MAX_WRITE => write(&cache, &name, &mut counter, n, prefix),
                _ => json!({ "error": format!("write: {n:?} is not a count up to {MAX_WRITE}") }),
            },
            ["delete", prefix, i] => match i.parse::<u64>() {
                Ok(i) => match cache.remove(&format!("{prefix}{i}")) {
                    Ok(old) => json!({ "ok": true, "removed": old.is_some() }),
                    Err(e) => json!({ "error": e.to_string() }),
                },
                Err(_) => json!({ "error": format!("delete: {i:?} is not an index") }),
            },
            ["get", key] => json!({ "value": cache.get(&(*key).to_string()) }),
            ["digest"] => digest(&node, &cache, &name),
            ["metrics"] => serde_json::to_value(node.network_metrics())
                .unwrap_or_else(|e| json!({ "error": e.to_string() })),
            _ => json!({ "error": format!("unknown command {line:?}") }),
        };
        if !emit(&mut out, &answer) {
            break;
        }
    }
    node.shutdown();
}

/// Writes one JSON line; false once stdout is gone (the driver went away).
fn emit(out: &mut impl Write, v: &Value) -> bool {
    writeln!(out, "{v}").and_then(|()| out.flush()).is_ok()
}

fn write(
    cache: &Cache<String, String>,
    name: &str,
    counter: &mut u64,
    n: u64,
    prefix: &str,
) -> Value {
    for i in 0..n {
        *counter += 1;
        if let Err(e) = cache.insert(format!("{prefix}{i}"), format!("{name}#{counter}")) {
            return json!({ "error": e.to_string(), "written": i });
        }
    }
    json!({ "ok": true, "written": n })
}

fn digest(node: &Node, cache: &Cache<String, String>, name: &str) -> Value {
    let m = node.network_metrics();
    let members = node.members();
    json!({
        "node": name,
        "len": cache.len(),
        "checksum": cache.checksum(),
        "members": members.len(),
        "suspects": members.iter().filter(|m| m.suspect).count(),
        "ready": node.is_ready(),
        "quiet": m.outbound_queue == 0 && m.retransmit_buffer_msgs == 0,
    })
}
