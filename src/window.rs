//! Event-time sliding windows by pane aggregation.
//!
//! A window of width W sliding every S (S divides W) ending at E covers samples with
//! `E - W <= ts < E`, windows aligned to the Unix epoch. Each key keeps one ring of `W / S` panes per
//! window, a pane holding the partial sum of one slide; a window's value is the sum of its panes, so a
//! sample is stored once per window length, not once per overlapping window. Accelerator time is kept
//! in integer milliseconds, so sums are exact and independent of arrival order. The samples of a
//! key's newest span (one pane of every window) are summed apart and added to the rings once, when
//! the key moves on to the next span ([`Windows`]). A ring keeps its newest panes in an array and
//! its older ones encoded compactly ([`UsageRing`], [`crate::pane_archive`]): a long-lived key's
//! day and week hold hundreds of panes.
//!
//! This module does no I/O and never reads the clock: callers pass event times in.

use serde::{Deserialize, Serialize};

use crate::estimate::Usage;
use crate::pane_archive::{GroupedSum, PaneArchive};

/// A configured sliding window, in the checked form the engine uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    pub name: String,
    // Private, so that `panes` always agrees with them: `WindowSpec::new` checks and derives.
    width_ms: i64,
    slide_ms: i64,
    /// `width_ms / slide_ms`, divided out once.
    panes: usize,
    /// The newest panes a ring keeps in its pane array (at most `panes`); see
    /// [`WindowSpec::with_lateness`].
    live: usize,
}

impl WindowSpec {
    /// A window `width_ms` wide sliding every `slide_ms` (positive, and dividing `width_ms`).
    pub fn new(name: impl Into<String>, width_ms: i64, slide_ms: i64) -> WindowSpec {
        assert!(
            slide_ms > 0 && width_ms > 0 && width_ms % slide_ms == 0,
            "a window's slide is positive and divides its width"
        );
        let panes = (width_ms / slide_ms) as usize;
        WindowSpec {
            name: name.into(),
            width_ms,
            slide_ms,
            panes,
            live: panes.min(LIVE_PANES),
        }
    }

    /// The window with its rings keeping live, in their pane arrays, the panes a sample within
    /// `lateness_ms` of its key's newest can land in: the newest pane and as many before it as
    /// the lateness reaches into (`ceil(lateness / slide)`; with the default 5-minute lateness,
    /// six panes of a minute, two of five minutes or more). Older panes are held encoded
    /// ([`UsageRing`]). Without it, a ring keeps [`LIVE_PANES`] live.
    pub fn with_lateness(mut self, lateness_ms: i64) -> WindowSpec {
        let behind = (lateness_ms.max(0) as u64).div_ceil(self.slide_ms as u64);
        self.live = behind.saturating_add(1).min(self.panes as u64) as usize;
        self
    }

    /// The window's width in milliseconds.
    pub fn width_ms(&self) -> i64 {
        self.width_ms
    }

    /// How far the window slides, in milliseconds: the length of one pane.
    pub fn slide_ms(&self) -> i64 {
        self.slide_ms
    }

    /// The panes the window spans: its width over its slide.
    pub fn panes(&self) -> usize {
        self.panes
    }

    /// The newest panes a ring of this window keeps in its pane array, at most
    /// [`WindowSpec::panes`].
    pub fn live_panes(&self) -> usize {
        self.live
    }

    /// The pane of event time `ts_ms` in this window, [`pane_near`] `near` (a ring's newest).
    #[inline]
    pub fn pane_of(&self, ts_ms: i64, near: Option<i64>) -> i64 {
        pane_near(ts_ms, self.slide_ms, near)
    }

    /// End of the window reported "now": the first slide boundary strictly after `latest_ms`,
    /// so the window includes the latest event.
    pub fn end_after(&self, latest_ms: i64) -> i64 {
        (latest_ms.div_euclid(self.slide_ms) + 1) * self.slide_ms
    }
}

/// The span of `len_ms` milliseconds that event time `ts_ms` lies in, numbered from the epoch
/// (`ts_ms.div_euclid(len_ms)`). `near` is a span that `ts_ms` most likely lies in or just after
/// (a ring's newest pane, a series' current half window): then it costs a multiplication and two
/// comparisons instead of a division.
#[inline]
pub fn pane_near(ts_ms: i64, len_ms: i64, near: Option<i64>) -> i64 {
    if let Some((near, into)) =
        near.and_then(|n| Some((n, ts_ms.checked_sub(n.checked_mul(len_ms)?)?)))
    {
        if (0..len_ms).contains(&into) {
            return near;
        }
        if into >= len_ms && into - len_ms < len_ms {
            return near + 1;
        }
    }
    ts_ms.div_euclid(len_ms)
}

/// A ring of up to `n` panes indexed by absolute pane number; it retains panes `head - n + 1 ..= head`.
/// Storage follows the span actually written: the first pane lives inline alone, and the pane
/// array is allocated when a second pane is written, at the size the span needs, then doubles (up
/// to `n`) as the written span grows. A key thus costs in proportion to how long it has been
/// active, at most `n` panes, and a ring whose key has not yet outlived one pane (a week's ring in
/// its first hour) has no array at all. Panes of the retained range that were never written read
/// as absent, not stored.
///
/// The newest pane lives inline (`current`), not in the pane array: nearly every write is to the
/// newest pane (a job's detection ring takes every sample of the job there), and the inline pane
/// sits beside the ring's bookkeeping, so such a write touches no separately allocated memory (at
/// fleet scale each pane array touched is a cache miss). The array is touched when the ring
/// advances, for late samples and for reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PaneRing<T> {
    /// Newest pane index written; [`NEVER`] until a pane is written.
    head: i64,
    /// Oldest pane index stored: panes `start ..= head` are held, and `start > head - n`.
    start: i64,
    /// Pane `head`; its slot in `panes` is not read while it is the head.
    current: T,
    /// `panes.len() >= head - start + 1` once the ring has held two panes (before, while the head
    /// alone is held, it is empty); pane `i < head` lives in slot `i mod panes.len()`.
    panes: Box<[T]>,
}

/// How far from pane 0 the pane indexes of a ring or archive read from a checkpoint may lie:
/// indexes of event times are far within it, and nothing computed from indexes within it
/// overflows.
pub(crate) const INDEX_BOUND: i64 = 1 << 60;

/// The head of a ring never written. No pane has this index: panes are numbered from event times,
/// which are after the year 2000 (`decode`), and a slide is at least a millisecond.
const NEVER: i64 = i64::MIN;

impl<T: Default + Clone> Default for PaneRing<T> {
    fn default() -> Self {
        PaneRing {
            head: NEVER,
            start: NEVER,
            current: T::default(),
            panes: Box::default(),
        }
    }
}

impl<T: Default + Clone> PaneRing<T> {
    fn slot(&self, idx: i64) -> usize {
        idx.rem_euclid(self.panes.len() as i64) as usize
    }

    /// The pane for absolute index `idx`, advancing the ring if `idx` is newer than its head.
    /// `None` if the pane is older than everything the ring retains.
    #[inline]
    pub fn pane_mut(&mut self, idx: i64, n: usize) -> Option<&mut T> {
        if idx == self.head && self.head != NEVER {
            return Some(&mut self.current);
        }
        self.pane_mut_in_array(idx, n)
    }

    /// The pane for index `idx` if the ring holds it (`start ..= head`), without moving.
    #[inline]
    pub fn held_mut(&mut self, idx: i64) -> Option<&mut T> {
        if idx == self.head && self.head != NEVER {
            return Some(&mut self.current);
        }
        if self.start <= idx && idx < self.head {
            let s = self.slot(idx);
            return Some(&mut self.panes[s]);
        }
        None
    }

