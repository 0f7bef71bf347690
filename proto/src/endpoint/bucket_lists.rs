//! The key-version lists of a cache's anti-entropy buckets, as [`on_buckets`] compares them
//! against a peer's, kept for a moment so that one exchange costs a few passes over the cache
//! instead of one pass per message.
//!
//! After a pulse, a peer whose buckets differ sends its lists in messages of a few datagrams
//! each ([`Endpoint::list_budget`]): for a cache of 100,000 small keys, about a thousand
//! messages, each with part of one bucket. Listing the keys of a bucket costs the application
//! a pass over the whole cache (entries are not indexed by bucket), so answering every message
//! with its own pass made one exchange cost about a thousand passes: seconds of the network
//! thread, during which it served nothing else. After a flat-out write burst over a wide key
//! space the caches then took minutes to agree.
//!
//! Here a pass lists [`WINDOW`] buckets at once: the ones asked for and those after them, in
//! the order a peer sends them. The lists are kept for [`FRESH_FOR`], with the hash each key's
//! part is taken from and its digest for the sums of parts (`Msg::Sums`: the answer to a digest
//! for a long bucket, and what this node compares before listing a part). Comparing against
//! lists that old is safe, as every outcome is checked again where it acts:
//! - a key the peer holds newer is pulled, and applied only if newer than what is held then;
//! - a key pushed is sent as held when it is sent (`AppState::record`), if still held;
//! - a doubtful key is dropped only if it still holds the version listed
//!   (`AppState::drop_doubtful`);
//! - a difference the lists miss (written since) is found at the next pulse.
//!
//! [`on_buckets`]: Endpoint::on_buckets

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::state::AppState;
use crate::sync::{KeyVersion, SYNC_BUCKETS, key_part_of_hash, key_version_digest};

/// How long lists are reused.
pub(super) const FRESH_FOR: Duration = Duration::from_millis(500);
/// Buckets listed per pass (the ones asked for, then the following ones not yet listed).
pub(super) const WINDOW: usize = 16;

/// One listed key: its version, the hash its part is taken from and its digest for the sums
/// of parts (0 for a tombstone: sums cover live entries, as the buckets' do).
#[derive(Clone, Debug)]
pub(super) struct Listed {
    pub hash: u32,
    pub digest: u64,
    pub kv: KeyVersion,
}

/// A bucket's list and when it was made (`None`: not listed).
type Slot = Option<(Instant, Vec<Listed>)>;

/// Lists per cache and bucket, each with the time it was made.
#[derive(Debug, Default)]
pub(super) struct BucketLists {
    caches: HashMap<String, Vec<Slot>>,
    /// Passes made over a cache, and parts asked for (for tests).
    passes: u64,
    parts: u64,
}

