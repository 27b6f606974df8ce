//! The proxy-wasm ABI 0.2.1 host functions (and the WASI calls std makes), one function
//! per area of the ABI, each closure reading and writing the VM's `HostState`.

use wasmtime::{format_err, Caller, Extern, Linker, Result};

use crate::abi::{self, HeaderMap, Status};
use crate::state::{HostState, LocalResponse, PendingCall, Phase, ROOT_CONTEXT};

fn memory(caller: &mut Caller<'_, HostState>) -> Result<wasmtime::Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(format_err!("the module exports no memory")),
    }
}

fn read(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let mem = memory(caller).ok()?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    mem.data(&caller).get(ptr..ptr.checked_add(len)?).map(|s| s.to_vec())
}

fn read_str(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Option<String> {
    String::from_utf8(read(caller, ptr, len)?).ok()
}

fn write(caller: &mut Caller<'_, HostState>, ptr: i32, bytes: &[u8]) -> bool {
    let Ok(mem) = memory(caller) else { return false };
    mem.write(caller, ptr as u32 as usize, bytes).is_ok()
}

fn write_u32(caller: &mut Caller<'_, HostState>, ptr: i32, v: u32) -> bool {
    write(caller, ptr, &v.to_le_bytes())
}

/// Copies `bytes` into memory the module allocates, and writes the pointer and size where
/// the module asked: how every "return a buffer" host call works.
fn give(caller: &mut Caller<'_, HostState>, bytes: &[u8], ret_ptr: i32, ret_size: i32) -> Result<i32> {
    let ptr = if bytes.is_empty() {
        0
    } else {
        let alloc = match caller.get_export("proxy_on_memory_allocate") {
            Some(Extern::Func(f)) => f.typed::<i32, i32>(&caller)?,
            _ => return Err(format_err!("no proxy_on_memory_allocate")),
        };
        let ptr = alloc.call(&mut *caller, bytes.len() as i32)?;
        if ptr == 0 || !write(caller, ptr, bytes) {
            return Ok(Status::InternalFailure as i32);
        }
        ptr
    };
    if !write_u32(caller, ret_ptr, ptr as u32) || !write_u32(caller, ret_size, bytes.len() as u32) {
        return Ok(6); // InvalidMemoryAccess
    }
    Ok(Status::Ok as i32)
}

const INVALID_MEMORY: i32 = 6;

/// Counts a host call (coverage) and notes it in the fuel trace.
fn cover(c: &Caller<'_, HostState>, name: &'static str) {
    c.data().cover(name);
    if crate::fuel::tracing() {
        crate::fuel::note(name, crate::fuel::used(c.get_fuel().unwrap_or(0)));
    }
}

/// Every host function the module may import.
pub fn define(l: &mut Linker<HostState>) -> Result<()> {
    logging_and_time(l)?;
    headers_and_buffers(l)?;
    properties(l)?;
    shared_data_and_queues(l)?;
    local_responses_and_http_calls(l)?;
    contexts_and_streams(l)?;
    metrics(l)?;
    wasi(l)?;
    Ok(())
}

/// Logging, the clock and the tick.
fn logging_and_time(l: &mut Linker<HostState>) -> Result<()> {
    l.func_wrap("env", "proxy_log", |mut c: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| -> i32 {
        cover(&c, "proxy_log");
        let Some(msg) = read_str(&mut c, ptr, len) else { return INVALID_MEMORY };
        c.data_mut().logs.push((level as u32, msg));
        Status::Ok as i32
    })?;
    l.func_wrap("env", "proxy_get_log_level", |mut c: Caller<'_, HostState>, ret: i32| -> i32 {
        cover(&c, "proxy_get_log_level");
        let level = c.data().log_level;
        if write_u32(&mut c, ret, level) { 0 } else { INVALID_MEMORY }
    })?;
    l.func_wrap("env", "proxy_get_current_time_nanoseconds", |mut c: Caller<'_, HostState>, ret: i32| -> i32 {
        cover(&c, "proxy_get_current_time_nanoseconds");
        let now = c.data().now_ns();
        if write(&mut c, ret, &now.to_le_bytes()) { 0 } else { INVALID_MEMORY }
    })?;
    l.func_wrap("env", "proxy_set_tick_period_milliseconds", |mut c: Caller<'_, HostState>, ms: i32| -> i32 {
        cover(&c, "proxy_set_tick_period_milliseconds");
        let now = c.data().now_ns();
        let s = c.data_mut();
        s.tick_period_ms = ms as u32 as u64;
        s.next_tick_ns = (ms > 0).then(|| now + s.tick_period_ms * 1_000_000);
        0
    })?;
    Ok(())
}

