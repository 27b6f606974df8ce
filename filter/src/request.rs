//! What the picker needs from a request: the `model` of an OpenAI-style JSON body.

use std::borrow::Cow;
use std::ops::Range;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

use crate::errors::Rejection;

/// The OpenAI paths whose bodies must name a model.
const OPENAI_PATHS: [&str; 4] =
    ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"];

pub fn is_openai_path(path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    OPENAI_PATHS.contains(&path.trim_end_matches('/'))
}

/// Only `model` is kept: serde skips every other field without building values for it,
/// so a 200 KB prompt costs one scan, not a tree of allocations.
#[derive(Deserialize)]
struct ModelOnly {
    model: Option<Value>,
}

/// `model` and the prompt's text, borrowed from the body where JSON escapes allow.
#[derive(Deserialize)]
struct ModelAndPrompt<'a> {
    model: Option<Value>,
    #[serde(borrow)]
    messages: Option<Vec<Message<'a>>>,
    #[serde(borrow)]
    prompt: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    content: Option<Text<'a>>,
}

/// A message's content or a completion prompt: a string, a list of strings, or a list of
/// parts of which the `text` ones count. Anything else (token ids) has no text.
#[derive(Deserialize)]
#[serde(untagged)]
enum Text<'a> {
    One(#[serde(borrow)] Cow<'a, str>),
    Parts(#[serde(borrow)] Vec<Part<'a>>),
    Other(IgnoredAny),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Part<'a> {
    Text { #[serde(borrow)] text: Cow<'a, str> },
    Plain(#[serde(borrow)] Cow<'a, str>),
    Other(IgnoredAny),
}

/// What the picker reads of a request body.
#[derive(Debug, Default, PartialEq)]
pub struct Body {
    pub model: Option<String>,
    /// The start of the prompt: chat messages' text in order, a line each, or the
    /// completion prompt; at most the bytes asked for.
    pub prompt: Vec<u8>,
}

/// The requested model. On an OpenAI path the body must be a JSON object with a string
/// `model`; elsewhere a body without one is routed by load alone (`Ok(None)`).
pub fn model_of(path: &str, body: &[u8]) -> Result<Option<String>, Rejection> {
    parse(path, body, 0).map(|b| b.model)
}

/// The model and up to `prompt_bytes` of the prompt (0: the prompt is not read at all).
pub fn parse(path: &str, body: &[u8], prompt_bytes: usize) -> Result<Body, Rejection> {
    let strict = is_openai_path(path);
    // serde would also read a struct from a JSON array; a request body must be an object.
    let is_object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if !is_object {
        return match strict {
            true => Err(Rejection::bad_request("invalid_json", "The request body must be a JSON object.")),
            false => Ok(Body::default()),
        };
    }
    let mut prompt = Vec::new();
    let parsed = match prompt_bytes {
        0 => serde_json::from_slice::<ModelOnly>(body).map(|m| m.model),
        // A body whose prompt fields have shapes we do not know is still routed by model.
        limit => match serde_json::from_slice::<ModelAndPrompt>(body) {
            Ok(b) => {
                render_prompt(&b, limit, &mut prompt);
                Ok(b.model)
            }
            Err(_) => serde_json::from_slice::<ModelOnly>(body).map(|m| m.model),
        },
    };
    let model = match parsed {
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

fn render_prompt(b: &ModelAndPrompt, limit: usize, out: &mut Vec<u8>) {
    let mut push = |text: &str| {
        let room = limit.saturating_sub(out.len());
        out.extend_from_slice(&text.as_bytes()[..text.len().min(room)]);
        out.len() < limit
    };
    let texts = b.messages.iter().flatten().filter_map(|m| m.content.as_ref()).chain(b.prompt.as_ref());
    for (i, text) in texts.enumerate() {
        if i > 0 && !push("\n") {
            return;
        }
        let more = match text {
            Text::One(s) => push(s),
            Text::Parts(parts) => parts.iter().all(|p| match p {
                Part::Text { text } | Part::Plain(text) => push(text),
                Part::Other(_) => true,
            }),
            Text::Other(_) => true,
        };
        if !more {
            return;
        }
    }
}

/// The byte range of the top-level `"model"` string value (quotes included), for
/// rewriting it in place. The body was already validated as JSON.
pub fn model_value_span(body: &[u8]) -> Option<Range<usize>> {
    let mut i = skip_ws(body, 0);
    if body.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(body, i);
        if body.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(body, i)?;
        let key = &body[i + 1..key_end - 1];
        i = skip_ws(body, key_end);
        if body.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(body, i + 1);
        let value_end = value_end(body, i)?;
        if key == b"model" && body.get(i) == Some(&b'"') {
            return Some(i..value_end);
        }
        i = skip_ws(body, value_end);
        match body.get(i) {
            Some(b',') => i += 1,
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// `b[start]` is an opening quote; the index just past the closing one.
fn string_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while let Some(&c) = b.get(i) {
        match c {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The index just past the JSON value starting at `start`.
fn value_end(b: &[u8], start: usize) -> Option<usize> {
    match *b.get(start)? {
        b'"' => string_end(b, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            loop {
                match *b.get(i)? {
                    b'"' => {
                        i = string_end(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        // A number or a literal runs to the next separator.
        _ => Some(start + b[start..].iter().take_while(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace()).count()),
    }
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
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn reads_model_from_openai_bodies() {
        let body = br#"{"messages":[{"role":"user","content":"hi \"model\": x"}],"model":"llama","stream":true}"#;
        assert_eq!(model_of("/v1/chat/completions", body).unwrap().as_deref(), Some("llama"));
        assert_eq!(model_of("/v1/completions?x=1", br#"{"model":"sql\u002dlora"}"#).unwrap().as_deref(), Some("sql-lora"));
        assert_eq!(model_of("/custom", br#"{"model":"m"}"#).unwrap().as_deref(), Some("m"));
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
        let chat = br#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi \"there\""},{"type":"image_url","image_url":{"url":"x"}}]}]}"#;
        let b = parse("/v1/chat/completions", chat, 1000).unwrap();
        assert_eq!(b.model.as_deref(), Some("m"));
        assert_eq!(String::from_utf8(b.prompt).unwrap(), "be brief\nhi \"there\"");
        assert_eq!(parse("/v1/chat/completions", chat, 5).unwrap().prompt, b"be br");
        assert!(parse("/v1/chat/completions", chat, 0).unwrap().prompt.is_empty());
        let completion = br#"{"prompt":["a","b"],"model":"m"}"#;
        assert_eq!(parse("/v1/completions", completion, 100).unwrap().prompt, b"ab");
        // Shapes we do not know still route by model.
        let odd = br#"{"model":"m","messages":"not a list"}"#;
        assert_eq!(parse("/v1/chat/completions", odd, 100).unwrap(), Body { model: Some("m".into()), prompt: vec![] });
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
}
