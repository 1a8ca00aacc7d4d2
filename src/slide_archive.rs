//! The older slides of a job's detection ring, held compactly and exactly.
//!
//! A job's detection ring holds one slide a minute over the detection window (60 with the
//! defaults). Nearly every sample writes the newest slide; the older ones are written again only
//! by a sample later than the allowed lateness reaches, and are read at evaluations, every one of
//! them. A [`SlideArchive`] holds such a run of consecutive slides as bytes, each slide encoded
//! against the newest nonempty slide of its kind before it (nothing, before the first):
//!
//! - a tag byte: `0xFF` for a slide that holds nothing; otherwise the byte counts of the two sums'
//!   differences, the activity's in bits 0-2 and memory's in bits 3-5 (0 to 4 each), in bit 6
//!   whether a second tag byte follows, and in bit 7 which slide it is encoded against: the
//!   newest nonempty one before it that received an activity signal (0) or that received none
//!   (1), whichever is of its own kind;
//! - the second tag byte, for a slide whose accelerators, weights or signals differ from those of
//!   the slide it is encoded against: two bits for each of the accelerators', the activity
//!   weight's and the memory weight's differences (0, 1, 2 or 4 bytes), and in bit 6 whether a
//!   signals byte follows;
//! - each difference present: the difference of the `f32` bit patterns, zigzag, in as many
//!   little-endian bytes as its count says; then the signals byte.
//!
//! Every field is recovered bit for bit. A steadily running job repeats its accelerators, its
//! weights and its signals from slide to slide, and its activity and memory sums move by a few
//! percent: three bytes each. That is 7 bytes a slide against the 24 of a slide in an array. A
//! job sampled every five minutes has one slide with its readings and four that only count its
//! devices, each of those one byte.

use crate::detect::DetectPane;
use crate::window::{Archive, ArchivedRing, INDEX_BOUND};

/// A job's detection ring: its newest slides in an array, the older ones in a [`SlideArchive`].
pub type DetectRing = ArchivedRing<DetectPane, SlideArchive>;

/// The tag of a slide that holds nothing (no bit set in any field).
const EMPTY: u8 = 0xFF;
/// Bit 6 of the first tag: a second tag byte follows. Bit 6 of the second: a signals byte.
const MORE: u8 = 0x40;
/// The most bytes one slide encodes to: two tags, five 4-byte differences and the signals.
const MAX_SLIDE: usize = 2 + 5 * 4 + 1;
/// Which of the five words (in [`DetectPane::to_parts`]' order) each tag's counts are for: the
/// sums in the first tag, three bits each; the accelerators and the weights in the second, two.
const SUMS: [usize; 2] = [2, 4];
const STEADY: [usize; 3] = [0, 1, 3];
/// Byte counts a two-bit code stands for (a difference of three bytes is written in four).
const CODE_BYTES: [usize; 4] = [0, 1, 2, 4];
/// Slides dropped before an archive decodes them ([`Archive::drop_before`]): about a cache
/// line of a steady job's encoding.
const SETTLE: i64 = 8;

/// Slides `start .. end` of one detection ring (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlideArchive {
    start: i64,
    end: i64,
    /// The slide encoded at `at`, against `base`: `start`, or a slide dropped before it whose
    /// decoding waits ([`Archive::drop_before`]).
    phys: i64,
    /// Where slide `phys` is encoded in `bytes`: the slides dropped before it leave their bytes
    /// until they are a quarter of the encoding ([`SlideArchive::settle`]).
    at: u32,
    /// What slide `phys` may be encoded against: the newest nonempty slides before it of each
    /// kind ([`kind`]; nothing, in an archive that never held one).
    base: Bases,
    /// The newest nonempty slides held of each kind, which the next slide pushed of that kind is
    /// encoded against.
    last: Bases,
    bytes: Vec<u8>,
}

impl Archive<DetectPane> for SlideArchive {
    const SINCE_FORMAT: u32 = crate::checkpoint::ENCODED_SLIDES;

    fn starting_at(start: i64) -> SlideArchive {
        SlideArchive {
            start,
            end: start,
            phys: start,
            ..SlideArchive::default()
        }
    }

    fn start(&self) -> i64 {
        self.start
    }

