//! Filter tests of flow lifetime: expiry, the table bound, rule changes; and fragments.

use std::time::{Duration, Instant};

use proto::policy::Protocol;

use super::tests::{node, p, rule, udp_in, DROP_NO_RULE, ME, PEER};
use super::*;
use crate::packet::build;

#[test]
fn flows_expire_and_expire_sweeps() {
    let (mut f, peer, t0) = (
        PacketFilter::new(FilterLimits::default()),
        node(2, "b", &[]),
        Instant::now(),
    );
    f.outbound(&p(build::udp_v4(ME, PEER, 1000, 53, b"")), t0);
    f.outbound(&p(build::udp_v4(ME, PEER, 1001, 53, b"")), t0);
    let t1 = t0 + UDP_TIMEOUT - Duration::from_secs(1);
    assert_eq!(
        f.inbound(&udp_in(53, 1000), &peer, t1),
        Verdict::Accept,
        "refreshes"
    );
    let t2 = t0 + UDP_TIMEOUT;
    assert_eq!(
        f.inbound(&udp_in(53, 1001), &peer, t2),
        DROP_NO_RULE,
        "expired on lookup"
    );
    assert_eq!(f.expire(t2), 0);
    assert_eq!(f.flows(), 1);
    assert_eq!(f.expire(t1 + UDP_TIMEOUT), 1);
    assert_eq!((f.flows(), f.stats().expired), (0, 2));
}

#[test]
fn table_is_bounded_least_recently_used_evicted() {
    let limits = FilterLimits {
        max_flows: 3,
        ..FilterLimits::default()
    };
    let (mut f, peer, now) = (PacketFilter::new(limits), node(2, "b", &[]), Instant::now());
    for port in 1..=3 {
        f.outbound(&p(build::udp_v4(ME, PEER, port, 53, b"")), now);
    }
    assert_eq!(
        f.inbound(&udp_in(53, 1), &peer, now),
        Verdict::Accept,
        "1 is now most recent"
    );
    f.outbound(&p(build::udp_v4(ME, PEER, 4, 53, b"")), now);
    assert_eq!(
        f.inbound(&udp_in(53, 2), &peer, now),
        DROP_NO_RULE,
        "2 was evicted"
    );
    for port in [1, 3, 4] {
        assert_eq!(
            f.inbound(&udp_in(53, port), &peer, now),
            Verdict::Accept,
            "{port}"
        );
    }
    for port in 100..1100 {
        f.outbound(&p(build::udp_v4(ME, PEER, port, 53, b"")), now);
    }
    let s = f.stats();
    assert_eq!((s.flows, s.evicted), (3, 1001));
    assert_eq!(f.inbound(&udp_in(53, 1099), &peer, now), Verdict::Accept);
}

#[test]
fn rule_changes_apply_to_admitted_flows() {
    let (mut f, dev, now) = (
        PacketFilter::new(FilterLimits::default()),
        node(2, "dev", &["tag:dev"]),
        Instant::now(),
    );
    f.set_rules(vec![rule(&["tag:dev"], Protocol::Udp, &["5000"])]);
    assert_eq!(f.inbound(&udp_in(7, 5000), &dev, now), Verdict::Accept);
    f.outbound(&p(build::udp_v4(ME, PEER, 5000, 7, b"reply")), now);
    assert_eq!(f.inbound(&udp_in(7, 5000), &dev, now), Verdict::Accept);
    assert_eq!(f.stats().accepted_tracked, 1);
    f.set_rules(vec![rule(&["tag:dev"], Protocol::Udp, &["5000"])]);
    assert_eq!(
        f.inbound(&udp_in(7, 5000), &dev, now),
        Verdict::Accept,
        "same rules"
    );
    f.set_rules(vec![]);
    assert_eq!(
        f.inbound(&udp_in(7, 5000), &dev, now),
        DROP_NO_RULE,
        "revoked"
    );
    // Our replies do not make their flow one of ours.
    f.outbound(&p(build::udp_v4(ME, PEER, 5000, 7, b"reply")), now);
    assert_eq!(f.inbound(&udp_in(7, 5000), &dev, now), DROP_NO_RULE);
    // Tags changing count too.
    f.set_rules(vec![rule(&["tag:dev"], Protocol::Udp, &["5000"])]);
    assert_eq!(
        f.inbound(&udp_in(7, 5000), &dev, now),
        Verdict::Accept,
        "granted again"
    );
    let retagged = node(2, "dev", &["tag:ops"]);
    f.revalidate();
    assert_eq!(f.inbound(&udp_in(7, 5000), &retagged, now), DROP_NO_RULE);
}

#[test]
fn fragments_and_other_protocols() {
    let (mut f, peer, now) = (
        PacketFilter::new(FilterLimits::default()),
        node(2, "b", &[]),
        Instant::now(),
    );
    let mut later = build::ipv4(PEER, ME, 6, &[0; 16]);
    later[6..8].copy_from_slice(&4u16.to_be_bytes());
    assert_eq!(f.inbound(&p(later.clone()), &peer, now), Verdict::Accept);
    later[6..8].copy_from_slice(&1u16.to_be_bytes());
    assert_eq!(
        f.inbound(&p(later), &peer, now),
        Verdict::Drop(DropReason::TinyFragment)
    );

    f.set_rules(vec![rule(&["*"], Protocol::Any, &["*"])]);
    let gre_in = p(build::ipv4(PEER, ME, 47, &[0; 4]));
    assert_eq!(
        f.inbound(&gre_in, &peer, now),
        Verdict::Drop(DropReason::UnsupportedProtocol)
    );
    f.outbound(&p(build::ipv4(ME, PEER, 47, &[0; 4])), now);
    assert_eq!(
        f.inbound(&gre_in, &peer, now),
        Verdict::Accept,
        "reply to our GRE"
    );
    let s = f.stats();
    assert_eq!((s.accepted_fragments, s.accepted_tracked), (1, 1));
    assert_eq!(
        DropReason::ALL.iter().map(|r| s.dropped(*r)).sum::<u64>(),
        2
    );
    assert_eq!(DropReason::TinyFragment.as_str(), "tiny_fragment");
}
