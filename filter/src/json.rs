//! A validating scan of JSON text that finds where things are and decodes nothing. It
//! accepts what serde_json accepts when it skips a value unread (the request reader's
//! tests check it against serde), and it looks at a string's bytes 16 at a time with
//! wasm's SIMD: a prompt is nearly all string, and serde's scan of it was most of a long
//! request's cost. UTF-8 is the caller's to check.

use std::ops::Range;

/// A member of an object: its key (quotes included) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub key: Range<usize>,
    pub value: Range<usize>,
}

/// The members of the object that `b` is, in order, if `b` is one JSON object with
/// nothing but whitespace around it.
pub fn object_members(b: &[u8]) -> Option<Vec<Member>> {
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let mut members = Vec::new();
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            let key = i..string_end(b, i)?;
            let start = value_start(b, key.end)?;
            let value = start..value_end(b, start)?;
            i = skip_ws(b, value.end);
            members.push(Member { key, value });
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (skip_ws(b, i) == b.len()).then_some(members)
}

/// JSON's whitespace (not form feed, which `u8::is_ascii_whitespace` also counts).
pub fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\n' | b'\t' | b'\r')) {
        i += 1;
    }
    i
}

/// Where the value of the member whose key ends at `key_end` starts (past the colon).
fn value_start(b: &[u8], key_end: usize) -> Option<usize> {
    let colon = skip_ws(b, key_end);
    (b.get(colon) == Some(&b':')).then(|| skip_ws(b, colon + 1))
}

/// The index just past the JSON value starting at `start`, if it is a valid one.
/// Containers are followed with a stack of their closing bytes, not by recursion: any
/// depth costs heap, never the VM's stack.
pub fn value_end(b: &[u8], start: usize) -> Option<usize> {
    let mut open: Vec<u8> = Vec::new();
    let mut i = start;
    loop {
        i = match *b.get(i)? {
            b'"' => string_end(b, i)?,
            b'-' | b'0'..=b'9' => number_end(b, i)?,
            b't' => literal_end(b, i, b"true")?,
            b'f' => literal_end(b, i, b"false")?,
            b'n' => literal_end(b, i, b"null")?,
            opening @ (b'[' | b'{') => {
                let close = if opening == b'[' { b']' } else { b'}' };
                let inner = skip_ws(b, i + 1);
                if b.get(inner) == Some(&close) {
                    inner + 1
                } else {
                    open.push(close);
                    i = if close == b'}' { value_start(b, string_end(b, inner)?)? } else { inner };
                    continue;
                }
            }
            _ => return None,
        };
        // A value ended: a comma starts the next one in its container, closing bytes end
        // containers.
        loop {
            let Some(&close) = open.last() else { return Some(i) };
            i = skip_ws(b, i);
            match *b.get(i)? {
                b',' => {
                    let next = skip_ws(b, i + 1);
                    i = if close == b'}' { value_start(b, string_end(b, next)?)? } else { next };
                    break;
                }
                c if c == close => {
                    open.pop();
                    i += 1;
                }
                _ => return None,
            }
        }
    }
}

/// `b[start]` should open a string: the index just past its closing quote, if the
/// string is valid (no raw control character, known escapes).
pub fn string_end(b: &[u8], start: usize) -> Option<usize> {
    if b.get(start) != Some(&b'"') {
        return None;
    }
    let mut i = start + 1;
    loop {
        i = plain_run_end(b, i);
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i = escape_end(b, i)?,
            _ => return None,
        }
    }
}

/// `b[i]` is a backslash: the index past its escape, if JSON has it. A `\u` escape's
/// code point is not checked (serde skips a lone surrogate too; Python's json reads it).
fn escape_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i + 1)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(i + 2),
        b'u' => b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit).then_some(i + 6),
        _ => None,
    }
}