    fn end(&self) -> i64 {
        self.end
    }

    fn heap_bytes(&self) -> usize {
        self.bytes.capacity()
    }

    fn push(&mut self, slide: &DetectPane) {
        if self.bytes.capacity() - self.bytes.len() < MAX_SLIDE {
            // An eighth of slack (two slides' worth at least), not the doubling of `Vec`.
            self.bytes
                .reserve_exact((2 * MAX_SLIDE).max(self.bytes.len() / 8));
        }
        encode(&mut self.bytes, &mut self.last, slide.to_parts());
        self.end += 1;
    }

    /// Drops the slides before `idx`. A ring drops a slide each time it moves on; the slides
    /// dropped are decoded (to find where `idx` starts and what it is encoded against) once
    /// there are eight of them (`SETTLE`), so that most drops touch only this bookkeeping,
    /// which the ring's warm loads ahead, and not the encoding.
    fn drop_before(&mut self, idx: i64) {
        if idx <= self.start {
            return;
        }
        if idx >= self.end {
            *self = SlideArchive::starting_at(idx);
            return;
        }
        self.start = idx;
        if self.start - self.phys >= SETTLE {
            self.settle();
        }
    }

    /// Writes slide `idx`, which may lie before or after the slides held: the archive grows to
    /// it, the slides between holding nothing. A held slide is rare to write (a sample later
    /// than a ring's live slides reach) and encodes the archive again.
    fn write(&mut self, idx: i64, f: impl FnOnce(&mut DetectPane)) {
        if idx == self.end && !self.is_empty() {
            let mut s = DetectPane::default();
            f(&mut s);
            self.push(&s);
            return;
        }
        let (start, mut slides) = if self.is_empty() {
            (idx, Vec::new())
        } else {
            (self.start.min(idx), self.slides())
        };
        let before = if self.is_empty() {
            0
        } else {
            (self.start - start) as usize
        };
        slides.splice(0..0, std::iter::repeat_n(DetectPane::default(), before));
        let end = (start + slides.len() as i64).max(idx + 1);
        slides.resize((end - start) as usize, DetectPane::default());
        f(&mut slides[(idx - start) as usize]);
        *self = SlideArchive::starting_at(start);
        for s in &slides {
            self.push(s);
        }
        self.bytes
            .shrink_to(self.bytes.len() + self.bytes.len() / 8);
    }

    fn for_each_in(&self, first: i64, last: i64, mut f: impl FnMut(i64, &DetectPane)) {
        if first >= self.end || last < self.start {
            return;
        }
        let first = first.max(self.start);
        let (mut at, mut base) = (self.at as usize, self.base);
        for i in self.phys..self.end.min(last.saturating_add(1)) {
            let s = decode(&self.bytes, &mut at, &mut base);
            if i >= first {
                f(i, &to_slide(s));
            }
        }
    }

    /// The encoding from the first slide held on, which a read decodes.
    fn prefetch_contents(&self) {
        crate::prefetch::slice(&self.bytes[self.at as usize..]);
    }
}

impl SlideArchive {
    /// Where slide `start` is encoded and what it is encoded against: the slides dropped before
    /// it decoded.
    fn located(&self) -> (usize, Bases) {
        let (mut at, mut base) = (self.at as usize, self.base);
        for _ in self.phys..self.start {
            decode(&self.bytes, &mut at, &mut base);
        }
        (at, base)
    }

    /// Decodes the slides dropped, making `start` the slide encoded at `at`. Their bytes go once
    /// they are a quarter of the encoding (and a cache line), and the spare capacity once it
    /// exceeds a quarter of the length (and a slide), down to an eighth.
    fn settle(&mut self) {
        let (at, base) = self.located();
        (self.at, self.base, self.phys) = (at as u32, base, self.start);
        let dead = self.at as usize;
        if dead >= 64 && dead * 4 >= self.bytes.len() {
            self.bytes.drain(..dead);
            self.at = 0;
            if self.bytes.capacity() > self.bytes.len() + self.bytes.len() / 4 + MAX_SLIDE {
                self.bytes
                    .shrink_to(self.bytes.len() + self.bytes.len() / 8);
            }
        }
    }

