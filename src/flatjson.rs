//! A single-pass reader of flat JSON objects: the fast path of the native decoder.
//!
//! Usage events are one flat object of short ASCII strings and numbers. This reader handles
//! exactly that and nothing else: an object whose values are strings without escapes, numbers,
//! `true`, `false` or `null`. For anything else (escapes, nested values, invalid JSON, numbers it
//! cannot represent exactly as serde_json would) it answers `None`, and the caller decodes the
//! payload with serde_json, which then also words the rejection. Strings are borrowed from the
//! payload; nothing is allocated.
//!
//! The caller names the keys it wants ([`KnownKey`]) and gets each one's index instead of its
//! text. Producers write their keys in the same order in every event, so the reader expects each
//! known key where the last object had it ([`KeyOrder`]) and, when the payload has it there,
//! takes the key and its colon with three word comparisons instead of reading it as a string.

/// A value as it appeared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FlatValue<'a> {
    Str(&'a str),
    Int(i64),
    Float(f64),
    Bool,
    Null,
}

/// Most keys a reader can know.
pub const MAX_KNOWN: usize = 31;

/// An object key known in advance, held as a compact payload spells it: quoted and followed by
/// its colon (`"key":`), in at most 24 bytes (names of up to 21 bytes).
#[derive(Debug, Clone, Copy)]
pub struct KnownKey {
    name: &'static str,
    /// The quoted key and colon, then zeros.
    bytes: [u8; 24],
    len: usize,
    /// `bytes` as three little-endian words, and for each the mask of its bytes that count.
    words: [u64; 3],
    masks: [u64; 3],
}

impl KnownKey {
    /// Panics (at compile time for a constant) if `name` is longer than 21 bytes or holds a byte
    /// that JSON would have to escape.
    pub const fn new(name: &'static str) -> KnownKey {
        let n = name.as_bytes();
        assert!(n.len() <= 21, "a known key has at most 21 bytes");
        let mut bytes = [0u8; 24];
        bytes[0] = b'"';
        let mut i = 0;
        while i < n.len() {
            assert!(
                n[i] >= 0x20 && n[i] < 0x80 && n[i] != b'"' && n[i] != b'\\',
                "a known key is printable ASCII without quotes or backslashes"
            );
            bytes[i + 1] = n[i];
            i += 1;
        }
        bytes[n.len() + 1] = b'"';
        bytes[n.len() + 2] = b':';
        let len = n.len() + 3;
        let mut words = [0u64; 3];
        let mut masks = [0u64; 3];
        let mut w = 0;
        while w < 3 {
            let mut word = [0u8; 8];
            let mut j = 0;
            while j < 8 {
                word[j] = bytes[w * 8 + j];
                j += 1;
            }
            words[w] = u64::from_le_bytes(word);
            let counted = len.saturating_sub(w * 8);
            masks[w] = match counted {
                0 => 0,
                1..=7 => (1u64 << (8 * counted)) - 1,
                _ => u64::MAX,
            };
            w += 1;
        }
        KnownKey {
            name,
            bytes,
            len,
            words,
            masks,
        }
    }

    /// The key as the caller named it.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether `b` spells this key and its colon at `i`.
    #[inline(always)]
    fn at(&self, b: &[u8], i: usize) -> bool {
        match b.get(i..i + 24) {
            Some(chunk) => {
                let word = |w: usize| {
                    u64::from_le_bytes(chunk[w * 8..w * 8 + 8].try_into().expect("eight bytes"))
                };
                ((word(0) ^ self.words[0]) & self.masks[0]
                    | (word(1) ^ self.words[1]) & self.masks[1]
                    | (word(2) ^ self.words[2]) & self.masks[2])
                    == 0
            }
            None => b.get(i..i + self.len) == Some(&self.bytes[..self.len]),
        }
    }
}

/// Where the next object's known keys are expected: for each known key, and for the object's
/// start, the known key that followed it in the last object read. At first, the keys in the
/// order they are known.
#[derive(Debug, Clone, Copy)]
pub struct KeyOrder {
    next: [u8; MAX_KNOWN + 1],
}

impl Default for KeyOrder {
    fn default() -> KeyOrder {
        let mut next = [0u8; MAX_KNOWN + 1];
        for (k, n) in next.iter_mut().enumerate().take(MAX_KNOWN) {
            *n = k as u8 + 1;
        }
        next[START] = 0;
        KeyOrder { next }
    }
}

/// The index in [`KeyOrder::next`] of an object's start.
const START: usize = MAX_KNOWN;

