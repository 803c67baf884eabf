//! The stateful inbound packet filter. Runs after the inner-source check (`routes`), so the
//! peer a packet came from is known; decides whether a decrypted packet reaches this node.
//!
//! - Replies to this node's own flows pass: TCP and UDP by reversed 5-tuple, ICMP echo replies
//!   by identifier, ICMP errors quoting a tracked flow. [`PacketFilter::outbound`] records flows.
//! - A new inbound flow passes only if a netmap rule admits the peer (by `*`, `tag:NAME` or
//!   name) for the protocol and destination port; an ICMP echo request counts as `icmp`. It is
//!   then tracked too, so later packets skip the rules, until the rules change
//!   ([`PacketFilter::set_rules`], [`PacketFilter::revalidate`]) or another peer sends on it:
//!   then it is checked again on its next packet.
//! - Protocols other than TCP, UDP and ICMP pass only as replies: no rule can name them.
//! - Later fragments carry no ports and pass: the first fragment was filtered, and without it
//!   the receiver cannot reassemble. Tiny overlapping TCP fragments (RFC 1858) are dropped.
//!
//! Sans-IO: no sockets, no clock (time is passed in), no allocation per packet once the flow
//! table has grown. The table is bounded (least recently used evicted) and flows expire; the
//! driver calls [`PacketFilter::expire`] every few seconds.

mod conntrack;
#[cfg(test)]
mod lifetime_tests;
#[cfg(test)]
pub(crate) mod tests;
mod types;

use std::time::Instant;

use proto::map::FilterRule;
use proto::policy::{PortRange, Protocol, Selector};
use proto::Node;

use crate::packet::{ipproto, Fragment, IcmpMessage, PacketInfo, TcpFlags, Transport};
use conntrack::{Entry, Key, Origin, Table};
pub use types::{
    DropReason, FilterLimits, FilterStats, Verdict, DEFAULT_MAX_FLOWS, ICMP_TIMEOUT,
    TCP_ESTABLISHED_TIMEOUT, TCP_TRANSITORY_TIMEOUT, UDP_TIMEOUT,
};

/// A rule with its selectors parsed once, so matching a packet allocates nothing.
#[derive(Debug)]
struct Rule {
    sources: Vec<Selector>,
    proto: Protocol,
    ports: Vec<PortRange>,
}

impl Rule {
    /// Same decision as [`FilterRule::admits`]; selectors that do not parse match nobody.
    fn admits(&self, peer: &Node, proto: Protocol, port: u16) -> bool {
        self.proto.covers(proto)
            && (proto == Protocol::Icmp || self.ports.iter().any(|p| p.contains(port)))
            && self.sources.iter().any(|s| s.matches(peer))
    }
}

/// The inbound packet filter of one node.
#[derive(Debug)]
pub struct PacketFilter {
    limits: FilterLimits,
    source: Vec<FilterRule>,
    rules: Vec<Rule>,
    /// Bumped whenever what the rules admit may have changed.
    generation: u64,
    table: Table,
    stats: FilterStats,
}

enum Accepted {
    Tracked,
    Rule,
    Fragment,
}

impl PacketFilter {
    /// A filter with no rules: only replies to this node's own flows pass.
    pub fn new(limits: FilterLimits) -> Self {
        PacketFilter {
            limits,
            source: Vec::new(),
            rules: Vec::new(),
            generation: 0,
            table: Table::new(limits.max_flows),
            stats: FilterStats::default(),
        }
    }

    /// Installs the netmap's rules. Flows admitted under other rules are checked again on
    /// their next packet. Setting the same rules again changes nothing.
    pub fn set_rules(&mut self, rules: Vec<FilterRule>) {
        if rules == self.source {
            return;
        }
        self.rules = rules
            .iter()
            .map(|r| Rule {
                sources: r.src.iter().filter_map(|s| s.parse().ok()).collect(),
                proto: r.proto,
                ports: r.ports.clone(),
            })
            .filter(|r| !r.sources.is_empty())
            .collect();
        self.source = rules;
        self.revalidate();
    }

