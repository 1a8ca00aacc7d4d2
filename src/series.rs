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

/// Most bytes of node and GPU names together that a [`SeriesKey`] holds inline.
pub const INLINE_NAMES: usize = 37;

/// The device a series belongs to: node and GPU as the samples name them (either may be absent).
/// Both names are held inside the key when together they have at most [`INLINE_NAMES`] bytes, so
/// that a look-up compares them without reading anything else (at fleet scale, a node name in an
/// allocation of its own was a cache miss for each sample); longer ones are kept as a pair of the
/// names' shared copies ([`crate::name::Names`]). 40 bytes either way; serialised as the two
/// optional names.
#[derive(Clone)]
pub struct SeriesKey(KeyRepr);

/// The length byte of an absent name.
const ABSENT: u8 = u8::MAX;

#[derive(Clone)]
enum KeyRepr {
    /// The node's bytes, then the GPU's, each length [`ABSENT`] for no name (valid UTF-8: both
    /// were copied from `str`s).
    Inline {
        node: u8,
        gpu: u8,
        bytes: [u8; INLINE_NAMES],
    },
    Shared(Arc<SharedNames>),
}

/// The names of a key that does not hold them inline: node and GPU.
type SharedNames = (Option<Arc<str>>, Option<Arc<str>>);

const _: () = assert!(size_of::<SeriesKey>() == 40);

impl SeriesKey {
    /// The key of `names`, inline if they fit, else shared through `share` (each long name's one
    /// copy).
    pub fn new(names: SeriesRef<'_>, share: impl FnMut(&str) -> Arc<str>) -> SeriesKey {
        let len = |n: Option<&str>| n.map_or(0, str::len);
        if len(names.node) + len(names.gpu) > INLINE_NAMES {
            let mut share = share;
            return SeriesKey(KeyRepr::Shared(Arc::new((
                names.node.map(&mut share),
                names.gpu.map(&mut share),
            ))));
        }
        let mut bytes = [0u8; INLINE_NAMES];
        let node = names.node.unwrap_or("");
        let gpu = names.gpu.unwrap_or("");
        bytes[..node.len()].copy_from_slice(node.as_bytes());
        bytes[node.len()..node.len() + gpu.len()].copy_from_slice(gpu.as_bytes());
        let length = |n: Option<&str>| n.map_or(ABSENT, |n| n.len() as u8);
        SeriesKey(KeyRepr::Inline {
            node: length(names.node),
            gpu: length(names.gpu),
            bytes,
        })
    }

    pub fn node(&self) -> Option<&str> {
        self.borrowed().node
    }

    #[inline]
    pub fn borrowed(&self) -> SeriesRef<'_> {
        match &self.0 {
            KeyRepr::Inline { node, gpu, bytes } => {
                let n = match *node {
                    ABSENT => 0,
                    n => n as usize,
                };
                let text = |from: usize, len: u8| {
                    (len != ABSENT).then(|| {
                        let b = &bytes[from..from + len as usize];
                        // SAFETY: copied whole from a `str` (`SeriesKey::new`).
                        unsafe { std::str::from_utf8_unchecked(b) }
                    })
                };
                SeriesRef {
                    node: text(0, *node),
                    gpu: text(n, *gpu),
                }
            }
            KeyRepr::Shared(names) => SeriesRef {
                node: names.0.as_deref(),
                gpu: names.1.as_deref(),
            },
        }
    }

    /// The shared copy of the node's name, if the key holds its names apart.
    #[cfg(test)]
    pub(crate) fn shared_node(&self) -> Option<&Arc<str>> {
        match &self.0 {
            KeyRepr::Inline { .. } => None,
            KeyRepr::Shared(names) => names.0.as_ref(),
        }
    }

    /// Starts loading the names if they live apart from the key.
    #[inline]
    pub fn prefetch(&self) {
        if let KeyRepr::Shared(names) = &self.0 {
            crate::prefetch::value(&**names);
            for n in [&names.0, &names.1].into_iter().flatten() {
                crate::prefetch::range(n.as_ptr(), n.len());
            }
        }
    }

    /// Heap bytes of the key's own allocation (the shared names' pair; the names themselves are
    /// counted once, as [`crate::name::Names`] holds them).
    pub fn heap_bytes(&self) -> usize {
        match &self.0 {
            KeyRepr::Inline { .. } => 0,
            KeyRepr::Shared(_) => 2 * size_of::<usize>() + size_of::<SharedNames>(),
        }
    }
}

