//! Core tests with virtual time: no sockets, no database. Each stream's lines are applied to a
//! client-side netmap and compared with what the core says the node should see.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;
use proto::api::FunnelRequest;
use proto::map::{apply, FilterRule, FUNNEL_INGRESS_PORT};
use proto::policy::{PortRange, Protocol};

const T0: u64 = 1_800_000_000;

fn cfg() -> MeshConfig {
    MeshConfig {
        domain: "mesh.internal".into(),
        ula_prefix: "fd12:3456:789a::".parse().unwrap(),
        batch_window: Duration::from_millis(20),
        key_lifetime: Duration::from_secs(180 * 86400),
        ephemeral_timeout: Duration::from_secs(1800),
        funnel_domain: "funnel.example.com".into(),
        funnel_port: 443,
    }
}

struct Sim {
    mesh: Mesh,
    now: Instant,
    unix: u64,
    /// What each stream's client believes, built only from the lines it received.
    clients: HashMap<StreamId, (NodeId, Option<Netmap>, bool)>,
    next_key: u8,
}

impl Sim {
    fn new(policy: Policy) -> Self {
        Self {
            mesh: Mesh::new(cfg(), policy, vec![], T0),
            now: Instant::now(),
            unix: T0,
            clients: HashMap::new(),
            next_key: 1,
        }
    }

    fn add(&mut self, host: &str, tags: &[&str]) -> NodeId {
        let key = keys::PrivateKey::from_bytes([self.next_key; 32]).public_key();
        self.next_key += 1;
        let plan = self
            .mesh
            .plan_node(
                key,
                host,
                tags.iter().map(|t| t.to_string()).collect(),
                false,
                None,
                self.unix,
            )
            .unwrap();
        // Ids are never reused, as in the store (AUTOINCREMENT).
        let id = NodeId(u64::from(self.next_key) + 99);
        let rec = NodeRecord {
            id,
            public_key: plan.public_key,
            name: plan.name,
            hostname: plan.hostname,
            ipv4: plan.ipv4,
            ipv6: plan.ipv6,
            tags: plan.tags,
            ephemeral: false,
            auth_key_id: None,
            created: self.unix,
            key_expiry: plan.key_expiry,
            last_seen: None,
        };
        self.mesh.insert_node(rec, self.now, self.unix);
        id
    }

    fn connect(&mut self, id: NodeId) -> StreamId {
        let sid = self.mesh.open_stream(id, self.now, self.unix).unwrap();
        self.clients.insert(sid, (id, None, false));
        self.drain();
        sid
    }

    fn drain(&mut self) -> usize {
        let mut n = 0;
        while let Some(out) = self.mesh.poll_output() {
            n += 1;
            let (sid, bytes, close) = match out {
                Output::Send { stream, line } => (stream, line, false),
                Output::Close { stream, line } => (stream, line, true),
            };
            assert_eq!(bytes.last(), Some(&b'\n'));
            let msg: MapMessage = serde_json::from_slice(&bytes).unwrap();
            let client = self.clients.get_mut(&sid).unwrap();
            match msg {
                MapMessage::Full { netmap, .. } => client.1 = Some(netmap),
                MapMessage::Delta { delta, .. } => {
                    apply(client.1.as_mut().expect("full map first"), &delta).unwrap()
                }
                MapMessage::Keepalive => {}
                MapMessage::Revoked { .. } => assert!(close),
            }
            client.2 |= close;
        }
        n
    }

    /// Lets the batch window pass and delivers what it flushed.
    fn settle(&mut self) -> usize {
        self.now += Duration::from_millis(25);
        self.mesh.handle_timeout(self.now);
        assert!(self.mesh.poll_timeout().is_none());
        self.drain()
    }

    /// Every open client's netmap equals the core's view of its node, and the online count
    /// matches the nodes that hold streams.
    fn check(&self) {
        let online: std::collections::BTreeSet<_> = self.mesh.streams.values().collect();
        assert_eq!(self.mesh.online_count(), online.len());
        for (sid, (id, map, closed)) in &self.clients {
            if *closed {
                continue;
            }
            let want = self.mesh.netmap_for(*id).unwrap();
            assert_eq!(map.as_ref().unwrap(), &want, "stream {sid:?} of node {id}");
        }
    }

