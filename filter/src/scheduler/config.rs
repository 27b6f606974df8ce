//! The `scheduler` key of the plugin configuration, in the shape of GIE's
//! EndpointPickerConfig: plugins by type (and an optional name), and a scheduling profile
//! that references them, scorers with weights. A string names a preset instead.
//!
//! ```json
//! "scheduler": {
//!   "plugins": [{"type": "queue-scorer"}, {"type": "prefix-cache-scorer", "name": "prefix",
//!                "parameters": {"hashBlockSize": 64}}],
//!   "schedulingProfiles": [{"name": "default", "plugins": [
//!     {"pluginRef": "queue-scorer", "weight": 2}, {"pluginRef": "prefix", "weight": 3}]}]
//! }
//! ```

use serde::Deserialize;
use serde_json::Value;

use super::filters::Saturation;
use super::gie;
use super::pickers::MaxScorePicker;
use super::registry::{self, Plugin};
use super::{Profile, WeightedScorer};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    plugins: Vec<PluginSpec>,
    scheduling_profiles: Vec<ProfileSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginSpec {
    #[serde(rename = "type")]
    kind: String,
    /// Defaults to the type.
    name: Option<String>,
    #[serde(default)]
    parameters: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileSpec {
    name: String,
    plugins: Vec<PluginRef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PluginRef {
    plugin_ref: String,
    /// Scorers only; GIE's default weight is 1.
    weight: Option<f64>,
}

/// The profile a `scheduler` value describes (`None`: the `default` preset), for a proxy
/// without peers.
pub fn build(spec: Option<&Value>) -> Result<Profile, String> {
    plan(spec, false).map(|p| p.profile)
}

/// A `scheduler` value, built: the profile, and, from a GIE EndpointPickerConfig, what it
/// left out (one line each, for the log) and its saturation thresholds.
pub struct Plan {
    pub profile: Profile,
    pub notes: Vec<String>,
    pub saturation: Option<Saturation>,
}

/// `peers`: the proxy settles prefix records with other replicas (a preset may use it).
pub fn plan(spec: Option<&Value>, peers: bool) -> Result<Plan, String> {
    let doc = match spec {
        None => registry::preset("default", peers),
        Some(Value::String(name)) => Some(registry::preset(name, peers).ok_or_else(|| {
            format!("unknown preset {name:?}; presets: {}", registry::PRESETS.join(", "))
        })?),
        Some(v) => Some(v.clone()),
    };
    let doc = doc.unwrap_or_default();
    let (doc, notes, saturation) = if gie::is_endpoint_picker_config(&doc) {
        let t = gie::translate(&doc, &registry::knows)?;
        (t.doc, t.notes, t.saturation)
    } else {
        (doc, Vec::new(), None)
    };
    let profile = build_spec(doc)?;
    Ok(Plan { profile, notes, saturation })
}

fn build_spec(doc: Value) -> Result<Profile, String> {
    let spec: Spec = serde_json::from_value(doc).map_err(|e| e.to_string())?;
    let [profile] = spec.scheduling_profiles.as_slice() else {
        return Err(format!(
            "schedulingProfiles: exactly one profile is supported (single-profile-handler), found {}",
            spec.scheduling_profiles.len()
        ));
    };
    for (i, p) in spec.plugins.iter().enumerate() {
        let name = p.name.as_deref().unwrap_or(&p.kind);
        if spec.plugins[..i].iter().any(|q| q.name.as_deref().unwrap_or(&q.kind) == name) {
            return Err(format!("plugins[{i}]: the name {name:?} is used twice"));
        }
    }
    let mut out = Profile::new(profile.name.clone(), Box::new(MaxScorePicker));
    let mut has_picker = false;
    for r in &profile.plugins {
        let at = format!("schedulingProfiles[{:?}].plugins[{:?}]", profile.name, r.plugin_ref);
        let spec = spec
            .plugins
            .iter()
            .find(|p| p.name.as_deref().unwrap_or(&p.kind) == r.plugin_ref)
            .ok_or_else(|| format!("{at}: no plugin of that name in `plugins`"))?;
        let plugin = registry::build(&spec.kind, &spec.parameters).map_err(|e| format!("{at}: {e}"))?;
        match (plugin, r.weight) {
            (Plugin::Scorer(scorer), weight) => {
                let weight = weight.unwrap_or(1.0);
                if !(weight.is_finite() && weight >= 0.0) {
                    return Err(format!("{at}: weight must be a non-negative number"));
                }
                out.scorers.push(WeightedScorer { weight, scorer });
            }
            (_, Some(_)) => return Err(format!("{at}: only scorers take a weight")),
            (Plugin::Filter(f), None) => out.filters.push(f),
            (Plugin::Picker(p), None) => {
                if has_picker {
                    return Err(format!("{at}: a profile has one picker"));
                }
                has_picker = true;
                out.picker = p;
            }
            (Plugin::ProfileHandler, None) => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use crate::test;

    #[test]
    fn presets_build() {
        for name in registry::PRESETS {
            let p = build(Some(&json!(name))).unwrap();
            assert!(!p.scorers.is_empty(), "{name}");
        }
        let gie = build(Some(&json!("gie-default"))).unwrap();
        let cols: Vec<(&str, f64)> = gie.scorers.iter().map(|s| (s.scorer.name(), s.weight)).collect();
        assert_eq!(cols, vec![("queue-scorer", 2.0), ("kv-cache-utilization-scorer", 2.0), ("prefix-cache-scorer", 3.0)]);
        assert_eq!(gie.picker.name(), "max-score-picker");
        assert_eq!(build(None).unwrap().name, "default");
    }

    #[test]
    fn the_default_preset_places_on_two_choices_only_with_peers() {
        let choices = |peers: bool| {
            let doc = registry::preset("default", peers).unwrap();
            let prefix = doc["plugins"].as_array().unwrap().iter().find(|p| p["type"] == "prefix-cache-scorer").cloned();
            prefix.unwrap()["parameters"]["placementChoices"].as_u64()
        };
        assert_eq!((choices(false), choices(true)), (Some(1), Some(2)));
        assert!(plan(None, true).is_ok());
        let gie = registry::preset("gie-default", true).unwrap();
        assert_eq!(gie, registry::preset("gie-default", false).unwrap(), "GIE's profile is GIE's, peers or not");
    }

    #[test]
    fn custom_profiles_by_reference() {
        let p = build(Some(&json!({
            "plugins": [{"type": "queue-scorer", "name": "q"}, {"type": "random-picker"},
                        {"type": "saturation-filter", "parameters": {"queueDepthThreshold": 3}}],
            "schedulingProfiles": [{"name": "mine", "plugins": [
                {"pluginRef": "saturation-filter"}, {"pluginRef": "q", "weight": 5}, {"pluginRef": "random-picker"}]}]
        })))
        .unwrap();
        assert_eq!((p.filters.len(), p.scorers[0].weight, p.picker.name()), (1, 5.0, "random-picker"));
    }

    #[test]
    fn mistakes_are_named() {
        let profile = |plugins: Value, refs: Value| json!({"plugins": plugins, "schedulingProfiles": [{"name": "p", "plugins": refs}]});
        for (spec, needle) in [
            (json!("fastest"), "unknown preset"),
            (profile(json!([{"type": "magic-scorer"}]), json!([{"pluginRef": "magic-scorer"}])), "unknown plugin type"),
            (profile(json!([]), json!([{"pluginRef": "queue-scorer"}])), "no plugin of that name"),
            (profile(json!([{"type": "queue-scorer"}]), json!([{"pluginRef": "queue-scorer", "weight": -1}])), "non-negative"),
            (profile(json!([{"type": "max-score-picker"}]), json!([{"pluginRef": "max-score-picker", "weight": 2}])), "only scorers"),
            (profile(json!([{"type": "queue-scorer", "parameters": {"x": 1}}]), json!([{"pluginRef": "queue-scorer"}])), "no parameters"),
            (profile(json!([{"type": "prefix-cache-scorer", "parameters": {"hashBlockSize": 0}}]), json!([{"pluginRef": "prefix-cache-scorer"}])), "positive"),
            (profile(json!([{"type": "prefix-cache-scorer", "parameters": {"blockSize": 3}}]), json!([{"pluginRef": "prefix-cache-scorer"}])), "blockSize"),
            (profile(json!([{"type": "queue-scorer"}, {"type": "queue-scorer"}]), json!([])), "used twice"),
            (json!({"plugins": [], "schedulingProfiles": []}), "exactly one profile"),
        ] {
            let e = build(Some(&spec)).err().unwrap_or_default();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }
}
