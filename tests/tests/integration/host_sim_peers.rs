//! Envoy replicas sharing their prefix assignments (`peers`), on the real dist/epp.wasm in
//! host-sim: two proxies, each asking the other over HTTP as a real replica would.

use epp_tests::hostsim::{addr, first, route, servers, world_with, DEST, MODEL};
use host_sim::{HttpRequest, World};
use model_sim::ServerParams;
use serde_json::{json, Value};

const SUBSET: &str = "x-gateway-destination-endpoint-subset";
const PEER_PATH: &str = "/.wasm-epp/v2/peer";

/// A request whose prompt is long enough to have a placement anchor.
fn long_chat(topic: &str) -> HttpRequest {
    let context = format!("You answer questions about {topic}. ").repeat(200);
    HttpRequest::post_json(
        "/v1/chat/completions",
        &json!({"model": MODEL, "messages": [{"role": "system", "content": context}, {"role": "user", "content": "Why?"}]}),
    )
}

fn only(req: &HttpRequest, server: usize) -> HttpRequest {
    let mut req = req.clone();
    req.headers.push((SUBSET.into(), addr(server)));
    req
}

/// Both replicas listed (and a model server, which answers the affinity path with a 404:
/// a misconfigured peer is ignored).
fn listed() -> Value {
    json!({"peers": [World::proxy_address(0), World::proxy_address(1), addr(0)], "peer_token": "test-peer-token-0123456789"})
}

/// Replicas found through a cluster (host-sim's balances over every proxy, round robin).
fn clustered() -> Value {
    json!({"peer_cluster": host_sim::world::PEER_CLUSTER, "peer_cluster_calls": 2, "peer_token": "test-peer-token-0123456789"})
}

/// Two replicas over 8 servers, with `plugin`'s peers settings.
fn replicas_with(mut plugin: Value) -> World {
    // The tests place prompts with the subset hint, as a filter before the picker would.
    plugin["trust_subset_header"] = json!(true);
    let mut w = world_with(servers(8, ServerParams::default()), plugin, 1, 2);
    w.advance_ms(200);
    w
}

fn replicas(peers: bool) -> World {
    replicas_with(if peers { listed() } else { json!({}) })
}

fn server_of(dest: &str) -> usize {
    (0..8).find(|&i| addr(i) == dest).expect("a pool address")
}

#[test]
fn a_replica_follows_the_endpoint_its_peer_gave_a_prefix() {
    let req = long_chat("tides");
    // Without peers, replica 1 sends the prefix to its home.
    let mut alone = replicas(false);
    let home = server_of(&first(&route(&mut alone, 1, 0, &req)));
    let elsewhere = (home + 3) % 8;
    let mut alone = replicas(false);
    route(&mut alone, 0, 0, &only(&req, elsewhere));
    alone.advance_ms(500);
    assert_eq!(first(&route(&mut alone, 1, 0, &req)), addr(home), "replicas without peers keep apart");

    // With peers, listed or found through a cluster, replica 0's first choice (forced by
    // the subset hint) reaches replica 1.
    for peers in [listed(), clustered()] {
        let mut w = replicas_with(peers.clone());
        assert_eq!(first(&route(&mut w, 0, 0, &only(&req, elsewhere))), addr(elsewhere));
        w.advance_ms(500);
        for _ in 0..3 {
            assert_eq!(first(&route(&mut w, 1, 0, &req)), addr(elsewhere), "replica 1 follows replica 0 ({peers})");
            assert_eq!(first(&route(&mut w, 0, 0, &req)), addr(elsewhere));
        }
        assert!(w.traps().is_empty(), "{:?}", w.traps());
    }
}

#[test]
fn replicas_that_chose_apart_settle_on_one_endpoint() {
    let mut w = replicas(true);
    let req = long_chat("volcanoes");
    // Both see the prefix first within one exchange interval, and choose apart.
    assert_eq!(first(&route(&mut w, 0, 0, &only(&req, 2))), addr(2));
    assert_eq!(first(&route(&mut w, 1, 0, &only(&req, 5))), addr(5));
    w.advance_ms(500);
    let a = first(&route(&mut w, 0, 0, &req));
    let b = first(&route(&mut w, 1, 0, &req));
    assert_eq!(a, b, "one endpoint for both replicas");
    assert!(a == addr(2) || a == addr(5), "{a}: one of the two they chose");
    assert!(w.traps().is_empty(), "{:?}", w.traps());
}

