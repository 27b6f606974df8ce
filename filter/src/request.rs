//! What the picker needs from a request: the `model` of an OpenAI-style JSON body.

use std::ops::Range;

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::errors::Rejection;
use crate::json::{self, skip_ws, string_end, value_end};

/// The OpenAI paths whose bodies must name a model.
const OPENAI_PATHS: [&str; 4] =
    ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"];

/// An OpenAI path however it is spelled, as a model server would still route it:
/// percent escapes decoded (uvicorn decodes `%2F` too), repeated slashes merged, `.` and
/// `..` segments resolved, a trailing slash, the query and the fragment dropped.
pub fn is_openai_path(path: &str) -> bool {
    // Bytes, not chars: `?` and `#` are ASCII, and a char pattern decodes every char.
    let path = path.as_bytes().iter().position(|&b| b == b'?' || b == b'#').map_or(path, |end| &path[..end]);
    if OPENAI_PATHS.contains(&path) {
        return true;
    }
    OPENAI_PATHS.contains(&canonical_path(path).as_str())
}

fn canonical_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                decoded.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8_lossy(&decoded);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/"))
}

/// A request body in this `Content-Encoding` cannot be read by the picker (it would have
/// to decompress it, and the model server would see the compressed one).
pub fn check_encoding(content_encoding: Option<&str>) -> Result<(), Rejection> {
    match content_encoding.map(str::trim) {
        None | Some("") => Ok(()),
        Some(e) if e.eq_ignore_ascii_case("identity") => Ok(()),
        Some(e) => Err(Rejection::unsupported_encoding(e)),
    }
}

/// What serde's validating pass keeps of a body: `model`, and where the prompt's raw JSON
/// is. Every other field is skipped without building values for it, so a 200 KB prompt
/// costs one scan, not a tree of allocations.
struct Kept<'a> {
    model: Option<Value>,
    messages: Option<&'a RawValue>,
    prompt: Option<&'a RawValue>,
}

/// The top-level keys the picker reads (serde unescapes them: `"\u006dodel"` is `model`).
enum Key {
    Model,
    Messages,
    Prompt,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "model" => Key::Model,
                    "messages" => Key::Messages,
                    "prompt" => Key::Prompt,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

impl<'de> Deserialize<'de> for Kept<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Kept<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Kept<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kept<'de>, A::Error> {
                let mut kept = Kept { model: None, messages: None, prompt: None };
                let mut model_seen = false;
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        // Two models would let the picker route by one while the server
                        // serves the other.
                        Key::Model if model_seen => return Err(de::Error::duplicate_field("model")),
                        Key::Model => {
                            model_seen = true;
                            kept.model = map.next_value()?;
                        }
                        // A repeated prompt key keeps its first value (what is hashed
                        // decides no more than a cache guess).
                        Key::Messages if kept.messages.is_none() => kept.messages = map.next_value()?,
                        Key::Prompt if kept.prompt.is_none() => kept.prompt = map.next_value()?,
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(kept)
            }
        }
        d.deserialize_map(V)
    }
}

/// What the picker reads of a request body.
#[derive(Debug, Default, PartialEq)]
pub struct Body<'a> {
    pub model: Option<String>,
    pub prompt: Prompt<'a>,
}

/// The start of a request's prompt, as the client wrote it.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Prompt<'a> {
    /// The raw JSON of `messages` (GIE hashes the JSON of the messages too) or of the
    /// completion `prompt`, at most the bytes asked for. Nothing is decoded or copied: the
    /// same conversation always gives the same bytes, and a longer one starts with them.
    pub bytes: &'a [u8],
    /// Where a chat prompt's first user message ends in `bytes` (the byte after it), if it
    /// ends within them: `first_user_message_end`, found by the body's one scan.
    pub first_user_end: Option<usize>,
}

impl<'a> Prompt<'a> {
    /// A prompt read on its own (not by `parse`): its first user message found by a scan
    /// of its bytes.
    pub fn of(bytes: &'a [u8]) -> Self {
        Prompt { bytes, first_user_end: first_user_message_end(bytes, bytes.len()) }
    }
}

