//! What Envoy replicas in front of one pool tell each other (`peers`, `peer_cluster`).
//!
//! Each replica serves a record at `peer_path`: its id, the metrics rows it scraped itself,
//! and its prefix assignments (`prefix_record::export`). Every replica scrapes only its share
//! of the endpoints, the ones whose rendezvous owner among the replicas it hears from is
//! itself, and takes the other rows from their owners' records, so that each model server
//! is scraped by one replica whatever the replica count. An endpoint whose owner falls
//! silent (or whose rows stop coming) is scraped by whoever misses it, and a replica that
//! hears no peer scrapes everything.

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::store::SharedStore;
use crate::table::EndpointState;

/// This proxy's replica id, shared by all its VMs.
pub const REPLICA_KEY: &str = crate::names::keys::REPLICA;
const MAGIC: &[u8] = b"wasm-epp peer v2\n";
/// More rows than a pool can have are not a record.
const MAX_ROWS: usize = crate::discovery::MAX_HOSTS;

/// The request header that asks a peer for its rows alone: the prefix assignments
/// travel every `peer_interval_ms`, the rows at the scrape pace.
pub const WANT_HEADER: &str = crate::names::headers::PEER_WANT;
pub const WANT_ROWS: &str = "rows";

/// When to ask the peers, and for what.
#[derive(Debug, Default)]
pub struct Rounds {
    next_round_ms: u64,
    next_full_ms: u64,
}

/// One round of calls: each entry a peer of `peers` by index, or `None` for a call to
/// `peer_cluster`; `full` if the prefix assignments come too.
#[derive(Debug, PartialEq)]
pub struct Round {
    pub calls: Vec<Option<usize>>,
    pub full: bool,
}

impl Rounds {
    /// The round due now, if any: every listed peer not still being asked, and the peer
    /// cluster `peer_cluster_calls` times less the calls still out.
    pub fn due(&mut self, config: &Config, now_ms: u64, outstanding: &[Option<usize>]) -> Option<Round> {
        if !config.has_peers() || now_ms < self.next_round_ms {
            return None;
        }
        self.next_round_ms = now_ms + config.peer_round_ms();
        let full = now_ms >= self.next_full_ms;
        if full {
            self.next_full_ms = now_ms + config.peer_interval_ms;
        }
        let mut calls: Vec<Option<usize>> = (0..config.peers.len()).filter(|i| !outstanding.contains(&Some(*i))).map(Some).collect();
        if !config.peer_cluster.is_empty() {
            let out = outstanding.iter().filter(|c| c.is_none()).count();
            calls.extend((out..config.peer_cluster_calls).map(|_| None));
        }
        Some(Round { calls, full })
    }
}

/// A replica's record, as served to its peers.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Record {
    pub replica: u64,
    /// Rows it scraped itself, as fresh as its last scrape.
    pub rows: Vec<EndpointState>,
    /// Its prefix assignments (`prefix_record::export`).
    pub prefixes: Vec<u8>,
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        // Owned plain data into a Vec: cannot fail; an empty record is harmless if it did.
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, String> {
        let body = bytes.strip_prefix(MAGIC).ok_or("not a wasm-epp peer v2 record")?;
        let record: Record = postcard::from_bytes(body).map_err(|e| format!("corrupt peer record: {e}"))?;
        if record.rows.len() > MAX_ROWS {
            return Err(format!("peer record with {} rows", record.rows.len()));
        }
        Ok(record)
    }
}

/// This proxy's replica id: the first VM to ask draws it, the others read it. Two VMs that
/// draw at once settle on the last write, which both read back.
pub fn replica_id(store: &dyn SharedStore, draw: u64) -> u64 {
    let read = |store: &dyn SharedStore| {
        let (bytes, _) = store.get(REPLICA_KEY)?;
        bytes.get(..8)?.try_into().ok().map(u64::from_le_bytes).filter(|&id| id != 0)
    };
    if let Some(id) = read(store) {
        return id;
    }
    store.set(REPLICA_KEY, &draw.max(1).to_le_bytes(), 0);
    read(store).unwrap_or(draw.max(1))
}

/// Who scrapes which endpoint, as this replica sees it.
#[derive(Debug, Clone)]
pub struct Share {
    pub me: u64,
    /// Peers heard from, with when.
    heard: HashMap<u64, u64>,
    /// A peer unheard for this long is gone.
    silence_ms: u64,
}

