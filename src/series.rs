//! The device series of one job (or of a tenant's samples that name no job), stored densely.
//!
//! A job has from one to thousands of devices, and state for each. A hash map per job sizes its
//! buckets to a power of two at most 7/8 full, so a 5-device job pays for 8 entries and an
//! 8-device job for 16. A [`SeriesTable`] keeps its entries in one vector in arrival order, grown
//! one entry at a time up to [`SCAN_MAX`] entries and by an eighth beyond. A table of up to
//! [`SCAN_MAX`] series finds one by scanning an array of 16-bit hash tags (held inline for up to
//! [`INLINE_TAGS`] series, one cache line of its own beyond) and comparing names only where the tag
//! matches; a larger one keeps an index of positions.
//!
//! Hashes live only in memory: a table serialises as a map from key to value (the same bytes a hash
//! map gives in bincode) and rebuilds its tags when read.

use std::fmt;
use std::marker::PhantomData;
use std::mem::size_of;
use std::sync::{Arc, LazyLock};

use hashbrown::HashTable;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;

/// Tables with up to this many series find one by scanning their tags; larger ones are indexed.
pub const SCAN_MAX: usize = 32;

/// Tables with up to this many series (a node's devices) hold their tags inline.
pub const INLINE_TAGS: usize = 8;

/// The most series a checkpoint's stated count reserves room for before any is read.
const PREALLOC_MAX: usize = 4096;

/// The device a series belongs to: node and GPU as the samples name them (either may be absent).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SeriesKey {
    #[serde(deserialize_with = "crate::name::decoded_opt_name")]
    pub node: Option<Arc<str>>,
    #[serde(deserialize_with = "crate::name::decoded_opt_name")]
    pub gpu: Option<Arc<str>>,
}

impl SeriesKey {
    pub fn borrowed(&self) -> SeriesRef<'_> {
        SeriesRef {
            node: self.node.as_deref(),
            gpu: self.gpu.as_deref(),
        }
    }
}

/// A [`SeriesKey`] by borrowed names, to look one up without building it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeriesRef<'a> {
    pub node: Option<&'a str>,
    pub gpu: Option<&'a str>,
}

impl SeriesRef<'_> {
    /// The hash every table uses (seeded once per process: hashes are never stored).
    pub fn hash(&self) -> u64 {
        static STATE: LazyLock<ahash::RandomState> = LazyLock::new(ahash::RandomState::new);
        STATE.hash_one(self)
    }

    fn matches(&self, k: &SeriesKey) -> bool {
        k.node.as_deref() == self.node && k.gpu.as_deref() == self.gpu
    }
}

fn tag(hash: u64) -> u16 {
    (hash >> 48) as u16
}

/// Series by key, in arrival order.
#[derive(Clone)]
pub struct SeriesTable<V> {
    entries: Vec<(SeriesKey, V)>,
    /// `tag(hash)` of each entry's key, at the same position; held inline for up to
    /// [`INLINE_TAGS`] series, so the look-up of a node's devices touches no separate allocation.
    tags: SmallVec<[u16; INLINE_TAGS]>,
    /// Positions in `entries` by hash, when there are more than [`SCAN_MAX`] of them.
    index: Option<Box<HashTable<u32>>>,
}

impl<V> Default for SeriesTable<V> {
    fn default() -> Self {
        SeriesTable {
            entries: Vec::new(),
            tags: SmallVec::new(),
            index: None,
        }
    }
}

