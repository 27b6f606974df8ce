//! GIE's Kubernetes resources into the plugin configuration: what an operator who runs
//! GIE's Endpoint Picker today already has (`InferencePool`, `InferenceObjective`,
//! `InferenceModelRewrite`, the `EndpointPickerConfig`) becomes one JSON document for
//! wasm-epp. What cannot be expressed is an error that says so; what wasm-epp does
//! differently is a note.

use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The plugin configuration, and what the operator should know about it.
#[derive(Debug)]
pub struct Converted {
    pub config: Value,
    pub notes: Vec<String>,
}

const POOL: &str = "inference.networking.k8s.io/v1";
/// InferenceObjective and InferenceModelRewrite: GIE's group, and llm-d's since they moved.
const OBJECTIVE_GROUPS: [&str; 2] = ["inference.networking.x-k8s.io/v1alpha2", "llm-d.ai/v1alpha2"];

/// Every document of every YAML text, in order.
pub fn documents(texts: &[String]) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for text in texts {
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = serde_yaml::Value::deserialize(doc).map_err(|e| format!("not YAML: {e}"))?;
            let value = serde_json::to_value(value).map_err(|e| format!("not JSON-shaped: {e}"))?;
            if !value.is_null() {
                docs.push(value);
            }
        }
    }
    Ok(docs)
}

