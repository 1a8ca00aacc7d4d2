//! The older panes of a usage window ring, held compactly and exactly.
//!
//! A ring's newest panes take nearly every write; its older ones (a day's ring holds 288 panes of
//! five minutes, a week's 168 hours) are written again only by a sample later than most of the
//! ring, and are otherwise read as a sum. A [`PaneArchive`] holds such a run of consecutive panes
//! as bytes, each pane encoded against the newest nonzero pane before it in its block:
//!
//! - a tag byte: `0xFF` for a pane that holds nothing; otherwise the byte counts of the two FLOP
//!   sums' differences, the measured one in the low four bits and the nominal one in the high four;
//! - the accelerator milliseconds' difference, zigzag, as a LEB128 varint;
//! - each FLOP sum's difference: the difference of the `f64` bit patterns (as integers, which
//!   order same-signed values), zigzag, in as many little-endian bytes as it needs.
//!
//! Every field is recovered bit for bit. A steadily running key repeats its accelerator
//! milliseconds from pane to pane (one byte); a FLOP sum of varying activity keeps six or seven
//! bytes of difference; a key that is idle for a while pays one byte a pane. That is 9 to 10 bytes
//! a pane with varying activity, 2 to 4 without, against 24 in a pane array.
//!
//! The encoding starts afresh at each block of [`BLOCK`] panes aligned to pane 0, and the archive
//! keeps each block's sum. A window adds its panes block by block ([`GroupedSum`]), so a window
//! that covers a whole block reads its sum without decoding it (the window ending now covers every
//! block held), dropping the oldest pane as the ring moves on decodes only the rest of its
//! block, and a late sample written into a held pane encodes only that pane's block again.

use crate::estimate::Usage;
use crate::window::Archive;

/// The panes a block spans: archives reset their encoding at, and sums group by, blocks of this
/// many panes aligned to pane 0.
pub const BLOCK: i64 = 32;
/// The tag of a pane that holds nothing (no bit set in any field).
const EMPTY: u8 = 0xFF;
/// The most bytes one pane encodes to: a tag, a varint of a `u64` and two 8-byte differences.
const MAX_PANE: usize = 1 + 10 + 8 + 8;

/// The block pane `idx` lies in.
fn block_of(idx: i64) -> i64 {
    idx.div_euclid(BLOCK)
}

/// A sum of panes in the order every window reads them: the panes of each aligned block (of
/// [`BLOCK`]) oldest first, then those blocks' sums oldest first. The order is fixed by the panes'
/// indexes alone, so a sum reads the same bits wherever its panes are held (an archive keeps each
/// block's sum, a pane array gives its panes one by one).
#[derive(Debug, Clone, Copy, Default)]
pub struct GroupedSum {
    total: Usage,
    /// The sum of the block being added to, and which block that is.
    open: Option<(i64, Usage)>,
}

impl GroupedSum {
    /// Adds pane `idx` (panes come oldest first).
    #[inline]
    pub fn pane(&mut self, idx: i64, p: &Usage) {
        let b = block_of(idx);
        match &mut self.open {
            Some((open, sum)) if *open == b => sum.add(p),
            _ => {
                self.close();
                let mut sum = Usage::default();
                sum.add(p);
                self.open = Some((b, sum));
            }
        }
    }

    /// Adds the sum of block `b`'s panes so far (blocks come oldest first, each at most once; its
    /// later panes may follow through [`GroupedSum::pane`]).
    #[inline]
    pub fn block(&mut self, b: i64, sum: &Usage) {
        self.close();
        self.open = Some((b, *sum));
    }

    fn close(&mut self) {
        if let Some((_, sum)) = self.open.take() {
            self.total.add(&sum);
        }
    }

    pub fn finish(mut self) -> Usage {
        self.close();
        self.total
    }
}

/// Where one block's held panes start in the encoding, and their sum.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Block {
    at: u32,
    /// The block's held panes, added oldest first.
    sum: Usage,
}

