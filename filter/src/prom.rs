//! Prometheus text exposition format (version 0.0.4), read without copying the page.
//!
//! Samples borrow from the page; label values are unescaped only when asked for. A line
//! that does not parse is reported and skipped, so one bad line does not hide the rest:
//! the caller decides whether a page with errors is still usable.

use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    labels: Vec<(&'a str, &'a str)>,
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

impl<'a> Sample<'a> {
    /// The value of a label, unescaped; `None` when the sample does not carry it.
    pub fn label(&self, name: &str) -> Option<Cow<'a, str>> {
        self.labels
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, raw)| unescape(raw))
    }

    pub fn labels(&self) -> impl Iterator<Item = (&'a str, Cow<'a, str>)> + '_ {
        self.labels.iter().map(|(n, raw)| (*n, unescape(raw)))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LineError {
    pub line: usize,
    pub reason: &'static str,
}

/// Every sample of a page, in order, with an error for each line that is not a sample,
/// a comment or blank.
pub fn parse(page: &str) -> impl Iterator<Item = Result<Sample<'_>, LineError>> {
    parse_only(page, |_| true)
}

/// Like `parse`, but a line whose metric name `wanted` turns down is skipped without
/// reading its labels or value: most of a vLLM page is histogram buckets the picker never
/// reads, and splitting their labels was most of a scrape's cost.
pub fn parse_only<'a>(
    page: &'a str,
    wanted: impl Fn(&str) -> bool + 'a,
) -> impl Iterator<Item = Result<Sample<'a>, LineError>> + 'a {
    lines(page).enumerate().filter_map(move |(i, line)| {
        // Most lines of a page are comments: one byte tells.
        if line.as_bytes().first().is_none_or(|&b| b == b'#') {
            return None;
        }
        let line = line.strip_suffix('\r').unwrap_or(line).trim_start_matches([' ', '\t']);
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        // A quoted name (`{"my.metric", …}`) is only known once parsed.
        if !line.starts_with('{') {
            // Bytes, not chars: a name is ASCII, and this runs on every line of the page.
            let end = line.bytes().position(|b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b':'));
            if !wanted(&line[..end.unwrap_or(line.len())]) {
                return None;
            }
        }
        Some(parse_sample(line).map_err(|reason| LineError { line: i + 1, reason }))
    })
}

/// The page's lines (`\n`-separated, as `str::split` gives them), found by memchr 16
/// bytes at a time (SIMD) instead of std's search a word at a time.
fn lines(page: &str) -> impl Iterator<Item = &str> {
    let mut start = Some(0);
    std::iter::from_fn(move || {
        let from = start?;
        let rest = page.get(from..)?;
        match memchr::memchr(b'\n', rest.as_bytes()) {
            Some(end) => {
                start = Some(from + end + 1);
                rest.get(..end)
            }
            None => {
                start = None;
                Some(rest)
            }
        }
    })
}

fn parse_sample(line: &str) -> Result<Sample<'_>, &'static str> {
    let mut rest = line;
    let mut labels = Vec::new();
    let name = if rest.starts_with('{') {
        // The newer form for names outside the legacy charset: {"my.metric", label="v"}.
        ""
    } else {
        let end = rest
            .find(|c: char| !is_name_char(c))
            .unwrap_or(rest.len());
        let (name, after) = rest.split_at(end);
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err("bad metric name");
        }
        rest = after;
        name
    };
    let mut name = name;
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels, &mut name)?;
    }
    if name.is_empty() {
        return Err("missing metric name");
    }
    let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
    let value = fields.next().ok_or("missing value")?;
    let value = parse_float(value).ok_or("bad value")?;
    let timestamp_ms = match fields.next() {
        None => None,
        Some(t) => Some(t.parse::<i64>().map_err(|_| "bad timestamp")?),
    };
    if fields.next().is_some() {
        return Err("trailing text after timestamp");
    }
    Ok(Sample { name, labels, value, timestamp_ms })
}

/// Reads `label="value", …}` and returns what follows the closing brace. A quoted item
/// without `=` is the metric name (the quoted-name form).
fn parse_labels<'a>(
    mut rest: &'a str,
    labels: &mut Vec<(&'a str, &'a str)>,
    name: &mut &'a str,
) -> Result<&'a str, &'static str> {
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        let label_name;
        if rest.starts_with('"') {
            let (quoted, after) = take_quoted(rest)?;
            let after = after.trim_start_matches([' ', '\t']);
            if let Some(after_eq) = after.strip_prefix('=') {
                label_name = quoted;
                rest = after_eq;
            } else {
                if !name.is_empty() || quoted.contains('\\') {
                    return Err("unexpected quoted name");
                }
                *name = quoted;
                rest = after;
                rest = rest.strip_prefix(',').unwrap_or(rest);
                continue;
            }
        } else {
            let end = rest.find(|c: char| !is_label_char(c)).unwrap_or(rest.len());
            if end == 0 {
                return Err("bad label name");
            }
            label_name = &rest[..end];
            rest = rest[end..].trim_start_matches([' ', '\t']);
            rest = rest.strip_prefix('=').ok_or("expected '=' after label name")?;
        }
        rest = rest.trim_start_matches([' ', '\t']);
        let (value, after) = take_quoted(rest)?;
        labels.push((label_name, value));
        rest = after.trim_start_matches([' ', '\t']);
        if let Some(after_comma) = rest.strip_prefix(',') {
            rest = after_comma;
        } else if !rest.starts_with('}') {
            return Err("expected ',' or '}' after label value");
        }
    }
}

