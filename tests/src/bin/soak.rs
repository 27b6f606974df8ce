//! `soak [SECONDS] [CLIENTS]`: the soak of `epp_tests::soak`, as long as asked (default
//! 300 s, 32 clients). Prints its report as JSON; exits 1 if a valid request was lost, a
//! bad one misanswered, a VM trapped, or memory grew over the second half.

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(300);
    let clients: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(32);
    let report = epp_tests::soak::soak(std::time::Duration::from_secs(seconds), clients);
    println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    let held = report.valid_lost == 0 && report.invalid_misanswered == 0 && report.traps == 0 && report.rss_growth_second_half_mib <= 16;
    std::process::exit(if held { 0 } else { 1 });
}
