use crate::rng::Rng;
use crate::scheduler::Picker;

/// Uniformly at random, scores ignored: the baseline every scorer should beat.
pub struct RandomPicker;

impl RandomPicker {
    /// The type name configurations use.
    pub const TYPE: &'static str = "random-picker";
}

impl Picker for RandomPicker {
    fn name(&self) -> &'static str {
        Self::TYPE
    }
    fn pick(&self, totals: &[f64], want: usize, rng: &mut Rng) -> Vec<usize> {
        let mut order = super::shuffled(totals.len(), rng);
        order.truncate(want);
        order
    }
}
