//! Plugins by name, and the presets that ship.
//!
//! A new plugin is one file under `filters/`, `scorers/` or `pickers/` and one line in
//! `build` below; configurations then name it by its type.

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::filters::{LoraAffinityFilter, Saturation, SaturationFilter};
use super::pickers::{MaxScorePicker, RandomPicker, WeightedRandomPicker};
use super::scorers::{prefix_cache, KvCacheScorer, LoraAffinityScorer, PrefixCacheScorer, QueueScorer, RunningRequestsScorer};
use super::{Filter, Picker, Profile, Scorer};

pub enum Plugin {
    Filter(Box<dyn Filter>),
    Scorer(Box<dyn Scorer>),
    Picker(Box<dyn Picker>),
    /// GIE's `single-profile-handler`: accepted so GIE configurations load; one profile
    /// is all this module runs.
    ProfileHandler,
}

/// Every plugin type a configuration may name.
pub const PLUGIN_TYPES: &[&str] = &[
    "lora-affinity-filter",
    "saturation-filter",
    "queue-scorer",
    "kv-cache-utilization-scorer",
    "running-requests-scorer",
    "lora-affinity-scorer",
    "prefix-cache-scorer",
    "max-score-picker",
    "random-picker",
    "weighted-random-picker",
    "single-profile-handler",
];

/// The plugin of type `kind` with its `parameters` (null or an object).
pub fn build(kind: &str, parameters: &Value) -> Result<Plugin, String> {
    let none = || no_parameters(kind, parameters);
    Ok(match kind {
        "lora-affinity-filter" => none().map(|_| Plugin::Filter(Box::new(LoraAffinityFilter)))?,
        "saturation-filter" => Plugin::Filter(Box::new(SaturationFilter(params::<Saturation>(parameters)?))),
        "queue-scorer" => none().map(|_| Plugin::Scorer(Box::new(QueueScorer)))?,
        "kv-cache-utilization-scorer" => none().map(|_| Plugin::Scorer(Box::new(KvCacheScorer)))?,
        "running-requests-scorer" => none().map(|_| Plugin::Scorer(Box::new(RunningRequestsScorer)))?,
        "lora-affinity-scorer" => none().map(|_| Plugin::Scorer(Box::new(LoraAffinityScorer)))?,
        "prefix-cache-scorer" => {
            let p: prefix_cache::Params = params(parameters)?;
            p.validate()?;
            Plugin::Scorer(Box::new(PrefixCacheScorer::new(p)))
        }
        "max-score-picker" => none().map(|_| Plugin::Picker(Box::new(MaxScorePicker)))?,
        "random-picker" => none().map(|_| Plugin::Picker(Box::new(RandomPicker)))?,
        "weighted-random-picker" => none().map(|_| Plugin::Picker(Box::new(WeightedRandomPicker)))?,
        "single-profile-handler" => Plugin::ProfileHandler,
        other => return Err(format!("unknown plugin type {other:?}; known: {}", PLUGIN_TYPES.join(", "))),
    })
}

fn params<T: DeserializeOwned>(v: &Value) -> Result<T, String> {
    let v = if v.is_null() { json!({}) } else { v.clone() };
    serde_json::from_value(v).map_err(|e| e.to_string())
}

fn no_parameters(kind: &str, v: &Value) -> Result<(), String> {
    match v {
        Value::Null => Ok(()),
        Value::Object(m) if m.is_empty() => Ok(()),
        _ => Err(format!("{kind} takes no parameters")),
    }
}

/// The presets, as the configurations they stand for.
pub const PRESETS: &[&str] = &["default", "gie-default"];

pub fn preset(name: &str) -> Option<Value> {
    match name {
        // GIE's default EndpointPickerConfig, exactly: queue 2, KV cache 2, prefix 3,
        // highest score wins.
        "gie-default" => Some(json!({
            "plugins": [
                {"type": "queue-scorer"},
                {"type": "kv-cache-utilization-scorer"},
                {"type": "prefix-cache-scorer"},
                {"type": "max-score-picker"}
            ],
            "schedulingProfiles": [{"name": "default", "plugins": [
                {"pluginRef": "queue-scorer", "weight": 2},
                {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
                {"pluginRef": "prefix-cache-scorer", "weight": 3},
                {"pluginRef": "max-score-picker"}
            ]}]
        })),
        // GIE's default, changed where host-sim measurements showed it (BENCHMARKS.md):
        // adapters only where they run (or can run) now, and LoRA affinity; prefix
        // placement, so that every worker and replica sends a recurring prefix to one home;
        // running requests and a lighter queue weight, which spread long generations
        // better. Load scorers also count what this proxy sent since the last scrape (in
        // every profile).
        "default" => Some(json!({
            "plugins": [
                {"type": "lora-affinity-filter"},
                {"type": "queue-scorer"},
                {"type": "kv-cache-utilization-scorer"},
                {"type": "prefix-cache-scorer", "parameters": {"placement": 1.0}},
                {"type": "lora-affinity-scorer"},
                {"type": "running-requests-scorer"},
                {"type": "max-score-picker"}
            ],
            "schedulingProfiles": [{"name": "default", "plugins": [
                {"pluginRef": "lora-affinity-filter"},
                {"pluginRef": "queue-scorer", "weight": 1},
                {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
                {"pluginRef": "prefix-cache-scorer", "weight": 3},
                {"pluginRef": "lora-affinity-scorer", "weight": 1},
                {"pluginRef": "running-requests-scorer", "weight": 1},
                {"pluginRef": "max-score-picker"}
            ]}]
        })),
        _ => None,
    }
}

/// The profile used when the configuration names none.
pub fn default_profile() -> Profile {
    // The preset is a constant document; `build` accepting it is a unit test.
    super::config::build(None).unwrap_or_else(|_| Profile {
        name: "default".into(),
        filters: vec![],
        scorers: vec![],
        picker: Box::new(MaxScorePicker),
    })
}
