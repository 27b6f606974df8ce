//! Deployment as a cluster does it: the OCI image through a real registry and back, the
//! manifests against the platforms' CRDs, and the Envoy configurations the platforms
//! would generate from them, run in real Envoy.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sha2::Digest as _;

use epp_tests::real_envoy::{addrs, served_by, MODEL};
use epp_tests::{paths, wait_for, Envoy, EnvoyOptions, Sim};

/// The reference registry (Debian's `docker-registry`) on a loopback port, for one test.
struct Registry {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl Registry {
    fn start() -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a port");
        let dir = std::env::temp_dir().join(format!("wasm-epp-registry-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("registry dir");
        let config = format!(
            "version: 0.1\nlog: {{ level: warn }}\nstorage: {{ filesystem: {{ rootdirectory: {} }} }}\nhttp: {{ addr: 127.0.0.1:{port} }}\n",
            dir.join("data").display()
        );
        std::fs::write(dir.join("config.yml"), config).expect("registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry runs (build.sh test installs it)");
        let addr = format!("127.0.0.1:{port}");
        wait_for("the registry", Duration::from_secs(20), || std::net::TcpStream::connect(&addr).ok().map(|_| ()));
        Registry { child, addr, dir }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo").args(args).output().expect("skopeo runs (build.sh test installs it)");
    assert!(out.status.success(), "skopeo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_file(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).expect("JSON")
}

/// What Istio's agent (`pkg/wasm/imagefetcher.go`) does with an OCI image: take the last
/// layer, which must be a tar+gzip (OCI or Docker media type), and in it the file whose
/// base name is `plugin.wasm`; the bytes must be a wasm binary. Envoy Gateway's puller
/// accepts the same shape.
fn extract_like_istio(layout: &Path) -> Vec<u8> {
    let index = json_file(&layout.join("index.json"));
    let manifest_digest = index["manifests"][0]["digest"].as_str().expect("a manifest");
    let blob = |digest: &str| layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let manifest = json_file(&blob(manifest_digest));
    let last = manifest["layers"].as_array().and_then(|l| l.last()).expect("a layer");
    let media = last["mediaType"].as_str().unwrap_or_default();
    assert!(
        ["application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip"].contains(&media),
        "Istio takes a tar+gzip last layer, not {media}"
    );
    let layer = std::fs::File::open(blob(last["digest"].as_str().expect("digest"))).expect("layer blob");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(layer));
    for entry in archive.entries().expect("a tar") {
        let mut entry = entry.expect("an entry");
        let name = entry.path().expect("a path").into_owned();
        if name.file_name().is_some_and(|n| n == "plugin.wasm") {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).expect("read plugin.wasm");
            assert!(bytes.starts_with(b"\0asm"), "a wasm binary");
            return bytes;
        }
    }
    panic!("no plugin.wasm in the last layer");
}

#[test]
fn the_image_round_trips_through_a_registry_by_digest_and_loads_in_envoy() {
    let image = paths::repo_root().join("dist/image");
    let built_digest = std::fs::read_to_string(image.join("digest")).expect("./build.sh image writes dist/image/digest");
    let built_digest = built_digest.trim();
    let version = json_file(&image.join("index.json"))["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .expect("a tag")
        .to_string();
    let registry = Registry::start();
    let repo = format!("docker://{}/wasm-epp", registry.addr);
    skopeo(&["copy", "--dest-tls-verify=false", &format!("oci:{}:{version}", image.display()), &format!("{repo}:{version}")]);

    // The registry serves the very manifest that was built: the digest to pin is the same.
    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &format!("{repo}:{version}")]);
    let served = format!("sha256:{:x}", sha2::Sha256::digest(raw.as_bytes()));
    assert_eq!(served, built_digest);

    // Pulled back by digest, as a WasmPlugin `url: oci://…@sha256:…` does.
    let pulled = registry.dir.join("pulled");
    skopeo(&["copy", "--src-tls-verify=false", &format!("{repo}@{built_digest}"), &format!("oci:{}:pulled", pulled.display())]);
    let module = extract_like_istio(&pulled);
    let built = std::fs::read(paths::epp_wasm()).expect("dist/epp.wasm");
    let digest = |b: &[u8]| format!("{:x}", sha2::Sha256::digest(b));
    assert_eq!(digest(&module), digest(&built), "the module in dist/image is dist/epp.wasm (./build.sh image after ./build.sh)");

