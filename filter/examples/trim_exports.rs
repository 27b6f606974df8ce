//! Takes the callbacks the module has no use for (`epp::names::UNUSED_CALLBACKS`) out of
//! a built module's exports. The proxy-wasm SDK exports every callback; Envoy calls an
//! exported one for every event (`proxy_on_response_body` for every chunk of a streamed
//! answer, into V8 and back) and skips one that is not exported. Everything else in the
//! module is copied byte for byte.
//!
//! `trim-exports IN.wasm OUT.wasm`, run natively by build.sh on the module and the bench
//! floor.

use std::process::ExitCode;

use epp::names::UNUSED_CALLBACKS;
use wasm_encoder::{ExportKind, ExportSection, Module, RawSection};
use wasmparser::{ExternalKind, Parser, Payload};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: trim-exports IN.wasm OUT.wasm");
        return ExitCode::from(2);
    };
    let trimmed = std::fs::read(input).map_err(|e| e.to_string()).and_then(|wasm| trim(&wasm, UNUSED_CALLBACKS));
    match trimmed.and_then(|(wasm, dropped)| std::fs::write(output, wasm).map(|()| dropped).map_err(|e| e.to_string())) {
        Ok(dropped) => {
            eprintln!("{output}: callbacks not exported: {}", dropped.join(", "));
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("trim-exports {input}: {why}");
            ExitCode::FAILURE
        }
    }
}

/// `wasm` without the exports named in `unused`, and the names it dropped.
fn trim(wasm: &[u8], unused: &[&str]) -> Result<(Vec<u8>, Vec<String>), String> {
    let mut module = Module::new();
    let mut dropped = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(|e| e.to_string())? {
            Payload::ExportSection(reader) => {
                let mut exports = ExportSection::new();
                for export in reader {
                    let export = export.map_err(|e| e.to_string())?;
                    if unused.contains(&export.name) {
                        dropped.push(export.name.to_string());
                    } else {
                        exports.export(export.name, kind(export.kind)?, export.index);
                    }
                }
                module.section(&exports);
            }
            other => {
                if let Some((id, range)) = other.as_section() {
                    module.section(&RawSection { id, data: &wasm[range] });
                }
            }
        }
    }
    Ok((module.finish(), dropped))
}

fn kind(kind: ExternalKind) -> Result<ExportKind, String> {
    Ok(match kind {
        ExternalKind::Func => ExportKind::Func,
        ExternalKind::Table => ExportKind::Table,
        ExternalKind::Memory => ExportKind::Memory,
        ExternalKind::Global => ExportKind::Global,
        ExternalKind::Tag => ExportKind::Tag,
        other => return Err(format!("an export of a kind this tool does not copy: {other:?}")),
    })
}
