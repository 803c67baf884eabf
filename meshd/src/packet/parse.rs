//! The parser behind [`super::parse`]: IPv4 header, IPv6 extension-header walk, transport
//! headers, and the header an ICMP error quotes. Every index is checked against a length first;
//! no allocation, no panic on any input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{
    ipproto, Flow, Fragment, Icmp, IcmpMessage, PacketError, PacketInfo, TcpFlags, Transport,
    MAX_EXTENSION_HEADERS,
};

/// Parses one IP packet. `buf` may be longer than the packet; it may not be shorter.
pub fn parse(buf: &[u8]) -> Result<PacketInfo, PacketError> {
    let ip = ip_header(buf, false)?;
    let l4 = &buf[ip.l4_start..ip.end];
    let v6 = ip.src.is_ipv6();
    let transport = match ip.protocol {
        _ if matches!(ip.fragment, Fragment::Later { .. }) => Transport::Other,
        ipproto::TCP => {
            need(ip.protocol, l4, 20)?;
            let data_offset = l4[12] >> 4;
            if data_offset < 5 || usize::from(data_offset) * 4 > l4.len() {
                return Err(PacketError::BadTcpDataOffset(data_offset));
            }
            Transport::Tcp {
                src_port: be16(l4, 0),
                dst_port: be16(l4, 2),
                flags: TcpFlags(l4[13]),
            }
        }
        ipproto::UDP => {
            need(ip.protocol, l4, 8)?;
            let udp_len = be16(l4, 4);
            // A fragment's UDP length covers the whole datagram, not this piece.
            if ip.fragment == Fragment::Unfragmented
                && (udp_len < 8 || usize::from(udp_len) > l4.len())
            {
                return Err(PacketError::BadUdpLength(udp_len));
            }
            Transport::Udp {
                src_port: be16(l4, 0),
                dst_port: be16(l4, 2),
            }
        }
        ipproto::ICMP if !v6 => Transport::Icmp(icmp(ip.protocol, l4, false)?),
        ipproto::ICMPV6 if v6 => Transport::Icmp(icmp(ip.protocol, l4, true)?),
        _ => Transport::Other,
    };
    Ok(PacketInfo {
        src: ip.src,
        dst: ip.dst,
        protocol: ip.protocol,
        header_len: ip.l4_start,
        total_len: ip.end,
        fragment: ip.fragment,
        transport,
    })
}

fn icmp(protocol: u8, l4: &[u8], v6: bool) -> Result<Icmp, PacketError> {
    need(protocol, l4, 8)?;
    let (icmp_type, code) = (l4[0], l4[1]);
    let (id, seq) = (be16(l4, 4), be16(l4, 6));
    let message = match (v6, icmp_type) {
        (false, 8) | (true, 128) => IcmpMessage::EchoRequest { id, seq },
        (false, 0) | (true, 129) => IcmpMessage::EchoReply { id, seq },
        (false, 3 | 11 | 12) | (true, 1..=4) => IcmpMessage::Error {
            original: quoted_flow(&l4[8..], v6),
        },
        _ => IcmpMessage::Other,
    };
    Ok(Icmp {
        icmp_type,
        code,
        message,
    })
}

/// The flow of the packet an ICMP error quotes: its header and at least 8 bytes after it,
/// usually truncated, so lengths past the buffer are allowed here.
fn quoted_flow(quoted: &[u8], v6: bool) -> Option<Flow> {
    let ip = ip_header(quoted, true).ok()?;
    if ip.src.is_ipv6() != v6 || matches!(ip.fragment, Fragment::Later { .. }) {
        return None;
    }
    let l4 = &quoted[ip.l4_start..ip.end];
    let (src_port, dst_port) = match ip.protocol {
        ipproto::TCP | ipproto::UDP if l4.len() >= 4 => (be16(l4, 0), be16(l4, 2)),
        ipproto::ICMP | ipproto::ICMPV6 if l4.len() >= 8 => match (l4[0], v6) {
            (8, false) | (128, true) => (be16(l4, 4), 0),
            (0, false) | (129, true) => (0, be16(l4, 4)),
            _ => return None,
        },
        ipproto::TCP | ipproto::UDP | ipproto::ICMP | ipproto::ICMPV6 => return None,
        _ => (0, 0),
    };
    Some(Flow {
        protocol: ip.protocol,
        src: ip.src,
        dst: ip.dst,
        src_port,
        dst_port,
    })
}

struct IpHeader {
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    l4_start: usize,
    end: usize,
    fragment: Fragment,
}