/// `"…"` with backslash escapes; returns the raw inside and what follows.
fn take_quoted(s: &str) -> Result<(&str, &str), &'static str> {
    let body = s.strip_prefix('"').ok_or("expected '\"'")?;
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Ok((&body[..i], &body[i + 1..])),
            _ => i += 1,
        }
    }
    Err("unterminated label value")
}

fn unescape(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

fn parse_float(s: &str) -> Option<f64> {
    // Go's ParseFloat (what client_golang and prometheus read with) takes "+Inf", "-Inf",
    // "NaN" in any case; Rust's parse does too, but also "infinity", which is harmless.
    s.parse::<f64>().ok()
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test;

    fn one(line: &str) -> Sample<'_> {
        let mut all: Vec<_> = parse(line).collect();
        assert_eq!(all.len(), 1, "{line}");
        all.remove(0).unwrap()
    }

    #[test]
    fn lines_are_what_split_gives() {
        for page in ["", "\n", "a", "a\n", "a\nb", "a\r\nb\r\n", "\n\nx\n\n", "é\n✓"] {
            assert_eq!(lines(page).collect::<Vec<_>>(), page.split('\n').collect::<Vec<_>>(), "{page:?}");
        }
    }

    #[test]
    fn plain_and_labelled_samples() {
        let s = one("vllm:num_requests_waiting 3");
        assert_eq!((s.name, s.value, s.timestamp_ms), ("vllm:num_requests_waiting", 3.0, None));
        let s = one(r#"vllm:num_requests_running{engine="0",model_name="Qwen/Qwen3-4B"} 2.0"#);
        assert_eq!(s.label("model_name").as_deref(), Some("Qwen/Qwen3-4B"));
        assert_eq!(s.label("engine").as_deref(), Some("0"));
        assert_eq!(s.label("absent"), None);
    }

    #[test]
    fn escapes_specials_exponents_timestamps() {
        let s = one(r#"m{a="x\"y\\z\nw", b = "c,}d" ,} 1.7382173358407154e+09 1700000000000"#);
        assert_eq!(s.label("a").as_deref(), Some("x\"y\\z\nw"));
        assert_eq!(s.label("b").as_deref(), Some("c,}d"));
        assert_eq!(s.value, 1.7382173358407154e9);
        assert_eq!(s.timestamp_ms, Some(1_700_000_000_000));
        assert!(one("m NaN").value.is_nan());
        assert_eq!(one("m +Inf").value, f64::INFINITY);
        assert_eq!(one("m -Inf").value, f64::NEG_INFINITY);
        assert_eq!(one(r#"h_bucket{le="+Inf"} 5"#).label("le").as_deref(), Some("+Inf"));
        assert_eq!(one("m{} -1.5e-3\r").value, -0.0015);
    }

    #[test]
    fn quoted_metric_name() {
        let s = one(r#"{"my.metric", engine="0"} 4"#);
        assert_eq!(s.name, "my.metric");
        assert_eq!(s.label("engine").as_deref(), Some("0"));
    }

    #[test]
    fn comments_and_blank_lines_are_not_samples() {
        let page = "# HELP m help text with {braces} \"quotes\"\n# TYPE m gauge\n\n  \nm 1\n# EOF\n";
        let all: Vec<_> = parse(page).collect();
        assert_eq!(all.len(), 1);
    }

    #[test]
    fn bad_lines_are_reported_with_their_number_and_others_kept() {
        let page = "m 1\n{{{\nm{a=\"x} 2\nm{a=x} 3\n9m 1\nm\nm 1 2 3\nm abc\nm 1 ts\nok 7";
        let all: Vec<_> = parse(page).collect();
        let errors: Vec<usize> = all.iter().filter_map(|r| r.as_ref().err().map(|e| e.line)).collect();
        assert_eq!(errors, vec![2, 3, 4, 5, 6, 7, 8, 9]);
        let good: Vec<f64> = all.iter().filter_map(|r| r.as_ref().ok().map(|s| s.value)).collect();
        assert_eq!(good, vec![1.0, 7.0]);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap, deterministic fuzz: every prefix of awkward inputs.
        let inputs = [
            "m{a=\"\\", "m{a=\"\\\"}", "{\"", "{\"x\"", "{\"x\"=", "m{\"a\"=\"b\"} 1", "m{,} 1",
            "m{a=\"é\\ü\"} 1", "\u{feff}m 1", "m\t1\t2", "m{a=\"1\"b=\"2\"} 3",
        ];
        for input in inputs {
            for end in (0..=input.len()).filter(|&i| input.is_char_boundary(i)) {
                for r in parse(&input[..end]) {
                    if let Ok(s) = r {
                        let _ = s.labels().count();
                    }
                }
            }
        }
    }

    #[test]
    fn unwanted_series_are_skipped_unread() {
        let page = "a_bucket{le=\"1\"} 3\nb{x=\"y\"} 2\nbroken{ 1\n{\"quoted.name\"} 4\n";
        let got: Vec<_> = parse_only(page, |n| n == "b").collect();
        assert_eq!(got.len(), 2, "b, and the quoted line that must be parsed to be named: {got:?}");
        assert_eq!(got[0].as_ref().map(|s| s.name), Ok("b"));
        assert!(parse_only(page, |n| n == "broken").any(|r| r.is_err()), "a wanted bad line is still reported");
    }
}
