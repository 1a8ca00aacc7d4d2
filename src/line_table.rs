//! A hash map whose entries each start on a cache line, the key first and the value right after
//! it, so that what a look-up and an update read can be laid out to touch as few lines as an
//! entry allows.
//!
//! A hashbrown map stores each entry as a packed `(K, V)` tuple, in an order the compiler picks: a
//! job's 368-byte entry starts anywhere in a cache line and spans six or seven lines, all of which
//! a sample that reads 309 bytes of it loads. Here an entry is a `#[repr(C, align(64))]` slot: the
//! key at its first byte, the value right after it, and the slot padded to whole lines. A value
//! type that is itself `#[repr(C)]` and puts the fields every update touches first has them in the
//! slot's first lines ([`LineTable::head`] gives how many bytes from the slot's start); the rest of
//! the slot is loaded only when it is read.
//!
//! The map serializes as a map of keys to values, exactly as serde's map of the same entries in
//! the same order does, so a checkpoint's encoding does not depend on the layout.

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;

use hashbrown::{Equivalent, HashTable};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One entry: its key, then its value, on whole cache lines.
#[repr(C, align(64))]
struct Slot<K, V> {
    key: K,
    value: V,
}

/// A map of `K` to `V` with cache-line-aligned entries (see the module's documentation), hashed
/// by `S`.
pub struct LineTable<K, V, S> {
    table: HashTable<Slot<K, V>>,
    hasher: S,
    /// The address of the table's control bytes as of the last entry [`LineTable::entry`] or
    /// [`LineTable::insert`] returned or inserted, 0 before the first ([`LineTable::probe`]).
    /// Only those two can move them: hashbrown makes room for one more entry (reallocating the
    /// table when it is full) before it looks a key up for an entry, and a removal or anything
    /// else this map offers leaves the table where it is. (A vacant entry dropped without an
    /// insert after such a move leaves the address stale until the next: it is only prefetched,
    /// never read.)
    ctrl: usize,
}

impl<K, V, S: Default> Default for LineTable<K, V, S> {
    fn default() -> Self {
        LineTable {
            table: HashTable::new(),
            hasher: S::default(),
            ctrl: 0,
        }
    }
}

impl<K: fmt::Debug, V: fmt::Debug, S> fmt::Debug for LineTable<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// What [`LineTable::entry`] found.
pub enum Entry<'t, K, V> {
    Occupied(&'t K, &'t mut V),
    Vacant(VacantEntry<'t, K, V>),
}

/// Where [`LineTable::entry`] would insert a key it did not find.
pub struct VacantEntry<'t, K, V> {
    entry: hashbrown::hash_table::VacantEntry<'t, Slot<K, V>>,
    ctrl: &'t mut usize,
}

impl<'t, K, V> VacantEntry<'t, K, V> {
    /// Inserts `key` (which must hash and compare as the key looked up) with `value`.
    #[inline]
    pub fn insert(self, key: K, value: V) -> (&'t K, &'t mut V) {
        let slot = found(self.entry.insert(Slot { key, value }), self.ctrl);
        (&slot.key, &mut slot.value)
    }
}

/// The slot of `entry`, having recorded in `ctrl` where the table's control bytes are.
/// hashbrown keeps the entries below them, entry `i` ending `i` entries before them
/// (`[.., T1, T0 | C0, C1, ..]`). Should a later hashbrown lay its table out otherwise, this only
/// makes [`Probe::prefetch`] useless (and the test of this module fail).
#[inline]
fn found<'t, K, V>(
    entry: hashbrown::hash_table::OccupiedEntry<'t, Slot<K, V>>,
    ctrl: &mut usize,
) -> &'t mut Slot<K, V> {
    let i = entry.bucket_index();
    let slot = entry.into_mut();
    *ctrl = slot as *mut Slot<K, V> as usize + (i + 1) * std::mem::size_of::<Slot<K, V>>();
    slot
}

impl<K, V, S> LineTable<K, V, S> {
    /// Bytes of each entry in the table: the key, the value and the padding to whole lines.
    pub const SLOT_BYTES: usize = std::mem::size_of::<Slot<K, V>>();