/// Panes `start .. end` of one ring (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PaneArchive {
    start: i64,
    end: i64,
    /// What pane `start` is encoded against: the newest nonzero pane before it in its block
    /// (nothing, at the block's first pane).
    base: Usage,
    /// The newest nonzero pane of the last block, which the next pane pushed is encoded against.
    last: Usage,
    /// One per block from `start`'s to `end - 1`'s.
    blocks: Vec<Block>,
    bytes: Vec<u8>,
}

impl Archive<Usage> for PaneArchive {
    const SINCE_FORMAT: u32 = crate::checkpoint::ENCODED_RINGS;

    fn starting_at(start: i64) -> PaneArchive {
        PaneArchive {
            start,
            end: start,
            ..PaneArchive::default()
        }
    }

    fn start(&self) -> i64 {
        self.start
    }

    fn end(&self) -> i64 {
        self.end
    }

    /// Heap bytes of the encoding and the blocks' bookkeeping.
    fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.blocks.capacity() * std::mem::size_of::<Block>()
    }

    fn push(&mut self, pane: &Usage) {
        if self.is_empty() {
            *self = PaneArchive::starting_at(self.start);
        }
        if self.blocks.is_empty() || self.end.rem_euclid(BLOCK) == 0 {
            // One more block at a time (a new one every `BLOCK` panes): no doubling's slack.
            self.blocks.reserve_exact(1);
            self.blocks.push(Block {
                at: self.bytes.len() as u32,
                sum: Usage::default(),
            });
            self.last = Usage::default();
        }
        if self.bytes.capacity() - self.bytes.len() < MAX_PANE {
            // An eighth of slack (four panes' worth at least), not the doubling of `Vec`: the
            // archive is most of a long-lived key's memory. (`Block::at` fits in a `u32`: the
            // configuration allows at most 100,000 panes a window.)
            self.bytes
                .reserve_exact((4 * MAX_PANE).max(self.bytes.len() / 8));
        }
        encode(&mut self.bytes, &mut self.last, pane);
        self.blocks.last_mut().expect("a block").sum.add(pane);
        self.end += 1;
    }

    /// Drops the panes before `idx`. Whole blocks go with their bytes; within the first block
    /// kept, the panes before `idx` are decoded to find where `idx` starts and what it is
    /// encoded against, and the block's sum is made again from the panes left.
    fn drop_before(&mut self, idx: i64) {
        self.drop_panes_before(idx);
    }

    /// Writes pane `idx`, which may lie before or after the panes held: the archive grows to it,
    /// the panes between holding nothing. (A write into the archive is rare: a sample later
    /// than a ring's live panes reach. A held pane's block is encoded again, every block's
    /// encoding standing alone; a pane before or after those held, rarer still, encodes the
    /// archive again.)
    fn write(&mut self, idx: i64, f: impl FnOnce(&mut Usage)) {
        self.write_pane(idx, f);
    }

    fn for_each_in(&self, first: i64, last: i64, mut f: impl FnMut(i64, &Usage)) {
        self.for_each(|i, p| {
            if (first..=last).contains(&i) {
                f(i, p)
            }
        });
    }

    /// The blocks' sums, which a window reads.
    fn prefetch_contents(&self) {
        crate::prefetch::slice(&self.blocks);
    }
}

impl PaneArchive {
    /// The panes block `k` (of `blocks`) holds.
    fn block_panes(&self, k: usize) -> std::ops::Range<i64> {
        let b = block_of(self.start) + k as i64;
        (b * BLOCK).max(self.start)..((b + 1) * BLOCK).min(self.end)
    }

    /// Calls `f` with each pane of block `k` and its index, oldest first.
    fn for_each_of_block(&self, k: usize, mut f: impl FnMut(i64, &Usage)) {
        let mut last = if k == 0 { self.base } else { Usage::default() };
        let mut at = self.blocks[k].at as usize;
        for i in self.block_panes(k) {
            f(i, &decode(&self.bytes, &mut at, &mut last));
        }
    }

