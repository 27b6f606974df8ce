//! Where a process's CPU time goes, by Linux `perf`: each sample is either inside a wasm
//! call (a V8 JIT frame on its stack: the module's code and the host functions it calls)
//! or the process's own work. Envoy's symbols are stripped, but its frame pointers unwind
//! through V8's frames, which is all this needs. Time-based, so it drifts with the machine
//! as every timing does; what it adds is a split that the module cannot hide in.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Samples a second (the software clock: no hardware counters needed).
pub const HZ: u32 = 4999;

/// Samples, by where they fell.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Split {
    /// In the module's compiled code.
    pub wasm_code: u64,
    /// In host code called from the module (Envoy's host functions, V8's runtime).
    pub wasm_host: u64,
    /// Everything else the process did.
    pub own: u64,
}

impl Split {
    /// µs per request of each part: (module code, host calls, the process's own).
    pub fn per_request_us(&self, requests: f64) -> (f64, f64, f64) {
        let us = |n: u64| n as f64 * 1e6 / f64::from(HZ) / requests.max(1.0);
        (us(self.wasm_code), us(self.wasm_host), us(self.own))
    }
}

pub fn available() -> bool {
    Command::new("perf").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// A `perf record` of one process, with call stacks.
pub struct Recording {
    child: Child,
    path: PathBuf,
}

impl Recording {
    pub fn start(pid: u32, path: &Path) -> Option<Recording> {
        let child = Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-F", &HZ.to_string(), "-g", "-o"])
            .arg(path)
            .args(["-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        // perf attaches within a few ms; samples before it are lost, not misfiled.
        std::thread::sleep(std::time::Duration::from_millis(200));
        Some(Recording { child, path: path.to_path_buf() })
    }

    /// Stops recording and splits the samples.
    pub fn stop(mut self) -> Option<Split> {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        let out = Command::new("perf").args(["script", "-F", "ip,dso", "-i"]).arg(&self.path).stderr(Stdio::null()).output().ok()?;
        // WASM_EPP_KEEP_PERF=DIR keeps the recordings there, for `perf report`.
        match std::env::var_os("WASM_EPP_KEEP_PERF") {
            Some(dir) => drop(std::fs::rename(&self.path, Path::new(&dir).join(self.path.file_name().unwrap_or_default()))),
            None => drop(std::fs::remove_file(&self.path)),
        }
        Some(split(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// Splits `perf script -F ip,dso` output: one frame a line (`addr (dso)`), innermost
/// first, a blank line after each sample. JIT code has no file: perf names it
/// `[JIT] tid N` or `/tmp/perf-PID.map`.
pub fn split(script: &str) -> Split {
    let mut out = Split::default();
    let is_jit = |dso: &str| dso.contains("[JIT]") || dso.contains("/perf-");
    let mut frames: Vec<&str> = Vec::new();
    let mut flush = |frames: &mut Vec<&str>| {
        if let Some(leaf) = frames.first() {
            match (is_jit(leaf), frames.iter().any(|d| is_jit(d))) {
                (true, _) => out.wasm_code += 1,
                (false, true) => out.wasm_host += 1,
                (false, false) => out.own += 1,
            }
        }
        frames.clear();
    };
    for line in script.lines() {
        let line = line.trim();
        if line.is_empty() {
            flush(&mut frames);
            continue;
        }
        if let Some((_, dso)) = line.split_once(' ') {
            frames.push(dso);
        }
    }
    flush(&mut frames);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_fall_by_their_stacks() {
        let script = "\
\t 7f00 ([JIT] tid 12)
\t 5abb (/x/envoy)

\t 5abb (/x/envoy)
\t 7f00 (/tmp/perf-12.map)
\t 891f5 (/lib/libc.so.6)

\t ffff81 ([kernel.kallsyms])
\t 5abb (/x/envoy)

\t 5abb (/x/envoy)
";
        assert_eq!(split(script), Split { wasm_code: 1, wasm_host: 1, own: 2 });
        let (code, _, own) = split(script).per_request_us(1.0);
        assert!((code - 1e6 / f64::from(HZ)).abs() < 1e-6 && (own - 2e6 / f64::from(HZ)).abs() < 1e-6);
    }
}
