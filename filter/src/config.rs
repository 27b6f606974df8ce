//! The plugin configuration: one JSON document for both roles (scraper and picker).
//!
//! Unknown keys and bad values are errors that name the field, so a typo makes the VM
//! refuse to start instead of silently running with a default.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::engine::Engine;
use crate::rewrite::RewriteRule;
use crate::scheduler::filters::Saturation;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Model servers, as "ip:port", listed by hand. Or name `pool_cluster` instead.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The Envoy cluster of the model servers: the pool is whatever hosts Envoy holds for
    /// it (from EDS, DNS or a static list), read from the admin interface through
    /// `admin_cluster`, with Envoy's health verdicts. Exclusive with `endpoints`.
    #[serde(default)]
    pub pool_cluster: String,
    /// A cluster whose one host is this Envoy's admin address (Istio and Envoy Gateway
    /// bootstraps call theirs `prometheus_stats`).
    #[serde(default = "defaults::admin_cluster")]
    pub admin_cluster: String,
    /// The pool's name in the exported stats (GIE's `name` label); the pool cluster's name
    /// if empty.
    #[serde(default)]
    pub pool_name: String,
    /// A GET of this path is answered by the picker itself: 200 while it schedules from a
    /// fresh table, 503 while it would fail open (a readiness probe's path); "" turns it off.
    #[serde(default = "defaults::ready_path")]
    pub ready_path: String,
    /// Honour `x-gateway-destination-endpoint-subset` on requests: only where a filter
    /// before the picker sets it (and removes any client's copy). Off, a client's copy is
    /// removed and ignored: clients do not choose endpoints.
    #[serde(default)]
    pub trust_subset_header: bool,
    /// How often the pool's membership is read from the admin interface.
    #[serde(default = "defaults::discovery_interval_ms")]
    pub discovery_interval_ms: u64,
    /// Without a singleton scraper, the worker that holds this lease scrapes; another takes
    /// over within this long when it stops.
    #[serde(default = "defaults::scraper_lease_ms")]
    pub scraper_lease_ms: u64,
    /// The ORIGINAL_DST cluster the scraper sends its requests through.
    #[serde(default = "defaults::metrics_cluster")]
    pub metrics_cluster: String,
    #[serde(default = "defaults::metrics_path")]
    pub metrics_path: String,
    #[serde(default)]
    pub engine: Engine,
    #[serde(default = "defaults::scrape_interval_ms")]
    pub scrape_interval_ms: u64,
    #[serde(default = "defaults::stale_after_ms")]
    pub stale_after_ms: u64,
    /// A scrape that takes longer than this marks the endpoint unhealthy.
    #[serde(default = "defaults::scrape_timeout_ms")]
    pub scrape_timeout_ms: u64,
    /// Where the served models (base and LoRA adapters) are listed; empty turns it off.
    #[serde(default = "defaults::models_path")]
    pub models_path: String,
    #[serde(default = "defaults::models_interval_ms")]
    pub models_interval_ms: u64,
    /// Larger request bodies get 413. Keep it under Envoy's buffer limit, or Envoy answers first.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    /// How many fallback endpoints follow the choice in the destination header.
    /// 0 for an ORIGINAL_DST pool, which takes exactly one address.
    #[serde(default = "defaults::max_fallbacks")]
    pub max_fallbacks: usize,
    /// The request header the picker writes (and strips from clients).
    #[serde(default = "defaults::destination_header")]
    pub destination_header: String,
    /// Opt-in: add an `x-wasm-epp-explain` response header with the scores of each decision.
    #[serde(default)]
    pub explain: bool,
    /// The scheduling profile: a preset name (`default`, `gie-default`) or an
    /// EndpointPickerConfig-like object (see `scheduler::config`). Absent: `default`.
    #[serde(default)]
    pub scheduler: Option<serde_json::Value>,
    /// Objective name → priority, chosen per request by the `x-gateway-inference-objective`
    /// header. Negative priorities are sheddable: 429 while the pool is saturated.
    /// Requests without a known objective have priority 0.
    #[serde(default)]
    pub objectives: BTreeMap<String, i32>,
    /// When the pool counts as saturated (every endpoint is) for shedding.
    #[serde(default)]
    pub saturation: Saturation,
    /// Requested model → weighted target models; the body's `model` is rewritten.
    #[serde(default)]
    pub model_rewrites: Vec<RewriteRule>,
    /// The other Envoy replicas in front of the same pool, as "ip:port" of the listener
    /// this filter runs on (listing this proxy too is harmless: one replica's config fits
    /// all). Each replica serves its prefix assignments at `peer_path`, and its scraper
    /// merges the peers', so that replicas send a prefix to one endpoint.
    #[serde(default)]
    pub peers: Vec<String>,
    /// Peers found by Envoy instead of listed: a cluster whose hosts are the replicas'
    /// listeners (in Kubernetes, STRICT_DNS on a headless Service of the gateway pods).
    /// Each round calls it `peer_cluster_calls` times and Envoy's load balancer picks the
    /// replica of each call: with round robin, N calls reach N replicas.
    #[serde(default)]
    pub peer_cluster: String,
    #[serde(default = "defaults::peer_cluster_calls")]
    pub peer_cluster_calls: usize,
    #[serde(default = "defaults::peer_path")]
    pub peer_path: String,
    /// With peers, each replica scrapes only its share of the endpoints and takes the
    /// other rows from their owners: a model server is scraped by one replica, however
    /// many there are. Off unless asked: the rows taken from peers are a round older,
    /// which routing pays for (BENCHMARKS.md, scrape load).
    #[serde(default = "defaults::share_scrapes")]
    pub share_scrapes: bool,
    #[serde(default = "defaults::peer_interval_ms")]
    pub peer_interval_ms: u64,
    /// Required with peers: `peer_path` answers only requests whose
    /// `x-wasm-epp-peer-token` header is this (the record holds prompt-block hashes:
    /// whoever reads it can test whether a given prompt was sent lately). Other requests
    /// to the path are routed as usual, the token removed.
    #[serde(default)]
    pub peer_token: String,
    /// What the configuration asked for that wasm-epp does not do (parts of a GIE
    /// EndpointPickerConfig), one line each: logged when it is loaded, never dropped
    /// silently.
    #[serde(skip)]
    pub notes: Vec<String>,
}

