//! Deployment as a cluster does it: the OCI image through a real registry and back, the
//! manifests against the platforms' CRDs, and the Envoy configurations the platforms
//! would generate from them, run in real Envoy.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sha2::Digest as _;

use epp_tests::scenario::{addrs, served_by, MODEL};
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
    assert_eq!(module, std::fs::read(paths::epp_wasm()).expect("dist/epp.wasm"), "the same module comes back");

    // And it runs.
    let file = registry.dir.join("plugin.wasm");
    std::fs::write(&file, &module).expect("write the module");
    let sims: Vec<Sim> = (0..2).map(|_| Sim::start(&[])).collect();
    let envoy = Envoy::start(&addrs(&sims.iter().collect::<Vec<_>>()), EnvoyOptions { wasm: Some(file), ..Default::default() });
    envoy.wait_for_table();
    assert_eq!(served_by(&envoy, MODEL, 10).values().sum::<usize>(), 10);
}
