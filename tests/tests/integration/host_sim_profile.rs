//! `host-sim --profile`: where the module spends its time, as folded stacks.

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