/// What [`scan`] gives each field of an object to, in order: the key as its index in the known
/// keys, or `None` for a key not among them, and the value. A closure taking the two is one.
///
/// Strings and numbers, nearly every value, come through their own methods, called from the
/// branch of the reader that read them, so that an implementation that overrides them (inlined)
/// stores each kind without a dispatch on [`FlatValue`]; by default they call
/// [`Visit::field`].
pub trait Visit<'a> {
    fn field(&mut self, key: Option<usize>, value: FlatValue<'a>);

    #[inline(always)]
    fn str(&mut self, key: Option<usize>, s: &'a str) {
        self.field(key, FlatValue::Str(s));
    }

    #[inline(always)]
    fn int(&mut self, key: Option<usize>, v: i64) {
        self.field(key, FlatValue::Int(v));
    }

    #[inline(always)]
    fn float(&mut self, key: Option<usize>, v: f64) {
        self.field(key, FlatValue::Float(v));
    }
}

impl<'a, F: FnMut(Option<usize>, FlatValue<'a>)> Visit<'a> for F {
    #[inline(always)]
    fn field(&mut self, key: Option<usize>, value: FlatValue<'a>) {
        self(key, value)
    }
}

/// Gives each key and value of the flat object in `payload` to `visit`, in order. `None` when the
/// payload is not such an object (the caller falls back to a full JSON parser). `order` says
/// where known keys are expected, and learns where they were.
pub fn scan<'a>(
    payload: &'a [u8],
    known: &[KnownKey],
    order: &mut KeyOrder,
    visit: &mut impl Visit<'a>,
) -> Option<()> {
    assert!(known.len() <= MAX_KNOWN, "at most {MAX_KNOWN} known keys");
    // Outside strings only ASCII bytes of the grammar are accepted, so checking each string's
    // bytes (below) makes the whole payload valid UTF-8 without a separate pass over it. (A known
    // key matched in place is ASCII.)
    let b = payload;
    let mut previous = START;
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return (skip_ws(b, i + 1) == b.len()).then_some(());
    }
    // Compact JSON has no whitespace between tokens: each step first tries the token where it
    // would be in compact JSON, and skips whitespace only when it is not there.
    loop {
        let expected = known.get(order.next[previous] as usize);
        let key = if let Some(k) = expected.filter(|k| k.at(b, i)) {
            i += k.len;
            Some(order.next[previous] as usize)
        } else {
            i = skip_ws(b, i);
            match expected {
                Some(k) if k.at(b, i) => {
                    i += k.len;
                    Some(order.next[previous] as usize)
                }
                _ => {
                    let (name, next) = string(b, i)?;
                    i = skip_ws(b, next);
                    if b.get(i) != Some(&b':') {
                        return None;
                    }
                    i += 1;
                    let key = known.iter().position(|k| k.name == name);
                    if let Some(k) = key {
                        order.next[previous] = k as u8;
                    }
                    key
                }
            }
        };
        if let Some(k) = key {
            previous = k;
        }
        i = match value(b, i, key, visit) {
            Some(next) => next,
            None => value(b, skip_ws(b, i), key, visit)?,
        };
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => return (skip_ws(b, i + 1) == b.len()).then_some(()),
            _ => {
                i = skip_ws(b, i);
                match b.get(i) {
                    Some(b',') => i += 1,
                    Some(b'}') => return (skip_ws(b, i + 1) == b.len()).then_some(()),
                    _ => return None,
                }
            }
        }
    }
}

#[inline(always)]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// A string without escapes starting at `i` (the opening quote); the text and the index after it.
#[inline(always)]
fn string(b: &[u8], i: usize) -> Option<(&str, usize)> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let start = i + 1;
    let (len, ascii) = plain_prefix(&b[start..])?;
    let end = start + len;
    if b[end] != b'"' {
        return None;
    }
    let bytes = &b[start..end];
    let text = if ascii {
        // SAFETY: every byte is below 0x80 (`plain_prefix` saw no high bit), and a sequence of
        // ASCII bytes is valid UTF-8.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    } else {
        std::str::from_utf8(bytes).ok()?
    };
    Some((text, end + 1))
}