    fn peers_of(&self, sid: StreamId) -> Vec<String> {
        let m = self.clients[&sid].1.as_ref().unwrap();
        m.peers.iter().map(|p| p.name.clone()).collect()
    }
}

#[test]
fn full_map_then_shared_deltas() {
    let mut sim = Sim::new(Policy::default());
    let ids: Vec<_> = (0..5).map(|i| sim.add(&format!("n{i}"), &[])).collect();
    sim.settle();
    let sids: Vec<_> = ids.iter().map(|id| sim.connect(*id)).collect();
    sim.settle();
    sim.check();
    assert_eq!(sim.peers_of(sids[0]), vec!["n1", "n2", "n3", "n4"]);
    assert!(sim.clients[&sids[0]]
        .1
        .as_ref()
        .unwrap()
        .peers
        .iter()
        .all(|p| p.online));

    // One endpoint change: one line per other stream, all the same bytes.
    sim.mesh
        .set_endpoints(ids[2], vec!["192.0.2.7:41641".parse().unwrap()], sim.now);
    sim.now += Duration::from_millis(25);
    sim.mesh.handle_timeout(sim.now);
    let mut lines = vec![];
    while let Some(Output::Send { stream, line }) = sim.mesh.poll_output() {
        assert_ne!(
            stream, sids[2],
            "a node is not told its own endpoints as a peer"
        );
        lines.push(line);
    }
    assert_eq!(lines.len(), 4);
    assert!(
        lines.windows(2).all(|w| w[0].as_ptr() == w[1].as_ptr()),
        "serialized once"
    );
    let text = std::str::from_utf8(&lines[0]).unwrap();
    assert!(
        text.contains("192.0.2.7:41641") && text.len() < 200,
        "{text}"
    );
}

#[test]
fn changes_in_one_window_are_batched() {
    let mut sim = Sim::new(Policy::default());
    let a = sim.add("a", &[]);
    let b = sim.add("b", &[]);
    sim.settle();
    let sa = sim.connect(a);
    sim.connect(b);
    sim.settle();
    for port in 1..=10u16 {
        sim.mesh.set_endpoints(
            b,
            vec![SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), port))],
            sim.now,
        );
        sim.now += Duration::from_millis(1);
    }
    assert_eq!(sim.settle(), 1, "ten changes, one line");
    sim.check();
    let m = sim.clients[&sa].1.as_ref().unwrap();
    assert_eq!(m.peers[0].endpoints[0].port(), 10);
}

