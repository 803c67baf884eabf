//! The filter's vocabulary: limits and timeouts, verdicts, drop reasons and counters. Plain
//! data.

use std::time::Duration;

/// Idle time after which a UDP flow (or one of another protocol) is forgotten.
pub const UDP_TIMEOUT: Duration = Duration::from_secs(180);
/// Idle time of an established TCP connection: above the 2 h default TCP keepalive interval,
/// so an idle connection with keepalives survives.
pub const TCP_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(3 * 3600);
/// Idle time of a TCP connection being opened or closed (SYN retransmits, TIME_WAIT).
pub const TCP_TRANSITORY_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle time of an ICMP echo exchange.
pub const ICMP_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound of the flow table.
pub const DEFAULT_MAX_FLOWS: usize = 16_384;

/// Bounds of the filter's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterLimits {
    /// Most flows tracked; beyond it the least recently used is evicted.
    pub max_flows: usize,
    pub udp_timeout: Duration,
    pub tcp_established_timeout: Duration,
    pub tcp_transitory_timeout: Duration,
    pub icmp_timeout: Duration,
}

impl Default for FilterLimits {
    fn default() -> Self {
        FilterLimits {
            max_flows: DEFAULT_MAX_FLOWS,
            udp_timeout: UDP_TIMEOUT,
            tcp_established_timeout: TCP_ESTABLISHED_TIMEOUT,
            tcp_transitory_timeout: TCP_TRANSITORY_TIMEOUT,
            icmp_timeout: ICMP_TIMEOUT,
        }
    }
}

/// What to do with an inbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop(DropReason),
}

/// Why an inbound packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// No rule admits this peer for the protocol and port (or no longer does).
    NoRule,
    /// Not TCP, UDP or ICMP, and not a reply to a flow of ours.
    UnsupportedProtocol,
    /// An ICMP echo reply to no echo request of ours.
    UnsolicitedReply,
    /// An ICMP error about no flow of ours.
    UnsolicitedIcmpError,
    /// A TCP fragment at offset 8 bytes, which could overwrite the filtered header (RFC 1858).
    TinyFragment,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 5;
    /// Every reason, in counter order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::NoRule,
        DropReason::UnsupportedProtocol,
        DropReason::UnsolicitedReply,
        DropReason::UnsolicitedIcmpError,
        DropReason::TinyFragment,
    ];

    /// A short stable name, for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NoRule => "no_rule",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::UnsolicitedReply => "unsolicited_reply",
            DropReason::UnsolicitedIcmpError => "unsolicited_icmp_error",
            DropReason::TinyFragment => "tiny_fragment",
        }
    }
}

/// Counters since the filter was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilterStats {
    /// Inbound packets of tracked flows (replies, and flows admitted before).
    pub accepted_tracked: u64,
    /// Inbound packets a rule admitted without a tracked flow.
    pub accepted_by_rule: u64,
    pub accepted_fragments: u64,
    /// Drops, indexed like [`DropReason::ALL`]; see [`FilterStats::dropped`].
    pub drops: [u64; DropReason::COUNT],
    /// Flows tracked now.
    pub flows: usize,
    /// Flows evicted because the table was full.
    pub evicted: u64,
    /// Flows forgotten after their timeout.
    pub expired: u64,
}

impl FilterStats {
    /// Packets dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }
}