    /// Makes every flow a rule admitted be checked again on its next packet. Call when peers'
    /// names or tags change.
    pub fn revalidate(&mut self) {
        self.generation += 1;
    }

    /// Records a packet this node sends. UDP, a TCP SYN, an ICMP echo request or another
    /// protocol opens a flow whose replies will pass; other packets only refresh their flow.
    pub fn outbound(&mut self, packet: &PacketInfo, now: Instant) {
        let Some(flow) = packet.flow() else { return };
        let key = Key::sent(&flow);
        let flags = tcp_flags(packet);
        if let Some(entry) = self.table.get_mut(&key, now) {
            touch(entry, &self.limits, flow.protocol, false, flags, now);
            return;
        }
        let opens = match packet.transport {
            Transport::Tcp { flags, .. } => flags.is_initial_syn(),
            Transport::Icmp(icmp) => matches!(icmp.message, IcmpMessage::EchoRequest { .. }),
            Transport::Udp { .. } | Transport::Other => true,
        };
        if opens {
            let mut entry = Entry::new(Origin::Local, now);
            touch(&mut entry, &self.limits, flow.protocol, false, flags, now);
            self.table.insert(key, entry);
        }
    }

    /// Decides on a packet received from `peer` (whose inner source has been checked).
    pub fn inbound(&mut self, packet: &PacketInfo, peer: &Node, now: Instant) -> Verdict {
        match self.decide(packet, peer, now) {
            Ok(Accepted::Tracked) => self.stats.accepted_tracked += 1,
            Ok(Accepted::Rule) => self.stats.accepted_by_rule += 1,
            Ok(Accepted::Fragment) => self.stats.accepted_fragments += 1,
            Err(reason) => {
                self.stats.drops[reason as usize] += 1;
                return Verdict::Drop(reason);
            }
        }
        Verdict::Accept
    }

    fn decide(
        &mut self,
        p: &PacketInfo,
        peer: &Node,
        now: Instant,
    ) -> Result<Accepted, DropReason> {
        if let Fragment::Later { offset } = p.fragment {
            if offset == 1 && p.protocol == ipproto::TCP {
                return Err(DropReason::TinyFragment);
            }
            return Ok(Accepted::Fragment);
        }
        let (proto, port) = match p.transport {
            Transport::Tcp { dst_port, .. } => (Protocol::Tcp, dst_port),
            Transport::Udp { dst_port, .. } => (Protocol::Udp, dst_port),
            Transport::Icmp(icmp) => match icmp.message {
                IcmpMessage::Error { original } => {
                    // The quoted packet is one we sent: its source is the error's destination.
                    let ours = original.filter(|o| o.src == p.dst).and_then(|o| {
                        let entry = self.table.peek(&Key::sent(&o), now)?;
                        self.live(entry).then_some(())
                    });
                    return ours
                        .map(|()| Accepted::Tracked)
                        .ok_or(DropReason::UnsolicitedIcmpError);
                }
                IcmpMessage::EchoReply { .. } => {
                    let tracked = p
                        .flow()
                        .and_then(|f| self.table.peek(&Key::received(&f), now));
                    if !tracked.is_some_and(|e| e.origin == Origin::Local) {
                        return Err(DropReason::UnsolicitedReply);
                    }
                    (Protocol::Icmp, 0)
                }
                IcmpMessage::EchoRequest { .. } | IcmpMessage::Other => (Protocol::Icmp, 0),
            },
            Transport::Other => (Protocol::Any, 0),
        };
        let Some(flow) = p.flow() else {
            // ICMP other than echo: informational, admitted as `icmp` and not tracked.
            return match self.rules.iter().any(|r| r.admits(peer, proto, port)) {
                true => Ok(Accepted::Rule),
                false => Err(DropReason::NoRule),
            };
        };
        let key = Key::received(&flow);
        let flags = tcp_flags(p);
        if let Some(entry) = self.table.get_mut(&key, now) {
            let verdict = match entry.origin {
                Origin::Local => Ok(Accepted::Tracked),
                Origin::Remote {
                    peer: id,
                    generation,
                    admitted,
                } if generation == self.generation && id == peer.id => match admitted {
                    true => Ok(Accepted::Tracked),
                    false => Err(DropReason::NoRule),
                },
                Origin::Remote { .. } => {
                    // Admitted under older rules or for another peer (an address that moved):
                    // ask the current rules, and remember a refusal so our own replies cannot
                    // turn the flow into one of ours.
                    let admitted = proto != Protocol::Any
                        && self.rules.iter().any(|r| r.admits(peer, proto, port));
                    entry.origin = Origin::Remote {
                        peer: peer.id,
                        generation: self.generation,
                        admitted,
                    };
                    admitted.then_some(Accepted::Rule).ok_or(DropReason::NoRule)
                }
            };
            if verdict.is_ok() {
                touch(entry, &self.limits, flow.protocol, true, flags, now);
            }
            return verdict;
        }
        if proto == Protocol::Any {
            return Err(DropReason::UnsupportedProtocol);
        }
        if !self.rules.iter().any(|r| r.admits(peer, proto, port)) {
            return Err(DropReason::NoRule);
        }
        let origin = Origin::Remote {
            peer: peer.id,
            generation: self.generation,
            admitted: true,
        };
        let mut entry = Entry::new(origin, now);
        touch(&mut entry, &self.limits, flow.protocol, true, flags, now);
        self.table.insert(key, entry);
        Ok(Accepted::Rule)
    }

