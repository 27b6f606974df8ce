//! The figures the module exports as Envoy stats, by name, and their labels.
//!
//! Where a figure means what one of GIE's Endpoint Picker metrics means, it has that
//! name (`inference_pool_ready_pods`, `inference_objective_request_total`, …), so the
//! dashboards and alerts operators already have keep working. Envoy's stats take whole
//! numbers only, so fractions (KV-cache use) and averages are exported as a percent or as
//! sums under this module's own names (`wasm_epp_…`), from which a dashboard computes
//! GIE's (see `envoy/grafana/wasm-epp.json`).
//!
//! Labels travel in the stat name in Istio's convention, `label=.=value;.;`, which Envoy's
//! stats tag extraction turns into Prometheus labels: Istio's `extraStatTags` generates
//! exactly the regexes (`(label=\.=(.*?);\.;)`), and the shipped Envoy configurations list
//! them in `stats_config.stats_tags` (`TAG_REGEX`).

/// The labels the module uses, for `stats_tags`.
pub const LABELS: [&str; 6] = ["name", "model_name", "target_model_name", "error_code", "endpoint", "status"];

pub const POOL_READY_PODS: &str = "inference_pool_ready_pods";
pub const POOL_KV_CACHE_PERCENT: &str = "wasm_epp_pool_average_kv_cache_utilization_percent";
pub const POOL_QUEUE_TOTAL: &str = "wasm_epp_pool_queue_size_total";
pub const POOL_RUNNING_TOTAL: &str = "wasm_epp_pool_running_requests_total";
pub const SCRAPE_FAILURES: &str = "wasm_epp_scrape_failures_total";
pub const REQUESTS: &str = "inference_objective_request_total";
pub const REQUEST_ERRORS: &str = "inference_objective_request_error_total";
pub const SCHEDULER_ATTEMPTS: &str = "inference_extension_scheduler_attempts_total";
pub const SCHEDULER_DURATION_US: &str = "wasm_epp_scheduler_e2e_duration_microseconds";
pub const TABLE_AGE_MS: &str = "wasm_epp_table_age_milliseconds";
pub const READY: &str = "wasm_epp_ready";
pub const FAIL_OPEN: &str = "wasm_epp_fail_open_total";
pub const SHED: &str = "wasm_epp_shed_total";

/// Every series the module may export, with its labels: the documented set (README), and
/// what the tests look for in Envoy's `/stats/prometheus`.
pub const SERIES: &[(&str, &[&str])] = &[
    (POOL_READY_PODS, &["name"]),
    (POOL_KV_CACHE_PERCENT, &["name"]),
    (POOL_QUEUE_TOTAL, &["name"]),
    (POOL_RUNNING_TOTAL, &["name"]),
    (SCRAPE_FAILURES, &["name", "endpoint"]),
    (REQUESTS, &["name", "model_name", "target_model_name"]),
    (REQUEST_ERRORS, &["name", "model_name", "target_model_name", "error_code"]),
    (SCHEDULER_ATTEMPTS, &["name", "status"]),
    (SCHEDULER_DURATION_US, &["name"]),
    (TABLE_AGE_MS, &["name"]),
    (READY, &["name"]),
    (FAIL_OPEN, &["name"]),
    (SHED, &["name"]),
];

/// The stat name of `metric` with `labels`, in Istio's tag convention.
pub fn name(metric: &str, labels: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(metric.len() + 32 * labels.len());
    for (label, value) in labels {
        out.push_str(label);
        out.push_str("=.=");
        out.push_str(&value_of(value));
        out.push_str(";.;");
    }
    out.push_str(metric);
    out
}

/// An endpoint's in-flight gauge (Envoy shows it as `wasmcustom.` and this): set by the
/// scraper from the shared counts the pickers keep. Stat names are dot-separated paths,
/// so the address is kept in one segment.
pub fn in_flight_gauge(endpoint: &str) -> String {
    format!("wasm_epp.in_flight.{}", endpoint.replace(['.', ':', '[', ']'], "_"))
}

/// The stats tag regex for `label`, as Istio's bootstrap writes it for an extra stat tag.
pub fn tag_regex(label: &str) -> String {
    format!("({label}=\\.=(.*?);\\.;)")
}

/// A label value that cannot break the name: bounded, and free of the separator.
fn value_of(value: &str) -> String {
    let v: String = value.chars().take(128).map(|c| if c == ';' || c.is_control() { '_' } else { c }).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v
    }
}

/// The pool's name in labels (GIE's `name`): `pool_name`, else the pool's cluster.
pub fn pool_label(config: &crate::config::Config) -> String {
    if !config.pool_name.is_empty() {
        config.pool_name.clone()
    } else if !config.pool_cluster.is_empty() {
        config.pool_cluster.clone()
    } else {
        "wasm-epp".into()
    }
}

/// GIE's `error_code` for a status the module answers with.
pub fn error_code(status: u32) -> &'static str {
    match status {
        400 | 413 | 415 => "BadRequest",
        404 => "NotFound",
        429 => "ResourceExhausted",
        503 => "ServiceUnavailable",
        _ => "Internal",
    }
}

/// `model_name` for a request: the model it asked for where the pool serves it, and
/// `unknown` where not (client-chosen names would otherwise each make a new stat).
pub fn model_label<'a>(model: Option<&'a str>, table: Option<&crate::table::Table>) -> &'a str {
    match model {
        None => "none",
        Some(m) if table.is_some_and(|t| t.endpoints.iter().any(|e| e.serves(m))) => m,
        Some(_) => "unknown",
    }
}

/// At most this many label sets per metric and VM: model names come from clients, and
/// each new one would be a new stat. Past it, `model_name` is `other`.
pub const MAX_LABEL_SETS: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test;

    #[test]
    fn names_carry_labels_that_the_tag_regex_takes_out() {
        let n = name(REQUESTS, &[("name", "outbound|8000||vllm.ns.svc"), ("model_name", "a;.;b")]);
        assert_eq!(n, "name=.=outbound|8000||vllm.ns.svc;.;model_name=.=a_._b;.;inference_objective_request_total");
        // The regex Envoy applies: the first group is removed, the second is the value.
        let re = tag_regex("model_name");
        assert_eq!(re, "(model_name=\\.=(.*?);\\.;)");
        assert_eq!(name(READY, &[("name", "")]), "name=.=none;.;wasm_epp_ready");
    }

    #[test]
    fn every_series_uses_known_labels() {
        for (metric, labels) in SERIES {
            assert!(labels.iter().all(|l| LABELS.contains(l)), "{metric}: {labels:?}");
        }
    }
}
