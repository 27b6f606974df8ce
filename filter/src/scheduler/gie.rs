//! GIE's and llm-d's `EndpointPickerConfig`, as their users write it, into this module's
//! profile.
//!
//! The document loads as it is (`apiVersion`, `kind`, plugins, profiles, a profile
//! handler, the saturation detector), and whatever wasm-epp cannot do is named in a note,
//! one line each, that the glue logs when the configuration is loaded: nothing is dropped
//! silently. The names follow GIE v1.5 (`approx-prefix-cache-producer` and the prefix
//! parameters it forwards from `prefix-cache-scorer`, `utilization-detector`) and the older
//! ones GIE users still have (`hashBlockSize`, `blockSize`, inline saturation thresholds).

use serde_json::{json, Map, Value};

use super::filters::Saturation;

pub const KIND: &str = "EndpointPickerConfig";
const API_VERSIONS: [&str; 2] = ["inference.networking.x-k8s.io/v1alpha1", "llm-d.ai/v1alpha1"];

/// GIE features with no counterpart here, by top-level key.
const UNSUPPORTED_KEYS: [(&str, &str); 6] = [
    ("featureGates", "feature gates"),
    ("dataLayer", "the data layer (its sources and extractors)"),
    ("data", "the data layer (its sources and extractors)"),
    ("flowControl", "flow control (queuing and fairness)"),
    ("parser", "a request parser plugin (OpenAI chat and completions bodies are read built in)"),
    ("requestHandler", "a request handler plugin"),
];

/// Plugin types that feed or wrap what is built in here: consumed, not scheduled.
const FOLDED: [&str; 3] = ["approx-prefix-cache-producer", "utilization-detector", "openai-parser"];

/// The document is an EndpointPickerConfig (it says so).
pub fn is_endpoint_picker_config(doc: &Value) -> bool {
    doc.get("kind").and_then(Value::as_str) == Some(KIND) || doc.get("apiVersion").is_some()
}

/// What an EndpointPickerConfig becomes.
#[derive(Debug, Default)]
pub struct Translated {
    /// The profile in this module's `scheduler` shape.
    pub doc: Value,
    /// What was left out or changed, one line each.
    pub notes: Vec<String>,
    /// The saturation detector's thresholds, if the document gives them.
    pub saturation: Option<Saturation>,
}

