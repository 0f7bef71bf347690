//! One cache's view of the memcached tier: the [`Backing`] a store consults.
//!
//! Keys are namespaced by cluster and cache name ([`Key`]). `clear` bumps the cache's
//! generation counter in memcached; every stored value carries the generation it was written
//! under, and a value of another generation reads as a miss. Every miss reads the generation
//! too (in the same round trip when both keys live on one server), so a clear anywhere is seen
//! at once everywhere. Writes use the last generation this process saw.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::client::Client;
use super::codec::{self, Code, Key, KeyKind, SetMode};
use super::conn::Response;
use super::seal::Sealer;
use crate::cache::backing::{Backing, Lease, Read};
use crate::config::WritePolicy;

/// The tier behind one cache.
pub(crate) struct Tier {
    client: Arc<Client>,
    cluster: String,
    cache: String,
    write: WritePolicy,
    lease_ttl: u64,
    lease_wait: Duration,
    gen_key: Key,
    generation: AtomicU64,
    generation_known: AtomicBool,
    /// Seals values with the cluster's keys (`None`: the cluster is plaintext).
    sealer: Option<Arc<Sealer>>,
}

/// What binds a sealed value: its memcached key and generation.
fn binding(key: &Key, generation: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(key.wire.len() + 8);
    aad.extend_from_slice(key.wire.as_bytes());
    aad.extend_from_slice(&generation.to_be_bytes());
    aad
}

/// What one read of an entry found.
struct Found {
    server: usize,
    generation: u64,
    response: Response,
}

impl Tier {
    pub(crate) fn new(
        client: Arc<Client>,
        cluster: &str,
        cache: &str,
        write: WritePolicy,
        lease_ttl: Duration,
        lease_wait: Duration,
        sealer: Option<Arc<Sealer>>,
    ) -> Tier {
        Tier {
            client,
            cluster: cluster.to_string(),
            cache: cache.to_string(),
            write,
            lease_ttl: lease_ttl.as_secs().max(1),
            lease_wait,
            gen_key: Key::new(cluster, cache, KeyKind::Generation, b""),
            generation: AtomicU64::new(0),
            generation_known: AtomicBool::new(false),
            sealer,
        }
    }

    fn key(&self, bytes: &[u8]) -> Key {
        Key::new(&self.cluster, &self.cache, KeyKind::Entry, bytes)
    }

    fn fallback(&self) {
        self.client
            .counters
            .fallbacks
            .fetch_add(1, Ordering::Relaxed);
    }

    fn note_generation(&self, g: u64) {
        self.generation.store(g, Ordering::Relaxed);
        self.generation_known.store(true, Ordering::Relaxed);
    }

    /// The generation in a reply to `mg <gen key> v` (absent: 0).
    fn parse_generation(r: &Response) -> Option<u64> {
        match r.header.code {
            Some(Code::NotFound) => Some(0),
            Some(Code::Value(_)) => codec::parse_counter(r.value.as_deref()?),
            _ => None,
        }
    }

    /// The generation writes use: the last one seen, read once if none was.
    fn write_generation(&self) -> Option<u64> {
        if self.generation_known.load(Ordering::Relaxed) {
            return Some(self.generation.load(Ordering::Relaxed));
        }
        let server = self.client.route(&self.gen_key)?;
        let mut req = Vec::new();
        codec::get(&mut req, &self.gen_key.wire, None);
        let r = self.client.run(server, &req, 1)?;
        let g = Self::parse_generation(&r[0])?;
        self.note_generation(g);
        Some(g)
    }

    /// Reads `key` (with a lease placeholder if `lease`) and the current generation.
    fn fetch(&self, key: &Key, lease: Option<u64>) -> Option<Found> {
        let server = self.client.route(key)?;
        let gen_server = self.client.route(&self.gen_key)?;
        let mut req = Vec::with_capacity(128);
        let (generation, response) = if gen_server == server {
            codec::get(&mut req, &self.gen_key.wire, None);
            codec::get(&mut req, &key.wire, lease);
            let mut r = self.client.run(server, &req, 2)?;
            let response = r.pop()?;
            (Self::parse_generation(&r[0])?, response)
        } else {
            codec::get(&mut req, &self.gen_key.wire, None);
            let r = self.client.run(gen_server, &req, 1)?;
            let g = Self::parse_generation(&r[0])?;
            req.clear();
            codec::get(&mut req, &key.wire, lease);
            (g, self.client.run(server, &req, 1)?.pop()?)
        };
        self.note_generation(generation);
        Some(Found {
            server,
            generation,
            response,
        })
    }

