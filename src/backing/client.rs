//! The servers of one tier and how keys find them: rendezvous (highest random weight) hashing
//! over the servers that are not marked down, so a server going down moves only its own keys,
//! and coming back moves them home.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::codec::{Key, mix, stable_hash};
use super::conn::Response;
use super::server::{Limits, Outcome, Server};
use super::{Events, ServerEvent, ServerMetrics};

/// Tier-wide counters (all caches on these servers).
#[derive(Default)]
pub(crate) struct Counters {
    /// Calls that went on with the local tier only because no server answered.
    pub(crate) fallbacks: AtomicU64,
    /// Calls made with no usable server at all.
    pub(crate) no_server: AtomicU64,
    pub(crate) lease_won: AtomicU64,
    pub(crate) lease_busy: AtomicU64,
    pub(crate) stale_served: AtomicU64,
    /// Values found under an older generation (written before a clear): read as misses.
    pub(crate) old_generation: AtomicU64,
}

/// A set of servers (one `backing` URL) shared by every cache that names it.
pub(crate) struct Client {
    servers: Vec<Server>,
    events: Arc<Events>,
    pub(crate) counters: Counters,
}

impl Client {
    pub(crate) fn new(addrs: &[String], limits: Limits, events: Arc<Events>) -> Client {
        Client {
            servers: addrs
                .iter()
                .map(|a| Server::new(a, limits.clone()))
                .collect(),
            events,
            counters: Counters::default(),
        }
    }

    /// The server for `key` now: the highest-scoring one that is usable.
    pub(crate) fn route(&self, key: &Key) -> Option<usize> {
        let h = stable_hash(0, key.wire.as_bytes());
        let now = Instant::now();
        let mut order: Vec<(u64, usize)> = self
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| (mix(h ^ s.id_hash), i))
            .collect();
        order.sort_unstable_by(|a, b| b.cmp(a));
        let found = order
            .into_iter()
            .map(|(_, i)| i)
            .find(|&i| self.servers[i].usable(now));
        if found.is_none() {
            self.counters.no_server.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Runs `request` (expecting `responses` answers) on server `i`.
    pub(crate) fn run(&self, i: usize, request: &[u8], responses: usize) -> Option<Vec<Response>> {
        let events = |e: ServerEvent| self.events.emit(&e);
        match self.servers[i].exchange(request, responses, &events) {
            Outcome::Ok(r) => Some(r),
            Outcome::Failed => None,
        }
    }

    /// Counts a hit or miss on server `i`.
    pub(crate) fn count_read(&self, i: usize, hit: bool) {
        self.servers[i].count_read(hit);
    }

    pub(crate) fn metrics(&self) -> Vec<ServerMetrics> {
        self.servers.iter().map(Server::metrics).collect()
    }

    /// Whether every server is marked down.
    #[allow(dead_code)]
    pub(crate) fn all_down(&self) -> bool {
        self.servers.iter().all(Server::is_down)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> Limits {
        Limits {
            timeout: Duration::from_millis(50),
            pool_max: 2,
            down_after: 1,
            retry_after: Duration::from_secs(60),
            max_value: 1024,
        }
    }

    #[test]
    fn rendezvous_balances_and_moves_only_the_lost_servers_keys() {
        let addrs: Vec<String> = (0..4).map(|i| format!("127.0.0.1:{}", 47690 + i)).collect();
        let four = Client::new(&addrs, limits(), Arc::new(Events::default()));
        let three = Client::new(&addrs[..3], limits(), Arc::new(Events::default()));
        let mut counts = [0usize; 4];
        for n in 0..4000u32 {
            let key = Key::new(
                "c",
                "x",
                super::super::codec::KeyKind::Entry,
                &n.to_be_bytes(),
            );
            let a = four.route(&key).unwrap();
            counts[a] += 1;
            let b = three.route(&key).unwrap();
            if a < 3 {
                assert_eq!(a, b, "a key moved although its server stayed");
            }
        }
        assert!(counts.iter().all(|c| *c > 800), "unbalanced: {counts:?}");
    }
}