#[test]
fn policy_limits_peers_and_changes_reach_only_those_affected() {
    let policy = Policy::parse(
        r#"{"acls": [{"src": ["tag:dev"], "dst": ["tag:server"], "ports": ["22"], "proto": "tcp"}]}"#,
    )
    .unwrap();
    let mut sim = Sim::new(policy);
    let dev1 = sim.add("dev1", &["tag:dev"]);
    let dev2 = sim.add("dev2", &["tag:dev"]);
    let srv = sim.add("srv", &["tag:server"]);
    let other = sim.add("other", &[]);
    sim.settle();
    let s_dev1 = sim.connect(dev1);
    let s_srv = sim.connect(srv);
    let s_other = sim.connect(other);
    sim.connect(dev2);
    sim.settle();
    sim.check();
    assert_eq!(sim.peers_of(s_dev1), vec!["srv"]);
    assert_eq!(sim.peers_of(s_srv), vec!["dev1", "dev2"]);
    assert!(sim.peers_of(s_other).is_empty());
    let f = &sim.clients[&s_srv].1.as_ref().unwrap().packet_filter;
    assert_eq!(f.len(), 1);
    assert!(sim.clients[&s_dev1]
        .1
        .as_ref()
        .unwrap()
        .packet_filter
        .is_empty());

    // dev2 moves: only srv hears of it (dev1 cannot see dev2).
    sim.mesh
        .set_endpoints(dev2, vec!["198.51.100.2:1".parse().unwrap()], sim.now);
    assert_eq!(sim.settle(), 1);

    // Open the mesh: everyone learns of everyone; filters change.
    sim.mesh.set_policy(Policy::default(), sim.now, sim.unix);
    sim.settle();
    sim.check();
    assert_eq!(sim.peers_of(s_other), vec!["dev1", "dev2", "srv"]);

    // And close it again.
    sim.mesh
        .set_policy(Policy::parse(r#"{"acls": []}"#).unwrap(), sim.now, sim.unix);
    sim.settle();
    sim.check();
    assert!(sim.peers_of(s_srv).is_empty());
}

#[test]
fn expiry_and_removal_reach_peers_and_end_streams() {
    let mut sim = Sim::new(Policy::default());
    let a = sim.add("a", &[]);
    let b = sim.add("b", &[]);
    let c = sim.add("c", &[]);
    sim.settle();
    let sa = sim.connect(a);
    let sb = sim.connect(b);
    sim.connect(c);
    sim.settle();

    sim.mesh.set_key_expiry(b, sim.unix, sim.now, sim.unix);
    sim.settle();
    assert!(sim.clients[&sb].2, "b's stream was closed");
    assert_eq!(sim.peers_of(sa), vec!["c"]);
    sim.check();
    assert!(
        sim.mesh.open_stream(b, sim.now, sim.unix).is_none(),
        "expired node gets no map"
    );

    // Renewal brings it back.
    sim.mesh
        .set_key_expiry(b, sim.unix + 100, sim.now, sim.unix);
    sim.settle();
    assert_eq!(sim.peers_of(sa), vec!["b", "c"]);

    // Natural expiry through tick.
    sim.unix += 101;
    assert!(sim.mesh.tick(sim.now, sim.unix).is_empty());
    sim.settle();
    assert_eq!(sim.peers_of(sa), vec!["c"]);

    sim.mesh.remove_node(c, sim.now);
    sim.settle();
    assert!(sim.peers_of(sa).is_empty());
    sim.check();
}

#[test]
fn ephemeral_nodes_are_reported_after_timeout() {
    let mut mesh = Mesh::new(cfg(), Policy::default(), vec![], T0);
    let now = Instant::now();
    let rec = NodeRecord {
        id: NodeId(1),
        public_key: keys::PrivateKey::from_bytes([1; 32]).public_key(),
        name: "ci".into(),
        hostname: "ci".into(),
        ipv4: Ipv4Addr::new(100, 64, 0, 1),
        ipv6: Ipv6Addr::LOCALHOST,
        tags: vec![],
        ephemeral: true,
        auth_key_id: None,
        created: T0,
        key_expiry: T0 + 10_000,
        last_seen: None,
    };
    mesh.insert_node(rec, now, T0);
    let sid = mesh.open_stream(NodeId(1), now, T0).unwrap();
    assert!(mesh.tick(now, T0 + 5000).is_empty(), "online nodes stay");
    mesh.close_stream(sid, now, T0 + 10);
    assert!(mesh.tick(now, T0 + 1000).is_empty());
    assert_eq!(mesh.tick(now, T0 + 1810), vec![NodeId(1)]);
}

#[test]
fn names_and_addresses_are_unique() {
    let mut sim = Sim::new(Policy::default());
    let a = sim.add("laptop", &[]);
    let b = sim.add("Laptop", &[]);
    let (ra, _) = sim
        .mesh
        .node_by_key(&keys::PrivateKey::from_bytes([1; 32]).public_key())
        .unwrap();
    assert_eq!(ra.id, a);
    let names: Vec<_> = sim.mesh.list().map(|(r, ..)| r.name.clone()).collect();
    assert_eq!(names, vec!["laptop", "laptop-2"]);
    let v4: Vec<_> = sim.mesh.list().map(|(r, ..)| r.ipv4).collect();
    assert_ne!(v4[0], v4[1]);
    assert_eq!(sim.mesh.find("laptop-2"), Some(b));
    assert_eq!(sim.mesh.find(&b.0.to_string()), Some(b));
}

#[test]
fn random_operations_keep_every_client_in_step() {
    // A small deterministic generator: no external RNG, same sequence every run.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let policies = [
        Policy::parse(
            r#"{"acls": [{"src": ["*"], "dst": ["*"]}],
                "funnel": [{"nodes": ["*"], "ports": ["*"], "max_ttl": "1m"}],
                "edges": [{"tag": "tag:c"}]}"#,
        )
        .unwrap(),
        Policy::parse(
            r#"{"acls": [{"src": ["tag:a"], "dst": ["tag:b"]}],
                "funnel": [{"nodes": ["tag:a", "n5"], "ports": ["1-100"], "max_ttl": "30s"}],
                "edges": [{"tag": "tag:c"}]}"#,
        )
        .unwrap(),
        Policy::parse(
            r#"{"acls": [{"src": ["n3"], "dst": ["*"]}],
                "funnel": [{"nodes": ["*"], "ports": ["*"]}],
                "edges": [{"tag": "tag:b"}]}"#,
        )
        .unwrap(),
    ];
    let mut sim = Sim::new(policies[0].clone());
    let mut funnels_opened = 0;
    let mut funnels_expired = 0;
    let mut ids = vec![];
    for step in 0..600 {
        match rnd(10) {
            0 if ids.len() < 30 => {
                let tag = ["tag:a", "tag:b", "tag:c"][rnd(3) as usize];
                ids.push(sim.add(&format!("n{}", ids.len()), &[tag]));
            }
            1 if !ids.is_empty() => {
                let id = ids[rnd(ids.len() as u64) as usize];
                if sim.mesh.open_stream(id, sim.now, sim.unix).is_some() {
                    // Re-register through connect() so the client is tracked.
                    let sid = StreamId(sim.mesh.next_stream - 1);
                    sim.clients.insert(sid, (id, None, false));
                    sim.drain();
                }
            }
            2 if !ids.is_empty() => {
                let id = ids[rnd(ids.len() as u64) as usize];
                let port = rnd(60000) as u16 + 1;
                sim.mesh.set_endpoints(
                    id,
                    vec![SocketAddr::from((Ipv4Addr::new(192, 0, 2, 9), port))],
                    sim.now,
                );
            }
            3 => sim
                .mesh
                .set_policy(policies[rnd(3) as usize].clone(), sim.now, sim.unix),
            4 => {
                let open: Vec<_> = sim.mesh.streams.keys().copied().collect();
                if !open.is_empty() {
                    let sid = open[rnd(open.len() as u64) as usize];
                    sim.mesh.close_stream(sid, sim.now, sim.unix);
                    sim.clients.get_mut(&sid).unwrap().2 = true;
                }
            }
            5 if ids.len() > 3 && rnd(4) == 0 => {
                let i = rnd(ids.len() as u64) as usize;
                let id = ids.remove(i);
                sim.mesh.remove_node(id, sim.now);
            }
            6 | 7 if !ids.is_empty() => {
                let id = ids[rnd(ids.len() as u64) as usize];
                let req = FunnelRequest {
                    name: Some(format!("f{}", rnd(5))),
                    port: rnd(200) as u16 + 1,
                    ttl_secs: Some(rnd(40) + 1),
                };
                if let Ok(route) = sim.mesh.plan_funnel(id, &req, sim.unix) {
                    sim.mesh.set_funnel(route, sim.now);
                    funnels_opened += 1;
                }
            }
            8 => {
                let name = format!("f{}", rnd(5));
                sim.mesh.remove_funnel(&name, sim.now);
            }
            9 => {
                sim.unix += rnd(6);
                assert!(sim.mesh.tick(sim.now, sim.unix).is_empty());
                funnels_expired += sim.mesh.drain_dropped_funnels().len();
            }
            _ => {}
        }
        sim.drain();
        if step % 3 == 0 {
            sim.settle();
            sim.check();
        }
    }
    sim.settle();
    sim.check();
    assert!(
        funnels_opened > 20 && funnels_expired > 5,
        "the run exercised funnels: {funnels_opened} opened, {funnels_expired} dropped"
    );
}

