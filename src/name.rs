//! Names of the state's keys (tenants and jobs), held where the key is.
//!
//! A look-up of a known key compares the sample's names with the key's. A key holding its names
//! as pointers to shared allocations makes each such comparison read one more scattered piece of
//! memory (at fleet scale, a cache miss per name). A [`Name`] of up to [`INLINE_MAX`] bytes (most
//! tenant names and job ids) lives inside the key itself, so comparing it reads only the key's own
//! cache lines; a longer one is an `Arc<str>`, one shared copy per distinct name ([`Names`]).
//! Either way a `Name` is 24 bytes, equals, orders and hashes exactly as its text does, and
//! serialises as a plain string (a checkpoint does not see the difference).

use std::borrow::Borrow;
use std::cell::RefCell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

use ahash::AHashSet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest name held inline.
pub const INLINE_MAX: usize = 22;

/// A key's name: its text inline when it has at most [`INLINE_MAX`] bytes, else a shared copy.
#[derive(Clone)]
pub struct Name(Repr);

#[derive(Clone)]
enum Repr {
    /// `bytes[..len]` is the text (valid UTF-8: it was copied from a `str`).
    Inline {
        len: u8,
        bytes: [u8; INLINE_MAX],
    },
    Shared(Arc<str>),
}

const _: () = assert!(std::mem::size_of::<Name>() == 24);
const _: () = assert!(std::mem::size_of::<Option<Name>>() == 24);

impl Name {
    /// `s` inline if it fits, else a copy of its own (see [`Names::name`] for a shared one).
    pub fn new(s: &str) -> Name {
        Name::inline(s).unwrap_or_else(|| Name(Repr::Shared(Arc::from(s))))
    }

    fn inline(s: &str) -> Option<Name> {
        (s.len() <= INLINE_MAX).then(|| {
            let mut bytes = [0u8; INLINE_MAX];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Name(Repr::Inline {
                len: s.len() as u8,
                bytes,
            })
        })
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            // SAFETY: inline bytes are always copied whole from a `str` (`Name::inline`).
            Repr::Inline { len, bytes } => unsafe {
                std::str::from_utf8_unchecked(bytes.get_unchecked(..*len as usize))
            },
            Repr::Shared(s) => s,
        }
    }

    /// Whether both are the same shared copy of a name (`false` says nothing about their text).
    pub fn same_copy(&self, o: &Name) -> bool {
        matches!((&self.0, &o.0), (Repr::Shared(a), Repr::Shared(b)) if Arc::ptr_eq(a, b))
    }

    /// Whether the text lives in a shared allocation (it is longer than [`INLINE_MAX`]).
    pub fn is_shared(&self) -> bool {
        matches!(self.0, Repr::Shared(_))
    }

    /// Starts loading the text if it lives apart from the name (see [`crate::prefetch`]).
    #[inline(always)]
    pub fn prefetch(&self) {
        if let Repr::Shared(s) = &self.0 {
            crate::prefetch::range(s.as_ptr(), s.len());
        }
    }
}

impl Deref for Name {
    type Target = str;
    #[inline(always)]
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// Tables keyed by `Name` are looked up by `&str`: hashing and equality are those of the text.
impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Name {
    #[inline]
    fn eq(&self, o: &Name) -> bool {
        self.same_copy(o) || self.as_str() == o.as_str()
    }
}

impl Eq for Name {}

impl PartialEq<str> for Name {
    fn eq(&self, o: &str) -> bool {
        self.as_str() == o
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, o: &&str) -> bool {
        self.as_str() == *o
    }
}

impl PartialOrd for Name {
    fn partial_cmp(&self, o: &Name) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for Name {
    fn cmp(&self, o: &Name) -> std::cmp::Ordering {
        match self.same_copy(o) {
            true => std::cmp::Ordering::Equal,
            false => self.as_str().cmp(o.as_str()),
        }
    }
}

impl Hash for Name {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        Name::new(s)
    }
}

impl From<String> for Name {
    fn from(s: String) -> Name {
        Name::new(&s)
    }
}

/// Keeps the shared copy of a long name; a short one is copied inline.
impl From<Arc<str>> for Name {
    fn from(s: Arc<str>) -> Name {
        Name::inline(&s).unwrap_or(Name(Repr::Shared(s)))
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Long names decoded inside [`Names::collecting`] are shared, as the names of keys made from
/// samples are.
impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a name")
            }
            fn visit_str<E>(self, s: &str) -> Result<Name, E> {
                Ok(Name::inline(s).unwrap_or_else(|| Name(Repr::Shared(decoded_arc(s)))))
            }
        }
        d.deserialize_str(V)
    }
}

/// One shared copy of each name that is not held inline: the long names of jobs and tenants, and
/// the node and GPU names of device series too long to be held in their key
/// ([`crate::series::SeriesKey`]). Names no key uses any more are dropped at each
/// [`Names::sweep`].
#[derive(Debug, Default)]
pub struct Names(AHashSet<Arc<str>>);