/// The plugin configuration for the pool `pool` (the only one, if `None`), whose Envoy
/// cluster is `pool_cluster`.
pub fn convert(docs: &[Value], pool: Option<&str>, pool_cluster: &str) -> Result<Converted, String> {
    let kind = |d: &Value| d["kind"].as_str().unwrap_or_default().to_string();
    let name = |d: &Value| d["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let pools: Vec<&Value> = docs.iter().filter(|d| kind(d) == "InferencePool").collect();
    let chosen = match (pool, pools.as_slice()) {
        (Some(p), _) => pools.iter().find(|d| name(d) == p).copied().ok_or(format!("no InferencePool named {p:?}"))?,
        (None, [one]) => *one,
        (None, []) => return Err("no InferencePool in the input".into()),
        (None, _) => return Err(format!("{} InferencePools: say which with --pool", pools.len())),
    };
    let pool_name = name(chosen);
    let mut notes = Vec::new();
    let mut config = Map::new();
    config.insert("pool_cluster".into(), json!(pool_cluster));
    config.insert("metrics_cluster".into(), json!(pool_cluster));
    pool_settings(chosen, &mut notes)?;

    let mut objectives = Map::new();
    let mut rewrites = Vec::new();
    for d in docs {
        let api = d["apiVersion"].as_str().unwrap_or_default();
        let what = format!("{} {:?}", kind(d), name(d));
        let for_this_pool = || d["spec"]["poolRef"]["name"].as_str() == Some(pool_name.as_str());
        match kind(d).as_str() {
            "InferencePool" if api == POOL => {}
            "InferenceObjective" if OBJECTIVE_GROUPS.contains(&api) => {
                if for_this_pool() {
                    let priority = d["spec"]["priority"].as_i64().unwrap_or(0);
                    let priority = i32::try_from(priority).map_err(|_| format!("{what}: priority {priority} is out of range"))?;
                    objectives.insert(name(d), json!(priority));
                }
            }
            "InferenceModelRewrite" if OBJECTIVE_GROUPS.contains(&api) => {
                if for_this_pool() {
                    rewrites.extend(rewrite_rules(d, &what)?);
                }
            }
            "EndpointPickerConfig" => {
                config.insert("scheduler".into(), d.clone());
            }
            other => return Err(format!("{what} ({api}): not a resource this converts (InferencePool, InferenceObjective, InferenceModelRewrite, EndpointPickerConfig), found {other:?}")),
        }
    }
    if !objectives.is_empty() {
        config.insert("objectives".into(), Value::Object(objectives));
    }
    if !rewrites.is_empty() {
        config.insert("model_rewrites".into(), Value::Array(rewrites));
    }
    Ok(Converted { config: Value::Object(config), notes })
}

/// What an InferencePool says that the plugin configuration does not carry, checked.
fn pool_settings(pool: &Value, notes: &mut Vec<String>) -> Result<(), String> {
    let spec = &pool["spec"];
    let ports = spec["targetPorts"].as_array().map_or(0, Vec::len);
    if ports != 1 {
        return Err(format!(
            "InferencePool targetPorts: wasm-epp scrapes and routes to one port per pod, the pool lists {ports}"
        ));
    }
    if spec["appProtocol"].as_str().is_some_and(|p| p != "http") {
        notes.push(format!("appProtocol {}: the pool cluster's protocol is Envoy's to set; wasm-epp only names hosts", spec["appProtocol"]));
    }
    if let Some(epp) = spec["endpointPickerRef"].as_object() {
        notes.push(format!(
            "endpointPickerRef {}: wasm-epp picks in the proxy, so that Endpoint Picker is not called; remove it from the gateway's path",
            epp.get("name").and_then(Value::as_str).unwrap_or_default()
        ));
        if epp.get("failureMode").and_then(Value::as_str) == Some("FailClose") {
            notes.push("failureMode FailClose: wasm-epp fails open (spreads requests over the pool) when it has no fresh metrics".into());
        }
    }
    notes.push("the pool's selector picks the pods in Kubernetes; wasm-epp takes them from the pool cluster's hosts in Envoy".into());
    Ok(())
}

/// An InferenceModelRewrite's rules in the plugin's shape: one rule per matched model.
fn rewrite_rules(d: &Value, what: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for (i, rule) in d["spec"]["rules"].as_array().into_iter().flatten().enumerate() {
        let targets: Vec<Value> = rule["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let model = t["modelRewrite"].as_str().ok_or(format!("{what} rules[{i}]: a target without modelRewrite"))?;
                let weight = t["weight"].as_u64().unwrap_or(1);
                Ok(json!({"model": model, "weight": weight}))
            })
            .collect::<Result<_, String>>()?;
        let matches = rule["matches"].as_array().cloned().unwrap_or_default();
        if matches.is_empty() {
            return Err(format!("{what} rules[{i}]: a rule without matches rewrites every model; wasm-epp rewrites named models only"));
        }
        for m in matches {
            let model = &m["model"];
            match model["type"].as_str().unwrap_or("Exact") {
                "Exact" => {}
                other => return Err(format!("{what} rules[{i}]: match type {other:?}; wasm-epp matches models exactly")),
            }
            let value = model["value"].as_str().ok_or(format!("{what} rules[{i}]: a match without a model value"))?;
            out.push(json!({"model": value, "targets": targets}));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESOURCES: &str = r#"
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: vllm-qwen3-32b}
spec:
  selector: {matchLabels: {app: vllm-qwen3-32b}}
  targetPorts: [{number: 8000}]
  endpointPickerRef: {name: vllm-qwen3-32b-epp, port: {number: 9002}, failureMode: FailClose}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: base-model}
spec: {priority: 2, poolRef: {group: inference.networking.k8s.io, name: vllm-qwen3-32b}}
---
apiVersion: llm-d.ai/v1alpha2
kind: InferenceObjective
metadata: {name: batch}
spec: {priority: -1, poolRef: {name: vllm-qwen3-32b}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: elsewhere}
spec: {priority: 5, poolRef: {name: another-pool}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata: {name: small-segment-lora-rewrite}
spec:
  poolRef: {group: inference.networking.k8s.io, name: vllm-qwen3-32b}
  rules:
  - matches: [{model: {type: Exact, value: small-segment-lora}}, {model: {value: food-review}}]
    targets: [{modelRewrite: small-segment-lora-v1, weight: 90}, {modelRewrite: small-segment-lora-v2, weight: 10}]
"#;

    #[test]
    fn resources_become_one_plugin_configuration() {
        let docs = documents(&[RESOURCES.to_string()]).unwrap();
        let c = convert(&docs, None, "outbound|8000||vllm.default.svc.cluster.local").unwrap();
        assert_eq!(c.config["objectives"], json!({"base-model": 2, "batch": -1}));
        let rules = c.config["model_rewrites"].as_array().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1]["model"], "food-review");
        assert_eq!(rules[0]["targets"][0], json!({"model": "small-segment-lora-v1", "weight": 90}));
        assert_eq!(c.config["pool_cluster"], "outbound|8000||vllm.default.svc.cluster.local");
        let notes = c.notes.join("\n");
        assert!(notes.contains("vllm-qwen3-32b-epp") && notes.contains("FailClose"), "{notes}");
        // The module takes it.
        epp::config::Config::parse(c.config.to_string().as_bytes()).unwrap();
    }

    #[test]
    fn what_cannot_be_expressed_is_an_error_that_says_so() {
        let two_ports = RESOURCES.replace("targetPorts: [{number: 8000}]", "targetPorts: [{number: 8000}, {number: 8001}]");
        let catch_all = RESOURCES.replace("  - matches: [{model: {type: Exact, value: small-segment-lora}}, {model: {value: food-review}}]\n", "  - matches: []\n");
        let pattern = RESOURCES.replace("type: Exact, value: small", "type: RegularExpression, value: small");
        for (text, why) in [(two_ports, "one port"), (catch_all, "without matches"), (pattern, "RegularExpression")] {
            let e = convert(&documents(&[text]).unwrap(), None, "c").unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
        let e = convert(&documents(&["apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n".into(), RESOURCES.into()]).unwrap(), None, "c");
        assert!(e.unwrap_err().contains("ConfigMap"));
        let e = convert(&documents(&[RESOURCES.into()]).unwrap(), Some("nope"), "c").unwrap_err();
        assert!(e.contains("nope"));
    }
}
