//! Every header and shared-data key the module reads or writes, and the host callbacks it
//! leaves out, in one place: the map an operator needs (what the module touches on a
//! request, what it keeps in the proxy's shared data) and the one a contributor changes.

/// Request headers.
pub mod headers {
    /// Written by the picker: the choice, then fallbacks; a client's copy is removed
    /// (`destination_header` may rename it).
    pub const DESTINATION: &str = "x-gateway-destination-endpoint";
    /// Restricts the candidates, when a trusted filter before the picker sets it
    /// (`trust_subset_header`); removed before the request goes upstream.
    pub const SUBSET: &str = "x-gateway-destination-endpoint-subset";
    /// Names an objective, whose priority the operator sets in `objectives`; removed
    /// before the request goes upstream.
    pub const OBJECTIVE: &str = "x-gateway-inference-objective";
    /// A peer's credential on `peer_path`; a wrong one is removed.
    pub const PEER_TOKEN: &str = "x-wasm-epp-peer-token";
    /// A peer asking for rows alone (`rows`), not the prefix assignments.
    pub const PEER_WANT: &str = "x-wasm-epp-peer-want";
    /// Read: the OpenAI paths need a `model`; `ready_path` and `peer_path` are answered here.
    pub const PATH: &str = ":path";
    /// Read: the readiness probe and a peer's request are GETs.
    pub const METHOD: &str = ":method";
    /// A compressed body is refused (415).
    pub const CONTENT_ENCODING: &str = "content-encoding";
    /// Rewritten with the body by a model rewrite.
    pub const CONTENT_LENGTH: &str = "content-length";
    /// Set on the scraper's calls: the host an ORIGINAL_DST cluster connects to.
    pub const ORIGINAL_DST_HOST: &str = "x-envoy-original-dst-host";
    /// A response header with each decision's scores (`explain`).
    pub const EXPLAIN: &str = "x-wasm-epp-explain";
}

/// The proxy-wasm callbacks the SDK exports that the module has no use for. The host calls
/// an exported callback for every event it stands for, `proxy_on_response_body` for every
/// chunk of a streamed answer, and skips one the module does not export; so build.sh
/// takes these out of the built module's exports (`filter/examples/trim_exports.rs`). A
/// filter that comes to need one (`on_http_response_body`, say) takes it out of this list.
pub const UNUSED_CALLBACKS: &[&str] = &["proxy_on_response_body", "proxy_on_response_trailers", "proxy_on_log"];

/// Keys of the proxy's shared data (one store per `vm_id`). The version in a key lets two
/// module versions that share a `vm_id` during a rollout keep their own values.
pub mod keys {
    /// The metrics table (`table::Table`), written by the scraper.
    pub const TABLE: &str = "wasm-epp/v2/table";
    /// The table's generation (8 bytes): what pickers read per request.
    pub const GENERATION: &str = "wasm-epp/v2/generation";
    /// This proxy's requests in flight per endpoint slot (`in_flight`).
    pub const IN_FLIGHT: &str = "wasm-epp/v1/in-flight";
    /// Which VM scrapes, until when (`lease`).
    pub const SCRAPER_LEASE: &str = "wasm-epp/v1/scraper-lease";
    /// This proxy's replica id among its peers (`peer`).
    pub const REPLICA: &str = "wasm-epp/v1/replica";
    /// The prefix record's shards, `…/affinity/<n>`, and its per-endpoint counts
    /// (`affinity`).
    pub const PREFIX_RECORD_SHARDS: &str = "wasm-epp/v2/affinity/";
    pub const PREFIX_RECORD_GIVEN: &str = "wasm-epp/v2/affinity/given";
}
