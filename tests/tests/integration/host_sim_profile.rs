//! `host-sim --profile` and `--trace-fuel`: where the module spends its time, sampled as
//! folded stacks or counted to the instruction between host calls.

use std::process::Command;

use epp_tests::paths;

#[test]
fn profile_writes_folded_stacks_of_the_module() {
    let out = std::env::temp_dir().join(format!("host-sim-profile-{}.folded", std::process::id()));
    let status = Command::new(paths::target_bin("host-sim"))
        .current_dir(paths::repo_root())
        .args(["--servers", "4", "--requests", "3000", "--interval-ms", "2", "--quiet", "--profile"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("host-sim runs");
    assert!(status.success());
    let text = std::fs::read_to_string(&out).expect("profile written");
    let mut samples = 0u64;
    for line in text.lines() {
        let (stack, count) = line.rsplit_once(' ').expect("`stack count`");
        samples += count.parse::<u64>().expect("a count");
        // The shipped module is stripped: frames without a name show their index.
        assert!(
            stack.split(';').all(|f| !f.is_empty() && (f.starts_with("wasm-function[") || !f.contains(' ') || f.contains("::"))),
            "frames named or numbered: {stack}"
        );
    }
    assert!(samples > 0, "3000 requests take longer than a sampling period");
}

#[test]
fn trace_fuel_splits_one_request_between_its_host_calls() {
    let out = Command::new(paths::target_bin("host-sim"))
        .current_dir(paths::repo_root())
        .args(["--servers", "4", "--requests", "60", "--interval-ms", "1", "--trace-fuel", "50"])
        .output()
        .expect("host-sim runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let trace: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("request 50,")).skip(1).take_while(|l| !l.starts_with("t=")).collect();
    let number = |l: &str, after: &str| -> u64 {
        let rest = l.split_once(after).map(|(_, r)| r).unwrap_or_default().trim_start();
        rest.split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no number in {l:?}"))
    };
    let callback = |name: &str| trace.iter().find(|l| l.trim_start().starts_with(name) && l.contains("in all")).map(|l| number(l, name));
    // The request's own callbacks add up to the fuel its decision line reports.
    let decided: u64 = ["proxy_on_context_create", "proxy_on_request_headers", "proxy_on_request_body"]
        .iter()
        .map(|c| callback(c).unwrap_or_else(|| panic!("{c} traced: {trace:#?}")))
        .sum();
    let line = text.lines().skip_while(|l| !l.starts_with("request 50,")).find(|l| l.starts_with("t=")).expect("request 50's line");
    assert_eq!(decided, number(line, "(fuel"), "{trace:#?}\n{line}");
    // Its body is read before the destination is written, each with the instructions before it.
    let calls: Vec<&str> = trace.iter().filter(|l| l.contains("before it")).map(|l| l.split_whitespace().next().unwrap_or_default()).collect();
    let at = |name: &str| calls.iter().position(|c| *c == name).unwrap_or_else(|| panic!("{name} in {calls:?}"));
    assert!(at("proxy_get_header_map_pairs") < at("proxy_get_buffer_bytes"));
    assert!(at("proxy_get_buffer_bytes") < at("proxy_replace_header_map_value"));
    assert!(trace.iter().filter(|l| l.contains("before it")).all(|l| number(l, l.split_whitespace().next().unwrap_or_default()) > 0));
}
