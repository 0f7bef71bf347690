//! Change listeners and the events they get: collected while shard locks are held, fired after
//! every lock is released; plus the callback window and McCache's spike metric, which are
//! derived from the same mutation stream.

use std::sync::atomic::Ordering;

use super::entries::{Entry, Shard, bump};
use super::{CacheKey, CacheValue, Listener, Store};
use crate::cache::event::{ChangeEvent, ChangeKind, ListenerId, Origin};

/// Events collected while locks are held, fired after they are released.
pub(super) struct Events<K> {
    on: bool,
    list: Vec<ChangeEvent<K>>,
}

impl<K> Events<K> {
    /// Whether some listener will see the events recorded (else [`Events::push`] builds none).
    pub(super) fn is_on(&self) -> bool {
        self.on
    }

    /// Records an event, built only if some listener will see it.
    pub(super) fn push(&mut self, make: impl FnOnce() -> ChangeEvent<K>) {
        if self.on {
            self.list.push(make());
        }
    }
}

impl<K: CacheKey, V: CacheValue> Store<K, V> {
    pub(crate) fn on_change(&self, f: Listener<K>) -> ListenerId {
        let id = self.next_listener.fetch_add(1, Ordering::Relaxed);
        let mut l = self.listeners.write();
        l.push((id, f));
        self.listener_count.store(l.len(), Ordering::Release);
        ListenerId(id)
    }

    pub(crate) fn remove_listener(&self, id: ListenerId) -> bool {
        let mut l = self.listeners.write();
        let before = l.len();
        l.retain(|(i, _)| *i != id.0);
        self.listener_count.store(l.len(), Ordering::Release);
        l.len() != before
    }

    /// An empty event list, which records only if some listener is registered.
    pub(super) fn events(&self) -> Events<K> {
        Events {
            on: self.listener_count.load(Ordering::Acquire) > 0,
            list: Vec::new(),
        }
    }

    /// Runs every listener on every collected event. Called with no lock held. (Inlined test
    /// for the common case of nothing collected; the listeners run out of line.)
    #[inline]
    pub(super) fn fire(&self, ev: Events<K>) {
        if !ev.list.is_empty() {
            self.fire_listeners(ev);
        }
    }

    #[inline(never)]
    fn fire_listeners(&self, ev: Events<K>) {
        // Clone the list so listeners may register or remove listeners themselves.
        let listeners: Vec<Listener<K>> = self
            .listeners
            .read()
            .iter()
            .map(|(_, f)| f.clone())
            .collect();
        for e in &ev.list {
            for f in &listeners {
                f(e);
            }
        }
    }

    pub(super) fn expire_event(&self, k: &K, e: &Entry<V>, now: u64) -> ChangeEvent<K> {
        ChangeEvent {
            key: k.clone(),
            kind: ChangeKind::Expire,
            origin: Origin::Local,
            version: e.version,
            in_callback_window: self.in_window(e, now),
        }
    }

    /// Whether the entry was read within the callback window before `now`.
    pub(super) fn in_window(&self, e: &Entry<V>, now: u64) -> bool {
        self.win_ms != 0 && e.read_within(now, self.win_ms)
    }

    /// McCache's spike metric: compares each mutation's time to the previous one. Called with
    /// the write lock of the mutated `shard` held: the spike counts are that shard's (bumped
    /// with a plain load and store, like its other write counters; `metrics` adds them up), so
    /// no mutation does a locked add on a cache-wide line.
    ///
    /// Writes without a TTL mostly take the clock's coarse reading, so consecutive mutations
    /// often see the same `now`: then the last-mutation time is only read (the swap would write
    /// the value it holds; a concurrent swap that lands in between is ordered after this one),
    /// and a zero gap adds nothing to the gap sum, which keeps the cache-wide line shared.
    pub(super) fn note_mutation(&self, shard: &Shard<K, V>, now: u64) {
        let cur = self.last_mutation.load(Ordering::Relaxed);
        let prev = if cur == now + 1 {
            cur
        } else {
            self.last_mutation.swap(now + 1, Ordering::Relaxed)
        };
        if prev != 0 {
            let gap = now.saturating_sub(prev - 1);
            if gap <= self.win_nanos {
                bump(&shard.stats.spikes, 1);
                if gap != 0 {
                    bump(&shard.stats.spike_gap_sum, gap);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::setup;
    use crate::{Cache, Config};

    #[test]
    fn spikes_count_mutations_within_the_window() {
        let (node, _, clock) = setup(Config {
            callback_win: 1.0,
            ..Config::default()
        });
        let c: Cache<u32, u32> = node.cache("s").unwrap();
        c.insert(1, 1).unwrap(); // first mutation: nothing to compare with
        clock.advance(Duration::from_millis(500));
        c.insert(2, 2).unwrap(); // gap 0.5 s
        clock.advance(Duration::from_millis(1500));
        c.insert(3, 3).unwrap(); // gap 1.5 s: not a spike
        clock.advance(Duration::from_millis(250));
        c.remove(&3).unwrap(); // gap 0.25 s
        let m = c.metrics();
        assert_eq!(m.spikes, 2);
        assert!(
            (m.spike_interval - 0.375).abs() < 1e-9,
            "{}",
            m.spike_interval
        );
    }
}