    /// [`PaneRing::pane_mut`] for any pane but the current head: an older pane is written in its
    /// slot, the head staying inline; a newer one moves the ring on, the old head written out to
    /// its slot and the new one starting inline.
    fn pane_mut_in_array(&mut self, idx: i64, n: usize) -> Option<&mut T> {
        debug_assert_ne!(
            idx, NEVER,
            "no pane has the index that marks a ring never written"
        );
        let n_i = n as i64;
        if self.head == NEVER || (idx > self.head && idx - n_i + 1 > self.head) {
            // The first pane, or a jump past everything held: the ring holds the new pane alone
            // (inline; an array it already has is kept, cleared).
            self.panes.fill(T::default());
            self.head = idx;
            self.start = idx;
            self.current = T::default();
            return Some(&mut self.current);
        }
        if idx < self.start && idx <= self.head - n_i {
            return None;
        }
        if idx < self.head {
            // A pane before the head (a sample covering the end of the slide before, or a late
            // one): the head stays inline, and the ring holds `lo ..= head`.
            let lo = self.start.min(idx);
            self.hold(lo, self.head, n);
            for i in idx..self.start {
                let s = self.slot(i);
                self.panes[s] = T::default();
            }
            self.start = lo;
            let s = self.slot(idx);
            return Some(&mut self.panes[s]);
        }
        // A newer pane: the ring moves on to `lo ..= idx`, the old head written to its slot.
        let lo = self.start.max(idx - n_i + 1);
        self.hold(lo, idx, n);
        let s = self.slot(self.head);
        self.panes[s] = std::mem::take(&mut self.current);
        for i in self.head + 1..=idx {
            let s = self.slot(i);
            self.panes[s] = T::default();
        }
        self.head = idx;
        self.start = lo;
        Some(&mut self.current)
    }

    /// Starts loading the slot that writing pane `idx` touches in the pane array: its own when
    /// it is older than the head, the head's (written out as the ring moves on) when it is newer.
    /// Nothing when the write stays inline or the ring has no array yet.
    #[inline]
    pub fn prefetch_pane(&self, idx: i64) {
        if idx == self.head || self.panes.is_empty() {
            return;
        }
        let at = if idx < self.head { idx } else { self.head };
        crate::prefetch::value(&self.panes[self.slot(at)]);
    }

    /// Makes room for panes `lo ..= hi` (at least two, a span of at most `n`, holding the head),
    /// keeping the held panes in it but the head's, which the caller writes from `current`.
    fn hold(&mut self, lo: i64, hi: i64, n: usize) {
        let need = (hi - lo + 1) as usize;
        if need <= self.panes.len() {
            return;
        }
        self.reslot(need.next_power_of_two().min(n), self.start.max(lo));
    }

    /// Moves the panes `from .. head` (the head lives inline) into a new array of `len` slots.
    fn reslot(&mut self, len: usize, from: i64) {
        let mut panes = vec![T::default(); len].into_boxed_slice();
        for i in from..self.head {
            panes[i.rem_euclid(len as i64) as usize] =
                std::mem::take(&mut self.panes[self.slot(i)]);
        }
        self.panes = panes;
    }

    /// Held panes with `first <= index <= last`, oldest first.
    pub fn range(&self, first: i64, last: i64) -> impl Iterator<Item = (i64, &T)> + '_ {
        let (lo, from_slot, from_start, head) = self.parts(first, last);
        let panes = from_slot.iter().chain(from_start).chain(head);
        panes.zip(lo..).map(|(p, i)| (i, p))
    }

    /// Calls `f` with each held pane `first <= index <= last` and its index, oldest first: what
    /// [`PaneRing::range`] yields, in a plain loop over each part (for reading every pane of a
    /// long ring).
    #[inline]
    pub fn for_each_in(&self, first: i64, last: i64, mut f: impl FnMut(i64, &T)) {
        let (mut i, from_slot, from_start, head) = self.parts(first, last);
        for part in [from_slot, from_start] {
            for p in part {
                f(i, p);
                i += 1;
            }
        }
        if let Some(p) = head {
            f(i, p);
        }
    }

    /// Where the held panes `first <= index <= last` are: the index of the first of them, those
    /// older than the head in two slices (from its slot in the array on, wrapping to the array's
    /// start at most once; no division a pane), and the head if it is one of them.
    #[inline]
    fn parts(&self, first: i64, last: i64) -> (i64, &[T], &[T], Option<&T>) {
        let (lo, hi, stored) = if self.head == NEVER {
            (1, 0, 0)
        } else {
            let (lo, hi) = (first.max(self.start), last.min(self.head));
            (lo, hi, (hi.min(self.head - 1) - lo + 1).max(0) as usize)
        };
        let (from_slot, from_start) = if stored == 0 {
            (&[][..], &[][..])
        } else {
            let s = self.slot(lo);
            let to_end = stored.min(self.panes.len() - s);
            (&self.panes[s..s + to_end], &self.panes[..stored - to_end])
        };
        let head = (lo <= hi && hi == self.head).then_some(&self.current);
        (lo, from_slot, from_start, head)
    }

    /// Starts loading the pane array, which reading a range of panes touches.
    #[inline]
    pub fn prefetch(&self) {
        crate::prefetch::slice(&self.panes);
    }

    /// Newest pane index, if any pane was ever written.
    pub fn head(&self) -> Option<i64> {
        (self.head != NEVER).then_some(self.head)
    }

    /// Panes allocated (for memory accounting; the inline current pane is part of the ring).
    pub fn capacity(&self) -> usize {
        self.panes.len()
    }

    /// Frees the storage if every pane written is older than `idx`: the ring then reads as never
    /// written, which is how it reads for every range from `idx` on anyway.
    pub fn release_before(&mut self, idx: i64) {
        if self.head != NEVER && self.head < idx {
            *self = PaneRing::default();
        }
    }

    /// Whether the ring's bookkeeping agrees with its storage (a ring read from a checkpoint is
    /// checked before it is used): its indexes are those of event times (within 2^60 of pane 0,
    /// so that nothing computed from them overflows), and a ring holding panes before its head
    /// has an array with a slot for each.
    pub fn is_consistent(&self) -> bool {
        self.head == NEVER
            || ((-INDEX_BOUND..=INDEX_BOUND).contains(&self.head)
                && (-INDEX_BOUND..=self.head).contains(&self.start)
                && (self.start == self.head
                    || ((self.head - self.start) as u64) < self.panes.len() as u64))
    }

    /// Takes the held panes older than `cut` out of the ring, calling `f` with each and its index,
    /// oldest first (every index from the oldest held; a pane never written is `T::default()`).
    /// A ring left holding nothing reads as never written; an array longer than what is left
    /// needs is made smaller.
    pub fn take_before(&mut self, cut: i64, mut f: impl FnMut(i64, T)) {
        if self.head == NEVER || cut <= self.start {
            return;
        }
        for i in self.start..cut.min(self.head + 1) {
            let p = if i == self.head {
                std::mem::take(&mut self.current)
            } else {
                let s = self.slot(i);
                std::mem::take(&mut self.panes[s])
            };
            f(i, p);
        }
        if cut > self.head {
            *self = PaneRing::default();
            return;
        }
        self.start = cut;
        let want = ((self.head - cut + 1) as usize).next_power_of_two().max(2);
        if self.panes.len() > want {
            self.reslot(want, self.start);
        }
    }
}