    /// The value in `found` if it is a current one of ours (opened, if the cluster seals).
    fn current(&self, key: &Key, found: &Found) -> Option<Vec<u8>> {
        let data = found.response.value.as_deref()?;
        if data.is_empty() {
            return None; // a lease placeholder
        }
        let stored = codec::decode_value(key, data)?;
        if stored.generation != found.generation {
            self.client
                .counters
                .old_generation
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        match (&self.sealer, stored.sealed) {
            (None, false) => Some(stored.value.to_vec()),
            (Some(s), true) => s.open(&binding(key, stored.generation), stored.value),
            // Sealed where the cluster is plaintext, or the other way round: not ours.
            _ => None,
        }
    }

    fn ttl(found: &Found) -> Option<Duration> {
        match found.response.header.ttl {
            Some(t) if t >= 0 => Some(Duration::from_secs((t as u64).max(1))),
            _ => None,
        }
    }

    fn store(&self, key: &Key, value: &[u8], ttl: Option<Duration>, mode: SetMode) {
        let Some(generation) = self.write_generation() else {
            self.fallback();
            return;
        };
        let Some(server) = self.client.route(key) else {
            self.fallback();
            return;
        };
        let data = match &self.sealer {
            None => codec::encode_value(key, generation, false, value),
            Some(s) => match s.seal(&binding(key, generation), value) {
                Some(sealed) => codec::encode_value(key, generation, true, &sealed),
                None => return,
            },
        };
        let mut req = Vec::with_capacity(data.len() + 64);
        codec::set(
            &mut req,
            &key.wire,
            &data,
            codec::ttl_arg(ttl, unix_now()),
            mode,
        );
        if self.client.run(server, &req, 1).is_none() {
            self.fallback();
        }
    }

    fn delete(&self, key: &Key, cas: Option<u64>) {
        let Some(server) = self.client.route(key) else {
            self.fallback();
            return;
        };
        let mut req = Vec::with_capacity(64);
        codec::delete(&mut req, &key.wire, cas);
        if self.client.run(server, &req, 1).is_none() {
            self.fallback();
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Backing for Tier {
    fn read(&self, key: &[u8]) -> Read {
        let k = self.key(key);
        let Some(found) = self.fetch(&k, None) else {
            self.fallback();
            return Read::Failed;
        };
        // A value marked stale (another client's `md I`) is served only to callers with a
        // loader, while one of them reloads it.
        let stale = found.response.header.stale;
        match self.current(&k, &found).filter(|_| !stale) {
            Some(v) => {
                self.client.count_read(found.server, true);
                Read::Hit {
                    value: v,
                    ttl: Self::ttl(&found),
                }
            }
            None => {
                self.client.count_read(found.server, false);
                Read::Miss
            }
        }
    }

    fn lease(&self, key: &[u8]) -> Lease {
        let k = self.key(key);
        // Twice at most: a value of an old generation is deleted, then the lease is taken.
        for _ in 0..2 {
            let Some(found) = self.fetch(&k, Some(self.lease_ttl)) else {
                self.fallback();
                return Lease::Unavailable;
            };
            let h = &found.response.header;
            let current = self.current(&k, &found);
            self.client
                .count_read(found.server, current.is_some() && !h.stale);
            if h.win {
                self.client
                    .counters
                    .lease_won
                    .fetch_add(1, Ordering::Relaxed);
                return match h.cas {
                    Some(cas) => Lease::Won(cas),
                    None => Lease::Unavailable,
                };
            }
            if h.busy {
                self.client
                    .counters
                    .lease_busy
                    .fetch_add(1, Ordering::Relaxed);
                let stale = if h.stale { current } else { None };
                if stale.is_some() {
                    self.client
                        .counters
                        .stale_served
                        .fetch_add(1, Ordering::Relaxed);
                }
                return Lease::Busy { stale };
            }
            match (current, found.response.header.code) {
                (Some(v), _) => {
                    return Lease::Hit {
                        value: v,
                        ttl: Self::ttl(&found),
                    };
                }
                (None, Some(Code::Value(_))) => {
                    // Ours from before a clear, or not ours: remove it (if unchanged), retry.
                    self.delete(&k, h.cas);
                }
                _ => return Lease::Unavailable,
            }
        }
        Lease::Unavailable
    }

    fn fulfil(&self, key: &[u8], token: u64, value: &[u8], ttl: Option<Duration>) {
        self.store(&self.key(key), value, ttl, SetMode::Cas(token));
    }

    fn abandon(&self, key: &[u8], token: u64) {
        self.delete(&self.key(key), Some(token));
    }

    fn wrote(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) {
        let k = self.key(key);
        match self.write {
            WritePolicy::WriteThrough => self.store(&k, value, ttl, SetMode::Set),
            WritePolicy::Invalidate => self.delete(&k, None),
        }
    }

    fn loaded(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) {
        // A refill, not new state: never replaces what another writer stored meanwhile.
        self.store(&self.key(key), value, ttl, SetMode::Add);
    }

    fn removed(&self, key: &[u8]) {
        self.delete(&self.key(key), None);
    }

    fn cleared(&self) {
        let Some(server) = self.client.route(&self.gen_key) else {
            self.fallback();
            return;
        };
        // A counter created fresh starts at the wall clock in ms, so a generation key that
        // memcached evicted never comes back at a value old entries carry.
        let initial = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        let mut req = Vec::with_capacity(64);
        codec::incr(&mut req, &self.gen_key.wire, initial);
        match self.client.run(server, &req, 1) {
            Some(r) => match r[0].value.as_deref().and_then(codec::parse_counter) {
                Some(g) => self.note_generation(g),
                None => self.fallback(),
            },
            None => self.fallback(),
        }
    }

    fn lease_wait(&self) -> Duration {
        self.lease_wait
    }
}
