//! What the picker needs from a request: the `model` of an OpenAI-style JSON body.

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

/// The requested model. On an OpenAI path the body must be a JSON object with a string
/// `model`; elsewhere a body without one is routed by load alone (`Ok(None)`).
pub fn model_of(path: &str, body: &[u8]) -> Result<Option<String>, Rejection> {
    let strict = is_openai_path(path);
    // serde would also read a struct from a JSON array; a request body must be an object.
    let is_object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if !is_object {
        return match strict {
            true => Err(Rejection::bad_request("invalid_json", "The request body must be a JSON object.")),
            false => Ok(None),
        };
    }
    match serde_json::from_slice::<ModelOnly>(body) {
        Ok(ModelOnly { model: Some(Value::String(m)) }) if !m.is_empty() => Ok(Some(m)),
        _ if !strict => Ok(None),
        Ok(ModelOnly { model: None }) => Err(Rejection::bad_request(
            "missing_model",
            "The request body must name a `model`.",
        )),
        Ok(ModelOnly { model: Some(_) }) => Err(Rejection::bad_request(
            "invalid_model",
            "The `model` field must be a non-empty string.",
        )),
        Err(e) => Err(Rejection::bad_request(
            "invalid_json",
            format!("The request body is not a valid JSON object: {e}"),
        )),
    }
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
}