/// Header maps and body buffers of the current stream or call answer.
fn headers_and_buffers(l: &mut Linker<HostState>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Caller<'_, HostState>, kind: i32, start: i32, max: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
            cover(&c, "proxy_get_buffer_bytes");
            let buffer: Option<Vec<u8>> = {
                let s = c.data_mut();
                match (kind as u32, s.phase) {
                    (abi::BUFFER_PLUGIN_CONFIGURATION, Phase::Configure) => Some(s.plugin_config.clone()),
                    (abi::BUFFER_VM_CONFIGURATION, Phase::VmStart) => Some(s.vm_config.clone()),
                    (abi::BUFFER_HTTP_CALL_RESPONSE_BODY, Phase::HttpCallResponse) => {
                        s.call_answer.as_ref().map(|a| a.body.clone())
                    }
                    (abi::BUFFER_REQUEST_BODY, _) => s.stream().map(|st| st.request_body.clone()),
                    (abi::BUFFER_RESPONSE_BODY, Phase::ResponseBody) => s.stream().map(|st| st.response_body.clone()),
                    _ => None,
                }
            };
            let Some(buffer) = buffer else { return Ok(Status::NotFound as i32) };
            let start = (start as u32 as usize).min(buffer.len());
            let end = start.saturating_add(max as u32 as usize).min(buffer.len());
            give(&mut c, &buffer[start..end], ret_ptr, ret_size)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: Caller<'_, HostState>, kind: i32, start: i32, size: i32, ptr: i32, len: i32| -> i32 {
            cover(&c, "proxy_set_buffer_bytes");
            let Some(data) = read(&mut c, ptr, len) else { return INVALID_MEMORY };
            let s = c.data_mut();
            let Some(st) = s.stream() else { return Status::NotFound as i32 };
            let buf = match kind as u32 {
                abi::BUFFER_REQUEST_BODY => &mut st.request_body,
                abi::BUFFER_RESPONSE_BODY => &mut st.response_body,
                _ => return Status::BadArgument as i32,
            };
            // Envoy: (0, len) replaces from the start; start == len appends.
            let start = (start as u32 as usize).min(buf.len());
            let end = start.saturating_add(size as u32 as usize).min(buf.len());
            buf.splice(start..end, data);
            0
        },
    )?;
    l.func_wrap("env", "proxy_get_header_map_pairs", |mut c: Caller<'_, HostState>, map: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
        cover(&c, "proxy_get_header_map_pairs");
        let Some(m) = with_map(c.data_mut(), map, |m| m.clone()) else { return Ok(Status::BadArgument as i32) };
        give(&mut c, &abi::serialize_map(&m), ret_ptr, ret_size)
    })?;
    l.func_wrap("env", "proxy_set_header_map_pairs", |mut c: Caller<'_, HostState>, map: i32, ptr: i32, len: i32| -> i32 {
        cover(&c, "proxy_set_header_map_pairs");
        let Some(bytes) = read(&mut c, ptr, len) else { return INVALID_MEMORY };
        let Some(pairs) = abi::deserialize_map(&bytes) else { return Status::BadArgument as i32 };
        match with_map(c.data_mut(), map, |m| *m = pairs) {
            Some(()) => 0,
            None => Status::BadArgument as i32,
        }
    })?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Caller<'_, HostState>, map: i32, kp: i32, kl: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
            cover(&c, "proxy_get_header_map_value");
            let Some(key) = read_str(&mut c, kp, kl) else { return Ok(INVALID_MEMORY) };
            let key = key.to_ascii_lowercase();
            let found = with_map(c.data_mut(), map, |m| m.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()));
            match found {
                None => Ok(Status::BadArgument as i32),
                Some(None) => Ok(Status::NotFound as i32),
                Some(Some(v)) => give(&mut c, v.as_bytes(), ret_ptr, ret_size),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: Caller<'_, HostState>, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
            cover(&c, "proxy_replace_header_map_value");
            let (Some(k), Some(v)) = (read_str(&mut c, kp, kl), read_str(&mut c, vp, vl)) else { return INVALID_MEMORY };
            let k = k.to_ascii_lowercase();
            let r = with_map(c.data_mut(), map, |m| {
                m.retain(|(name, _)| *name != k);
                m.push((k.clone(), v.clone()));
            });
            if r.is_some() { 0 } else { Status::BadArgument as i32 }
        },
    )?;
    l.func_wrap("env", "proxy_remove_header_map_value", |mut c: Caller<'_, HostState>, map: i32, kp: i32, kl: i32| -> i32 {
        cover(&c, "proxy_remove_header_map_value");
        let Some(k) = read_str(&mut c, kp, kl) else { return INVALID_MEMORY };
        let k = k.to_ascii_lowercase();
        match with_map(c.data_mut(), map, |m| m.retain(|(name, _)| *name != k)) {
            Some(()) => 0,
            None => Status::BadArgument as i32,
        }
    })?;
    l.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: Caller<'_, HostState>, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
            cover(&c, "proxy_add_header_map_value");
            let (Some(k), Some(v)) = (read_str(&mut c, kp, kl), read_str(&mut c, vp, vl)) else { return INVALID_MEMORY };
            match with_map(c.data_mut(), map, |m| m.push((k.to_ascii_lowercase(), v.clone()))) {
                Some(()) => 0,
                None => Status::BadArgument as i32,
            }
        },
    )?;
    Ok(())
}