    // And it runs.
    let file = registry.dir.join("plugin.wasm");
    std::fs::write(&file, &module).expect("write the module");
    let sims: Vec<Sim> = (0..2).map(|_| Sim::start(&[])).collect();
    let envoy = Envoy::start(&addrs(&sims.iter().collect::<Vec<_>>()), EnvoyOptions { wasm: Some(file), ..Default::default() });
    envoy.wait_for_table();
    assert_eq!(served_by(&envoy, MODEL, 10).values().sum::<usize>(), 10);
}

// ---------------------------------------------------------------------------------------
// Manifests

/// Every YAML document of the manifests in `envoy/<platform>/`, with its file name.
fn manifests(platform: &str) -> Vec<(String, serde_json::Value)> {
    let dir = paths::repo_root().join("envoy").join(platform);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("manifest");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_json::to_value(serde_yaml::Value::deserialize(doc).expect("YAML")).expect("JSON-shaped YAML");
            if !value.is_null() {
                docs.push((file.file_name().unwrap_or_default().to_string_lossy().into_owned(), value));
            }
        }
    }
    docs
}

use serde::Deserialize as _;

/// A CRD's schema for (group/version, kind), from tests/fixtures/crds, made strict as
/// `kubectl apply --validate=strict` is: a field the schema does not name is an error.
fn crd_schema(api_version: &str, kind: &str) -> Option<serde_json::Value> {
    let dir = paths::repo_root().join("tests/fixtures/crds");
    for entry in std::fs::read_dir(dir).expect("tests/fixtures/crds").flatten() {
        let text = std::fs::read_to_string(entry.path()).expect("a CRD");
        let crd: serde_json::Value = serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&text).expect("YAML")).expect("JSON");
        let spec = &crd["spec"];
        if spec["names"]["kind"] != kind {
            continue;
        }
        let group = spec["group"].as_str().unwrap_or_default();
        for v in spec["versions"].as_array().into_iter().flatten() {
            if format!("{group}/{}", v["name"].as_str().unwrap_or_default()) == api_version {
                let mut schema = v["schema"]["openAPIV3Schema"].clone();
                // The API server adds these to every kind.
                if let Some(props) = schema["properties"].as_object_mut() {
                    for (field, kind) in [("apiVersion", "string"), ("kind", "string"), ("metadata", "object")] {
                        props.entry(field).or_insert(serde_json::json!({ "type": kind }));
                    }
                }
                strict(&mut schema);
                return Some(schema);
            }
        }
    }
    None
}

/// Kubernetes' structural-schema dialect as JSON Schema: objects with `properties` close
/// over them (unless they preserve unknown fields), int-or-string is either.
fn strict(schema: &mut serde_json::Value) {
    let Some(obj) = schema.as_object_mut() else { return };
    if obj.remove("x-kubernetes-int-or-string") == Some(serde_json::Value::Bool(true)) {
        obj.insert("anyOf".into(), serde_json::json!([{"type": "integer"}, {"type": "string"}]));
    }
    let preserves = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&serde_json::Value::Bool(true));
    if obj.contains_key("properties") && !obj.contains_key("additionalProperties") && !preserves {
        // metadata is the API server's to check; keep it open.
        obj.insert("additionalProperties".into(), serde_json::Value::Bool(false));
    }
    if obj.remove("nullable") == Some(serde_json::Value::Bool(true)) {
        if let Some(t) = obj.get("type").cloned() {
            obj.insert("type".into(), serde_json::json!([t, "null"]));
        }
    }
    for (key, child) in obj.iter_mut() {
        match key.as_str() {
            "properties" | "patternProperties" => {
                for (name, v) in child.as_object_mut().into_iter().flatten() {
                    if name != "metadata" {
                        strict(v);
                    }
                }
            }
            "items" | "additionalProperties" | "not" => strict(child),
            "allOf" | "anyOf" | "oneOf" => child.as_array_mut().into_iter().flatten().for_each(strict),
            _ => {}
        }
    }
}