impl PartialEq for SeriesKey {
    fn eq(&self, o: &SeriesKey) -> bool {
        self.borrowed() == o.borrowed()
    }
}

impl Eq for SeriesKey {}

impl std::hash::Hash for SeriesKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        std::hash::Hash::hash(&self.borrowed(), h);
    }
}

impl fmt::Debug for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = self.borrowed();
        f.debug_struct("SeriesKey")
            .field("node", &k.node)
            .field("gpu", &k.gpu)
            .finish()
    }
}

/// The key as serde's derive of a struct of the two optional names writes it.
#[derive(Serialize, Deserialize)]
struct WireKey<'a> {
    #[serde(borrow)]
    node: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    gpu: Option<std::borrow::Cow<'a, str>>,
}

impl Serialize for SeriesKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let k = self.borrowed();
        WireKey {
            node: k.node.map(std::borrow::Cow::Borrowed),
            gpu: k.gpu.map(std::borrow::Cow::Borrowed),
        }
        .serialize(s)
    }
}

/// Long names decoded inside [`crate::name::Names::collecting`] are shared, as the names of keys
/// made from samples are.
impl<'de> Deserialize<'de> for SeriesKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SeriesKey, D::Error> {
        let w = WireKey::deserialize(d)?;
        let names = SeriesRef {
            node: w.node.as_deref(),
            gpu: w.gpu.as_deref(),
        };
        Ok(SeriesKey::new(names, crate::name::decoded_arc))
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

    #[inline]
    fn matches(&self, k: &SeriesKey) -> bool {
        k.borrowed() == *self
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

    /// Heap bytes the table asks for, its keys' included (its value's own heap allocations not).
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * size_of::<(SeriesKey, V)>()
            + self
                .entries
                .iter()
                .map(|(k, _)| k.heap_bytes())
                .sum::<usize>()
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
        SeriesKey::new(SeriesRef { node, gpu }, |n| Arc::from(n))
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
        /// A key reads back the names it was made of, absent and empty ones told apart, held
        /// inline exactly when they fit together, and encodes as serde's derive of the two
        /// optional names does (the checkpoint's bytes).
        #[test]
        fn a_key_holds_its_names_inline_when_they_fit_and_encodes_as_the_two_names(
            node in proptest::option::of("[a-zé0-9-]{0,40}"),
            gpu in proptest::option::of("[A-F0-9-]{0,40}"),
        ) {
            #[derive(Serialize)]
            struct Plain<'a> {
                node: Option<&'a str>,
                gpu: Option<&'a str>,
            }
            let names = SeriesRef { node: node.as_deref(), gpu: gpu.as_deref() };
            let k = SeriesKey::new(names, |n| Arc::from(n));
            prop_assert_eq!(k.borrowed(), names);
            let len = node.as_deref().map_or(0, str::len) + gpu.as_deref().map_or(0, str::len);
            prop_assert_eq!(k.heap_bytes() == 0, len <= INLINE_NAMES);
            let bytes = bincode::serialize(&k).unwrap();
            prop_assert_eq!(&bytes, &bincode::serialize(&Plain { node: names.node, gpu: names.gpu }).unwrap());
            let back: SeriesKey = bincode::deserialize(&bytes).unwrap();
            prop_assert_eq!(back, k);
        }

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