/// The newest panes a usage window's ring keeps in a pane array unless its window says otherwise
/// ([`WindowSpec::with_lateness`], which the configuration's windows do); the panes a ring keeps
/// there before it has an archive, whatever its window says (an archive of a few panes would
/// take more than their slots: its bookkeeping is about 250 bytes); and those a ring read from a
/// checkpoint keeps until it moves on.
pub const LIVE_PANES: usize = 8;

/// What an [`ArchivedRing`] keeps its older panes in: a run of consecutive panes `start .. end`
/// encoded compactly and exactly ([`PaneArchive`] for usage windows,
/// [`crate::slide_archive::SlideArchive`] for detection slides).
pub trait Archive<T>: Default {
    /// The format version of checkpoints from which a ring's archive is written as it is held
    /// (before it, every pane in the live ring's array).
    const SINCE_FORMAT: u32;
    /// An empty archive whose first pane will be `start`.
    fn starting_at(start: i64) -> Self;
    /// The oldest pane held (or the next to be appended, when empty).
    fn start(&self) -> i64;
    /// One past the newest pane held: the index [`Archive::push`] appends at.
    fn end(&self) -> i64;
    fn is_empty(&self) -> bool {
        self.start() == self.end()
    }
    /// Heap bytes of the encoding (the archive itself is counted by its owner).
    fn heap_bytes(&self) -> usize;
    /// Appends pane [`Archive::end`].
    fn push(&mut self, pane: &T);
    /// Drops the panes before `idx`.
    fn drop_before(&mut self, idx: i64);
    /// Writes pane `idx` with `f`, which may lie before or after the panes held: the archive
    /// grows to it, the panes between holding nothing.
    fn write(&mut self, idx: i64, f: impl FnOnce(&mut T));
    /// Calls `f` with each pane held with `first <= index <= last` and its index, oldest first.
    fn for_each_in(&self, first: i64, last: i64, f: impl FnMut(i64, &T));
    /// Starts loading the archive's bookkeeping, which a read of its panes starts with.
    fn prefetch(&self) {
        crate::prefetch::value(self);
    }
    /// Starts loading what a read of the archive's panes touches beyond its bookkeeping (which
    /// this reads: it should have been loaded by [`Archive::prefetch`] a while before).
    fn prefetch_contents(&self);
}

/// A ring of panes: its newest in a [`PaneRing`], where nearly every write lands (as many as the
/// caller keeps live, those a sample within the allowed lateness can reach, once the ring has an
/// archive; up to [`LIVE_PANES`] before), the older ones encoded in an [`Archive`], in a third to
/// a half of the bytes. The archive's panes all come before the live ring's: a pane is written
/// in the archive if the archive holds it or it is older than both the live span and the live
/// ring's oldest pane, in the live ring otherwise (which so stays right when the live span
/// changes with the configuration, the ring keeping what it holds until it moves on). The live
/// ring fills its array before it lets panes go, so the archive takes several at a time; each
/// advance drops from the archive the panes the window no longer covers. A write to an archived
/// pane (a sample later than the live panes reach) encodes that pane again with what it is
/// encoded with. Every read gives what one ring of all the panes gives, bit for bit.
///
/// Checkpoints hold the live ring and the archive's encoding as they are (from
/// [`Archive::SINCE_FORMAT`] on); a ring of the earlier formats, every pane in its array, is split
/// when it is read.
#[derive(Debug, Clone)]
pub struct ArchivedRing<T, A> {
    live: PaneRing<T>,
    archive: Option<Box<A>>,
}

impl<T: Default + Clone, A> Default for ArchivedRing<T, A> {
    fn default() -> Self {
        ArchivedRing {
            live: PaneRing::default(),
            archive: None,
        }
    }
}

/// The ring of one usage window. A window's value adds its panes in aligned blocks
/// ([`GroupedSum`]): a block the window covers wholly is read as the archive's kept sum, without
/// decoding, and every value reads as it would from one ring of all the panes, bit for bit.
pub type UsageRing = ArchivedRing<Usage, PaneArchive>;

impl<T: Default + Clone, A: Archive<T>> ArchivedRing<T, A> {
    /// Newest pane index, if any pane was ever written.
    pub fn head(&self) -> Option<i64> {
        self.live.head()
    }

    /// Panes in the live ring's array.
    pub fn capacity(&self) -> usize {
        self.live.capacity()
    }

    /// Heap bytes beyond the ring itself: the live array and the archive.
    pub fn heap_bytes(&self) -> usize {
        self.live.capacity() * std::mem::size_of::<T>()
            + self
                .archive
                .as_ref()
                .map_or(0, |a| std::mem::size_of::<A>() + a.heap_bytes())
    }

    /// Writes pane `idx` with `f`, in a ring of `n` panes whose newest `live` are kept live.
    /// False if the pane is older than the ring retains (the `n` newest up to its newest), and
    /// `f` is not called.
    #[inline]
    pub fn write(&mut self, idx: i64, n: usize, live: usize, f: impl FnOnce(&mut T)) -> bool {
        // Nearly every write is to a pane the live ring holds, most to the newest, inline.
        if let Some(p) = self.live.held_mut(idx) {
            f(p);
            return true;
        }
        self.write_other(idx, n, live, f)
    }

    /// [`ArchivedRing::write`] for a pane the live ring does not hold.
    fn write_other(&mut self, idx: i64, n: usize, live: usize, f: impl FnOnce(&mut T)) -> bool {
        // A ring without an archive keeps up to `LIVE_PANES` live (see there).
        let live_n = n.min(if self.archive.is_some() {
            live.max(1)
        } else {
            live.max(LIVE_PANES)
        });
        // The live ring fills the array a ring of `live_n` panes has (a power of two) before
        // panes go to the archive, several at a time.
        let hold = live_n.next_power_of_two().min(n);
        if let Some(head) = self.live.head() {
            if live_n < n || self.archive.is_some() {
                if idx > head {
                    self.advance(idx, n, live_n, hold);
                } else if idx <= head - n as i64 {
                    return false;
                } else if self.archived(idx, head, live_n) {
                    self.archive
                        .get_or_insert_with(Default::default)
                        .write(idx, f);
                    return true;
                }
            }
        }
        match self.live.pane_mut(idx, hold) {
            Some(p) => {
                f(p);
                true
            }
            None => false,
        }
    }

    /// Whether pane `idx`, not after the head, is written in the archive: the archive holds it,
    /// or it is older than both the live span and the live ring's oldest pane.
    fn archived(&self, idx: i64, head: i64, live_n: usize) -> bool {
        match &self.archive {
            Some(a) if idx < a.end() => true,
            _ => idx <= head - live_n as i64 && idx < self.live.start,
        }
    }

    /// Before the live ring moves on to `idx`: when its `hold` panes would not hold `idx` with
    /// those it holds, the panes before the newest `live_n` go to the archive; the archive lets
    /// go of those the window no longer covers.
    #[cold]
    fn advance(&mut self, idx: i64, n: usize, live_n: usize, hold: usize) {
        let keep_from = idx - n as i64 + 1;
        if idx - hold as i64 >= self.live.start {
            self.archive_before(idx - live_n as i64 + 1, keep_from);
        }
        if let Some(a) = &mut self.archive {
            a.drop_before(keep_from);
            if a.is_empty() {
                self.archive = None;
            }
        }
    }

    /// Moves the live panes before `cut` to the end of the archive, but those before
    /// `keep_from`; indexes between the archive's end and the first moved hold nothing.
    fn archive_before(&mut self, cut: i64, keep_from: i64) {
        let archive = &mut self.archive;
        self.live.take_before(cut, |i, p| {
            if i < keep_from {
                return;
            }
            // An archive held is never empty: it starts with its first pane.
            let a = archive.get_or_insert_with(|| Box::new(A::starting_at(i)));
            debug_assert!(
                a.end() <= i,
                "the archive's panes come before the live ones"
            );
            while a.end() < i {
                a.push(&T::default());
            }
            a.push(&p);
        });
    }

