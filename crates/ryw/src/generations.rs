//! Sharded two-generation maps: the tables of the in-memory session store ([`crate::store`]) and
//! of the verified-token cache ([`crate::signing`]).
//!
//! A [`Generations`] map keeps a young and an old table. Entries are written to the young one;
//! when it is due (full, or for the session store also too old), the old table is dropped and
//! the young one becomes old. An entry used within the last generation is never dropped, one
//! unused for two generations always is: least-recently-used eviction within a factor of two,
//! with no per-entry bookkeeping, in O(1) per insert.
//!
//! [`Shards`] spreads such maps over independently locked shards, so that concurrent requests of
//! different sessions take different locks.

use crate::hash::PremixedHasher;
use crate::locks::lock;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash};
use std::sync::{Mutex, MutexGuard};

/// Keys are random or mixed already (session ids, the token cache's slots): they are hashed as
/// they are.
type Table<K, V> = HashMap<K, V, BuildHasherDefault<PremixedHasher>>;

/// A map in two generations, young and old. Nothing is allocated until the first insert.
pub(crate) struct Generations<K, V> {
    young: Table<K, V>,
    old: Table<K, V>,
}

impl<K, V> Default for Generations<K, V> {
    fn default() -> Self {
        Generations {
            young: Table::default(),
            old: Table::default(),
        }
    }
}

impl<K: Hash + Eq, V> Generations<K, V> {
    /// Entries held in both generations.
    pub(crate) fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    /// Entries held in the young generation.
    pub(crate) fn young_len(&self) -> usize {
        self.young.len()
    }

    /// The young generation's entry for `key`.
    pub(crate) fn young(&self, key: &K) -> Option<&V> {
        self.young.get(key)
    }

    /// The young generation's entry for `key`, to change in place.
    pub(crate) fn young_mut(&mut self, key: &K) -> Option<&mut V> {
        self.young.get_mut(key)
    }

    /// Takes `key`'s entry out of the young generation.
    pub(crate) fn remove_young(&mut self, key: &K) -> Option<V> {
        self.young.remove(key)
    }

    /// Takes `key`'s entry out of the old generation (to put it back young, or to drop it).
    pub(crate) fn take_old(&mut self, key: &K) -> Option<V> {
        self.old.remove(key)
    }

    /// Removes `key` from both generations; returns whether either held it.
    pub(crate) fn remove(&mut self, key: &K) -> bool {
        self.young.remove(key).is_some() | self.old.remove(key).is_some()
    }

    /// Drops the old generation and makes the young one old; the dropped table, already grown,
    /// becomes the new young one. Returns how many entries were dropped.
    pub(crate) fn turn_over(&mut self) -> usize {
        std::mem::swap(&mut self.young, &mut self.old);
        let dropped = self.young.len();
        self.young.clear();
        dropped
    }

    /// Puts `value` under `key` into the young generation, as it is.
    pub(crate) fn insert_young(&mut self, key: K, value: V) {
        self.young.insert(key, value);
    }

    /// Puts `value` under `key` into the young generation, turning over first when `key` is not
    /// there yet and the young generation already holds `per_generation` entries. Returns how
    /// many entries the turnover dropped.
    pub(crate) fn insert(&mut self, key: K, value: V, per_generation: usize) -> usize {
        let dropped = if self.young.len() >= per_generation && !self.young.contains_key(&key) {
            self.turn_over()
        } else {
            0
        };
        self.young.insert(key, value);
        dropped
    }

    /// Drops every entry.
    pub(crate) fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
    }
}

/// One shard per cache-line pair, so two threads on different shards never share a line.
#[repr(align(128))]
struct Padded<T>(Mutex<T>);

/// Independently locked shards, a power of two of them; a lock poisoned by a panic is taken
/// anyway ([`crate::locks`]).
pub(crate) struct Shards<T> {
    shards: Box<[Padded<T>]>,
}

impl<T> Shards<T> {
    /// `count` shards (a power of two), each made by `make`.
    pub(crate) fn new(count: usize, mut make: impl FnMut() -> T) -> Self {
        debug_assert!(count.is_power_of_two(), "{count} shards");
        Shards {
            shards: (0..count).map(|_| Padded(Mutex::new(make()))).collect(),
        }
    }

    /// The number of shards.
    pub(crate) fn count(&self) -> usize {
        self.shards.len()
    }

    /// Locks the shard the low bits of `index` pick.
    pub(crate) fn lock(&self, index: usize) -> MutexGuard<'_, T> {
        lock(&self.shards[index & (self.shards.len() - 1)].0)
    }

    /// Every shard, each locked in turn as the iterator reaches it.
    pub(crate) fn iter(&self) -> impl Iterator<Item = MutexGuard<'_, T>> {
        self.shards.iter().map(|shard| lock(&shard.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_young_generation_turns_over_and_a_used_entry_survives() {
        let mut g = Generations::<u64, u64>::default();
        assert_eq!(g.insert(0, 0, 2), 0);
        assert_eq!(g.insert(1, 1, 2), 0);
        assert_eq!(g.insert(1, 10, 2), 0, "already young: no turnover");
        assert_eq!(g.insert(2, 2, 2), 0, "the old generation was empty");
        assert_eq!((g.len(), g.young_len()), (3, 1));
        // 0 is used again: taken out of the old generation and put back young.
        let v = g.take_old(&0).unwrap();
        assert_eq!(g.insert(0, v, 2), 0);
        assert_eq!(g.insert(3, 3, 2), 1, "1 was unused for two generations");
        assert_eq!(g.young(&3), Some(&3));
        assert!(g.young(&0).is_none() && g.take_old(&0) == Some(0));
        assert!(g.remove(&2) && !g.remove(&1));
        g.clear();
        assert_eq!(g.len(), 0);
    }

    #[test]
    fn shards_are_picked_by_the_low_bits() {
        let shards = Shards::new(4, || 0u32);
        *shards.lock(1) += 1;
        *shards.lock(5) += 1;
        *shards.lock(2) += 1;
        assert_eq!(shards.count(), 4);
        assert_eq!(shards.iter().map(|s| *s).collect::<Vec<_>>(), [0, 2, 1, 0]);
    }
}
