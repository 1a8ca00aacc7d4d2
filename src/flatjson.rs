//! A single-pass reader of flat JSON objects: the fast path of the native decoder.
//!
//! Usage events are one flat object of short ASCII strings and numbers. This reader handles
//! exactly that and nothing else: an object whose values are strings without escapes, numbers,
//! `true`, `false` or `null`. For anything else (escapes, nested values, invalid JSON, numbers it
//! cannot represent exactly as serde_json would) it answers `None`, and the caller decodes the
//! payload with serde_json, which then also words the rejection. Strings are borrowed from the
//! payload; nothing is allocated.

/// A value as it appeared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FlatValue<'a> {
    Str(&'a str),
    Int(i64),
    Float(f64),
    Bool,
    Null,
}

/// Calls `field` with each key and value of the flat object in `payload`, in order; `None` when
/// the payload is not such an object (the caller falls back to a full JSON parser).
pub fn scan<'a>(payload: &'a [u8], mut field: impl FnMut(&'a str, FlatValue<'a>)) -> Option<()> {
    // Outside strings only ASCII bytes of the grammar are accepted, so checking each string's
    // bytes (below) makes the whole payload valid UTF-8 without a separate pass over it.
    let b = payload;
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return (skip_ws(b, i + 1) == b.len()).then_some(());
    }
    loop {
        let (key, next) = string(b, i)?;
        i = skip_ws(b, next);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let (value, next) = value(b, i)?;
        field(key, value);
        i = skip_ws(b, next);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return (skip_ws(b, i + 1) == b.len()).then_some(()),
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// A string without escapes starting at `i` (the opening quote); the text and the index after it.
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
/// every byte is plain. Reads eight bytes at a time while eight are left.
fn plain_prefix(b: &[u8]) -> Option<(usize, bool)> {
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

fn value(b: &[u8], i: usize) -> Option<(FlatValue<'_>, usize)> {
    match *b.get(i)? {
        b'"' => string(b, i).map(|(s, n)| (FlatValue::Str(s), n)),
        b't' => literal(b, i, b"true", FlatValue::Bool),
        b'f' => literal(b, i, b"false", FlatValue::Bool),
        b'n' => literal(b, i, b"null", FlatValue::Null),
        b'-' | b'0'..=b'9' => number(b, i),
        _ => None,
    }
}

fn literal<'a>(
    b: &[u8],
    i: usize,
    word: &[u8],
    v: FlatValue<'a>,
) -> Option<(FlatValue<'a>, usize)> {
    b[i..].starts_with(word).then_some((v, i + word.len()))
}

/// A JSON number at `i`. Integers of up to 18 digits are exact `Int`s; other numbers go through
/// the standard library's correctly rounded parser, as serde_json's `float_roundtrip` does.
/// Negative zero, longer integers and non-finite results are left to serde_json.
fn number(b: &[u8], i: usize) -> Option<(FlatValue<'static>, usize)> {
    let mut j = i;
    let negative = b[j] == b'-';
    if negative {
        j += 1;
    }
    let int_start = j;
    match b.get(j) {
        Some(b'0') => j += 1,
        Some(b'1'..=b'9') => {
            while let Some(b'0'..=b'9') = b.get(j) {
                j += 1;
            }
        }
        _ => return None,
    }
    let int_end = j;
    let mut integral = true;
    if b.get(j) == Some(&b'.') {
        integral = false;
        j = digits(b, j + 1)?;
    }
    if let Some(b'e' | b'E') = b.get(j) {
        integral = false;
        j += 1;
        if let Some(b'+' | b'-') = b.get(j) {
            j += 1;
        }
        j = digits(b, j)?;
    }
    if integral {
        let digits = &b[int_start..int_end];
        if digits.len() > 18 {
            return None;
        }
        let magnitude = digits.iter().fold(0i64, |v, &d| v * 10 + (d - b'0') as i64);
        if negative && magnitude == 0 {
            return None;
        }
        let v = if negative { -magnitude } else { magnitude };
        return Some((FlatValue::Int(v), j));
    }
    let v = match decimal(&b[i..j]) {
        Some(v) => v,
        None => std::str::from_utf8(&b[i..j]).ok()?.parse().ok()?,
    };
    v.is_finite().then_some((FlatValue::Float(v), j))
}

/// The index after the ASCII digits starting at `j`; `None` if there are none.
fn digits(b: &[u8], mut j: usize) -> Option<usize> {
    let from = j;
    while let Some(b'0'..=b'9') = b.get(j) {
        j += 1;
    }
    (j > from).then_some(j)
}

/// Clinger's fast path: a number whose digits form an integer below 2^53 and whose decimal
/// exponent is within ±22 is that integer times or divided by an exact power of ten, and one
/// correctly rounded IEEE operation gives the correctly rounded result. `None` otherwise (the
/// caller uses the full parser). `b` is a valid JSON number.
fn decimal(b: &[u8]) -> Option<f64> {
    const POW10: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    let (negative, b) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, b),
    };
    let mut mantissa = 0u64;
    let mut digits = 0;
    let mut exponent = 0i32;
    let mut k = 0;
    let mut in_fraction = false;
    while k < b.len() {
        match b[k] {
            d @ b'0'..=b'9' => {
                if mantissa > 0 || d != b'0' {
                    digits += 1;
                }
                if digits > 15 {
                    return None;
                }
                mantissa = mantissa * 10 + (d - b'0') as u64;
                exponent -= in_fraction as i32;
            }
            b'.' => in_fraction = true,
            _ => break,
        }
        k += 1;
    }
    if k < b.len() {
        // An exponent part: [eE][+-]?digits.
        let mut e = &b[k + 1..];
        let sign = match e.first() {
            Some(b'-') => {
                e = &e[1..];
                -1
            }
            Some(b'+') => {
                e = &e[1..];
                1
            }
            _ => 1,
        };
        if e.len() > 3 {
            return None;
        }
        let value = e.iter().fold(0i32, |v, &d| v * 10 + (d - b'0') as i32);
        exponent += sign * value;
    }
    let m = mantissa as f64;
    let v = match exponent {
        0..=22 => m * POW10[exponent as usize],
        -22..=-1 => m / POW10[(-exponent) as usize],
        _ => return None,
    };
    Some(if negative { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(s: &str) -> Option<Vec<(String, FlatValue<'_>)>> {
        let mut out = Vec::new();
        scan(s.as_bytes(), |k, v| out.push((k.to_string(), v)))?;
        Some(out)
    }

    #[test]
    fn reads_a_flat_object() {
        let f =
            fields(r#" { "a" : "x y", "b":-12,"c":0.5e1, "d":true,"e":null ,"f":0 } "#).unwrap();
        assert_eq!(
            f,
            vec![
                ("a".into(), FlatValue::Str("x y")),
                ("b".into(), FlatValue::Int(-12)),
                ("c".into(), FlatValue::Float(5.0)),
                ("d".into(), FlatValue::Bool),
                ("e".into(), FlatValue::Null),
                ("f".into(), FlatValue::Int(0)),
            ]
        );
        assert_eq!(fields("{}").unwrap(), vec![]);
        let text = r#"{"städte":"Zürich, 東京 and Zagreb","x":"ok"}"#;
        assert_eq!(
            fields(text).unwrap(),
            vec![
                ("städte".into(), FlatValue::Str("Zürich, 東京 and Zagreb")),
                ("x".into(), FlatValue::Str("ok")),
            ]
        );
    }

    #[test]
    fn rejects_invalid_utf8_in_any_string_at_any_position() {
        let valid = r#"{"key name":"a value of some length","k":"v"}"#.as_bytes();
        assert!(scan(valid, |_, _| {}).is_some());
        let strings: Vec<usize> = (0..valid.len())
            .filter(|&i| valid[i].is_ascii_alphabetic() || valid[i] == b' ')
            .collect();
        for i in strings {
            let mut bad = valid.to_vec();
            bad[i] = 0xff;
            assert!(scan(&bad, |_, _| {}).is_none(), "byte {i}");
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

        /// The word-at-a-time scan stops at the first byte JSON does not allow unescaped, wherever
        /// it lies in a word, and tells whether the bytes before it are all ASCII.
        #[test]
        fn plain_prefix_matches_a_byte_scan(bytes in proptest::collection::vec(
            proptest::prop_oneof![8 => b'a'..=b'z', 1 => proptest::prelude::any::<u8>()],
            0..40,
        )) {
            let expected = bytes
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .map(|at| (at, bytes[..at].is_ascii()));
            proptest::prop_assert_eq!(plain_prefix(&bytes), expected);
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
        assert!(scan(b"{\"a\":\"\xff\"}", |_, _| {}).is_none());
    }
}
