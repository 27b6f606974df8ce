//! Where the built artifacts are. `./build.sh` makes them before any test runs.

use std::path::PathBuf;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap_or_else(|_| PathBuf::from(".."))
}

fn must_exist(path: PathBuf, how: &str) -> PathBuf {
    assert!(path.exists(), "{} is missing: {how}", path.display());
    path
}

/// The module as it ships.
pub fn epp_wasm() -> PathBuf {
    must_exist(repo_root().join("dist/epp.wasm"), "run ./build.sh first")
}

/// bench-overhead's floor module (filter/examples/floor.rs).
pub fn floor_wasm() -> PathBuf {
    must_exist(repo_root().join("dist/bench/floor.wasm"), "./build.sh test and ./build.sh bench-overhead build it")
}

pub fn envoy_bin() -> PathBuf {
    let path = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools/bin/envoy"));
    must_exist(path, "./build.sh test installs Envoy into .tools/")
}

pub fn target_bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from);
    must_exist(target.join("release").join(name), "./build.sh test builds it")
}

pub fn envoy_config(name: &str) -> PathBuf {
    must_exist(repo_root().join("envoy").join(name), "it ships in envoy/")
}
