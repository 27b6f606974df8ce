//! `extproc-epp`: wasm-epp's scheduling core behind Envoy's `ext_proc` filter, the
//! architecture of GIE's Endpoint Picker, for the benchmarks only.
//!
//! Envoy streams each request to this process over gRPC; it reads the body, decides with
//! the same `Router` the module runs, and answers with a header mutation that sets
//! `x-gateway-destination-endpoint` and clears the route cache, as GIE's EPP does. It
//! scrapes the same endpoints itself, with the module's `Scraper`. Being the module's own
//! Rust core, natively compiled, it is the best case of that architecture: what the
//! module wins against it, it wins against a Go EPP as well.
//!
//! Two body modes, as Envoy is configured (`--body-mode`):
//! - `duplex`: GIE's (`FULL_DUPLEX_STREAMED` both ways, trailers sent). The body arrives
//!   in chunks; at its end come the headers' answer and the body, streamed back in chunks
//!   of at most 62,000 bytes; every response chunk passes through and is echoed.
//! - `buffered`: the cheapest the protocol allows (request headers, buffered request
//!   body, the response not sent).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{ExternalProcessor, ExternalProcessorServer};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation, processing_request, processing_response, BodyMutation, BodyResponse, CommonResponse, HeaderMutation,
    HeadersResponse, HttpHeaders, ImmediateResponse, ProcessingRequest, ProcessingResponse, StreamedBodyResponse,
    TrailersResponse,
};
use epp::config::Config;
use epp::errors::Rejection;
use epp::route::{Incoming, Outcome, Router};
use epp::scrape::{Probe, Scraper};
use epp::table::Table;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// GIE's chunk size for streamed body answers (`BodyByteLimit`).
const CHUNK: usize = 62_000;

