//! A small blocking HTTP client that returns every status as a reply, not an error.

use std::time::{Duration, Instant};

/// A timed streaming request.
#[derive(Debug, Clone)]
pub struct Streamed {
    pub status: u16,
    pub served_by: String,
    /// Time to the first SSE event (the first token), if any came.
    pub ttft: Option<Duration>,
    pub e2e: Duration,
    pub events: usize,
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// The model server that answered (model-sim's `x-served-by`).
    pub fn served_by(&self) -> Option<&str> {
        self.header("x-served-by")
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
}

impl Default for Client {
    fn default() -> Self {
        Self::new(Duration::from_secs(60))
    }
}

impl Client {
    pub fn new(timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .max_idle_connections_per_host(64)
            .build()
            .into();
        Client { agent }
    }

    /// POSTs `body`, or GETs without one. A transport failure is a reply with status 0
    /// and the error as its body.
    pub fn send(&self, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Reply {
        let result = match body {
            Some(b) => {
                let mut req = self.agent.post(url);
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                req.send(b)
            }
            None => {
                let mut req = self.agent.get(url);
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                req.call()
            }
        };
        match result {
            Ok(mut r) => {
                let status = r.status().as_u16();
                let headers = r
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
                    .collect();
                let body = r.body_mut().with_config().limit(64 << 20).read_to_string().unwrap_or_default();
                Reply { status, headers, body }
            }
            Err(e) => Reply { status: 0, headers: vec![], body: e.to_string() },
        }
    }

    /// GETs `url` and returns the status and the body as bytes (0 and nothing on a
    /// transport failure).
    pub fn get_bytes(&self, url: &str, headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
        let mut req = self.agent.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        match req.call() {
            Ok(mut r) => (r.status().as_u16(), r.body_mut().with_config().limit(64 << 20).read_to_vec().unwrap_or_default()),
            Err(_) => (0, Vec::new()),
        }
    }

    /// POSTs a streaming (SSE) request and times it: to the first event, and to the end.
    pub fn stream(&self, url: &str, body: &serde_json::Value) -> Streamed {
        use std::io::Read;
        let start = Instant::now();
        let result = self.agent.post(url).header("content-type", "application/json").send(body.to_string().as_bytes());
        let mut out = Streamed { status: 0, served_by: String::new(), ttft: None, e2e: Duration::ZERO, events: 0 };
        let Ok(r) = result else {
            out.e2e = start.elapsed();
            return out;
        };
        out.status = r.status().as_u16();
        out.served_by = r.headers().get("x-served-by").and_then(|v| v.to_str().ok()).unwrap_or("?").to_string();
        let mut reader = r.into_body().into_reader();
        let mut buf = [0u8; 4096];
        let mut text = Vec::new();
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
            if out.ttft.is_none() && text.windows(6).any(|w| w == b"data: ") {
                out.ttft = Some(start.elapsed());
            }
        }
        out.e2e = start.elapsed();
        out.events = String::from_utf8_lossy(&text).matches("data: {").count();
        out
    }

    pub fn get(&self, url: &str) -> Reply {
        self.send(url, &[], None)
    }

    pub fn post_json(&self, url: &str, body: &serde_json::Value) -> Reply {
        self.send(url, &[("content-type", "application/json")], Some(body.to_string().as_bytes()))
    }
}

/// An OpenAI chat request body.
pub fn chat(model: &str, prompt: &str, max_tokens: u32) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
    })
}