    /// Calls `f` with each held pane `first <= index <= last` and its index, oldest first
    /// (panes of the retained range never written read as absent or as holding nothing).
    #[inline]
    pub fn for_each_in(&self, first: i64, last: i64, mut f: impl FnMut(i64, &T)) {
        if let Some(a) = &self.archive {
            a.for_each_in(first, last, &mut f);
        }
        self.live.for_each_in(first, last, f);
    }

    /// Starts loading what a read of every pane touches: the live array and the archive's
    /// bookkeeping; [`ArchivedRing::prefetch_archive`] the rest, a while later.
    #[inline]
    pub fn prefetch(&self) {
        self.live.prefetch();
        if let Some(a) = &self.archive {
            a.prefetch();
        }
    }

    /// Starts loading the archive's contents that a read of every pane touches (its bookkeeping
    /// is read: [`ArchivedRing::prefetch`] should have loaded it a while before).
    #[inline]
    pub fn prefetch_archive(&self) {
        if let Some(a) = &self.archive {
            a.prefetch_contents();
        }
    }

    /// Starts loading the slot of the live array that writing pane `idx` touches
    /// ([`PaneRing::prefetch_pane`]), and the archive's bookkeeping when the write moves the ring
    /// on.
    #[inline]
    pub fn prefetch_pane(&self, idx: i64) {
        self.live.prefetch_pane(idx);
        if let (Some(a), Some(head)) = (&self.archive, self.live.head()) {
            if idx > head {
                crate::prefetch::value(&**a);
            }
        }
    }

    /// Frees the storage if every pane written is older than `idx`.
    pub fn release_before(&mut self, idx: i64) {
        if self.live.head().is_some_and(|h| h < idx) {
            *self = ArchivedRing::default();
        }
    }

    /// The ring as one [`PaneRing`] of all its panes (the checkpoint's form before the
    /// archive's format).
    #[cfg(test)]
    pub(crate) fn whole(&self) -> std::borrow::Cow<'_, PaneRing<T>> {
        let (Some(a), Some(head)) = (&self.archive, self.live.head()) else {
            return std::borrow::Cow::Borrowed(&self.live);
        };
        let start = a.start();
        let len = (head - start + 1) as usize;
        let slot = |i: i64| i.rem_euclid(len as i64) as usize;
        let mut panes = vec![T::default(); len].into_boxed_slice();
        a.for_each_in(start, head, |i, p| panes[slot(i)] = p.clone());
        self.live
            .for_each_in(start, head - 1, |i, p| panes[slot(i)] = p.clone());
        std::borrow::Cow::Owned(PaneRing {
            head,
            start,
            current: self.live.current.clone(),
            panes,
        })
    }

    /// A ring read from a checkpoint, as it was held; one of the formats before the archive's
    /// (`split`: every pane in the live ring's array) with its panes beyond the newest
    /// [`LIVE_PANES`] moved to the archive. `Err` if its bookkeeping is impossible: the live
    /// ring's storage cannot hold its panes, or the archive does not end before them.
    fn read(live: PaneRing<T>, archive: Option<Box<A>>, split: bool) -> Result<Self, &'static str> {
        if !live.is_consistent() {
            return Err("a ring holds more panes than its pane array");
        }
        if let Some(a) = &archive {
            // The archive's panes come before the live ones (`live.start` is the oldest held).
            if live.head().is_none() || a.end() > live.start {
                return Err("a ring's archive does not end before its live panes");
            }
        }
        let mut ring = ArchivedRing { live, archive };
        if let Some(head) = ring.live.head().filter(|_| split) {
            ring.archive_before(head - LIVE_PANES as i64 + 1, i64::MIN);
        }
        Ok(ring)
    }
}

impl UsageRing {
    /// Adds `usage` to pane `idx` of a window of `n` panes whose newest `live` are kept live.
    /// False if the pane is older than the ring retains (the `n` newest up to its newest).
    #[inline]
    pub fn add(&mut self, idx: i64, n: usize, live: usize, usage: &Usage) -> bool {
        self.write(idx, n, live, |p| p.add(usage))
    }

    /// The sum of the held panes with `first <= index <= last`, in the order of [`GroupedSum`].
    pub fn sum_in(&self, first: i64, last: i64) -> Usage {
        let mut sum = GroupedSum::default();
        if let Some(a) = &self.archive {
            a.sum_into(first, last, &mut sum);
        }
        self.live.for_each_in(first, last, |i, p| sum.pane(i, p));
        sum.finish()
    }
}

impl<T: Serialize, A: Serialize> Serialize for ArchivedRing<T, A> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.live, &self.archive).serialize(s)
    }
}

impl<'de, T, A> Deserialize<'de> for ArchivedRing<T, A>
where
    T: Default + Clone + Deserialize<'de>,
    A: Archive<T> + Deserialize<'de>,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let split = crate::checkpoint::format_read() < A::SINCE_FORMAT;
        let (live, archive) = if split {
            (PaneRing::deserialize(d)?, None)
        } else {
            <(PaneRing<T>, Option<Box<A>>)>::deserialize(d)?
        };
        ArchivedRing::read(live, archive, split).map_err(serde::de::Error::custom)
    }
}

/// The accounting windows of one key (a tenant or a job): one ring per configured window, and the
/// sum of the key's newest span not yet added to them.
///
/// Nearly every sample of a key falls in the same pane of every window as the key's previous
/// sample. Such samples are summed in `pending`, which lives inline in the key's state, and touch
/// none of the rings: at fleet scale every ring touched is a cache miss, and the rings of a tenant
/// and of a job were a third of the memory an event touched. `pending` spans what lies in one pane
/// of every window (with the default windows, one minute). It is added to the rings when a sample
/// past its end arrives; a sample before its start (a late one) goes straight to the rings; it is
/// let go with the stale rings once no window reads it ([`Windows::release_stale`]). Reads add it
/// in, so every value is what adding each sample to every ring gives (accelerator milliseconds
/// exactly; the FLOP sums, floating point, may round differently in the last bits, as they do for
/// another arrival order).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Windows {
    pending: Pending,
    /// One ring per window once anything moved into them (none before, nor once all were freed).
    rings: Box<[UsageRing]>,
}

/// What [`Windows::add`] or [`Windows::flush`] moved into the rings: the pending span's sum, or a
/// late sample. Adding `usage` at `ts_ms` to other windows of the same specs puts it in the same
/// panes as adding each of its samples would (a key's owner is credited this way).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moved {
    pub ts_ms: i64,
    pub usage: Usage,
}

/// Samples of `start_ms <= ts < end_ms`, a span inside one pane of every window; empty when
/// `start_ms == end_ms`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Pending {
    start_ms: i64,
    end_ms: i64,
    usage: Usage,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.start_ms >= self.end_ms
    }
}

impl Windows {
    /// Heap bytes of the rings (for memory accounting).
    pub fn heap_bytes(&self) -> usize {
        self.rings.len() * std::mem::size_of::<UsageRing>()
            + self.rings.iter().map(UsageRing::heap_bytes).sum::<usize>()
    }

    /// Whether adding a sample at `ts_ms` touches the rings: it falls outside a pending span
    /// that holds samples (with none pending, the sample starts the span and touches no ring).
    #[inline]
    pub fn touches_rings(&self, ts_ms: i64) -> bool {
        !self.pending.is_empty() && self.outside_pending(ts_ms)
    }

