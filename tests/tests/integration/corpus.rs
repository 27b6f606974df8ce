//! Bad inputs through real Envoy, as a hostile client sends them: every case over HTTP/1.1
//! with a content length, HTTP/1.1 chunked and HTTP/2. Each gets its exact status and
//! error code, nothing reaches a model server, and a valid request right after it is
//! served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use epp_tests::client::chat;
use epp_tests::real_envoy::{addrs, MODEL};
use epp_tests::{Envoy, EnvoyOptions, Sim};
use serde_json::json;

/// How a case is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Wire {
    ContentLength,
    Chunked,
    Http2,
}

struct Case {
    name: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn case(name: &str, path: &str, body: &[u8], status: u16, code: &'static str) -> Case {
    Case { name: name.into(), path: path.into(), headers: vec![], body: body.to_vec(), status, code }
}

const LIMIT: usize = 64 * 1024;

fn cases() -> Vec<Case> {
    let chat_path = "/v1/chat/completions";
    let mut out = vec![];
    for (name, body) in [
        ("truncated object", &br#"{"model":"#[..]),
        ("open brace", b"{"),
        ("trailing comma", br#"{"model":"m",}"#),
        ("trailing garbage", br#"{"model":"m"} x"#),
        ("single quotes", br#"{'model':'m'}"#),
        ("comment", br#"{"model":"m" /* c */}"#),
        ("NaN", br#"{"model":"m","temperature":NaN}"#),
        ("bare word", b"model"),
        ("array", br#"[{"model":"m"}]"#),
        ("string", br#""model""#),
        ("null", b"null"),
        ("number", b"42"),
        ("empty body", b" "),
        ("invalid UTF-8 in a string", b"{\"model\":\"m\xff\"}"),
        ("a model with a lone surrogate", br#"{"model":"\ud800"}"#),
        ("raw control character", b"{\"model\":\"m\x01\"}"),
        ("two spellings of model", br#"{"model":"a","\u006dodel":"b"}"#),
        ("deep nesting", &[b'['; 5000][..]),
        ("deep nesting in a field", format!("{{\"model\":\"m\",\"x\":{}}}", "[".repeat(2000)).as_bytes()),
        ("unterminated string", br#"{"model":"m"#),
        ("unquoted key", br#"{model:"m"}"#),
        ("missing colon", br#"{"model" "m"}"#),
        ("missing comma", br#"{"model":"m" "n":1}"#),
        ("double comma", br#"{"model":"m",,"n":1}"#),
        ("extra closing brace", br#"{"model":"m"}}"#),
        ("two objects", br#"{"model":"m"}{"model":"n"}"#),
        ("leading zero", br#"{"model":"m","n":01}"#),
        ("hex number", br#"{"model":"m","n":0x1}"#),
        ("plus sign", br#"{"model":"m","n":+1}"#),
        ("Infinity", br#"{"model":"m","n":Infinity}"#),
        ("fraction without digits", br#"{"model":"m","n":1.}"#),
        ("exponent without digits", br#"{"model":"m","n":1e}"#),
        ("a lone minus", br#"{"model":"m","n":-}"#),
        ("misspelt true", br#"{"model":"m","stream":tru}"#),
        ("True capitalised", br#"{"model":"m","stream":True}"#),
        ("unknown escape", br#"{"model":"m\x41"}"#),
        ("short unicode escape", br#"{"model":"m","x":"\u12"}"#),
        ("raw tab in a string", b"{\"model\":\"m\tn\"}"),
        ("raw newline in a field", b"{\"model\":\"m\",\"x\":\"a\nb\"}"),
        ("overlong UTF-8", b"{\"model\":\"m\",\"x\":\"\xc0\xaf\"}"),
        ("a lone continuation byte", b"{\"model\":\"m\",\"x\":\"\x80\"}"),
        ("invalid UTF-8 in a key", b"{\"model\":\"m\",\"\xfe\":1}"),
        ("a NUL after the object", b"{\"model\":\"m\"}\x00"),
        ("UTF-16 body", b"{\x00\"\x00m\x00o\x00d\x00e\x00l\x00\"\x00:\x00\"\x00m\x00\"\x00}\x00"),
        ("unterminated array in a field", br#"{"model":"m","messages":[{"role":"user"}"#),
        ("unterminated object in a field", br#"{"model":"m","x":{"a":1}"#),
    ] {
        out.push(case(name, chat_path, body, 400, "invalid_json"));
    }
    for (name, body) in [
        ("no model", &br#"{"messages":[]}"#[..]),
        ("empty object", b"{}"),
        ("Model capitalised", br#"{"Model":"m"}"#),
        ("model as a suffix", br#"{"modelx":"m"}"#),
        ("model nested", br#"{"x":{"model":"m"}}"#),
        ("model inside a message", br#"{"messages":[{"role":"user","model":"m"}]}"#),
        ("model_name", br#"{"model_name":"m"}"#),
        ("model with a leading space", br#"{" model":"m"}"#),
    ] {
        out.push(case(name, chat_path, body, 400, "missing_model"));
    }
    for (name, body) in [
        ("model null", &br#"{"model":null}"#[..]),
        ("model empty", br#"{"model":""}"#),
        ("model a number", br#"{"model":1}"#),
        ("model a list", br#"{"model":["m"]}"#),
        ("model an object", br#"{"model":{"name":"m"}}"#),
        ("model true", br#"{"model":true}"#),
        ("model false", br#"{"model":false}"#),
        ("model a fraction", br#"{"model":1.5}"#),
        ("model an empty object", br#"{"model":{}}"#),
    ] {
        out.push(case(name, chat_path, body, 400, if name == "model null" { "missing_model" } else { "invalid_model" }));
    }
    for (name, model) in [("unknown model", "gpt-9".to_string()), ("a 10 KB model name", "m".repeat(10_000)), ("unicode model", "modèle-✓".into()), ("glob model", "*".into()), ("model with a trailing space", format!("{MODEL} ")), ("model in capitals", MODEL.to_uppercase()), ("model with a NUL", format!("{MODEL}\u{0}"))] {
        out.push(case(name, chat_path, json!({"model": model, "messages": []}).to_string().as_bytes(), 404, "model_not_found"));
    }
    for path in ["/v1//chat/completions", "/v1/chat%2Fcompletions", "/v1/chat/completions/", "/v1/./chat/completions", "/x/../v1/completions", "/v1/%63ompletions", "/v1/embeddings/", "/v1//responses", "/v1/chat/completions?stream=true"] {
        out.push(case(&format!("no model at {path}"), path, b"{}", 400, "missing_model"));
    }
    let big = chat(MODEL, &"x".repeat(LIMIT), 1).to_string();
    out.push(case("a body over max_body_bytes", chat_path, big.as_bytes(), 413, "request_too_large"));
    for encoding in ["gzip", "br", "deflate", "zstd", "GZIP", "gzip, identity", "x-custom"] {
        let mut c = case(&format!("{encoding} body"), chat_path, b"\x1f\x8b\x08\x00\x00", 415, "unsupported_content_encoding");
        c.headers.push(("content-encoding".into(), encoding.into()));
        out.push(c);
    }
    out
}

/// One request on a fresh connection; (status, body).
fn send(envoy: &Envoy, wire: Wire, c: &Case) -> (u16, String) {
    match wire {
        Wire::Http2 => curl_h2(envoy, c),
        _ => http1(envoy, wire, c),
    }
}

fn http1(envoy: &Envoy, wire: Wire, c: &Case) -> (u16, String) {
    let mut s = TcpStream::connect(&envoy.listener).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut head = format!("POST {} HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\nconnection: close\r\n", c.path);
    for (k, v) in &c.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let mut req = head.into_bytes();
    match wire {
        Wire::Chunked => {
            req.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            for piece in c.body.chunks(7) {
                req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                req.extend_from_slice(piece);
                req.extend_from_slice(b"\r\n");
            }
            req.extend_from_slice(b"0\r\n\r\n");
        }
        _ => {
            req.extend_from_slice(format!("content-length: {}\r\n\r\n", c.body.len()).as_bytes());
            req.extend_from_slice(&c.body);
        }
    }
    let _ = s.write_all(&req);
    let text = String::from_utf8_lossy(&read_response(&mut s)).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string());
    // A chunked answer: the JSON is between the chunk sizes.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b > a => body[a..=b].to_string(),
        _ => body,
    };
    (status, body)
}

/// One HTTP/1.1 response, read as far as it goes (its content length, or its last
/// chunk): Envoy keeps a closing connection open a while, so reading to the end would wait.
fn read_response(s: &mut TcpStream) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
            let done = match length {
                Some(n) => raw.len() >= end + 4 + n,
                None => raw.ends_with(b"0\r\n\r\n"),
            };
            if done {
                return raw;
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return raw,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
}

fn curl_h2(envoy: &Envoy, c: &Case) -> (u16, String) {
    let dir = std::env::temp_dir();
    let input = dir.join(format!("wasm-epp-corpus-{}.in", std::process::id()));
    std::fs::write(&input, &c.body).expect("body file");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--http2-prior-knowledge", "-X", "POST", "-H", "content-type: application/json", "--data-binary"])
        .arg(format!("@{}", input.display()))
        .args(["-w", "\n%{http_code}", "--max-time", "30"]);
    for (k, v) in &c.headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    // curl sends the path as given.
    cmd.arg("--path-as-is").arg(format!("http://{}{}", envoy.listener, c.path));
    let out = cmd.output().expect("curl runs (build.sh test installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let status = status.trim().parse().unwrap_or(0);
    if status == 0 {
        return (0, format!("curl: {} {}", out.status, String::from_utf8_lossy(&out.stderr)));
    }
    (status, body.to_string())
}

#[test]
fn every_bad_input_gets_its_exact_answer_and_reaches_no_model_server() {
    let sims: Vec<Sim> = (0..2).map(|_| Sim::start(&[])).collect();
    let refs: Vec<&Sim> = sims.iter().collect();
    let envoy = Envoy::start(&addrs(&refs), EnvoyOptions { plugin: json!({"max_body_bytes": LIMIT}), ..Default::default() });
    envoy.wait_for_table();
    let upstream = || envoy.stat("cluster.llm_pool.upstream_rq_total");
    let valid = Case { name: "valid".into(), path: "/v1/chat/completions".into(), headers: vec![], body: chat(MODEL, "hi", 1).to_string().into_bytes(), status: 200, code: "" };
    let cases = cases();
    let mut tried = 0;
    for wire in [Wire::ContentLength, Wire::Chunked, Wire::Http2] {
        for c in &cases {
            let before = upstream();
            let started = std::time::Instant::now();
            let (status, body) = send(&envoy, wire, c);
            if started.elapsed() > Duration::from_secs(1) {
                eprintln!("slow: {wire:?} {} took {:?}", c.name, started.elapsed());
            }
            assert_eq!(status, c.status, "{wire:?} {}: {body}", c.name);
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{wire:?} {}: not JSON ({e}): {body}", c.name));
            assert_eq!(v["error"]["code"], c.code, "{wire:?} {}: {body}", c.name);
            assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{wire:?} {}", c.name);
            assert_eq!(upstream(), before, "{wire:?} {}: reached a model server", c.name);
            let (ok, body) = send(&envoy, wire, &valid);
            assert_eq!(ok, 200, "{wire:?}: the valid request after {}: {body}", c.name);
            tried += 1;
        }
    }
    // Clients that go away mid-body: nothing breaks.
    for _ in 0..20 {
        let mut s = TcpStream::connect(&envoy.listener).expect("connect");
        let _ = s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: g\r\ncontent-length: 1000\r\n\r\n{\"model\":\"");
        drop(s);
    }
    let (ok, body) = send(&envoy, Wire::ContentLength, &valid);
    assert_eq!(ok, 200, "{body}");
    assert!(!envoy.log().contains("panicked") && !envoy.log().contains("wasm trap"), "{}", envoy.log());
    eprintln!("{tried} bad requests ({} cases × 3 wires) answered exactly, none forwarded; 20 clients gone mid-body", cases.len());
    assert!(cases.len() >= 80, "{} cases", cases.len());
}

/// Envoy passes header values with bytes that are not UTF-8 (obs-text, `\xe9`): every
/// header the picker reads, so spelt, must neither trap the VM nor lose the request.
#[test]
fn header_values_that_are_not_utf8_neither_trap_nor_lose_the_request() {
    let sims: Vec<Sim> = (0..2).map(|_| Sim::start(&[])).collect();
    let refs: Vec<&Sim> = sims.iter().collect();
    let plugin = json!({"peers": ["127.0.0.1:1"], "peer_token": "a-peer-token-of-16-bytes", "trust_subset_header": true});
    let envoy = Envoy::start(&addrs(&refs), EnvoyOptions { plugin, ..Default::default() });
    envoy.wait_for_table();
    let body = chat(MODEL, "hi", 1).to_string();
    let raw = |method: &str, path: &[u8], header: &[u8]| {
        let mut s = TcpStream::connect(&envoy.listener).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let mut req = format!("{method} ").into_bytes();
        req.extend_from_slice(path);
        req.extend_from_slice(b" HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\nconnection: close\r\n");
        req.extend_from_slice(header);
        req.extend_from_slice(format!("\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes());
        let _ = s.write_all(&req);
        let text = String::from_utf8_lossy(&read_response(&mut s)).into_owned();
        text.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok()).unwrap_or(0)
    };
    let headers: [&[u8]; 7] = [
        b"x-gateway-inference-objective: caf\xe9",
        b"x-gateway-destination-endpoint-subset: 10.0.0.1:80\xff",
        b"content-encoding: gz\xe9p",
        b"x-gateway-destination-endpoint: 10.0.0.\xe9:80",
        b"x-wasm-epp-peer-token: s\xe9cret",
        b"x-wasm-epp-peer-want: r\xf6ws",
        b"user-agent: \xc0\xc1\xf5\xff",
    ];
    let chat_path = b"/v1/chat/completions";
    let peer_path = b"/.wasm-epp/v2/peer";
    let mut sent = vec![];
    for header in headers {
        sent.push(("POST", &chat_path[..], header));
        sent.push(("GET", &peer_path[..], header));
    }
    sent.push(("GET", peer_path, b"x-wasm-epp-peer-token: a-peer-token-of-16-bytes\r\nx-wasm-epp-peer-want: r\xf6ws"));
    sent.push(("POST", b"/v1/chat/completions?q=\xe9", b"x-ok: 1"));
    sent.push(("GET", b"/.wasm-epp/v2/peer\xe9", b"x-ok: 1"));
    for (method, path, header) in sent {
        let name = format!("{method} {} {}", String::from_utf8_lossy(path), String::from_utf8_lossy(header));
        let status = raw(method, path, header);
        eprintln!("{name}: {status}");
        // A value the picker cannot read counts as a value it does not know: served, or
        // refused with a 4xx (an unknown encoding is 415, a subset of nothing 503).
        assert!(matches!(status, 200 | 400 | 403 | 404 | 415 | 503), "{name}: {status}");
        assert_eq!(raw("POST", chat_path, b"x-ok: 1"), 200, "the request after {name}");
    }
    assert!(!envoy.log().contains("panicked") && !envoy.log().contains("wasm trap"), "{}", envoy.log());
}