/// The model and up to `prompt_bytes` of the prompt (0: the prompt is not read at all).
/// On an OpenAI path the body must be a JSON object with a string `model`; elsewhere a
/// body without one is routed by load alone (`model: None`).
pub fn parse<'a>(path: &str, body: &'a [u8], prompt_bytes: usize) -> Result<Body<'a>, Rejection> {
    let strict = is_openai_path(path);
    // serde would also read a struct from a JSON array; a request body must be an object.
    let is_object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if !is_object {
        return match strict {
            true => Err(Rejection::bad_request("invalid_json", "The request body must be a JSON object.")),
            false => Ok(Body::default()),
        };
    }
    // serde skips the fields it does not keep without checking their UTF-8, which every
    // JSON reader behind the picker would refuse: check it first (fuzzing found this).
    // Checked once, with SIMD: serde reading a `str` checks no byte again.
    let text = simdutf8::basic::from_utf8(body);
    if strict && text.is_err() {
        return Err(Rejection::bad_request("invalid_json", "The request body is not valid UTF-8."));
    }
    // Nearly every request is valid: one validating scan reads it. Whatever it does not
    // take, serde reads again, to say what is wrong (or, off an OpenAI path, to route by
    // what it can).
    if text.is_ok() {
        if let Some(read) = read_valid(body, prompt_bytes) {
            return Ok(read);
        }
    }
    read_by_serde(strict, text.ok(), body, prompt_bytes)
}

/// The body as the picker reads it, if it is JSON serde accepts, an object with one
/// non-empty string `model`; otherwise `None`, and serde says why. Reads what
/// `read_by_serde` reads (the tests compare the two): keys as serde unescapes them, the
/// first non-null `messages` or `prompt`. One scan: the prompt's first user message is
/// found as the scan passes it.
fn read_valid(body: &[u8], prompt_bytes: usize) -> Option<Body<'_>> {
    let (mut model, mut messages, mut prompt) = (None, None, None);
    // The walk found where each key ends: its value is read from that range, not scanned again.
    json::walk_object(body, |key, at| match &*unquoted(&body[key])? {
        // Two models would let the picker route by one while the server serves the other
        // (serde calls it a duplicate field).
        b"model" if model.is_some() => None,
        b"model" => {
            let end = string_end(body, at)?;
            model = Some(String::from_utf8(unquoted(&body[at..end])?.into_owned()).ok().filter(|m| !m.is_empty())?);
            Some(end)
        }
        b"messages" if messages.is_none() => {
            let (end, read) = read_prompt(body, at, prompt_bytes)?;
            messages = read;
            Some(end)
        }
        b"prompt" if prompt.is_none() => {
            let (end, read) = read_prompt(body, at, prompt_bytes)?;
            prompt = read;
            Some(end)
        }
        _ => value_end(body, at),
    })?;
    Some(Body { model: Some(model?), prompt: messages.or(prompt).unwrap_or_default() })
}

/// The value at `at` read as a prompt: where it ends, and the prompt (`None` for `null`,
/// which keeps no prompt, as serde reads it).
fn read_prompt(body: &[u8], at: usize, prompt_bytes: usize) -> Option<(usize, Option<Prompt<'_>>)> {
    let mut first_user = FirstUser::new(at, prompt_bytes);
    let end = match body.get(at) {
        Some(b'[') => json::array_end(body, at, |message| first_user.read(body, message))?,
        _ => value_end(body, at)?,
    };
    let raw = &body[at..end];
    let given = raw != b"null";
    Some((end, given.then(|| Prompt { bytes: &raw[..raw.len().min(prompt_bytes)], first_user_end: first_user.end() })))
}

