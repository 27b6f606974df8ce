//! A validating scan of JSON text that finds where things are and decodes nothing. It
//! accepts what serde_json accepts when it skips a value unread (the request reader's
//! tests check it against serde), and it looks at a string's bytes up to 64 at a time
//! with wasm's SIMD: a prompt is nearly all string, and serde's scan of it was most of a
//! long request's cost. UTF-8 is the caller's to check.

use std::ops::Range;

/// Walks the object that `b` is (one JSON object, nothing but whitespace around it): as
/// `object_end`, and then nothing but whitespace.
pub fn walk_object(b: &[u8], member: impl FnMut(Range<usize>, usize) -> Option<usize>) -> Option<()> {
    let end = object_end(b, skip_ws(b, 0), member)?;
    (skip_ws(b, end) == b.len()).then_some(())
}

/// The index just past the object starting at `start`, if it is a valid one. Its members
/// are walked in order: `member(key, value_start)` is given each key's range (quotes
/// included) and where its value starts, and scans the value its own way, returning where
/// it ends (`None`: not valid, or refused).
pub fn object_end(b: &[u8], start: usize, mut member: impl FnMut(Range<usize>, usize) -> Option<usize>) -> Option<usize> {
    container_end(b, start, (b'{', b'}'), |i| {
        let key = i..string_end(b, i)?;
        let value = value_start(b, key.end)?;
        member(key, value)
    })
}

/// The index just past the array starting at `start`, if it is a valid one. Its elements
/// are scanned in order by `element(element_start)`, which returns where each ends; what
/// it learns of the first ones holds even where the array turns out cut short.
pub fn array_end(b: &[u8], start: usize, element: impl FnMut(usize) -> Option<usize>) -> Option<usize> {
    container_end(b, start, (b'[', b']'), element)
}

/// A container's items separated by commas between its `brackets`, each scanned by `item`
/// (given where it starts, it returns where it ends).
fn container_end(b: &[u8], start: usize, (open, close): (u8, u8), mut item: impl FnMut(usize) -> Option<usize>) -> Option<usize> {
    if b.get(start) != Some(&open) {
        return None;
    }
    let mut i = skip_ws(b, start + 1);
    if b.get(i) == Some(&close) {
        return Some(i + 1);
    }
    loop {
        i = skip_ws(b, item(i)?);
        match *b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            c if c == close => return Some(i + 1),
            _ => return None,
        }
    }
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

/// The containers a scan is inside, innermost last, by their closing bytes. The first 64
/// are bits of a word (1: an object), so that the few levels of a request need no heap;
/// deeper ones are on the heap, never on the VM's stack.
#[derive(Default)]
struct Open {
    depth: usize,
    shallow: u64,
    deep: Vec<u8>,
}

impl Open {
    fn push(&mut self, close: u8) {
        match self.depth {
            d @ 0..64 if close == b'}' => self.shallow |= 1 << d,
            d @ 0..64 => self.shallow &= !(1 << d),
            _ => self.deep.push(close),
        }
        self.depth += 1;
    }

    fn last(&self) -> Option<u8> {
        match self.depth.checked_sub(1)? {
            top @ 0..64 => Some(if self.shallow >> top & 1 == 1 { b'}' } else { b']' }),
            _ => self.deep.last().copied(),
        }
    }

    fn pop(&mut self) {
        if self.depth > 64 {
            self.deep.pop();
        }
        self.depth = self.depth.saturating_sub(1);
    }
}