    /// Every slide held, decoded.
    fn slides(&self) -> Vec<DetectPane> {
        let mut out = Vec::with_capacity((self.end - self.start) as usize);
        self.for_each_in(self.start, self.end, |_, s| out.push(*s));
        out
    }

    /// The archive of slides `start .. end` whose encoding is `bytes`, `base` being what slide
    /// `start` is encoded against (a checkpoint's form of it). Every slide is checked as it is
    /// read; `Err` says what is wrong.
    pub fn from_encoded(
        start: i64,
        end: i64,
        base: [DetectPane; 2],
        bytes: Vec<u8>,
    ) -> Result<SlideArchive, &'static str> {
        if !(-INDEX_BOUND < start && start < end && end < INDEX_BOUND) {
            return Err("a slide archive's slides are out of order or out of range");
        }
        if (end - start) as u64 > bytes.len() as u64 || bytes.len() > u32::MAX as usize {
            return Err("a slide archive holds more slides than bytes, or more than 4 GiB");
        }
        let base = base.map(DetectPane::to_parts);
        let (mut at, mut last) = (0, base);
        for _ in start..end {
            let len = slide_len(&bytes, at).ok_or(
                "a slide archive's slide is cut short, mistagged or names a signal that does not exist",
            )?;
            let from = at;
            decode(&bytes, &mut at, &mut last);
            debug_assert_eq!(at, from + len, "decode reads the bytes slide_len checked");
        }
        if at != bytes.len() {
            return Err("a slide archive's encoding goes on past its last slide");
        }
        Ok(SlideArchive {
            start,
            end,
            phys: start,
            at: 0,
            base,
            last,
            bytes,
        })
    }
}

/// A checkpoint holds an archive as its slides' indexes, what the first is encoded against and
/// the encoding from the first slide on (the bytes of slides dropped before it are not written);
/// reading it checks every slide ([`SlideArchive::from_encoded`]).
impl serde::Serialize for SlideArchive {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (at, base) = self.located();
        let bytes = serde_bytes::Bytes::new(&self.bytes[at..]);
        (self.start, self.end, base.map(to_slide), bytes).serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for SlideArchive {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (start, end, base, bytes): (i64, i64, [DetectPane; 2], serde_bytes::ByteBuf) =
            serde::Deserialize::deserialize(d)?;
        SlideArchive::from_encoded(start, end, base, bytes.into_vec())
            .map_err(serde::de::Error::custom)
    }
}

/// A slide as the encoding sees it ([`DetectPane::to_parts`]).
type Parts = ([u32; 5], u8);

/// The parts of a slide that holds nothing.
const NOTHING: Parts = ([0; 5], 0);

fn zigzag(d: u32) -> u32 {
    let d = d as i32;
    ((d << 1) ^ (d >> 31)) as u32
}

fn unzigzag(z: u32) -> u32 {
    (z >> 1) ^ (z & 1).wrapping_neg()
}

/// Bytes needed for `x` in little-endian order (0 for 0).
fn byte_len(x: u32) -> usize {
    (32 - x.leading_zeros() as usize).div_ceil(8)
}

/// The two-bit code of the fewest bytes of [`CODE_BYTES`] that hold `x`.
fn code_of(x: u32) -> usize {
    byte_len(x).min(3)
}

/// The newest slides of each kind ([`kind`]) before a point in the archive.
type Bases = [Parts; 2];

/// Which of the two bases a slide is encoded against: 0 for a slide that received an activity
/// signal, 1 for one that received none (a slide that only counts the devices of a sample
/// covering it, as every slide but the last of a sample covering several does). A job sampled
/// less often than once a slide alternates the two, and each repeats the one before of its kind.
fn kind(s: &Parts) -> usize {
    usize::from(s.1 == 0)
}