#[test]
fn full_lines_from_cached_entries_equal_the_serde_netmap() {
    let mut sim =
        Sim::new(Policy::parse(r#"{"acls": [{"src": ["tag:a"], "dst": ["*"]}]}"#).unwrap());
    let a = sim.add("a", &["tag:a"]);
    let b = sim.add("b", &[]);
    let c = sim.add("c", &["tag:a"]);
    let edge = sim.add("edge", &["tag:edge"]);
    sim.settle();
    sim.mesh.set_policy(
        Policy::parse(
            r#"{"acls": [{"src": ["tag:a"], "dst": ["*"]}],
                "funnel": [{"nodes": ["b"], "ports": ["*"]}],
                "edges": [{"tag": "tag:edge"}]}"#,
        )
        .unwrap(),
        sim.now,
        sim.unix,
    );
    open(&mut sim, b, Some("demo"), 8080, None);
    sim.connect(b);
    sim.mesh
        .set_endpoints(c, vec!["192.0.2.3:3".parse().unwrap()], sim.now);
    sim.settle();
    for id in [a, b, c, edge] {
        let want = line(&MapMessage::Full {
            seq: sim.mesh.seq,
            netmap: sim.mesh.netmap_for(id).unwrap(),
        });
        assert_eq!(sim.mesh.full_line(id).unwrap(), want, "node {id}");
    }
    // After a change the cached entry is rebuilt.
    sim.mesh
        .set_endpoints(c, vec!["192.0.2.4:4".parse().unwrap()], sim.now);
    let want = line(&MapMessage::Full {
        seq: sim.mesh.seq,
        netmap: sim.mesh.netmap_for(b).unwrap(),
    });
    assert_eq!(sim.mesh.full_line(b).unwrap(), want);
}

fn funnel_policy() -> Policy {
    Policy::parse(
        r#"{"acls": [{"src": ["tag:dev"], "dst": ["tag:dev"]}],
            "funnel": [{"nodes": ["laptop"], "ports": ["3000-3001"], "max_ttl": "1h"},
                       {"nodes": ["tag:dev"], "ports": ["80"]}],
            "edges": [{"tag": "tag:edge"}]}"#,
    )
    .unwrap()
}