/// Properties (the plugin's root id, and what the host knows of the stream).
fn properties(l: &mut Linker<HostState>) -> Result<()> {
    l.func_wrap("env", "proxy_get_property", |mut c: Caller<'_, HostState>, pp: i32, pl: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
        cover(&c, "proxy_get_property");
        let Some(path) = read(&mut c, pp, pl) else { return Ok(INVALID_MEMORY) };
        let key = path.split(|b| *b == 0).filter(|p| !p.is_empty()).map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>().join(".");
        let s = c.data();
        let value = match key.as_str() {
            "plugin_root_id" => Some(s.root_id.as_bytes().to_vec()),
            "plugin_name" => Some(s.plugin_name.as_bytes().to_vec()),
            "plugin_vm_id" => Some(s.vm_id.as_bytes().to_vec()),
            other => s.properties.get(other).cloned(),
        };
        match value {
            Some(v) => give(&mut c, &v, ret_ptr, ret_size),
            None => Ok(Status::NotFound as i32),
        }
    })?;
    l.func_wrap("env", "proxy_set_property", |mut c: Caller<'_, HostState>, pp: i32, pl: i32, vp: i32, vl: i32| -> i32 {
        cover(&c, "proxy_set_property");
        let (Some(path), Some(v)) = (read(&mut c, pp, pl), read(&mut c, vp, vl)) else { return INVALID_MEMORY };
        let key = path.split(|b| *b == 0).map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>().join(".");
        c.data_mut().properties.insert(key, v);
        0
    })?;
    Ok(())
}