/// What serde's validating pass makes of a body: the model, or the error to answer with.
fn read_by_serde<'a>(strict: bool, text: Option<&'a str>, body: &'a [u8], prompt_bytes: usize) -> Result<Body<'a>, Rejection> {
    // One pass: serde validates the whole body, keeps `model`, and gives the span of the
    // prompt's raw JSON.
    let kept = match text {
        Some(text) => serde_json::from_str::<Kept>(text),
        None => serde_json::from_slice::<Kept>(body),
    };
    let raw_prompt = kept.as_ref().ok().and_then(|k| k.messages.or(k.prompt)).map(|raw| raw.get().as_bytes());
    let prompt = Prompt::of(raw_prompt.map_or(&[][..], |raw| &raw[..raw.len().min(prompt_bytes)]));
    let model = match kept.map(|k| k.model) {
        Ok(Some(Value::String(m))) if !m.is_empty() => Some(m),
        _ if !strict => None,
        Ok(None) => {
            return Err(Rejection::bad_request("missing_model", "The request body must name a `model`."))
        }
        Ok(Some(_)) => {
            return Err(Rejection::bad_request("invalid_model", "The `model` field must be a non-empty string."))
        }
        Err(e) => {
            return Err(Rejection::bad_request(
                "invalid_json",
                format!("The request body is not a valid JSON object: {e}"),
            ))
        }
    };
    Ok(Body { model, prompt })
}

/// Where member `key`'s value starts in the object starting at `at`; values of earlier
/// members are skipped, the value itself is not scanned.
fn member_start(b: &[u8], at: usize, key: &[u8]) -> Option<usize> {
    if b.get(at) != Some(&b'{') {
        return None;
    }
    let mut i = at + 1;
    loop {
        i = skip_ws(b, i);
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(b, i)?;
        // A key spelled with escapes (`"\u006dodel"`) is the same key to every JSON reader.
        let same = unquoted(&b[i..key_end]).is_some_and(|k| *k == *key);
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        if same {
            return Some(i);
        }
        i = skip_ws(b, value_end(b, i)?);
        match b.get(i) {
            Some(b',') => i += 1,
            _ => return None,
        }
    }
}

/// Where a chat prompt's first user message ends (the byte after it), if within `within`
/// bytes of `prompt`, the raw JSON of `messages`. Every later turn of the conversation
/// repeats the prompt up to there, while the end of each turn's prompt changes, so a
/// block before it names the conversation in every turn. System and developer messages
/// before it are passed over: many conversations share them. `None` for a completion's
/// prompt, or a first user message that runs on past `within`.
pub fn first_user_message_end(prompt: &[u8], within: usize) -> Option<usize> {
    let head = prompt.get(..prompt.len().min(within))?;
    let at = skip_ws(head, 0);
    let mut first_user = FirstUser::new(0, head.len());
    // A head cut inside the array is no valid array; the messages it holds were read.
    let _ = json::array_end(head, at, |message| first_user.read(head, message));
    first_user.end()
}

/// Reads a chat prompt's messages as the scan passes them, to where its first user
/// message ends, counted from the prompt's `start` and if within `within` bytes of it.
struct FirstUser {
    start: usize,
    within: usize,
    /// `Some` once decided.
    found: Option<Option<usize>>,
}

impl FirstUser {
    fn new(start: usize, within: usize) -> Self {
        FirstUser { start, within, found: None }
    }

    /// Scans the message at `at` and returns where it ends. Until the first user message
    /// is found, a message's members are walked for its role: the scan reads each byte
    /// once, whatever order the keys come in.
    fn read(&mut self, b: &[u8], at: usize) -> Option<usize> {
        if self.found.is_some() || b.get(at) != Some(&b'{') {
            let end = value_end(b, at)?;
            // A message is an object; anything else names no conversation.
            self.found.get_or_insert(None);
            return Some(end);
        }
        // Of repeated `role` keys the first counts (only the anchor depends on it); one
        // that is no string is no system's.
        let mut role = None;
        let end = json::object_end(b, at, |key, value| {
            let end = value_end(b, value)?;
            if role.is_none() && unquoted(&b[key]).is_some_and(|k| *k == *b"role") {
                role = Some(unquoted(&b[value..end]).filter(|_| b[value] == b'"'));
            }
            Some(end)
        })?;
        let system = matches!(role.flatten().as_deref(), Some(b"system" | b"developer"));
        let end_in_prompt = end - self.start;
        if end_in_prompt > self.within {
            self.found = Some(None);
        } else if !system {
            self.found = Some(Some(end_in_prompt));
        }
        Some(end)
    }