/// The nodes of the funnel tests: an edge, "laptop" (granted ports 3000-3001 for at most an
/// hour) and "dev" (tag:dev, port 80).
fn edge_laptop_dev(sim: &mut Sim) -> (NodeId, NodeId, NodeId) {
    let edge = sim.add("edge", &["tag:edge"]);
    let laptop = sim.add("laptop", &[]);
    let dev = sim.add("dev", &["tag:dev"]);
    sim.settle();
    (edge, laptop, dev)
}

fn open(sim: &mut Sim, id: NodeId, name: Option<&str>, port: u16, ttl: Option<u64>) -> FunnelRoute {
    let req = FunnelRequest {
        name: name.map(str::to_owned),
        port,
        ttl_secs: ttl,
    };
    let route = sim.mesh.plan_funnel(id, &req, sim.unix).unwrap();
    sim.mesh.set_funnel(route.clone(), sim.now);
    route
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

#[test]
fn funnel_routes_reach_edges_and_owner_and_open_only_the_ingress_while_live() {
    let mut sim = Sim::new(funnel_policy());
    let (edge, laptop, dev) = edge_laptop_dev(&mut sim);
    let s_edge = sim.connect(edge);
    let s_laptop = sim.connect(laptop);
    let s_dev = sim.connect(dev);
    sim.settle();
    sim.check();
    assert!(sim.peers_of(s_edge).is_empty());
    assert!(sim.peers_of(s_laptop).is_empty());
    let map = |sim: &Sim, s: StreamId| sim.clients[&s].1.clone().unwrap();
    assert!(map(&sim, s_laptop).packet_filter.is_empty());

    let route = open(&mut sim, laptop, None, 3000, None);
    assert_eq!(route.name, "laptop", "the name defaults to the node's");
    assert_eq!(route.expires, sim.unix + 3600, "min(24h, grant max)");
    assert_eq!(sim.settle(), 2, "the edge and the owner, nobody else");
    sim.check();
    assert_eq!(map(&sim, s_edge).funnel_routes, vec![route.clone()]);
    assert_eq!(map(&sim, s_laptop).funnel_routes, vec![route.clone()]);
    assert!(map(&sim, s_dev).funnel_routes.is_empty());
    assert_eq!(sim.peers_of(s_edge), vec!["laptop"]);
    assert_eq!(sim.peers_of(s_laptop), vec!["edge"]);
    assert!(sim.peers_of(s_dev).is_empty());
    assert_eq!(map(&sim, s_laptop).packet_filter, vec![ingress_rule()]);
    assert!(
        map(&sim, s_edge).packet_filter.is_empty(),
        "nothing opens the edge"
    );

    // dev opens one too: the edge sees both routes, laptop only its own.
    let dev_route = open(&mut sim, dev, Some("www"), 80, Some(30));
    assert_eq!(sim.settle(), 2);
    sim.check();
    assert_eq!(
        map(&sim, s_edge).funnel_routes,
        vec![route.clone(), dev_route.clone()]
    );
    assert_eq!(map(&sim, s_laptop).funnel_routes, vec![route.clone()]);
    assert_eq!(sim.peers_of(s_edge), vec!["laptop", "dev"]);

    // Renewal replaces port and expiry; peers and filters stay.
    sim.unix += 10;
    let renewed = open(&mut sim, laptop, Some("laptop"), 3001, Some(60));
    assert_eq!((renewed.port, renewed.expires), (3001, sim.unix + 60));
    assert_eq!(sim.settle(), 2);
    sim.check();
    assert_eq!(map(&sim, s_laptop).funnel_routes, vec![renewed.clone()]);

    // dev's funnel expires (30 s after it opened): the tick drops it and says so.
    sim.unix += 21;
    sim.mesh.tick(sim.now, sim.unix);
    assert_eq!(sim.mesh.drain_dropped_funnels(), vec!["www".to_owned()]);
    sim.settle();
    sim.check();
    assert_eq!(sim.peers_of(s_edge), vec!["laptop"]);
    assert_eq!(
        map(&sim, s_dev).packet_filter,
        funnel_policy().filter_for(&sim.mesh.nodes[&dev].view)
    );

    // Closing the last funnel takes the route, the peering and the ingress rule away.
    assert!(sim.mesh.remove_funnel("laptop", sim.now).is_some());
    assert!(sim.mesh.remove_funnel("laptop", sim.now).is_none());
    assert_eq!(sim.settle(), 2);
    sim.check();
    assert!(map(&sim, s_edge).funnel_routes.is_empty());
    assert!(sim.peers_of(s_edge).is_empty());
    assert!(sim.peers_of(s_laptop).is_empty());
    assert!(map(&sim, s_laptop).packet_filter.is_empty());
    assert!(
        sim.mesh.drain_dropped_funnels().is_empty(),
        "closed by the driver"
    );
}

#[test]
fn funnel_requests_are_checked_against_names_grants_and_ttl() {
    let mut sim = Sim::new(funnel_policy());
    let laptop = sim.add("laptop", &[]);
    let dev = sim.add("dev", &["tag:dev"]);
    let other = sim.add("other", &[]);
    let plan = |sim: &Sim, id, name: Option<&str>, port, ttl| {
        sim.mesh.plan_funnel(
            id,
            &FunnelRequest {
                name: name.map(str::to_owned),
                port,
                ttl_secs: ttl,
            },
            sim.unix,
        )
    };
    let err = plan(&sim, other, None, 3000, None).unwrap_err();
    assert!(
        matches!(&err, FunnelError::NotGranted(m) if m.contains("no funnel grant for node \"other\"")),
        "{err}"
    );
    let err = plan(&sim, laptop, None, 8080, None).unwrap_err();
    assert!(
        matches!(&err, FunnelError::NotGranted(m) if m.contains("port 8080")),
        "{err}"
    );
    let err = plan(&sim, laptop, None, 3000, Some(7200)).unwrap_err();
    assert!(err.to_string().contains("maximum of 1h"), "{err}");
    assert_eq!(
        plan(&sim, laptop, None, 3000, Some(0)),
        Err(FunnelError::TtlTooShort)
    );
    assert_eq!(
        plan(&sim, laptop, None, 0, None),
        Err(FunnelError::InvalidPort)
    );
    assert_eq!(
        plan(&sim, laptop, None, 3000, Some(1)).unwrap().expires,
        sim.unix + 1
    );
    for bad in ["", "-x", "x-", "Demo", "a.b", &"x".repeat(64)] {
        assert_eq!(
            plan(&sim, laptop, Some(bad), 3000, None),
            Err(FunnelError::InvalidName(bad.to_owned()))
        );
    }
    // A grant without max_ttl allows 24h, which is also the default.
    assert_eq!(
        plan(&sim, dev, None, 80, None).unwrap().expires,
        sim.unix + 86400
    );

    open(&mut sim, laptop, Some("demo"), 3000, Some(5));
    assert_eq!(
        plan(&sim, dev, Some("demo"), 80, None),
        Err(FunnelError::NameTaken("demo".into()))
    );
    assert!(
        plan(&sim, laptop, Some("demo"), 3001, None).is_ok(),
        "renewal"
    );
    // Once expired (even before a tick) the name is free.
    sim.unix += 5;
    assert!(plan(&sim, dev, Some("demo"), 80, None).is_ok());
}

#[test]
fn a_removed_or_expired_node_or_a_withdrawn_grant_takes_funnels_away() {
    let mut sim = Sim::new(funnel_policy());
    let edge = sim.add("edge", &["tag:edge"]);
    let laptop = sim.add("laptop", &[]);
    let dev = sim.add("dev", &["tag:dev"]);
    let dev2 = sim.add("dev2", &["tag:dev"]);
    sim.settle();
    let s_edge = sim.connect(edge);
    sim.connect(dev);
    sim.settle();
    open(&mut sim, laptop, None, 3000, None);
    open(&mut sim, dev, Some("a"), 80, None);
    open(&mut sim, dev2, Some("b"), 80, None);
    sim.settle();
    sim.check();
    assert_eq!(sim.peers_of(s_edge), vec!["laptop", "dev", "dev2"]);

    sim.mesh.remove_node(laptop, sim.now);
    sim.settle();
    sim.check();
    assert_eq!(sim.mesh.drain_dropped_funnels(), vec!["laptop".to_owned()]);

    sim.mesh.set_key_expiry(dev2, sim.unix, sim.now, sim.unix);
    sim.settle();
    sim.check();
    assert_eq!(sim.mesh.drain_dropped_funnels(), vec!["b".to_owned()]);
    assert_eq!(sim.peers_of(s_edge), vec!["dev"]);

    // A policy without dev's grant: its funnel goes, and so does the peering.
    let p = Policy::parse(
        r#"{"acls": [{"src": ["tag:dev"], "dst": ["tag:dev"]}],
            "funnel": [{"nodes": ["laptop"], "ports": ["3000"]}]}"#,
    )
    .unwrap();
    sim.mesh.set_policy(p, sim.now, sim.unix);
    sim.settle();
    sim.check();
    assert_eq!(sim.mesh.drain_dropped_funnels(), vec!["a".to_owned()]);
    assert!(sim.peers_of(s_edge).is_empty());
    assert!(sim.clients[&s_edge]
        .1
        .as_ref()
        .unwrap()
        .funnel_routes
        .is_empty());
}