    #[inline]
    fn outside_pending(&self, ts_ms: i64) -> bool {
        !(self.pending.start_ms <= ts_ms && ts_ms < self.pending.end_ms)
    }

    /// Starts loading the rings' bookkeeping (with their newest panes), which a sample outside
    /// the pending span, a read or an eviction touches.
    #[inline]
    pub fn prefetch(&self) {
        crate::prefetch::slice(&self.rings);
    }

    /// Starts loading every ring's panes (for a pass over all of them).
    #[inline]
    pub fn prefetch_panes(&self) {
        for ring in &self.rings {
            ring.prefetch();
        }
    }

    /// Adds `usage` at event time `ts_ms` to every window that still retains its pane. Returns
    /// what this moved into the rings, if anything: the pending sum, when the sample starts a newer
    /// span, or the sample itself, when it is late.
    #[inline]
    pub fn add(&mut self, specs: &[WindowSpec], ts_ms: i64, usage: &Usage) -> Option<Moved> {
        if self.outside_pending(ts_ms) {
            self.add_outside_pending(specs, ts_ms, usage)
        } else {
            self.pending.usage.add(usage);
            None
        }
    }

    /// [`Windows::add`] of a sample outside the pending span: a late one goes to the rings; a
    /// newer one moves the pending span to its own, after adding the pending sum to the rings.
    #[inline(never)]
    fn add_outside_pending(
        &mut self,
        specs: &[WindowSpec],
        ts_ms: i64,
        usage: &Usage,
    ) -> Option<Moved> {
        if !self.pending.is_empty() && ts_ms < self.pending.start_ms {
            self.add_to_rings(specs, ts_ms, usage);
            return Some(Moved {
                ts_ms,
                usage: *usage,
            });
        }
        let moved = self.flush(specs);
        // The panes of every window that hold `ts_ms` overlap in [start, end). Those the flush
        // just wrote are the ones `ts_ms` most likely lies in or after.
        let (mut start, mut end) = (i64::MIN, i64::MAX);
        for (i, spec) in specs.iter().enumerate() {
            let near = self.rings.get(i).and_then(UsageRing::head);
            let pane_start = spec.pane_of(ts_ms, near) * spec.slide_ms;
            start = start.max(pane_start);
            end = end.min(pane_start.saturating_add(spec.slide_ms));
        }
        self.pending = Pending {
            start_ms: start,
            end_ms: end,
            usage: *usage,
        };
        moved
    }

    /// Adds the pending sum to the rings and empties it; returns what it moved.
    pub fn flush(&mut self, specs: &[WindowSpec]) -> Option<Moved> {
        let p = std::mem::take(&mut self.pending);
        (!p.is_empty()).then(|| {
            self.add_to_rings(specs, p.start_ms, &p.usage);
            Moved {
                ts_ms: p.start_ms,
                usage: p.usage,
            }
        })
    }

    /// The pending sum, as [`Windows::flush`] would move it (without moving it).
    pub fn pending(&self) -> Option<Moved> {
        (!self.pending.is_empty()).then_some(Moved {
            ts_ms: self.pending.start_ms,
            usage: self.pending.usage,
        })
    }

    fn add_to_rings(&mut self, specs: &[WindowSpec], ts_ms: i64, usage: &Usage) {
        if self.rings.len() != specs.len() {
            self.make_rings(specs.len());
        }
        for (ring, spec) in self.rings.iter_mut().zip(specs) {
            let idx = spec.pane_of(ts_ms, ring.head());
            ring.add(idx, spec.panes(), spec.live_panes(), usage);
        }
    }

    /// Gives the key `n` rings, in one allocation of exactly their size, keeping those it has.
    #[cold]
    fn make_rings(&mut self, n: usize) {
        let mut rings = Vec::with_capacity(n);
        rings.extend(
            std::mem::take(&mut self.rings)
                .into_vec()
                .into_iter()
                .take(n),
        );
        rings.resize_with(n, UsageRing::default);
        self.rings = rings.into_boxed_slice();
    }

    /// Frees each ring that no window ending after `watermark_ms` reads (its newest pane is older
    /// than such a window's first), and the pending sum if no such window reads it either: values
    /// at and after the watermark are unchanged.
    pub fn release_stale(&mut self, specs: &[WindowSpec], watermark_ms: i64) {
        let first_read =
            |spec: &WindowSpec| watermark_ms.div_euclid(spec.slide_ms) - spec.panes() as i64 + 1;
        for (ring, spec) in self.rings.iter_mut().zip(specs) {
            ring.release_before(first_read(spec));
        }
        if self.rings.iter().all(|r| r.head().is_none()) {
            self.rings = Box::default();
        }
        let p = &self.pending;
        if !p.is_empty()
            && specs
                .iter()
                .all(|spec| p.start_ms.div_euclid(spec.slide_ms) < first_read(spec))
        {
            self.pending = Pending::default();
        }
    }

