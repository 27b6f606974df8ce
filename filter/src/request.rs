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
    let path = path.split(['?', '#']).next().unwrap_or(path);
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
    /// The start of the prompt as the client wrote it: the raw JSON of `messages` (GIE
    /// hashes the JSON of the messages too) or of the completion `prompt`, at most the
    /// bytes asked for. Nothing is decoded or copied: the same conversation always gives
    /// the same bytes, and a longer one starts with them.
    pub prompt: &'a [u8],
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
/// first non-null `messages` or `prompt`.
fn read_valid(body: &[u8], prompt_bytes: usize) -> Option<Body<'_>> {
    let (mut model, mut messages, mut prompt) = (None, None, None);
    for member in json::object_members(body)? {
        let value = &body[member.value.clone()];
        let given = (value != b"null").then_some(value);
        match &*string_value(body, member.key.start)? {
            // Two models would let the picker route by one while the server serves the
            // other (serde calls it a duplicate field).
            "model" if model.is_some() => return None,
            "model" => model = Some(string_value(body, member.value.start).filter(|m| !m.is_empty())?.into_owned()),
            "messages" if messages.is_none() => messages = given,
            "prompt" if prompt.is_none() => prompt = given,
            _ => {}
        }
    }
    Some(Body { model: Some(model?), prompt: prompt_head(messages.or(prompt), prompt_bytes) })
}

/// The raw JSON of `messages` (or, without one, the completion `prompt`), as far as asked.
fn prompt_head(raw: Option<&[u8]>, prompt_bytes: usize) -> &[u8] {
    raw.map_or(&[][..], |raw| &raw[..raw.len().min(prompt_bytes)])
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
    Ok(Body { model, prompt: prompt_head(raw_prompt, prompt_bytes) })
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
        let same = string_value(b, i).is_some_and(|k| k.as_bytes() == key);
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
    let mut at = skip_ws(head, 0);
    if head.get(at) != Some(&b'[') {
        return None;
    }
    loop {
        at = skip_ws(head, at + 1);
        let end = value_end(head, at)?;
        let role = member_start(head, at, b"role").and_then(|r| string_value(head, r));
        if !matches!(role.as_deref(), Some("system" | "developer")) {
            // A message is an object; anything else names no conversation.
            return (head.get(at) == Some(&b'{')).then_some(end);
        }
        at = skip_ws(head, end);
        if head.get(at) != Some(&b',') {
            return None;
        }
    }
}

/// The string value starting at `at` (escapes read as every JSON reader reads them).
fn string_value(b: &[u8], at: usize) -> Option<std::borrow::Cow<'_, str>> {
    let quoted = b.get(at..string_end(b, at)?)?;
    let inner = quoted.get(1..quoted.len() - 1)?;
    if inner.contains(&b'\\') {
        serde_json::from_slice::<String>(quoted).ok().map(std::borrow::Cow::Owned)
    } else {
        std::str::from_utf8(inner).ok().map(std::borrow::Cow::Borrowed)
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
        assert_eq!(b.prompt, raw, "the raw JSON of `messages`");
        assert_eq!(parse("/v1/chat/completions", chat, 5).unwrap().prompt, br#"[{"ro"#);
        assert!(parse("/v1/chat/completions", chat, 0).unwrap().prompt.is_empty());
        let completion = br#"{"prompt":["a","b"],"model":"m"}"#;
        assert_eq!(parse("/v1/completions", completion, 100).unwrap().prompt, br#"["a","b"]"#);
        assert_eq!(parse("/v1/completions", br#"{"prompt":"a b","model":"m"}"#, 100).unwrap().prompt, br#""a b""#);
        // No prompt at all: nothing to hash, still routed by model.
        let none = br#"{"model":"m","input":"x"}"#;
        assert_eq!(parse("/v1/embeddings", none, 100).unwrap(), Body { model: Some("m".into()), prompt: &[] });
    }

    #[test]
    fn a_longer_conversation_starts_with_the_shorter_ones_prompt() {
        let turn = |n: usize| {
            let messages: Vec<Value> = (0..n).map(|i| serde_json::json!({"role": "user", "content": format!("message {i}")})).collect();
            serde_json::to_vec(&serde_json::json!({"model": "m", "messages": messages, "max_tokens": 5})).unwrap()
        };
        let (two, three) = (turn(2), turn(3));
        let (p2, p3) = (parse("/v1/chat/completions", &two, 4096).unwrap().prompt, parse("/v1/chat/completions", &three, 4096).unwrap().prompt);
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
        let valid: [&[u8]; 8] = [
            br#"{"model":"m","messages":[{"role":"user","content":"hi \"there\"\n\u00e9"}],"stream":true}"#,
            br#" {"messages" : null, "prompt": ["a", 1.5e-3, {"x": [true, false, null]}], "\u006dodel": "m\/x"} "#,
            b"{\n  \"model\": \"m\",\n  \"max_tokens\": -0,\n  \"messages\": []\n}",
            br#"{"prompt":"a","model":"\u00e9","prompt":"b","messages":null,"messages":[1]}"#,
            br#"{"model":"m","x":"\ud800 a lone surrogate, skipped unread"}"#,
            br#"{"model":"m","messages":{}}"#,
            "{\"model\":\"caf\u{e9}\",\"messages\":[{\"content\":\"\u{1f600}\"}]}".as_bytes(),
            br#"{"model":"m"}"#,
        ];
        fn serde(b: &[u8]) -> Option<Body<'_>> {
            read_by_serde(true, std::str::from_utf8(b).ok(), b, 48).ok()
        }
        for body in valid {
            let fast = read_valid(body, 48);
            assert!(fast.is_some(), "a valid request takes the scan: {}", String::from_utf8_lossy(body));
            assert_eq!(fast, serde(body));
        }
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
            assert_eq!((read_valid(body, 48), serde(body)), (None, None), "{}", String::from_utf8_lossy(body));
        }
        // Bytes made from them by random edits: what the scan takes, serde takes the same
        // way (what it leaves, serde reads or refuses; either is the answer).
        let alphabet = b"{}[]\",:\\ \n\tu0e9-+.Etrufalsn\x01m";
        let tokens: [&[u8]; 5] = [br#""model":"n","#, br#","\u006dodel":"o""#, br#""messages":[1],"#, br#","prompt":null"#, b"null"];
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
                if let Some(fast) = read_valid(&b, 48) {
                    taken += 1;
                    assert_eq!(Some(fast), serde(&b), "{}", String::from_utf8_lossy(&b));
                }
            }
        }
        assert!(taken > tried / 20 && taken < tried, "the edits make both kinds: {taken} of {tried} taken");
    }

    #[test]
    fn the_raw_scanner_survives_any_bytes() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a\"b"},"c"]},{"content":"d"}],"prompt":["x"]}"#;
        assert_eq!(parse("/v1/chat/completions", body, 14).unwrap().prompt, br#"[{"role":"user"#);
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
