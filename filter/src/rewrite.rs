//! Model rewrites and traffic splits, like GIE's InferenceModelRewrite: a requested model
//! name is replaced by one of several target models, chosen by weight, before picking.

use serde::Deserialize;

use crate::rng::Rng;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteRule {
    /// The model clients ask for.
    pub model: String,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub model: String,
    /// Relative share of the traffic; 1 if absent.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

impl RewriteRule {
    pub fn validate(&self) -> Result<(), String> {
        if self.model.is_empty() || self.targets.iter().any(|t| t.model.is_empty()) {
            return Err("model names must not be empty".into());
        }
        if self.targets.iter().map(|t| u64::from(t.weight)).sum::<u64>() == 0 {
            return Err("needs at least one target with a positive weight".into());
        }
        Ok(())
    }

    /// A target drawn in proportion to the weights.
    pub fn choose(&self, rng: &mut Rng) -> &str {
        let total: u64 = self.targets.iter().map(|t| u64::from(t.weight)).sum();
        let mut ticket = rng.below(total as usize) as u64;
        for t in &self.targets {
            if ticket < u64::from(t.weight) {
                return &t.model;
            }
            ticket -= u64::from(t.weight);
        }
        &self.model
    }
}

/// The target for `model` under `rules`, if a rule names it.
pub fn rewrite<'r>(rules: &'r [RewriteRule], model: &str, rng: &mut Rng) -> Option<&'r str> {
    rules.iter().find(|r| r.model == model).map(|r| r.choose(rng))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test;

    #[test]
    fn splits_by_weight() {
        let rules: Vec<RewriteRule> = serde_json::from_str(
            r#"[{"model":"chat","targets":[{"model":"a","weight":90},{"model":"b","weight":10},{"model":"c","weight":0}]}]"#,
        )
        .unwrap();
        let mut rng = Rng::new(1);
        let picks: Vec<&str> = (0..2000).map(|_| rewrite(&rules, "chat", &mut rng).unwrap()).collect();
        let a = picks.iter().filter(|&&m| m == "a").count();
        assert!((1700..1900).contains(&a), "{a}");
        assert!(!picks.contains(&"c"));
        assert_eq!(rewrite(&rules, "other", &mut rng), None);
    }
}
