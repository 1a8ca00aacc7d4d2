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
    // One UTF-8 check of the whole payload lets every string below be sliced without another.
    let text = std::str::from_utf8(payload).ok()?;
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return (skip_ws(b, i + 1) == b.len()).then_some(());
    }
    loop {
        let (key, next) = string(text, i)?;
        i = skip_ws(b, next);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let (value, next) = value(text, i)?;
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
fn string(text: &str, i: usize) -> Option<(&str, usize)> {
    let b = text.as_bytes();
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let start = i + 1;
    let end = start + plain_prefix(&b[start..])?;
    // The payload is valid UTF-8 and both ends are ASCII, so these are character boundaries.
    (b[end] == b'"').then(|| (&text[start..end], end + 1))
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

/// Length of the longest prefix of plain bytes; `None` if every byte is plain.
fn plain_prefix(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| !PLAIN[c as usize])
}

fn value(text: &str, i: usize) -> Option<(FlatValue<'_>, usize)> {
    let b = text.as_bytes();
    match *b.get(i)? {
        b'"' => string(text, i).map(|(s, n)| (FlatValue::Str(s), n)),
        b't' => literal(b, i, b"true", FlatValue::Bool),
        b'f' => literal(b, i, b"false", FlatValue::Bool),
        b'n' => literal(b, i, b"null", FlatValue::Null),
        b'-' | b'0'..=b'9' => number(text, i),
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
fn number(text: &str, i: usize) -> Option<(FlatValue<'_>, usize)> {
    let b = text.as_bytes();
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
        None => text[i..j].parse().ok()?,
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

        /// The table-driven scan stops at the first byte JSON does not allow unescaped.
        #[test]
        fn plain_prefix_matches_a_byte_scan(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            let expected = bytes.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
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