/// The errors of `doc` against its CRD, or `None` if no CRD of the fixtures defines it.
fn crd_errors(doc: &serde_json::Value) -> Option<Vec<String>> {
    let schema = crd_schema(doc["apiVersion"].as_str()?, doc["kind"].as_str()?)?;
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    Some(validator.iter_errors(doc).map(|e| format!("{}: {e}", e.instance_path)).collect())
}

/// Kinds whose CRD (or built-in schema) is not among the fixtures: Gateway API and core
/// resources, and Envoy Gateway's EnvoyPatchPolicy. They get the checks below instead.
const WITHOUT_CRD: [(&str, &str); 4] = [
    ("gateway.networking.k8s.io/v1", "Gateway"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("v1", "Service"),
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyPatchPolicy"),
];

#[test]
fn every_manifest_validates_against_its_crd() {
    let mut checked = std::collections::BTreeMap::new();
    for platform in ["istio", "envoy-gateway"] {
        for (file, doc) in manifests(platform) {
            let what = format!("{platform}/{file}: {} {}", doc["kind"], doc["metadata"]["name"]);
            assert!(doc["metadata"]["name"].is_string() && doc["metadata"]["namespace"].is_string(), "{what}: named and namespaced");
            match crd_errors(&doc) {
                Some(errors) => {
                    assert!(errors.is_empty(), "{what}:\n{}", errors.join("\n"));
                    *checked.entry(doc["kind"].as_str().unwrap_or_default().to_string()).or_insert(0) += 1;
                }
                None => {
                    let key = (doc["apiVersion"].as_str().unwrap_or_default(), doc["kind"].as_str().unwrap_or_default());
                    assert!(WITHOUT_CRD.contains(&key), "{what}: no CRD in tests/fixtures/crds and not a known kind");
                    assert!(doc["spec"].is_object(), "{what}: a spec");
                }
            }
        }
    }
    eprintln!("validated against their CRDs: {checked:?}");
    assert!(checked.get("EnvoyFilter").is_some_and(|&n| n >= 1) && checked.get("EnvoyExtensionPolicy").is_some_and(|&n| n >= 2));
}

#[test]
fn the_crd_check_rejects_what_kubectl_would() {
    let (_, filter) = manifests("istio").into_iter().find(|(_, d)| d["kind"] == "EnvoyFilter").expect("an EnvoyFilter");
    let mut typo = filter.clone();
    typo["spec"]["configPatches"][0]["aplyTo"] = serde_json::json!("CLUSTER");
    let mut bad_enum = filter.clone();
    bad_enum["spec"]["configPatches"][1]["patch"]["operation"] = serde_json::json!("INSERT_SOMEWHERE");
    for (doc, at) in [(typo, "aplyTo"), (bad_enum, "/spec/configPatches/1/patch/operation")] {
        let errors = crd_errors(&doc).expect("a CRD");
        assert!(errors.len() == 1 && errors[0].contains(at), "{errors:?}");
    }
    let (_, policy) =
        manifests("envoy-gateway").into_iter().find(|(_, d)| d["kind"] == "EnvoyExtensionPolicy").expect("an EnvoyExtensionPolicy");
    let mut no_code = policy.clone();
    no_code["spec"]["wasm"][0].as_object_mut().map(|w| w.remove("code"));
    let errors = crd_errors(&no_code).expect("a CRD");
    assert!(errors.len() == 1 && errors[0].contains("code"), "code is required: {errors:?}");
}

/// The plugin configuration of a manifest, parsed by the module's own parser.
fn plugin_config(json: &str) -> epp::config::Config {
    epp::config::Config::parse(json.as_bytes()).unwrap_or_else(|e| panic!("{e}: {json}"))
}

#[test]
fn every_manifest_carries_a_configuration_the_module_accepts() {
    for (file, doc) in manifests("istio") {
        for patch in doc["spec"]["configPatches"].as_array().into_iter().flatten() {
            if patch["applyTo"] == "EXTENSION_CONFIG" {
                let config = &patch["patch"]["value"]["typed_config"]["config"];
                assert_eq!(config["allow_on_headers_stop_iteration"], true, "{file}");
                assert_eq!(config["root_id"], "picker", "{file}");
                plugin_config(config["configuration"]["value"].as_str().expect("a StringValue"));
            }
        }
    }
    for (file, doc) in manifests("envoy-gateway") {
        for wasm in doc["spec"]["wasm"].as_array().into_iter().flatten() {
            let c = plugin_config(&wasm["config"].to_string());
            // An ORIGINAL_DST pool takes one address.
            if file == "original-dst.yaml" {
                assert_eq!(c.max_fallbacks, 0, "{file}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The Envoy configuration each platform generates from the manifests, rebuilt and run.

use serde_json::{json, Value};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a port")
}

fn socket(address: &str) -> Value {
    let (ip, port) = address.rsplit_once(':').expect("ip:port");
    json!({"socket_address": {"address": ip, "port_value": port.parse::<u32>().expect("a port")}})
}

fn static_cluster(name: &str, hosts: &[String]) -> Value {
    let endpoints: Vec<Value> = hosts.iter().map(|h| json!({"endpoint": {"address": socket(h)}})).collect();
    json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
           "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]}})
}

/// The bootstrap both platforms give their proxies, as far as the module sees it: an
/// admin address, and the static `prometheus_stats` cluster to it.
fn platform_bootstrap(admin_port: u16, listener: Value, clusters: Vec<Value>) -> Value {
    let admin = format!("127.0.0.1:{admin_port}");
    let mut all = vec![static_cluster("prometheus_stats", &[admin.clone()])];
    all.extend(clusters);
    json!({"node": {"id": "gateway", "cluster": "gateway"},
           "admin": {"address": socket(&admin)},
           "static_resources": {"listeners": [listener], "clusters": all}})
}

fn hcm(route_config: Value, http_filters: Vec<Value>) -> Value {
    json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "gateway", "route_config": route_config, "http_filters": http_filters}})
}

fn router() -> Value {
    json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
}

/// Proto MERGE as Istio's EnvoyFilter applies it: objects merge, lists append, scalars replace.
fn proto_merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                proto_merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (Value::Array(b), Value::Array(p)) => b.extend(p.iter().cloned()),
        (b, p) => *b = p.clone(),
    }
}

