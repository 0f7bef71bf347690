//! Anti-entropy work that would only repeat work still under way: a repair of a record that
//! already waits in the outbox, and a pull of a key already asked for.
//!
//! A repair travels on the group stream, so one copy reaches every member. But a node that
//! pulses hears bucket lists from every peer that differs, and it compared each list on its
//! own: with nine members it queued the same record once per peer's list (up to eight copies,
//! each multicast to all), and pulled a key it lacked from every peer that held it (up to
//! eight answers, each multicast to all). After nine processes wrote flat out, these copies
//! filled the outboxes with ~150,000 repairs each, and the caches took 20–60 s to agree.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::version::Version;

/// Most keys remembered of each kind; past it the memory is dropped (a repeat then costs a
/// duplicate, never a lost repair).
const MAX_REMEMBERED: usize = 1 << 18;

/// One cache's keys, with what is remembered of each.
type Keys<T> = HashMap<Vec<u8>, T, foldhash::fast::RandomState>;

/// What [`Coalescer`] remembers: the repairs waiting in the outbox and the pulls in flight.
#[derive(Debug, Default)]
pub(super) struct Coalescer {
    /// Per cache, each key repaired: the version queued and its position in the outbox's
    /// stream of items (it waits while that position has not been taken).
    queued: HashMap<Arc<str>, Keys<(Version, u64)>>,
    queued_len: usize,
    /// Items taken out of the outbox so far (packed into data messages).
    taken: u64,
    /// Per cache, each key pulled: the version asked for and when.
    pulled: HashMap<Arc<str>, Keys<(Version, Instant)>>,
    pulled_len: usize,
}

impl Coalescer {
    /// Counts items packed out of the outbox.
    pub(super) fn taken(&mut self, n: usize) {
        self.taken += n as u64;
    }

    /// Whether a repair of `key` at `version` or newer waits in the outbox.
    pub(super) fn repair_waits(&self, cache: &str, key: &[u8], version: Version) -> bool {
        self.queued
            .get(cache)
            .and_then(|keys| keys.get(key))
            .is_some_and(|&(v, at)| v >= version && at >= self.taken)
    }

    /// Notes a repair of `key` at `version` queued with `waiting` items ahead of it in the
    /// outbox. False (and nothing noted) if one at that version or newer already waits.
    pub(super) fn queue_repair(
        &mut self,
        cache: &Arc<str>,
        key: &[u8],
        version: Version,
        waiting: usize,
    ) -> bool {
        if self.repair_waits(cache, key, version) {
            return false;
        }
        if waiting == 0 || self.queued_len >= MAX_REMEMBERED {
            // Everything noted before has left the outbox (or the memory is full).
            self.queued.clear();
            self.queued_len = 0;
        }
        let at = self.taken + waiting as u64;
        let keys = self.queued.entry(cache.clone()).or_default();
        if keys.insert(key.to_vec(), (version, at)).is_none() {
            self.queued_len += 1;
        }
        true
    }

    /// Housekeeping: forgets pulls sent `pending` ago or longer, and every repair if the
    /// outbox is empty (all of them went out), so that a quiet node holds no memory of them.
    pub(super) fn expire(&mut self, now: Instant, pending: Duration, outbox_empty: bool) {
        if outbox_empty && self.queued_len > 0 {
            self.queued.clear();
            self.queued_len = 0;
        }
        if self.pulled_len > 0 {
            self.forget_pulls_older_than(now, pending);
        }
    }

    fn forget_pulls_older_than(&mut self, now: Instant, pending: Duration) {
        let mut len = 0;
        for keys in self.pulled.values_mut() {
            keys.retain(|_, p| now.saturating_duration_since(p.1) < pending);
            len += keys.len();
        }
        self.pulled.retain(|_, keys| !keys.is_empty());
        self.pulled_len = len;
    }

    /// Notes a pull of `key` for `version` at `now` unless one for that version or newer was
    /// sent less than `pending` ago (false: it is still awaited).
    pub(super) fn pull(
        &mut self,
        cache: &str,
        key: &[u8],
        version: Version,
        now: Instant,
        pending: Duration,
    ) -> bool {
        let live = |&(v, at): &(Version, Instant)| {
            now.saturating_duration_since(at) < pending && v >= version
        };
        if self
            .pulled
            .get(cache)
            .and_then(|keys| keys.get(key))
            .is_some_and(live)
        {
            return false;
        }
        if self.pulled_len >= MAX_REMEMBERED {
            self.forget_pulls_older_than(now, pending);
            if self.pulled_len >= MAX_REMEMBERED {
                self.pulled.clear();
                self.pulled_len = 0;
            }
        }
        let keys = match self.pulled.get_mut(cache) {
            Some(keys) => keys,
            None => self.pulled.entry(Arc::from(cache)).or_default(),
        };
        if keys.insert(key.to_vec(), (version, now)).is_none() {
            self.pulled_len += 1;
        }
        true
    }
}

