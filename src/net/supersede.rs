//! Thinning a backlog: of the changes the driver took off the queue in one batch, a record
//! whose key a newer record of the same batch also writes is dropped before it is encoded.
//!
//! A receiver applies a key's records in version order and keeps the newest, so the older
//! record of a pair changes nothing it ends with; it only costs encoding, sealing, sending,
//! opening and applying on every peer. Writers that keep rewriting a hot key set (McCache's
//! stress workload: 200 keys) queue many changes per key while the network thread is behind:
//! flat out, 89–95 % of the changes peers received were already stale on arrival.
//!
//! Only batches of at least [`SUPERSEDE_FROM`] changes are thinned: a batch that small is
//! sent within microseconds, and hashing its keys would cost more than it saves. The newest
//! record of each key keeps its own place in the batch, so a key's record never moves ahead
//! of a clear or another key's record that it followed. Records are compared by version, not
//! position: two writers of one key may queue their records in the other order than their
//! versions. Peers see fewer change events for such a key; the value they end with is the
//! same.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use hashbrown::HashTable;

use crate::proto::message::Item;

use super::overflow::charge;

/// The smallest batch that is thinned.
pub(crate) const SUPERSEDE_FROM: usize = 256;

/// The driver's scratch space for [`Superseder::thin`], kept between batches so that thinning
/// does not allocate in the steady state.
#[derive(Debug, Default)]
pub(crate) struct Superseder {
    /// Hash of (cache, key) → position of the newest record seen for it. The hashes come from
    /// local keys only (the writers' own), so a fast unkeyed hash will do; a collision only
    /// keeps both records. Indexed by the hash itself (a `HashMap` hashed it again).
    newest: HashTable<(u64, usize)>,
    /// Hashes the keys.
    hasher: foldhash::fast::RandomState,
    drop: Vec<bool>,
}

/// What [`Superseder::thin`] dropped.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Thinned {
    /// Records dropped.
    pub changes: usize,
    /// Their [`charge`], to give back with their credits.
    pub bytes: usize,
}

impl Superseder {
    /// Drops from `staged` every record that a record of the same cache and key with a higher
    /// version supersedes (of equal versions the later one stays), keeping the order of the
    /// rest. Batches shorter than [`SUPERSEDE_FROM`] are left alone.
    pub(crate) fn thin(&mut self, staged: &mut std::collections::VecDeque<Item>) -> Thinned {
        let mut out = Thinned::default();
        if staged.len() < SUPERSEDE_FROM {
            return out;
        }
        self.newest.clear();
        self.drop.clear();
        self.drop.resize(staged.len(), false);
        let hasher = self.hasher;
        for i in 0..staged.len() {
            let Item::Rec { cache, rec } = &staged[i] else {
                continue;
            };
            let h = key_hash(&hasher, Arc::as_ptr(cache) as *const u8 as usize, &rec.key);
            match self.newest.find_mut(h, |&(k, _)| k == h) {
                None => {
                    self.newest.insert_unique(h, (h, i), |&(k, _)| k);
                }
                Some((_, newest)) => {
                    let j = *newest;
                    let Item::Rec {
                        cache: older_cache,
                        rec: older,
                    } = &staged[j]
                    else {
                        continue;
                    };
                    if !Arc::ptr_eq(cache, older_cache) || older.key != rec.key {
                        continue; // a hash collision: both stay
                    }
                    if rec.version >= older.version {
                        self.drop[j] = true;
                        *newest = i;
                    } else {
                        self.drop[i] = true;
                    }
                }
            }
        }
        let mut i = 0;
        staged.retain(|item| {
            let dropped = self.drop[i];
            i += 1;
            if dropped {
                out.changes += 1;
                out.bytes += charge(item);
            }
            !dropped
        });
        out
    }
}

/// The hash of a record's cache (its name's address) and key: the key's bytes in one write
/// (hashed as a tuple with the slice, ~160 instructions per change went to feeding the
/// hasher the address, the slice's length and its bytes piecewise).
#[inline]
fn key_hash(hasher: &foldhash::fast::RandomState, cache: usize, key: &[u8]) -> u64 {
    let mut h = hasher.build_hasher();
    h.write(key);
    h.write_usize(cache ^ key.len());
    h.finish()
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::proto::record::{Op, Record};
    use crate::proto::version::{NodeId, Version};

    fn put(cache: &Arc<str>, key: u32, hlc: u64, value: u8) -> Item {
        Item::Rec {
            cache: cache.clone(),
            rec: Record {
                key: key.to_be_bytes().to_vec().into(),
                version: Version::new(hlc, NodeId::from_random(7)),
                op: Op::Put {
                    value: vec![value].into(),
                    ttl_ms: None,
                },
            },
        }
    }

    fn keys_and_values(staged: &VecDeque<Item>) -> Vec<(String, u32, u8)> {
        staged
            .iter()
            .map(|i| match i {
                Item::Rec { cache, rec } => {
                    let key = u32::from_be_bytes(rec.key[..].try_into().unwrap());
                    let value = match &rec.op {
                        Op::Put { value, .. } => value[0],
                        _ => 0,
                    };
                    (cache.to_string(), key, value)
                }
                _ => ("clear".to_string(), 0, 0),
            })
            .collect()
    }

    #[test]
    fn the_newest_record_of_each_key_stays_in_its_place() {
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let mut staged = VecDeque::new();
        // Keys 0..100 of `a`, three writes each, interleaved with a clear and cache `b`'s key 0.
        for round in 0..3u8 {
            for k in 0..100 {
                staged.push_back(put(
                    &a,
                    k,
                    u64::from(round) * 1000 + u64::from(k) + 1,
                    round,
                ));
            }
        }
        staged.push_back(put(&b, 0, 5, 9));
        staged.push_back(Item::Clear {
            cache: a.clone(),
            version: Version::new(10_000, NodeId::from_random(7)),
        });
        // A late record older than the one queued before it (two writers of key 5).
        staged.push_back(put(&a, 5, 1_500, 7));
        let before = staged.len();
        let thinned = Superseder::default().thin(&mut staged);
        assert_eq!(thinned.changes, 201);
        assert_eq!(staged.len(), before - 201);
        assert_eq!(thinned.bytes, 201 * (4 + 1 + 32));
        let kept = keys_and_values(&staged);
        let expected: Vec<(String, u32, u8)> = (0..100)
            .map(|k| ("a".to_string(), k, 2))
            .chain([("b".to_string(), 0, 9), ("clear".to_string(), 0, 0)])
            .collect();
        assert_eq!(kept, expected, "the third round, then b, then the clear");
    }

    #[test]
    fn a_small_batch_is_left_alone() {
        let a: Arc<str> = "a".into();
        let mut staged: VecDeque<Item> = (0..10).map(|i| put(&a, 1, i + 1, 0)).collect();
        assert_eq!(Superseder::default().thin(&mut staged), Thinned::default());
        assert_eq!(staged.len(), 10);
    }
}
