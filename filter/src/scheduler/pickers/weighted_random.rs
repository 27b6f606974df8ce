use crate::rng::Rng;
use crate::scheduler::Picker;

/// At random, with probability proportional to the total score (GIE's weighted-random
/// picker); fallbacks are drawn the same way from the rest. Spreads load where max-score
/// would send a burst to one endpoint. All totals zero: uniform.
pub struct WeightedRandomPicker;

impl WeightedRandomPicker {
    /// The type name configurations use.
    pub const TYPE: &'static str = "weighted-random-picker";
}

impl Picker for WeightedRandomPicker {
    fn name(&self) -> &'static str {
        Self::TYPE
    }
    fn pick(&self, totals: &[f64], want: usize, rng: &mut Rng) -> Vec<usize> {
        let uniform = totals.iter().all(|t| t.is_nan() || *t <= 0.0);
        // Efraimidis–Spirakis: key u^(1/w), largest keys first, is sampling without
        // replacement in proportion to w.
        let mut keyed: Vec<(f64, usize)> = totals
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                let w = if uniform { 1.0 } else { t.max(0.0) };
                let key = if w > 0.0 { rng.unit().max(f64::MIN_POSITIVE).powf(1.0 / w) } else { -1.0 };
                (key, i)
            })
            .collect();
        keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
        keyed.into_iter().take(want).map(|(_, i)| i).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test;

    #[test]
    fn proportional_to_score() {
        let mut rng = Rng::new(5);
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[WeightedRandomPicker.pick(&[3.0, 1.0, 0.0], 1, &mut rng)[0]] += 1;
        }
        assert_eq!(counts[2], 0, "zero score is never picked first");
        assert!((2000..2500).contains(&counts[0]), "{counts:?}");
        let all = WeightedRandomPicker.pick(&[3.0, 1.0, 0.0], 3, &mut rng);
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2], "fallbacks cover the rest once each");
    }
}