impl BucketLists {
    /// The listed keys of `cache`'s `bucket` (which must be below `SYNC_BUCKETS`), listing it
    /// (and the next buckets not listed) in one pass if it is not listed or its list is older
    /// than [`FRESH_FOR`].
    fn listed(
        &mut self,
        now: Instant,
        app: &dyn AppState,
        cache: &str,
        bucket: usize,
    ) -> &[Listed] {
        let fresh = |slot: &Slot| {
            slot.as_ref()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) < FRESH_FOR)
        };
        // Lists of other caches, or gone stale, are dropped: what is kept stays bounded in time.
        self.caches
            .retain(|name, lists| name == cache || lists.iter().any(&fresh));
        let lists = self
            .caches
            .entry(cache.to_string())
            .or_insert_with(|| vec![None; SYNC_BUCKETS]);
        if !fresh(&lists[bucket]) {
            let wanted: Vec<usize> = (bucket..SYNC_BUCKETS)
                .filter(|&b| b == bucket || !fresh(&lists[b]))
                .take(WINDOW)
                .collect();
            let listed = app.buckets_versions(cache, &wanted);
            self.passes += 1;
            for (b, keys) in wanted.into_iter().zip(listed) {
                let keys = keys
                    .into_iter()
                    .map(|kv| Listed {
                        hash: crc32fast::hash(&kv.key),
                        digest: if kv.deleted {
                            0
                        } else {
                            key_version_digest(&kv.key, kv.version)
                        },
                        kv,
                    })
                    .collect();
                lists[b] = Some((now, keys));
            }
        }
        lists[bucket]
            .as_ref()
            .map(|(_, keys)| keys.as_slice())
            .unwrap_or_default()
    }

    /// The listed keys of `cache` in each of the parts `wanted` of `bucket` cut in `of` (the
    /// bucket must be below `SYNC_BUCKETS`), in the order asked, in one walk of the bucket's
    /// list (listed as [`BucketLists::listed`] does). A part asked twice, or not below `of`,
    /// is answered empty after its first time.
    pub(super) fn parts(
        &mut self,
        now: Instant,
        app: &dyn AppState,
        cache: &str,
        cut: (usize, u16),
        wanted: &[u16],
    ) -> Vec<Vec<KeyVersion>> {
        let mut out = vec![Vec::new(); wanted.len()];
        self.walk_parts(now, app, cache, cut, wanted, |i, kv| {
            out[i].push(kv.clone())
        });
        out
    }

    /// Calls `f` with each listed key of `cache` in the parts `wanted` of `bucket` cut in `of`
    /// (the bucket must be below `SYNC_BUCKETS`), in list order, in one walk of the bucket's
    /// list, without copying them: comparing a peer's lists, most keys agree and need no copy
    /// (copying each was a twelfth of a network thread's time after nine processes' flat-out
    /// writes).
    pub(super) fn visit_parts(
        &mut self,
        now: Instant,
        app: &dyn AppState,
        cache: &str,
        cut: (usize, u16),
        wanted: &[u16],
        mut f: impl FnMut(&KeyVersion),
    ) {
        self.walk_parts(now, app, cache, cut, wanted, |_, kv| f(kv));
    }

    /// The walk behind [`BucketLists::parts`] and [`BucketLists::visit_parts`]: `f` gets each
    /// listed key of a wanted part with the index in `wanted` of that part's first mention.
    fn walk_parts(
        &mut self,
        now: Instant,
        app: &dyn AppState,
        cache: &str,
        (bucket, of): (usize, u16),
        wanted: &[u16],
        mut f: impl FnMut(usize, &KeyVersion),
    ) {
        self.parts += wanted.len() as u64;
        let of = of.max(1);
        let mut slot = vec![usize::MAX; usize::from(of)];
        for (i, &p) in wanted.iter().enumerate().rev() {
            if let Some(s) = slot.get_mut(usize::from(p)) {
                *s = i;
            }
        }
        for l in self.listed(now, app, cache, bucket) {
            let i = slot[usize::from(key_part_of_hash(l.hash, of))];
            if i != usize::MAX {
                f(i, &l.kv);
            }
        }
    }

    /// How many keys (tombstones included) `cache`'s `bucket` lists.
    pub(super) fn len(
        &mut self,
        now: Instant,
        app: &dyn AppState,
        cache: &str,
        bucket: usize,
    ) -> usize {
        self.listed(now, app, cache, bucket).len()
    }

    /// The sums of `cache`'s `bucket` cut in `of` parts (`of` ≥ 1): for each part, the wrapping
    /// sum of its live keys' [`key_version_digest`]s.
    pub(super) fn sums(
        &mut self,
        now: Instant,
        app: &dyn AppState,
        cache: &str,
        bucket: usize,
        of: u16,
    ) -> Vec<u64> {
        let mut sums = vec![0u64; usize::from(of.max(1))];
        for l in self.listed(now, app, cache, bucket) {
            let p = usize::from(key_part_of_hash(l.hash, of));
            sums[p] = sums[p].wrapping_add(l.digest);
        }
        sums
    }

    /// Passes made over a cache and parts asked for, so far.
    #[cfg(test)]
    pub(super) fn passes_and_parts(&self) -> (u64, u64) {
        (self.passes, self.parts)
    }
}
