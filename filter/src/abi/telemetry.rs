//! The module's figures as Envoy stats (`crate::stats` names them): metric ids defined
//! once per VM and label set, and bounded, since labels can come from clients. Counts
//! add up in the VM and reach Envoy on the VM's tick (`flush`), so a request makes no
//! host call for them.

use hashbrown::HashMap;
use proxy_wasm::types::MetricType;

use super::host;
use crate::stats;

pub struct Telemetry {
    pool: String,
    /// Metric ids by a hash of the metric and its label values: a request builds no name
    /// unless its label set is new.
    ids: HashMap<u64, Option<u32>>,
    /// Counts not yet given to Envoy, by metric id.
    counted: HashMap<u32, u64>,
}

impl Telemetry {
    pub fn new(pool: String) -> Self {
        Telemetry { pool, ids: HashMap::new(), counted: HashMap::new() }
    }

    /// Gives Envoy the counts since the last flush.
    pub fn flush(&mut self) {
        for (id, n) in self.counted.drain() {
            host::add(id, n);
        }
    }

    fn id(&mut self, kind: MetricType, metric: &str, labels: &[(&str, &str)]) -> Option<u32> {
        use core::hash::{BuildHasher, Hash, Hasher};
        let mut h = foldhash::quality::FixedState::with_seed(0x57a7).build_hasher();
        metric.hash(&mut h);
        for (label, value) in labels {
            label.hash(&mut h);
            value.hash(&mut h);
        }
        let key = h.finish();
        if let Some(id) = self.ids.get(&key) {
            return *id;
        }
        if self.ids.len() >= stats::MAX_LABEL_SETS * stats::SERIES.len() {
            return None;
        }
        let mut all = vec![("name", self.pool.as_str())];
        all.extend_from_slice(labels);
        let id = host::metric(kind, &stats::name(metric, &all));
        self.ids.insert(key, id);
        id
    }

    pub fn count(&mut self, metric: &str, labels: &[(&str, &str)]) {
        if let Some(id) = self.id(MetricType::Counter, metric, labels) {
            *self.counted.entry(id).or_insert(0) += 1;
        }
    }

    pub fn set(&mut self, metric: &str, labels: &[(&str, &str)], value: u64) {
        if let Some(id) = self.id(MetricType::Gauge, metric, labels) {
            host::record(id, value);
        }
    }

    pub fn record(&mut self, metric: &str, labels: &[(&str, &str)], value: u64) {
        if let Some(id) = self.id(MetricType::Histogram, metric, labels) {
            host::record(id, value);
        }
    }
}