    #[inline]
    pub fn len(&self) -> usize {
        self.table.len()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    #[inline]
    pub fn capacity(&self) -> usize {
        self.table.capacity()
    }

    #[inline]
    pub fn hasher(&self) -> &S {
        &self.hasher
    }

    /// Bytes from an entry's start that hold its key and the first `value_bytes` bytes of its
    /// value: the span to prefetch for what an update reads there.
    #[inline]
    pub const fn head(value_bytes: usize) -> usize {
        std::mem::offset_of!(Slot<K, V>, value) + value_bytes
    }

    /// The entries in the table's order.
    #[inline]
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + Clone + '_ {
        self.table.iter().map(|s| (&s.key, &s.value))
    }

    #[inline]
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> + '_ {
        self.table.iter_mut().map(|s| (&s.key, &mut s.value))
    }

    #[inline]
    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.table.iter().map(|s| &s.key)
    }

    #[inline]
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> + '_ {
        self.table.iter_mut().map(|s| &mut s.value)
    }

    #[inline]
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.table.iter().map(|s| &s.value)
    }

    /// Where a look-up in the table as it is now starts reading, to prefetch it for a hash before
    /// the look-up ([`Probe::prefetch`]). Reads nothing of the table's.
    #[inline]
    pub fn probe(&self) -> Probe<'_> {
        Probe {
            ctrl: self.ctrl as *const u8,
            mask: self.table.num_buckets().wrapping_sub(1),
            table: PhantomData,
        }
    }

    /// The entry a look-up of a key of hash `hash` most likely ends at, by its hash alone: keys
    /// are not compared (so it may be another key's, with the same 7-bit tag), and only the
    /// table's control bytes are read. For prefetching only.
    #[inline]
    pub fn at_hash(&self, hash: u64) -> Option<(&K, &V)> {
        self.table.find(hash, |_| true).map(|s| (&s.key, &s.value))
    }

    /// The entry of a key `key` whose hash is `hash`.
    #[inline]
    pub fn get_hashed<Q: Equivalent<K> + ?Sized>(&self, hash: u64, key: &Q) -> Option<(&K, &V)> {
        self.table
            .find(hash, |s| key.equivalent(&s.key))
            .map(|s| (&s.key, &s.value))
    }

    /// The slot of the entry [`LineTable::at_hash`] gives: a look-up by hash alone, to be
    /// checked against the key with [`LineTable::at_slot`].
    #[inline]
    pub fn slot_at_hash(&self, hash: u64) -> Option<usize> {
        self.table.find_bucket_index(hash, |_| true)
    }

    /// The slot of the entry of a key `key` whose hash is `hash`.
    #[inline]
    pub fn slot_of<Q: Equivalent<K> + ?Sized>(&self, hash: u64, key: &Q) -> Option<usize> {
        self.table
            .find_bucket_index(hash, |s| key.equivalent(&s.key))
    }

    /// The entry in slot `slot`, if one is there. A slot stays an entry's until the table
    /// inserts or removes one.
    #[inline]
    pub fn at_slot(&self, slot: usize) -> Option<(&K, &V)> {
        self.table.get_bucket(slot).map(|s| (&s.key, &s.value))
    }

    /// The value in slot `slot`, if an entry is there, to change (see [`LineTable::at_slot`]).
    #[inline]
    pub fn at_slot_mut(&mut self, slot: usize) -> Option<&mut V> {
        self.table.get_bucket_mut(slot).map(|s| &mut s.value)
    }

    /// The value of a key `key` whose hash is `hash`, to change.
    #[inline]
    pub fn get_hashed_mut<Q: Equivalent<K> + ?Sized>(
        &mut self,
        hash: u64,
        key: &Q,
    ) -> Option<&mut V> {
        self.table
            .find_mut(hash, |s| key.equivalent(&s.key))
            .map(|s| &mut s.value)
    }
}