    /// Whether packets of a tracked flow pass without asking the rules.
    fn live(&self, entry: &Entry) -> bool {
        match entry.origin {
            Origin::Local => true,
            Origin::Remote {
                generation,
                admitted,
                ..
            } => admitted && generation == self.generation,
        }
    }

    /// Forgets flows idle past their timeout; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        self.table.expire(now)
    }

    /// Flows tracked now.
    pub fn flows(&self) -> usize {
        self.table.len()
    }

    /// Counters and the current number of flows.
    pub fn stats(&self) -> FilterStats {
        FilterStats {
            flows: self.table.len(),
            evicted: self.table.evicted,
            expired: self.table.expired,
            ..self.stats
        }
    }
}

fn tcp_flags(p: &PacketInfo) -> Option<TcpFlags> {
    match p.transport {
        Transport::Tcp { flags, .. } => Some(flags),
        _ => None,
    }
}

/// Notes a packet of a flow (`remote`: sent by the peer) and pushes its deadline out.
fn touch(
    e: &mut Entry,
    l: &FilterLimits,
    protocol: u8,
    remote: bool,
    tcp: Option<TcpFlags>,
    now: Instant,
) {
    if let Some(flags) = tcp {
        if flags.is_initial_syn() && (e.reset || (e.fin_local && e.fin_remote)) {
            // The 5-tuple is reused for a new connection.
            (e.reset, e.fin_local, e.fin_remote) = (false, false, false);
            (e.seen_local, e.seen_remote) = (false, false);
        }
        e.reset |= flags.contains(TcpFlags::RST);
        let fin = flags.contains(TcpFlags::FIN);
        if remote {
            e.fin_remote |= fin;
        } else {
            e.fin_local |= fin;
        }
    }
    if remote {
        e.seen_remote = true;
    } else {
        e.seen_local = true;
    }
    let timeout = match protocol {
        ipproto::TCP if e.reset || (e.fin_local && e.fin_remote) => l.tcp_transitory_timeout,
        ipproto::TCP if e.seen_local && e.seen_remote => l.tcp_established_timeout,
        ipproto::TCP => l.tcp_transitory_timeout,
        ipproto::ICMP | ipproto::ICMPV6 => l.icmp_timeout,
        _ => l.udp_timeout,
    };
    e.deadline = now
        .checked_add(timeout)
        .or_else(|| now.checked_add(ICMP_TIMEOUT))
        .unwrap_or(now);
}