/// Shared data (CAS) and shared queues, one store per proxy.
fn shared_data_and_queues(l: &mut Linker<HostState>) -> Result<()> {
    l.func_wrap("env", "proxy_get_shared_data", |mut c: Caller<'_, HostState>, kp: i32, kl: i32, ret_ptr: i32, ret_size: i32, ret_cas: i32| -> Result<i32> {
        cover(&c, "proxy_get_shared_data");
        let Some(key) = read_str(&mut c, kp, kl) else { return Ok(INVALID_MEMORY) };
        let entry = c.data().proxy.borrow().shared_data.get(&key).cloned();
        let Some((value, cas)) = entry else { return Ok(Status::NotFound as i32) };
        let status = give(&mut c, &value, ret_ptr, ret_size)?;
        if status == 0 && !write_u32(&mut c, ret_cas, cas) {
            return Ok(INVALID_MEMORY);
        }
        Ok(status)
    })?;
    l.func_wrap("env", "proxy_set_shared_data", |mut c: Caller<'_, HostState>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| -> i32 {
        cover(&c, "proxy_set_shared_data");
        let (Some(key), Some(value)) = (read_str(&mut c, kp, kl), read(&mut c, vp, vl)) else { return INVALID_MEMORY };
        c.data().proxy.borrow_mut().set_shared_data(key, value, cas as u32) as i32
    })?;
    l.func_wrap("env", "proxy_register_shared_queue", |mut c: Caller<'_, HostState>, np: i32, nl: i32, ret: i32| -> i32 {
        cover(&c, "proxy_register_shared_queue");
        let Some(name) = read_str(&mut c, np, nl) else { return INVALID_MEMORY };
        let (vm, vm_id, ctx) = (c.data().vm_index, c.data().vm_id.clone(), c.data().current_context);
        let id = c.data().proxy.borrow_mut().register_queue(&vm_id, &name, vm, ctx);
        if write_u32(&mut c, ret, id) { 0 } else { INVALID_MEMORY }
    })?;
    l.func_wrap("env", "proxy_resolve_shared_queue", |mut c: Caller<'_, HostState>, vp: i32, vl: i32, np: i32, nl: i32, ret: i32| -> i32 {
        cover(&c, "proxy_resolve_shared_queue");
        let (Some(vm_id), Some(name)) = (read_str(&mut c, vp, vl), read_str(&mut c, np, nl)) else { return INVALID_MEMORY };
        let id = c.data().proxy.borrow().resolve_queue(&vm_id, &name);
        match id {
            Some(id) => if write_u32(&mut c, ret, id) { 0 } else { INVALID_MEMORY },
            None => Status::NotFound as i32,
        }
    })?;
    l.func_wrap("env", "proxy_enqueue_shared_queue", |mut c: Caller<'_, HostState>, id: i32, vp: i32, vl: i32| -> i32 {
        cover(&c, "proxy_enqueue_shared_queue");
        let Some(v) = read(&mut c, vp, vl) else { return INVALID_MEMORY };
        c.data().proxy.borrow_mut().enqueue(id as u32, v) as i32
    })?;
    l.func_wrap("env", "proxy_dequeue_shared_queue", |mut c: Caller<'_, HostState>, id: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
        cover(&c, "proxy_dequeue_shared_queue");
        let item = c.data().proxy.borrow_mut().dequeue(id as u32);
        match item {
            Ok(v) => give(&mut c, &v, ret_ptr, ret_size),
            Err(status) => Ok(status as i32),
        }
    })?;
    Ok(())
}

/// Answers the module sends itself, and its calls out.
fn local_responses_and_http_calls(l: &mut Linker<HostState>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Caller<'_, HostState>, status: i32, dp: i32, dl: i32, bp: i32, bl: i32, hp: i32, hl: i32, _grpc: i32| -> i32 {
            cover(&c, "proxy_send_local_response");
            let (Some(details), Some(body), Some(headers)) = (read_str(&mut c, dp, dl), read(&mut c, bp, bl), read(&mut c, hp, hl)) else {
                return INVALID_MEMORY;
            };
            let Some(headers) = abi::deserialize_map(&headers) else { return Status::BadArgument as i32 };
            let Some(st) = c.data_mut().stream() else { return Status::BadArgument as i32 };
            st.local_response = Some(LocalResponse { status: status as u32, details, headers, body });
            0
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: Caller<'_, HostState>, up: i32, ul: i32, hp: i32, hl: i32, bp: i32, bl: i32, tp: i32, tl: i32, timeout: i32, ret: i32| -> i32 {
            cover(&c, "proxy_http_call");
            let (Some(cluster), Some(headers), Some(body), Some(trailers)) =
                (read_str(&mut c, up, ul), read(&mut c, hp, hl), read(&mut c, bp, bl), read(&mut c, tp, tl))
            else {
                return INVALID_MEMORY;
            };
            let (Some(headers), Some(_trailers)) = (abi::deserialize_map(&headers), abi::deserialize_map(&trailers).or(Some(vec![])))
            else {
                return Status::BadArgument as i32;
            };
            // Envoy refuses a call to an unknown cluster, or without these headers.
            let has = |name: &str| headers.iter().any(|(k, v)| k == name && !v.is_empty());
            if !(has(":method") && has(":path") && has(":authority")) {
                return Status::BadArgument as i32;
            }
            let (vm, ctx, now) = (c.data().vm_index, c.data().current_context, c.data().now_ns());
            let token = {
                let mut p = c.data().proxy.borrow_mut();
                if !p.clusters.contains(&cluster) {
                    return Status::BadArgument as i32;
                }
                p.dispatch(PendingCall {
                    vm,
                    context: ctx,
                    token: 0,
                    cluster,
                    headers,
                    body,
                    timeout_ms: timeout as u32 as u64,
                    issued_ns: now,
                })
            };
            if write_u32(&mut c, ret, token) { 0 } else { INVALID_MEMORY }
        },
    )?;
    Ok(())
}

