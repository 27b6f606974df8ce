//! A real Envoy as a child process, running one of the shipped configs in `envoy/` with
//! the test's endpoints, plugin settings and free ports swapped in.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::client::{Client, Reply};
use crate::{paths, wait_for};

pub struct EnvoyOptions {
    /// The config file in `envoy/`.
    pub config: &'static str,
    /// Plugin configuration keys to set (merged into both roles' JSON).
    pub plugin: Value,
    /// The module to load (default: dist/epp.wasm).
    pub wasm: Option<PathBuf>,
    pub concurrency: u32,
    /// Without the module (no picker filter, no scraper): Envoy alone, the pool's
    /// round-robin fallback serving, as a baseline.
    pub without_picker: bool,
    /// The listener's port (default: any free one), for replicas that must name each other.
    pub listen_port: Option<u16>,
    /// More clusters, as YAML list items at the indentation of `clusters:`' items.
    pub extra_clusters: String,
    /// YAML to insert after a line of the rendered config (the first that ends with the
    /// given text), e.g. a transport socket into a cluster.
    pub insert_after: Vec<(String, String)>,
    /// Text of the rendered config to replace (every occurrence), e.g. a root id.
    pub replace: Vec<(String, String)>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        EnvoyOptions {
            config: "envoy.yaml",
            plugin: serde_json::json!({}),
            wasm: None,
            concurrency: 2,
            without_picker: false,
            listen_port: None,
            extra_clusters: String::new(),
            insert_after: Vec::new(),
            replace: Vec::new(),
        }
    }
}

pub struct Envoy {
    pub listener: String,
    pub admin: String,
    pub dir: PathBuf,
    child: Child,
    client: Client,
    /// What the files Envoy watches (EDS, ECDS) are rendered with, to render them anew.
    rendering: Rendering,
}

/// How a run's configuration files are made from the shipped ones.
#[derive(Clone)]
struct Rendering {
    /// The files in `envoy/` that the main config names (`path: envoy/<file>`).
    watched: Vec<String>,
    endpoints: Vec<String>,
    plugin: Value,
    wasm: String,
    without_picker: bool,
    port: u16,
    admin_port: u16,
}

impl Rendering {
    /// The shipped `template` with this run's values, and how many plugin configurations
    /// it held.
    fn render(&self, template: &str, dir: &std::path::Path) -> (String, usize) {
        let (mut text, n) = render_file(template, &self.endpoints, &self.plugin, &self.wasm, self.without_picker, self.port);
        text = text.replace("port_value: 9901", &format!("port_value: {}", self.admin_port));
        for file in &self.watched {
            text = text.replace(&format!("path: envoy/{file}"), &format!("path: {}", dir.join(file).display()));
        }
        (text, n)
    }

    /// Writes watched file `file` anew, as Envoy wants it: moved into place whole.
    fn write_watched(&self, file: &str, dir: &std::path::Path) -> usize {
        let template = fs::read_to_string(paths::envoy_config(file)).expect("watched file");
        let (text, n) = self.render(&template, dir);
        let tmp = dir.join(format!(".{file}.tmp"));
        fs::write(&tmp, text).expect("write");
        fs::rename(&tmp, dir.join(file)).expect("move into place");
        n
    }
}

/// Where the listener named `name` listens ("ip:port"), as Envoy's admin says.
fn listener_address(client: &Client, admin: &str, name: &str) -> Option<String> {
    let v = client.get(&format!("http://{admin}/listeners?format=json")).json();
    let listeners = v["listener_statuses"].as_array()?;
    let address = listeners.iter().find(|l| l["name"] == name)?["local_address"]["socket_address"].as_object()?;
    Some(format!("{}:{}", address.get("address")?.as_str()?, address.get("port_value")?.as_u64()?))
}

/// A port nothing listens on now (the admin's, which the admin cluster must name).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_or(0, |a| a.port())
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The shipped config with this run's endpoints, plugin settings, module path and ports 0.
pub fn render(template: &str, endpoints: &[String], plugin: &Value, wasm: &str, without_picker: bool) -> String {
    render_on(template, endpoints, plugin, wasm, without_picker, 0)
}

/// `render`, with the listener on `port` (0: any free one).
pub fn render_on(template: &str, endpoints: &[String], plugin: &Value, wasm: &str, without_picker: bool, port: u16) -> String {
    let (text, replaced) = render_file(template, endpoints, plugin, wasm, without_picker, port);
    assert!(replaced >= 1, "a plugin configuration was found in the template");
    text.replace("port_value: 9901", "port_value: 0")
}