impl<V: fmt::Debug> fmt::Debug for SeriesTable<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl<V> SeriesTable<V> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Series in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = (&SeriesKey, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }

    fn position(&self, key: &SeriesRef<'_>, hash: u64) -> Option<usize> {
        match &self.index {
            Some(index) => index
                .find(hash, |&i| key.matches(&self.entries[i as usize].0))
                .map(|&i| i as usize),
            None => {
                let t = tag(hash);
                self.tags
                    .iter()
                    .enumerate()
                    .filter(|&(_, &x)| x == t)
                    .map(|(i, _)| i)
                    .find(|&i| key.matches(&self.entries[i].0))
            }
        }
    }

    /// Starts loading what a look-up reads first: the tags (which [`SeriesTable::candidate`]
    /// reads).
    #[inline]
    pub fn prefetch(&self) {
        crate::prefetch::slice(&self.tags);
    }

    /// Starts loading every entry (for a pass over all the series).
    #[inline]
    pub fn prefetch_entries(&self) {
        crate::prefetch::slice(&self.entries);
    }

    /// The entry a look-up of `hash` most likely ends at, found by the hash alone (no name is
    /// compared, so it may be another series, or none when there is one): for prefetching.
    #[inline]
    pub fn candidate(&self, hash: u64) -> Option<(&SeriesKey, &V)> {
        let t = tag(hash);
        let i = match &self.index {
            Some(index) => index
                .find(hash, |&i| self.tags[i as usize] == t)
                .map(|&i| i as usize),
            None => self.tags.iter().position(|&x| x == t),
        }?;
        self.entries.get(i).map(|(k, v)| (k, v))
    }

    /// The series of `key`, whose [`SeriesRef::hash`] is `hash`.
    pub fn get(&self, key: &SeriesRef<'_>, hash: u64) -> Option<&V> {
        self.position(key, hash).map(|i| &self.entries[i].1)
    }

    /// The series of `key` (hash `hash`), added with `V::default()` under the key `make_key`
    /// builds if it is not there.
    pub fn get_or_insert(
        &mut self,
        key: &SeriesRef<'_>,
        hash: u64,
        make_key: impl FnOnce() -> SeriesKey,
    ) -> &mut V
    where
        V: Default,
    {
        let i = match self.position(key, hash) {
            Some(i) => i,
            None => self.push(make_key(), hash, V::default()),
        };
        &mut self.entries[i].1
    }

    /// Appends an entry whose key is not in the table; returns its position.
    fn push(&mut self, key: SeriesKey, hash: u64, value: V) -> usize {
        let i = self.entries.len();
        if i == self.entries.capacity() {
            let more = if i < SCAN_MAX { 1 } else { i / 8 };
            self.entries.reserve_exact(more);
            self.tags.reserve_exact(more);
        }
        self.entries.push((key, value));
        self.tags.push(tag(hash));
        match &mut self.index {
            Some(index) => {
                let entries = &self.entries;
                index.insert_unique(hash, i as u32, |&j| entries[j as usize].0.borrowed().hash());
            }
            None if self.entries.len() > SCAN_MAX => self.rebuild_index(),
            None => {}
        }
        i
    }

    fn rebuild_index(&mut self) {
        if self.entries.len() <= SCAN_MAX {
            self.index = None;
            return;
        }
        let entries = &self.entries;
        let rehash = |&j: &u32| entries[j as usize].0.borrowed().hash();
        let mut index = HashTable::with_capacity(entries.len());
        for (i, (k, _)) in entries.iter().enumerate() {
            index.insert_unique(k.borrowed().hash(), i as u32, rehash);
        }
        self.index = Some(Box::new(index));
    }

    /// Keeps the series for which `keep` is true, in their order; a table left with much more room
    /// than entries gives the rest back.
    pub fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        let mut k = 0;
        for i in 0..self.entries.len() {
            if keep(&self.entries[i].1) {
                if k != i {
                    self.entries.swap(k, i);
                    self.tags.swap(k, i);
                }
                k += 1;
            }
        }
        if k == self.entries.len() {
            return;
        }
        self.entries.truncate(k);
        self.tags.truncate(k);
        if self.entries.capacity() > k + k / 8 + 1 {
            self.entries.shrink_to_fit();
            self.tags.shrink_to_fit();
        }
        self.rebuild_index();
    }

    /// Heap bytes the table asks for (its value's own heap allocations not included).
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * size_of::<(SeriesKey, V)>()
            + crate::footprint::small_vec_bytes(&self.tags)
            + self.index.as_ref().map_or(0, |index| {
                size_of::<HashTable<u32>>()
                    + crate::footprint::table_bytes(index.capacity(), size_of::<u32>())
            })
    }
}

