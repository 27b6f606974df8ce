//! host-sim's host functions, each called directly by a small wasm module written here,
//! with Envoy's answers expected; and the check that every host function dist/epp.wasm
//! imports is exercised, by the real module's scenarios or by this module.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use host_sim::abi::serialize_map;
use host_sim::state::ProxyState;
use host_sim::vm::{HostState, Phase, StreamState, Vm};
use host_sim::{Fleet, HttpRequest, ProxyConfig, SimServer, World};
use serde_json::json;
use host_sim::wasmtime::{Config, Engine, Module};

/// Bytes at fixed addresses, and a bump allocator for what the host hands back.
const SEGMENTS: &[(u32, &[u8])] = &[
    (1000, b"key"),
    (1100, b"value"),
    (1200, b"plugin_root_id"),
    (1300, b"wasm_epp_metrics"),
    (1400, b"no_such_cluster"),
    (1500, b"clear_route_cache"),
    (1600, b"nope"),
    (1700, b"q"),
    (1800, b"vm"),
    (1900, b"counter"),
];
const HEADERS_AT: u32 = 4000;
const RET: i32 = 8000; // two return slots: 8000 and 8004; a u64 at 8008

/// (name, params as WAT types, call arguments, the phase to run in, the expected status).
fn checks(headers_len: i32) -> Vec<(&'static str, &'static str, String, Phase, i32)> {
    let h = format!("{HEADERS_AT} {headers_len}");
    vec![
        ("proxy_log", "i32 i32 i32", "2 1000 3".into(), Phase::Root, 0),
        ("proxy_get_log_level", "i32", format!("{RET}"), Phase::Root, 0),
        ("proxy_get_current_time_nanoseconds", "i32", format!("{}", RET + 8), Phase::Root, 0),
        ("proxy_set_tick_period_milliseconds", "i32", "50".into(), Phase::Root, 0),
        ("proxy_get_buffer_bytes", "i32 i32 i32 i32 i32", format!("7 0 100 {RET} {}", RET + 4), Phase::Configure, 0),
        ("proxy_set_buffer_bytes", "i32 i32 i32 i32 i32", "0 0 0 1100 5".into(), Phase::RequestBody, 0),
        ("proxy_get_header_map_pairs", "i32 i32 i32", format!("0 {RET} {}", RET + 4), Phase::RequestHeaders, 0),
        ("proxy_set_header_map_pairs", "i32 i32 i32", format!("0 {h}"), Phase::RequestHeaders, 0),
        ("proxy_get_header_map_value", "i32 i32 i32 i32 i32", format!("0 1000 3 {RET} {}", RET + 4), Phase::RequestHeaders, 1),
        ("proxy_replace_header_map_value", "i32 i32 i32 i32 i32", "0 1000 3 1100 5".into(), Phase::RequestHeaders, 0),
        ("proxy_remove_header_map_value", "i32 i32 i32", "0 1000 3".into(), Phase::RequestHeaders, 0),
        ("proxy_add_header_map_value", "i32 i32 i32 i32 i32", "2 1000 3 1100 5".into(), Phase::ResponseHeaders, 0),
        ("proxy_get_property", "i32 i32 i32 i32", format!("1200 14 {RET} {}", RET + 4), Phase::Root, 0),
        ("proxy_set_property", "i32 i32 i32 i32", "1000 3 1100 5".into(), Phase::Root, 0),
        ("proxy_get_shared_data", "i32 i32 i32 i32 i32", format!("1600 4 {RET} {} {}", RET + 4, RET + 8), Phase::Root, 1),
        ("proxy_set_shared_data", "i32 i32 i32 i32 i32", "1000 3 1100 5 0".into(), Phase::Root, 0),
        ("proxy_register_shared_queue", "i32 i32 i32", format!("1700 1 {RET}"), Phase::Root, 0),
        ("proxy_resolve_shared_queue", "i32 i32 i32 i32 i32", format!("1800 2 1700 1 {RET}"), Phase::Root, 0),
        ("proxy_enqueue_shared_queue", "i32 i32 i32", "1 1100 5".into(), Phase::Root, 0),
        ("proxy_dequeue_shared_queue", "i32 i32 i32", format!("1 {RET} {}", RET + 4), Phase::Root, 0),
        ("proxy_send_local_response", "i32 i32 i32 i32 i32 i32 i32 i32", format!("403 1000 3 1100 5 {h} 0"), Phase::RequestHeaders, 0),
        (
            "proxy_http_call",
            "i32 i32 i32 i32 i32 i32 i32 i32 i32 i32",
            format!("1300 16 {h} 0 0 0 0 1000 {RET}"),
            Phase::Root,
            0,
        ),
        ("proxy_set_effective_context", "i32", "1".into(), Phase::Root, 0),
        ("proxy_done", "", String::new(), Phase::StreamEnd, 0),
        ("proxy_continue_stream", "i32", "0".into(), Phase::RequestBody, 0),
        ("proxy_close_stream", "i32", "0".into(), Phase::RequestBody, 0),
        ("proxy_get_status", "i32 i32 i32", format!("{RET} {} {}", RET + 4, RET + 8), Phase::Root, 0),
        ("proxy_call_foreign_function", "i32 i32 i32 i32 i32 i32", format!("1500 17 0 0 {RET} {}", RET + 4), Phase::RequestHeaders, 0),
        ("proxy_define_metric", "i32 i32 i32 i32", format!("0 1900 7 {RET}"), Phase::Root, 0),
        ("proxy_increment_metric", "i32 i64", "1 5".into(), Phase::Root, 0),
        ("proxy_record_metric", "i32 i64", "1 9".into(), Phase::Root, 0),
        ("proxy_get_metric", "i32 i32", format!("1 {}", RET + 8), Phase::Root, 0),
    ]
}