#[test]
fn a_lower_max_ttl_shortens_open_funnels_and_edges_hear_of_it() {
    let mut sim = Sim::new(funnel_policy());
    let (edge, laptop, dev) = edge_laptop_dev(&mut sim);
    let s_edge = sim.connect(edge);
    sim.settle();
    let long = open(&mut sim, laptop, None, 3000, Some(3600));
    let short = open(&mut sim, dev, Some("d"), 80, Some(60));
    sim.settle();
    assert_eq!(long.expires, sim.unix + 3600);

    // laptop's grant drops to 10 minutes: its hour-long funnel ends 10 minutes from now; dev's
    // one-minute funnel is already within its (unchanged, 24 h) grant.
    let p = Policy::parse(
        r#"{"acls": [{"src": ["tag:dev"], "dst": ["tag:dev"]}],
            "funnel": [{"nodes": ["laptop"], "ports": ["3000-3001"], "max_ttl": "10m"},
                       {"nodes": ["tag:dev"], "ports": ["80"]}],
            "edges": [{"tag": "tag:edge"}]}"#,
    )
    .unwrap();
    sim.mesh.set_policy(p, sim.now, sim.unix);
    sim.settle();
    sim.check();
    let want = FunnelRoute {
        expires: sim.unix + 600,
        ..long
    };
    assert_eq!(sim.mesh.drain_shortened_funnels(), vec![want.clone()]);
    assert!(sim.mesh.drain_dropped_funnels().is_empty());
    assert_eq!(sim.mesh.funnel("laptop"), Some(&want));
    assert_eq!(sim.mesh.funnel("d"), Some(&short));
    let routes = &sim.clients[&s_edge].1.as_ref().unwrap().funnel_routes;
    assert!(routes.contains(&want), "{routes:?}");

    // Setting the same policy again shortens nothing more.
    sim.mesh.set_policy(funnel_policy(), sim.now, sim.unix);
    sim.settle();
    assert!(sim.mesh.drain_shortened_funnels().is_empty());
    assert_eq!(sim.mesh.funnel("laptop"), Some(&want));
}