/// Where a look-up in a [`LineTable`] starts, for a hash: the group of control bytes it reads
/// first. Valid while the table is borrowed, unchanged.
#[derive(Clone, Copy)]
pub struct Probe<'t> {
    /// The table's first control byte; null for a table never given an entry.
    ctrl: *const u8,
    mask: usize,
    table: PhantomData<&'t ()>,
}

impl Probe<'_> {
    /// Prefetches the control bytes that a look-up of `hash` reads first (one group of 16), so
    /// that the look-up, issued later, does not wait for them. Reads nothing.
    #[inline(always)]
    pub fn prefetch(&self, hash: u64) {
        if !self.ctrl.is_null() {
            crate::prefetch::range(self.ctrl.wrapping_add(hash as usize & self.mask), 16);
        }
    }

    /// The address [`Probe::prefetch`] starts at for `hash`, if any.
    #[cfg(test)]
    fn at(&self, hash: u64) -> Option<*const u8> {
        (!self.ctrl.is_null()).then(|| self.ctrl.wrapping_add(hash as usize & self.mask))
    }
}

impl<K: Hash, V, S: BuildHasher> LineTable<K, V, S> {
    #[inline]
    pub fn get<Q: Equivalent<K> + Hash + ?Sized>(&self, key: &Q) -> Option<&V> {
        self.get_hashed(self.hasher.hash_one(key), key)
            .map(|(_, v)| v)
    }

    #[inline]
    pub fn get_key_value<Q: Equivalent<K> + Hash + ?Sized>(&self, key: &Q) -> Option<(&K, &V)> {
        self.get_hashed(self.hasher.hash_one(key), key)
    }

    #[inline]
    pub fn get_mut<Q: Equivalent<K> + Hash + ?Sized>(&mut self, key: &Q) -> Option<&mut V> {
        self.get_hashed_mut(self.hasher.hash_one(key), key)
    }

    /// The entry of `key`, whose hash is `hash`, or where to insert it.
    #[inline]
    pub fn entry<Q: Equivalent<K> + ?Sized>(&mut self, hash: u64, key: &Q) -> Entry<'_, K, V> {
        let hasher = &self.hasher;
        match self.table.entry(
            hash,
            |s| key.equivalent(&s.key),
            |s| hasher.hash_one(&s.key),
        ) {
            hashbrown::hash_table::Entry::Occupied(o) => {
                let slot = found(o, &mut self.ctrl);
                Entry::Occupied(&slot.key, &mut slot.value)
            }
            hashbrown::hash_table::Entry::Vacant(entry) => Entry::Vacant(VacantEntry {
                entry,
                ctrl: &mut self.ctrl,
            }),
        }
    }

    /// Inserts `key` with `value`, replacing (and returning) the value it had.
    #[inline]
    pub fn insert(&mut self, key: K, value: V) -> Option<V>
    where
        K: Eq,
    {
        match self.entry(self.hasher.hash_one(&key), &key) {
            Entry::Occupied(_, v) => Some(std::mem::replace(v, value)),
            Entry::Vacant(e) => {
                e.insert(key, value);
                None
            }
        }
    }

    #[inline]
    pub fn remove<Q: Equivalent<K> + Hash + ?Sized>(&mut self, key: &Q) -> Option<V> {
        let hash = self.hasher.hash_one(key);
        self.table
            .find_entry(hash, |s| key.equivalent(&s.key))
            .ok()
            .map(|o| o.remove().0.value)
    }
}

