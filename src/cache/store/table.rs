//! A shard's entry table: a dense slab of `(key, entry)` pairs (the CLOCK hand and snapshots
//! walk it by position) indexed by a `hashbrown::HashTable<u32>` of slab positions.
//!
//! Unlike an `IndexMap`, no hash is stored per entry: the index holds 4-byte positions and
//! hashes are recomputed from the key when the index grows or an entry moves (foldhash on a
//! small key is a few instructions). Callers that already hashed the key (the shard was chosen
//! from the same hash) pass it in, so a lookup or an insert hashes once and probes once.

use std::hash::BuildHasher;
use std::ops::{Index, IndexMut};

use hashbrown::HashTable;

use super::Hasher;

pub(super) struct Table<K, V> {
    index: HashTable<u32>,
    slab: Vec<Slot<K, V>>,
    hasher: Hasher,
}

/// A slab element: the key, then the entry, in that order (`repr(C)`), so that the fields a
/// read hit touches (the key, and the entry's leading fields, see `entries::Entry`) are
/// contiguous at the start of the element.
#[repr(C)]
struct Slot<K, V> {
    key: K,
    val: V,
}

impl<K, V> Table<K, V> {
    pub(super) fn with_hasher(hasher: Hasher) -> Table<K, V> {
        Table {
            index: HashTable::new(),
            slab: Vec::new(),
            hasher,
        }
    }
}

impl<K: Eq + std::hash::Hash, V> Table<K, V> {
    pub(super) fn hash(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    pub(super) fn len(&self) -> usize {
        self.slab.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.slab.iter().map(|s| (&s.key, &s.val))
    }

    pub(super) fn get_index(&self, i: usize) -> Option<(&K, &V)> {
        self.slab.get(i).map(|s| (&s.key, &s.val))
    }

    /// The slab position of `key`, whose hash (from this table's hasher) is `hash`.
    #[inline]
    pub(super) fn find_hashed(&self, hash: u64, key: &K) -> Option<usize> {
        let slab = &self.slab;
        self.index
            .find(hash, |&i| slab[i as usize].key == *key)
            .map(|&i| i as usize)
    }

    #[inline]
    pub(super) fn get_hashed(&self, hash: u64, key: &K) -> Option<&V> {
        self.find_hashed(hash, key).map(|i| &self.slab[i].val)
    }

    pub(super) fn get_index_of(&self, key: &K) -> Option<usize> {
        self.find_hashed(self.hash(key), key)
    }

    pub(super) fn get(&self, key: &K) -> Option<&V> {
        self.get_hashed(self.hash(key), key)
    }

    /// Appends `key`, which the caller has just found absent; `hash` is its hash. Returns its
    /// position. (One probe for a free slot; no key comparisons.)
    pub(super) fn insert_new(&mut self, hash: u64, key: K, value: V) -> usize {
        debug_assert!(self.find_hashed(hash, &key).is_none());
        let i = self.slab.len();
        // Positions are u32: a shard never holds 4 billion entries (`max_entries` is a usize
        // spread over the shards, and memory runs out long before).
        let pos = u32::try_from(i).expect("shard holds fewer than 2^32 entries");
        let (slab, hasher) = (&self.slab, &self.hasher);
        self.index
            .insert_unique(hash, pos, |&j| hasher.hash_one(&slab[j as usize].key));
        self.slab.push(Slot { key, val: value });
        i
    }

    /// One CLOCK pass: visits the entries in slab order from position `hand` (0 if past the
    /// end), wrapping around, at most once each, until `pick` returns true. Returns the
    /// position of that entry, or where the hand stopped, and whether one was picked.
    #[inline]
    pub(super) fn clock_scan(
        &mut self,
        hand: usize,
        mut pick: impl FnMut(&mut V) -> bool,
    ) -> (usize, bool) {
        let len = self.slab.len();
        let mut h = if hand >= len { 0 } else { hand };
        for _ in 0..len {
            if pick(&mut self.slab[h].val) {
                return (h, true);
            }
            h += 1;
            if h == len {
                h = 0;
            }
        }
        (h, false)
    }

    /// Puts `key` (hashed `hash`, absent from the table) and `value` at position `i` in place of
    /// the entry there, which is returned: one hash of the old key and two probes, no entry
    /// moves (unlike a removal followed by an insert, which moves the last entry).
    pub(super) fn replace_index(&mut self, i: usize, hash: u64, key: K, value: V) -> (K, V) {
        let pos = u32::try_from(i).expect("a position of the slab");
        let old_hash = self.hash(&self.slab[i].key);
        if let Ok(slot) = self.index.find_entry(old_hash, |&j| j == pos) {
            slot.remove();
        }
        // The new key is in its slot before the index may grow (which rehashes from the slab).
        let Slot { key, val } = std::mem::replace(&mut self.slab[i], Slot { key, val: value });
        let (slab, hasher) = (&self.slab, &self.hasher);
        self.index
            .insert_unique(hash, pos, |&j| hasher.hash_one(&slab[j as usize].key));
        (key, val)
    }

    /// Removes the entry at position `i`; the last entry takes its place.
    pub(super) fn swap_remove_index(&mut self, i: usize) -> Option<(K, V)> {
        let hash = self.hash(&self.slab.get(i)?.key);
        let pos = i as u32;
        if let Ok(slot) = self.index.find_entry(hash, |&j| j == pos) {
            slot.remove();
        }
        let last = self.slab.len() - 1;
        if i != last {
            let moved = self.hash(&self.slab[last].key);
            let last = last as u32;
            if let Some(p) = self.index.find_mut(moved, |&j| j == last) {
                *p = pos;
            }
        }
        let Slot { key, val } = self.slab.swap_remove(i);
        Some((key, val))
    }

    /// Keeps the entries for which `keep` returns true, in their order.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        let before = self.slab.len();
        self.slab.retain_mut(|s| keep(&s.key, &mut s.val));
        if self.slab.len() == before {
            return;
        }
        self.index.clear();
        let (slab, hasher) = (&self.slab, &self.hasher);
        for (i, s) in slab.iter().enumerate() {
            self.index
                .insert_unique(hasher.hash_one(&s.key), i as u32, |&j| {
                    hasher.hash_one(&slab[j as usize].key)
                });
        }
        if self.slab.capacity() > 2 * self.slab.len() + 16 {
            self.slab.shrink_to_fit();
            self.index
                .shrink_to_fit(|&j| hasher.hash_one(&self.slab[j as usize].key));
        }
    }
}

