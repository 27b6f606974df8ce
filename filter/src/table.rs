//! The metrics table: what the scraper publishes in shared data and every picker reads.
//!
//! Encoded as one format byte followed by postcard (compact, no field names), so a picker
//! of another build that finds a table it does not understand says so instead of misreading it.

use serde::{Deserialize, Serialize};

/// The shared-data key of the table. The version in the key lets two module versions
/// that share a `vm_id` during a rollout keep their own tables.
pub const TABLE_KEY: &str = crate::names::keys::TABLE;
const FORMAT: u8 = 4;
/// The generation of the table last published (8 bytes, little-endian): a picker reads
/// these 8 bytes per request, and the table itself only when they change.
pub const GENERATION_KEY: &str = crate::names::keys::GENERATION;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// When the scraper wrote it (ms since the epoch). A table older than `stale_after_ms`
    /// means the scraper itself stopped, and the picker fails open.
    pub published_ms: u64,
    /// Bumped at every publish.
    pub generation: u64,
    /// The Envoy replicas in front of this pool that the scraper hears, itself included
    /// (1 without peers).
    pub replicas: u32,
    pub endpoints: Vec<EndpointState>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointState {
    pub address: String,
    /// Where its count is kept in the in-flight value (`in_flight`): stable while the
    /// endpoint stays in the pool, and handed on when the scraper changes hands.
    pub slot: u32,
    pub health: Health,
    /// Envoy's own verdict on the host, when the pool comes from Envoy's membership
    /// (`pool_cluster`): why Envoy would send it nothing (a failed health check, an
    /// ejected outlier, an EDS status). `None`: Envoy sends it traffic.
    pub envoy_unhealthy: Option<String>,
    /// When the last scrape attempt ended, in success or failure (ms since the epoch).
    pub checked_ms: u64,
    /// The last successful metrics scrape; 0 = never.
    pub last_ok_ms: u64,
    pub metrics: Metrics,
    /// Base models this server serves (`/v1/models` entries without a parent, and the
    /// `model_name` label). Empty = not known yet, and then it may serve anything.
    pub models: Vec<String>,
    /// LoRA adapters registered on it (`/v1/models` entries with a parent).
    pub adapters: Vec<String>,
    /// This proxy's requests in flight to it when the metrics were read: what it sent
    /// after that is load the metrics cannot show yet.
    pub in_flight_at_scrape: i64,
    /// The replica whose scraper read these numbers (`peer::replica_id`); 0 where replicas
    /// do not share their scrapes.
    pub scraped_by: u64,
    /// Its `id()`, once worked out (`remember_id`; again after changing `address`). Not
    /// sent: every reader works it out.
    #[serde(skip)]
    pub cached_id: CachedId,
}

/// An endpoint's id kept beside its address: a decision needs it for every candidate, and
/// hashing each address again cost a seventh of a decision over 256 endpoints. It is no
/// part of a row's value: two rows are equal or not by their data, filled in or not.
#[derive(Debug, Clone, Copy, Default)]
pub struct CachedId(u32);

impl PartialEq for CachedId {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum Health {
    /// Not scraped yet.
    #[default]
    Unknown,
    Healthy,
    /// The last scrape was answered with no usable page (an HTTP error, a page that is
    /// not the engine's); the reason is for logs and the explain header. The server
    /// accepts connections: with every endpoint's metrics failing, pickers fail open over
    /// these.
    Unhealthy(String),
    /// The last scrape got no answer at all (refused, reset, timed out).
    Unreachable(String),
}

impl Health {
    /// Why the last scrape failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        match self {
            Health::Unhealthy(why) | Health::Unreachable(why) => Some(why),
            _ => None,
        }
    }
}