/// The index just past the JSON value starting at `start`, if it is a valid one.
/// Containers are followed with a stack (`Open`), not by recursion: any depth is safe.
pub fn value_end(b: &[u8], start: usize) -> Option<usize> {
    // Most values a request's walk skips are strings (contents, roles): no container
    // bookkeeping for them.
    if b.get(start) == Some(&b'"') {
        return string_end(b, start);
    }
    let mut open = Open::default();
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
            let Some(close) = open.last() else { return Some(i) };
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
///
/// The bytes are searched a window at a time for stops (quotes, backslashes, control
/// bytes), and the escapes within a window are stepped over in its mask: a prompt's
/// `\n` and `\"` every few dozen bytes do not restart the search.
pub fn string_end(b: &[u8], start: usize) -> Option<usize> {
    if b.get(start) != Some(&b'"') {
        return None;
    }
    let mut i = start + 1;
    loop {
        // Most strings (keys, roles, models) end within 16 bytes: a wide window only
        // past them.
        let (mut mask, width) = stops(b, i, i > start + 16);
        if width == 0 {
            return None; // the input ended inside the string
        }
        let mut next = i + width;
        while mask != 0 {
            let at = i + mask.trailing_zeros() as usize;
            mask &= mask - 1;
            match *b.get(at)? {
                b'"' => return Some(at + 1),
                b'\\' => {
                    let end = escape_end(b, at)?;
                    if end >= next {
                        next = end;
                        break;
                    }
                    // The escaped byte (a quote, a backslash) is no stop.
                    mask &= u64::MAX << (end - i);
                }
                c if c < 0x20 => return None,
                _ => {} // a false mark of the word path: see `stops`
            }
        }
        i = next;
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

/// How many bytes `stops` looks at in one go, at most (when asked for a wide window).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
const WINDOW: usize = 64;
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
const WINDOW: usize = 8;

/// The bytes of `b[i..]` that `ends_plain_run`, as a mask (bit k for `b[i + k]`) over a
/// window of up to `WINDOW` bytes if `wide`, 16 if not, and the window's width (0 at the
/// end of `b`). The word path may also mark a byte right after a stop: callers look at
/// each byte marked.
fn stops(b: &[u8], i: usize, wide: bool) -> (u64, usize) {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        use core::arch::wasm32::{u8x16_bitmask, u8x16_eq, u8x16_lt, u8x16_splat, v128, v128_load, v128_or};
        let at = |k: usize| -> u64 {
            // SAFETY: callers check that b[i + k..i + k + 16] is in bounds; v128_load reads
            // unaligned addresses.
            let v: v128 = unsafe { v128_load(b.as_ptr().add(i + k).cast()) };
            let marks = v128_or(
                v128_or(u8x16_eq(v, u8x16_splat(b'"')), u8x16_eq(v, u8x16_splat(b'\\'))),
                u8x16_lt(v, u8x16_splat(0x20)),
            );
            u64::from(u8x16_bitmask(marks)) << k
        };
        if wide && i + WINDOW <= b.len() {
            return (at(0) | at(16) | at(32) | at(48), WINDOW);
        }
        if i + 16 <= b.len() {
            return (at(0), 16);
        }
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        let _ = wide; // words are the one width here
        if let Some(chunk) = b.get(i..i + WINDOW) {
            // A high bit marks each byte below 0x20 or equal to a quote or a backslash; a
            // borrow may also mark the byte after a true one.
            const ONES: u64 = u64::MAX / 255;
            const HIGH: u64 = ONES << 7;
            let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x;
            let x = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            let marks = (below(x, 0x20) | below(x ^ (ONES * u64::from(b'"')), 1) | below(x ^ (ONES * u64::from(b'\\')), 1)) & HIGH;
            // Each byte's high bit gathered into bits 0..8.
            return ((marks >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56, WINDOW);
        }
    }
    let tail = b.get(i..).unwrap_or_default();
    let mask = tail.iter().enumerate().filter(|(_, &c)| ends_plain_run(c)).fold(0, |m, (k, _)| m | 1 << k);
    (mask, tail.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test;

    #[test]
    fn every_stop_is_marked_and_no_plain_byte_before_one() {
        // Two stops at every pair of positions, after every offset, across the widths of
        // every path (64- and 16-byte SIMD windows, 8-byte words, the scalar tail): the
        // marks against the byte-by-byte definition.
        let plain = |k: usize| [b'a', 0x20, 0x7f, 0xc3, 0xa9, b'!', 0xff, b'#', b'\x1f' + 1, b'"' + 1, b'\\' - 1][k % 11];
        for (first, second) in [(b'"', b'\\'), (b'\\', b'\\'), (0x00, b'"'), (0x1f, b'\n')] {
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 80, 130] {
                for (x, y) in (0..len).flat_map(|x| [x, (x * 7 + 3) % len.max(1)].map(move |y| (x, y))) {
                    let mut b: Vec<u8> = (0..len).map(plain).collect();
                    b[x] = first;
                    b[y] = second;
                    for (from, wide) in (0..len).flat_map(|from| [(from, false), (from, true)]) {
                        let (mask, width) = stops(&b, from, wide);
                        let most = if wide { WINDOW } else { WINDOW.min(16) };
                        assert!(width >= 1 && width <= most.min(len - from), "width {width} from {from} of {len}");
                        for k in 0..width {
                            let is_stop = ends_plain_run(b[from + k]);
                            let marked = mask >> k & 1 == 1;
                            let after_a_stop = b[from..from + k].iter().any(|&c| ends_plain_run(c));
                            assert!(!is_stop || marked, "stop at {} unmarked (from {from}, len {len})", from + k);
                            assert!(!marked || is_stop || after_a_stop, "plain {} marked first (from {from}, len {len})", from + k);
                        }
                        assert_eq!(mask.checked_shr(width as u32).unwrap_or(0), 0, "no mark past the window");
                    }
                    assert_eq!(stops(&b, len, true), (0, 0));
                }
            }
        }
    }

    #[test]
    fn escapes_at_every_offset_across_windows() {
        // Strings of plain runs of every length between escapes of every kind, so escapes
        // (and their escaped quotes and backslashes) fall on and across window borders.
        for escape in [&br#"\""#[..], br#"\\"#, br#"\n"#, br#"\u00e9"#, br#"\/"#] {
            for run in 0..70 {
                let mut v = b"\"".to_vec();
                for _ in 0..5 {
                    v.extend(std::iter::repeat_n(b'x', run));
                    v.extend_from_slice(escape);
                }
                v.push(b'"');
                assert_eq!(string_end(&v, 0), Some(v.len()), "{}", String::from_utf8_lossy(&v));
                assert!(serde_json::from_slice::<String>(&v).is_ok());
                // Cut before its closing quote, or with a raw newline in the last run: invalid.
                assert_eq!(string_end(&v[..v.len() - 1], 0), None);
                if run > 0 {
                    let mut raw = v.clone();
                    raw[v.len() - 2 - escape.len()] = b'\n';
                    assert_eq!(string_end(&raw, 0), None, "{}", String::from_utf8_lossy(&raw));
                }
            }
        }
    }

    #[test]
    fn long_strings_end_where_a_byte_walk_ends_them() {
        // The definition, a byte at a time; serde must read whatever it accepts.
        fn walk(b: &[u8]) -> Option<usize> {
            let mut i = 1;
            loop {
                match *b.get(i)? {
                    b'"' => return Some(i + 1),
                    b'\\' => i = escape_end(b, i)?,
                    c if c < 0x20 => return None,
                    _ => i += 1,
                }
            }
        }
        let pieces: [&[u8]; 14] =
            [b"a", b"plain text ", "\u{e9}".as_bytes(), b"\\\"", b"\\\\", b"\\n", b"\\u00e9", b"\\/", b"\"", b"\\", b"\\x", b"\\u12", b"\n", b"\x01"];
        let mut rng = crate::rng::Rng::new(3);
        let mut ended = 0;
        for _ in 0..20_000 {
            let mut v = b"\"".to_vec();
            let len = rng.below(400);
            while v.len() < len {
                // Mostly prose and valid escapes; now and then what ends or breaks a string.
                let k = if rng.below(40) == 0 { 8 + rng.below(6) } else { rng.below(8) };
                v.extend_from_slice(pieces[k]);
            }
            v.extend_from_slice(b"\" tail");
            let end = walk(&v);
            assert_eq!(string_end(&v, 0), end, "{:?}", String::from_utf8_lossy(&v));
            if let Some(end) = end {
                ended += 1;
                assert!(serde_json::from_slice::<String>(&v[..end]).is_ok(), "{:?}", String::from_utf8_lossy(&v[..end]));
            }
        }
        assert!(ended > 5_000, "most strings end: {ended}");
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
        let members = |b: &[u8]| {
            let mut got = vec![];
            walk_object(b, |key, at| {
                let end = value_end(b, at)?;
                got.push((key, at..end));
                Some(end)
            })
            .map(|()| got)
        };
        let b = br#" { "b" : [1, "x"], "a":{"b":2},"b":null } "#;
        let text = |r: &Range<usize>| std::str::from_utf8(&b[r.clone()]).unwrap();
        let got: Vec<(&str, &str)> = members(b).unwrap().iter().map(|(k, v)| (text(k), text(v))).collect();
        assert_eq!(got, [(r#""b""#, r#"[1, "x"]"#), (r#""a""#, r#"{"b":2}"#), (r#""b""#, "null")]);
        assert_eq!(members(b"{}"), Some(vec![]));
        for bad in [&b"[]"[..], b"{} x", b"{\"a\":1", b"{\"a\":1,}", b"\x0c{}", b"{\"a\" 1}"] {
            assert_eq!(members(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        // A member refused stops the walk.
        assert_eq!(walk_object(br#"{"a":1,"b":2}"#, |_, at| (at < 8).then_some(at + 1)), None);
    }

    #[test]
    fn an_array_gives_its_elements_as_the_scan_passes_them() {
        let elements = |b: &[u8]| {
            let mut got = vec![];
            let end = array_end(b, 0, |at| {
                let end = value_end(b, at)?;
                got.push(String::from_utf8_lossy(&b[at..end]).into_owned());
                Some(end)
            });
            (end, got)
        };
        let b = br#"[ {"a": [1, 2]} ,"x",[] , null]"#;
        assert_eq!(elements(b), (Some(b.len()), vec![r#"{"a": [1, 2]}"#.into(), r#""x""#.into(), "[]".into(), "null".into()]));
        assert_eq!(elements(b"[ ]"), (Some(3), vec![]));
        // Cut short or broken after the first element: the array is not valid, the
        // element was still seen.
        for bad in [&br#"[{"a":1}, {"b""#[..], br#"[{"a":1} 2]"#, br#"[{"a":1},]"#] {
            assert_eq!(elements(bad), (None, vec![r#"{"a":1}"#.into()]), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(elements(b"{}"), (None, vec![]));
        // Walked with plain value scans, arrays and objects end where `value_end` says.
        for v in [&b"[1,[2,[3]],{\"k\":[]}]"[..], b"[]", b"[\"]\"]", b"[1 2]", b"[1,]"] {
            assert_eq!(array_end(v, 0, |at| value_end(v, at)), value_end(v, 0), "{}", String::from_utf8_lossy(v));
        }
        for v in [&br#"{"a":{"b":[]},"c":"}"}"#[..], b"{}", br#"{"a"}"#, br#"{"a":1,}"#, br#"{"a":1 "b":2}"#] {
            assert_eq!(object_end(v, 0, |_, at| value_end(v, at)), value_end(v, 0), "{}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn containers_close_in_order_past_the_inline_levels() {
        // Objects and arrays alternating to depths either side of the 64 kept in a word,
        // closed right and, once, wrong at every depth.
        for depth in [1, 2, 63, 64, 65, 66, 130] {
            let (mut open, mut close) = (String::new(), String::new());
            for d in 0..depth {
                let (o, c) = if d % 2 == 0 { (r#"{"k":"#, "}") } else { ("[", "]") };
                open.push_str(o);
                close.insert_str(0, c);
            }
            let v = format!("{open}1{close}");
            assert_eq!(value_end(v.as_bytes(), 0), Some(v.len()), "depth {depth}");
            for wrong in 0..depth {
                let mut bad = v.clone().into_bytes();
                let at = bad.len() - 1 - wrong;
                bad[at] = if bad[at] == b'}' { b']' } else { b'}' };
                assert_eq!(value_end(&bad, 0), None, "depth {depth}, wrong closer {wrong} from the end");
                assert!(serde_json::from_slice::<serde::de::IgnoredAny>(&bad).is_err());
            }
        }
    }

    #[test]
    fn nesting_costs_no_stack() {
        let deep = [b"[".repeat(200_000), b"]".repeat(200_000)].concat();
        assert_eq!(value_end(&deep, 0), Some(deep.len()));
        assert_eq!(value_end(&deep[..deep.len() - 1], 0), None);
    }
}
