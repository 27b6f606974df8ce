//! Pickers: one per file; each ranks the scored candidates into choice and fallbacks.

mod max_score;
mod random;
mod weighted_random;

pub use max_score::MaxScorePicker;
pub use random::RandomPicker;
pub use weighted_random::WeightedRandomPicker;

use crate::rng::Rng;

/// The indices `0..n` in random order (Fisher–Yates).
fn shuffled(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
}