impl<K, V> Index<usize> for Table<K, V> {
    type Output = V;

    fn index(&self, i: usize) -> &V {
        &self.slab[i].val
    }
}

impl<K, V> IndexMut<usize> for Table<K, V> {
    fn index_mut(&mut self, i: usize) -> &mut V {
        &mut self.slab[i].val
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_u64_slot_is_56_bytes_with_the_hit_fields_first() {
        use std::mem::{offset_of, size_of};
        type E = super::super::entries::Entry<u64>;
        assert_eq!(size_of::<Slot<u64, E>>(), 56);
        assert_eq!(offset_of!(Slot<u64, E>, val), 8);
        assert_eq!(offset_of!(E, value), 0);
        assert_eq!(offset_of!(Slot<u64, E>, val) + E::HIT_BYTES, 32);
    }

    #[test]
    fn insert_find_remove_and_retain_keep_positions_consistent() {
        let mut t: Table<u64, u64> = Table::with_hasher(Hasher::default());
        for k in 0..1000u64 {
            assert_eq!(t.get(&k), None);
            let h = t.hash(&k);
            assert_eq!(t.insert_new(h, k, k * 10), k as usize);
        }
        assert_eq!(t.len(), 1000);
        // Remove from the front: the last entry moves into the hole and must still be found.
        for k in 0..100u64 {
            let i = t.get_index_of(&k).unwrap();
            assert_eq!(t.swap_remove_index(i), Some((k, k * 10)));
            assert_eq!(t.get_index_of(&k), None);
        }
        assert_eq!(t.swap_remove_index(t.len()), None);
        // Replacing in place: the old key is gone, the new one found at that position.
        let i = t.get_index_of(&500).unwrap();
        let h = t.hash(&5_000);
        assert_eq!(t.replace_index(i, h, 5_000, 5_000 * 10), (500, 500 * 10));
        assert_eq!(t.get_index_of(&500), None);
        assert_eq!(t.get_index_of(&5_000), Some(i));
        let i = t.get_index_of(&5_000).unwrap();
        let h = t.hash(&500);
        assert_eq!(t.replace_index(i, h, 500, 500 * 10), (5_000, 50_000));
        t.retain(|k, v| {
            *v += 1;
            k % 2 == 0
        });
        assert_eq!(t.len(), 450);
        for k in 0..1000u64 {
            let want = (k >= 100 && k % 2 == 0).then_some(k * 10 + 1);
            assert_eq!(t.get(&k).copied(), want, "key {k}");
            if let Some(i) = t.get_index_of(&k) {
                assert_eq!(t.get_index(i).map(|(k, _)| *k), Some(k));
                assert_eq!(t[i], k * 10 + 1);
            }
        }
        assert_eq!(t.iter().count(), 450);
    }
}
