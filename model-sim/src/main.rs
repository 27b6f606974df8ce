//! `model-sim`: a vLLM-compatible server whose load is the engine model's, in real time.
//!
//! OpenAI `/v1/chat/completions` and `/v1/completions` (with `stream: true` as SSE),
//! `/v1/models`, `/health`, `/metrics` (vLLM V1 names). For tests, `POST /admin/fault`
//! makes `/metrics` misbehave: `{"metrics": "ok" | "garbage" | "error" | "hang" | "huge"}`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use model_sim::engine::Event;
use model_sim::{metrics, text, Engine, Request, ServerParams};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

#[derive(Parser, Debug)]
#[command(about = "A vLLM-compatible model-server simulator")]
struct Args {
    /// Port on 127.0.0.1 (0 picks a free one; the chosen address is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    #[arg(long, default_value = "meta-llama/Llama-3.1-8B-Instruct")]
    model: String,
    /// LoRA adapters this server has registered, comma-separated.
    #[arg(long, value_delimiter = ',')]
    lora: Vec<String>,
    #[arg(long, default_value_t = 2)]
    max_loras: usize,
    #[arg(long, default_value_t = 8)]
    max_num_seqs: usize,
    #[arg(long, default_value_t = 1024)]
    num_blocks: u32,
    #[arg(long, default_value_t = 16)]
    block_size: u32,
    /// A decode step's fixed cost, in ms.
    #[arg(long, default_value_t = 8.0)]
    step_ms: f64,
    /// What each running sequence adds to a step, in ms.
    #[arg(long, default_value_t = 0.5)]
    step_per_seq_ms: f64,
    /// Prefill cost per prompt token, in µs.
    #[arg(long, default_value_t = 20.0)]
    prefill_us_per_token: f64,
    /// Output tokens when a request sets no max_tokens.
    #[arg(long, default_value_t = 32)]
    default_max_tokens: u32,
    /// Answer completions at once, without the engine: a fast upstream for overhead benchmarks.
    #[arg(long)]
    instant: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum MetricsFault {
    Ok,
    Garbage,
    Error,
    Hang,
    Huge,
    /// The page, then 10,000 more `model_name` values (about 750 KB): a server whose
    /// label values a scraper must not keep, nor take long over.
    ManyModels,
    /// The page claiming 4,000,000,000 KV blocks: a number that must not size the proxy.
    HugeKvCache,
}

struct Sim {
    engine: Engine,
    /// Where each request's events go.
    streams: HashMap<u64, mpsc::UnboundedSender<Event>>,
    next_id: u64,
    fault: MetricsFault,
    metrics_requests: u64,
}

#[derive(Clone)]
struct App {
    sim: Arc<Mutex<Sim>>,
    wake: Arc<Notify>,
    start: Instant,
    default_max_tokens: u32,
    instant: bool,
}

impl App {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Sim> {
        // A panicked handler must not take the server down with a poisoned lock.
        self.sim.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let params = ServerParams {
        model: args.model.clone(),
        adapters: args.lora.iter().filter(|a| !a.is_empty()).cloned().collect(),
        max_num_seqs: args.max_num_seqs,
        block_size: args.block_size,
        num_blocks: args.num_blocks,
        max_loras: args.max_loras,
        step_base_us: (args.step_ms * 1000.0) as u64,
        step_per_seq_us: (args.step_per_seq_ms * 1000.0) as u64,
        prefill_per_token_us: args.prefill_us_per_token,
        ..ServerParams::default()
    };
    let app = App {
        sim: Arc::new(Mutex::new(Sim {
            engine: Engine::new(params),
            streams: HashMap::new(),
            next_id: 1,
            fault: MetricsFault::Ok,
            metrics_requests: 0,
        })),
        wake: Arc::new(Notify::new()),
        start: Instant::now(),
        default_max_tokens: args.default_max_tokens,
        instant: args.instant,
    };
    tokio::spawn(drive(app.clone()));
    let router = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/metrics", get(metrics_page))
        .route("/admin/fault", post(set_fault))
        .route("/admin/stats", get(stats))
        .with_state(app);
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("model-sim: cannot listen on 127.0.0.1:{}: {e}", args.port);
            std::process::exit(1);
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a.to_string(),
        Err(_) => String::new(),
    };
    println!("model-sim listening on {addr} serving {} {:?}", args.model, args.lora);
    // Every answer says which server gave it, and echoes the destination list the gateway
    // set, so tests and the demo can see the routing.
    let served_by = axum::http::HeaderValue::from_str(&addr).unwrap_or(axum::http::HeaderValue::from_static(""));
    let router = router.layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
        let served_by = served_by.clone();
        async move {
            let destination = req.headers().get("x-gateway-destination-endpoint").cloned();
            let mut r = next.run(req).await;
            r.headers_mut().insert("x-served-by", served_by);
            if let Some(d) = destination {
                r.headers_mut().insert("x-seen-destination", d);
            }
            r
        }
    }));
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(shutdown).await {
        eprintln!("model-sim: {e}");
    }
}

