//! A store's side of the optional shared tier ([`Backing`]): read-through on a local miss,
//! load-through under the tier's fleet-wide lease, and the write hooks.
//!
//! A value found in the tier or loaded is stored as a *fill*: only if the key is still absent,
//! at a version taken *before* the tier was read, so any write or delete made while the read
//! was in flight (here or on a peer) wins over it. Fills replicate like writes, except in
//! invalidate mode, where there is nothing to invalidate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::encoding::{Encoded, ser_err};
use super::{Cond, Store, Ttl};
use crate::cache::backing::{Backing, Lease, Read};
use crate::cache::store::{CacheKey, CacheValue};
use crate::error::{Error, Result};
use crate::proto::version::Version;

/// Longest pause between two polls of a lease held by another caller.
const MAX_POLL: Duration = Duration::from_millis(20);

impl<K: CacheKey, V: CacheValue> Store<K, V> {
    /// Puts a shared tier behind this cache. Done once, before the cache is handed out.
    #[cfg_attr(not(feature = "memcached"), allow(dead_code))]
    pub(crate) fn set_backing(&self, backing: Arc<dyn Backing>) {
        let _ = self.backing.set(backing);
    }

    /// Whether a shared tier is behind this cache.
    #[inline]
    pub(crate) fn has_backing(&self) -> bool {
        self.backing.get().is_some()
    }

    /// A local miss: reads the shared tier and fills the local copy with what it has.
    pub(crate) fn read_through(&self, key: &K) -> Option<V> {
        let b = self.backing.get()?;
        let key_bytes = rmp_serde::to_vec(key).ok()?;
        let version = self.fill_version();
        match b.read(&key_bytes) {
            Read::Hit { value, ttl } => {
                let v: V = rmp_serde::from_slice(&value).ok()?;
                self.fill(key.clone(), v.clone(), ttl, version);
                Some(v)
            }
            Read::Miss | Read::Failed => None,
        }
    }

    /// The load of a local miss in `get_or_insert_with`, run by this node's single-flight
    /// leader: the tier's value if it has one; else, if this caller wins the tier's lease, the
    /// loader's value (stored in the tier and here); else the value another caller loads,
    /// waited for up to the tier's lease wait (polling the tier and this store, which a peer's
    /// replicated load may fill first), or the stale value the tier still holds; past the wait,
    /// or if the tier fails, the loader runs here.
    pub(crate) fn load_through<F, E>(&self, key: K, load: F) -> Result<V, E>
    where
        F: FnOnce() -> Result<V, E>,
        E: From<Error>,
    {
        let Some(b) = self.backing.get() else {
            let v = load()?;
            self.write(key, v.clone(), Cond::Always, Ttl::Cache)?;
            return Ok(v);
        };
        let key_bytes = rmp_serde::to_vec(&key).map_err(ser_err)?;
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            let version = self.fill_version();
            match b.lease(&key_bytes) {
                Lease::Hit { value, ttl } => {
                    if let Ok(v) = rmp_serde::from_slice::<V>(&value) {
                        self.fill(key, v.clone(), ttl, version);
                        return Ok(v);
                    }
                    // Undecodable (another type under this name): load as if missing.
                    return self.load_here(b.as_ref(), key, &key_bytes, load, version);
                }
                Lease::Won(token) => {
                    let v = match load() {
                        Ok(v) => v,
                        Err(e) => {
                            b.abandon(&key_bytes, token);
                            return Err(e);
                        }
                    };
                    let enc = Encoded::new(&key, &v)?;
                    self.check_size(enc.size())?;
                    b.fulfil(&key_bytes, token, enc.value(), self.ttl_of(Ttl::Cache));
                    self.fill_encoded(key, v.clone(), enc, Ttl::Cache, version);
                    return Ok(v);
                }
                Lease::Busy { stale } => {
                    if let Some((v, _)) = self.peek_value(&key) {
                        return Ok(v);
                    }
                    if let Some(v) = stale.and_then(|s| rmp_serde::from_slice::<V>(&s).ok()) {
                        return Ok(v);
                    }
                    let waited = started.elapsed();
                    if waited >= b.lease_wait() {
                        return self.load_here(b.as_ref(), key, &key_bytes, load, version);
                    }
                    std::thread::sleep(pause.min(b.lease_wait() - waited));
                    pause = (pause * 2).min(MAX_POLL);
                }
                Lease::Unavailable => {
                    return self.load_here(b.as_ref(), key, &key_bytes, load, version);
                }
            }
        }
    }

    /// Runs the loader here, without a lease; offers the value to the tier and fills it.
    fn load_here<F, E>(
        &self,
        b: &dyn Backing,
        key: K,
        key_bytes: &[u8],
        load: F,
        version: Version,
    ) -> Result<V, E>
    where
        F: FnOnce() -> Result<V, E>,
        E: From<Error>,
    {
        let v = load()?;
        let enc = Encoded::new(&key, &v)?;
        self.check_size(enc.size())?;
        b.loaded(key_bytes, enc.value(), self.ttl_of(Ttl::Cache));
        self.fill_encoded(key, v.clone(), enc, Ttl::Cache, version);
        Ok(v)
    }

    /// A version for a fill, taken before the tier is read.
    fn fill_version(&self) -> Version {
        Version::new(self.core.hlc.tick(self.core.clock.wall_ms()), self.core.id)
    }

    /// Stores a value read from the tier with the time it has left there.
    fn fill(&self, key: K, value: V, ttl: Option<Duration>, version: Version) {
        let ttl = ttl.map_or(Ttl::Cache, Ttl::Entry);
        if let Ok(enc) = Encoded::new(&key, &value)
            && self.check_size(enc.size()).is_ok()
        {
            self.fill_encoded(key, value, enc, ttl, version);
        }
    }

    fn fill_encoded(&self, key: K, value: V, enc: Encoded, ttl: Ttl, version: Version) {
        // A fill never fails the caller: it has its value either way.
        let _ = self.write_encoded(key, value, &enc, Cond::Fill(version), ttl);
    }

    /// A write's TTL as a duration (`None`: no expiry).
    pub(super) fn ttl_of(&self, ttl: Ttl) -> Option<Duration> {
        match ttl {
            Ttl::Cache => self.cfg.ttl,
            Ttl::Entry(d) => (!d.is_zero()).then_some(d),
        }
    }

    /// Hook: a local write (not a fill) was stored.
    pub(super) fn backing_wrote(&self, enc: &Encoded, ttl: Ttl) {
        if let Some(b) = self.backing.get() {
            b.wrote(enc.key(), enc.value(), self.ttl_of(ttl));
        }
    }

    /// Hook: `remove` was called (whether or not the key was held here).
    pub(super) fn backing_removed(&self, key_bytes: &[u8]) {
        if let Some(b) = self.backing.get() {
            b.removed(key_bytes);
        }
    }

    /// Hook: `clear` was called.
    pub(super) fn backing_cleared(&self) {
        if let Some(b) = self.backing.get() {
            b.cleared();
        }
    }
}