/// What istiod and Istio's agent make of envoy/istio/wasm-epp.yaml for a gateway pod: the
/// EXTENSION_CONFIG as an ECDS resource (the module rewritten to a local file, as the
/// agent does after pulling the image), the HTTP_FILTER inserted before the router with
/// its config_discovery (a file source here instead of ADS), the pool's EDS cluster named
/// as Istio names it with the MERGE applied, and the bootstrap's prometheus_stats.
fn istio_generated(pods: &[String], dir: &Path, listen_port: u16, admin_port: u16) -> Value {
    let docs = manifests("istio");
    let filter = docs.iter().map(|(_, d)| d).find(|d| d["kind"] == "EnvoyFilter").expect("the EnvoyFilter");
    let patches = filter["spec"]["configPatches"].as_array().expect("patches");
    let patch = |to: &str| patches.iter().find(|p| p["applyTo"] == to).expect("a patch").clone();
    let route = docs.iter().map(|(_, d)| d).find(|d| d["kind"] == "HTTPRoute").expect("the HTTPRoute");
    let backend = &route["spec"]["rules"][0]["backendRefs"][0];
    let ns = route["metadata"]["namespace"].as_str().expect("a namespace");
    let pool = format!("outbound|{}||{}.{ns}.svc.cluster.local", backend["port"], backend["name"].as_str().expect("a name"));

    let mut extension = patch("EXTENSION_CONFIG")["patch"]["value"].clone();
    let vm = &mut extension["typed_config"]["config"]["vm_config"];
    assert!(vm["code"]["remote"]["http_uri"]["uri"].as_str().is_some_and(|u| u.starts_with("oci://")), "the image");
    vm["code"] = json!({"local": {"filename": paths::epp_wasm().display().to_string()}});
    let ecds = json!({"resources": [{"@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                                      "name": extension["name"], "typed_config": extension["typed_config"]}]});
    std::fs::write(dir.join("ecds.json"), ecds.to_string()).expect("ECDS file");

    let mut picker = patch("HTTP_FILTER")["patch"]["value"].clone();
    assert_eq!(patch("HTTP_FILTER")["patch"]["operation"], "INSERT_BEFORE");
    assert!(picker["config_discovery"]["config_source"]["ads"].is_object(), "istiod serves it over ADS");
    picker["config_discovery"]["config_source"] = json!({"path_config_source": {"path": dir.join("ecds.json").display().to_string()}, "resource_api_version": "V3"});

    // Istio's gateway cluster for a Service: EDS (here a static list), round robin.
    let mut pool_cluster = static_cluster(&pool, pods);
    let clusters: Vec<&Value> = patches.iter().filter(|p| p["applyTo"] == "CLUSTER").collect();
    for p in &clusters {
        let service = p["match"]["cluster"]["service"].as_str().unwrap_or_default();
        if pool.ends_with(service) && p["patch"]["operation"] == "MERGE" {
            proto_merge(&mut pool_cluster, &p["patch"]["value"]);
        }
    }
    let routes = json!({"name": "http.80", "virtual_hosts": [{"name": "gateway", "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": pool, "timeout": "300s"}}]}]});
    let listener = json!({"name": "0.0.0.0_80", "address": socket(&format!("127.0.0.1:{listen_port}")),
        "per_connection_buffer_limit_bytes": 16777216,
        "filter_chains": [{"filters": [hcm(routes, vec![picker, router()])]}]});
    platform_bootstrap(admin_port, listener, vec![pool_cluster])
}

/// What Envoy Gateway generates from envoy/envoy-gateway/wasm-epp.yaml (or `file`): the
/// wasm filter inline in the HCM and disabled, enabled on the route, named and with the
/// vm_id Envoy Gateway gives it, the configuration as a StringValue of the JSON; the
/// route's cluster; the bootstrap's prometheus_stats; then the EnvoyPatchPolicy's JSON
/// patches, applied at their JSONPath matches as Envoy Gateway applies them.
fn envoy_gateway_generated(file: &str, pods: &[String], listen_port: u16, admin_port: u16) -> Value {
    let all = manifests("envoy-gateway");
    let from = |f: &str, kind: &str| all.iter().find(|(n, d)| n == f && d["kind"] == kind).map(|(_, d)| d.clone());
    let route = from("wasm-epp.yaml", "HTTPRoute").expect("the HTTPRoute");
    let gateway = from("wasm-epp.yaml", "Gateway").expect("the Gateway");
    let policy = from(file, "EnvoyExtensionPolicy").expect("the EnvoyExtensionPolicy");
    let patches = from(file, "EnvoyPatchPolicy").expect("the EnvoyPatchPolicy");
    let ns = policy["metadata"]["namespace"].as_str().expect("a namespace").to_string();
    let wasm = &policy["spec"]["wasm"][0];
    let ir_name = format!("envoyextensionpolicy/{ns}/{}/wasm/0", policy["metadata"]["name"].as_str().expect("a name"));
    let filter_name = format!("envoy.filters.http.wasm/{ir_name}");
    let picker = json!({"name": filter_name, "disabled": true, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {"name": wasm["name"], "root_id": wasm["rootID"],
                   "vm_config": {"vm_id": ir_name, "runtime": "envoy.wasm.runtime.v8",
                                 "code": {"local": {"filename": paths::epp_wasm().display().to_string()}}},
                   "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": wasm["config"].to_string()}}}});
    let route_ns = route["metadata"]["namespace"].as_str().expect("a namespace");
    let cluster_name = format!("httproute/{route_ns}/{}/rule/0", route["metadata"]["name"].as_str().expect("a name"));
    let listener_name = format!("{ns}/{}/{}", gateway["metadata"]["name"].as_str().expect("a name"), gateway["spec"]["listeners"][0]["name"].as_str().expect("a name"));
    let mut routes = json!({"name": listener_name, "virtual_hosts": [{"name": "gateway", "domains": ["*"],
        "routes": [{"name": format!("{cluster_name}/match/0/*"), "match": {"prefix": "/"},
                    "route": {"cluster": cluster_name, "timeout": "300s"},
                    "typed_per_filter_config": {filter_name.clone(): {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}}}]}]});
    let mut listener = json!({"name": listener_name, "address": socket(&format!("127.0.0.1:{listen_port}")),
        "per_connection_buffer_limit_bytes": 16777216,
        "default_filter_chain": {"filters": [hcm(json!(null), vec![picker, router()])]}});
    let mut cluster = static_cluster(&cluster_name, pods);
    cluster["lb_policy"] = json!("LEAST_REQUEST");
    let mut clusters = vec![cluster];

    for p in patches["spec"]["jsonPatches"].as_array().expect("patches") {
        let op = &p["operation"];
        let target = match p["type"].as_str() {
            Some("type.googleapis.com/envoy.config.listener.v3.Listener") if p["name"] == listener_name => &mut listener,
            Some("type.googleapis.com/envoy.config.route.v3.RouteConfiguration") if p["name"] == listener_name => &mut routes,
            Some("type.googleapis.com/envoy.config.cluster.v3.Cluster") => {
                let path = op["path"].as_str().unwrap_or_default();
                if op["op"] == "add" && path.is_empty() && op["jsonPath"].is_null() {
                    clusters.push(op["value"].clone()); // a whole new resource
                    continue;
                }
                clusters.iter_mut().find(|c| c["name"] == p["name"]).unwrap_or_else(|| panic!("no cluster {}", p["name"]))
            }
            other => panic!("a patch of {other:?} {} that names nothing generated", p["name"]),
        };
        apply_envoy_patch(target, op);
    }
    let hcm_config = &mut listener["default_filter_chain"]["filters"][0]["typed_config"];
    hcm_config["route_config"] = routes;
    platform_bootstrap(admin_port, listener, clusters)
}

