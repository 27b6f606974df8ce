use crate::rng::Rng;
use crate::scheduler::Picker;

/// Uniformly at random, scores ignored: the baseline every scorer should beat.
pub struct RandomPicker;

impl Picker for RandomPicker {
    fn name(&self) -> &'static str {
        "random-picker"
    }
    fn pick(&self, totals: &[f64], want: usize, rng: &mut Rng) -> Vec<usize> {
        let mut order = super::shuffled(totals.len(), rng);
        order.truncate(want);
        order
    }
}
