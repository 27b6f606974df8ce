//! What replicas and VMs read from each other: the metrics table, a peer's record, the
//! prefix record, Envoy's admin answer. Any bytes: an error or a value, never a panic; a
//! table that decodes encodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = epp::table::Table::decode(data) {
        assert!(t.endpoints.iter().all(|e| (0.0..=1.0).contains(&e.metrics.kv_usage)), "a KV-cache share outside [0, 1]");
        let again = epp::table::Table::decode(&t.encode()).expect("a table it wrote");
        assert_eq!(again.encode(), t.encode());
    }
    if let Ok(r) = epp::peer::Record::decode(data) {
        let again = epp::peer::Record::decode(&r.encode()).expect("a record it wrote");
        assert_eq!(again.encode(), r.encode());
    }
    let store = epp::store::MemoryStore::default();
    let _ = epp::prefix_record::adopt(&store, data);
    let mut record = epp::prefix_record::EXPORT_MAGIC.to_vec();
    record.extend_from_slice(data);
    if epp::prefix_record::adopt(&store, &record).is_ok() {
        let _ = epp::prefix_record::export(&store);
    }
    let _ = epp::discovery::parse(data, "llm_pool");
    let _ = epp::models::parse(data);
});