/// One EnvoyPatchPolicy operation: RFC 6902 at `path`, or, with `jsonPath`, at `path`
/// below each match (`internal/xds/translator/jsonpatch.go`).
fn apply_envoy_patch(resource: &mut Value, op: &Value) {
    let path = op["path"].as_str().unwrap_or_default().to_string();
    let bases: Vec<String> = match op["jsonPath"].as_str() {
        Some(query) => {
            let query = serde_json_path::JsonPath::parse(query).expect("a JSONPath");
            let found: Vec<String> = query.query_located(resource).locations().map(|l| l.to_json_pointer()).collect();
            assert!(!found.is_empty(), "the JSONPath {query} matches nothing in {resource}");
            found
        }
        None => vec![String::new()],
    };
    for base in bases {
        let mut one = op.clone();
        one["path"] = json!(format!("{base}{path}"));
        if let Some(o) = one.as_object_mut() {
            o.remove("jsonPath");
        }
        let patch: json_patch::Patch = serde_json::from_value(json!([one])).expect("an RFC 6902 operation");
        json_patch::patch(resource, &patch).unwrap_or_else(|e| panic!("{e}: {op}"));
    }
}

/// Three servers, one loaded from outside the gateway: the picker must see it and avoid it.
fn routes_by_load(config: &Value, listener: &str, sims: &[Sim], expect_fallbacks: bool) {
    let envoy = Envoy::start_raw(&config.to_string(), listener);
    envoy.wait_for_table();
    let busy = &sims[0];
    let _load = epp_tests::real_envoy::load_directly(busy, MODEL, 20, 300);
    wait_for("the load to show", Duration::from_secs(5), || (busy.metric("vllm:num_requests_waiting") >= 10.0).then_some(()));
    std::thread::sleep(Duration::from_millis(500));
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..20 {
        let r = envoy.post("/v1/chat/completions", &epp_tests::client::chat(MODEL, "hi", 1));
        assert_eq!(r.status, 200, "{}", r.body);
        let destination = r.header("x-seen-destination").expect("the picker set the destination").to_string();
        assert_eq!(destination.contains(','), expect_fallbacks, "{destination}");
        *seen.entry(r.served_by().unwrap_or_default().to_string()).or_insert(0) += 1;
    }
    assert!(!seen.contains_key(&busy.addr), "the loaded server is avoided: {seen:?}");
    assert!(!envoy.log().contains("panicked"));
}

