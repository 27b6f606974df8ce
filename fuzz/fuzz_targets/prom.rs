//! The Prometheus text parser against prometheus-parse: on a page the module's parser
//! reads whole (no line it calls malformed), every sample the oracle reads it reads too,
//! with the same name and value. (The oracle's regexes also take lines the format does
//! not allow, such as an unquoted label value; there the two may differ.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(page) = std::str::from_utf8(data) else { return };
    let parsed: Vec<_> = epp::prom::parse(page).collect();
    let whole = parsed.iter().all(|s| s.is_ok());
    let ours: Vec<(String, f64)> = parsed.into_iter().flatten().map(|s| (s.name.to_string(), s.value)).collect();
    // And whatever the page, reading the engines' signals from it never panics.
    for engine in [epp::engine::Engine::Vllm, epp::engine::Engine::Sglang, epp::engine::Engine::TrtllmServe, epp::engine::Engine::TritonTrtllm] {
        let _ = epp::engine::read(engine, page);
    }
    if !whole {
        return;
    }
    let Ok(scrape) = prometheus_parse::Scrape::parse(page.lines().map(|l| Ok(l.to_string()))) else { return };
    for s in &scrape.samples {
        let value = match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            // Histograms and summaries the oracle folds from several lines.
            _ => continue,
        };
        let same = |(name, v): &(String, f64)| *name == s.metric && (*v == value || (v.is_nan() && value.is_nan()));
        assert!(ours.iter().any(same), "the oracle read {} = {value}, the module did not: {ours:?}", s.metric);
    }
});