impl Share {
    pub fn new(me: u64, silence_ms: u64) -> Self {
        Share { me, heard: HashMap::new(), silence_ms }
    }

    pub fn heard(&mut self, peer: u64, now_ms: u64) {
        if peer != self.me {
            self.heard.insert(peer, now_ms);
        }
    }

    /// The replicas alive now, this one included.
    pub fn alive(&self, now_ms: u64) -> usize {
        1 + self.heard.values().filter(|&&t| now_ms.saturating_sub(t) <= self.silence_ms).count()
    }

    /// The replica that scrapes `address`: the rendezvous owner among those alive.
    pub fn owner(&self, address: &str, now_ms: u64) -> u64 {
        let alive = self.heard.iter().filter(|(_, &t)| now_ms.saturating_sub(t) <= self.silence_ms).map(|(&id, _)| id);
        let key = crate::rendezvous::name_hash(address);
        std::iter::once(self.me).chain(alive).max_by_key(|&id| (mix(key ^ id), id)).unwrap_or(self.me)
    }
}

/// A 64-bit finaliser (splitmix64): rendezvous scores that do not favour any id.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::table::Health;
    use crate::test;

    #[test]
    fn records_round_trip_and_foreign_bytes_are_errors() {
        let row = EndpointState { address: "10.0.0.1:8000".into(), health: Health::Healthy, checked_ms: 5, ..Default::default() };
        let r = Record { replica: 7, rows: vec![row], prefixes: b"wasm-epp affinity v1\n".to_vec() };
        assert_eq!(Record::decode(&r.encode()), Ok(r.clone()));
        assert!(Record::decode(b"wasm-epp affinity v1\n").is_err(), "an older replica's answer");
        let good = r.encode();
        for cut in MAGIC.len()..good.len() {
            assert!(Record::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn rounds_ask_for_rows_at_the_scrape_pace_and_for_everything_less_often() {
        let doc = r#"{"endpoints":["10.0.0.1:8000"],"peers":["10.1.0.1:1","10.1.0.2:1"],"peer_cluster":"c","peer_cluster_calls":2,"peer_token":"0123456789abcdef","share_scrapes":true}"#;
        let config = Config::parse(doc.as_bytes()).unwrap();
        let mut rounds = Rounds::default();
        let first = rounds.due(&config, 0, &[]).unwrap();
        assert_eq!(first, Round { calls: vec![Some(0), Some(1), None, None], full: true });
        assert_eq!(rounds.due(&config, 49, &[]), None);
        // Peer 1 and one cluster call still out: not asked again.
        let second = rounds.due(&config, 50, &[Some(1), None]).unwrap();
        assert_eq!(second, Round { calls: vec![Some(0), None], full: false });
        assert!(rounds.due(&config, 100, &[]).unwrap().full, "every peer_interval_ms");
        let alone = Config::parse(br#"{"endpoints":["10.0.0.1:8000"]}"#).unwrap();
        assert_eq!(Rounds::default().due(&alone, 0, &[]), None);
    }

    #[test]
    fn every_vm_of_a_proxy_reads_one_replica_id() {
        let store = MemoryStore::default();
        let a = replica_id(&store, 11);
        assert_eq!((a, replica_id(&store, 22)), (11, 11));
    }

    #[test]
    fn endpoints_are_shared_evenly_and_a_silent_peer_gives_its_share_back() {
        let addresses: Vec<String> = (0..64).map(|i| format!("10.0.{}.{}:8000", i / 256, i % 256)).collect();
        let ids = [101u64, 202, 303, 404];
        let views: Vec<Share> = ids
            .iter()
            .map(|&me| {
                let mut s = Share::new(me, 1000);
                for &p in &ids {
                    s.heard(p, 0);
                }
                s
            })
            .collect();
        // Every replica names the same owner for every endpoint, and each owns some.
        for a in &addresses {
            let owners: Vec<u64> = views.iter().map(|v| v.owner(a, 500)).collect();
            assert!(owners.windows(2).all(|w| w[0] == w[1]), "{a}: {owners:?}");
        }
        for &id in &ids {
            let owned = addresses.iter().filter(|a| views[0].owner(a, 500) == id).count();
            assert!((8..=24).contains(&owned), "replica {id} owns {owned} of 64");
        }
        assert_eq!(views[0].alive(500), 4);
        // Past the silence, replica 101 hears nobody and owns everything.
        assert_eq!(views[0].alive(1500), 1);
        assert!(addresses.iter().all(|a| views[0].owner(a, 1500) == 101));
    }
}