#[derive(Parser)]
#[command(about = "wasm-epp's scheduling core as an Envoy ext_proc server (benchmarks only)")]
struct Args {
    /// Address to listen on; port 0 picks one (printed on the first line).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// The plugin configuration, as the module takes it (JSON).
    #[arg(long, default_value = "{}")]
    config: String,
    /// `duplex` (GIE's FULL_DUPLEX_STREAMED) or `buffered`, as Envoy's filter is set.
    #[arg(long, default_value = "duplex")]
    body_mode: String,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What the decisions and the scraper share: the latest table, and the requests in
/// flight to each slot (one process sees them all, as GIE's EPP does).
#[derive(Default)]
struct Shared {
    table: Option<Table>,
    in_flight: Vec<i64>,
}

impl Shared {
    fn count(&mut self, slot: usize, by: i64) {
        if self.in_flight.len() <= slot {
            self.in_flight.resize(slot + 1, 0);
        }
        self.in_flight[slot] = (self.in_flight[slot] + by).max(0);
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a decision tells the stream: set these headers (and this body), or answer.
enum Verdict {
    Route { headers: Vec<(String, String)>, body: Option<Vec<u8>>, slot: Option<usize> },
    Answer(Rejection),
}

/// A request for a decision, and where its verdict goes (with the body handed back: it
/// crosses to the decision thread and back without a copy).
struct Job {
    head: Head,
    body: Vec<u8>,
    reply: oneshot::Sender<(Verdict, Vec<u8>)>,
}

/// The decision thread: it owns the router (its plugins' state is single-threaded, as in
/// a wasm VM), and decides one request at a time.
fn decide_forever(mut router: Router, shared: Arc<Mutex<Shared>>, jobs: std::sync::mpsc::Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        let verdict = decide(&mut router, &shared, &job.head, &job.body);
        let _ = job.reply.send((verdict, job.body));
    }
}

fn decide(router: &mut Router, shared: &Mutex<Shared>, head: &Head, body: &[u8]) -> Verdict {
    if let Err(r) = epp::request::check_encoding(head.content_encoding.as_deref()) {
        return Verdict::Answer(r);
    }
    if body.len() > router.config.max_body_bytes {
        return Verdict::Answer(Rejection::too_large(router.config.max_body_bytes));
    }
    let parsed = match epp::request::parse(&head.path, body, router.prompt_bytes()) {
        Ok(b) => b,
        Err(r) => return Verdict::Answer(r),
    };
    let trusted_subset = if router.config.trust_subset_header { head.subset.as_deref() } else { None };
    let incoming = Incoming {
        model: parsed.model.as_deref(),
        prompt: parsed.prompt,
        objective: head.objective.as_deref(),
        subset: trusted_subset,
        store: None,
    };
    let mut s = lock(shared);
    let Shared { table, in_flight } = &mut *s;
    let counts: &[i64] = in_flight;
    let outcome = router.decide(table.as_ref(), &incoming, now_ms(), &|slot| counts.get(slot).copied().unwrap_or(0));
    match outcome {
        Outcome::Route { endpoints, slot, rewritten, .. } => {
            if let Some(slot) = slot {
                s.count(slot, 1);
            }
            drop(s);
            let mut headers = vec![];
            if !endpoints.is_empty() {
                headers.push((router.config.destination_header.clone(), endpoints.join(",")));
            }
            let body = rewritten.and_then(|m| epp::request::with_model(body, &m));
            if let Some(b) = &body {
                headers.push(("content-length".into(), b.len().to_string()));
            }
            Verdict::Route { headers, body, slot }
        }
        Outcome::Reject(r) => Verdict::Answer(r),
    }
}

/// The request headers a decision reads.
#[derive(Default)]
struct Head {
    path: String,
    objective: Option<String>,
    subset: Option<String>,
    content_encoding: Option<String>,
}

impl Head {
    fn read(h: &HttpHeaders) -> Head {
        let mut head = Head::default();
        for kv in h.headers.iter().flat_map(|m| m.headers.iter()) {
            let value = || String::from_utf8_lossy(&kv.raw_value).into_owned();
            match kv.key.as_str() {
                ":path" => head.path = value(),
                epp::names::headers::OBJECTIVE => head.objective = Some(value()),
                epp::names::headers::SUBSET => head.subset = Some(value()),
                "content-encoding" => head.content_encoding = Some(value()),
                _ => {}
            }
        }
        head
    }
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.into(), raw_value: value.as_bytes().to_vec(), ..Default::default() }),
        ..Default::default()
    }
}

