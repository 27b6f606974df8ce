use crate::rng::Rng;
use crate::scheduler::Picker;

/// The highest total first, random among equal totals; the rest, best first, are the
/// fallbacks.
pub struct MaxScorePicker;

impl MaxScorePicker {
    /// The type name configurations use.
    pub const TYPE: &'static str = "max-score-picker";
}

impl Picker for MaxScorePicker {
    fn name(&self) -> &'static str {
        Self::TYPE
    }
    fn pick(&self, totals: &[f64], want: usize, rng: &mut Rng) -> Vec<usize> {
        // Shuffled first, so the stable sort leaves equal totals in random order.
        let mut order = super::shuffled(totals.len(), rng);
        order.sort_by(|&a, &b| totals[b].total_cmp(&totals[a]));
        order.truncate(want);
        order
    }
}