#[test]
fn only_edges_for_this_funnel_domain_get_routes_and_the_ingress() {
    let policy = Policy::parse(
        r#"{"acls": [],
            "funnel": [{"nodes": ["laptop"], "ports": ["3000"]}],
            "edges": [{"tag": "tag:edge", "domains": ["other.example"]},
                      {"tag": "tag:here", "domains": ["funnel.example.com"]}]}"#,
    )
    .unwrap();
    let mut sim = Sim::new(policy);
    let elsewhere = sim.add("elsewhere", &["tag:edge"]);
    let here = sim.add("here", &["tag:here"]);
    let laptop = sim.add("laptop", &[]);
    sim.settle();
    let s_elsewhere = sim.connect(elsewhere);
    let s_here = sim.connect(here);
    let s_laptop = sim.connect(laptop);
    sim.settle();
    let route = open(&mut sim, laptop, None, 3000, None);
    sim.settle();
    sim.check();
    let map = |s| sim.clients[&s].1.as_ref().unwrap();
    assert_eq!(map(s_here).funnel_routes, vec![route]);
    assert!(map(s_elsewhere).funnel_routes.is_empty());
    assert!(sim.peers_of(s_elsewhere).is_empty());
    assert_eq!(sim.peers_of(s_here), vec!["laptop"]);
    let ingress = map(s_laptop)
        .packet_filter
        .iter()
        .find(|r| r.ports.iter().any(|p| p.lo == FUNNEL_INGRESS_PORT))
        .unwrap();
    assert_eq!(ingress.src, vec!["tag:here".to_owned()]);
}