/// One shipped file with this run's values, and the number of plugin configurations it held.
fn render_file(template: &str, endpoints: &[String], plugin: &Value, wasm: &str, without_picker: bool, port: u16) -> (String, usize) {
    let mut out = Vec::new();
    let mut skipping_picker = false;
    let mut lines = template.lines().peekable();
    let mut in_pool = false;
    let mut replaced_configs = 0;
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        // Without the module: drop the scraper (up to static_resources) and the picker
        // filter (up to the router).
        if without_picker && (trimmed == "bootstrap_extensions:" || trimmed == "- name: envoy.filters.http.wasm") {
            skipping_picker = true;
        }
        if skipping_picker {
            if trimmed != "- name: envoy.filters.http.router" && trimmed != "static_resources:" {
                if trimmed == "value: |" {
                    replaced_configs += 1;
                }
                continue;
            }
            skipping_picker = false;
        }
        if trimmed == "# pool-endpoints-begin" {
            in_pool = true;
            out.push(line.to_string());
            for e in endpoints {
                let (host, port) = e.rsplit_once(':').expect("ip:port");
                out.push(format!(
                    "{:indent$}- endpoint: {{ address: {{ socket_address: {{ address: {host}, port_value: {port} }} }} }}",
                    ""
                ));
            }
            continue;
        }
        if trimmed == "# pool-endpoints-end" {
            in_pool = false;
        }
        if in_pool {
            continue;
        }
        if trimmed == "value: |" {
            // The plugin configuration: a JSON block scalar. Merge, then write it on one line.
            let mut json = String::new();
            while let Some(next) = lines.peek() {
                let next_indent = next.len() - next.trim_start().len();
                if next.trim().is_empty() || next_indent <= indent {
                    break;
                }
                json.push_str(next);
                lines.next();
            }
            let mut doc: Value = serde_json::from_str(&json).expect("the shipped plugin config is JSON");
            // A listed pool gets this run's servers; a discovered one finds them in Envoy.
            if doc.get("endpoints").is_some() || plugin.get("endpoints").is_some() {
                doc["endpoints"] = serde_json::json!(endpoints);
                if let Some(d) = doc.as_object_mut() {
                    d.remove("pool_cluster");
                }
            }
            if let (Some(d), Some(p)) = (doc.as_object_mut(), plugin.as_object()) {
                for (k, v) in p {
                    d.insert(k.clone(), v.clone());
                }
            }
            out.push(format!("{:indent$}value: '{}'", "", doc.to_string().replace('\'', "''")));
            replaced_configs += 1;
            continue;
        }
        let line = line
            .replace("port_value: 10000", &format!("port_value: {port}"))
            .replace("filename: dist/epp.wasm", &format!("filename: {wasm}"));
        out.push(line);
    }
    (out.join("\n") + "\n", replaced_configs)
}

impl Envoy {
    pub fn start(endpoints: &[String], options: EnvoyOptions) -> Envoy {
        Self::try_start(endpoints, options).unwrap_or_else(|log| panic!("Envoy did not start:\n{log}"))
    }

