//! What the benchmark prints and writes: a table per workload, `bench/results.json`, and
//! a plot of TTFT against offered load per workload.

use std::path::Path;

use plotters::prelude::*;
use serde_json::{json, Map, Value};

use super::run::RunResult;

/// The `q` quantile (0..=1) of `values`, nearest rank; 0 when empty.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// One run in the shape of `bench/results.json`.
pub fn summary(r: &RunResult) -> Value {
    let hit_rate = if r.prefix_queries > 0 { r.prefix_hits as f64 / r.prefix_queries as f64 } else { 0.0 };
    let round = |x: f64| (x * 10.0).round() / 10.0;
    json!({
        "ttft_p50_ms": round(quantile(&r.ttft_ms, 0.5)),
        "ttft_p90_ms": round(quantile(&r.ttft_ms, 0.9)),
        "ttft_p99_ms": round(quantile(&r.ttft_ms, 0.99)),
        "e2e_p90_ms": round(quantile(&r.e2e_ms, 0.9)),
        "output_tokens_per_s": round(if r.span_s > 0.0 { r.output_tokens as f64 / r.span_s } else { 0.0 }),
        "prefix_hit_rate": (hit_rate * 1000.0).round() / 1000.0,
        "shed": r.shed,
        "requests": r.ttft_ms.len(),
        "priority0_ttft_p99_ms": round(quantile(&r.ttft_p0_ms, 0.99)),
        "priority0_shed": r.shed_priority0,
        "errors": r.errors,
        "offered_rps": r.rate,
    })
}

/// The table for one workload's main rate.
pub fn print_table(workload: &str, rate: f64, rows: &[(String, Value)]) {
    println!("\n{workload} at {rate} requests/s");
    println!(
        "{:<14} {:>10} {:>10} {:>10} {:>10} {:>9} {:>7} {:>6} {:>7} {:>10}",
        "policy", "ttft p50", "ttft p90", "ttft p99", "e2e p90", "tok/s", "hit", "shed", "done", "p0 p99"
    );
    for (policy, v) in rows {
        let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
        println!(
            "{:<14} {:>8.0}ms {:>8.0}ms {:>8.0}ms {:>8.0}ms {:>9.0} {:>6.1}% {:>6} {:>7} {:>8.0}ms",
            policy,
            f("ttft_p50_ms"),
            f("ttft_p90_ms"),
            f("ttft_p99_ms"),
            f("e2e_p90_ms"),
            f("output_tokens_per_s"),
            f("prefix_hit_rate") * 100.0,
            f("shed"),
            f("requests"),
            f("priority0_ttft_p99_ms"),
        );
    }
}

/// Per workload: (policy, its summary at the table rate).
pub type Mains = [(String, Vec<(String, Value)>)];
/// Per workload: (policy, its summaries at every rate).
pub type Sweeps = [(String, Vec<(String, Vec<Value>)>)];

/// `{"workloads": {workload: {policy: summary}}}` plus the sweeps behind the plots.
pub fn results_json(mains: &Mains, sweeps: &Sweeps) -> Value {
    let mut workloads = Map::new();
    for (w, rows) in mains {
        workloads.insert(w.clone(), Value::Object(rows.iter().cloned().collect()));
    }
    let mut all = Map::new();
    for (w, policies) in sweeps {
        let per: Map<String, Value> = policies.iter().map(|(p, runs)| (p.clone(), Value::Array(runs.clone()))).collect();
        all.insert(w.clone(), Value::Object(per));
    }
    json!({"workloads": workloads, "sweeps": all})
}

/// TTFT p90 against offered load, a line per policy, log scale.
pub fn plot(path: &Path, workload: &str, policies: &[(String, Vec<Value>)]) -> Result<(), String> {
    let points: Vec<(String, Vec<(f64, f64)>)> = policies
        .iter()
        .map(|(p, runs)| {
            let pts = runs
                .iter()
                .map(|r| (r["offered_rps"].as_f64().unwrap_or(0.0), r["ttft_p90_ms"].as_f64().unwrap_or(0.0).max(1.0)))
                .collect();
            (p.clone(), pts)
        })
        .collect();
    let all = points.iter().flat_map(|(_, p)| p.iter());
    let (x_max, y_max) = all.fold((1.0f64, 10.0f64), |(x, y), &(a, b)| (x.max(a), y.max(b)));
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{workload}: TTFT p90 against offered load"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_max * 1.05, (1f64..y_max * 2.0).log_scale())?;
        chart.configure_mesh().x_desc("offered load (requests/s)").y_desc("TTFT p90 (ms)").draw()?;
        for (i, (name, pts)) in points.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).border_style(BLACK).background_style(WHITE).draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| format!("{}: {e}", path.display()))
}