impl<V: Serialize> Serialize for SeriesTable<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.entries.len()))?;
        for (k, v) in &self.entries {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for SeriesTable<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TableVisitor<V>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for TableVisitor<V> {
            type Value = SeriesTable<V>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of device series")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                // The length comes from the file: reserve no more than a bounded amount up
                // front (as serde's own collections do), so a corrupt count is refused when the
                // entries run out instead of aborting the allocation.
                let n = map.size_hint().unwrap_or(0).min(PREALLOC_MAX);
                let mut t = SeriesTable {
                    entries: Vec::with_capacity(n),
                    tags: SmallVec::with_capacity(n),
                    index: None,
                };
                while let Some((k, v)) = map.next_entry::<SeriesKey, V>()? {
                    let hash = k.borrowed().hash();
                    if t.position(&k.borrowed(), hash).is_some() {
                        return Err(serde::de::Error::custom(format!(
                            "device series {k:?} listed twice"
                        )));
                    }
                    t.push(k, hash, v);
                }
                Ok(t)
            }
        }

        d.deserialize_map(TableVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn key(node: Option<&str>, gpu: Option<&str>) -> SeriesKey {
        SeriesKey {
            node: node.map(Arc::from),
            gpu: gpu.map(Arc::from),
        }
    }

    fn names(n: u8) -> Option<String> {
        (n > 0).then(|| format!("n{}", n - 1))
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Adds `v` to the series (node, gpu), creating it.
        Add(u8, u8, u32),
        /// Drops the series whose value is below the bound.
        Retain(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u8..12, 0u8..12, 0u32..100).prop_map(|(n, g, v)| Op::Add(n, g, v)),
            1 => (0u32..100).prop_map(Op::Retain),
        ]
    }

    proptest! {
        /// Whatever the mix of insertions and removals, and across the switch between scanning
        /// and the index (12 x 12 keys reach well past `SCAN_MAX`), the table holds what a
        /// hash map holds, in arrival order, and survives a bincode round trip.
        #[test]
        fn holds_what_a_hash_map_holds(ops in proptest::collection::vec(op(), 1..400)) {
            let mut t: SeriesTable<u32> = SeriesTable::default();
            let mut model: HashMap<SeriesKey, u32> = HashMap::new();
            let mut order: Vec<SeriesKey> = Vec::new();
            for op in ops {
                match op {
                    Op::Add(n, g, v) => {
                        let k = key(names(n).as_deref(), names(g).as_deref());
                        let r = k.borrowed();
                        *t.get_or_insert(&r, r.hash(), || k.clone()) += v;
                        if !model.contains_key(&k) {
                            order.push(k.clone());
                        }
                        *model.entry(k).or_default() += v;
                    }
                    Op::Retain(bound) => {
                        t.retain(|&v| v >= bound);
                        model.retain(|_, v| *v >= bound);
                        order.retain(|k| model.contains_key(k));
                    }
                }
                prop_assert_eq!(t.len(), model.len());
                prop_assert_eq!(t.index.is_some(), t.len() > SCAN_MAX);
            }
            let listed: Vec<(SeriesKey, u32)> = t.iter().map(|(k, v)| (k.clone(), *v)).collect();
            let expected: Vec<(SeriesKey, u32)> = order.iter().map(|k| (k.clone(), model[k])).collect();
            prop_assert_eq!(listed, expected);
            for n in 0..12 {
                for g in 0..12 {
                    let (n, g) = (names(n), names(g));
                    let r = SeriesRef { node: n.as_deref(), gpu: g.as_deref() };
                    prop_assert_eq!(t.get(&r, r.hash()), model.get(&key(r.node, r.gpu)));
                }
            }
            let bytes = bincode::serialize(&t).unwrap();
            prop_assert_eq!(&bytes, &bincode::serialize(&t.iter().collect::<Vec<_>>()).unwrap());
            let back: SeriesTable<u32> = bincode::deserialize(&bytes).unwrap();
            prop_assert_eq!(
                back.iter().collect::<Vec<_>>(),
                t.iter().collect::<Vec<_>>()
            );
            prop_assert_eq!(back.index.is_some(), t.index.is_some());
        }
    }

    #[test]
    fn entries_grow_one_at_a_time_up_to_the_scan_limit_and_by_an_eighth_beyond() {
        let mut t: SeriesTable<u64> = SeriesTable::default();
        for i in 0..200 {
            let k = key(Some(&format!("node-{i}")), Some("0"));
            let r = k.borrowed();
            t.get_or_insert(&r, r.hash(), || k.clone());
            let (len, cap) = (t.len(), t.entries.capacity());
            if len <= SCAN_MAX {
                assert_eq!(cap, len, "{len} series");
            } else {
                assert!(cap <= len + len / 8, "{len} series in room for {cap}");
            }
        }
    }

    #[test]
    fn the_prefetch_candidate_of_a_held_key_is_its_entry_scanned_or_indexed() {
        let mut t: SeriesTable<u32> = SeriesTable::default();
        for n in 0..(2 * SCAN_MAX as u32) {
            let k = key(Some(&format!("node{}", n / 8)), Some(&(n % 8).to_string()));
            let r = k.borrowed();
            *t.get_or_insert(&r, r.hash(), || k.clone()) = n;
            // The candidate shares the key's tag, and is the key's own entry unless another
            // entry does too (hashes are seeded per process: a collision is rare, not excluded).
            let tags: Vec<u16> = t.iter().map(|(k, _)| tag(k.borrowed().hash())).collect();
            for (i, (k, v)) in t.iter().enumerate() {
                let (ck, cv) = t.candidate(k.borrowed().hash()).unwrap();
                assert_eq!(tag(ck.borrowed().hash()), tags[i]);
                if tags.iter().filter(|&&x| x == tags[i]).count() == 1 {
                    assert_eq!((ck, cv), (k, v), "entry {i} of {}", t.len());
                }
            }
        }
        assert!(t.index.is_some());
        assert!(SeriesTable::<u32>::default().candidate(0).is_none());
    }

    #[test]
    fn a_map_with_a_key_twice_is_refused() {
        let k = key(Some("a"), Some("0"));
        let bytes = bincode::serialize(&vec![(k.clone(), 1u32), (k, 2u32)]).unwrap();
        let err = bincode::deserialize::<SeriesTable<u32>>(&bytes).unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
    }

    #[test]
    fn a_corrupt_series_count_is_an_error_not_an_allocation() {
        // bincode states a map's length as a u64 before its entries: claim 2^61 series, give one.
        let mut bytes = (1u64 << 61).to_le_bytes().to_vec();
        bytes.extend(bincode::serialize(&(key(Some("a"), Some("0")), 1u32)).unwrap());
        let err = bincode::deserialize::<SeriesTable<u32>>(&bytes).unwrap_err();
        assert!(err.to_string().contains("io error"), "{err}");
    }

    #[test]
    fn a_five_device_job_costs_five_entries_and_its_tags_are_inline_up_to_a_node() {
        let mut t: SeriesTable<[u64; 10]> = SeriesTable::default();
        let entry = size_of::<SeriesKey>() + 80;
        for g in 0..5 {
            let k = key(Some("node"), Some(&g.to_string()));
            let r = k.borrowed();
            t.get_or_insert(&r, r.hash(), || k.clone());
        }
        assert_eq!(t.heap_bytes(), 5 * entry, "five entries, the tags inline");
        for g in 5..INLINE_TAGS + 1 {
            let k = key(Some("node"), Some(&g.to_string()));
            let r = k.borrowed();
            t.get_or_insert(&r, r.hash(), || k.clone());
        }
        let n = INLINE_TAGS + 1;
        assert_eq!(
            t.heap_bytes(),
            n * entry + n * 2,
            "past a node, a tag array of its own"
        );
    }
}