#[test]
fn the_istio_manifest_runs_as_istio_generates_it() {
    let sims: Vec<Sim> = (0..3).map(|_| Sim::start(&["--max-num-seqs", "4"])).collect();
    let pods = addrs(&sims.iter().collect::<Vec<_>>());
    let dir = std::env::temp_dir().join(format!("wasm-epp-istio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = istio_generated(&pods, &dir, free_port(), free_port());
    routes_by_load(&config, "0.0.0.0_80", &sims, true);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_envoy_gateway_manifest_runs_as_envoy_gateway_generates_it() {
    let sims: Vec<Sim> = (0..3).map(|_| Sim::start(&["--max-num-seqs", "4"])).collect();
    let pods = addrs(&sims.iter().collect::<Vec<_>>());
    let config = envoy_gateway_generated("wasm-epp.yaml", &pods, free_port(), free_port());
    routes_by_load(&config, "default/inference-gateway/http", &sims, true);
}

#[test]
fn the_original_dst_variant_routes_through_an_original_dst_cluster_with_one_address() {
    let sims: Vec<Sim> = (0..3).map(|_| Sim::start(&["--max-num-seqs", "4"])).collect();
    let pods = addrs(&sims.iter().collect::<Vec<_>>());
    let config = envoy_gateway_generated("original-dst.yaml", &pods, free_port(), free_port());
    let clusters = config["static_resources"]["clusters"].as_array().expect("clusters");
    assert!(clusters.iter().any(|c| c["type"] == "ORIGINAL_DST" && c["original_dst_lb_config"]["use_http_header"] == true));
    routes_by_load(&config, "default/inference-gateway/http", &sims, false);
}

// ---------------------------------------------------------------------------------------
// Metrics operators already watch

#[test]
fn envoys_prometheus_page_has_every_documented_series_with_its_labels() {
    let sims: Vec<Sim> = (0..3).map(|_| Sim::start(&[])).collect();
    sims[2].set_metrics_fault("error");
    let refs: Vec<&Sim> = sims.iter().collect();
    // A saturation threshold every server meets: "batch" requests are shed.
    let plugin = json!({"pool_name": "llm-pool", "objectives": {"batch": -1}, "saturation": {"queueDepthThreshold": 0}});
    let envoy = Envoy::start(&addrs(&refs), EnvoyOptions { plugin, ..Default::default() });
    // Before the first table: fail open, and the probe says not ready.
    let early = envoy.client().get(&envoy.url("/.wasm-epp/ready"));
    assert!(early.status == 503 || early.status == 200, "{}", early.body);
    envoy.wait_for_table();
    let ready = envoy.client().get(&envoy.url("/.wasm-epp/ready"));
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.json()["ready"], true);
    assert_eq!(ready.json()["usable_endpoints"], 2, "{}", ready.body);

    let c = envoy.client();
    for _ in 0..40 {
        assert_eq!(envoy.post("/v1/chat/completions", &epp_tests::client::chat(MODEL, "hi", 1)).status, 200);
    }
    let post = |headers: &[(&str, &str)], body: &[u8]| c.send(&envoy.url("/v1/chat/completions"), headers, Some(body)).status;
    assert_eq!(post(&[("content-type", "application/json")], br#"{"model":"no-such-model","messages":[]}"#), 404);
    assert_eq!(post(&[("content-type", "application/json")], b"{not json"), 400);
    let batch = epp_tests::client::chat(MODEL, "later", 1).to_string();
    assert_eq!(post(&[("content-type", "application/json"), ("x-gateway-inference-objective", "batch")], batch.as_bytes()), 429);
    std::thread::sleep(Duration::from_millis(300));

    // Envoy merges histograms at its stats flush (every 5 s by default).
    let page = wait_for("a stats flush with the timed decisions", Duration::from_secs(12), || {
        let page = c.get(&format!("http://{}/stats/prometheus", envoy.admin)).body;
        let timed = page.lines().any(|l| l.starts_with("wasm_epp_scheduler_e2e_duration_microseconds_count") && !l.ends_with(" 0"));
        timed.then_some(page)
    });
    let scrape = prometheus_parse::Scrape::parse(page.lines().map(|l| Ok(l.to_string()))).expect("Envoy's page parses");
    let find = |name: &str| scrape.samples.iter().filter(|s| s.metric == name || s.metric.starts_with(&format!("{name}_"))).collect::<Vec<_>>();
    for (metric, labels) in epp::stats::SERIES {
        let samples = find(metric);
        assert!(!samples.is_empty(), "{metric} is not on the page");
        for s in &samples {
            for label in *labels {
                assert!(s.labels.get(label).is_some(), "{metric}: no label {label} in {:?}", s.labels);
            }
            assert_eq!(s.labels.get("name"), Some("llm-pool"), "{metric}");
        }
    }
    let value = |metric: &str, pairs: &[(&str, &str)]| -> f64 {
        find(metric)
            .iter()
            .filter(|s| pairs.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(value("inference_pool_ready_pods", &[]), 2.0);
    assert!(value("inference_objective_request_total", &[("model_name", MODEL), ("target_model_name", MODEL)]) >= 40.0);
    assert_eq!(value("inference_objective_request_error_total", &[("model_name", "unknown"), ("error_code", "NotFound")]), 1.0);
    assert_eq!(value("inference_objective_request_error_total", &[("error_code", "BadRequest")]), 1.0);
    assert_eq!(value("inference_objective_request_error_total", &[("error_code", "ResourceExhausted")]), 1.0);
    assert_eq!(value("wasm_epp_shed_total", &[]), 1.0);
    assert!(value("wasm_epp_scrape_failures_total", &[("endpoint", sims[2].addr.as_str())]) >= 1.0);
    assert_eq!(value("wasm_epp_scrape_failures_total", &[("endpoint", sims[0].addr.as_str())]), 0.0);
    assert_eq!(value("wasm_epp_ready", &[]), 1.0);
    assert!(value("wasm_epp_table_age_milliseconds", &[]) < 1000.0);
    let histogram = find("wasm_epp_scheduler_e2e_duration_microseconds");
    assert!(histogram.iter().any(|s| matches!(&s.value, prometheus_parse::Value::Histogram(b) if b.iter().any(|b| b.count > 0.0))),
        "decisions were timed: {}", page.lines().filter(|l| l.contains("duration")).collect::<Vec<_>>().join("\n"));
}

#[test]
fn the_dashboard_queries_only_series_the_module_exports() {
    let dashboard = json_file(&paths::repo_root().join("envoy/grafana/wasm-epp.json"));
    let exported: Vec<&str> = epp::stats::SERIES.iter().map(|(m, _)| *m).collect();
    let mut used = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("an expression");
            // Metric names are the identifiers followed by `{`.
            for (at, _) in expr.match_indices('{') {
                let name: String =
                    expr[..at].chars().rev().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>().chars().rev().collect();
                if name.is_empty() || name == "by" {
                    continue;
                }
                let base = name.trim_end_matches("_bucket");
                assert!(exported.contains(&base), "panel {:?} queries {name}, which the module does not export", panel["title"]);
                used.insert(base.to_string());
            }
        }
    }
    assert!(used.len() >= 10, "{used:?}");
}

// ---------------------------------------------------------------------------------------
// CI for users of the repository

#[test]
fn the_workflow_is_valid_and_only_calls_build_sh() {
    let workflow = paths::repo_root().join(".github/workflows/ci.yml");
    let checker = std::env::var("CHECK_JSONSCHEMA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| paths::repo_root().join(".tools/venv/bin/check-jsonschema"));
    let check = |file: &Path| {
        Command::new(&checker)
            .args(["--builtin-schema", "vendor.github-workflows"])
            .arg(file)
            .output()
            .expect("check-jsonschema runs (./build.sh test installs it)")
    };
    let out = check(&workflow);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // The checker fails a broken workflow too.
    let text = std::fs::read_to_string(&workflow).expect("the workflow");
    let broken = std::env::temp_dir().join(format!("wasm-epp-broken-workflow-{}.yml", std::process::id()));
    std::fs::write(&broken, text.replace("runs-on:", "runs_on:")).expect("write");
    assert!(!check(&broken).status.success(), "a misspelt key is caught");
    let _ = std::fs::remove_file(&broken);

    // Every step either checks the repository out or runs build.sh, so CI does what .ci/run does.
    let doc: Value = serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&text).expect("YAML")).expect("JSON");
    let jobs = doc["jobs"].as_object().expect("jobs");
    assert!(jobs.values().any(|j| j["steps"].as_array().into_iter().flatten().any(|s| s["run"] == "./build.sh test")), "a job runs the tests");
    for (name, job) in jobs {
        for step in job["steps"].as_array().expect("steps") {
            match (step["uses"].as_str(), step["run"].as_str()) {
                (Some(uses), None) => assert!(uses.starts_with("actions/checkout@"), "{name}: {uses}"),
                (None, Some(run)) => assert!(run.starts_with("./build.sh ") && !run.contains("&&") && !run.contains(';'), "{name}: {run}"),
                other => panic!("{name}: a step that is neither: {other:?}"),
            }
        }
    }
    assert!(text.contains("./build.sh publish"), "a tag publishes the image");
}
