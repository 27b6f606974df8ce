//! The module's figures as Envoy stats (`crate::stats` names them): metric ids defined
//! once per VM and label set, and bounded, since labels can come from clients. Counts
//! add up in the VM and reach Envoy on the VM's tick (`flush`), so a request makes no
//! host call for them.

use hashbrown::HashMap;
use proxy_wasm::types::MetricType;

use super::host;
use crate::stats;
use crate::table::same_name;

pub struct Telemetry {
    pool: String,
    /// Metric ids by a hash of the metric and its label values: a request builds no name
    /// unless its label set is new.
    ids: HashMap<u64, Option<u32>>,
    /// Counts not yet given to Envoy, by metric id.
    counted: HashMap<u32, u64>,
    /// The last few label sets looked up, with their ids: a request counts the same few
    /// series as the one before it, and comparing its labels costs a fraction of hashing
    /// them (on wasm32, a fifth of a decision's bookkeeping went there).
    recent: [Option<Recent>; RECENT],
    next_recent: usize,
}

const RECENT: usize = 8;

struct Recent {
    /// The metric's name: a `'static` string, so the same address and length are the same
    /// name (a name that lives elsewhere misses here and is hashed, as any new one).
    metric: &'static str,
    labels: Vec<(String, String)>,
    id: Option<u32>,
}

impl Recent {
    fn is(&self, metric: &'static str, labels: &[(&str, &str)]) -> bool {
        core::ptr::eq(self.metric, metric)
            && self.labels.len() == labels.len()
            && self.labels.iter().zip(labels).all(|((n, v), (name, value))| same_name(n, name) && same_name(v, value))
    }
}

impl Telemetry {
    pub fn new(pool: String) -> Self {
        Telemetry { pool, ids: HashMap::new(), counted: HashMap::new(), recent: Default::default(), next_recent: 0 }
    }

    /// Gives Envoy the counts since the last flush.
    pub fn flush(&mut self) {
        for (id, n) in self.counted.drain() {
            host::add(id, n);
        }
    }

    fn id(&mut self, kind: MetricType, metric: &'static str, labels: &[(&str, &str)]) -> Option<u32> {
        if let Some(r) = self.recent.iter().flatten().find(|r| r.is(metric, labels)) {
            return r.id;
        }
        let id = self.id_by_hash(kind, metric, labels);
        let labels = labels.iter().map(|&(n, v)| (n.to_string(), v.to_string())).collect();
        self.recent[self.next_recent] = Some(Recent { metric, labels, id });
        self.next_recent = (self.next_recent + 1) % RECENT;
        id
    }

    fn id_by_hash(&mut self, kind: MetricType, metric: &str, labels: &[(&str, &str)]) -> Option<u32> {
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

    pub fn count(&mut self, metric: &'static str, labels: &[(&str, &str)]) {
        if let Some(id) = self.id(MetricType::Counter, metric, labels) {
            *self.counted.entry(id).or_insert(0) += 1;
        }
    }

    pub fn set(&mut self, metric: &'static str, labels: &[(&str, &str)], value: u64) {
        if let Some(id) = self.id(MetricType::Gauge, metric, labels) {
            host::record(id, value);
        }
    }

    pub fn record(&mut self, metric: &'static str, labels: &[(&str, &str)], value: u64) {
        if let Some(id) = self.id(MetricType::Histogram, metric, labels) {
            host::record(id, value);
        }
    }
}