/// Runs the engine in real time: one step, sleep for its duration, deliver its events.
async fn drive(app: App) {
    loop {
        let step = {
            let mut sim = app.lock();
            let now = app.now_us();
            sim.engine.step(now)
        };
        let Some(step) = step else {
            app.wake.notified().await;
            continue;
        };
        tokio::time::sleep(Duration::from_micros(step.duration_us)).await;
        let mut sim = app.lock();
        for event in step.events {
            let id = match &event {
                Event::FirstToken { id } | Event::Token { id, .. } | Event::Finished { id, .. } => *id,
            };
            let done = matches!(event, Event::Finished { .. });
            if let Some(tx) = sim.streams.get(&id) {
                let _ = tx.send(event);
            }
            if done {
                sim.streams.remove(&id);
            }
        }
    }
}

enum Kind {
    Chat,
    Completion,
}

async fn chat(State(app): State<App>, body: Bytes) -> Response {
    generate(app, body, Kind::Chat).await
}

async fn completions(State(app): State<App>, body: Bytes) -> Response {
    generate(app, body, Kind::Completion).await
}

fn error(status: StatusCode, message: String) -> Response {
    let body = json!({"error": {"message": message, "type": "BadRequestError", "param": null, "code": status.as_u16()}});
    (status, Json(body)).into_response()
}

async fn generate(app: App, body: Bytes, kind: Kind) -> Response {
    if app.instant {
        let body = json!({"id": "cmpl-instant", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]});
        return Json(body).into_response();
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    let model = req["model"].as_str().unwrap_or_default().to_string();
    let adapter = {
        let sim = app.lock();
        let p = &sim.engine.params;
        if model == p.model {
            None
        } else if p.adapters.contains(&model) {
            Some(model.clone())
        } else {
            return error(StatusCode::NOT_FOUND, format!("The model `{model}` does not exist."));
        }
    };
    let prompt = text::prompt_of(&req);
    let max_tokens = req["max_tokens"]
        .as_u64()
        .or_else(|| req["max_completion_tokens"].as_u64())
        .map_or(app.default_max_tokens, |n| n.clamp(1, 1 << 16) as u32);
    let stream = req["stream"].as_bool().unwrap_or(false);

    let (tx, rx) = mpsc::unbounded_channel();
    let id = {
        let mut sim = app.lock();
        let id = sim.next_id;
        sim.next_id += 1;
        sim.streams.insert(id, tx);
        let request = Request::for_prompt(id, &prompt, max_tokens, adapter, sim.engine.params.block_size);
        let now = app.now_us();
        sim.engine.submit(request, now);
        id
    };
    app.wake.notify_one();
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let rid = format!("cmpl-sim-{id}");
    let object = match kind {
        Kind::Chat => "chat.completion",
        Kind::Completion => "text_completion",
    };
    if stream {
        let chat = matches!(kind, Kind::Chat);
        let model = model.clone();
        let events = UnboundedReceiverStream::new(rx).map(move |event| {
            let chunk = match event {
                Event::FirstToken { .. } => delta(chat, &rid, &model, created, text::token_text(0), None),
                Event::Token { index, .. } => delta(chat, &rid, &model, created, text::token_text(index), None),
                Event::Finished { .. } => {
                    format!("{}data: [DONE]\n\n", delta(chat, &rid, &model, created, "", Some("length")))
                }
            };
            Ok::<_, Infallible>(Bytes::from(chunk))
        });
        return Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .body(Body::from_stream(events))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    let mut rx = rx;
    let mut out = String::new();
    let mut n = 0;
    while let Some(event) = rx.recv().await {
        match event {
            Event::FirstToken { .. } | Event::Token { .. } => {
                out.push_str(text::token_text(n));
                n += 1;
            }
            Event::Finished { prompt_tokens, output_tokens, .. } => {
                let choice = match kind {
                    Kind::Chat => json!({"index": 0, "message": {"role": "assistant", "content": out}, "finish_reason": "length"}),
                    Kind::Completion => json!({"index": 0, "text": out, "finish_reason": "length"}),
                };
                let body = json!({
                    "id": rid, "object": object, "created": created, "model": model,
                    "choices": [choice],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": output_tokens,
                              "total_tokens": prompt_tokens + output_tokens}
                });
                return Json(body).into_response();
            }
        }
    }
    error(StatusCode::INTERNAL_SERVER_ERROR, "the engine dropped the request".into())
}

