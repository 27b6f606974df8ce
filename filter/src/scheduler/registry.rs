//! Plugins by name, and the profiles that ship.

use super::filters::LoraAffinityFilter;
use super::pickers::MaxScorePicker;
use super::scorers::{KvCacheScorer, LoraAffinityScorer, QueueScorer, RunningRequestsScorer};
use super::{Profile, WeightedScorer};

/// The profile used when the configuration names none: adapters only where they can run
/// now, then load (queue, KV cache, running requests) and LoRA affinity, highest total wins.
pub fn default_profile() -> Profile {
    Profile {
        filters: vec![Box::new(LoraAffinityFilter)],
        scorers: vec![
            WeightedScorer { weight: 2.0, scorer: Box::new(QueueScorer) },
            WeightedScorer { weight: 2.0, scorer: Box::new(KvCacheScorer) },
            WeightedScorer { weight: 1.0, scorer: Box::new(RunningRequestsScorer) },
            WeightedScorer { weight: 1.0, scorer: Box::new(LoraAffinityScorer) },
        ],
        picker: Box::new(MaxScorePicker),
    }
}