    fn end(&self) -> Option<usize> {
        self.found.flatten()
    }
}

/// A whole JSON string's value as bytes, escapes read as every JSON reader reads them
/// (`quoted`: its quotes included, the string valid). In place unless it holds an escape,
/// and not checked as UTF-8: keys and roles are only compared with ASCII names, where
/// bytes say what text would (checking them cost more than the rest of reading them), and
/// the one value kept as text, `model`, is checked by its reader.
fn unquoted(quoted: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    let inner = quoted.get(1..quoted.len().checked_sub(1)?)?;
    if inner.contains(&b'\\') {
        serde_json::from_slice::<String>(quoted).ok().map(|s| std::borrow::Cow::Owned(s.into_bytes()))
    } else {
        Some(std::borrow::Cow::Borrowed(inner))
    }
}

/// The byte range of the top-level `"model"` string value (quotes included), for
/// rewriting it in place. The body was already validated as JSON.
pub fn model_value_span(body: &[u8]) -> Option<Range<usize>> {
    let at = member_start(body, skip_ws(body, 0), b"model")?;
    (body.get(at) == Some(&b'"')).then(|| Some(at..string_end(body, at)?)).flatten()
}

/// `body` with its top-level `model` replaced by `model`, or `None` if it has none.
pub fn with_model(body: &[u8], model: &str) -> Option<Vec<u8>> {
    let span = model_value_span(body)?;
    let quoted = serde_json::to_string(model).ok()?;
    let mut out = Vec::with_capacity(body.len() + quoted.len());
    out.extend_from_slice(&body[..span.start]);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(&body[span.end..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test;

    fn model_of(path: &str, body: &[u8]) -> Result<Option<String>, Rejection> {
        parse(path, body, 0).map(|b| b.model)
    }

    #[test]
    fn reads_model_from_openai_bodies() {
        let body = br#"{"messages":[{"role":"user","content":"hi \"model\": x"}],"model":"llama","stream":true}"#;
        assert_eq!(model_of("/v1/chat/completions", body).unwrap().as_deref(), Some("llama"));
        assert_eq!(model_of("/v1/completions?x=1", br#"{"model":"sql\u002dlora"}"#).unwrap().as_deref(), Some("sql-lora"));
        assert_eq!(model_of("/custom", br#"{"model":"m"}"#).unwrap().as_deref(), Some("m"));
    }

    #[test]
    fn invalid_utf8_anywhere_in_the_body_is_refused() {
        // Found by the `body` fuzz target: bad bytes in a field serde skips unread.
        let found = b"\t\n{   \"model\"\r \t   :\",,/\"\n, \t \"mocel\"\r \t   :\",\xd4\xcf\"\n\n}";
        assert_eq!(model_of("/v1/chat/completions", found).unwrap_err().code, "invalid_json");
    }

    #[test]
    fn compressed_bodies_are_415() {
        assert!(check_encoding(None).is_ok() && check_encoding(Some("identity")).is_ok() && check_encoding(Some(" IDENTITY ")).is_ok());
        for e in ["gzip", "br", "deflate, gzip", "zstd"] {
            let r = check_encoding(Some(e)).unwrap_err();
            assert_eq!((r.status, r.code), (415, "unsupported_content_encoding"), "{e}");
        }
    }

    #[test]
    fn every_spelling_of_an_openai_path_is_one() {
        for path in [
            "/v1/chat/completions",
            "/v1/chat/completions/",
            "/v1//chat/completions",
            "//v1/chat/completions?stream=1",
            "/v1/chat%2Fcompletions",
            "/v1/%63hat/completions",
            "/v1/./chat/completions",
            "/x/../v1/completions",
            "/v1/embeddings#top",
        ] {
            assert!(is_openai_path(path), "{path}");
            assert_eq!(model_of(path, b"{}").unwrap_err().code, "missing_model", "{path}");
        }
        for path in ["/v1/models", "/health", "/v2/chat/completions", "/v1/chat/completions2", "/%zz"] {
            assert!(!is_openai_path(path), "{path}");
        }
    }

    #[test]
    fn a_rewrite_finds_the_model_however_its_key_is_spelled() {
        let body = br#"{"messages":[],"\u006dodel":"chat"}"#;
        assert_eq!(model_of("/v1/chat/completions", body).unwrap().as_deref(), Some("chat"));
        let rewritten = with_model(body, "llama").expect("the key found");
        assert_eq!(serde_json::from_slice::<Value>(&rewritten).unwrap()["model"], "llama");
        // Two spellings of one key: a duplicate field, and so not a valid request.
        assert_eq!(model_of("/v1/chat/completions", br#"{"model":"a","\u006dodel":"b"}"#).unwrap_err().code, "invalid_json");
    }

    #[test]
    fn openai_paths_require_a_string_model() {
        let code = |body: &[u8]| model_of("/v1/chat/completions", body).unwrap_err();
        assert_eq!(code(b"{").code, "invalid_json");
        assert_eq!(code(b"[1]").code, "invalid_json");
        assert_eq!(code(b"\xff\xfe").code, "invalid_json");
        assert_eq!(code(br#"{"messages":[]}"#).code, "missing_model");
        assert_eq!(code(br#"{"model":7}"#).code, "invalid_model");
        assert_eq!(code(br#"{"model":""}"#).code, "invalid_model");
        assert_eq!(code(br#"{"model":"a"} trailing"#).status, 400);
    }

    #[test]
    fn other_paths_route_without_a_model() {
        assert_eq!(model_of("/tokenize", b"not json").unwrap(), None);
        assert_eq!(model_of("/v2/x", br#"{"model":3}"#).unwrap(), None);
    }

    #[test]
    fn reads_the_prompt_as_far_as_asked() {
        let chat = br#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi \"there\""}],"stream":true}"#;
        let b = parse("/v1/chat/completions", chat, 1000).unwrap();
        assert_eq!(b.model.as_deref(), Some("m"));
        let raw = br#"[{"role":"system","content":"be brief"},{"role":"user","content":"hi \"there\""}]"#;
        assert_eq!(b.prompt.bytes, raw, "the raw JSON of `messages`");
        assert_eq!(parse("/v1/chat/completions", chat, 5).unwrap().prompt.bytes, br#"[{"ro"#);
        assert!(parse("/v1/chat/completions", chat, 0).unwrap().prompt.bytes.is_empty());
        let completion = br#"{"prompt":["a","b"],"model":"m"}"#;
        assert_eq!(parse("/v1/completions", completion, 100).unwrap().prompt.bytes, br#"["a","b"]"#);
        assert_eq!(parse("/v1/completions", br#"{"prompt":"a b","model":"m"}"#, 100).unwrap().prompt.bytes, br#""a b""#);
        // No prompt at all: nothing to hash, still routed by model.
        let none = br#"{"model":"m","input":"x"}"#;
        assert_eq!(parse("/v1/embeddings", none, 100).unwrap(), Body { model: Some("m".into()), prompt: Prompt::default() });
    }

    #[test]
    fn a_longer_conversation_starts_with_the_shorter_ones_prompt() {
        let turn = |n: usize| {
            let messages: Vec<Value> = (0..n).map(|i| serde_json::json!({"role": "user", "content": format!("message {i}")})).collect();
            serde_json::to_vec(&serde_json::json!({"model": "m", "messages": messages, "max_tokens": 5})).unwrap()
        };
        let (two, three) = (turn(2), turn(3));
        let (p2, p3) = (parse("/v1/chat/completions", &two, 4096).unwrap().prompt.bytes, parse("/v1/chat/completions", &three, 4096).unwrap().prompt.bytes);
        // Up to the end of the second message, the bytes are the same.
        let shared = p2.iter().zip(p3).take_while(|(a, b)| a == b).count();
        assert_eq!(&p2[..shared], br#"[{"content":"message 0","role":"user"},{"content":"message 1","role":"user"}"#);
    }

    #[test]
    fn rewrites_only_the_top_level_model() {
        let body = br#"{"messages":[{"content":"\"model\": \"x\"","model":"inner"}], "max_tokens": 3, "model" : "chat", "n": {"model":"y"}}"#;
        let out = with_model(body, "llama-\"8b\"").unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "llama-\"8b\"");
        assert_eq!(v["messages"][0]["model"], "inner");
        assert_eq!(v["n"]["model"], "y");
        assert_eq!(v["max_tokens"], 3);
        assert_eq!(with_model(br#"{"messages":[]}"#, "a"), None);
        assert_eq!(with_model(br#"{"model":7}"#, "a"), None);
        assert_eq!(with_model(br#"{"a":[1,{"b":"}"}],"model":"m"}"#, "z").unwrap(), br#"{"a":[1,{"b":"}"}],"model":"z"}"#);
    }

    #[test]
    fn a_conversations_first_user_message_ends_where_every_turn_agrees() {
        let first = br#"[{"role":"user","content":"hello"}]"#;
        let second = br#"[{"role":"user","content":"hello"},{"role":"assistant","content":"hi"},{"role":"user","content":"more"}]"#;
        let end = first_user_message_end(first, 1000);
        assert_eq!(end, Some(first.len() - 1), "just after the first message's brace");
        assert_eq!(first_user_message_end(second, 1000), end, "the next turn agrees");
        let system = br#" [ {"role": "system", "content": "be brief"} , {"content":"x\"}", "role":"user"} ]"#;
        assert_eq!(first_user_message_end(system, 1000), Some(system.len() - 2), "past the system message");
        assert_eq!(first_user_message_end(system, 60), None, "the user message runs past the limit");
        assert_eq!(first_user_message_end(br#""a completion prompt""#, 1000), None);
        for bad in [&b"["[..], b"[1", b"[{\"role\":", b"", b"[{\"role\":\"system\"}}"] {
            assert_eq!(first_user_message_end(bad, 1000), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(first_user_message_end(b"[{}]", 1000), Some(3), "a message without a role is the user's");
    }

    #[test]
    fn the_validating_scan_reads_what_serde_reads() {
        let valid: [&[u8]; 11] = [
            br#"{"model":"m","messages":[{"role":"user","content":"hi \"there\"\n\u00e9"}],"stream":true}"#,
            br#" {"messages" : null, "prompt": ["a", 1.5e-3, {"x": [true, false, null]}], "\u006dodel": "m\/x"} "#,
            b"{\n  \"model\": \"m\",\n  \"max_tokens\": -0,\n  \"messages\": []\n}",
            br#"{"prompt":"a","model":"\u00e9","prompt":"b","messages":null,"messages":[1]}"#,
            br#"{"model":"m","x":"\ud800 a lone surrogate, skipped unread"}"#,
            br#"{"model":"m","messages":{}}"#,
            "{\"model\":\"caf\u{e9}\",\"messages\":[{\"content\":\"\u{1f600}\"}]}".as_bytes(),
            br#"{"model":"m"}"#,
            br#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"content":"hi","role":"user"},{"role":"assistant"}]}"#,
            br#"{"messages":[ {"content":"s","\u0072ole":"developer"} , {"role":"user","content":[{"type":"text","text":"a"}]}],"model":"m"}"#,
            br#"{"model":"m","messages":[{"role":7,"content":"x","role":"system"},{"role":"user"}],"prompt":[{"role":"user"}]}"#,
        ];
        // The first user message is found within the prompt read, or not at all: both
        // readers, at limits either side of where the messages end.
        const LIMITS: [usize; 3] = [48, 90, 4096];
        fn serde(b: &[u8], limit: usize) -> Option<Body<'_>> {
            read_by_serde(true, std::str::from_utf8(b).ok(), b, limit).ok()
        }
        for body in valid {
            for limit in LIMITS {
                let fast = read_valid(body, limit);
                assert!(fast.is_some(), "a valid request takes the scan: {}", String::from_utf8_lossy(body));
                assert_eq!(fast, serde(body, limit), "{} at {limit}", String::from_utf8_lossy(body));
            }
        }
        // Where each ends: just past the text given, in the raw `messages`.
        let found = |body: &[u8], limit| read_valid(body, limit).unwrap().prompt.first_user_end;
        let past = |body: &[u8], text: &str| {
            let prompt = read_valid(body, 4096).unwrap().prompt.bytes;
            prompt.windows(text.len()).position(|w| w == text.as_bytes()).map(|at| at + text.len())
        };
        assert_eq!(found(valid[8], 4096), past(valid[8], r#""role":"user"}"#), "after the system message, keys in either order");
        assert_eq!(found(valid[9], 4096), past(valid[9], r#""text":"a"}]}"#), "a role's key spelled with an escape");
        assert_eq!(found(valid[10], 4096), past(valid[10], r#""role":"system"}"#), "the first role counts; a number is no system's");
        assert_eq!(found(valid[0], 4096), past(valid[0], r#"\u00e9"}"#), "a lone user message");
        assert_eq!(found(valid[8], 4096 + 1).map(|end| found(valid[8], end - 1)), Some(None), "past the limit");
        // What serde refuses, the scan leaves to it.
        let refused: [&[u8]; 7] = [
            br#"{"model":"a","model":"a"}"#,
            br#"{"model":"a","\u006dodel":"b"}"#,
            br#"{"model":null,"model":"a"}"#,
            br#"{"model":""}"#,
            br#"{"model":["m"]}"#,
            br#"{"model":"\ud800"}"#,
            br#"{"model":"m"} {}"#,
        ];
        for body in refused {
            assert_eq!((read_valid(body, 48), serde(body, 48)), (None, None), "{}", String::from_utf8_lossy(body));
        }
        // Bytes made from them by random edits: what the scan takes, serde takes the same
        // way (what it leaves, serde reads or refuses; either is the answer).
        let alphabet = b"{}[]\",:\\ \n\tu0e9-+.Etrufalsn\x01m";
        let tokens: [&[u8]; 7] = [
            br#""model":"n","#,
            br#","\u006dodel":"o""#,
            br#""messages":[1],"#,
            br#","prompt":null"#,
            b"null",
            br#"{"role":"system"},"#,
            br#""role":"user","#,
        ];
        let mut rng = crate::rng::Rng::new(7);
        let (mut taken, mut tried) = (0, 0);
        for body in valid {
            for _ in 0..4_000 {
                let mut b = body.to_vec();
                for _ in 0..1 + rng.below(3) {
                    let at = rng.below(b.len() + 1);
                    let c = alphabet[rng.below(alphabet.len())];
                    match rng.below(4) {
                        0 if at < b.len() => b[at] = c,
                        1 if at < b.len() => drop(b.remove(at)),
                        2 => drop(b.splice(at..at, tokens[rng.below(tokens.len())].iter().copied())),
                        _ => b.insert(at, c),
                    }
                }
                let Ok(_) = std::str::from_utf8(&b) else { continue };
                tried += 1;
                let limit = LIMITS[rng.below(LIMITS.len())];
                if let Some(fast) = read_valid(&b, limit) {
                    taken += 1;
                    assert_eq!(Some(fast), serde(&b, limit), "{} at {limit}", String::from_utf8_lossy(&b));
                }
            }
        }
        assert!(taken > tried / 20 && taken < tried, "the edits make both kinds: {taken} of {tried} taken");
    }

    #[test]
    fn the_raw_scanner_survives_any_bytes() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a\"b"},"c"]},{"content":"d"}],"prompt":["x"]}"#;
        assert_eq!(parse("/v1/chat/completions", body, 14).unwrap().prompt.bytes, br#"[{"role":"user"#);
        for cut in 0..body.len() {
            let _ = parse("/v1/chat/completions", &body[..cut], 100);
            let _ = model_value_span(&body[..cut]);
        }
        let junk: [&[u8]; 6] = [br#"{"messages":[{"content":"\"}]"#, br#"{""#, br#"{"a""#, b"[[[[", br#"{"messages":[,,,]}"#, br#""\"#];
        for j in junk {
            let _ = parse("/v1/chat/completions", j, 100);
        }
    }
}
