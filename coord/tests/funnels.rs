//! Funnels against the real coord binary, driven through meshd's control client: opening with
//! and without a grant, TTL limits, name conflicts, ownership, the routes an edge's map stream
//! receives (open, close, expiry), the owner's ingress rule, and survival across a restart.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::{next_msg, Coord};
use keys::PrivateKey;
use meshd::control::{ControlClient, ControlError, MapStream};
use proto::api::FunnelRequest;
use proto::map::{apply, FilterRule, FunnelRoute, MapMessage, Netmap, FUNNEL_INGRESS_PORT};
use proto::policy::{PortRange, Protocol};

const SOON: Duration = Duration::from_secs(5);

/// Nobody reaches anybody by ACL: every peering below comes from a funnel.
const POLICY: &str = r#"{
  "acls": [],
  "funnel": [{"nodes": ["laptop", "desk"], "ports": ["3000-3001"], "max_ttl": "1h"}],
  "edges": [{"tag": "tag:edge"}]
}"#;

fn set_policy(coord: &Coord, text: &str) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    let (ok, _, err) = coord.cli(&["policy", "set", file.path().to_str().unwrap()]);
    assert!(ok, "policy set failed: {err}");
}

fn api_error(e: &ControlError) -> (u16, String, String) {
    match e {
        ControlError::Api {
            status,
            code,
            message,
        } => (*status, code.clone(), message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn req(name: Option<&str>, port: u16, ttl_secs: Option<u64>) -> FunnelRequest {
    FunnelRequest {
        name: name.map(str::to_owned),
        port,
        ttl_secs,
    }
}

/// A registered node and its client.
async fn node(coord: &Coord, name: &str, tags: &[&str]) -> (ControlClient, proto::Node) {
    let mut args = vec![];
    for t in tags {
        args.extend(["--tag", t]);
    }
    let client = coord.client(PrivateKey::generate());
    let reg = client
        .register(Some(&coord.authkey(&args)), name)
        .await
        .unwrap();
    assert_eq!(reg.node.name, name);
    (client, reg.node)
}

/// A map stream and the netmap built from its lines.
struct Follow {
    stream: MapStream,
    map: Netmap,
}

impl Follow {
    async fn open(client: &ControlClient) -> Self {
        let mut stream = client.map_stream().await.unwrap();
        let MapMessage::Full { netmap, .. } = next_msg(&mut stream, SOON).await else {
            panic!("no full map first");
        };
        Self {
            stream,
            map: netmap,
        }
    }

    /// Applies deltas until `done` holds; fails after `within`.
    async fn until(&mut self, within: Duration, what: &str, done: impl Fn(&Netmap) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        while !done(&self.map) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                !left.is_zero(),
                "{what}: not seen in time; map: {:?}",
                self.map
            );
            let msg = tokio::time::timeout(left, next_msg(&mut self.stream, within))
                .await
                .unwrap_or_else(|_| panic!("{what}: not seen in time; map: {:?}", self.map));
            match msg {
                MapMessage::Delta { delta, .. } => apply(&mut self.map, &delta).unwrap(),
                other => panic!("{what}: unexpected {other:?}"),
            }
        }
    }
}

fn ingress_rule() -> FilterRule {
    FilterRule {
        src: vec!["tag:edge".into()],
        proto: Protocol::Tcp,
        ports: vec![PortRange {
            lo: FUNNEL_INGRESS_PORT,
            hi: FUNNEL_INGRESS_PORT,
        }],
    }
}

fn names(routes: &[FunnelRoute]) -> Vec<&str> {
    routes.iter().map(|r| r.name.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_checks_grant_ttl_and_name_and_answers_with_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start_at(
        dir.path(),
        "127.0.0.1:0",
        &["--funnel-domain", "funnel.test", "--funnel-port", "8443"],
    );
    set_policy(&coord, POLICY);
    let (laptop, laptop_node) = node(&coord, "laptop", &[]).await;
    let (desk, _) = node(&coord, "desk", &[]).await;
    let (other, _) = node(&coord, "other", &[]).await;

    // With a grant: the name defaults to the node's; the TTL to min(24h, the grant's 1h).
    let before = coord::service::unix_now();
    let opened = laptop.funnel_open(&req(None, 3000, None)).await.unwrap();
    assert_eq!(opened.url, "https://laptop.funnel.test:8443/");
    assert_eq!(opened.route.name, "laptop");
    assert_eq!(opened.route.node, laptop_node.id);
    assert_eq!(opened.route.port, 3000);
    let ttl = opened.route.expires - before;
    assert!((3599..=3601).contains(&ttl), "ttl {ttl}");

    // Without a grant: 403, and the message says which grant is missing.
    let (status, code, message) =
        api_error(&other.funnel_open(&req(None, 3000, None)).await.unwrap_err());
    assert_eq!((status, code.as_str()), (403, "funnel_not_granted"));
    assert!(
        message.contains("no funnel grant for node \"other\"") && message.contains("3000"),
        "{message}"
    );
    let (status, code, message) = api_error(
        &laptop
            .funnel_open(&req(None, 8080, None))
            .await
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (403, "funnel_not_granted"));
    assert!(message.contains("port 8080"), "{message}");

    // A TTL above the grant's maximum: 400 naming the maximum.
    let (status, code, message) = api_error(
        &laptop
            .funnel_open(&req(None, 3000, Some(2 * 3600)))
            .await
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (400, "funnel_ttl_too_long"));
    assert!(message.contains("maximum of 1h"), "{message}");
    let (status, code, _) = api_error(
        &laptop
            .funnel_open(&req(None, 3000, Some(0)))
            .await
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (400, "funnel_ttl_too_short"));

    // Names: a DNS label, and one another node holds is a conflict.
    let (status, code, _) = api_error(
        &laptop
            .funnel_open(&req(Some("Not_A_Label"), 3000, None))
            .await
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (400, "invalid_funnel_name"));
    let (status, code, message) = api_error(
        &desk
            .funnel_open(&req(Some("laptop"), 3000, None))
            .await
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (409, "funnel_name_taken"));
    assert!(message.contains("\"laptop\""), "{message}");

    // Renewal by the owner replaces port and expiry.
    let renewed = laptop
        .funnel_open(&req(Some("laptop"), 3001, Some(60)))
        .await
        .unwrap();
    assert_eq!(renewed.route.port, 3001);
    assert!(renewed.route.expires < opened.route.expires);
    let demo = laptop
        .funnel_open(&req(Some("demo"), 3000, Some(600)))
        .await
        .unwrap();
    assert_eq!(demo.url, "https://demo.funnel.test:8443/");

    // Listing shows the caller's own funnels only.
    let mine = laptop.funnels().await.unwrap();
    assert_eq!(mine, vec![demo.clone(), renewed.clone()]);
    assert!(desk.funnels().await.unwrap().is_empty());

    // Closing: only the owner; unknown names are 404.
    let (status, code, _) = api_error(&desk.funnel_close("demo").await.unwrap_err());
    assert_eq!((status, code.as_str()), (403, "funnel_not_owned"));
    let (status, code, _) = api_error(&laptop.funnel_close("nope").await.unwrap_err());
    assert_eq!((status, code.as_str()), (404, "funnel_not_found"));
    laptop.funnel_close("demo").await.unwrap();
    assert_eq!(laptop.funnels().await.unwrap(), vec![renewed]);
    // The name is free for another node now.
    desk.funnel_open(&req(Some("demo"), 3000, None))
        .await
        .unwrap();

    // Unsigned or unregistered callers get nothing.
    let (status, _) = laptop
        .raw_request("GET", "/v1/funnels", vec![], vec![], false)
        .await
        .unwrap();
    assert_eq!(status, 401);
    let stranger = coord.client(PrivateKey::generate());
    let (status, code, _) = api_error(&stranger.funnels().await.unwrap_err());
    assert_eq!((status, code.as_str()), (401, "unknown_node"));
    let (status, _) = laptop
        .raw_request("PUT", "/v1/funnels", vec![], vec![], true)
        .await
        .unwrap();
    assert_eq!(status, 405);
    let (status, body) = laptop
        .raw_request(
            "POST",
            "/v1/funnels",
            vec![],
            b"{\"port\":1,\"x\":1}".to_vec(),
            true,
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_url_has_no_port_and_the_default_policy_grants_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(dir.path());
    let (laptop, _) = node(&coord, "laptop", &[]).await;
    let (status, code, _) = api_error(
        &laptop
            .funnel_open(&req(None, 3000, None))
            .await
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (403, "funnel_not_granted"));
    set_policy(&coord, POLICY);
    let opened = laptop.funnel_open(&req(None, 3000, None)).await.unwrap();
    assert_eq!(opened.url, "https://laptop.funnel.localhost/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_get_routes_as_deltas_on_open_close_and_expiry_and_owners_the_ingress_rule() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(dir.path());
    set_policy(&coord, POLICY);
    let (edge, _) = node(&coord, "edge", &["edge"]).await;
    let (laptop, laptop_node) = node(&coord, "laptop", &[]).await;
    let mut edge_map = Follow::open(&edge).await;
    let mut laptop_map = Follow::open(&laptop).await;
    assert!(edge_map.map.peers.is_empty() && edge_map.map.funnel_routes.is_empty());
    assert!(laptop_map.map.packet_filter.is_empty());

    // Open: the edge learns the route and the owner as a peer; the owner the edge and the rule.
    let opened = laptop.funnel_open(&req(None, 3000, None)).await.unwrap();
    edge_map
        .until(SOON, "route on the edge", |m| {
            m.funnel_routes == vec![opened.route.clone()]
        })
        .await;
    assert_eq!(edge_map.map.peers.len(), 1);
    assert_eq!(edge_map.map.peers[0].id, laptop_node.id);
    assert!(
        edge_map.map.packet_filter.is_empty(),
        "nothing opens the edge"
    );
    laptop_map
        .until(SOON, "ingress rule on the owner", |m| {
            m.packet_filter == vec![ingress_rule()] && m.peers.len() == 1
        })
        .await;
    assert_eq!(laptop_map.map.funnel_routes, vec![opened.route.clone()]);

    // Close: all of it goes away again.
    laptop.funnel_close("laptop").await.unwrap();
    edge_map
        .until(SOON, "route removed on DELETE", |m| {
            m.funnel_routes.is_empty() && m.peers.is_empty()
        })
        .await;
    laptop_map
        .until(SOON, "ingress rule removed", |m| {
            m.packet_filter.is_empty() && m.peers.is_empty() && m.funnel_routes.is_empty()
        })
        .await;

    // Expiry: a 2 s funnel is gone from the edge within about a second after it expires.
    let short = laptop
        .funnel_open(&req(Some("brief"), 3001, Some(2)))
        .await
        .unwrap();
    edge_map
        .until(SOON, "short route on the edge", |m| {
            names(&m.funnel_routes) == ["brief"]
        })
        .await;
    edge_map
        .until(Duration::from_secs(5), "route removed at expiry", |m| {
            m.funnel_routes.is_empty() && m.peers.is_empty()
        })
        .await;
    let now = coord::service::unix_now();
    assert!(now >= short.route.expires, "removed before it expired");
    assert!(
        now <= short.route.expires + 2,
        "removed {}s after it expired",
        now - short.route.expires
    );
    laptop_map
        .until(SOON, "owner sees its expiry", |m| {
            m.packet_filter.is_empty()
        })
        .await;
    assert!(laptop.funnels().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funnels_survive_a_restart_and_go_with_a_removed_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut coord = Coord::start(dir.path());
    let addr = coord.addr.to_string();
    set_policy(&coord, POLICY);
    let (edge, _) = node(&coord, "edge", &["edge"]).await;
    let (laptop, _) = node(&coord, "laptop", &[]).await;
    let (desk, _) = node(&coord, "desk", &[]).await;
    let a = laptop.funnel_open(&req(None, 3000, None)).await.unwrap();
    let b = desk.funnel_open(&req(None, 3001, Some(600))).await.unwrap();
    let c = laptop
        .funnel_open(&req(Some("brief"), 3000, Some(1)))
        .await
        .unwrap();
    assert_eq!(c.route.name, "brief");

    coord.kill9();
    // Past the short one's expiry while coord is down.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let coord = Coord::start_at(dir.path(), &addr, &[]);
    let edge_map = Follow::open(&edge).await;
    assert_eq!(
        edge_map.map.funnel_routes,
        vec![b.route.clone(), a.route.clone()],
        "live funnels kept, the expired one dropped"
    );
    assert_eq!(laptop.funnels().await.unwrap(), vec![a.clone()]);
    let laptop_map = Follow::open(&laptop).await;
    assert_eq!(laptop_map.map.packet_filter, vec![ingress_rule()]);

    // Removing a node removes its funnels, for the edge and in storage.
    let mut edge_map = edge_map;
    let (ok, _, err) = coord.cli(&["nodes", "remove", "desk"]);
    assert!(ok, "{err}");
    edge_map
        .until(SOON, "removed node's route gone", |m| {
            names(&m.funnel_routes) == ["laptop"]
        })
        .await;
    drop(coord);
    let _coord = Coord::start_at(dir.path(), &addr, &[]);
    let edge_map = Follow::open(&edge).await;
    assert_eq!(names(&edge_map.map.funnel_routes), ["laptop"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_max_ttl_shortens_open_funnels_for_edges_and_in_storage() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(dir.path());
    let addr = coord.addr.to_string();
    set_policy(&coord, POLICY);
    let (edge, _) = node(&coord, "edge", &["edge"]).await;
    let (laptop, _) = node(&coord, "laptop", &[]).await;
    let opened = laptop
        .funnel_open(&req(None, 3000, Some(3600)))
        .await
        .unwrap();
    let hour_from_open = opened.route.expires;
    let mut edge_map = Follow::open(&edge).await;
    assert_eq!(edge_map.map.funnel_routes, vec![opened.route.clone()]);

    // The grant drops to 10 minutes: the hour-long funnel now ends within 10 minutes.
    let before = coord::service::unix_now();
    set_policy(&coord, &POLICY.replace("\"1h\"", "\"10m\""));
    edge_map
        .until(SOON, "the route shortened to 10 minutes", |m| {
            m.funnel_routes.len() == 1
                && m.funnel_routes[0].expires <= coord::service::unix_now() + 600
        })
        .await;
    let shortened = edge_map.map.funnel_routes[0].expires;
    assert!(
        shortened >= before + 600 && shortened < hour_from_open,
        "{shortened}"
    );
    assert_eq!(laptop.funnels().await.unwrap()[0].route.expires, shortened);

    // Back to an hour: nothing grows again, and the shorter expiry is what was stored (a
    // restart under the hour-long grant would otherwise bring the old expiry back).
    set_policy(&coord, POLICY);
    drop(coord);
    let _coord = Coord::start_at(dir.path(), &addr, &[]);
    let edge_map = Follow::open(&edge).await;
    assert_eq!(edge_map.map.funnel_routes.len(), 1);
    assert_eq!(edge_map.map.funnel_routes[0].expires, shortened);
}
