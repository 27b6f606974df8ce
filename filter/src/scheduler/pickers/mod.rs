//! Pickers: one per file; each ranks the scored candidates into choice and fallbacks.

mod max_score;
mod random;
mod weighted_random;

pub use max_score::MaxScorePicker;
pub use random::RandomPicker;
pub use weighted_random::WeightedRandomPicker;