#[cfg(test)]
// Tests start their explicit time from the real clock (proto/clippy.toml forbids it elsewhere).
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::version::NodeId;

    fn v(hlc: u64) -> Version {
        Version::new(hlc, NodeId(1))
    }

    #[test]
    fn a_repair_waiting_in_the_outbox_is_not_queued_again_until_it_is_taken() {
        let mut c = Coalescer::default();
        let cache: Arc<str> = Arc::from("c");
        assert!(c.queue_repair(&cache, b"k", v(5), 3));
        assert!(
            !c.queue_repair(&cache, b"k", v(5), 7),
            "the same version waits"
        );
        assert!(!c.queue_repair(&cache, b"k", v(4), 7), "a newer one waits");
        assert!(
            c.queue_repair(&cache, b"k", v(6), 7),
            "a newer version is queued"
        );
        assert!(c.queue_repair(&cache, b"other", v(5), 8));
        assert!(
            c.queue_repair(&Arc::from("d"), b"k", v(5), 9),
            "caches are apart"
        );
        // The first six items leave the outbox: the version-6 repair (position 7) still waits.
        c.taken(6);
        assert!(!c.queue_repair(&cache, b"k", v(6), 4));
        c.taken(2);
        assert!(c.repair_waits("c", b"other", v(5)));
        c.taken(1);
        assert!(!c.repair_waits("c", b"other", v(5)), "taken: it went out");
        assert!(
            c.queue_repair(&cache, b"other", v(5), 1),
            "so it may go again"
        );
    }

    #[test]
    fn an_empty_outbox_forgets_every_repair() {
        let mut c = Coalescer::default();
        let cache: Arc<str> = Arc::from("c");
        assert!(c.queue_repair(&cache, b"a", v(5), 0));
        assert!(c.queue_repair(&cache, b"b", v(5), 1));
        assert_eq!(c.queued_len, 2);
        c.taken(2);
        assert!(c.queue_repair(&cache, b"c", v(5), 0));
        assert_eq!(c.queued_len, 1, "the two taken were dropped");
    }

    #[test]
    fn housekeeping_forgets_old_pulls_and_repairs_that_went_out() {
        let mut c = Coalescer::default();
        let t0 = Instant::now();
        let wait = Duration::from_millis(500);
        let cache: Arc<str> = Arc::from("c");
        assert!(c.pull("c", b"old", v(1), t0, wait));
        assert!(c.pull("c", b"new", v(1), t0 + Duration::from_millis(400), wait));
        assert!(c.queue_repair(&cache, b"k", v(1), 0));
        c.expire(t0 + Duration::from_millis(600), wait, false);
        assert_eq!((c.pulled_len, c.queued_len), (1, 1));
        assert!(!c.pull("c", b"new", v(1), t0 + Duration::from_millis(600), wait));
        c.expire(t0 + Duration::from_millis(1000), wait, true);
        assert_eq!((c.pulled_len, c.queued_len), (0, 0));
        assert!(c.pulled.is_empty() && c.queued.is_empty());
    }

    #[test]
    fn a_key_pulled_is_not_pulled_again_while_the_answer_is_awaited() {
        let mut c = Coalescer::default();
        let t0 = Instant::now();
        let wait = Duration::from_millis(500);
        assert!(c.pull("c", b"k", v(5), t0, wait));
        assert!(!c.pull("c", b"k", v(5), t0 + Duration::from_millis(10), wait));
        assert!(!c.pull("c", b"k", v(3), t0 + Duration::from_millis(10), wait));
        assert!(
            c.pull("c", b"k", v(6), t0 + Duration::from_millis(20), wait),
            "newer"
        );
        assert!(c.pull("d", b"k", v(6), t0 + Duration::from_millis(20), wait));
        assert!(
            c.pull("c", b"k", v(6), t0 + Duration::from_millis(520), wait),
            "unanswered past the wait: asked again"
        );
    }
}