    /// The value of window `i` ending at `end_ms` (a slide boundary of that window). Exact for every
    /// window that ends after the newest pane written, which is what reports and detection ask for;
    /// older windows have lost their oldest panes to eviction.
    pub fn value(&self, specs: &[WindowSpec], i: usize, end_ms: i64) -> Usage {
        let spec = &specs[i];
        let last = end_ms.div_euclid(spec.slide_ms) - 1;
        let first = last - spec.panes() as i64 + 1;
        let mut total = match self.rings.get(i) {
            Some(ring) => ring.sum_in(first, last),
            None => Usage::default(),
        };
        if !self.pending.is_empty() {
            let pane = self.pending.start_ms.div_euclid(spec.slide_ms);
            if (first..=last).contains(&pane) {
                total.add(&self.pending.usage);
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn spec(width: i64, slide: i64) -> WindowSpec {
        WindowSpec::new("w", width, slide)
    }

    fn usage(acc_ms: u64) -> Usage {
        Usage {
            acc_ms,
            ..Usage::default()
        }
    }

    #[test]
    fn window_covers_start_inclusive_end_exclusive() {
        let specs = [spec(60 * MIN, MIN)];
        let mut w = Windows::default();
        w.add(&specs, 0, &usage(1)); // exactly at E - W for E = 60 min
        w.add(&specs, 60 * MIN - 1, &usage(10));
        assert_eq!(w.value(&specs, 0, 60 * MIN).acc_ms, 11);
        w.add(&specs, 60 * MIN, &usage(100)); // belongs to the next window
        assert_eq!(w.value(&specs, 0, 61 * MIN).acc_ms, 110);
        assert_eq!(specs[0].end_after(60 * MIN), 61 * MIN);
        assert_eq!(specs[0].end_after(60 * MIN - 1), 60 * MIN);
    }

    #[test]
    fn old_panes_are_evicted_as_the_ring_advances() {
        let specs = [spec(5 * MIN, MIN)];
        let mut w = Windows::default();
        for m in 0..20 {
            w.add(&specs, m * MIN + 5, &usage(1));
        }
        assert_eq!(w.value(&specs, 0, 20 * MIN).acc_ms, 5);
        // A sample older than the ring retains counts in no window still represented.
        w.add(&specs, 3 * MIN, &usage(1000));
        assert_eq!(w.value(&specs, 0, 20 * MIN).acc_ms, 5);
        // A late sample still inside the window counts.
        w.add(&specs, 16 * MIN, &usage(1000));
        assert_eq!(w.value(&specs, 0, 20 * MIN).acc_ms, 1005);
    }

    #[test]
    fn ring_jump_beyond_its_length_clears_everything() {
        let mut r: PaneRing<u64> = PaneRing::default();
        *r.pane_mut(10, 4).unwrap() += 1;
        *r.pane_mut(11, 4).unwrap() += 1;
        *r.pane_mut(1000, 4).unwrap() += 7;
        let all: Vec<_> = r.range(i64::MIN, i64::MAX).map(|(i, v)| (i, *v)).collect();
        assert_eq!(all, vec![(1000, 7)]);
        assert_eq!(
            r.capacity(),
            2,
            "a jump keeps the storage and holds only the new pane"
        );
    }

    proptest::proptest! {
        /// The pane of an event time is the division it spares, whatever pane it is told the
        /// time is near: the same pane, the next, any other or none, boundaries and negative
        /// times included.
        #[test]
        fn pane_of_is_the_division_it_spares(
            slide in proptest::prop_oneof![1i64..5, 1i64..100_000_000],
            ts in proptest::prop_oneof![-1_000i64..1_000, 0i64..4_000_000_000_000, proptest::prelude::any::<i64>()],
            offset in proptest::prop_oneof![-3i64..3, proptest::prelude::any::<i64>()],
            boundary in proptest::prelude::any::<bool>(),
            none in proptest::prelude::any::<bool>(),
        ) {
            let w = spec(slide * 4, slide);
            // On a pane's first millisecond, or anywhere.
            let ts = if boundary { ts.div_euclid(slide).saturating_mul(slide) } else { ts };
            let near = (!none).then(|| ts.div_euclid(slide).wrapping_sub(offset));
            proptest::prop_assert_eq!(w.pane_of(ts, near), ts.div_euclid(slide));
        }

        /// Whatever the order of writes, the ring holds exactly the sums of the written panes it
        /// retains (the `n` newest indexes up to the newest written), in whole and in any part,
        /// never more than `n` panes, and no pane array until it has held two panes at once.
        #[test]
        fn ring_holds_what_a_map_of_retained_panes_holds(
            n in 1usize..70,
            writes in proptest::collection::vec((0i64..300, 1u64..5), 1..200),
            first in 0i64..300,
            span in 0i64..80,
        ) {
            let mut ring: PaneRing<u64> = PaneRing::default();
            let mut model = std::collections::BTreeMap::new();
            let mut head = i64::MIN;
            let mut held_two = false;
            for (idx, v) in writes {
                // A hint, which must not panic whatever the ring holds (an empty array, a jump).
                ring.prefetch_pane(idx);
                ring.prefetch_pane(idx - 1);
                let accepted = ring.pane_mut(idx, n).map(|p| *p += v).is_some();
                proptest::prop_assert_eq!(accepted, head == i64::MIN || idx > head - n as i64);
                if accepted {
                    head = head.max(idx);
                    *model.entry(idx).or_insert(0) += v;
                    model.retain(|&i, _| i > head - n as i64);
                }
                let held: std::collections::BTreeMap<i64, u64> = ring
                    .range(i64::MIN, i64::MAX)
                    .filter(|(_, v)| **v > 0)
                    .map(|(i, v)| (i, *v))
                    .collect();
                proptest::prop_assert_eq!(&held, &model);
                // A part of it reads the same part of the map, each held index once, in order.
                let part: Vec<(i64, u64)> =
                    ring.range(first, first + span).map(|(i, v)| (i, *v)).collect();
                proptest::prop_assert!(part.windows(2).all(|w| w[1].0 == w[0].0 + 1));
                let mut visited = Vec::new();
                ring.for_each_in(first, first + span, |i, v| visited.push((i, *v)));
                proptest::prop_assert_eq!(&visited, &part);
                let in_part: std::collections::BTreeMap<i64, u64> = model
                    .range(first..=first + span)
                    .map(|(i, v)| (*i, *v))
                    .collect();
                let written: std::collections::BTreeMap<i64, u64> =
                    part.into_iter().filter(|(_, v)| *v > 0).collect();
                proptest::prop_assert_eq!(written, in_part);
                proptest::prop_assert!(ring.capacity() <= n);
                // An array exactly once two panes have been held at the same time (it is kept).
                let oldest = model.keys().next().copied().unwrap_or(head);
                held_two |= oldest < head;
                proptest::prop_assert_eq!(ring.capacity() > 0, held_two);
            }
        }
    }

    proptest::proptest! {
        /// Whatever the order of samples (late ones included), every window ending after the
        /// newest sample reads the sum of the samples it covers, as if each sample had been added
        /// to every ring: the pending span changes where a sum is kept, not what is read. The
        /// slides (1, 3 and 5 minutes) make the pending span one minute, inside one pane of each.
        #[test]
        fn windows_read_the_sum_of_the_samples_they_cover_whatever_the_pending_span_holds(
            samples in proptest::collection::vec((0i64..90 * MIN, 1u64..1000), 1..120),
        ) {
            let specs = [spec(10 * MIN, MIN), spec(12 * MIN, 3 * MIN), spec(30 * MIN, 5 * MIN)];
            let mut w = Windows::default();
            let mut newest = i64::MIN;
            for (n, &(ts, acc_ms)) in samples.iter().enumerate() {
                w.add(&specs, ts, &usage(acc_ms));
                newest = newest.max(ts);
                for (i, s) in specs.iter().enumerate() {
                    let first_end = s.end_after(newest);
                    for end in (first_end..=first_end + s.width_ms).step_by(s.slide_ms as usize) {
                        let expected: u64 = samples[..=n]
                            .iter()
                            .filter(|(t, _)| end - s.width_ms <= *t && *t < end)
                            .map(|(_, a)| a)
                            .sum();
                        proptest::prop_assert_eq!(w.value(&specs, i, end).acc_ms, expected);
                    }
                }
            }
        }

        /// Windows credited with only what another key's windows moved into their rings, plus
        /// that key's pending sum, read what that key reads, for every window and end: an owner
        /// credited a span at a time by its keys holds exactly the sum of their samples. Flushes
        /// at random points (as evaluations settle keys) change nothing either.
        #[test]
        fn windows_credited_with_what_moved_read_as_the_windows_it_moved_from(
            samples in proptest::collection::vec((0i64..90 * MIN, 1u64..1000, proptest::bool::ANY), 1..120),
        ) {
            let specs = [spec(10 * MIN, MIN), spec(12 * MIN, 3 * MIN), spec(30 * MIN, 5 * MIN)];
            let (mut key, mut owner) = (Windows::default(), Windows::default());
            let mut newest = i64::MIN;
            for &(ts, acc_ms, flush) in &samples {
                let moved = match flush {
                    true => key.flush(&specs).into_iter().chain(key.add(&specs, ts, &usage(acc_ms))).collect(),
                    false => key.add(&specs, ts, &usage(acc_ms)).into_iter().collect::<Vec<_>>(),
                };
                for m in moved {
                    owner.add(&specs, m.ts_ms, &m.usage);
                }
                newest = newest.max(ts);
                let mut credited = owner.clone();
                if let Some(m) = key.pending() {
                    credited.add(&specs, m.ts_ms, &m.usage);
                }
                for (i, s) in specs.iter().enumerate() {
                    let first_end = s.end_after(newest);
                    for end in (first_end..=first_end + s.width_ms).step_by(s.slide_ms as usize) {
                        proptest::prop_assert_eq!(
                            credited.value(&specs, i, end).acc_ms,
                            key.value(&specs, i, end).acc_ms
                        );
                    }
                }
            }
        }
    }

    proptest::proptest! {
        /// Windows whose rings keep their older panes archived read, for every window and end
        /// (past ones included), bit for bit what one plain ring of all the panes per window
        /// reads when given the same moves: late samples into archived panes, jumps past a
        /// ring's width and idle stretches included. A checkpoint's round trip changes nothing,
        /// then or after, nor does a change of the panes kept live (as a new allowed lateness
        /// brings), which the test makes at every other round trip.
        #[test]
        fn archived_rings_read_bit_for_bit_as_plain_rings_of_every_pane(
            steps in proptest::collection::vec(
                (
                    proptest::prop_oneof![
                        8 => 0i64..2 * MIN,
                        2 => -40 * MIN..0,
                        1 => 0i64..300 * MIN,
                    ],
                    0u64..200_000,
                    proptest::prop_oneof![proptest::prelude::Just(0.0), 1e10f64..1e18],
                    proptest::prop_oneof![proptest::prelude::Just(0.0), 1e10f64..1e18],
                ),
                1..300,
            ),
        ) {
            let eight_live = [
                spec(10 * MIN, MIN),
                spec(40 * MIN, MIN),
                spec(60 * MIN, 3 * MIN),
                spec(120 * MIN, 5 * MIN),
                spec(6 * MIN, 3 * MIN),
            ];
            // The same windows with 1, 4, 2, 7 and 2 panes live.
            let lateness = [0, 3 * MIN, MIN, 30 * MIN, 3 * MIN];
            let fewer_live: Vec<WindowSpec> =
                eight_live.iter().cloned().zip(lateness).map(|(s, l)| s.with_lateness(l)).collect();
            let mut specs: &[WindowSpec] = &eight_live;
            let mut w = Windows::default();
            let mut plain: Vec<PaneRing<Usage>> = specs.iter().map(|_| PaneRing::default()).collect();
            proptest::prop_assert_eq!(
                fewer_live.iter().map(|s| s.live_panes()).collect::<Vec<_>>(),
                [1, 4, 2, 7, 2]
            );
            let (mut ts, mut newest) = (0i64, i64::MIN);
            let bits = |u: &Usage| (u.acc_ms, u.measured_flop.to_bits(), u.nominal_flop.to_bits());
            for (k, (step, acc_ms, measured_flop, nominal_flop)) in steps.into_iter().enumerate() {
                ts = (ts + step).max(0);
                newest = newest.max(ts);
                let u = Usage { acc_ms, measured_flop, nominal_flop };
                if let Some(m) = w.add(specs, ts, &u) {
                    for (ring, spec) in plain.iter_mut().zip(specs) {
                        if let Some(p) = ring.pane_mut(spec.pane_of(m.ts_ms, None), spec.panes()) {
                            p.add(&m.usage);
                        }
                    }
                }
                if k % 7 == 0 {
                    let bytes = bincode::serialize(&w).unwrap();
                    let back: Windows = bincode::deserialize(&bytes).unwrap();
                    proptest::prop_assert_eq!(bincode::serialize(&back).unwrap(), bytes);
                    // Each ring in the form of the formats before 10, read back, holds the same.
                    let _v9 = crate::checkpoint::Reading::version(9);
                    for r in back.rings.iter() {
                        let plain = bincode::serialize(&r.whole()).unwrap();
                        let split: UsageRing = bincode::deserialize(&plain).unwrap();
                        proptest::prop_assert_eq!(bincode::serialize(&split.whole()).unwrap(), plain);
                    }
                    w = back;
                    specs = if k % 14 == 0 { &fewer_live } else { &eight_live };
                }
                for (i, s) in specs.iter().enumerate() {
                    let now = s.end_after(newest);
                    for end in (now - 2 * s.width_ms()..=now + s.width_ms()).step_by(s.slide_ms() as usize) {
                        let last = end.div_euclid(s.slide_ms()) - 1;
                        let mut grouped = GroupedSum::default();
                        plain[i].for_each_in(last - s.panes() as i64 + 1, last, |i, p| grouped.pane(i, p));
                        let mut want = grouped.finish();
                        if let Some(m) = w.pending() {
                            if (last - s.panes() as i64 + 1..=last).contains(&m.ts_ms.div_euclid(s.slide_ms())) {
                                want.add(&m.usage);
                            }
                        }
                        proptest::prop_assert_eq!(bits(&w.value(specs, i, end)), bits(&want), "window {} end {}", i, end);
                    }
                }
            }
        }
    }

    #[test]
    fn a_ring_read_with_bookkeeping_its_storage_cannot_hold_is_refused() {
        let ring = |head: i64, start: i64, len: usize| PaneRing {
            head,
            start,
            current: usage(1),
            panes: vec![usage(2); len].into_boxed_slice(),
        };
        // The form of the formats before 10: every pane in the ring's array.
        let _v9 = crate::checkpoint::Reading::version(9);
        let read = |r: &PaneRing<Usage>| {
            bincode::deserialize::<UsageRing>(&bincode::serialize(r).unwrap())
                .map(|u| u.sum_in(i64::MIN, i64::MAX).acc_ms)
        };
        // Consistent: a single pane without an array, and 12 panes in 16 slots (split on reading).
        assert_eq!(read(&ring(100, 100, 0)).unwrap(), 1);
        assert_eq!(read(&ring(100, 89, 16)).unwrap(), 1 + 2 * 11);
        for (head, start, len) in [
            (100, 90, 4),                 // more panes than slots
            (100, 101, 16),               // starting after its head
            (i64::MAX, i64::MAX - 3, 16), // indexes no event time has
            (i64::MIN + 3, i64::MIN + 1, 16),
            (1 << 61, 0, 16),
        ] {
            assert!(
                read(&ring(head, start, len)).is_err(),
                "{head} {start} {len}"
            );
        }
    }

    /// Minute `m`'s sample of a steadily running key of 8 devices, its FLOP varying by up to 12%.
    fn minute(m: i64) -> Usage {
        Usage {
            acc_ms: 8 * 60_000,
            measured_flop: 4.0e17 * (1.0 + (m % 13) as f64 / 100.0),
            nominal_flop: 0.0,
        }
    }

    /// Two days of [`minute`]s: a day's ring is full.
    fn two_days(specs: &[WindowSpec]) -> Windows {
        let mut w = Windows::default();
        for m in 0..2 * 24 * 60 {
            w.add(specs, m * MIN, &minute(m));
        }
        w
    }

    #[test]
    fn a_long_ring_keeps_its_newest_panes_live_and_the_older_ones_archived() {
        let specs = [spec(24 * 60 * MIN, 5 * MIN)];
        let mut w = two_days(&specs);
        let ring = &w.rings[0];
        assert_eq!(ring.capacity(), LIVE_PANES);
        let archive = ring.archive.as_ref().unwrap();
        assert_eq!(archive.end() - archive.start(), 288 - LIVE_PANES as i64);
        let eight_live = w.heap_bytes();
        let plain_bytes = 288 * std::mem::size_of::<Usage>();
        // Five-minute FLOP sums that differ by up to 12% keep about seven bytes of each
        // difference: the ring is under 60% of a plain one.
        assert!(
            w.heap_bytes() * 5 < plain_bytes * 3,
            "{} heap bytes against {plain_bytes} for a plain ring",
            w.heap_bytes()
        );
        // The window ending now: every sample of the last day but the pending minute's, which
        // the read adds in.
        let now = specs[0].end_after(2 * 24 * 60 * MIN - 1);
        let want: u64 = (24 * 60..2 * 24 * 60).map(|m| minute(m).acc_ms).sum();
        assert_eq!(w.value(&specs, 0, now).acc_ms, want);
        // A sample a day late lands in the archive and counts.
        w.add(&specs, 24 * 60 * MIN + 30_000, &minute(0));
        assert_eq!(w.value(&specs, 0, now).acc_ms, want + minute(0).acc_ms);

        // With five minutes of allowed lateness the ring keeps two panes live (the newest and
        // the one before, which a sample five minutes late can reach), in fewer bytes.
        let late = [spec(24 * 60 * MIN, 5 * MIN).with_lateness(5 * MIN)];
        let l = two_days(&late);
        assert_eq!(l.rings[0].capacity(), 2);
        let archive = l.rings[0].archive.as_ref().unwrap();
        assert_eq!(archive.end() - archive.start(), 288 - 2);
        assert!(
            l.heap_bytes() < eight_live,
            "{} against {eight_live}",
            l.heap_bytes()
        );
        assert_eq!(l.value(&late, 0, now).acc_ms, want);
    }

    #[test]
    fn a_checkpoint_holds_a_long_ring_encoded_and_refuses_an_archive_that_overlaps_its_live_panes()
    {
        let w = two_days(&[spec(24 * 60 * MIN, 5 * MIN)]);
        let ring = &w.rings[0];
        let bytes = bincode::serialize(ring).unwrap();
        let plain = bincode::serialize(&ring.whole()).unwrap();
        // The archived panes as they are held: under half the bytes of every pane in an array.
        assert!(
            bytes.len() * 2 < plain.len(),
            "{} against {}",
            bytes.len(),
            plain.len()
        );
        let back: UsageRing = bincode::deserialize(&bytes).unwrap();
        assert_eq!(bincode::serialize(&back.whole()).unwrap(), plain);
        assert_eq!(back.capacity(), LIVE_PANES);

        let archive = ring.archive.as_deref().unwrap();
        let read = |live: &PaneRing<Usage>| {
            bincode::deserialize::<UsageRing>(&bincode::serialize(&(live, Some(archive))).unwrap())
        };
        let head = archive.end() + 2;
        let live = |start: i64| PaneRing {
            head,
            start,
            current: usage(1),
            panes: vec![usage(1); 4].into_boxed_slice(),
        };
        assert!(
            read(&live(archive.end())).is_ok(),
            "the live panes start where the archive ends"
        );
        assert!(
            read(&live(archive.end() - 1)).is_err(),
            "a pane both live and archived"
        );
        assert!(
            read(&PaneRing::default()).is_err(),
            "an archive without live panes"
        );
    }

    #[test]
    fn samples_within_the_pending_span_touch_no_ring_until_one_falls_past_it() {
        let specs = [spec(60 * MIN, MIN), spec(24 * 60 * MIN, 5 * MIN)];
        let mut w = Windows::default();
        assert!(
            !w.touches_rings(10 * MIN),
            "the first sample starts the span"
        );
        for s in 0..6 {
            w.add(&specs, 10 * MIN + s * 10_000, &usage(1));
        }
        assert!(!w.touches_rings(10 * MIN + 59_999));
        assert_eq!(
            w.heap_bytes(),
            0,
            "six samples of one minute allocated no ring"
        );
        assert_eq!(w.value(&specs, 0, 11 * MIN).acc_ms, 6);
        assert!(w.touches_rings(11 * MIN));
        w.add(&specs, 11 * MIN, &usage(1));
        let heads: Vec<Option<i64>> = w.rings.iter().map(UsageRing::head).collect();
        assert_eq!(
            heads,
            [Some(10), Some(2)],
            "the first minute's sum went to both rings"
        );
        let panes: Vec<usize> = w.rings.iter().map(UsageRing::capacity).collect();
        assert_eq!(panes, [0, 0], "each ring holds that one pane inline");
        assert_eq!(w.value(&specs, 0, 12 * MIN).acc_ms, 7);
        assert_eq!(w.value(&specs, 1, 15 * MIN).acc_ms, 7);
        // A late sample goes straight to the rings and leaves the pending span where it is.
        w.add(&specs, 10 * MIN + 30_000, &usage(100));
        assert!(!w.touches_rings(11 * MIN + 1));
        assert_eq!(w.value(&specs, 0, 12 * MIN).acc_ms, 107);
        // Once flushed (reading the same), the next sample starts a span again, whatever its time.
        assert!(w.flush(&specs).is_some());
        assert_eq!(w.value(&specs, 0, 12 * MIN).acc_ms, 107);
        assert!(!w.touches_rings(13 * MIN));
    }

    #[test]
    fn storage_grows_with_the_span_written() {
        let mut r: PaneRing<u64> = PaneRing::default();
        *r.pane_mut(100, 288).unwrap() += 1;
        *r.pane_mut(100, 288).unwrap() += 1;
        assert_eq!(
            r.capacity(),
            0,
            "a ring that held one pane only keeps it inline"
        );
        assert_eq!(r.range(0, 2000).collect::<Vec<_>>(), [(100, &2)]);
        *r.pane_mut(101, 288).unwrap() += 1;
        assert_eq!(r.capacity(), 2, "the array comes with the second pane");
        for i in 102..=112 {
            *r.pane_mut(i, 288).unwrap() += 1;
        }
        assert_eq!(r.capacity(), 16, "13 panes written are held in 16");
        for i in 113..=1000 {
            *r.pane_mut(i, 288).unwrap() += 1;
        }
        assert_eq!(r.capacity(), 288, "never more than the window's panes");
        assert_eq!(r.range(0, 2000).count(), 288);
    }

    #[test]
    fn stale_rings_are_freed_without_changing_any_value_from_the_watermark_on() {
        let specs = [spec(10 * MIN, MIN), spec(60 * MIN, 10 * MIN)];
        let mut w = Windows::default();
        for m in 0..5 {
            w.add(&specs, m * MIN, &usage(1000));
        }
        let values = |w: &Windows, at: i64| -> Vec<u64> {
            (0..2)
                .map(|i| w.value(&specs, i, specs[i].end_after(at)).acc_ms)
                .collect()
        };
        for watermark in [
            5 * MIN,
            13 * MIN,
            14 * MIN,
            15 * MIN,
            59 * MIN,
            60 * MIN,
            61 * MIN,
        ] {
            let mut released = w.clone();
            released.release_stale(&specs, watermark);
            for at in [
                watermark,
                watermark + MIN,
                watermark + 30 * MIN,
                watermark + 90 * MIN,
            ] {
                assert_eq!(
                    values(&released, at),
                    values(&w, at),
                    "watermark {watermark}, at {at}"
                );
            }
            // Minutes 0-3 are in the rings, minute 4 pending (read by the hour's window until
            // the 60th minute, by the 10-minute one until the 14th).
            let kept: Vec<(usize, bool)> = released
                .rings
                .iter()
                .map(|r| (r.capacity(), r.head().is_some()))
                .collect();
            let expected = match watermark < 60 * MIN {
                true => vec![
                    match watermark < 13 * MIN {
                        true => (4, true),
                        false => (0, false),
                    },
                    // One pane, inline.
                    (0, true),
                ],
                // Every ring freed, and the rings themselves with them.
                false => vec![],
            };
            assert_eq!(kept, expected, "watermark {watermark}");
            assert_eq!(released.heap_bytes() == 0, watermark >= 60 * MIN);
            assert_eq!(
                released.pending.is_empty(),
                watermark >= 60 * MIN,
                "watermark {watermark}"
            );
        }
    }

    #[test]
    fn negative_times_are_aligned_to_the_epoch() {
        let specs = [spec(2 * MIN, MIN)];
        let mut w = Windows::default();
        w.add(&specs, -1, &usage(3));
        assert_eq!(w.value(&specs, 0, 0).acc_ms, 3);
        assert_eq!(w.value(&specs, 0, MIN).acc_ms, 3);
        assert_eq!(w.value(&specs, 0, 2 * MIN).acc_ms, 0);
    }
}