pub fn translate(doc: &Value, known: &dyn Fn(&str) -> bool) -> Result<Translated, String> {
    let api = doc.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    if !API_VERSIONS.contains(&api) {
        return Err(format!("apiVersion {api:?}: an EndpointPickerConfig is one of {}", API_VERSIONS.join(", ")));
    }
    if doc.get("kind").and_then(Value::as_str) != Some(KIND) {
        return Err(format!("kind: must be {KIND:?}"));
    }
    let mut out = Translated::default();
    let top = doc.as_object().ok_or("an EndpointPickerConfig is an object")?;
    for key in top.keys() {
        match UNSUPPORTED_KEYS.iter().find(|(k, _)| k == key) {
            Some((_, what)) => out.notes.push(format!("`{key}`: {what} is not supported by wasm-epp; ignored")),
            None if ["apiVersion", "kind", "plugins", "schedulingProfiles", "saturationDetector"].contains(&key.as_str()) => {}
            None => return Err(format!("unknown EndpointPickerConfig field `{key}`")),
        }
    }
    let plugins: Vec<Value> = doc.get("plugins").and_then(Value::as_array).cloned().unwrap_or_default();
    let name_of = |p: &Value| p.get("name").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or_default().to_string();
    let kind_of = |p: &Value| p.get("type").and_then(Value::as_str).unwrap_or_default().to_string();

    // The prefix producer's parameters are the prefix scorer's (GIE v1.5 forwards them).
    let producer: Map<String, Value> = plugins
        .iter()
        .find(|p| kind_of(p) == "approx-prefix-cache-producer")
        .and_then(|p| p.get("parameters")?.as_object().cloned())
        .unwrap_or_default();
    out.saturation = saturation(doc, &plugins, &mut out.notes)?;

    let mut kept = Vec::new();
    for p in &plugins {
        let kind = kind_of(p);
        if FOLDED.contains(&kind.as_str()) {
            if kind == "openai-parser" {
                out.notes.push("plugin `openai-parser`: request parsing is built in; ignored".into());
            }
            continue;
        }
        if !known(&kind) {
            out.notes.push(format!("plugin `{}` (type `{kind}`) is not available in wasm-epp: left out of every profile", name_of(p)));
            continue;
        }
        let mut p = p.clone();
        if kind == "prefix-cache-scorer" {
            let mut params = producer.clone();
            params.extend(p.get("parameters").and_then(Value::as_object).cloned().unwrap_or_default());
            p["parameters"] = prefix_parameters(params, &mut out.notes)?;
        }
        kept.push(p);
    }
    let kept_names: Vec<String> = kept.iter().map(name_of).collect();

    let profiles: Vec<Value> = doc.get("schedulingProfiles").and_then(Value::as_array).cloned().unwrap_or_default();
    let chosen = match profiles.len() {
        0 => return Err("schedulingProfiles: at least one profile is needed".into()),
        1 => profiles[0].clone(),
        _ => {
            // Of a prefill/decode pair, decode is the profile that serves the request.
            let named = |n: &str| profiles.iter().find(|p| p.get("name").and_then(Value::as_str) == Some(n));
            let chosen = named("decode").unwrap_or(&profiles[0]).clone();
            let others: Vec<&str> =
                profiles.iter().filter_map(|p| p.get("name")?.as_str()).filter(|n| Some(*n) != chosen["name"].as_str()).collect();
            out.notes.push(format!(
                "{} scheduling profiles: wasm-epp runs one, {:?}; {} ignored (no multi-profile handling such as prefill/decode disaggregation)",
                profiles.len(),
                chosen["name"].as_str().unwrap_or_default(),
                others.join(", ")
            ));
            chosen
        }
    };
    let refs: Vec<Value> = chosen
        .get("plugins")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|r| r.get("pluginRef").and_then(Value::as_str).is_some_and(|n| kept_names.iter().any(|k| k == n)))
        .cloned()
        .collect();
    out.doc = json!({"plugins": kept, "schedulingProfiles": [{"name": chosen["name"], "plugins": refs}]});
    Ok(out)
}

/// The saturation detector: GIE v1.5's `saturationDetector.pluginRef` to a
/// `utilization-detector` plugin, or v1.2 to v1.4's thresholds inline.
fn saturation(doc: &Value, plugins: &[Value], notes: &mut Vec<String>) -> Result<Option<Saturation>, String> {
    let Some(detector) = doc.get("saturationDetector") else { return Ok(None) };
    let params = match detector.get("pluginRef").and_then(Value::as_str) {
        Some(name) => {
            let plugin = plugins
                .iter()
                .find(|p| p.get("name").or_else(|| p.get("type")).and_then(Value::as_str) == Some(name))
                .ok_or_else(|| format!("saturationDetector: no plugin named {name:?}"))?;
            if plugin.get("type").and_then(Value::as_str) != Some("utilization-detector") {
                notes.push(format!("saturation detector `{name}` is not a utilization-detector: the default thresholds apply"));
                return Ok(None);
            }
            plugin.get("parameters").cloned().unwrap_or(json!({}))
        }
        None => detector.clone(),
    };
    let mut thresholds = Map::new();
    for (key, value) in params.as_object().into_iter().flatten() {
        match key.as_str() {
            "queueDepthThreshold" | "kvCacheUtilThreshold" => {
                thresholds.insert(key.clone(), value.clone());
            }
            "metricsStalenessThreshold" => notes.push(format!(
                "saturation detector `metricsStalenessThreshold` ({value}): wasm-epp's staleness is the plugin configuration's stale_after_ms"
            )),
            other => notes.push(format!("saturation detector parameter `{other}` is not supported by wasm-epp; ignored")),
        }
    }
    serde_json::from_value(Value::Object(thresholds)).map(Some).map_err(|e| format!("saturationDetector: {e}"))
}