fn number_end(b: &[u8], start: usize) -> Option<usize> {
    let digits_end = |from: usize| from + b.get(from..).map_or(0, |r| r.iter().take_while(|c| c.is_ascii_digit()).count());
    let mut i = start + usize::from(b.get(start) == Some(&b'-'));
    i = match *b.get(i)? {
        // One leading zero, and then no digit (the byte after it must end the number).
        b'0' => i + 1,
        b'1'..=b'9' => digits_end(i),
        _ => return None,
    };
    if b.get(i) == Some(&b'.') {
        let end = digits_end(i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1 + usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
        let end = digits_end(i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}

fn literal_end(b: &[u8], start: usize, literal: &[u8]) -> Option<usize> {
    (b.get(start..start + literal.len()) == Some(literal)).then_some(start + literal.len())
}

/// A byte that ends a run of plain string characters: a quote, a backslash, or a
/// control character (JSON allows none raw in a string).
fn ends_plain_run(c: u8) -> bool {
    c == b'"' || c == b'\\' || c < 0x20
}

/// The first byte at or after `from` that `ends_plain_run`, or `b.len()`.
fn plain_run_end(b: &[u8], from: usize) -> usize {
    let mut i = from;
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        use core::arch::wasm32::{u8x16_bitmask, u8x16_eq, u8x16_lt, u8x16_splat, v128_any_true, v128_load, v128_or};
        while i + 16 <= b.len() {
            // SAFETY: b[i..i + 16] is in bounds, and v128_load reads unaligned addresses.
            let v = unsafe { v128_load(b.as_ptr().add(i).cast()) };
            let stops = v128_or(
                v128_or(u8x16_eq(v, u8x16_splat(b'"')), u8x16_eq(v, u8x16_splat(b'\\'))),
                u8x16_lt(v, u8x16_splat(0x20)),
            );
            if v128_any_true(stops) {
                return i + u8x16_bitmask(stops).trailing_zeros() as usize;
            }
            i += 16;
        }
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        // Eight bytes at a time: a high bit marks each byte that is below 0x20 or equal to
        // a quote or a backslash (false marks only ever follow a true one, and the first
        // mark is the one taken).
        const ONES: u64 = u64::MAX / 255;
        const HIGH: u64 = ONES << 7;
        let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x;
        while let Some(chunk) = b.get(i..i + 8) {
            let x = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            let marks = (below(x, 0x20) | below(x ^ (ONES * u64::from(b'"')), 1) | below(x ^ (ONES * u64::from(b'\\')), 1)) & HIGH;
            if marks != 0 {
                return i + marks.trailing_zeros() as usize / 8;
            }
            i += 8;
        }
    }
    i + b[i..].iter().position(|&c| ends_plain_run(c)).unwrap_or(b.len() - i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test;

    #[test]
    fn a_plain_run_ends_at_the_first_quote_backslash_or_control_byte() {
        // Every position of every stop byte, after every offset: the SIMD and word paths
        // against the byte-by-byte definition.
        for stop in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
            for len in 0..40 {
                for at in 0..=len {
                    let mut b: Vec<u8> = (0..len).map(|k| [b'a', 0x20, 0x7f, 0xc3, 0xa9, b'!', 0xff, b'#'][k % 8]).collect();
                    if at < len {
                        b[at] = stop;
                    }
                    for from in 0..=len {
                        let want = from + b[from..].iter().position(|&c| ends_plain_run(c)).unwrap_or(len - from);
                        assert_eq!(plain_run_end(&b, from), want, "stop {stop:#x} at {at} of {len}, from {from}");
                    }
                }
            }
        }
    }

    #[test]
    fn values_end_where_json_says() {
        let ok: [&[u8]; 14] = [
            br#""a\"b\\""#,
            br#""\u00e9\n\/""#,
            b"0",
            b"-0.5e+10",
            b"12E3",
            b"true",
            b"null",
            b"[]",
            b"[ ]",
            b"{ }",
            br#"[1, {"a": [true, "}"]}, []]"#,
            br#"{"a":{"b":{"c":[[["deep"]]]}}}"#,
            br#""\ud800""#,
            "\"caf\u{e9} \u{1f600}\"".as_bytes(),
        ];
        for v in ok {
            assert_eq!(value_end(v, 0), Some(v.len()), "{}", String::from_utf8_lossy(v));
            assert!(serde_json::from_slice::<serde::de::IgnoredAny>(v).is_ok(), "serde agrees: {}", String::from_utf8_lossy(v));
        }
        let bad: [&[u8]; 16] = [
            b"\"a", b"\"a\tb\"", br#""\x""#, br#""\u12g4""#, b"01", b"1.", b"1e", b"-", b"+1", b"tru", b"[1,]", br#"{"a"}"#,
            br#"{"a":1,}"#, br#"{a:1}"#, b"[1 2]", b"[",
        ];
        for v in bad {
            // A prefix that is a value on its own (`0` of `01`) ends before the bytes.
            assert_ne!(value_end(v, 0), Some(v.len()), "{}", String::from_utf8_lossy(v));
            assert!(serde_json::from_slice::<serde::de::IgnoredAny>(v).is_err(), "serde agrees: {}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn an_object_gives_its_members_in_order() {
        let b = br#" { "b" : [1, "x"], "a":{"b":2},"b":null } "#;
        let members = object_members(b).unwrap();
        let text = |r: &Range<usize>| std::str::from_utf8(&b[r.clone()]).unwrap();
        let got: Vec<(&str, &str)> = members.iter().map(|m| (text(&m.key), text(&m.value))).collect();
        assert_eq!(got, [(r#""b""#, r#"[1, "x"]"#), (r#""a""#, r#"{"b":2}"#), (r#""b""#, "null")]);
        assert_eq!(object_members(b"{}"), Some(vec![]));
        for bad in [&b"[]"[..], b"{} x", b"{\"a\":1", b"{\"a\":1,}", b"\x0c{}", b"{\"a\" 1}"] {
            assert_eq!(object_members(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn nesting_costs_no_stack() {
        let deep = [b"[".repeat(200_000), b"]".repeat(200_000)].concat();
        assert_eq!(value_end(&deep, 0), Some(deep.len()));
        assert_eq!(value_end(&deep[..deep.len() - 1], 0), None);
    }
}