#[test]
fn stored_funnels_load_without_the_expired_or_ungranted() {
    let mut sim = Sim::new(funnel_policy());
    let laptop = sim.add("laptop", &[]);
    let other = sim.add("other", &[]);
    let route = |name: &str, node, port, expires| FunnelRoute {
        name: name.into(),
        node,
        port,
        expires,
    };
    sim.mesh.load_funnels(
        vec![
            route("live", laptop, 3000, sim.unix + 10),
            // Stored under an older policy with a longer max_ttl than today's hour.
            route("long", laptop, 3001, sim.unix + 7200),
            route("old", laptop, 3000, sim.unix),
            route("nogrant", other, 3000, sim.unix + 10),
            route("ghost", NodeId(999), 3000, sim.unix + 10),
        ],
        sim.unix,
    );
    let shortened = route("long", laptop, 3001, sim.unix + 3600);
    assert_eq!(
        sim.mesh.funnels_of(laptop),
        vec![
            route("live", laptop, 3000, sim.unix + 10),
            shortened.clone()
        ]
    );
    assert_eq!(sim.mesh.drain_shortened_funnels(), vec![shortened]);
    let mut dropped = sim.mesh.drain_dropped_funnels();
    dropped.sort();
    assert_eq!(dropped, vec!["ghost", "nogrant", "old"]);
    let s = sim.connect(laptop);
    assert_eq!(
        sim.clients[&s].1.as_ref().unwrap().packet_filter,
        vec![ingress_rule()]
    );
}