/// Parses the IP header (and IPv6 extension headers). `truncated_ok`: a total length past the
/// buffer is cut to the buffer instead of refused (for quoted headers in ICMP errors).
fn ip_header(buf: &[u8], truncated_ok: bool) -> Result<IpHeader, PacketError> {
    let first = *buf.first().ok_or(PacketError::Empty)?;
    let (min, version) = match first >> 4 {
        4 => (20, 4),
        6 => (40, 6),
        v => return Err(PacketError::UnknownVersion(v)),
    };
    if buf.len() < min {
        return Err(PacketError::TruncatedHeader {
            need: min,
            have: buf.len(),
        });
    }
    let (header, total) = if version == 4 {
        let ihl = first & 0x0f;
        if ihl < 5 {
            return Err(PacketError::BadIhl(ihl));
        }
        (usize::from(ihl) * 4, usize::from(be16(buf, 2)))
    } else {
        (40, 40 + usize::from(be16(buf, 4)))
    };
    if total < header {
        return Err(PacketError::TotalLengthTooSmall { total, header });
    }
    if header > buf.len() {
        return Err(PacketError::TruncatedHeader {
            need: header,
            have: buf.len(),
        });
    }
    let end = match total > buf.len() {
        true if truncated_ok => buf.len(),
        true => {
            return Err(PacketError::TotalLengthExceedsBuffer {
                total,
                buffer: buf.len(),
            })
        }
        false => total,
    };
    if version == 4 {
        let frag = be16(buf, 6);
        let offset = frag & 0x1fff;
        let fragment = match (offset, frag & 0x2000 != 0) {
            (0, false) => Fragment::Unfragmented,
            (0, true) => Fragment::First,
            (offset, _) => Fragment::Later { offset },
        };
        return Ok(IpHeader {
            src: Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]).into(),
            dst: Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]).into(),
            protocol: buf[9],
            l4_start: header,
            end,
            fragment,
        });
    }
    let (mut src, mut dst) = ([0u8; 16], [0u8; 16]);
    src.copy_from_slice(&buf[8..24]);
    dst.copy_from_slice(&buf[24..40]);
    let (protocol, l4_start, fragment) = walk_extensions(buf, buf[6], end)?;
    Ok(IpHeader {
        src: Ipv6Addr::from(src).into(),
        dst: Ipv6Addr::from(dst).into(),
        protocol,
        l4_start,
        end,
        fragment,
    })
}

/// Walks IPv6 extension headers from offset 40 up to `end`: the upper-layer protocol, where its
/// header starts, and the fragment position. Stops at a later fragment's header.
fn walk_extensions(
    buf: &[u8],
    first: u8,
    end: usize,
) -> Result<(u8, usize, Fragment), PacketError> {
    let (mut next, mut off, mut fragment) = (first, 40usize, Fragment::Unfragmented);
    for i in 0..=MAX_EXTENSION_HEADERS {
        let fixed_len = match next {
            ipproto::HOP_BY_HOP if i > 0 => return Err(PacketError::MisplacedHopByHop),
            ipproto::FRAGMENT => Some(8),
            ipproto::HOP_BY_HOP
            | ipproto::AH
            | ipproto::ROUTING
            | ipproto::DEST_OPTS
            | ipproto::MOBILITY
            | ipproto::HIP
            | ipproto::SHIM6 => None,
            _ => return Ok((next, off, fragment)),
        };
        if i == MAX_EXTENSION_HEADERS {
            return Err(PacketError::TooManyExtensionHeaders);
        }
        let hdr = buf
            .get(off..end)
            .filter(|h| h.len() >= 8)
            .ok_or(PacketError::TruncatedExtensionHeader(next))?;
        let len = match (fixed_len, next) {
            (Some(n), _) => n,
            (None, ipproto::AH) => (usize::from(hdr[1]) + 2) * 4,
            (None, _) => (usize::from(hdr[1]) + 1) * 8,
        };
        if len > hdr.len() {
            return Err(PacketError::TruncatedExtensionHeader(next));
        }
        if next == ipproto::FRAGMENT {
            let frag = be16(hdr, 2);
            let offset = frag >> 3;
            if offset > 0 {
                return Ok((hdr[0], off + len, Fragment::Later { offset }));
            }
            if frag & 1 != 0 {
                fragment = Fragment::First;
            }
        }
        next = hdr[0];
        off += len;
    }
    Err(PacketError::TooManyExtensionHeaders)
}

fn need(protocol: u8, l4: &[u8], need: usize) -> Result<(), PacketError> {
    if l4.len() < need {
        return Err(PacketError::TruncatedTransport {
            protocol,
            need,
            have: l4.len(),
        });
    }
    Ok(())
}

/// Big-endian u16 at `i`; callers have checked `i + 2 <= b.len()`.
fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}