/// Expected refusals: the same functions, called wrongly, answer as Envoy does.
fn refusals(headers_len: i32) -> Vec<(&'static str, String, Phase, i32)> {
    let h = format!("{HEADERS_AT} {headers_len}");
    vec![
        ("proxy_http_call", format!("1400 15 {h} 0 0 0 0 1000 {RET}"), Phase::Root, 2),
        ("proxy_set_shared_data", "1000 3 1100 5 12345".into(), Phase::Root, 8),
        ("proxy_dequeue_shared_queue", format!("1 {RET} {}", RET + 4), Phase::Root, 7),
        ("proxy_set_effective_context", "999".into(), Phase::Root, 2),
        ("proxy_call_foreign_function", format!("1600 4 0 0 {RET} {}", RET + 4), Phase::Root, 1),
        ("proxy_get_header_map_value", format!("6 1000 3 {RET} {}", RET + 4), Phase::Root, 2),
        ("proxy_get_buffer_bytes", format!("7 0 100 {RET} {}", RET + 4), Phase::Root, 1),
    ]
}

const WASI: &[(&str, &str, &str)] = &[
    ("fd_write", "i32 i32 i32 i32", "2 8100 1 8108"),
    ("environ_sizes_get", "i32 i32", "8000 8004"),
    ("environ_get", "i32 i32", "8000 8004"),
    ("random_get", "i32 i32", "8200 16"),
];

fn wat(headers: &[u8]) -> String {
    let mut imports = String::new();
    let mut funcs = String::new();
    let mut seen = BTreeSet::new();
    for (name, params, args, _, _) in checks(headers.len() as i32) {
        if seen.insert(name) {
            imports.push_str(&format!("(import \"env\" \"{name}\" (func ${name} (param {params}) (result i32)))\n"));
        }
        funcs.push_str(&format!("(func (export \"check_{name}\") (result i32) (call ${name} {}))\n", wasm_args(params, &args)));
    }
    for (i, (name, args, _, _)) in refusals(headers.len() as i32).into_iter().enumerate() {
        let params = checks(0).into_iter().find(|c| c.0 == name).map(|c| c.1).unwrap_or("");
        funcs.push_str(&format!("(func (export \"refuse_{i}\") (result i32) (call ${name} {}))\n", wasm_args(params, &args)));
    }
    for (name, params, args) in WASI {
        imports.push_str(&format!("(import \"wasi_snapshot_preview1\" \"{name}\" (func ${name} (param {params}) (result i32)))\n"));
        funcs.push_str(&format!("(func (export \"check_{name}\") (result i32) (call ${name} {}))\n", wasm_args(params, args)));
    }
    imports.push_str("(import \"wasi_snapshot_preview1\" \"proc_exit\" (func $proc_exit (param i32)))\n");
    imports.push_str("(import \"env\" \"proxy_grpc_call\" (func $grpc (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))\n");
    funcs.push_str("(func (export \"check_proc_exit\") (result i32) (call $proc_exit (i32.const 3)) (i32.const 0))\n");
    funcs.push_str("(func (export \"check_grpc\") (result i32) (call $grpc (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))\n");
    let mut data = String::new();
    for (at, bytes) in SEGMENTS {
        data.push_str(&format!("(data (i32.const {at}) \"{}\")\n", escape(bytes)));
    }
    data.push_str(&format!("(data (i32.const {HEADERS_AT}) \"{}\")\n", escape(headers)));
    // An iovec for fd_write: 5 bytes at 1100.
    data.push_str("(data (i32.const 8100) \"\\4c\\04\\00\\00\\05\\00\\00\\00\")\n");
    format!(
        "(module\n{imports}(memory (export \"memory\") 1)\n{data}(global $bump (mut i32) (i32.const 32768))\n\
         (func (export \"proxy_on_memory_allocate\") (param i32) (result i32) (global.get $bump) (global.set $bump (i32.add (global.get $bump) (local.get 0))))\n{funcs})"
    )
}

