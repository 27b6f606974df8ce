//! Envoy replicas sharing their prefix assignments (`peers`), on the real dist/epp.wasm in
//! host-sim: two proxies, each asking the other over HTTP as a real replica would.

use epp_tests::hostsim::{addr, first, route, servers, world_with, DEST, MODEL};
use host_sim::{HttpRequest, World};
use model_sim::ServerParams;
use serde_json::{json, Value};

const SUBSET: &str = "x-gateway-destination-endpoint-subset";
const AFFINITY_PATH: &str = "/.wasm-epp/v1/affinity";

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
    json!({"peers": [World::proxy_address(0), World::proxy_address(1), addr(0)]})
}

/// Replicas found through a cluster (host-sim's balances over every proxy, round robin).
fn clustered() -> Value {
    json!({"peer_cluster": host_sim::world::PEER_CLUSTER, "peer_cluster_calls": 2})
}

/// Two replicas over 8 servers, with `plugin`'s peers settings.
fn replicas_with(plugin: Value) -> World {
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
        let mut req = HttpRequest::get(AFFINITY_PATH);
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

    let secret = json!({"peers": [World::proxy_address(0), World::proxy_address(1)], "peer_token": "s3cret"});
    let mut w = world_with(servers(3, ServerParams::default()), secret, 1, 2);
    w.advance_ms(200);
    route(&mut w, 0, 0, &long_chat("owls"));
    for wrong in [None, Some("guess")] {
        assert_eq!(record(&mut w, &get(wrong)), None, "token {wrong:?}: routed as usual, not answered");
    }
    let (status, body) = record(&mut w, &get(Some("s3cret"))).expect("answered");
    assert_eq!(status, 200);
    let magic = b"wasm-epp affinity v1\n";
    assert!(body.starts_with(magic) && body.len() > magic.len(), "{} bytes", body.len());
    assert_eq!((body.len() - magic.len()) % 12, 0);
    // With the token the replicas exchanged: both hold the same record.
    w.advance_ms(500);
    let other = {
        let o = w.request(1, 0, &get(Some("s3cret")));
        w.finish(1, &o, 200);
        o.local_response.expect("answered").body
    };
    assert_eq!(other, body, "the other replica adopted the prefix");
}
