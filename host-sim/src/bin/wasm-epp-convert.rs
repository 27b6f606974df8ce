//! GIE's resources (InferencePool, InferenceObjective, InferenceModelRewrite, and an
//! EndpointPickerConfig) into wasm-epp's plugin configuration, on standard output.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Convert GIE resources (InferencePool, InferenceObjective, InferenceModelRewrite, EndpointPickerConfig YAML) into wasm-epp's plugin configuration")]
struct Args {
    /// YAML files (several documents each, as kubectl takes them); `-` reads standard input.
    #[arg(required = true)]
    files: Vec<String>,
    /// The Envoy cluster of the pool's pods, as the platform names it (Istio:
    /// outbound|PORT||SERVICE.NAMESPACE.svc.cluster.local; Envoy Gateway:
    /// httproute/NAMESPACE/ROUTE/rule/0).
    #[arg(long)]
    pool_cluster: String,
    /// The InferencePool to convert, if the input has several.
    #[arg(long)]
    pool: Option<String>,
}

fn main() {
    let args = Args::parse();
    let mut texts = Vec::new();
    for f in &args.files {
        let text = if f == "-" { std::io::read_to_string(std::io::stdin()) } else { std::fs::read_to_string(f) };
        match text {
            Ok(t) => texts.push(t),
            Err(e) => fail(&format!("{f}: {e}")),
        }
    }
    let converted = host_sim::convert::documents(&texts).and_then(|docs| host_sim::convert::convert(&docs, args.pool.as_deref(), &args.pool_cluster));
    match converted {
        Ok(c) => {
            for note in &c.notes {
                eprintln!("note: {note}");
            }
            // The module's own parser has the last word.
            if let Err(e) = epp::config::Config::parse(c.config.to_string().as_bytes()) {
                fail(&e.to_string());
            }
            println!("{}", serde_json::to_string_pretty(&c.config).unwrap_or_default());
        }
        Err(e) => fail(&e),
    }
}

fn fail(why: &str) -> ! {
    eprintln!("wasm-epp-convert: {why}");
    std::process::exit(1)
}