    /// Calls `f` with each pane held and its index, oldest first.
    pub fn for_each(&self, mut f: impl FnMut(i64, &Usage)) {
        for k in 0..self.blocks.len() {
            self.for_each_of_block(k, &mut f);
        }
    }

    /// Gives `sum` the panes held with `first <= index <= last`, block by block: a block wholly
    /// inside as its kept sum, one partly inside as the sum of its panes inside.
    pub fn sum_into(&self, first: i64, last: i64, sum: &mut GroupedSum) {
        if self.is_empty() || first > last || last < self.start || first >= self.end {
            return;
        }
        let b0 = block_of(self.start);
        let from = (block_of(first.max(self.start)) - b0) as usize;
        let to = (block_of(last.min(self.end - 1)) - b0) as usize;
        for k in from..=to {
            let panes = self.block_panes(k);
            if first <= panes.start && panes.end - 1 <= last {
                sum.block(b0 + k as i64, &self.blocks[k].sum);
            } else {
                self.for_each_of_block(k, |i, p| {
                    if (first..=last).contains(&i) {
                        sum.pane(i, p);
                    }
                });
            }
        }
    }

    /// [`Archive::drop_before`].
    fn drop_panes_before(&mut self, idx: i64) {
        if idx <= self.start {
            return;
        }
        if idx >= self.end {
            *self = PaneArchive::starting_at(idx);
            return;
        }
        let whole = (block_of(idx) - block_of(self.start)) as usize;
        if whole > 0 {
            self.blocks.drain(..whole);
            let cut = self.blocks[0].at;
            self.bytes.drain(..cut as usize);
            self.trim_slack();
            for b in &mut self.blocks {
                b.at -= cut;
            }
            self.start = block_of(idx) * BLOCK;
            self.base = Usage::default();
        }
        if idx > self.start {
            let (mut at, mut last) = (self.blocks[0].at as usize, self.base);
            for _ in self.start..idx {
                decode(&self.bytes, &mut at, &mut last);
            }
            self.blocks[0].at = at as u32;
            self.base = last;
            self.start = idx;
            let mut sum = Usage::default();
            self.for_each_of_block(0, |_, p| sum.add(p));
            self.blocks[0].sum = sum;
        }
    }

    /// [`Archive::write`].
    fn write_pane(&mut self, idx: i64, f: impl FnOnce(&mut Usage)) {
        if idx == self.end && !self.is_empty() {
            let mut p = Usage::default();
            f(&mut p);
            self.push(&p);
            return;
        }
        if (self.start..self.end).contains(&idx) {
            self.write_held(idx, f);
            return;
        }
        let (start, mut panes) = if self.is_empty() {
            (idx, Vec::new())
        } else {
            (self.start.min(idx), self.panes())
        };
        let before = if self.is_empty() {
            0
        } else {
            (self.start - start) as usize
        };
        panes.splice(0..0, std::iter::repeat_n(Usage::default(), before));
        let end = (start + panes.len() as i64).max(idx + 1);
        panes.resize((end - start) as usize, Usage::default());
        f(&mut panes[(idx - start) as usize]);
        *self = PaneArchive::starting_at(start);
        for p in &panes {
            self.push(p);
        }
        self.bytes
            .shrink_to(self.bytes.len() + self.bytes.len() / 8);
    }