#[test]
fn the_record_is_served_only_to_peers() {
    let get = |token: Option<&str>| {
        let mut req = HttpRequest::get(PEER_PATH);
        req.headers.extend(token.map(|t| ("x-wasm-epp-peer-token".to_string(), t.to_string())));
        req
    };
    let record = |w: &mut World, req: &HttpRequest| {
        let o = route(w, 0, 0, req);
        o.local_response.map(|r| (r.status, r.body))
    };
    // No peers configured: the path is an ordinary request, routed upstream.
    let mut w = replicas(false);
    let o = route(&mut w, 0, 0, &get(None));
    assert!(o.local_response.is_none() && o.upstream_header(DEST).is_some(), "{o:?}");

    let secret = json!({"peers": [World::proxy_address(0), World::proxy_address(1)], "share_scrapes": true, "peer_token": "s3cret-s3cret-s3cret"});
    let mut w = world_with(servers(3, ServerParams::default()), secret, 1, 2);
    w.advance_ms(200);
    route(&mut w, 0, 0, &long_chat("owls"));
    for wrong in [None, Some("guess")] {
        assert_eq!(record(&mut w, &get(wrong)), None, "token {wrong:?}: routed as usual, not answered");
        let o = route(&mut w, 0, 0, &get(wrong));
        assert_eq!(o.upstream_header("x-wasm-epp-peer-token"), None, "a wrong token is not forwarded");
    }
    let (status, body) = record(&mut w, &get(Some("s3cret-s3cret-s3cret"))).expect("answered");
    assert_eq!(status, 200);
    let body = epp::peer::Record::decode(&body).expect("a peer record");
    let magic = b"wasm-epp affinity v1\n";
    let prefixes = &body.prefixes;
    assert!(prefixes.starts_with(magic) && prefixes.len() > magic.len(), "{} bytes", prefixes.len());
    assert_eq!((prefixes.len() - magic.len()) % 12, 0);
    assert!(!body.rows.is_empty() && body.rows.iter().all(|r| r.scraped_by == body.replica), "its own share of the scrapes");
    // With the token the replicas exchanged: both hold the same record.
    w.advance_ms(500);
    let other = {
        let o = w.request(1, 0, &get(Some("s3cret-s3cret-s3cret")));
        w.finish(1, &o, 200);
        epp::peer::Record::decode(&o.local_response.expect("answered").body).expect("a peer record")
    };
    assert_eq!(other.prefixes, body.prefixes, "the other replica adopted the prefix");
    assert_ne!(other.replica, body.replica);
}

/// The plugin configuration of `replicas` replicas that list each other as peers.
fn peers_config(replicas: usize, share: bool) -> Value {
    let peers: Vec<String> = (0..replicas).map(World::proxy_address).collect();
    json!({"peers": peers, "share_scrapes": share, "models_path": "", "peer_token": "test-peer-token-0123456789"})
}

/// `/metrics` requests the fleet has answered so far.
fn scrapes(w: &World) -> u64 {
    w.fleet.scrapes.values().sum()
}

/// `/metrics` requests per server per second over the next `seconds` of virtual time.
fn scrape_rate(w: &mut World, seconds: u64) -> f64 {
    let before = scrapes(w);
    w.advance_ms(seconds * 1000);
    (scrapes(w) - before) as f64 / w.fleet.addresses().len().max(1) as f64 / seconds as f64
}

/// The table proxy `p` holds.
fn table_of(w: &World, p: usize) -> epp::table::Table {
    let state = w.proxies[p].state.borrow();
    let bytes = state.shared_data.get(epp::table::TABLE_KEY).map(|(b, _)| b.clone()).unwrap_or_default();
    epp::table::Table::decode(&bytes).expect("a table")
}