/// The effective context, and the stream actions.
fn contexts_and_streams(l: &mut Linker<HostState>) -> Result<()> {
    l.func_wrap("env", "proxy_set_effective_context", |mut c: Caller<'_, HostState>, ctx: i32| -> i32 {
        cover(&c, "proxy_set_effective_context");
        let s = c.data_mut();
        let ctx = ctx as u32;
        if ctx == ROOT_CONTEXT || s.streams.contains_key(&ctx) {
            s.current_context = ctx;
            0
        } else {
            Status::BadArgument as i32
        }
    })?;
    l.func_wrap("env", "proxy_done", |c: Caller<'_, HostState>| -> i32 {
        cover(&c, "proxy_done");
        0
    })?;
    l.func_wrap("env", "proxy_continue_stream", |mut c: Caller<'_, HostState>, _stream: i32| -> i32 {
        cover(&c, "proxy_continue_stream");
        match c.data_mut().stream() {
            Some(st) => {
                st.resumed = true;
                0
            }
            None => Status::NotFound as i32,
        }
    })?;
    l.func_wrap("env", "proxy_close_stream", |mut c: Caller<'_, HostState>, _stream: i32| -> i32 {
        cover(&c, "proxy_close_stream");
        match c.data_mut().stream() {
            Some(st) => {
                st.closed = true;
                0
            }
            None => Status::NotFound as i32,
        }
    })?;
    l.func_wrap("env", "proxy_get_status", |mut c: Caller<'_, HostState>, code: i32, mp: i32, ml: i32| -> Result<i32> {
        cover(&c, "proxy_get_status");
        if !write_u32(&mut c, code, 0) {
            return Ok(INVALID_MEMORY);
        }
        give(&mut c, b"", mp, ml)
    })?;
    l.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: Caller<'_, HostState>, np: i32, nl: i32, _ap: i32, _al: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
            cover(&c, "proxy_call_foreign_function");
            let Some(name) = read_str(&mut c, np, nl) else { return Ok(INVALID_MEMORY) };
            match name.as_str() {
                // Envoy's: recompute the route after header changes. Nothing to recompute here.
                "clear_route_cache" => give(&mut c, b"", ret_ptr, ret_size),
                other => {
                    c.data_mut().host_errors.push(format!("unknown foreign function {other:?}"));
                    Ok(Status::NotFound as i32)
                }
            }
        },
    )?;
    Ok(())
}

/// Metrics.
fn metrics(l: &mut Linker<HostState>) -> Result<()> {
    l.func_wrap("env", "proxy_define_metric", |mut c: Caller<'_, HostState>, kind: i32, np: i32, nl: i32, ret: i32| -> i32 {
        cover(&c, "proxy_define_metric");
        let Some(name) = read_str(&mut c, np, nl) else { return INVALID_MEMORY };
        let id = c.data().proxy.borrow_mut().define_metric(kind as u32, &name);
        if write_u32(&mut c, ret, id) { 0 } else { INVALID_MEMORY }
    })?;
    l.func_wrap("env", "proxy_increment_metric", |c: Caller<'_, HostState>, id: i32, offset: i64| -> i32 {
        cover(&c, "proxy_increment_metric");
        c.data().proxy.borrow_mut().update_metric(id as u32, |v| *v += offset) as i32
    })?;
    l.func_wrap("env", "proxy_record_metric", |c: Caller<'_, HostState>, id: i32, value: i64| -> i32 {
        cover(&c, "proxy_record_metric");
        c.data().proxy.borrow_mut().update_metric(id as u32, |v| *v = value) as i32
    })?;
    l.func_wrap("env", "proxy_get_metric", |mut c: Caller<'_, HostState>, id: i32, ret: i32| -> i32 {
        cover(&c, "proxy_get_metric");
        let value = c.data().proxy.borrow().metric(id as u32);
        match value {
            Some(v) => if write(&mut c, ret, &(v as u64).to_le_bytes()) { 0 } else { INVALID_MEMORY },
            None => Status::NotFound as i32,
        }
    })?;

    Ok(())
}