    /// Writes held pane `idx`, encoding its block again in place of the old encoding and making
    /// the block's sum again, as [`Archive::push`] made them.
    fn write_held(&mut self, idx: i64, f: impl FnOnce(&mut Usage)) {
        let k = (block_of(idx) - block_of(self.start)) as usize;
        let held = self.block_panes(k);
        let mut panes = [Usage::default(); BLOCK as usize];
        self.for_each_of_block(k, |i, p| panes[(i - held.start) as usize] = *p);
        let panes = &mut panes[..(held.end - held.start) as usize];
        f(&mut panes[(idx - held.start) as usize]);
        let mut last = if k == 0 { self.base } else { Usage::default() };
        let (mut encoded, mut sum) = (Vec::with_capacity(panes.len() * MAX_PANE), Usage::default());
        for p in panes.iter() {
            encode(&mut encoded, &mut last, p);
            sum.add(p);
        }
        let from = self.blocks[k].at as usize;
        let to = self
            .blocks
            .get(k + 1)
            .map_or(self.bytes.len(), |b| b.at as usize);
        let grown = encoded.len() as i64 - (to - from) as i64;
        self.bytes.splice(from..to, encoded);
        self.trim_slack();
        for b in &mut self.blocks[k + 1..] {
            b.at = (i64::from(b.at) + grown) as u32;
        }
        self.blocks[k].sum = sum;
        if k + 1 == self.blocks.len() {
            self.last = last;
        }
    }

    /// Gives back the encoding's spare capacity once it exceeds a quarter of its length (and a
    /// pane), down to an eighth: bytes dropped or encoded shorter leave no lasting slack.
    fn trim_slack(&mut self) {
        if self.bytes.capacity() > self.bytes.len() + self.bytes.len() / 4 + MAX_PANE {
            self.bytes
                .shrink_to(self.bytes.len() + self.bytes.len() / 8);
        }
    }

    /// Every pane held, decoded.
    fn panes(&self) -> Vec<Usage> {
        let mut out = Vec::with_capacity((self.end - self.start) as usize);
        self.for_each(|_, p| out.push(*p));
        out
    }

    /// The archive of panes `start .. end` whose encoding is `bytes`, `base` being what pane
    /// `start` is encoded against (a checkpoint's form of it). Every pane is checked as it is
    /// read, and the blocks' offsets and sums are made again from the panes, as
    /// [`Archive::push`] made them; `Err` says what is wrong.
    pub fn from_encoded(
        start: i64,
        end: i64,
        base: Usage,
        bytes: Vec<u8>,
    ) -> Result<PaneArchive, &'static str> {
        use crate::window::INDEX_BOUND;
        if !(-INDEX_BOUND < start && start < end && end < INDEX_BOUND) {
            return Err("an archive's panes are out of order or out of range");
        }
        // Every pane takes a byte at least, and `Block::at` is a `u32`.
        if (end - start) as u64 > bytes.len() as u64 || bytes.len() > u32::MAX as usize {
            return Err("an archive holds more panes than bytes, or more than 4 GiB");
        }
        if start.rem_euclid(BLOCK) == 0 && !is_empty_pane(&base) {
            return Err("an archive's first pane starts a block but is encoded against a pane");
        }
        let mut blocks = Vec::with_capacity((block_of(end - 1) - block_of(start) + 1) as usize);
        let (mut at, mut last) = (0, base);
        for i in start..end {
            if i == start || i.rem_euclid(BLOCK) == 0 {
                if i != start {
                    last = Usage::default();
                }
                blocks.push(Block {
                    at: at as u32,
                    sum: Usage::default(),
                });
            }
            let len = pane_len(&bytes, at).ok_or("an archive's pane is cut short or mistagged")?;
            let from = at;
            let p = decode(&bytes, &mut at, &mut last);
            debug_assert_eq!(at, from + len, "decode reads the bytes pane_len checked");
            blocks.last_mut().expect("a block").sum.add(&p);
        }
        if at != bytes.len() {
            return Err("an archive's encoding goes on past its last pane");
        }
        Ok(PaneArchive {
            start,
            end,
            base,
            last,
            blocks,
            bytes,
        })
    }
}

