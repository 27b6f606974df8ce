//! `fleet-bench` end to end: a quick run writes results in the documented shape, with the
//! real module deciding and the policies telling apart.

use std::process::Command;

use epp_tests::paths;
use serde_json::Value;

#[test]
fn a_quick_run_writes_results_in_the_documented_shape() {
    let out = std::env::temp_dir().join(format!("fleet-bench-{}.json", std::process::id()));
    let status = Command::new(paths::target_bin("fleet-bench"))
        .current_dir(paths::repo_root())
        .args(["--quick", "--workloads", "shared-prefix,overload", "--policies", "round-robin,default,oracle"])
        .arg("--out")
        .arg(&out)
        .status()
        .expect("fleet-bench runs");
    assert!(status.success());
    let v: Value = serde_json::from_slice(&std::fs::read(&out).expect("results written")).expect("JSON");
    let _ = std::fs::remove_file(&out);
    for workload in ["shared-prefix", "overload"] {
        for policy in ["round-robin", "default", "oracle"] {
            let row = &v["workloads"][workload][policy];
            for key in ["ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "e2e_p90_ms", "output_tokens_per_s", "prefix_hit_rate", "shed", "requests"] {
                assert!(row[key].is_number(), "{workload}/{policy}/{key}: {row}");
            }
            assert!(row["requests"].as_u64().unwrap_or(0) > 100, "{workload}/{policy}: {row}");
        }
    }
    let p90 = |w: &str, p: &str| v["workloads"][w][p]["ttft_p90_ms"].as_f64().unwrap_or(0.0);
    assert!(p90("shared-prefix", "default") * 3.0 < p90("shared-prefix", "round-robin"), "prefix affinity pays: {v}");
    let shed = |p: &str| v["workloads"]["overload"][p]["shed"].as_u64().unwrap_or(0);
    assert!(shed("default") > 0 && shed("round-robin") == 0, "only the module sheds: {v}");
    assert_eq!(v["workloads"]["overload"]["default"]["priority0_shed"], 0);
}