/// Bytes a token stands for when GIE sizes blocks in tokens (this module hashes bytes).
const BYTES_PER_TOKEN: u64 = 4;

/// GIE's prefix parameters in this module's names.
fn prefix_parameters(mut p: Map<String, Value>, notes: &mut Vec<String>) -> Result<Value, String> {
    let number = |v: &Value, key: &str| v.as_u64().filter(|&n| n > 0).ok_or(format!("prefix-cache-scorer `{key}`: a positive integer"));
    if let Some(v) = p.remove("blockSizeTokens") {
        let bytes = number(&v, "blockSizeTokens")? * BYTES_PER_TOKEN;
        notes.push(format!("prefix-cache-scorer `blockSizeTokens: {v}`: blocks of {bytes} prompt bytes (about {BYTES_PER_TOKEN} a token)"));
        p.entry("hashBlockSize").or_insert(json!(bytes));
    }
    if let Some(v) = p.remove("blockSize") {
        p.insert("hashBlockSize".into(), json!(number(&v, "blockSize")?));
    }
    if let Some(v) = p.remove("maxPrefixTokensToMatch") {
        let block = p.get("hashBlockSize").and_then(Value::as_u64).unwrap_or(64).max(1);
        let blocks = (number(&v, "maxPrefixTokensToMatch")? * BYTES_PER_TOKEN).div_ceil(block);
        p.entry("maxPrefixBlocksToMatch").or_insert(json!(blocks));
    }
    // autoTune sizes each server's index from its KV cache, which this module does whenever
    // the metrics give the size (lruCapacityPerServer serves where they do not).
    if let Some(v) = p.remove("autoTune") {
        if v == json!(false) {
            notes.push("prefix-cache-scorer `autoTune: false`: wasm-epp still sizes each server's index from its KV cache when its metrics give it".into());
        }
    }
    Ok(Value::Object(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test;

    fn known(kind: &str) -> bool {
        super::super::registry::knows(kind)
    }

    #[test]
    fn a_gie_v1_5_config_loads_with_a_note_for_each_unsupported_part() {
        let doc = json!({
            "apiVersion": "inference.networking.x-k8s.io/v1alpha1", "kind": "EndpointPickerConfig",
            "featureGates": ["enableLegacyMetrics"],
            "plugins": [
                {"type": "queue-scorer"}, {"type": "kv-cache-utilization-scorer"},
                {"type": "approx-prefix-cache-producer", "parameters": {"blockSizeTokens": 16, "maxPrefixTokensToMatch": 4096, "lruCapacityPerServer": 31250, "autoTune": true}},
                {"type": "prefix-cache-scorer"}, {"type": "openai-parser"},
                {"type": "utilization-detector", "name": "sd", "parameters": {"queueDepthThreshold": 8, "kvCacheUtilThreshold": 0.9, "metricsStalenessThreshold": "200ms"}}
            ],
            "schedulingProfiles": [{"name": "default", "plugins": [
                {"pluginRef": "queue-scorer", "weight": 2}, {"pluginRef": "kv-cache-utilization-scorer", "weight": 2.0},
                {"pluginRef": "prefix-cache-scorer", "weight": 3}]}],
            "parser": {"pluginRef": "openai-parser"},
            "saturationDetector": {"pluginRef": "sd"}
        });
        let t = translate(&doc, &known).unwrap();
        let prefix = &t.doc["plugins"][2];
        assert_eq!(prefix["parameters"], json!({"hashBlockSize": 64, "maxPrefixBlocksToMatch": 256, "lruCapacityPerServer": 31250}));
        assert_eq!(t.saturation, Some(Saturation { queue_depth_threshold: 8, kv_cache_util_threshold: 0.9 }));
        let notes = t.notes.join("\n");
        for expected in ["featureGates", "parser", "openai-parser", "metricsStalenessThreshold", "blockSizeTokens"] {
            assert!(notes.contains(expected), "{expected} in {notes}");
        }
        assert_eq!(t.notes.len(), 5, "one line each: {notes}");
    }

    #[test]
    fn a_prefill_decode_config_runs_decode_and_names_what_it_leaves_out() {
        let doc = json!({
            "apiVersion": "llm-d.ai/v1alpha1", "kind": "EndpointPickerConfig",
            "plugins": [{"type": "prefix-cache-scorer"}, {"type": "queue-scorer"}, {"type": "prefill-filter"},
                        {"type": "decode-filter"}, {"type": "max-score-picker"},
                        {"type": "disagg-profile-handler", "parameters": {"deciders": {"prefill": "prefix-based-pd-decider"}}}],
            "schedulingProfiles": [
                {"name": "prefill", "plugins": [{"pluginRef": "prefill-filter"}, {"pluginRef": "prefix-cache-scorer", "weight": 2}]},
                {"name": "decode", "plugins": [{"pluginRef": "decode-filter"}, {"pluginRef": "max-score-picker"},
                    {"pluginRef": "prefix-cache-scorer", "weight": 2}, {"pluginRef": "queue-scorer", "weight": 1}]}]
        });
        let t = translate(&doc, &known).unwrap();
        assert_eq!(t.doc["schedulingProfiles"][0]["name"], "decode");
        let refs: Vec<&str> = t.doc["schedulingProfiles"][0]["plugins"].as_array().unwrap().iter().map(|r| r["pluginRef"].as_str().unwrap()).collect();
        assert_eq!(refs, ["max-score-picker", "prefix-cache-scorer", "queue-scorer"]);
        let notes = t.notes.join("\n");
        for expected in ["prefill-filter", "decode-filter", "disagg-profile-handler", "\"decode\"; prefill ignored"] {
            assert!(notes.contains(expected), "{expected} in {notes}");
        }
    }

    #[test]
    fn older_names_and_bad_documents() {
        let legacy = json!({"apiVersion": "inference.networking.x-k8s.io/v1alpha1", "kind": "EndpointPickerConfig",
            "plugins": [{"type": "prefix-cache-scorer", "parameters": {"hashBlockSize": 32, "maxPrefixBlocksToMatch": 100}}],
            "schedulingProfiles": [{"name": "p", "plugins": [{"pluginRef": "prefix-cache-scorer"}]}],
            "saturationDetector": {"queueDepthThreshold": 3, "kvCacheUtilThreshold": 0.5}});
        let t = translate(&legacy, &known).unwrap();
        assert_eq!(t.doc["plugins"][0]["parameters"], json!({"hashBlockSize": 32, "maxPrefixBlocksToMatch": 100}));
        assert_eq!(t.saturation.map(|s| s.queue_depth_threshold), Some(3));
        assert!(t.notes.is_empty(), "{:?}", t.notes);
        for (bad, why) in [
            (json!({"apiVersion": "v9", "kind": "EndpointPickerConfig"}), "apiVersion"),
            (json!({"apiVersion": "llm-d.ai/v1alpha1", "kind": "Other"}), "kind"),
            (json!({"apiVersion": "llm-d.ai/v1alpha1", "kind": "EndpointPickerConfig", "schedulingProfiles": []}), "at least one"),
            (json!({"apiVersion": "llm-d.ai/v1alpha1", "kind": "EndpointPickerConfig", "plugins": [], "bogus": 1, "schedulingProfiles": [{"name": "a"}]}), "bogus"),
        ] {
            let e = translate(&bad, &known).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
    }
}
