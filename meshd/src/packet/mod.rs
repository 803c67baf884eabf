//! IP packet parsing for the data plane: [`parse`] turns one IPv4 or IPv6 packet (read from the
//! TUN device or decrypted from a peer) into a [`PacketInfo`], checking every length it relies
//! on. After that nothing reads the bytes again, so no accessor can fail.
//!
//! Contract: no I/O, no allocation, and no panic on any input (a mutation-fuzz test feeds it
//! garbage); a malformed packet is a [`PacketError`], one variant per cause. Checksums are not
//! verified here: the receiving stack does that. [`build`] makes packets with correct checksums.

use std::net::IpAddr;

pub mod build;
#[cfg(test)]
mod fuzz_tests;
mod parse;
#[cfg(test)]
mod tests;

pub use parse::parse;

/// IANA protocol numbers the data plane looks at.
pub mod ipproto {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const NO_NEXT_HEADER: u8 = 59;
    pub const DEST_OPTS: u8 = 60;
    pub const MOBILITY: u8 = 135;
    pub const HIP: u8 = 139;
    pub const SHIM6: u8 = 140;
}

/// Most IPv6 extension headers [`parse`] walks before refusing the packet.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// Why bytes are not a packet we handle. Every variant means the sender misbehaved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("empty packet")]
    Empty,
    #[error("IP version {0} is neither 4 nor 6")]
    UnknownVersion(u8),
    #[error("{have} bytes cannot hold the {need}-byte IP header")]
    TruncatedHeader { need: usize, have: usize },
    #[error("IPv4 header length of {0} words is below the minimum of 5")]
    BadIhl(u8),
    #[error("IP total length {total} is less than the header length {header}")]
    TotalLengthTooSmall { total: usize, header: usize },
    #[error("IP total length {total} exceeds the {buffer} bytes received")]
    TotalLengthExceedsBuffer { total: usize, buffer: usize },
    #[error("IPv6 extension header {0} runs past the end of the packet")]
    TruncatedExtensionHeader(u8),
    #[error("more than {MAX_EXTENSION_HEADERS} IPv6 extension headers")]
    TooManyExtensionHeaders,
    #[error("IPv6 hop-by-hop options not directly after the fixed header")]
    MisplacedHopByHop,
    #[error("protocol {protocol} header needs {need} bytes, {have} present")]
    TruncatedTransport {
        protocol: u8,
        need: usize,
        have: usize,
    },
    #[error("TCP data offset of {0} words is below 5 or past the packet")]
    BadTcpDataOffset(u8),
    #[error("UDP length {0} is below 8 or past the IP payload")]
    BadUdpLength(u16),
}

/// A parsed packet: addresses, protocol, lengths and the transport fields the filter uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The upper-layer protocol number: for IPv6, the first header after the extension headers.
    pub protocol: u8,
    /// Bytes before the transport header (IP header, options and extension headers).
    pub header_len: usize,
    /// The packet's length by its own header; at most the buffer's (trailing bytes are ignored).
    pub total_len: usize,
    pub fragment: Fragment,
    pub transport: Transport,
}

/// Where a packet sits in a fragmented datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// A whole datagram (an IPv6 "atomic fragment" counts as whole).
    Unfragmented,
    /// The first fragment: it carries the transport header.
    First,
    /// A later fragment, `offset` in 8-byte units: no transport header, so no ports.
    Later { offset: u16 },
}

/// The transport header, as far as the data plane reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        src_port: u16,
        dst_port: u16,
        flags: TcpFlags,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    /// ICMPv4 in IPv4 or ICMPv6 in IPv6.
    Icmp(Icmp),
    /// Another protocol, or a later fragment (which has no transport header).
    Other,
}

/// An ICMPv4 or ICMPv6 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmp {
    pub icmp_type: u8,
    pub code: u8,
    pub message: IcmpMessage,
}

/// What an ICMP message is, for conntrack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpMessage {
    EchoRequest {
        id: u16,
        seq: u16,
    },
    EchoReply {
        id: u16,
        seq: u16,
    },
    /// Destination unreachable, packet too big, time exceeded, parameter problem. `original` is
    /// the flow of the packet it reports on, when the quoted header could be read.
    Error {
        original: Option<Flow>,
    },
    Other,
}

/// TCP flag bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: TcpFlags = TcpFlags(0x01);
    pub const SYN: TcpFlags = TcpFlags(0x02);
    pub const RST: TcpFlags = TcpFlags(0x04);
    pub const PSH: TcpFlags = TcpFlags(0x08);
    pub const ACK: TcpFlags = TcpFlags(0x10);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// SYN without ACK: the packet that opens a connection.
    pub fn is_initial_syn(self) -> bool {
        self.contains(Self::SYN) && !self.contains(Self::ACK)
    }
}

impl std::ops::BitOr for TcpFlags {
    type Output = TcpFlags;
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

/// A packet's 5-tuple as conntrack keys it. For ICMP echo the identifier stands in for the
/// requester's port: a request is `(id, 0)`, its reply `(0, id)`, so a reply's flow is its
/// request's [`reversed`](Flow::reversed). Protocols without ports use `(0, 0)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub protocol: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Flow {
    /// The flow of the replies.
    pub fn reversed(&self) -> Flow {
        Flow {
            protocol: self.protocol,
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

impl PacketInfo {
    /// 4 or 6.
    pub fn version(&self) -> u8 {
        if self.src.is_ipv6() {
            6
        } else {
            4
        }
    }

    /// Source and destination port of TCP and UDP (not of later fragments).
    pub fn ports(&self) -> Option<(u16, u16)> {
        match self.transport {
            Transport::Tcp {
                src_port, dst_port, ..
            }
            | Transport::Udp { src_port, dst_port } => Some((src_port, dst_port)),
            _ => None,
        }
    }

    /// The conntrack flow; `None` for later fragments and for ICMP other than echo.
    pub fn flow(&self) -> Option<Flow> {
        let (src_port, dst_port) = match self.transport {
            _ if matches!(self.fragment, Fragment::Later { .. }) => return None,
            Transport::Tcp {
                src_port, dst_port, ..
            }
            | Transport::Udp { src_port, dst_port } => (src_port, dst_port),
            Transport::Icmp(icmp) => match icmp.message {
                IcmpMessage::EchoRequest { id, .. } => (id, 0),
                IcmpMessage::EchoReply { id, .. } => (0, id),
                IcmpMessage::Error { .. } | IcmpMessage::Other => return None,
            },
            Transport::Other => (0, 0),
        };
        Some(Flow {
            protocol: self.protocol,
            src: self.src,
            dst: self.dst,
            src_port,
            dst_port,
        })
    }
}