/// The headers' mutation for a route: the destination set, steering headers removed.
fn mutation(headers: &[(String, String)]) -> CommonResponse {
    CommonResponse {
        clear_route_cache: true,
        header_mutation: Some(HeaderMutation {
            set_headers: headers.iter().map(|(k, v)| header(k, v)).collect(),
            remove_headers: vec![epp::names::headers::OBJECTIVE.into(), epp::names::headers::SUBSET.into()],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn reply(response: processing_response::Response) -> ProcessingResponse {
    ProcessingResponse { response: Some(response), ..Default::default() }
}

fn immediate(r: &Rejection) -> ProcessingResponse {
    reply(processing_response::Response::ImmediateResponse(ImmediateResponse {
        status: Some(HttpStatus { code: r.status as i32 }),
        headers: Some(HeaderMutation { set_headers: vec![header("content-type", "application/json")], ..Default::default() }),
        body: r.body().into_bytes(),
        ..Default::default()
    }))
}

/// A body answer that streams `body` on (a request's, or a response's echoed).
fn streamed(body: Vec<u8>, end_of_stream: bool) -> BodyResponse {
    BodyResponse {
        response: Some(CommonResponse {
            body_mutation: Some(BodyMutation {
                mutation: Some(body_mutation::Mutation::StreamedResponse(StreamedBodyResponse {
                    body,
                    end_of_stream,
                    ..Default::default()
                })),
            }),
            ..Default::default()
        }),
    }
}

#[derive(Clone)]
struct Service {
    jobs: std::sync::mpsc::SyncSender<Job>,
    shared: Arc<Mutex<Shared>>,
    duplex: bool,
}

type Replies = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for Service {
    type ProcessStream = Replies;

    async fn process(&self, request: Request<Streaming<ProcessingRequest>>) -> Result<Response<Replies>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            let mut stream = ExtProcStream { service: this, head: Head::default(), body: vec![], counted: None, decided: false };
            while let Some(Ok(message)) = inbound.next().await {
                let Some(request) = message.request else { continue };
                for out in stream.on(request).await {
                    if tx.send(Ok(out)).await.is_err() {
                        break;
                    }
                }
            }
            stream.end();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One HTTP request's ext_proc stream.
struct ExtProcStream {
    service: Service,
    head: Head,
    body: Vec<u8>,
    counted: Option<usize>,
    decided: bool,
}

impl ExtProcStream {
    async fn on(&mut self, request: processing_request::Request) -> Vec<ProcessingResponse> {
        use processing_request::Request as In;
        use processing_response::Response as Out;
        match request {
            In::RequestHeaders(h) => {
                self.head = Head::read(&h);
                if h.end_of_stream {
                    return self.decide(true).await;
                }
                // Duplex: nothing until the body is in. Buffered: Envoy waits for this.
                if self.service.duplex { vec![] } else { vec![reply(Out::RequestHeaders(HeadersResponse::default()))] }
            }
            In::RequestBody(b) => {
                self.body.extend_from_slice(&b.body);
                if b.end_of_stream {
                    self.decide(false).await
                } else if self.service.duplex {
                    vec![]
                } else {
                    vec![reply(Out::RequestBody(BodyResponse::default()))]
                }
            }
            In::RequestTrailers(_) => {
                let mut out = if self.decided { vec![] } else { self.decide(false).await };
                out.push(reply(Out::RequestTrailers(TrailersResponse::default())));
                out
            }
            In::ResponseHeaders(_) => vec![reply(Out::ResponseHeaders(HeadersResponse::default()))],
            In::ResponseBody(b) => {
                if b.end_of_stream {
                    self.end();
                }
                vec![reply(Out::ResponseBody(streamed(b.body, b.end_of_stream)))]
            }
            In::ResponseTrailers(_) => {
                self.end();
                vec![reply(Out::ResponseTrailers(TrailersResponse::default()))]
            }
        }
    }

    /// The decision, and the answers that carry it: in duplex mode the headers' answer
    /// then the body streamed back; buffered, the mutation on the body's answer.
    async fn decide(&mut self, headers_only: bool) -> Vec<ProcessingResponse> {
        use processing_response::Response as Out;
        self.decided = true;
        let (reply_to, verdict) = oneshot::channel();
        let job = Job { head: std::mem::take(&mut self.head), body: std::mem::take(&mut self.body), reply: reply_to };
        if self.service.jobs.send(job).is_err() {
            return vec![immediate(&Rejection::unavailable("The picker stopped."))];
        }
        let (headers, new_body, slot) = match verdict.await {
            Ok((Verdict::Route { headers, body, slot }, original)) => {
                self.body = original;
                (headers, body, slot)
            }
            Ok((Verdict::Answer(r), _)) => return vec![immediate(&r)],
            Err(_) => return vec![immediate(&Rejection::unavailable("The picker stopped."))],
        };
        self.counted = slot;
        let common = mutation(&headers);
        if headers_only {
            return vec![reply(Out::RequestHeaders(HeadersResponse { response: Some(common) }))];
        }
        if !self.service.duplex {
            let mut common = common;
            if let Some(b) = new_body {
                common.body_mutation = Some(BodyMutation { mutation: Some(body_mutation::Mutation::Body(b)) });
            }
            return vec![reply(Out::RequestBody(BodyResponse { response: Some(common) }))];
        }
        let body = new_body.unwrap_or_else(|| std::mem::take(&mut self.body));
        let mut out = vec![reply(Out::RequestHeaders(HeadersResponse { response: Some(common) }))];
        let chunks: Vec<&[u8]> = if body.is_empty() { vec![&[]] } else { body.chunks(CHUNK).collect() };
        let last = chunks.len() - 1;
        out.extend(chunks.iter().enumerate().map(|(i, c)| reply(Out::RequestBody(streamed(c.to_vec(), i == last)))));
        out
    }

    /// The request is no longer in flight.
    fn end(&mut self) {
        if let Some(slot) = self.counted.take() {
            lock(&self.service.shared).count(slot, -1);
        }
    }
}

/// The scraper's loop, on its own thread: due probes fetched one after another, the table
/// published to the picker whenever a round completes.
fn scrape_forever(mut scraper: Scraper, shared: Arc<Mutex<Shared>>) {
    let timeout = Duration::from_millis(scraper.config().scrape_timeout_ms);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build().into();
    loop {
        let now = now_ms();
        for probe in scraper.due(now) {
            let url = format!("http://{}{}", probe.address, probe.path);
            match agent.get(&url).call() {
                Ok(mut answer) => {
                    let status = u32::from(answer.status().as_u16());
                    let body = answer.body_mut().with_config().limit(8 << 20).read_to_vec().unwrap_or_default();
                    if probe.probe == Probe::Metrics {
                        let in_flight = lock(&shared).in_flight.get(probe.slot).copied().unwrap_or(0);
                        scraper.note_in_flight(probe.slot, in_flight);
                    }
                    scraper.on_answer(&probe, Some(status), &body, now_ms());
                }
                Err(e) => scraper.on_failed(&probe, &e.to_string(), now_ms()),
            }
        }
        if scraper.round_complete() || scraper.is_dirty() {
            let table = scraper.publish(now_ms());
            lock(&shared).table = Some(table);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn main() {
    let args = Args::parse();
    let duplex = match args.body_mode.as_str() {
        "duplex" => true,
        "buffered" => false,
        other => {
            eprintln!("extproc-epp: --body-mode {other:?}: duplex or buffered");
            std::process::exit(2)
        }
    };
    let shared = Arc::new(Mutex::new(Shared::default()));
    let (jobs, queue) = std::sync::mpsc::sync_channel(1024);
    // The decision thread parses the configuration itself: its profile (plugins with
    // single-threaded state, as in a wasm VM) never crosses threads.
    let (parsed, config) = (std::sync::mpsc::channel(), args.config.clone());
    let for_decisions = shared.clone();
    std::thread::spawn(move || match Config::parse_with_profile(config.as_bytes()) {
        Ok((config, profile)) => {
            let _ = parsed.0.send(Ok(config.clone()));
            decide_forever(Router::new(config, profile, 7), for_decisions, queue)
        }
        Err(e) => {
            let _ = parsed.0.send(Err(e.to_string()));
        }
    });
    let config = match parsed.1.recv() {
        Ok(Ok(config)) => config,
        Ok(Err(e)) => {
            eprintln!("extproc-epp: invalid configuration: {e}");
            std::process::exit(2)
        }
        Err(_) => {
            eprintln!("extproc-epp: the decision thread stopped");
            std::process::exit(1)
        }
    };
    let for_scraper = shared.clone();
    std::thread::spawn(move || scrape_forever(Scraper::new(config), for_scraper));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads.max(1)).enable_all().build();
    let runtime = runtime.unwrap_or_else(|e| {
        eprintln!("extproc-epp: {e}");
        std::process::exit(1)
    });
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen).await.unwrap_or_else(|e| {
            eprintln!("extproc-epp: {}: {e}", args.listen);
            std::process::exit(1)
        });
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        println!("extproc-epp listening on {addr}");
        let service = ExternalProcessorServer::new(Service { jobs, shared, duplex });
        // Small gRPC messages both ways: without TCP_NODELAY, Nagle and delayed ACKs add 40 ms.
        let incoming = TcpListenerStream::new(listener).map(|s| {
            if let Ok(s) = &s {
                let _ = s.set_nodelay(true);
            }
            s
        });
        let served = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
        if let Err(e) = served {
            eprintln!("extproc-epp: {e}");
            std::process::exit(1);
        }
    });
}