/// The destination header unless `destination_header` says otherwise.
pub const DEFAULT_DESTINATION_HEADER: &str = crate::names::headers::DESTINATION;

/// A peer token shorter than this is refused: it guards what clients may not read.
pub const MIN_PEER_TOKEN: usize = 16;

/// The header a peer presents `peer_token` in.
pub const PEER_TOKEN_HEADER: &str = crate::names::headers::PEER_TOKEN;

mod defaults {
    pub fn admin_cluster() -> String {
        "wasm_epp_admin".into()
    }
    pub fn discovery_interval_ms() -> u64 {
        250
    }
    pub fn ready_path() -> String {
        "/.wasm-epp/ready".into()
    }
    pub fn scraper_lease_ms() -> u64 {
        1000
    }
    pub fn metrics_cluster() -> String {
        "wasm_epp_metrics".into()
    }
    pub fn metrics_path() -> String {
        "/metrics".into()
    }
    pub fn scrape_interval_ms() -> u64 {
        50
    }
    pub fn stale_after_ms() -> u64 {
        2000
    }
    pub fn scrape_timeout_ms() -> u64 {
        1000
    }
    pub fn models_path() -> String {
        "/v1/models".into()
    }
    pub fn models_interval_ms() -> u64 {
        5000
    }
    pub fn max_body_bytes() -> usize {
        4 << 20
    }
    pub fn max_fallbacks() -> usize {
        2
    }
    pub fn peer_path() -> String {
        "/.wasm-epp/v2/peer".into()
    }
    pub fn share_scrapes() -> bool {
        false
    }
    pub fn peer_interval_ms() -> u64 {
        100
    }
    pub fn peer_cluster_calls() -> usize {
        3
    }
    pub fn destination_header() -> String {
        super::DEFAULT_DESTINATION_HEADER.into()
    }
}

