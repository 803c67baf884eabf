//! Interface addresses through rtnetlink: `RTM_NEWADDR` with an acknowledgement, so a refusal
//! comes back as an error. The prefix length makes the kernel add the route for the whole mesh
//! prefix through the interface, so no separate route is needed. IPv6 addresses skip duplicate
//! address detection (nothing else owns an address on our own TUN device).

use std::io;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::constants::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

/// Adds `net` (address and prefix length) to the interface `index`, or keeps it if present.
pub fn add_address(index: u32, net: IpNet) -> io::Result<()> {
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    msg.header.prefix_len = net.prefix_len();
    msg.header.family = match net.addr() {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.attributes.push(AddressAttribute::Address(net.addr()));
    match net {
        IpNet::V4(v4) => {
            msg.attributes.push(AddressAttribute::Local(net.addr()));
            msg.attributes
                .push(AddressAttribute::Broadcast(v4.broadcast()));
        }
        IpNet::V6(_) => msg
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad)),
    }
    request(RouteNetlinkMessage::NewAddress(msg))
}

/// Sends one request and waits for its acknowledgement.
fn request(payload: RouteNetlinkMessage) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
    header.sequence_number = 1;
    let mut req = NetlinkMessage::new(header, NetlinkPayload::from(payload));
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut rx = vec![0u8; 8192];
    // The kernel answers a request on a fresh socket with one message: the acknowledgement.
    for _ in 0..16 {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut off = 0;
        while off < n {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[off..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            if let NetlinkPayload::Error(e) = msg.payload {
                return match e.code {
                    None => Ok(()),
                    Some(_) => Err(e.to_io()),
                };
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "no acknowledgement from rtnetlink",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_request_is_an_error() {
        // No such interface (as root: ENODEV; otherwise EPERM): either way the kernel's answer
        // is read and reported, not lost.
        let net: IpNet = "192.0.2.1/24".parse().unwrap_or_else(|_| IpNet::default());
        let e = add_address(u32::MAX - 7, net).err();
        assert!(e.is_some_and(|e| e.raw_os_error().is_some()));
    }
}
