//! The pool's endpoints as Envoy knows them.
//!
//! Stock Envoy gives a wasm module no host call that lists a cluster's hosts, but its
//! admin interface does: `GET /clusters?format=json&filter=<regex>` answers with each
//! host's address and health as the cluster holds it, however it learned them (EDS from
//! Istio or Envoy Gateway, a file, DNS, a static list). The scraper reads it through a
//! cluster that points at the admin address (Istio's and Envoy Gateway's bootstraps both
//! have one, `prometheus_stats`), so the pool is named once, as an Envoy cluster.

use serde::Deserialize;

/// At most this many hosts are taken from one answer; the rest are counted and logged.
pub const MAX_HOSTS: usize = 4096;

/// One host of the pool cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// `ip:port` (`[v6]:port`), as the destination header names it.
    pub address: String,
    /// Why Envoy sends it no traffic (failed health check, ejected outlier, EDS status),
    /// or `None` when Envoy considers it usable.
    pub unhealthy: Option<String>,
}

/// What one admin answer says of the pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    pub hosts: Vec<Host>,
    /// Hosts over `MAX_HOSTS`, or without an IP socket address (a pipe), left out.
    pub left_out: usize,
}

/// The admin path that lists only `cluster` (an anchored, escaped RE2 pattern).
pub fn admin_path(cluster: &str) -> String {
    let mut pattern = String::from("^");
    for c in cluster.chars() {
        if !(c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('$');
    format!("/clusters?format=json&filter={}", percent_encode(&pattern))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    cluster_statuses: Vec<ClusterStatus>,
}

#[derive(Deserialize)]
struct ClusterStatus {
    name: String,
    #[serde(default)]
    host_statuses: Vec<HostStatus>,
}

#[derive(Deserialize)]
struct HostStatus {
    #[serde(default)]
    address: Option<Address>,
    #[serde(default)]
    health_status: HealthStatus,
}

#[derive(Deserialize)]
struct Address {
    #[serde(default)]
    socket_address: Option<SocketAddress>,
}

#[derive(Deserialize)]
struct SocketAddress {
    address: String,
    #[serde(default)]
    port_value: u32,
}

/// Envoy's `HostHealthStatus`: the EDS status and one flag per reason to skip a host.
#[derive(Deserialize, Default)]
#[serde(default)]
struct HealthStatus {
    eds_health_status: Option<String>,
    failed_active_health_check: bool,
    failed_outlier_check: bool,
    failed_active_degraded_check: bool,
    pending_dynamic_removal: bool,
    excluded_via_immediate_hc_fail: bool,
    active_hc_timeout: bool,
}

impl HealthStatus {
    fn unhealthy(&self) -> Option<String> {
        let flags = [
            (self.failed_active_health_check, "failed its active health check"),
            (self.failed_outlier_check, "ejected by outlier detection"),
            (self.pending_dynamic_removal, "being removed from the cluster"),
            (self.excluded_via_immediate_hc_fail, "excluded after an immediate health-check failure"),
            (self.active_hc_timeout, "timed out its active health check"),
        ];
        if let Some((_, why)) = flags.iter().find(|(set, _)| *set) {
            return Some(format!("Envoy: {why}"));
        }
        // HEALTHY, UNKNOWN (no health checking) and DEGRADED hosts take traffic.
        match self.eds_health_status.as_deref() {
            None | Some("HEALTHY" | "UNKNOWN" | "DEGRADED") => None,
            Some(other) => Some(format!("Envoy: EDS status {other}")),
        }
    }
}

/// The hosts of `cluster` in an admin `/clusters?format=json` answer. A page that does not
/// list the cluster is an error (a typo in `pool_cluster`, or the admin cluster reaches
/// something else): the scraper keeps what it knew.
pub fn parse(page: &[u8], cluster: &str) -> Result<Membership, String> {
    let page: Page = serde_json::from_slice(page).map_err(|e| format!("admin /clusters answer is not Envoy's JSON: {e}"))?;
    let status = page
        .cluster_statuses
        .into_iter()
        .find(|c| c.name == cluster)
        .ok_or_else(|| format!("Envoy has no cluster {cluster:?}"))?;
    let mut membership = Membership { hosts: Vec::new(), left_out: 0 };
    for h in status.host_statuses {
        let Some(socket) = h.address.and_then(|a| a.socket_address) else {
            membership.left_out += 1;
            continue;
        };
        let address = if socket.address.contains(':') {
            format!("[{}]:{}", socket.address, socket.port_value)
        } else {
            format!("{}:{}", socket.address, socket.port_value)
        };
        if membership.hosts.len() >= MAX_HOSTS || membership.hosts.iter().any(|x| x.address == address) {
            membership.left_out += 1;
            continue;
        }
        membership.hosts.push(Host { address, unhealthy: h.health_status.unhealthy() });
    }
    Ok(membership)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test;

    /// Captured from Envoy 1.40.0 (see tests/fixtures/README.md).
    const PAGE: &str = include_str!("../../tests/fixtures/envoy/admin-clusters-1.40.json");

    #[test]
    fn reads_the_hosts_and_envoys_verdict_of_a_real_page() {
        let m = parse(PAGE.as_bytes(), "llm_pool").unwrap();
        let addresses: Vec<&str> = m.hosts.iter().map(|h| h.address.as_str()).collect();
        assert_eq!(addresses, ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"]);
        assert_eq!(m.hosts[0].unhealthy, None);
        assert_eq!(m.hosts[1].unhealthy.as_deref(), Some("Envoy: EDS status DRAINING"));
        assert_eq!(m.hosts[2].unhealthy.as_deref(), Some("Envoy: ejected by outlier detection"));
        assert_eq!(m.left_out, 0);
        assert!(parse(PAGE.as_bytes(), "nope").unwrap_err().contains("no cluster \"nope\""));
    }

    #[test]
    fn bad_pages_are_errors_not_empty_pools() {
        for page in ["", "{", "[]", "<html>", r#"{"cluster_statuses": 7}"#] {
            assert!(parse(page.as_bytes(), "llm_pool").is_err(), "{page:?}");
        }
        let v6 = r#"{"cluster_statuses":[{"name":"p","host_statuses":[
            {"address":{"socket_address":{"address":"::1","port_value":8000}}},
            {"address":{"pipe":{"path":"/tmp/s"}}},
            {"address":{"socket_address":{"address":"::1","port_value":8000}}}]}]}"#;
        let m = parse(v6.as_bytes(), "p").unwrap();
        assert_eq!(m.hosts, [Host { address: "[::1]:8000".into(), unhealthy: None }]);
        assert_eq!(m.left_out, 2, "the pipe and the duplicate");
    }

    #[test]
    fn the_path_matches_only_the_pool_whatever_its_name() {
        assert_eq!(admin_path("llm_pool"), "/clusters?format=json&filter=%5Ellm_pool%24");
        // Istio's names are full of regex syntax.
        assert_eq!(
            admin_path("outbound|8000||vllm.ns.svc.cluster.local"),
            "/clusters?format=json&filter=%5Eoutbound%5C%7C8000%5C%7C%5C%7Cvllm%5C.ns%5C.svc%5C.cluster%5C.local%24"
        );
    }
}