fn delta(chat: bool, id: &str, model: &str, created: u64, piece: &str, finish: Option<&str>) -> String {
    let choice = if chat {
        json!({"index": 0, "delta": {"content": piece}, "finish_reason": finish})
    } else {
        json!({"index": 0, "text": piece, "finish_reason": finish})
    };
    let object = if chat { "chat.completion.chunk" } else { "text_completion" };
    let chunk = json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]});
    format!("data: {chunk}\n\n")
}

async fn models(State(app): State<App>) -> Json<Value> {
    let sim = app.lock();
    let p = &sim.engine.params;
    let mut data = vec![json!({"id": p.model, "object": "model", "owned_by": "vllm", "root": p.model, "parent": null})];
    for a in &p.adapters {
        data.push(json!({"id": a, "object": "model", "owned_by": "vllm", "root": format!("/adapters/{a}"), "parent": p.model}));
    }
    Json(json!({"object": "list", "data": data}))
}

/// What tests count that the page itself does not show: how often `/metrics` was read.
async fn stats(State(app): State<App>) -> Response {
    Json(serde_json::json!({"metrics_requests": app.lock().metrics_requests})).into_response()
}

async fn metrics_page(State(app): State<App>) -> Response {
    let (fault, page) = {
        let mut sim = app.lock();
        sim.metrics_requests += 1;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        (sim.fault, metrics::render(&sim.engine, now))
    };
    match fault {
        MetricsFault::Ok => page.into_response(),
        MetricsFault::Garbage => "<html><body>\u{0}\u{1} not { metrics\"\n\n}}}} 1 2 3 4</body></html>".into_response(),
        MetricsFault::Error => (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response(),
        MetricsFault::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            page.into_response()
        }
        MetricsFault::Huge => "# padding\n".repeat(1_000_000).into_response(),
        MetricsFault::ManyModels => {
            let mut out = page;
            for i in 0..10_000 {
                let _ = writeln!(out, "vllm:num_requests_waiting{{engine=\"0\",model_name=\"tenant-{i:05}/fine-tuned-model\"}} 0.0");
            }
            out.into_response()
        }
        MetricsFault::HugeKvCache => {
            let blocks = format!("num_gpu_blocks=\"{}\"", app.lock().engine.params.num_blocks);
            page.replace(&blocks, "num_gpu_blocks=\"4000000000\"").into_response()
        }
    }
}

async fn set_fault(State(app): State<App>, Json(v): Json<Value>) -> Response {
    let fault = match v["metrics"].as_str() {
        Some("ok") => MetricsFault::Ok,
        Some("garbage") => MetricsFault::Garbage,
        Some("error") => MetricsFault::Error,
        Some("hang") => MetricsFault::Hang,
        Some("huge") => MetricsFault::Huge,
        Some("many-models") => MetricsFault::ManyModels,
        Some("huge-kv-cache") => MetricsFault::HugeKvCache,
        _ => return error(StatusCode::BAD_REQUEST, "metrics: ok|garbage|error|hang|huge|many-models|huge-kv-cache".into()),
    };
    app.lock().fault = fault;
    StatusCode::NO_CONTENT.into_response()
}