fn wasm_args(params: &str, args: &str) -> String {
    params
        .split_whitespace()
        .zip(args.split_whitespace())
        .map(|(ty, v)| format!("({ty}.const {v})"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn escape(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

fn test_vm() -> (Vm, Rc<RefCell<ProxyState>>, Vec<&'static str>) {
    let headers = serialize_map(&[
        (":method".into(), "GET".into()),
        (":path".into(), "/metrics".into()),
        (":authority".into(), "10.0.0.1:8000".into()),
    ]);
    let mut config = Config::new();
    config.consume_fuel(true);
    let engine = Engine::new(&config).expect("engine");
    let module = Module::new(&engine, wat(&headers)).expect("the conformance module compiles");
    let clock = Rc::new(std::cell::Cell::new(1_800_000_000_000_000_000));
    let proxy = Rc::new(RefCell::new(ProxyState::new(clock, vec!["wasm_epp_metrics".into()])));
    let state = HostState::new(proxy.clone(), 0, "picker", "p", "vm", b"{\"endpoints\":[]}", 1);
    let mut vm = Vm::new(&engine, &module, state).expect("vm");
    vm.state_mut().streams.insert(2, StreamState {
        response_headers: Some(vec![]),
        ..Default::default()
    });
    let imported = module.imports().map(|i| i.name()).collect::<Vec<_>>();
    let imported: Vec<&'static str> = imported.into_iter().map(|s| &*Box::leak(s.to_string().into_boxed_str())).collect();
    (vm, proxy, imported)
}

#[test]
fn every_host_function_answers_as_envoy_does() {
    let (mut vm, proxy, _) = test_vm();
    for (name, _, _, phase, want) in checks(0) {
        let ctx = if matches!(phase, Phase::Root | Phase::Configure) { 1 } else { 2 };
        let got = vm.call(Box::leak(format!("check_{name}").into_boxed_str()), ctx, phase, &[]);
        assert_eq!(got, Ok(want), "{name}");
    }
    for (i, (name, _, phase, want)) in refusals(0).into_iter().enumerate() {
        let got = vm.call(Box::leak(format!("refuse_{i}").into_boxed_str()), 1, phase, &[]);
        assert_eq!(got, Ok(want), "{name} called wrongly");
    }
    for (name, _, _) in WASI {
        assert_eq!(vm.call(Box::leak(format!("check_{name}").into_boxed_str()), 1, Phase::Root, &[]), Ok(0), "{name}");
    }
    let s = vm.state();
    assert!(s.logs.iter().any(|(level, m)| *level == 2 && m == "key"), "proxy_log");
    assert!(s.logs.iter().any(|(_, m)| m == "value"), "fd_write");
    assert_eq!(s.tick_period_ms, 50);
    let stream = &s.streams[&2];
    assert_eq!(stream.local_response.as_ref().map(|r| r.status), Some(403));
    assert!(stream.resumed && stream.closed);
    assert_eq!(stream.request_body, b"value");
    let p = proxy.borrow();
    assert_eq!(p.shared_data.get("key").map(|(v, _)| v.as_slice()), Some(&b"value"[..]));
    assert_eq!(p.metric_by_name("counter"), 9);
    assert_eq!(p.dispatched.len(), 1, "one call went out");
    assert_eq!(p.dispatched[0].timeout_ms, 1000);
    drop(p);

    // What host-sim does not implement fails loudly, naming the call.
    let trap = vm.call("check_grpc", 1, Phase::Root, &[]).unwrap_err();
    assert!(trap.contains("env.proxy_grpc_call"), "{trap}");
}

#[test]
fn proc_exit_traps_the_vm() {
    let (mut vm, _, _) = test_vm();
    let trap = vm.call("check_proc_exit", 1, Phase::Root, &[]).unwrap_err();
    assert!(trap.contains("proc_exit(3)"), "{trap}");
    assert!(vm.call("check_proxy_done", 2, Phase::StreamEnd, &[]).unwrap_err().contains("failed earlier"));
}

#[test]
fn every_host_function_the_module_imports_is_exercised() {
    // The real module, through a scenario that takes every path it has.
    let servers: Vec<SimServer> = (1..=2).map(|i| SimServer::new(&format!("10.0.0.{i}:8000"), Default::default())).collect();
    let fleet = Fleet::new(servers);
    let config = json!({"endpoints": fleet.addresses(), "explain": true, "max_body_bytes": 100}).to_string();
    let mut w = World::new(&epp_tests::paths::epp_wasm(), fleet, 1, ProxyConfig { plugin_config: config, ..Default::default() })
        .expect("world");
    w.advance_ms(6000);
    for req in [
        HttpRequest::post_json("/v1/chat/completions", &json!({"model": "meta-llama/Llama-3.1-8B-Instruct"})),
        HttpRequest::post_json("/v1/chat/completions", &json!({"model": "x".repeat(200)})),
        HttpRequest::get("/health"),
    ] {
        let o = w.request(0, 0, &req);
        w.finish(0, &o, 200);
    }
    let mut covered: BTreeSet<&'static str> = w.proxies[0].state.borrow().coverage.keys().copied().collect();
    // The conformance module, for the calls the real module's paths never make.
    let (mut vm, proxy, _) = test_vm();
    for (name, _, _, phase, _) in checks(0) {
        let ctx = if matches!(phase, Phase::Root | Phase::Configure) { 1 } else { 2 };
        let _ = vm.call(Box::leak(format!("check_{name}").into_boxed_str()), ctx, phase, &[]);
    }
    for (name, _, _) in WASI {
        let _ = vm.call(Box::leak(format!("check_{name}").into_boxed_str()), 1, Phase::Root, &[]);
    }
    covered.extend(proxy.borrow().coverage.keys().copied());
    let (_, module) = host_sim::world::load_module(&epp_tests::paths::epp_wasm()).expect("module");
    let untested: Vec<String> = module
        .imports()
        .map(|i| i.name().to_string())
        .filter(|n| !covered.contains(n.as_str()) && !n.starts_with("proxy_grpc_") && n != "proc_exit")
        .collect();
    assert!(untested.is_empty(), "imported but never exercised: {untested:?}");
}

/// Envoy calls every callback a module exports on its event, `proxy_on_response_body` on
/// each chunk of a streamed answer, and skips those it does not export. The shipped module
/// and the bench floor leave out the ones they have no use for (build.sh's trim-exports),
/// and keep every one their work needs.
#[test]
fn the_module_exports_the_callbacks_it_uses_and_no_other_per_event_one() {
    let needed = [
        "proxy_on_memory_allocate",
        "proxy_on_vm_start",
        "proxy_on_configure",
        "proxy_on_tick",
        "proxy_on_http_call_response",
        "proxy_on_context_create",
        "proxy_on_request_headers",
        "proxy_on_request_body",
        "proxy_on_request_trailers",
        "proxy_on_response_headers",
        "proxy_on_done",
        "proxy_on_delete",
    ];
    for wasm in [epp_tests::paths::epp_wasm(), epp_tests::paths::floor_wasm()] {
        let (_, module) = host_sim::world::load_module(&wasm).expect("module");
        let exports: BTreeSet<&str> = module.exports().map(|e| e.name()).collect();
        let unused: Vec<&&str> = epp::names::UNUSED_CALLBACKS.iter().filter(|c| exports.contains(**c)).collect();
        assert!(unused.is_empty(), "{} exports {unused:?}: build.sh's trim-exports did not run", wasm.display());
        let missing: Vec<&&str> = needed.iter().filter(|c| !exports.contains(**c)).collect();
        assert!(missing.is_empty(), "{} lost {missing:?}", wasm.display());
    }
}