    /// Starts Envoy and waits until it listens; `Err` carries its log if it exits instead.
    pub fn try_start(endpoints: &[String], options: EnvoyOptions) -> Result<Envoy, String> {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("wasm-epp-envoy-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        let template = fs::read_to_string(paths::envoy_config(options.config)).expect("config");
        let wasm = options.wasm.unwrap_or_else(paths::epp_wasm);
        let watched = template
            .lines()
            .filter_map(|l| l.split("path: envoy/").nth(1))
            .map(|rest| rest.trim_end_matches(|c: char| c == '}' || c.is_whitespace()).to_string())
            .collect();
        let rendering = Rendering {
            watched,
            endpoints: endpoints.to_vec(),
            plugin: options.plugin.clone(),
            wasm: wasm.display().to_string(),
            without_picker: options.without_picker,
            port: options.listen_port.unwrap_or(0),
            admin_port: free_port(),
        };
        let (mut config, mut plugins) = rendering.render(&template, &dir);
        for file in &rendering.watched {
            plugins += rendering.write_watched(file, &dir);
        }
        assert!(plugins >= 1 || options.without_picker, "a plugin configuration was found in {}", options.config);
        for (from, to) in &options.replace {
            assert!(config.contains(from.as_str()), "no {from:?} in the config");
            config = config.replace(from.as_str(), to);
        }
        for (after, text) in &options.insert_after {
            let at = config.find(&format!("{after}\n")).unwrap_or_else(|| panic!("no line ending {after:?} in the config"));
            let at = at + after.len() + 1;
            config.insert_str(at, &(text.trim_end().to_string() + "\n"));
        }
        if !options.extra_clusters.is_empty() {
            config = config.replacen("\n  clusters:\n", &format!("\n  clusters:\n{}\n", options.extra_clusters.trim_end()), 1);
        }
        let (listener, admin, child, client) = Self::spawn(&dir, &config, options.concurrency, "llm")?;
        Ok(Envoy { listener, admin, dir, child, client, rendering })
    }

    /// Envoy with `config` as it is (a platform's generated configuration, say), waiting
    /// until the listener named `listener` listens and Envoy is ready.
    pub fn start_raw(config: &str, listener: &str) -> Envoy {
        Self::start_raw_on(config, listener, 2)
    }

    /// `start_raw` with `concurrency` workers.
    pub fn start_raw_on(config: &str, listener: &str, concurrency: u32) -> Envoy {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("wasm-epp-envoy-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        let (address, admin, child, client) =
            Self::spawn(&dir, config, concurrency, listener).unwrap_or_else(|log| panic!("Envoy did not start:\n{log}"));
        let rendering = Rendering {
            watched: Vec::new(),
            endpoints: Vec::new(),
            plugin: serde_json::json!({}),
            wasm: String::new(),
            without_picker: false,
            port: 0,
            admin_port: 0,
        };
        Envoy { listener: address, admin, dir, child, client, rendering }
    }

    /// Runs Envoy on `config` in `dir`: (listener address, admin address, process, client).
    fn spawn(dir: &std::path::Path, config: &str, concurrency: u32, listener_name: &str) -> Result<(String, String, Child, Client), String> {
        let config_path = dir.join("envoy.yaml");
        fs::write(&config_path, config).expect("write config");
        let admin_path = dir.join("admin.txt");
        let log_path = dir.join("envoy.log");
        let log = fs::File::create(&log_path).expect("log file");
        let mut child = Command::new(paths::envoy_bin())
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--disable-hot-restart", "--log-level", "info"])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("envoy starts");
        let client = Client::new(Duration::from_secs(60));
        let read_log = || fs::read_to_string(&log_path).unwrap_or_default();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let admin = loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("envoy exited with {status}:\n{}", read_log()));
            }
            if let Ok(a) = fs::read_to_string(&admin_path) {
                if !a.trim().is_empty() {
                    break a.trim().to_string();
                }
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("no admin address after 30 s:\n{}", read_log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let listener = loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("envoy exited with {status}:\n{}", read_log()));
            }
            if let Some(l) = listener_address(&client, &admin, listener_name) {
                if client.get(&format!("http://{admin}/ready")).status == 200 {
                    break l;
                }
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("not ready after 30 s:\n{}", read_log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok((listener, admin, child, client))
    }

    /// The pool is now `endpoints`: a new EDS file moved into place (configs that read
    /// the pool from `envoy/llm_pool.eds.yaml`).
    pub fn set_pool(&mut self, endpoints: &[String]) {
        self.rendering.endpoints = endpoints.to_vec();
        self.rendering.write_watched("llm_pool.eds.yaml", &self.dir);
    }

    /// The picker's plugin configuration is now the shipped one with `plugin` merged in: a
    /// new ECDS file moved into place (configs that read `envoy/picker.ecds.yaml`).
    pub fn set_plugin(&mut self, plugin: Value) {
        self.rendering.plugin = plugin;
        self.rendering.write_watched("picker.ecds.yaml", &self.dir);
    }

    /// Where another of its listeners, named `name`, listens ("ip:port").
    pub fn listener_address(&self, name: &str) -> Option<String> {
        listener_address(&self.client(), &self.admin, name)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listener)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A counter or gauge from Envoy's stats (0 when absent).
    pub fn stat(&self, name: &str) -> u64 {
        let r = self.client.get(&format!("http://{}/stats?filter=^{}$", self.admin, name.replace('.', "\\.")));
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// Waits until the picker schedules from a fresh table (not failing open).
    /// Envoy's process id (to pin it to a core, or read its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn wait_for_table(&self) {
        wait_for("the first metrics table", Duration::from_secs(20), || {
            let fail_open = self.stat("wasmcustom.wasm_epp.fail_open");
            let routed = self.stat("wasmcustom.wasm_epp.routed");
            let r = self.client.get(&self.url("/health"));
            let scheduled = r.status == 200
                && self.stat("wasmcustom.wasm_epp.routed") > routed
                && self.stat("wasmcustom.wasm_epp.fail_open") == fail_open;
            scheduled.then_some(())
        });
    }

    pub fn post(&self, path: &str, body: &Value) -> Reply {
        self.client.post_json(&self.url(path), body)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("Envoy's log is kept in {}", self.dir.display());
        }
    }
}