/// Bytes that may appear unescaped in a JSON string (not a quote, backslash or control byte).
static PLAIN: [bool; 256] = {
    let mut t = [true; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = false;
        c += 1;
    }
    t[b'"' as usize] = false;
    t[b'\\' as usize] = false;
    t
};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` that is a quote, a backslash or a control byte, and possibly
/// of bytes above such a byte (a borrow carries upwards only from a flagged byte), so the lowest
/// flag is always the first such byte.
fn stops(w: u64) -> u64 {
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    zero(w ^ (ONES * b'"' as u64)) | zero(w ^ (ONES * b'\\' as u64)) | control
}

/// Length of the longest prefix of plain bytes, and whether all of them are ASCII; `None` if
/// every byte is plain. Reads thirty-two bytes at a time with AVX2 where the build enables it,
/// while thirty-two are left, then sixteen at a time with SSE2 (part of every x86-64 processor)
/// while sixteen are left, then as [`plain_prefix_words`] does.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn plain_prefix(b: &[u8]) -> Option<(usize, bool)> {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    let mut high = 0u32;
    let mut i = 0;
    // Thirty-two bytes at a time where the build may use AVX2 (x86-64-v3, the release build's
    // level): a name of up to 31 bytes takes one step.
    #[cfg(target_feature = "avx2")]
    while i + 32 <= b.len() {
        use std::arch::x86_64::{
            __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_max_epu8, _mm256_movemask_epi8,
            _mm256_or_si256, _mm256_set1_epi8,
        };
        // SAFETY: the thirty-two bytes from `i` are within `b` (an unaligned load reads only
        // them), and the build enables AVX2.
        let (stop, h) = unsafe {
            let v = _mm256_loadu_si256(b.as_ptr().add(i) as *const __m256i);
            let quote = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'"' as i8));
            let backslash = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\\' as i8));
            let control = _mm256_cmpeq_epi8(
                _mm256_max_epu8(v, _mm256_set1_epi8(0x1f)),
                _mm256_set1_epi8(0x1f),
            );
            let stop = _mm256_or_si256(_mm256_or_si256(quote, backslash), control);
            (
                _mm256_movemask_epi8(stop) as u32,
                _mm256_movemask_epi8(v) as u32,
            )
        };
        if stop != 0 {
            let at = stop.trailing_zeros();
            high |= h & ((1u64 << at) - 1) as u32;
            return Some((i + at as usize, high == 0));
        }
        high |= h;
        i += 32;
    }
    while i + 16 <= b.len() {
        // SAFETY: the sixteen bytes from `i` are within `b` (an unaligned load reads only them),
        // and SSE2 is available on every x86-64 processor.
        let (stop, h) = unsafe {
            let v = _mm_loadu_si128(b.as_ptr().add(i) as *const __m128i);
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            // Control bytes (below 0x20) are those whose unsigned maximum with 0x1f is 0x1f.
            let control = _mm_cmpeq_epi8(_mm_max_epu8(v, _mm_set1_epi8(0x1f)), _mm_set1_epi8(0x1f));
            let stop = _mm_or_si128(_mm_or_si128(quote, backslash), control);
            (_mm_movemask_epi8(stop) as u32, _mm_movemask_epi8(v) as u32)
        };
        if stop != 0 {
            let at = stop.trailing_zeros();
            high |= h & ((1 << at) - 1);
            return Some((i + at as usize, high == 0));
        }
        high |= h;
        i += 16;
    }
    let (at, ascii) = plain_prefix_words(&b[i..])?;
    Some((i + at, ascii && high == 0))
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn plain_prefix(b: &[u8]) -> Option<(usize, bool)> {
    plain_prefix_words(b)
}

/// [`plain_prefix`] eight bytes at a time while eight are left.
fn plain_prefix_words(b: &[u8]) -> Option<(usize, bool)> {
    let mut high = 0u64;
    let mut i = 0;
    while let Some(chunk) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let stop = stops(w);
        if stop != 0 {
            let at = stop.trailing_zeros() as usize / 8;
            // The high bits of the bytes before the stop.
            let below = (1u64 << (at * 8)) - 1;
            high |= w & below & HIGH;
            return Some((i + at, high == 0));
        }
        high |= w & HIGH;
        i += 8;
    }
    let at = i + b[i..].iter().position(|&c| !PLAIN[c as usize])?;
    Some((at, high == 0 && b[i..at].is_ascii()))
}

/// Powers of ten as integers, up to what eight digits at a time need.
const POW10: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// Powers of ten exact as `f64`s (the decimal fast path's range).
const POW10_F64: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The eight bytes of `b` from `i` as a little-endian word, if there are eight.
#[inline(always)]
fn word_at(b: &[u8], i: usize) -> Option<u64> {
    b.get(i..i + 8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("eight bytes")))
}

/// How many of the eight bytes of `w` (the first in the lowest byte) are ASCII digits before the
/// first byte that is not.
#[inline(always)]
fn digit_run(w: u64) -> usize {
    // A digit's byte becomes 0-9; adding 0x76 leaves the high bit clear exactly for 0-9 (a byte
    // above 0x89 carries into the next byte, but only bytes above a non-digit are changed).
    let x = w ^ (ONES * b'0' as u64);
    let non_digit = (x.wrapping_add(ONES * 0x76) | x) & HIGH;
    match non_digit {
        0 => 8,
        _ => non_digit.trailing_zeros() as usize / 8,
    }
}

/// The number the first `run` (1 to 8) bytes of `w` spell, all ASCII digits, the first in the
/// lowest byte: the digits are moved to the top bytes, and pairs, then fours, then the eight are
/// combined by multiplications, the usual way of reading eight digits at once.
#[inline(always)]
fn digit_values(w: u64, run: usize) -> u64 {
    let d = (w ^ (ONES * b'0' as u64)) << (64 - 8 * run);
    let pairs = d.wrapping_mul(10).wrapping_add(d >> 8);
    let mask = 0x0000_00FF_0000_00FF;
    ((pairs & mask).wrapping_mul(100 + (1_000_000 << 32))
        + ((pairs >> 16) & mask).wrapping_mul(1 + (10_000 << 32)))
        >> 32
}

/// Reads the value at `i` and gives it to `visit` as the value of `key`; the index after it, or
/// `None` (and nothing given) if there is none.
#[inline(always)]
fn value<'a>(
    b: &'a [u8],
    i: usize,
    key: Option<usize>,
    visit: &mut impl Visit<'a>,
) -> Option<usize> {
    let c = *b.get(i)?;
    // Numbers and strings first, without a jump table: they are nearly every value.
    if c.is_ascii_digit() {
        return number(b, i, key, visit);
    }
    if c == b'"' {
        let (s, next) = string(b, i)?;
        visit.str(key, s);
        return Some(next);
    }
    let (v, next) = match c {
        b't' => literal(b, i, b"true", FlatValue::Bool),
        b'f' => literal(b, i, b"false", FlatValue::Bool),
        b'n' => literal(b, i, b"null", FlatValue::Null),
        b'-' | b'0'..=b'9' => any_number(b, i),
        _ => None,
    }?;
    visit.field(key, v);
    Some(next)
}

fn literal<'a>(
    b: &[u8],
    i: usize,
    word: &[u8],
    v: FlatValue<'a>,
) -> Option<(FlatValue<'a>, usize)> {
    b[i..].starts_with(word).then_some((v, i + word.len()))
}

/// A JSON number at `i`, read in one pass and given to `visit` as [`value`] does. Integers of up
/// to 18 digits are exact `Int`s; other numbers take Clinger's fast path ([`Number::fast`]) or go
/// through the standard library's correctly rounded parser, as serde_json's `float_roundtrip`
/// does. Negative zero, longer integers and non-finite results are left to serde_json.
#[inline(always)]
fn number<'a>(b: &[u8], i: usize, key: Option<usize>, visit: &mut impl Visit<'a>) -> Option<usize> {
    if let Some(next) = short_number(b, i, key, visit) {
        return Some(next);
    }
    let (v, next) = any_number(b, i)?;
    visit.field(key, v);
    Some(next)
}

/// [`number`] of any JSON number text, through [`Number::read`].
#[inline(always)]
fn any_number(b: &[u8], i: usize) -> Option<(FlatValue<'static>, usize)> {
    let (n, j) = Number::read(b, i)?;
    if n.integral {
        if n.int_digits > 18 || (n.negative && n.mantissa == 0) {
            return None;
        }
        // At most 18 digits: below 10^18, exact in an i64.
        let magnitude = n.mantissa as i64;
        let v = if n.negative { -magnitude } else { magnitude };
        return Some((FlatValue::Int(v), j));
    }
    let v = match n.fast() {
        Some(v) => v,
        None => std::str::from_utf8(&b[i..j]).ok()?.parse().ok()?,
    };
    v.is_finite().then_some((FlatValue::Float(v), j))
}

/// The number at `i`, given to `visit` as [`value`] does, if it has one of the shapes telemetry
/// writes, read from at most two words of the payload: a non-negative integer of 1 to 15 digits,
/// or a decimal of 1 to 7 integer digits and 1 to 7 fraction digits, without an exponent. `None`
/// (and nothing given) for any other text, valid or not, which [`Number::read`] then reads.
/// Gives what `Number::read` and [`Number::fast`] give for the same text: at most 14 digits make
/// an integer below 2^53, so a decimal is that integer divided by an exact power of ten,
/// correctly rounded, as the fast path computes it.
#[inline(always)]
fn short_number<'a>(
    b: &[u8],
    i: usize,
    key: Option<usize>,
    visit: &mut impl Visit<'a>,
) -> Option<usize> {
    /// Byte `k` (below 8) of the word `w`.
    fn byte(w: u64, k: usize) -> u8 {
        (w >> (8 * k)) as u8
    }
    let w = word_at(b, i)?;
    let run = digit_run(w);
    // No digit (a sign, or not a number), or a leading zero before more digits (not JSON).
    if run == 0 || (byte(w, 0) == b'0' && run > 1) {
        return None;
    }
    let int = digit_values(w, run);
    if run == 8 {
        // Eight to fifteen digits: an integer only.
        let w2 = word_at(b, i + 8)?;
        let run2 = digit_run(w2);
        if run2 == 8 || matches!(byte(w2, run2), b'.' | b'e' | b'E') {
            return None;
        }
        let v = match run2 {
            0 => int,
            _ => int * POW10[run2] + digit_values(w2, run2),
        };
        visit.int(key, v as i64);
        return Some(i + 8 + run2);
    }
    match byte(w, run) {
        b'e' | b'E' => None,
        b'.' => {
            let f = word_at(b, i + run + 1)?;
            let frac = digit_run(f);
            if frac == 0 || frac == 8 || matches!(byte(f, frac), b'.' | b'e' | b'E') {
                return None;
            }
            let m = int * POW10[frac] + digit_values(f, frac);
            // Below 10^14, so exact as an i64 and as an f64: converted as signed, which x86-64
            // does in one instruction (an unsigned conversion takes four).
            let v = m as i64 as f64 / POW10_F64[frac];
            visit.float(key, v);
            Some(i + run + 1 + frac)
        }
        _ => {
            visit.int(key, int as i64);
            Some(i + run)
        }
    }
}

/// A JSON number's parts: its digits as one integer (while it stays exact) and the decimal
/// exponent of its last digit.
#[derive(Default)]
struct Number {
    negative: bool,
    /// No fraction and no exponent part.
    integral: bool,
    int_digits: usize,
    /// The digits as one integer, leading zeros of a fraction included; exact while
    /// `digits <= 19` (every integer of 19 digits fits a u64).
    mantissa: u64,
    /// Digits read, but not the lone `0` of an integer part below one.
    digits: usize,
    /// The value is `mantissa * 10^exponent` (when exact).
    exponent: i32,
}

impl Number {
    /// The valid JSON number starting at `i`, and the index after it; `None` if there is none.
    #[inline(always)]
    fn read(b: &[u8], i: usize) -> Option<(Number, usize)> {
        let negative = b.get(i) == Some(&b'-');
        let mut n = Number {
            negative,
            integral: true,
            ..Number::default()
        };
        let mut j = i + negative as usize;
        let int_start = j;
        match b.get(j) {
            Some(b'0') => j += 1,
            Some(b'1'..=b'9') => j = n.digits(b, j, false),
            _ => return None,
        }
        n.int_digits = j - int_start;
        if b.get(j) == Some(&b'.') {
            n.integral = false;
            j += 1;
            let from = j;
            j = n.digits(b, j, true);
            if j == from {
                return None;
            }
        }
        if let Some(b'e' | b'E') = b.get(j) {
            n.integral = false;
            j += 1;
            let negative_exponent = match b.get(j) {
                Some(b'-') => {
                    j += 1;
                    true
                }
                Some(b'+') => {
                    j += 1;
                    false
                }
                _ => false,
            };
            let from = j;
            let mut e = 0i32;
            while let Some(&d @ b'0'..=b'9') = b.get(j) {
                // Past 100,000 the number is far outside the fast path's range either way.
                if e < 100_000 {
                    e = e * 10 + (d - b'0') as i32;
                }
                j += 1;
            }
            if j == from {
                return None;
            }
            n.exponent = n
                .exponent
                .saturating_add(if negative_exponent { -e } else { e });
        }
        Some((n, j))
    }

    /// Adds the run of digits at `j` (none if `b[j]` is not one), eight at a time while eight
    /// bytes are left; each digit of a `fraction` also lowers the exponent. Returns the index
    /// after the run.
    #[inline(always)]
    fn digits(&mut self, b: &[u8], mut j: usize, fraction: bool) -> usize {
        while let Some(w) = word_at(b, j) {
            let run = digit_run(w);
            if run == 0 {
                return j;
            }
            if self.digits + run <= 19 {
                self.mantissa = self.mantissa * POW10[run] + digit_values(w, run);
            }
            self.digits += run;
            if fraction {
                self.exponent = self.exponent.saturating_sub(run as i32);
            }
            j += run;
            if run < 8 {
                return j;
            }
        }
        while let Some(&d @ b'0'..=b'9') = b.get(j) {
            self.push(d);
            if fraction {
                self.exponent = self.exponent.saturating_sub(1);
            }
            j += 1;
        }
        j
    }

    #[inline(always)]
    fn push(&mut self, d: u8) {
        if self.digits < 19 {
            self.mantissa = self.mantissa * 10 + (d - b'0') as u64;
        }
        self.digits += 1;
    }

    /// Clinger's fast path: digits that form an integer of at most 2^53 (exact as an `f64`) and
    /// a decimal exponent within ±22 make the number that integer times or divided by an exact
    /// power of ten, and one correctly rounded IEEE operation gives the correctly rounded result.
    /// `None` otherwise (the caller uses the full parser).
    #[inline(always)]
    fn fast(&self) -> Option<f64> {
        if self.digits > 19 || self.mantissa > 1 << 53 {
            return None;
        }
        let m = self.mantissa as f64;
        let v = match self.exponent {
            0..=22 => m * POW10_F64[self.exponent as usize],
            -22..=-1 => m / POW10_F64[(-self.exponent) as usize],
            _ => return None,
        };
        Some(if self.negative { -v } else { v })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path's value of a whole JSON number text, if it takes it.
    fn decimal(text: &[u8]) -> Option<f64> {
        let (n, end) = Number::read(text, 0)?;
        assert_eq!(end, text.len(), "one number");
        n.fast()
    }

    /// The keys the tests know; any other key reads as `?`.
    const KNOWN: [KnownKey; 10] = [
        KnownKey::new("a"),
        KnownKey::new("b"),
        KnownKey::new("c"),
        KnownKey::new("d"),
        KnownKey::new("e"),
        KnownKey::new("f"),
        KnownKey::new("x"),
        KnownKey::new("gpu"),
        KnownKey::new("gpus"),
        KnownKey::new("twenty_one_bytes_long"),
    ];

    fn fields_in<'a>(
        s: &'a str,
        order: &mut KeyOrder,
    ) -> Option<Vec<(&'static str, FlatValue<'a>)>> {
        let mut out = Vec::new();
        scan(s.as_bytes(), &KNOWN, order, &mut |k: Option<usize>, v| {
            out.push((k.map_or("?", |k| KNOWN[k].name()), v))
        })?;
        Some(out)
    }

    fn fields(s: &str) -> Option<Vec<(&'static str, FlatValue<'_>)>> {
        fields_in(s, &mut KeyOrder::default())
    }

    /// What [`short_number`] gives for the text at the start of `b`, and the index after it.
    fn short_number_at_start(b: &[u8]) -> Option<(FlatValue<'static>, usize)> {
        let mut given = None;
        let end = short_number(b, 0, None, &mut |_: Option<usize>, v| given = Some(v))?;
        Some((given.expect("a number given where one is read"), end))
    }

    fn scan_all(b: &[u8]) -> Option<()> {
        scan(
            b,
            &KNOWN,
            &mut KeyOrder::default(),
            &mut |_: Option<usize>, _| {},
        )
    }

    #[test]
    fn known_keys_are_read_in_any_order_and_expected_where_the_last_object_had_them() {
        let mut order = KeyOrder::default();
        let one = r#"{"gpus":2,"x":"v","gpu":"3","other":1,"twenty_one_bytes_long":0}"#;
        let expected = vec![
            ("gpus", FlatValue::Int(2)),
            ("x", FlatValue::Str("v")),
            ("gpu", FlatValue::Str("3")),
            ("?", FlatValue::Int(1)),
            ("twenty_one_bytes_long", FlatValue::Int(0)),
        ];
        // Against the default order, then against the order just learned.
        assert_eq!(fields_in(one, &mut order).unwrap(), expected);
        assert_eq!(order.next[START], 8, "gpus first");
        assert_eq!(order.next[8], 6, "x after gpus");
        assert_eq!(order.next[7], 9, "an unknown key is passed over");
        assert_eq!(fields_in(one, &mut order).unwrap(), expected);
        // `"gpu":` is expected first now, but must not be taken from `"gpus":`.
        let mut order = KeyOrder::default();
        fields_in(r#"{"gpu":"1","a":1}"#, &mut order).unwrap();
        assert_eq!(
            fields_in(r#"{"gpus":"1","gpu":2}"#, &mut order).unwrap(),
            vec![("gpus", FlatValue::Str("1")), ("gpu", FlatValue::Int(2))]
        );
        // A key expected at the very end of a payload, with fewer than 24 bytes left.
        let mut order = KeyOrder::default();
        let short = r#"{"e":1,"f":2}"#;
        assert_eq!(fields_in(short, &mut order), fields_in(short, &mut order));
        assert_eq!(fields(short).unwrap()[1], ("f", FlatValue::Int(2)));
    }

    #[test]
    fn reads_a_flat_object() {
        let f =
            fields(r#" { "a" : "x y", "b":-12,"c":0.5e1, "d":true,"e":null ,"f":0 } "#).unwrap();
        assert_eq!(
            f,
            vec![
                ("a", FlatValue::Str("x y")),
                ("b", FlatValue::Int(-12)),
                ("c", FlatValue::Float(5.0)),
                ("d", FlatValue::Bool),
                ("e", FlatValue::Null),
                ("f", FlatValue::Int(0)),
            ]
        );
        assert_eq!(fields("{}").unwrap(), vec![]);
        let text = r#"{"städte":"Zürich, 東京 and Zagreb","x":"ok"}"#;
        assert_eq!(
            fields(text).unwrap(),
            vec![
                ("?", FlatValue::Str("Zürich, 東京 and Zagreb")),
                ("x", FlatValue::Str("ok")),
            ]
        );
    }

    #[test]
    fn rejects_invalid_utf8_in_any_string_at_any_position() {
        let valid = r#"{"key name":"a value of some length","k":"v"}"#.as_bytes();
        assert!(scan_all(valid).is_some());
        let strings: Vec<usize> = (0..valid.len())
            .filter(|&i| valid[i].is_ascii_alphabetic() || valid[i] == b' ')
            .collect();
        for i in strings {
            let mut bad = valid.to_vec();
            bad[i] = 0xff;
            assert!(scan_all(&bad).is_none(), "byte {i}");
        }
    }

    #[test]
    fn the_decimal_fast_path_rounds_as_the_standard_parser_does() {
        for text in [
            "0.1",
            "0.3",
            "-2.5",
            "1e22",
            "1e-22",
            "123456789012345",
            "0.000123",
            "9007199254740.993",
            "1.7976931348623157e308",
            "5e-324",
            "0.1e1",
            "1E+2",
            "12.5e-3",
            "-0.0",
        ] {
            let expected: f64 = text.parse().unwrap();
            if let Some(v) = decimal(text.as_bytes()) {
                assert_eq!(v.to_bits(), expected.to_bits(), "{text}");
            }
        }
        assert!(
            decimal(b"1234567890123456.5").is_none(),
            "16 digits go to the full parser"
        );
        assert!(decimal(b"1e23").is_none());
    }

    proptest::proptest! {
        /// Every decimal the fast path takes is the standard library's correctly rounded value.
        #[test]
        fn decimals_match_the_standard_parser(m in 0u64..10_000_000_000_000_000, point in 0usize..18, e in -30i32..30) {
            let digits = m.to_string();
            let text = if point > 0 && point < digits.len() {
                format!("{}.{}e{e}", &digits[..point], &digits[point..])
            } else {
                format!("{digits}e{e}")
            };
            let expected: f64 = text.parse().unwrap();
            if let Some(v) = decimal(text.as_bytes()) {
                proptest::prop_assert_eq!(v.to_bits(), expected.to_bits(), "{}", text);
            }
        }

        /// Digits read eight at a time give the numbers, and stop where the digits stop, as a
        /// byte-by-byte reading does.
        #[test]
        fn digit_runs_read_eight_at_a_time_match_a_byte_scan(bytes in proptest::collection::vec(
            proptest::prop_oneof![
                8 => b'0'..=b'9',
                4 => proptest::strategy::Just(b'0'),
                1 => proptest::prelude::any::<u8>(),
            ],
            8..9,
        )) {
            let w = u64::from_le_bytes(bytes[..].try_into().unwrap());
            let run = bytes.iter().take_while(|c| c.is_ascii_digit()).count();
            proptest::prop_assert_eq!(digit_run(w), run);
            if run > 0 {
                let text = std::str::from_utf8(&bytes[..run]).unwrap();
                proptest::prop_assert_eq!(digit_values(w, run), text.parse::<u64>().unwrap());
            }
        }

        /// Whatever the text, a number the short path takes is the one the general path reads,
        /// to the bit and to the byte where it ends.
        #[test]
        fn the_short_number_path_reads_what_the_general_path_reads(
            text in proptest::prop_oneof![
                // The shapes the short path takes, and a digit or two beyond them.
                "(0|[1-9][0-9]{0,16})(\\.[0-9]{1,9})?[,} ][ ,}\"a-z]{8,12}",
                "-?[0-9]{0,17}(\\.[0-9]{0,9})?([eE][+-]?[0-9]{0,3})?[,}. eE0-9a]{0,10}",
            ],
        ) {
            let b = text.as_bytes();
            if let Some((short, end)) = short_number_at_start(b) {
                let (general, general_end) = any_number(b, 0).expect("a number the general path reads");
                proptest::prop_assert_eq!(end, general_end, "{}", text);
                let bits = |v: FlatValue<'_>| match v {
                    FlatValue::Int(i) => (0, i as u64),
                    FlatValue::Float(x) => (1, x.to_bits()),
                    other => panic!("not a number: {other:?}"),
                };
                proptest::prop_assert_eq!(bits(short), bits(general), "{}", text);
            }
        }

        /// Integers and their parts as a byte-by-byte reading gives them, whatever the length of
        /// the digit runs and the bytes after them; the digits as one integer wherever they are
        /// exact (19 digits or fewer), as the text spells it.
        #[test]
        fn numbers_read_eight_digits_at_a_time_match_one_at_a_time(
            int in "[1-9][0-9]{0,24}|0",
            fraction in proptest::option::of("[0-9]{1,24}"),
            tail in "[,} ]{0,9}",
        ) {
            let text = match &fraction {
                Some(f) => format!("{int}.{f}{tail}"),
                None => format!("{int}{tail}"),
            };
            let (n, end) = Number::read(text.as_bytes(), 0).unwrap();
            let mut one = Number::default();
            for &d in int.as_bytes() {
                if int != "0" {
                    one.push(d);
                }
            }
            for &d in fraction.iter().flat_map(|f| f.as_bytes()) {
                one.push(d);
                one.exponent -= 1;
            }
            proptest::prop_assert_eq!(end, text.len() - tail.len());
            proptest::prop_assert_eq!(n.digits, one.digits);
            proptest::prop_assert_eq!(n.exponent, one.exponent);
            if n.digits <= 19 {
                let all = format!("{}{}", if int == "0" { "" } else { &int }, fraction.as_deref().unwrap_or(""));
                proptest::prop_assert_eq!(n.mantissa, one.mantissa);
                proptest::prop_assert_eq!(n.mantissa, all.parse::<u64>().unwrap_or(0));
            }
        }

        /// The scan, 32, 16 or 8 bytes at a time, stops at the first byte JSON does not allow
        /// unescaped, wherever it lies in a block, and tells whether the bytes before it are all
        /// ASCII.
        #[test]
        fn plain_prefix_matches_a_byte_scan(bytes in proptest::collection::vec(
            proptest::prop_oneof![24 => b'a'..=b'z', 1 => proptest::prelude::any::<u8>()],
            0..90,
        )) {
            let expected = bytes
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .map(|at| (at, bytes[..at].is_ascii()));
            proptest::prop_assert_eq!(plain_prefix(&bytes), expected);
        }
    }

    #[test]
    fn the_short_number_path_takes_the_shapes_telemetry_writes_and_nothing_else() {
        let short = |t: &str| short_number_at_start(t.as_bytes());
        assert_eq!(short("0.450,\"sm\""), Some((FlatValue::Float(0.45), 5)));
        assert_eq!(
            short("1712000000000,\"t\""),
            Some((FlatValue::Int(1712000000000), 13))
        );
        assert_eq!(
            short("42949672960,\"power\""),
            Some((FlatValue::Int(42949672960), 11))
        );
        assert_eq!(
            short("12345678}       "),
            Some((FlatValue::Int(12345678), 8))
        );
        assert_eq!(short("1,\"interval\""), Some((FlatValue::Int(1), 1)));
        assert_eq!(short("0}      "), Some((FlatValue::Int(0), 1)));
        assert_eq!(short("300.5}      "), Some((FlatValue::Float(300.5), 5)));
        assert_eq!(
            short("1234567.1234567,"),
            Some((FlatValue::Float(1234567.1234567), 15))
        );
        // Left to the general path: signs, exponents, leading zeros, a point without digits,
        // sixteen digits or eight after the point, and numbers too near the payload's end for
        // a whole word.
        for t in [
            "-1,      ",
            "1e5,     ",
            "1.5E3,   ",
            "01,      ",
            "1.,      ",
            "1234567890123456,",
            "0.12345678,     ",
            "12345678.5,     ",
            "0.5}",
        ] {
            assert_eq!(short(t), None, "{t}");
        }
    }

    #[test]
    fn leaves_everything_else_to_the_full_parser() {
        for s in [
            r#"{"a":"x\"y"}"#,
            r#"{"a":[1]}"#,
            r#"{"a":{"b":1}}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":-0}"#,
            r#"{"a":1e999}"#,
            r#"{"a":1234567890123456789}"#,
            r#"{"a":1,}"#,
            r#"{"a":1} x"#,
            r#"{"a" 1}"#,
            r#"{"a":tru}"#,
            "[1]",
            "\"s\"",
            "",
            "{\"a\":\"\u{1}\"}",
        ] {
            assert!(fields(s).is_none(), "{s}");
        }
        assert!(scan_all(b"{\"a\":\"\xff\"}").is_none());
    }
}
