//! Rejections, answered as OpenAI-style JSON errors so clients' SDKs show the reason.

use serde_json::json;

#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub status: u32,
    /// OpenAI's `type`: `invalid_request_error`, `not_found_error`, …
    pub kind: &'static str,
    /// OpenAI's `code`: a stable word clients can match on.
    pub code: &'static str,
    pub message: String,
}

impl Rejection {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self { status: 400, kind: "invalid_request_error", code, message: message.into() }
    }
    pub fn model_not_found(model: &str) -> Self {
        Self {
            status: 404,
            kind: "not_found_error",
            code: "model_not_found",
            message: format!("The model `{model}` is not served by any endpoint of this pool."),
        }
    }
    pub fn too_large(limit: usize) -> Self {
        Self {
            status: 413,
            kind: "invalid_request_error",
            code: "request_too_large",
            message: format!("The request body is larger than the limit of {limit} bytes."),
        }
    }
    /// A sheddable request while the pool is saturated (OpenAI's rate-limit shape).
    /// A body the picker cannot read (compressed): 415, not a misleading 400.
    pub fn unsupported_encoding(encoding: &str) -> Self {
        Self {
            status: 415,
            kind: "invalid_request_error",
            code: "unsupported_content_encoding",
            message: format!("The request body is `{encoding}`-encoded; send it uncompressed (Content-Encoding: identity)."),
        }
    }

    pub fn shed(objective: &str, priority: i32) -> Self {
        Self {
            status: 429,
            kind: "requests",
            code: "rate_limit_exceeded",
            message: format!(
                "Every endpoint is saturated and objective `{objective}` (priority {priority}) is sheddable; retry later."
            ),
        }
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { status: 503, kind: "service_unavailable", code: "no_healthy_endpoint", message: message.into() }
    }

    /// `{"error":{"message","type","param","code"}}`, as OpenAI's API answers.
    pub fn body(&self) -> String {
        json!({"error": {"message": self.message, "type": self.kind, "param": null, "code": self.code}})
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test;

    #[test]
    fn body_is_openai_shaped_and_escaped() {
        let r = Rejection::model_not_found("a\"b\n");
        let v: serde_json::Value = serde_json::from_str(&r.body()).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "not_found_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("a\"b\n"));
        assert!(v["error"]["param"].is_null());
    }
}