/// A configuration that could not be used, with the field at fault.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid plugin configuration: {}", self.0)
    }
}

impl Config {
    /// Replicas exchange prefix assignments (listed, or through a cluster).
    pub fn has_peers(&self) -> bool {
        !self.peers.is_empty() || !self.peer_cluster.is_empty()
    }

    /// Replicas scrape their shares and exchange rows.
    pub fn shares_scrapes(&self) -> bool {
        self.has_peers() && self.share_scrapes
    }

    /// How often peers are asked for their records: at the scrape pace where rows travel
    /// that way, so that a shared row is no older than two intervals.
    pub fn peer_round_ms(&self) -> u64 {
        if self.shares_scrapes() {
            self.peer_interval_ms.min(self.scrape_interval_ms)
        } else {
            self.peer_interval_ms
        }
    }

    /// The pool comes from Envoy's membership of `pool_cluster`, not from a list.
    pub fn discovers(&self) -> bool {
        !self.pool_cluster.is_empty()
    }

    /// The settings alone (the scheduling profile is built, to check it, and dropped).
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        Config::parse_with_profile(bytes).map(|(config, _)| config)
    }

    /// The settings and the scheduling profile they describe, built once: what a picker runs.
    pub fn parse_with_profile(bytes: &[u8]) -> Result<(Config, crate::scheduler::Profile), ConfigError> {
        let doc: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| ConfigError(e.to_string()))?;
        if !doc.is_object() {
            return Err(ConfigError(
                "expected a JSON object such as {\"endpoints\": [\"10.0.0.1:8000\"]}".into(),
            ));
        }
        // The path makes "`objectives.batch`: invalid type …" out of serde's bare message.
        let config: Config = serde_path_to_error::deserialize(doc).map_err(|e| match e.path().to_string() {
            p if p == "." => ConfigError(e.inner().to_string()),
            p => ConfigError(format!("`{p}`: {}", e.inner())),
        })?;
        let mut config = config;
        let plan = crate::scheduler::config::plan(config.scheduler.as_ref(), config.has_peers()).map_err(|e| ConfigError(format!("`scheduler`: {e}")))?;
        config.notes = plan.notes;
        if let Some(thresholds) = plan.saturation {
            config.saturation = thresholds;
        }
        config.validate()?;
        Ok((config, plan.profile))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, why: &str| Err(ConfigError(format!("`{field}`: {why}")));
        match (self.endpoints.is_empty(), self.pool_cluster.is_empty()) {
            (true, true) => {
                return bad("endpoints", "list the model servers (\"ip:port\"), or name their Envoy cluster in `pool_cluster`")
            }
            (false, false) => return bad("pool_cluster", "give `endpoints` or `pool_cluster`, not both"),
            _ => {}
        }
        if !self.pool_cluster.is_empty() && self.admin_cluster.is_empty() {
            return bad("admin_cluster", "must name the cluster that reaches Envoy's admin interface");
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if e.parse::<SocketAddr>().is_err() {
                return bad(&format!("endpoints[{i}]"), &format!("{e:?} is not \"ip:port\""));
            }
            if self.endpoints[..i].contains(e) {
                return bad(&format!("endpoints[{i}]"), &format!("{e:?} is listed twice"));
            }
        }
        for (i, p) in self.peers.iter().enumerate() {
            if p.parse::<SocketAddr>().is_err() {
                return bad(&format!("peers[{i}]"), &format!("{p:?} is not \"ip:port\""));
            }
        }
        if self.peer_cluster_calls == 0 || self.peer_cluster_calls > 64 {
            return bad("peer_cluster_calls", "must be between 1 and 64");
        }
        if !(self.ready_path.is_empty() || self.ready_path.starts_with('/')) {
            return bad("ready_path", "must start with '/' (or be empty to turn it off)");
        }
        if !self.peer_path.starts_with('/') {
            return bad("peer_path", "must start with '/'");
        }
        if self.has_peers() && self.peer_token.len() < MIN_PEER_TOKEN {
            return bad(
                "peer_token",
                &format!("required with `peers` or `peer_cluster`, at least {MIN_PEER_TOKEN} characters: the record holds prompt-block hashes, and whoever can read it can tell whether a prompt was sent lately"),
            );
        }
        if !self.peer_token.bytes().all(|b| b.is_ascii_graphic()) {
            return bad("peer_token", "must be printable ASCII without spaces (it travels in a header)");
        }
        if self.metrics_cluster.is_empty() {
            return bad("metrics_cluster", "must name a cluster");
        }
        if !self.metrics_path.starts_with('/') {
            return bad("metrics_path", "must start with '/'");
        }
        if !(self.models_path.is_empty() || self.models_path.starts_with('/')) {
            return bad("models_path", "must start with '/' (or be empty to turn it off)");
        }
        for (field, value) in [
            ("scrape_interval_ms", self.scrape_interval_ms),
            ("stale_after_ms", self.stale_after_ms),
            ("scrape_timeout_ms", self.scrape_timeout_ms),
            ("models_interval_ms", self.models_interval_ms),
            ("peer_interval_ms", self.peer_interval_ms),
            ("discovery_interval_ms", self.discovery_interval_ms),
        ] {
            if value == 0 || value > 3_600_000 {
                return bad(field, "must be between 1 and 3600000 milliseconds");
            }
        }
        if !(100..=3_600_000).contains(&self.scraper_lease_ms) {
            return bad("scraper_lease_ms", "must be between 100 and 3600000 milliseconds");
        }
        if self.max_body_bytes == 0 {
            return bad("max_body_bytes", "must be positive");
        }
        let header_ok = !self.destination_header.is_empty()
            && self
                .destination_header
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !header_ok {
            return bad("destination_header", "must be a lower-case header name");
        }
        for (i, rule) in self.model_rewrites.iter().enumerate() {
            if let Err(e) = rule.validate() {
                return bad(&format!("model_rewrites[{i}]"), &e);
            }
            if self.model_rewrites[..i].iter().any(|r| r.model == rule.model) {
                return bad(&format!("model_rewrites[{i}]"), &format!("{:?} has two rules", rule.model));
            }
        }
        let s = &self.saturation;
        if !(0.0..=1.0).contains(&s.kv_cache_util_threshold) {
            return bad("saturation.kvCacheUtilThreshold", "must be within [0, 1]");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test;

    #[test]
    fn defaults_fill_in() {
        let c = Config::parse(br#"{"endpoints":["10.0.0.1:8000"]}"#).unwrap();
        assert_eq!(c.metrics_path, "/metrics");
        assert_eq!(c.scrape_interval_ms, 50);
        assert_eq!(c.stale_after_ms, 2000);
        assert_eq!(c.engine, Engine::Vllm);
        assert_eq!(c.destination_header, "x-gateway-destination-endpoint");
    }

    #[test]
    fn the_pool_by_cluster_name() {
        let c = Config::parse(br#"{"pool_cluster":"outbound|8000||vllm.ns.svc.cluster.local"}"#).unwrap();
        assert!(c.discovers() && c.endpoints.is_empty());
        assert_eq!((c.admin_cluster.as_str(), c.discovery_interval_ms, c.scraper_lease_ms), ("wasm_epp_admin", 250, 1000));
    }

    #[test]
    fn a_gie_endpoint_picker_config_loads_as_the_scheduler_with_notes() {
        let doc = serde_json::json!({"endpoints": ["10.0.0.1:8000"], "scheduler": {
            "apiVersion": "inference.networking.x-k8s.io/v1alpha1", "kind": "EndpointPickerConfig",
            "plugins": [{"type": "queue-scorer"}, {"type": "utilization-detector", "parameters": {"queueDepthThreshold": 9}},
                        {"type": "decode-filter"}],
            "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}, {"pluginRef": "decode-filter"}]}],
            "saturationDetector": {"pluginRef": "utilization-detector"}}});
        let c = Config::parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(c.saturation.queue_depth_threshold, 9);
        assert_eq!(c.notes.len(), 1, "{:?}", c.notes);
        assert!(c.notes[0].contains("decode-filter"), "{:?}", c.notes);
        let bad = serde_json::json!({"endpoints": ["10.0.0.1:8000"], "scheduler": {"apiVersion": "x/v1", "kind": "EndpointPickerConfig"}});
        assert!(Config::parse(bad.to_string().as_bytes()).unwrap_err().0.contains("apiVersion"));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse(br#"{"endpoints":["10.0.0.1:8000"],"scrape_interval":5}"#)
            .unwrap_err();
        assert!(e.0.contains("scrape_interval"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        for (doc, field) in [
            (r#"{"endpoints":["nope"]}"#, "endpoints[0]"),
            (r#"{"endpoints":[]}"#, "pool_cluster"),
            (r#"{"endpoints":["1.2.3.4:1"],"pool_cluster":"llm_pool"}"#, "not both"),
            (r#"{"pool_cluster":"llm_pool","admin_cluster":""}"#, "admin_cluster"),
            (r#"{"pool_cluster":"llm_pool","discovery_interval_ms":0}"#, "discovery_interval_ms"),
            (r#"{"endpoints":["1.2.3.4:1"],"scraper_lease_ms":10}"#, "scraper_lease_ms"),
            (r#"{"endpoints":["1.2.3.4:1","1.2.3.4:1"]}"#, "endpoints[1]"),
            (r#"{"endpoints":["1.2.3.4:1"],"engine":"tgi"}"#, "tgi"),
            (r#"{"endpoints":["1.2.3.4:1"],"scrape_interval_ms":0}"#, "scrape_interval_ms"),
            (r#"{"endpoints":["1.2.3.4:1"],"stale_after_ms":-1}"#, "-1"),
            (r#"{"endpoints":["1.2.3.4:1"],"metrics_path":"metrics"}"#, "metrics_path"),
            (r#"{"endpoints":["1.2.3.4:1"],"destination_header":"X Y"}"#, "destination_header"),
            (r#"{"endpoints":["1.2.3.4:1"],"scheduler":"fastest"}"#, "scheduler"),
            (r#"{"endpoints":["1.2.3.4:1"],"objectives":{"batch":"low"}}"#, "objectives"),
            (r#"{"endpoints":["1.2.3.4:1"],"model_rewrites":[{"model":"a","targets":[]}]}"#, "model_rewrites[0]"),
            (r#"{"endpoints":["1.2.3.4:1"],"saturation":{"kvCacheUtilThreshold":2}}"#, "kvCacheUtilThreshold"),
            (r#"{"endpoints":["1.2.3.4:1"],"peers":["envoy-1:10000"],"peer_token":"0123456789abcdef"}"#, "peers[0]"),
            (r#"{"endpoints":["1.2.3.4:1"],"peers":["10.0.0.9:10000"]}"#, "peer_token"),
            (r#"{"endpoints":["1.2.3.4:1"],"peer_cluster":"c","peer_token":"short"}"#, "at least 16"),
            (r#"{"endpoints":["1.2.3.4:1"],"peer_path":"affinity"}"#, "peer_path"),
            (r#"{"endpoints":["1.2.3.4:1"],"peer_cluster_calls":0}"#, "peer_cluster_calls"),
            (r#"{"endpoints":["1.2.3.4:1"],"peer_interval_ms":0}"#, "peer_interval_ms"),
            (r#"{"endpoints":["1.2.3.4:1"],"peer_token":"a b"}"#, "peer_token"),
            (r#"[1]"#, "JSON object"),
            (r#""#, "EOF"),
        ] {
            let e = Config::parse(doc.as_bytes()).unwrap_err();
            assert!(e.0.contains(field), "{doc}: {e}");
        }
    }

    #[test]
    fn engines_by_name() {
        for (name, engine) in [
            ("vllm", Engine::Vllm),
            ("sglang", Engine::Sglang),
            ("trtllm-serve", Engine::TrtllmServe),
            ("triton-trtllm", Engine::TritonTrtllm),
        ] {
            let doc = format!(r#"{{"endpoints":["1.2.3.4:1"],"engine":"{name}"}}"#);
            assert_eq!(Config::parse(doc.as_bytes()).unwrap().engine, engine);
        }
    }
}