impl Names {
    /// The shared copy of `s`, made if there is none.
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        match self.0.get(s) {
            Some(a) => a.clone(),
            None => {
                let a: Arc<str> = Arc::from(s);
                self.0.insert(a.clone());
                a
            }
        }
    }

    /// `s` inline if it fits, else its shared copy.
    pub fn name(&mut self, s: &str) -> Name {
        Name::inline(s).unwrap_or_else(|| Name(Repr::Shared(self.intern(s))))
    }

    /// Drops the copies only this set still holds.
    pub fn sweep(&mut self) {
        self.0.retain(|a| Arc::strong_count(a) > 1);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Heap bytes of the set and of the copies it holds.
    pub fn heap_bytes(&self) -> usize {
        crate::footprint::set_bytes(&self.0)
            + self
                .0
                .iter()
                .map(|n| crate::footprint::arc_str_bytes(n))
                .sum::<usize>()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<str>> {
        self.0.iter()
    }

    /// Runs `decode` with the long names it decodes ([`Name`], series keys) shared, and returns
    /// them with its result. Without this, decoding a state would give every long name of every
    /// key an allocation of its own (each device series its own copy of its node's name).
    pub fn collecting<T>(decode: impl FnOnce() -> T) -> (T, Names) {
        let outer = DECODING.with(|d| d.borrow_mut().replace(Names::default()));
        let decoded = decode();
        let names = DECODING.with(|d| std::mem::replace(&mut *d.borrow_mut(), outer));
        (decoded, names.unwrap_or_default())
    }
}

thread_local! {
    /// The names of the state being decoded on this thread ([`Names::collecting`]).
    static DECODING: RefCell<Option<Names>> = const { RefCell::new(None) };
}

/// The shared copy of `s` while [`Names::collecting`], else a copy of its own.
pub(crate) fn decoded_arc(s: &str) -> Arc<str> {
    DECODING.with(|d| match d.borrow_mut().as_mut() {
        Some(names) => names.intern(s),
        None => Arc::from(s),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_of_every_length() -> Vec<String> {
        (0..=INLINE_MAX + 3)
            .map(|n| "é-tenant-0123456789abcdefghij".chars().take(n).collect())
            .collect()
    }

    #[test]
    fn a_name_is_its_text_inline_up_to_the_limit_and_shared_beyond() {
        for s in names_of_every_length() {
            let n = Name::new(&s);
            assert_eq!(n.as_str(), s);
            assert_eq!(n.is_shared(), s.len() > INLINE_MAX, "{s:?}");
        }
    }

    #[test]
    fn names_hash_compare_and_order_as_their_text() {
        let state = ahash::RandomState::new();
        let all = names_of_every_length();
        for a in &all {
            let n = Name::new(a);
            assert_eq!(state.hash_one(&n), state.hash_one(a.as_str()));
            for b in &all {
                let m = Name::new(b);
                assert_eq!(n == m, a == b);
                assert_eq!(n.cmp(&m), a.as_str().cmp(b.as_str()));
            }
        }
    }

    #[test]
    fn a_table_keyed_by_names_is_found_by_text() {
        let mut t: hashbrown::HashMap<Name, usize, ahash::RandomState> = Default::default();
        for (i, s) in names_of_every_length().iter().enumerate() {
            t.insert(Name::new(s), i);
        }
        for (i, s) in names_of_every_length().iter().enumerate() {
            assert_eq!(t.get(s.as_str()), Some(&i));
        }
    }

    #[test]
    fn names_encode_as_plain_strings_and_long_ones_decode_shared_while_collecting() {
        let all = names_of_every_length();
        let names: Vec<Name> = all.iter().map(|s| Name::new(s)).collect();
        let encoded = bincode::serialize(&names).unwrap();
        assert_eq!(encoded, bincode::serialize(&all).unwrap());
        let twice = bincode::serialize(&[&names[..], &names[..]].concat()).unwrap();
        let (decoded, shared) =
            Names::collecting(|| bincode::deserialize::<Vec<Name>>(&twice).unwrap());
        assert_eq!(decoded, [&names[..], &names[..]].concat());
        let long = all.iter().filter(|s| s.len() > INLINE_MAX).count();
        assert_eq!(shared.len(), long, "one copy of each long name");
        for (a, b) in decoded[..all.len()].iter().zip(&decoded[all.len()..]) {
            assert_eq!(a.is_shared(), a.len() > INLINE_MAX);
            assert!(a.same_copy(b) == a.is_shared(), "{a:?} shared once");
        }
    }

    #[test]
    fn the_set_keeps_one_copy_of_each_long_name_until_no_key_holds_it() {
        let mut names = Names::default();
        let long = "x".repeat(INLINE_MAX + 1);
        let a = names.name(&long);
        let b = names.name(&long);
        let short = names.name("job-1");
        assert!(a.is_shared() && !short.is_shared());
        assert_eq!(names.len(), 1, "short names are not held");
        assert!(a.same_copy(&b), "a long name is shared");
        drop(b);
        names.sweep();
        assert_eq!(names.len(), 1, "still held by a key");
        drop(a);
        names.sweep();
        assert!(names.is_empty());
    }
}