/// The load signals of the Model Server Protocol.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub waiting: u32,
    pub running: u32,
    /// KV-cache utilization, 0..=1.
    pub kv_usage: f32,
    /// Tokens per KV block and blocks on the GPU; 0 = not reported.
    pub block_size: u32,
    pub num_blocks: u32,
    /// Adapter slots (vLLM `max_lora`); 0 = LoRA off or not reported.
    pub max_lora: u32,
    /// Adapters with requests in flight, and with requests waiting for a slot.
    pub running_adapters: Vec<String>,
    pub waiting_adapters: Vec<String>,
    /// Adapters resident on the GPU (newer vLLM's `lora_adapter_loaded`).
    pub loaded_adapters: Vec<String>,
}

impl EndpointState {
    /// A row for `address`, its id worked out.
    pub fn new(address: &str) -> EndpointState {
        let mut row = EndpointState { address: address.into(), ..Default::default() };
        row.remember_id();
        row
    }

    /// Its `prefix_record::endpoint_id`: the one remembered, or worked out now.
    pub fn id(&self) -> u32 {
        match self.cached_id.0 {
            0 => crate::prefix_record::endpoint_id(&self.address),
            id => id,
        }
    }

    /// Works out `id` once, for every decision that reads this row.
    pub fn remember_id(&mut self) {
        self.cached_id = CachedId(crate::prefix_record::endpoint_id(&self.address));
    }

    /// Fresh and healthy: the scheduler may use its numbers.
    pub fn is_usable(&self, now_ms: u64, stale_after_ms: u64) -> bool {
        self.health == Health::Healthy
            && self.envoy_unhealthy.is_none()
            && now_ms.saturating_sub(self.last_ok_ms) <= stale_after_ms
    }

    /// Nothing fresh is known: no scrape attempt ended within `stale_after_ms`.
    pub fn is_stale(&self, now_ms: u64, stale_after_ms: u64) -> bool {
        now_ms.saturating_sub(self.checked_ms) > stale_after_ms
    }

    pub fn serves_base(&self, model: &str) -> bool {
        self.models.iter().any(|x| same_name(x, model))
    }

    /// Does it serve `model`, as a base model or an adapter it has or reports?
    pub fn serves(&self, model: &str) -> bool {
        let m = &self.metrics;
        let listed = |list: &[String]| list.iter().any(|x| same_name(x, model));
        self.serves_base(model)
            || listed(&self.adapters)
            || listed(&m.running_adapters)
            || listed(&m.waiting_adapters)
            || listed(&m.loaded_adapters)
    }

    /// Nothing is known of its models yet.
    pub fn models_unknown(&self) -> bool {
        self.models.is_empty()
    }
}

/// String equality eight bytes at a time. Model names are compared for every endpoint of
/// every request, and wasm32's `memcmp` goes byte by byte (~10 instructions a byte).
pub fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut chunks_a = a.chunks_exact(8);
    let mut chunks_b = b.chunks_exact(8);
    for (x, y) in (&mut chunks_a).zip(&mut chunks_b) {
        let word = |c: &[u8]| u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        if word(x) != word(y) {
            return false;
        }
    }
    chunks_a.remainder() == chunks_b.remainder()
}

