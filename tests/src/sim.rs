//! A simulated model server (`model-sim`) as a child process, killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::client::Client;
use crate::paths;

pub struct Sim {
    pub addr: String,
    child: Child,
}

impl Sim {
    /// Starts `model-sim --port 0 ARGS…` and waits for its address.
    pub fn start(args: &[&str]) -> Sim {
        let mut child = Command::new(paths::target_bin("model-sim"))
            .args(["--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("model-sim starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("model-sim prints its address");
        let addr = line
            .split_whitespace()
            .find(|w| w.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("model-sim said {line:?}"))
            .to_string();
        Sim { addr, child }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Makes `/metrics` misbehave: "ok", "garbage", "error", "hang", "huge", "many-models"
    /// or "huge-kv-cache".
    pub fn set_metrics_fault(&self, fault: &str) {
        let r = Client::new(Duration::from_secs(5))
            .post_json(&self.url("/admin/fault"), &serde_json::json!({ "metrics": fault }));
        assert_eq!(r.status, 204, "fault {fault}: {}", r.body);
    }

    /// The sum of a metric's samples on this server's page (e.g. its finished requests).
    pub fn metric(&self, name: &str) -> f64 {
        let page = Client::new(Duration::from_secs(5)).get(&self.url("/metrics")).body;
        epp::prom::parse(&page).flatten().filter(|s| s.name == name).map(|s| s.value).sum()
    }

    /// How many times `/metrics` was read (`metric` reads it too).
    pub fn metrics_requests(&self) -> u64 {
        let r = Client::new(Duration::from_secs(5)).get(&self.url("/admin/stats"));
        r.json()["metrics_requests"].as_u64().unwrap_or(0)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.kill();
    }
}
