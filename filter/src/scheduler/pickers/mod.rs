//! Pickers: one per file; each ranks the scored candidates into choice and fallbacks.

mod max_score;

pub use max_score::MaxScorePicker;