/// Appends `s` encoded against the newest slide of its kind in `last`, and makes it that if it
/// holds anything.
fn encode(out: &mut Vec<u8>, last: &mut Bases, s: Parts) {
    if s == NOTHING {
        out.push(EMPTY);
        return;
    }
    let k = kind(&s);
    let ((words, signals), (base, base_signals)) = (s, last[k]);
    let diff: [u32; 5] = std::array::from_fn(|k| zigzag(words[k].wrapping_sub(base[k])));
    let sums = SUMS.map(|k| byte_len(diff[k]));
    let codes = STEADY.map(|k| code_of(diff[k]));
    let new_signals = signals != base_signals;
    let second = codes
        .iter()
        .enumerate()
        .fold(0, |t, (j, c)| t | c << (2 * j))
        | usize::from(new_signals) << 6;
    let more = if second != 0 { MORE } else { 0 };
    out.push((sums[0] | sums[1] << 3) as u8 | more | (k as u8) << 7);
    // Whole words written and cut back: a fixed-size copy, not a call for a variable one.
    let mut put = |d: u32, len: usize| {
        out.extend_from_slice(&d.to_le_bytes());
        out.truncate(out.len() - 4 + len);
    };
    if second != 0 {
        put(second as u32, 1);
    }
    put(diff[SUMS[0]], sums[0]);
    put(diff[SUMS[1]], sums[1]);
    if second != 0 {
        for (k, c) in STEADY.into_iter().zip(codes) {
            put(diff[k], CODE_BYTES[c]);
        }
        if new_signals {
            put(u32::from(signals), 1);
        }
    }
    last[k] = s;
}

/// The length of the slide encoded at `at`, if `bytes` hold all of it, its tags are well formed
/// and its signals byte names signals that exist: what [`decode`] may then read without going
/// past the end, and decodes as written.
fn slide_len(bytes: &[u8], at: usize) -> Option<usize> {
    let tag = *bytes.get(at)?;
    if tag == EMPTY {
        return Some(1);
    }
    let (activity, memory) = (usize::from(tag & 7), usize::from(tag >> 3 & 7));
    if activity > 4 || memory > 4 {
        return None;
    }
    let mut len = 1 + activity + memory;
    if tag & MORE != 0 {
        let second = *bytes.get(at + 1)?;
        if second & 0x80 != 0 {
            return None;
        }
        len += 1
            + (0..3)
                .map(|j| CODE_BYTES[usize::from(second >> (2 * j) & 3)])
                .sum::<usize>();
        if second & MORE != 0 {
            len += 1;
            let signals = *bytes.get(at + len - 1)?;
            DetectPane::from_parts([0; 5], signals)?;
        }
    }
    (at + len <= bytes.len()).then_some(len)
}

/// Reads the slide at `*at` (encoded against the base its tag names in `last`), moving `at` past
/// it and the newest of its kind in `last` on to it if it holds anything. The bytes are the
/// archive's own encoding, or were checked by [`slide_len`].
#[inline(always)]
fn decode(bytes: &[u8], at: &mut usize, last: &mut Bases) -> Parts {
    let tag = bytes[*at];
    *at += 1;
    if tag == EMPTY {
        return NOTHING;
    }
    let mut s = last[usize::from(tag >> 7)];
    if tag & MORE == 0 {
        // A steady slide: only the sums moved.
        s.0[2] = s.0[2].wrapping_add(read_diff(bytes, at, usize::from(tag & 7)));
        s.0[4] = s.0[4].wrapping_add(read_diff(bytes, at, usize::from(tag >> 3 & 7)));
    } else {
        let second = bytes[*at];
        *at += 1;
        s.0[2] = s.0[2].wrapping_add(read_diff(bytes, at, usize::from(tag & 7)));
        s.0[4] = s.0[4].wrapping_add(read_diff(bytes, at, usize::from(tag >> 3 & 7)));
        for (j, k) in STEADY.into_iter().enumerate() {
            let len = CODE_BYTES[usize::from(second >> (2 * j) & 3)];
            s.0[k] = s.0[k].wrapping_add(read_diff(bytes, at, len));
        }
        if second & MORE != 0 {
            s.1 = bytes[*at];
            *at += 1;
        }
    }
    if s != NOTHING {
        // By the slide's own kind: the same as its tag's in the archive's own encoding.
        last[kind(&s)] = s;
    }
    s
}

/// The bits of the first 0 to 4 bytes of a little-endian word.
const MASKS: [u32; 5] = [0, 0xFF, 0xFFFF, 0xFF_FFFF, u32::MAX];