/// Scrape load and data age for `replicas` gateway replicas × 4 workers (no singleton) over
/// 64 servers, with or without shared scrapes: (`/metrics` per server per second, p50 and
/// p99 age in ms of the row behind each decision, decisions).
fn scrape_load(replicas: usize, share: bool) -> (f64, u64, u64, usize) {
    let mut w = epp_tests::hostsim::picker_only_world(servers(64, ServerParams::default()), peers_config(replicas, share), 4, replicas);
    w.advance_ms(1000);
    let before = scrapes(&w);
    let mut ages = Vec::new();
    let seconds = 2;
    for i in 0..seconds * 500 {
        let proxy = i % replicas;
        let o = route(&mut w, proxy, i / replicas, &epp_tests::hostsim::chat(MODEL));
        let chosen = first(&o);
        let table = table_of(&w, proxy);
        let row = table.endpoints.iter().find(|e| e.address == chosen).expect("the chosen endpoint's row");
        ages.push(w.now_us() / 1000 - row.checked_ms);
        w.advance_ms(2);
    }
    let per_server = (scrapes(&w) - before) as f64 / 64.0 / seconds as f64;
    ages.sort_unstable();
    let pct = |p: f64| ages[((ages.len() - 1) as f64 * p) as usize];
    assert_eq!(w.proxies.iter().map(|p| p.metric("wasm_epp.fail_open")).sum::<i64>(), 0);
    (per_server, pct(0.5), pct(0.99), ages.len())
}

#[test]
fn scrape_load_does_not_grow_with_the_replica_count() {
    for replicas in [1, 4, 16] {
        let (per_server, p50, p99, n) = scrape_load(replicas, true);
        eprintln!("{replicas:>2} replicas x 4 workers, 64 servers, shared: {per_server:.1} /metrics per server per second, data age p50 {p50} ms p99 {p99} ms ({n} decisions)");
        assert!(per_server <= 25.0, "{replicas} replicas: {per_server} scrapes per server per second");
        assert!(p99 < 150, "{replicas} replicas: data age p99 {p99} ms");
    }
    // The same 4 replicas without sharing: every one scrapes every server.
    let (alone, _, p99, _) = scrape_load(4, false);
    eprintln!(" 4 replicas x 4 workers, 64 servers, not shared: {alone:.1} /metrics per server per second, data age p99 {p99} ms");
    assert!(alone >= 70.0, "{alone}");
}

#[test]
fn a_replica_whose_peer_is_gone_scrapes_everything_again() {
    let mut w = epp_tests::hostsim::picker_only_world(servers(16, ServerParams::default()), peers_config(2, true), 2, 2);
    w.advance_ms(1000);
    let shared = scrape_rate(&mut w, 1);
    assert!((18.0..=22.0).contains(&shared), "two replicas share: {shared} per server per second");
    // Replica 1 dies whole. Its rows age out within a few intervals; replica 0 scrapes them.
    for vm in &mut w.proxies[1].vms {
        vm.failed = Some("killed by the test".into());
    }
    let died = w.now_us();
    let mut all_fresh = None;
    for _ in 0..100 {
        w.advance_ms(10);
        let o = route(&mut w, 0, 0, &epp_tests::hostsim::chat(MODEL));
        assert!(o.upstream_header(DEST).is_some());
        let table = table_of(&w, 0);
        let now_ms = w.now_us() / 1000;
        if all_fresh.is_none() && table.endpoints.iter().all(|e| now_ms - e.checked_ms <= 100 && e.scraped_by == table.endpoints[0].scraped_by) {
            all_fresh = Some((w.now_us() - died) / 1000);
        }
    }
    let took = all_fresh.expect("replica 0 scrapes every server itself");
    assert!(took <= 400, "{took} ms after the peer died");
    let alone = scrape_rate(&mut w, 1);
    assert!((18.0..=22.0).contains(&alone), "one replica scrapes everything: {alone}");
    assert_eq!(w.proxies[0].metric("wasm_epp.fail_open"), 0);
}

#[test]
fn replicas_whose_scrapers_tick_together_still_share() {
    // Singleton scrapers in one virtual clock run their rounds in step: a peer's row comes
    // while this replica's own probe of the endpoint is out, and the probe answers after
    // it. The owner's rows decide who scrapes, not whose row the table holds last.
    let proxy = host_sim::proxy::ProxyConfig { workers: 2, singleton: true, ..Default::default() };
    let mut w = epp_tests::hostsim::world_from(&epp_tests::paths::epp_wasm(), servers(16, ServerParams::default()), peers_config(2, true), proxy, 2);
    w.advance_ms(1000);
    let per_server = scrape_rate(&mut w, 1);
    assert!((18.0..=22.0).contains(&per_server), "two replicas share: {per_server} per server per second");
    for p in 0..2 {
        let table = table_of(&w, p);
        let scrapers: std::collections::HashSet<u64> = table.endpoints.iter().map(|e| e.scraped_by).collect();
        assert_eq!((table.endpoints.len(), scrapers.len()), (16, 2), "proxy {p}: every row, from both replicas");
    }
}