/// WASI preview1, the few calls Rust's std makes under proxy-wasm.
fn wasi(l: &mut Linker<HostState>) -> Result<()> {
    let w = "wasi_snapshot_preview1";
    l.func_wrap(w, "fd_write", |mut c: Caller<'_, HostState>, fd: i32, iovs: i32, n: i32, ret: i32| -> i32 {
        cover(&c, "fd_write");
        let mut total = 0u32;
        let mut text = Vec::new();
        for i in 0..n {
            let Some(iov) = read(&mut c, iovs + 8 * i, 8) else { return 21 }; // EFAULT
            let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
            let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
            let Some(bytes) = read(&mut c, ptr, len) else { return 21 };
            total += bytes.len() as u32;
            text.extend(bytes);
        }
        let level = if fd == 2 { 4 } else { 2 };
        c.data_mut().logs.push((level, String::from_utf8_lossy(&text).into_owned()));
        if write_u32(&mut c, ret, total) { 0 } else { 21 }
    })?;
    l.func_wrap(w, "environ_sizes_get", |mut c: Caller<'_, HostState>, count: i32, size: i32| -> i32 {
        cover(&c, "environ_sizes_get");
        if write_u32(&mut c, count, 0) && write_u32(&mut c, size, 0) { 0 } else { 21 }
    })?;
    l.func_wrap(w, "environ_get", |c: Caller<'_, HostState>, _a: i32, _b: i32| -> i32 {
        cover(&c, "environ_get");
        0
    })?;
    l.func_wrap(w, "args_sizes_get", |mut c: Caller<'_, HostState>, count: i32, size: i32| -> i32 {
        cover(&c, "args_sizes_get");
        if write_u32(&mut c, count, 0) && write_u32(&mut c, size, 0) { 0 } else { 21 }
    })?;
    l.func_wrap(w, "args_get", |c: Caller<'_, HostState>, _a: i32, _b: i32| -> i32 {
        cover(&c, "args_get");
        0
    })?;
    l.func_wrap(w, "clock_time_get", |mut c: Caller<'_, HostState>, _id: i32, _precision: i64, ret: i32| -> i32 {
        cover(&c, "clock_time_get");
        let now = c.data().now_ns();
        if write(&mut c, ret, &now.to_le_bytes()) { 0 } else { 21 }
    })?;
    l.func_wrap(w, "random_get", |mut c: Caller<'_, HostState>, ptr: i32, len: i32| -> i32 {
        cover(&c, "random_get");
        // Seeded, so a scenario replays exactly.
        let bytes: Vec<u8> = (0..len).map(|_| c.data_mut().next_random() as u8).collect();
        if write(&mut c, ptr, &bytes) { 0 } else { 21 }
    })?;
    l.func_wrap(w, "proc_exit", |c: Caller<'_, HostState>, code: i32| -> Result<()> {
        cover(&c, "proc_exit");
        Err(format_err!("the module called proc_exit({code})"))
    })?;
    Ok(())
}

/// The header map `map` of the current context, if this callback may touch it.
fn with_map<T>(s: &mut HostState, map: i32, f: impl FnOnce(&mut HeaderMap) -> T) -> Option<T> {
    let phase = s.phase;
    match map as u32 {
        abi::MAP_HTTP_CALL_RESPONSE_HEADERS if phase == Phase::HttpCallResponse => {
            s.call_answer.as_mut().map(|a| f(&mut a.headers))
        }
        abi::MAP_HTTP_CALL_RESPONSE_TRAILERS if phase == Phase::HttpCallResponse => Some(f(&mut Vec::new())),
        abi::MAP_REQUEST_HEADERS => s.stream().map(|st| f(&mut st.request_headers)),
        abi::MAP_REQUEST_TRAILERS => s.stream().map(|st| f(&mut st.request_trailers)),
        abi::MAP_RESPONSE_HEADERS => s.stream().and_then(|st| st.response_headers.as_mut()).map(f),
        abi::MAP_RESPONSE_TRAILERS => s.stream().map(|_| f(&mut Vec::new())),
        _ => None,
    }
}