/// The `len` little-endian bytes at `*at` (at most 4), unzigzagged; moves `at` past them.
#[inline(always)]
fn read_diff(bytes: &[u8], at: &mut usize, len: usize) -> u32 {
    let word = match bytes.get(*at..*at + 4) {
        // A whole word loaded and masked to its `len` bytes (all but the archive's last bytes).
        Some(w) => u32::from_le_bytes(w.try_into().expect("four bytes")) & MASKS[len],
        None => bytes[*at..*at + len]
            .iter()
            .rev()
            .fold(0, |w, b| w << 8 | u32::from(*b)),
    };
    *at += len;
    unzigzag(word)
}

/// The slide of parts the archive holds (their signals were checked where they came in).
#[inline(always)]
fn to_slide(parts: Parts) -> DetectPane {
    DetectPane::from_parts(parts.0, parts.1).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Signal;
    use crate::window::PaneRing;
    use proptest::prelude::*;

    type Bits = ([u32; 5], u8);
    /// A read of a ring's slides, given what to call with each.
    type Read<'a> = dyn Fn(&mut dyn FnMut(i64, &DetectPane)) + 'a;

    fn held(a: &SlideArchive) -> Vec<(i64, Bits)> {
        let mut v = Vec::new();
        a.for_each_in(i64::MIN, i64::MAX, |i, s| v.push((i, s.to_parts())));
        v
    }

    /// A slide built as the engine builds one: readings of a signal, device memory and devices.
    fn slide(readings: &[(u8, f32, f32)], memory: Option<(f32, f32)>, devices: f32) -> DetectPane {
        let mut s = DetectPane::default();
        for &(signal, value, weight) in readings {
            s.add_activity(Signal::ALL[usize::from(signal % 3)], value, weight);
        }
        if let Some((gib, weight)) = memory {
            s.memory.add(gib, weight);
        }
        s.accelerators += devices;
        s
    }

    fn any_slide() -> impl Strategy<Value = DetectPane> {
        let steady = (0.9f32..1.1, 0.9f32..1.1)
            .prop_map(|(x, y)| slide(&[(0, 0.4 * x, 480.0)], Some((60.0 * y, 480.0)), 8.0));
        let any_bits = (any::<[u32; 5]>(), 0u8..8)
            .prop_map(|(w, s)| DetectPane::from_parts(w, s).expect("signals that exist"));
        let built = (
            prop::collection::vec(
                (0u8..3, -1f32..2.0, prop_oneof![Just(0.0f32), 0f32..600.0]),
                0..4,
            ),
            prop::option::of((0f32..80.0, 0f32..600.0)),
            prop_oneof![Just(0.0f32), 0f32..16.0],
        )
            .prop_map(|(r, m, d)| slide(&r, m, d));
        prop_oneof![Just(DetectPane::default()), steady, any_bits, built]
    }

    /// What a write does to a slide: the writes the engine makes (a reading, memory, a device
    /// counted), or none.
    #[derive(Debug, Clone)]
    enum Write {
        Reading(u8, f32, f32),
        Memory(f32, f32),
        Device(f32),
    }

    fn any_write() -> impl Strategy<Value = Write> {
        prop_oneof![
            (0u8..3, -1f32..2.0, prop_oneof![Just(0.0f32), 0f32..600.0])
                .prop_map(|(s, v, w)| Write::Reading(s, v, w)),
            (0f32..80.0, 0f32..600.0).prop_map(|(g, w)| Write::Memory(g, w)),
            (0f32..16.0).prop_map(Write::Device),
        ]
    }

    impl Write {
        fn apply(&self, s: &mut DetectPane) {
            match *self {
                Write::Reading(signal, v, w) => {
                    s.add_activity(Signal::ALL[usize::from(signal)], v, w)
                }
                Write::Memory(g, w) => s.memory.add(g, w),
                Write::Device(d) => s.accelerators += d,
            }
        }
    }

    proptest! {
        /// Whatever the slides (any bit patterns, NaNs and infinities included) and the order of
        /// pushes, writes before, into and after the slides held and drops, the archive reads
        /// back exactly the slides of a plain map of them, bit for bit, and a checkpoint's round
        /// trip gives back the same archive.
        #[test]
        fn archive_reads_back_bit_for_bit_what_a_map_of_slides_holds(
            ops in prop::collection::vec((0u8..4, -5i64..40, any_slide(), any_write()), 1..80),
            first in -5i64..45,
            span in 0i64..50,
        ) {
            let mut a = SlideArchive::starting_at(0);
            let mut model: std::collections::BTreeMap<i64, DetectPane> = Default::default();
            for (op, idx, s, w) in ops {
                match op {
                    0 => {
                        let at = a.end();
                        a.push(&s);
                        model.insert(at, s);
                    }
                    1 | 2 => {
                        a.write(idx, |p| w.apply(p));
                        w.apply(model.entry(idx).or_default());
                    }
                    _ => {
                        a.drop_before(idx);
                        model.retain(|&i, _| i >= idx);
                    }
                }
                let expected: Vec<(i64, Bits)> = (a.start()..a.end())
                    .map(|i| (i, model.get(&i).copied().unwrap_or_default().to_parts()))
                    .collect();
                prop_assert_eq!(held(&a), expected.clone());
                prop_assert!(model.keys().all(|i| (a.start()..a.end()).contains(i)));
                let mut part = Vec::new();
                a.for_each_in(first, first + span, |i, s| part.push((i, s.to_parts())));
                let want: Vec<_> =
                    expected.iter().filter(|(i, _)| (first..=first + span).contains(i)).cloned().collect();
                prop_assert_eq!(part, want);
                prop_assert!(a.bytes.len() - a.at as usize <= (a.end() - a.phys) as usize * MAX_SLIDE);
                prop_assert!(a.start() - a.phys < SETTLE && a.at as usize <= 64.max(a.bytes.len() / 4));
                if !a.is_empty() {
                    let bytes = bincode::serialize(&a).unwrap();
                    let back: SlideArchive = bincode::deserialize(&bytes)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(held(&back), held(&a));
                    prop_assert_eq!(back.last, a.last);
                    prop_assert_eq!(bincode::serialize(&back).unwrap(), bytes);
                }
            }
        }

        /// Any bytes read as an archive are refused or give an archive whose every operation
        /// works: `from_encoded` checks each slide before it is decoded.
        #[test]
        fn an_archive_read_from_any_bytes_is_refused_or_usable(
            start in -40i64..40,
            slides in 1i64..40,
            bytes in prop::collection::vec(
                prop_oneof![4 => any::<u8>(), 1 => Just(EMPTY), 1 => Just(MORE), 1 => Just(0x7F), 1 => Just(0x24)],
                0..200,
            ),
            s in any_slide(),
            base in [any_slide(), any_slide()],
        ) {
            if let Ok(mut a) = SlideArchive::from_encoded(start, start + slides, base, bytes) {
                prop_assert_eq!(held(&a).len() as i64, slides);
                a.write(start + slides / 2, |p| p.accelerators += 1.0);
                a.push(&s);
                a.drop_before(start + slides / 3);
                prop_assert_eq!(held(&a).len() as i64, a.end() - a.start());
            }
        }

        /// A detection ring whose older slides are archived reads, over any span, bit for bit
        /// what one plain ring of all the slides reads when given the same writes: the newest
        /// slide's, late ones into archived slides, jumps past the ring's width and idle
        /// stretches. A checkpoint's round trip changes nothing, then or after, nor does reading
        /// the ring in the form of the formats before 12 (every slide in its array), nor a
        /// change of the slides kept live (as a new allowed lateness brings).
        #[test]
        fn archived_detection_rings_read_bit_for_bit_as_plain_rings_of_every_slide(
            steps in prop::collection::vec(
                (
                    prop_oneof![8 => 0i64..2, 2 => -30i64..0, 1 => 0i64..150],
                    prop::collection::vec(any_write(), 1..3),
                ),
                1..300,
            ),
            n in prop_oneof![Just(60usize), 1usize..70],
            live in 1usize..10,
        ) {
            let mut ring = DetectRing::default();
            let mut plain: PaneRing<DetectPane> = PaneRing::default();
            let mut newest = 1000i64;
            // A plain ring holds the slides between those written as empty ones from its oldest
            // on; the archived ring may hold fewer of them: the slides holding something compare.
            let nonempty = |read: &Read| {
                let mut v = Vec::new();
                read(&mut |i, p| {
                    if p.to_parts() != NOTHING {
                        v.push((i, p.to_parts()));
                    }
                });
                v
            };
            for (k, (step, writes)) in steps.into_iter().enumerate() {
                let idx = newest + step;
                newest = newest.max(idx);
                let live = if k % 14 < 7 { live } else { live + 3 };
                let wrote = ring.write(idx, n, live, |p| writes.iter().for_each(|w| w.apply(p)));
                let plain_wrote = match plain.pane_mut(idx, n) {
                    Some(p) => {
                        writes.iter().for_each(|w| w.apply(p));
                        true
                    }
                    None => false,
                };
                prop_assert_eq!(wrote, plain_wrote);
                if k % 7 == 0 {
                    let bytes = bincode::serialize(&ring).unwrap();
                    let back: DetectRing = bincode::deserialize(&bytes).unwrap();
                    prop_assert_eq!(bincode::serialize(&back).unwrap(), bytes);
                    let _v11 = crate::checkpoint::Reading::version(11);
                    let whole = bincode::serialize(&back.whole()).unwrap();
                    let split: DetectRing = bincode::deserialize(&whole).unwrap();
                    prop_assert_eq!(split.head(), back.head());
                    prop_assert_eq!(
                        nonempty(&|f| split.for_each_in(i64::MIN, i64::MAX, f)),
                        nonempty(&|f| back.for_each_in(i64::MIN, i64::MAX, f))
                    );
                    ring = if k % 14 == 0 { split } else { back };
                }
                prop_assert_eq!(ring.head(), plain.head());
                let from = newest - n as i64 + 1;
                let spans = [(i64::MIN, i64::MAX), (from, newest - 1), (idx - 3, idx + 2)];
                for (first, last) in spans {
                    prop_assert_eq!(
                        nonempty(&|f| ring.for_each_in(first, last, f)),
                        nonempty(&|f| plain.for_each_in(first, last, f)),
                        "slides {}..={}", first, last
                    );
                }
            }
        }
    }

    #[test]
    fn a_steady_job_costs_seven_bytes_a_slide_and_an_idle_one_a_byte() {
        let mut a = SlideArchive::starting_at(0);
        let mut x = 0.41f32;
        for _ in 0..60 {
            // Tensor activity wandering between 0.3 and 0.5, memory in use with it.
            x = 0.3 + (x * 7.31).fract() * 0.2;
            a.push(&slide(
                &[(0, x, 480.0)],
                Some((40.0 + 50.0 * x, 480.0)),
                8.0,
            ));
        }
        // The first slide stands alone: two tags, three numbers and the signals.
        let steady = (a.bytes.len() - 2 - 3 * 4 - 2 * 4 - 1) as f64 / 59.0;
        assert!(
            (5.0..=7.0).contains(&steady),
            "{steady} bytes a slide for a steady job"
        );
        let before = a.bytes.len();
        for _ in 0..10 {
            a.push(&DetectPane::default());
        }
        assert_eq!(a.bytes.len() - before, 10, "an idle slide is one byte");
        assert!(a.bytes.capacity() <= a.bytes.len() + a.bytes.len() / 8 + 2 * MAX_SLIDE);
    }

    #[test]
    fn a_job_sampled_every_five_minutes_costs_a_byte_for_each_slide_that_only_counts_devices() {
        let mut a = SlideArchive::starting_at(0);
        let mut x = 0.41f32;
        for k in 0..60 {
            // The last slide a sample covers holds its readings; the four before it, the devices.
            let s = if k % 5 == 4 {
                x = 0.3 + (x * 7.31).fract() * 0.2;
                slide(&[(0, x, 2400.0)], Some((40.0 + 50.0 * x, 2400.0)), 8.0)
            } else {
                slide(&[], None, 8.0)
            };
            let before = a.bytes.len();
            a.push(&s);
            if k >= 10 && k % 5 != 4 {
                assert_eq!(a.bytes.len() - before, 1, "slide {k}");
            }
        }
        assert!(
            a.bytes.len() <= 2 * 22 + 10 * 7 + 48,
            "{} bytes",
            a.bytes.len()
        );
    }

    #[test]
    fn a_drop_keeps_what_the_first_slide_left_is_encoded_against_and_lets_go_of_bytes_later() {
        let mut a = SlideArchive::starting_at(10);
        let s = slide(&[(1, 0.5, 60.0)], None, 4.0);
        let t = slide(&[(1, 0.6, 60.0)], None, 4.0);
        for p in [s, DetectPane::default(), DetectPane::default(), t, s] {
            a.push(&p);
        }
        // Slide 13 is encoded against slide 10, which is dropped: it becomes the base once the
        // drop is settled, and the encoding stays as it is.
        let len = a.bytes.len();
        a.drop_before(11);
        assert_eq!((a.phys, a.base), (10, [NOTHING; 2]), "the drop waits");
        let unsettled = held(&a);
        a.settle();
        assert_eq!(
            (a.bytes.len(), a.phys, a.base),
            (len, 11, [s.to_parts(), NOTHING])
        );
        assert_eq!(held(&a), unsettled);
        let want = [
            (11, DetectPane::default().to_parts()),
            (12, DetectPane::default().to_parts()),
            (13, t.to_parts()),
            (14, s.to_parts()),
        ];
        assert_eq!(held(&a), want);
        // A checkpoint holds the bytes from slide 11 on, and the base.
        let bytes = bincode::serialize(&a).unwrap();
        assert!(bytes.len() < len + 8 * 3 + 2 * 24);
        let back: SlideArchive = bincode::deserialize(&bytes).unwrap();
        assert_eq!((held(&back), back.at), (want.to_vec(), 0));
        // Only empty slides left: the next one pushed is encoded against the base.
        let mut b =
            SlideArchive::from_encoded(11, 13, [t, DetectPane::default()], vec![EMPTY, EMPTY])
                .unwrap();
        b.push(&t);
        assert_eq!(
            b.bytes.last(),
            Some(&0),
            "a slide like its base is one byte"
        );
        assert_eq!(held(&b)[2], (13, t.to_parts()));
        // The slides dropped are decoded eight at a time, and their bytes go once they are a
        // quarter of the encoding.
        let mut c = SlideArchive::starting_at(0);
        for k in 0..100u16 {
            c.push(&slide(
                &[(0, 0.3 + f32::from(k % 7) * 0.01, 60.0)],
                None,
                8.0,
            ));
            c.drop_before(i64::from(k) - 59);
            assert!(c.start - c.phys < SETTLE);
            assert!(
                c.at as usize <= 64.max(c.bytes.len() / 4),
                "{} of {}",
                c.at,
                c.bytes.len()
            );
            assert_eq!(held(&c).len(), (i64::from(k) + 1).min(60) as usize);
        }
    }

    #[test]
    fn an_encoding_that_does_not_hold_its_slides_is_refused() {
        let read = |start: i64, end: i64, bytes: Vec<u8>| {
            SlideArchive::from_encoded(start, end, [DetectPane::default(); 2], bytes).map(|_| ())
        };
        let s = slide(&[(0, 0.5, 60.0)], Some((30.0, 60.0)), 2.0);
        let mut a = SlideArchive::starting_at(0);
        a.push(&s);
        a.push(&s);
        let written = a.bytes.clone();
        assert_eq!(read(0, 2, written.clone()), Ok(()));
        let mut longer = written.clone();
        longer.push(EMPTY);
        for (what, got) in [
            ("one slide more", read(0, 3, written.clone())),
            ("a byte past the slides", read(0, 2, longer)),
            (
                "the last byte missing",
                read(0, 2, written[..written.len() - 1].to_vec()),
            ),
            ("no slides", read(0, 0, Vec::new())),
            ("a sum of five bytes", read(0, 1, vec![0x05, 0, 0, 0, 0, 0])),
            (
                "a memory sum of five bytes",
                read(0, 1, vec![0x28, 0, 0, 0, 0, 0]),
            ),
            ("a second tag's high bit", read(0, 1, vec![MORE, 0x80])),
            (
                "a signal that does not exist",
                read(0, 1, vec![MORE, MORE, 0x08]),
            ),
            (
                "an index no event time has",
                read(i64::MAX - 1, i64::MAX, vec![EMPTY]),
            ),
        ] {
            assert!(got.is_err(), "{what}: {got:?}");
        }
        assert_eq!(read(0, 1, vec![MORE, MORE, 0x04]), Ok(()));
    }
}