impl Table {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT];
        // Serializing owned, plain data into a Vec cannot fail; an empty table is the
        // harmless answer if it ever did.
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Table, String> {
        match bytes.split_first() {
            Some((&FORMAT, rest)) => {
                let mut table: Table = postcard::from_bytes(rest).map_err(|e| format!("corrupt metrics table: {e}"))?;
                // Bytes from shared data are outside this VM: a KV-cache share is a number
                // within [0, 1] (fuzzing found a NaN get through).
                for e in &mut table.endpoints {
                    let kv = e.metrics.kv_usage;
                    e.metrics.kv_usage = if kv.is_finite() { kv.clamp(0.0, 1.0) } else { 0.0 };
                    e.remember_id();
                }
                Ok(table)
            }
            Some((other, _)) => Err(format!("metrics table format {other}, this module reads {FORMAT}")),
            None => Err("empty metrics table".into()),
        }
    }

    pub fn is_stale(&self, now_ms: u64, stale_after_ms: u64) -> bool {
        now_ms.saturating_sub(self.published_ms) > stale_after_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test;

    fn sample() -> Table {
        Table {
            published_ms: 1_700_000_000_000,
            generation: 9,
            replicas: 2,
            endpoints: vec![EndpointState {
                address: "10.0.0.1:8000".into(),
                slot: 0,
                health: Health::Unhealthy("timeout".into()),
                envoy_unhealthy: None,
                checked_ms: 1_700_000_000_000,
                last_ok_ms: 1_699_999_999_000,
                metrics: Metrics {
                    waiting: 3,
                    kv_usage: 0.5,
                    running_adapters: vec!["sql-lora".into()],
                    ..Default::default()
                },
                models: vec!["llama".into()],
                adapters: vec![],
                in_flight_at_scrape: 2,
                scraped_by: 0,
                cached_id: CachedId::default(),
            }],
        }
    }

    #[test]
    fn round_trips_compactly() {
        let t = sample();
        let bytes = t.encode();
        assert_eq!(Table::decode(&bytes).unwrap(), t);
        assert!(bytes.len() < 80, "{} bytes", bytes.len());
    }

    #[test]
    fn a_read_row_knows_its_id_and_is_equal_to_one_that_does_not() {
        let t = sample();
        let row = &t.endpoints[0];
        let back = Table::decode(&t.encode()).unwrap();
        let id = crate::prefix_record::endpoint_id("10.0.0.1:8000");
        assert_eq!(back.endpoints[0].cached_id.0, id, "remembered when read");
        assert_eq!(row.cached_id.0, 0);
        assert_eq!((row.id(), back.endpoints[0].id()), (id, id), "worked out when not remembered");
        assert_eq!(&back.endpoints[0], row, "the id is no part of the row's value");
        assert_eq!(t.encode(), back.encode(), "nor of what is sent");
        assert_eq!(EndpointState::new("10.0.0.1:8000").cached_id.0, id);
    }

    #[test]
    fn foreign_or_corrupt_bytes_are_errors() {
        let mut bytes = sample().encode();
        bytes[0] = 9;
        assert!(Table::decode(&bytes).unwrap_err().contains("format 9"));
        assert!(Table::decode(&[]).is_err());
        let good = sample().encode();
        for cut in 1..good.len() {
            assert!(Table::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_foreign_tables_kv_share_is_kept_within_bounds() {
        // Found by the `decoders` fuzz target: a NaN KV-cache share in a decoded table.
        let mut t = sample();
        t.endpoints[0].metrics.kv_usage = f32::NAN;
        let mut hot = t.endpoints[0].clone();
        hot.metrics.kv_usage = 7.5;
        t.endpoints.push(hot);
        let back = Table::decode(&t.encode()).unwrap();
        assert_eq!(back.endpoints[0].metrics.kv_usage, 0.0);
        assert_eq!(back.endpoints[1].metrics.kv_usage, 1.0);
    }

    #[test]
    fn same_name_is_string_equality() {
        let names = ["", "a", "sql-lora", "sql-lorb", "meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instructx"];
        for a in names {
            for b in names {
                assert_eq!(same_name(a, b), a == b, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn usable_means_healthy_and_fresh() {
        let mut e = sample().endpoints.remove(0);
        assert!(!e.is_usable(e.last_ok_ms, 2000));
        e.health = Health::Healthy;
        assert!(e.is_usable(e.last_ok_ms + 2000, 2000));
        assert!(!e.is_usable(e.last_ok_ms + 2001, 2000));
        assert!(e.serves("llama") && e.serves("sql-lora") && !e.serves("other"));
        e.envoy_unhealthy = Some("Envoy: ejected by outlier detection".into());
        assert!(!e.is_usable(e.last_ok_ms, 2000), "Envoy's verdict counts too");
    }
}
