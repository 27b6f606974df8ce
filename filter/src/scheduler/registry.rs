//! Plugins by name, and the presets that ship.
//!
//! A new plugin is one file under `filters/`, `scorers/` or `pickers/` (declared in that
//! folder's `mod.rs`) and one line in `PLUGINS` below; configurations then name it by type.

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::filters::{LoraAffinityFilter, Saturation, SaturationFilter};
use super::pickers::{MaxScorePicker, RandomPicker, WeightedRandomPicker};
use super::scorers::{prefix_cache, KvCacheScorer, LoraAffinityScorer, PrefixCacheScorer, QueueScorer, RunningRequestsScorer};
use super::{Filter, Picker, Scorer};

pub enum Plugin {
    Filter(Box<dyn Filter>),
    Scorer(Box<dyn Scorer>),
    Picker(Box<dyn Picker>),
    /// GIE's `single-profile-handler`: accepted so GIE configurations load; one profile
    /// is all this module runs.
    ProfileHandler,
}

type Build = fn(&Value) -> Result<Plugin, String>;

/// Every plugin a configuration may name: a type name and how to build it from its
/// `parameters`. A new plugin is one file and one line here.
const PLUGINS: &[(&str, Build)] = &[
    (LoraAffinityFilter::TYPE, |p| plain(p, || Plugin::Filter(Box::new(LoraAffinityFilter)))),
    (SaturationFilter::TYPE, |p| Ok(Plugin::Filter(Box::new(SaturationFilter(params::<Saturation>(p)?))))),
    (QueueScorer::TYPE, |p| plain(p, || Plugin::Scorer(Box::new(QueueScorer)))),
    (KvCacheScorer::TYPE, |p| plain(p, || Plugin::Scorer(Box::new(KvCacheScorer)))),
    (RunningRequestsScorer::TYPE, |p| plain(p, || Plugin::Scorer(Box::new(RunningRequestsScorer)))),
    (LoraAffinityScorer::TYPE, |p| plain(p, || Plugin::Scorer(Box::new(LoraAffinityScorer)))),
    (PrefixCacheScorer::TYPE, |p| {
        let p: prefix_cache::Params = params(p)?;
        p.validate()?;
        Ok(Plugin::Scorer(Box::new(PrefixCacheScorer::new(p))))
    }),
    (MaxScorePicker::TYPE, |p| plain(p, || Plugin::Picker(Box::new(MaxScorePicker)))),
    (RandomPicker::TYPE, |p| plain(p, || Plugin::Picker(Box::new(RandomPicker)))),
    (WeightedRandomPicker::TYPE, |p| plain(p, || Plugin::Picker(Box::new(WeightedRandomPicker)))),
    ("single-profile-handler", |p| plain(p, || Plugin::ProfileHandler)),
];

/// The plugin of type `kind` with its `parameters` (null or an object).
pub fn build(kind: &str, parameters: &Value) -> Result<Plugin, String> {
    match PLUGINS.iter().find(|(name, _)| *name == kind) {
        Some((_, build)) => build(parameters),
        None => {
            let known: Vec<&str> = PLUGINS.iter().map(|(name, _)| *name).collect();
            Err(format!("unknown plugin type {kind:?}; known: {}", known.join(", ")))
        }
    }
}

/// A plugin of this type exists.
pub fn knows(kind: &str) -> bool {
    PLUGINS.iter().any(|(name, _)| *name == kind)
}

/// A plugin without parameters.
fn plain(parameters: &Value, make: impl FnOnce() -> Plugin) -> Result<Plugin, String> {
    match parameters {
        Value::Null => Ok(make()),
        Value::Object(m) if m.is_empty() => Ok(make()),
        _ => Err("this plugin takes no parameters".into()),
    }
}

fn params<T: DeserializeOwned>(v: &Value) -> Result<T, String> {
    let v = if v.is_null() { json!({}) } else { v.clone() };
    serde_json::from_value(v).map_err(|e| e.to_string())
}

/// The presets, as the configurations they stand for.
pub const PRESETS: &[&str] = &["default", "gie-default"];

/// `peers`: this proxy settles where prefixes live with other replicas (`peers` or
/// `peer_cluster` is set), which the default preset's placement takes into account.
pub fn preset(name: &str, peers: bool) -> Option<Value> {
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
        // every profile). With peers, a new prefix starts on the less used of its two
        // rendezvous homes: replicas that settle their records agree on it, where
        // replicas that do not would each count apart and split it (BENCHMARKS.md).
        "default" => Some(json!({
            "plugins": [
                {"type": "lora-affinity-filter"},
                {"type": "queue-scorer"},
                {"type": "kv-cache-utilization-scorer"},
                {"type": "prefix-cache-scorer", "parameters": {"placement": 1.0, "placementChoices": if peers { 2 } else { 1 }}},
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