impl<K: Serialize, V: Serialize, S> Serialize for LineTable<K, V, S> {
    fn serialize<Sr: Serializer>(&self, s: Sr) -> Result<Sr::Ok, Sr::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de, K, V, S> Deserialize<'de> for LineTable<K, V, S>
where
    K: Deserialize<'de> + Hash + Eq,
    V: Deserialize<'de>,
    S: BuildHasher + Default,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor<K, V, S>(PhantomData<(K, V, S)>);
        impl<'de, K, V, S> Visitor<'de> for MapVisitor<K, V, S>
        where
            K: Deserialize<'de> + Hash + Eq,
            V: Deserialize<'de>,
            S: BuildHasher + Default,
        {
            type Value = LineTable<K, V, S>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut t = LineTable::<K, V, S>::default();
                // As serde's maps do: the size hint is trusted only up to a bound.
                let hasher = &t.hasher;
                t.table
                    .reserve(map.size_hint().unwrap_or(0).min(4096), |s| {
                        hasher.hash_one(&s.key)
                    });
                while let Some((k, v)) = map.next_entry()? {
                    t.insert(k, v);
                }
                Ok(t)
            }
        }
        d.deserialize_map(MapVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Map = LineTable<String, [u64; 5], ahash::RandomState>;

    #[test]
    fn every_entry_starts_on_a_line_with_its_key_first() {
        let mut m = Map::default();
        for i in 0..1000u64 {
            m.insert(format!("key-{i}"), [i; 5]);
        }
        assert_eq!(Map::SLOT_BYTES % 64, 0);
        assert_eq!(Map::head(0), std::mem::size_of::<String>());
        for (k, v) in m.iter() {
            assert_eq!(k as *const String as usize % 64, 0, "{k} off a line");
            assert_eq!(
                v as *const [u64; 5] as usize - k as *const String as usize,
                Map::head(0)
            );
        }
    }

    #[test]
    fn inserts_finds_replaces_and_removes_as_a_map() {
        let mut m = Map::default();
        let mut model = std::collections::HashMap::new();
        for i in 0..3000u64 {
            let k = format!("key-{}", i % 1700);
            assert_eq!(m.insert(k.clone(), [i; 5]), model.insert(k, [i; 5]));
            if i % 7 == 0 {
                let gone = format!("key-{}", i % 300);
                assert_eq!(m.remove(gone.as_str()), model.remove(&gone));
            }
        }
        assert_eq!(m.len(), model.len());
        for (k, v) in &model {
            assert_eq!(m.get(k.as_str()), Some(v));
            let hash = m.hasher().hash_one(k.as_str());
            assert_eq!(m.get_hashed(hash, k.as_str()).map(|(_, v)| v), Some(v));
            match m.entry(hash, k.as_str()) {
                Entry::Occupied(key, value) => assert_eq!((key, &*value), (k, v)),
                Entry::Vacant(_) => panic!("{k} not found by its entry"),
            }
        }
        assert_eq!(m.get("key-1700"), None);
        let hash = m.hasher().hash_one("new");
        match m.entry(hash, "new") {
            Entry::Occupied(..) => panic!("found a key never inserted"),
            Entry::Vacant(v) => {
                v.insert("new".to_string(), [7; 5]);
            }
        }
        assert_eq!(m.get("new"), Some(&[7; 5]));
    }

    /// A key's slot holds its entry until the table inserts or removes one; a slot found by hash
    /// alone holds the key's entry or another's (then checked by its key), and an empty slot
    /// holds none.
    #[test]
    fn slots_hold_the_entries_their_look_ups_found() {
        let mut m = Map::default();
        for i in 0..2000u64 {
            m.insert(format!("key-{i}"), [i; 5]);
        }
        m.remove("key-7");
        let mut guessed_right = 0;
        for i in 0..2000u64 {
            let k = format!("key-{i}");
            let hash = m.hasher().hash_one(k.as_str());
            let Some(slot) = m.slot_of(hash, k.as_str()) else {
                assert_eq!(i, 7, "{k} has no slot");
                assert_eq!(m.get(k.as_str()), None);
                continue;
            };
            assert_eq!(m.at_slot(slot), Some((&k, &[i; 5])));
            m.at_slot_mut(slot).expect("an entry")[1] = i + 1;
            assert_eq!(m.get(k.as_str()), Some(&[i, i + 1, i, i, i]));
            let guess = m.slot_at_hash(hash).expect("a table with entries");
            let (guessed, _) = m.at_slot(guess).expect("a guess is an entry's slot");
            guessed_right += (guessed == &k) as usize;
        }
        // Another key with the same 7-bit tag ahead in the probe sequence is rare.
        assert!(
            guessed_right > 1900,
            "{guessed_right} of 1999 guessed right"
        );
        let empty = (0..m.table.num_buckets())
            .find(|&b| m.table.get_bucket(b).is_none())
            .expect("a table is never full");
        assert_eq!(m.at_slot(empty), None);
        assert_eq!(m.at_slot_mut(empty), None);
        assert_eq!(m.at_slot(m.table.num_buckets()), None);
    }

    /// The probe points where hashbrown's look-up reads first: the group of control bytes at
    /// the hash's position holds the 7-bit tag of the key's hash, for all keys but those that
    /// collisions displaced. Fails if hashbrown lays its table out otherwise.
    #[test]
    fn the_probe_points_at_the_control_bytes_a_look_up_reads_first() {
        let mut m = Map::default();
        assert_eq!(
            m.probe().at(1),
            None,
            "a table never given an entry has nothing to prefetch"
        );
        // Through both ways in, since either can move the control bytes.
        for i in 0..5000u64 {
            let k = format!("key-{i}");
            if i % 2 == 0 {
                m.insert(k, [i; 5]);
            } else if let Entry::Vacant(v) = m.entry(m.hasher().hash_one(k.as_str()), k.as_str()) {
                v.insert(k, [i; 5]);
            }
            if i % 97 == 0 {
                m.remove(format!("key-{}", i / 2).as_str());
            }
        }
        assert_the_probe_points_at_each_keys_tag(&m);
    }

    /// hashbrown makes room before it looks a key up for an entry: the look-up of a key that is
    /// there moves the control bytes of a full table, and the probe follows them.
    #[test]
    fn the_probe_follows_the_control_bytes_when_a_look_up_moves_them() {
        let mut m = Map::default();
        let mut i = 0u64;
        // Past the small tables, whose control bytes repeat themselves in the group after them.
        while m.len() < 1000 || m.len() < m.capacity() {
            m.insert(format!("key-{i}"), [i; 5]);
            i += 1;
        }
        let full = m.capacity();
        let k = "key-0";
        assert!(matches!(
            m.entry(m.hasher().hash_one(k), k),
            Entry::Occupied(..)
        ));
        assert!(m.capacity() > full, "the look-up of a full table grew it");
        assert_the_probe_points_at_each_keys_tag(&m);
    }

    /// The group of control bytes each key's probe points at holds the key's 7-bit tag, for all
    /// keys but those that collisions displaced.
    fn assert_the_probe_points_at_each_keys_tag(m: &Map) {
        let probe = m.probe();
        let mut tagged = 0;
        for k in m.keys() {
            let hash = m.hasher().hash_one(k.as_str());
            let at = probe.at(hash).expect("a table with entries");
            // SAFETY: the table is borrowed, unchanged; its control bytes span the buckets plus
            // a group, so 16 bytes from any bucket's position are the table's.
            let group = unsafe { std::slice::from_raw_parts(at, 16) };
            let tag = (hash >> 57) as u8;
            tagged += group.contains(&tag) as usize;
        }
        // Keys displaced to a later group by collisions are few; a group read elsewhere would
        // hold a key's tag about one time in eight.
        assert!(
            tagged * 10 > m.len() * 9,
            "only {tagged} of {} tagged",
            m.len()
        );
    }

    #[test]
    fn serializes_as_a_map_of_its_entries_and_reads_back() {
        let mut m = Map::default();
        for i in 0..100u64 {
            m.insert(format!("key-{i}"), [i, i + 1, 0, 0, 9]);
        }
        let entries: Vec<(&String, &[u64; 5])> = m.iter().collect();
        let as_map = serde_json::to_string(&m).unwrap();
        let mut expected = serde_json::Map::new();
        for (k, v) in &entries {
            expected.insert((*k).clone(), serde_json::to_value(v).unwrap());
        }
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&as_map).unwrap(),
            serde_json::Value::Object(expected)
        );
        let back: Map = serde_json::from_str(&as_map).unwrap();
        assert_eq!(back.len(), 100);
        for (k, v) in entries {
            assert_eq!(back.get(k.as_str()), Some(v));
        }
    }
}
