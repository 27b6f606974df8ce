//! The ext_proc picker (`bench/extproc`, the architecture of GIE's EPP) as a child process,
//! and the Envoy options that put it in front of the pool as GIE's gateways do.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use crate::{paths, EnvoyOptions};

/// How Envoy streams the request to the ext_proc picker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyMode {
    /// GIE's: FULL_DUPLEX_STREAMED both ways, headers and trailers sent, every response
    /// chunk through the picker.
    Duplex,
    /// The cheapest the protocol allows: request headers and the buffered request body.
    Buffered,
}

impl BodyMode {
    pub fn name(self) -> &'static str {
        match self {
            BodyMode::Duplex => "duplex",
            BodyMode::Buffered => "buffered",
        }
    }

    fn processing_mode(self) -> &'static str {
        match self {
            BodyMode::Duplex => "request_header_mode: SEND
                response_header_mode: SEND
                request_body_mode: FULL_DUPLEX_STREAMED
                response_body_mode: FULL_DUPLEX_STREAMED
                request_trailer_mode: SEND
                response_trailer_mode: SEND",
            BodyMode::Buffered => "request_header_mode: SEND
                response_header_mode: SKIP
                request_body_mode: BUFFERED
                response_body_mode: NONE
                request_trailer_mode: SKIP
                response_trailer_mode: SKIP",
        }
    }
}

pub struct ExtProc {
    pub addr: String,
    pub mode: BodyMode,
    child: Child,
}

impl ExtProc {
    /// Starts `extproc-epp` over `endpoints` with the module's configuration keys `plugin`.
    pub fn start(mode: BodyMode, endpoints: &[String], plugin: &serde_json::Value) -> ExtProc {
        let mut config = serde_json::json!({"endpoints": endpoints, "engine": "vllm", "scrape_interval_ms": 50, "stale_after_ms": 2000});
        if let (Some(c), Some(p)) = (config.as_object_mut(), plugin.as_object()) {
            c.extend(p.clone());
        }
        let mut child = Command::new(paths::target_bin("extproc-epp"))
            .args(["--body-mode", mode.name(), "--config", &config.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("extproc-epp starts (cargo build --release builds it)");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout).read_line(&mut line).expect("extproc-epp prints its address");
        let addr = line.split_whitespace().last().unwrap_or_default().to_string();
        assert!(addr.starts_with("127.0.0.1:"), "extproc-epp said {line:?}");
        ExtProc { addr, mode, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Envoy without the module, its pool behind an ext_proc filter that calls this
    /// picker, configured as GIE's reference gateway configuration does (message timeout
    /// 1000 s, failure mode closed) and routing by the header it sets.
    pub fn envoy_options(&self, concurrency: u32) -> EnvoyOptions {
        let (host, port) = self.addr.rsplit_once(':').unwrap_or(("127.0.0.1", "0"));
        let filter = format!(
            "          - name: envoy.filters.http.ext_proc
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service:
                envoy_grpc: {{ cluster_name: extproc_epp }}
                timeout: 10s
              failure_mode_allow: false
              message_timeout: 1000s
              processing_mode:
                {}
          - name: envoy.filters.http.router",
            self.mode.processing_mode()
        );
        let cluster = format!(
            "  - name: extproc_epp
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: extproc_epp
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {host}, port_value: {port} }} }} }}"
        );
        EnvoyOptions {
            without_picker: true,
            concurrency,
            extra_clusters: cluster,
            replace: vec![("          - name: envoy.filters.http.router".into(), filter)],
            ..Default::default()
        }
    }
}

impl Drop for ExtProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