/// A checkpoint holds an archive as its panes' indexes, what the first is encoded against and the
/// encoding from the first pane on (the bytes a drop within the first block left before it are
/// not written); reading it checks every pane ([`PaneArchive::from_encoded`]).
impl serde::Serialize for PaneArchive {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let first = self.blocks.first().map_or(0, |b| b.at as usize);
        let bytes = serde_bytes::Bytes::new(&self.bytes[first..]);
        (self.start, self.end, &self.base, bytes).serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for PaneArchive {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (start, end, base, bytes): (i64, i64, Usage, serde_bytes::ByteBuf) =
            serde::Deserialize::deserialize(d)?;
        PaneArchive::from_encoded(start, end, base, bytes.into_vec())
            .map_err(serde::de::Error::custom)
    }
}

fn is_empty_pane(p: &Usage) -> bool {
    p.acc_ms == 0 && p.measured_flop.to_bits() == 0 && p.nominal_flop.to_bits() == 0
}

fn zigzag(d: u64) -> u64 {
    let d = d as i64;
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(z: u64) -> u64 {
    (z >> 1) ^ (z & 1).wrapping_neg()
}

/// Bytes needed for `x` in little-endian order (0 for 0).
fn byte_len(x: u64) -> usize {
    (64 - x.leading_zeros() as usize).div_ceil(8)
}

/// Appends `p` encoded against `last`, and makes it `last` if it holds anything.
fn encode(out: &mut Vec<u8>, last: &mut Usage, p: &Usage) {
    if is_empty_pane(p) {
        out.push(EMPTY);
        return;
    }
    let dm = zigzag(
        p.measured_flop
            .to_bits()
            .wrapping_sub(last.measured_flop.to_bits()),
    );
    let dn = zigzag(
        p.nominal_flop
            .to_bits()
            .wrapping_sub(last.nominal_flop.to_bits()),
    );
    let (lm, ln) = (byte_len(dm), byte_len(dn));
    out.push((lm | ln << 4) as u8);
    let mut acc = zigzag(p.acc_ms.wrapping_sub(last.acc_ms));
    while acc >= 0x80 {
        out.push(acc as u8 | 0x80);
        acc >>= 7;
    }
    out.push(acc as u8);
    // Whole words written and cut back: a fixed-size copy, not a call for a variable one.
    for (d, len) in [(dm, lm), (dn, ln)] {
        out.extend_from_slice(&d.to_le_bytes());
        out.truncate(out.len() - 8 + len);
    }
    *last = *p;
}

/// The length of the pane encoded at `at`, if `bytes` hold all of it and its tag and varint are
/// well formed: what [`decode`] may then read without going past the end (bytes not written by
/// [`encode`], such as a checkpoint's, are checked so before they are decoded).
fn pane_len(bytes: &[u8], at: usize) -> Option<usize> {
    let tag = *bytes.get(at)?;
    if tag == EMPTY {
        return Some(1);
    }
    let (lm, ln) = (usize::from(tag & 0x0F), usize::from(tag >> 4));
    if lm > 8 || ln > 8 {
        return None;
    }
    // A `u64` takes at most ten bytes of seven bits.
    let mut len = 1;
    loop {
        let b = *bytes.get(at + len)?;
        len += 1;
        if b < 0x80 {
            break;
        }
        if len > 10 {
            return None;
        }
    }
    let len = len + lm + ln;
    (at + len <= bytes.len()).then_some(len)
}

/// Reads the pane at `*at` (encoded against `last`), moving `at` past it and `last` on to it if
/// it holds anything. The bytes are the archive's own encoding, or were checked by [`pane_len`].
#[inline(always)]
fn decode(bytes: &[u8], at: &mut usize, last: &mut Usage) -> Usage {
    let tag = bytes[*at];
    *at += 1;
    if tag == EMPTY {
        return Usage::default();
    }
    let mut acc = 0u64;
    let mut shift = 0;
    loop {
        let b = bytes[*at];
        *at += 1;
        acc |= u64::from(b & 0x7F) << shift;
        if b < 0x80 {
            break;
        }
        shift += 7;
    }
    let dm = read_word(bytes, at, (tag & 0x0F) as usize);
    let dn = read_word(bytes, at, (tag >> 4) as usize);
    let p = Usage {
        acc_ms: last.acc_ms.wrapping_add(unzigzag(acc)),
        measured_flop: f64::from_bits(last.measured_flop.to_bits().wrapping_add(dm)),
        nominal_flop: f64::from_bits(last.nominal_flop.to_bits().wrapping_add(dn)),
    };
    *last = p;
    p
}

/// The `len` little-endian bytes at `*at` (at most 8), unzigzagged; moves `at` past them.
#[inline(always)]
fn read_word(bytes: &[u8], at: &mut usize, len: usize) -> u64 {
    let word = match bytes.get(*at..*at + 8) {
        // A whole word loaded and masked to its `len` bytes (all but the archive's last bytes).
        Some(w) => {
            let w = u64::from_le_bytes(w.try_into().expect("eight bytes"));
            w & u64::MAX.checked_shr(64 - 8 * len as u32).unwrap_or(0)
        }
        None => {
            let mut w = [0u8; 8];
            for (i, b) in bytes[*at..*at + len].iter().enumerate() {
                w[i] = *b;
            }
            u64::from_le_bytes(w)
        }
    };
    *at += len;
    unzigzag(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn usage(acc_ms: u64, measured: f64, nominal: f64) -> Usage {
        Usage {
            acc_ms,
            measured_flop: measured,
            nominal_flop: nominal,
        }
    }

    impl PaneArchive {
        fn encoded_len(&self) -> usize {
            self.bytes.len()
        }

        fn sum_in(&self, first: i64, last: i64) -> Usage {
            let mut sum = GroupedSum::default();
            self.sum_into(first, last, &mut sum);
            sum.finish()
        }
    }

    fn held(a: &PaneArchive) -> Vec<(i64, Usage)> {
        let mut v = Vec::new();
        a.for_each(|i, p| v.push((i, *p)));
        v
    }

    fn bits(p: &Usage) -> (u64, u64, u64) {
        (
            p.acc_ms,
            p.measured_flop.to_bits(),
            p.nominal_flop.to_bits(),
        )
    }

    fn any_usage() -> impl Strategy<Value = Usage> {
        prop_oneof![
            Just(Usage::default()),
            // A steady key: the same milliseconds, activity varying by a few percent.
            (0.9f64..1.1).prop_map(|x| usage(480_000, 3.8e17 * x, 0.0)),
            (any::<u64>(), any::<f64>(), any::<f64>()).prop_map(|(a, m, n)| usage(a, m, n)),
            (any::<u32>(), 0f64..1e26, 0f64..1e26).prop_map(|(a, m, n)| usage(a as u64, m, n)),
        ]
    }

    proptest! {
        /// Whatever the panes (any bit patterns, NaNs and infinities included) and the order of
        /// pushes, late additions and drops, the archive reads back exactly the panes of a plain
        /// map of them, bit for bit, and its sums are those of adding the same panes in order.
        #[test]
        fn archive_reads_back_bit_for_bit_what_a_map_of_panes_holds(
            ops in prop::collection::vec(
                (0u8..4, -5i64..40, any_usage()),
                1..80,
            ),
            first in -5i64..45,
            span in 0i64..50,
        ) {
            let mut a = PaneArchive::starting_at(0);
            let mut model: std::collections::BTreeMap<i64, Usage> = Default::default();
            for (op, idx, u) in ops {
                match op {
                    0 => {
                        let at = a.end();
                        a.push(&u);
                        model.insert(at, u);
                    }
                    1 | 2 => {
                        a.write(idx, |p| p.add(&u));
                        model.entry(idx).or_default().add(&u);
                    }
                    _ => {
                        a.drop_before(idx);
                        model.retain(|&i, _| i >= idx);
                    }
                }
                // Every index in the archive's range reads its model pane or nothing.
                let expected: Vec<(i64, (u64, u64, u64))> = (a.start()..a.end())
                    .map(|i| (i, bits(&model.get(&i).copied().unwrap_or_default())))
                    .collect();
                let read: Vec<(i64, (u64, u64, u64))> =
                    held(&a).iter().map(|(i, p)| (*i, bits(p))).collect();
                prop_assert_eq!(read, expected);
                prop_assert!(model.keys().all(|i| (a.start()..a.end()).contains(i)));
                // Sums, in whole and in part, add the same panes in the same order.
                for (lo, hi) in [(i64::MIN, i64::MAX), (first, first + span)] {
                    let mut want = GroupedSum::default();
                    for i in a.start()..a.end() {
                        if (lo..=hi).contains(&i) {
                            want.pane(i, &model.get(&i).copied().unwrap_or_default());
                        }
                    }
                    prop_assert_eq!(bits(&a.sum_in(lo, hi)), bits(&want.finish()));
                }
                // Whole blocks dropped take their bytes with them.
                prop_assert!(a.encoded_len() <= (a.end() - a.start() + BLOCK) as usize * MAX_PANE);
                // A checkpoint's round trip gives back the same archive, blocks and all.
                if !a.is_empty() {
                    let bytes = bincode::serialize(&a).unwrap();
                    let back: PaneArchive = bincode::deserialize(&bytes)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(bincode::serialize(&back).unwrap(), bytes);
                    prop_assert_eq!(parts(&back), parts(&a));
                }
            }
        }

        /// Any bytes read as an archive are refused or give an archive whose every operation
        /// works: `from_encoded` checks each pane before it is decoded.
        #[test]
        fn an_archive_read_from_any_bytes_is_refused_or_usable(
            start in -40i64..40,
            panes in 1i64..40,
            base in any_usage(),
            bytes in prop::collection::vec(
                prop_oneof![4 => any::<u8>(), 1 => Just(EMPTY), 1 => Just(0x88), 1 => Just(0x80)],
                0..200,
            ),
            u in any_usage(),
        ) {
            if let Ok(mut a) = PaneArchive::from_encoded(start, start + panes, base, bytes) {
                prop_assert_eq!(held(&a).len() as i64, panes);
                let _ = a.sum_in(i64::MIN, i64::MAX);
                a.write(start + panes / 2, |p| p.add(&u));
                a.push(&u);
                a.drop_before(start + panes / 3);
                prop_assert_eq!(held(&a).len() as i64, a.end() - a.start());
            }
        }
    }

    /// What an archive holds, its floating-point values as bits (NaNs compare equal so): its
    /// panes, its blocks' sums and encodings, and what the next pane pushed is encoded against.
    #[allow(clippy::type_complexity)]
    fn parts(
        a: &PaneArchive,
    ) -> (
        Vec<(i64, (u64, u64, u64))>,
        Vec<((u64, u64, u64), &[u8])>,
        (u64, u64, u64),
    ) {
        let panes = held(a).iter().map(|(i, p)| (*i, bits(p))).collect();
        let ends = a
            .blocks
            .iter()
            .skip(1)
            .map(|b| b.at as usize)
            .chain([a.bytes.len()]);
        let blocks = a
            .blocks
            .iter()
            .zip(ends)
            .map(|(b, end)| (bits(&b.sum), &a.bytes[b.at as usize..end]))
            .collect();
        (panes, blocks, bits(&a.last))
    }

    #[test]
    fn a_checkpoint_holds_the_encoding_and_refuses_one_that_does_not_hold_its_panes() {
        let mut a = PaneArchive::starting_at(3);
        for k in 0..70u32 {
            a.push(&usage(60_000, 1e15 * f64::from(k % 9), 0.0));
        }
        a.drop_before(40);
        // The drop decoded its way into the first block: the bytes before pane 40 stay, unread.
        let first = a.blocks[0].at as usize;
        assert!(first > 0);
        let read = |start: i64, end: i64, base: Usage, bytes: Vec<u8>| {
            PaneArchive::from_encoded(start, end, base, bytes).map(|b| b.bytes.len())
        };
        let written = a.bytes[first..].to_vec();
        assert_eq!(
            read(a.start, a.end, a.base, written.clone()),
            Ok(written.len())
        );
        let back = PaneArchive::from_encoded(a.start, a.end, a.base, written.clone()).unwrap();
        assert_eq!(parts(&back), parts(&a));
        let (s, e, b) = (a.start, a.end, a.base);
        let mut longer = written.clone();
        longer.push(EMPTY);
        let cut = written[..written.len() - 1].to_vec();
        for (what, got) in [
            (
                "the bytes before the first pane too",
                read(s, e, b, a.bytes.clone()),
            ),
            ("one pane more", read(s, e + 1, b, written.clone())),
            ("a byte past the panes", read(s, e, b, longer)),
            ("the last byte missing", read(s, e, b, cut)),
            ("no panes", read(s, s, b, Vec::new())),
            ("more panes than bytes", read(s, s + 3, b, vec![EMPTY; 2])),
            (
                "a byte count over eight",
                read(
                    0,
                    1,
                    Usage::default(),
                    vec![0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ),
            ),
            (
                "a varint of eleven bytes",
                read(
                    0,
                    1,
                    Usage::default(),
                    [&[0x00][..], &[0x80; 10], &[0x01]].concat(),
                ),
            ),
            (
                "a block's first pane encoded against one",
                read(32, 33, usage(1, 0.0, 0.0), vec![EMPTY]),
            ),
            (
                "an index no event time has",
                read(i64::MAX - 1, i64::MAX, b, vec![EMPTY]),
            ),
        ] {
            assert!(got.is_err(), "{what}: {got:?}");
        }
    }

    #[test]
    fn a_steady_key_costs_a_few_bytes_a_pane_and_an_idle_one_a_byte() {
        let mut a = PaneArchive::starting_at(0);
        let mut x = 0.41f64;
        for _ in 0..288 {
            // Tensor activity wandering between 0.3 and 0.5.
            x = 0.3 + (x * 7.31).fract() * 0.2;
            a.push(&usage(8 * 300_000, 8.0 * 300.0 * 989e12 * x, 0.0));
        }
        let steady = a.encoded_len() as f64 / 288.0;
        assert!(
            (6.0..=10.0).contains(&steady),
            "{steady} bytes a pane for a steady key"
        );
        let before = a.encoded_len();
        for _ in 0..100 {
            a.push(&Usage::default());
        }
        assert_eq!(a.encoded_len() - before, 100, "an idle pane is one byte");
        assert!(a.bytes.capacity() <= a.encoded_len() + a.encoded_len() / 8 + MAX_PANE);
    }

    #[test]
    fn a_pane_after_idle_ones_is_encoded_against_the_last_that_held_something() {
        let mut a = PaneArchive::starting_at(10);
        let p = usage(60_000, 1.5e16, 0.0);
        a.push(&p);
        a.push(&Usage::default());
        a.push(&Usage::default());
        let len = a.encoded_len();
        a.push(&p);
        // Tag and a zero varint: both FLOP differences are zero bytes long.
        assert_eq!(a.encoded_len() - len, 2);
        assert_eq!(
            held(&a).into_iter().map(|(i, _)| i).collect::<Vec<_>>(),
            [10, 11, 12, 13]
        );
        assert_eq!(a.sum_in(i64::MIN, i64::MAX).acc_ms, 120_000);
        assert_eq!(a.sum_in(11, 12).acc_ms, 0);
        assert_eq!(a.sum_in(12, 13).acc_ms, 60_000);
    }
}
