//! A SOCKS5 proxy (RFC 1928; CONNECT only, no authentication) through which local programs reach
//! mesh peers in userspace mode. The wire format is parsed by pure functions
//! ([`parse_greeting`], [`parse_request`]) that never panic on any input; [`serve`] is the
//! loopback listener. Names are resolved against the netmap only: a name that is not a peer's
//! answers "host unreachable".

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, trace};

use super::handle::Stack;

pub const VERSION: u8 = 5;
pub const NO_AUTH: u8 = 0x00;
pub const NO_ACCEPTABLE: u8 = 0xff;
pub const CMD_CONNECT: u8 = 0x01;
const ATYP_V4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_V6: u8 = 0x04;
/// Longest request: 4 header + 1 length + 255 name + 2 port.
pub const MAX_REQUEST: usize = 262;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The client's first message: which authentication methods it offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub methods: Vec<u8>,
}

/// Where the client wants to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Ip(SocketAddr),
    /// A name (as sent, at most 255 bytes of UTF-8) and a port.
    Domain(String, u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command: u8,
    pub target: Target,
}

/// Malformed client messages.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Socks5Error {
    #[error("not SOCKS5 (version byte {0})")]
    Version(u8),
    #[error("no authentication methods offered")]
    NoMethods,
    #[error("reserved byte is {0}, not 0")]
    Reserved(u8),
    #[error("address type {0} is not supported")]
    AddressType(u8),
    #[error("the domain name is empty or not UTF-8")]
    Domain,
}

impl Socks5Error {
    /// The reply code sent before closing, if the request got that far.
    pub fn reply(&self) -> Reply {
        match self {
            Socks5Error::AddressType(_) => Reply::AddressTypeNotSupported,
            Socks5Error::Domain => Reply::HostUnreachable,
            _ => Reply::GeneralFailure,
        }
    }
}

/// Reply codes (RFC 1928 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    Succeeded = 0x00,
    GeneralFailure = 0x01,
    NotAllowed = 0x02,
    NetworkUnreachable = 0x03,
    HostUnreachable = 0x04,
    ConnectionRefused = 0x05,
    TtlExpired = 0x06,
    CommandNotSupported = 0x07,
    AddressTypeNotSupported = 0x08,
}

/// What the parsers answer: `Ok(None)` when more bytes are needed, else the message and the
/// number of bytes it used.
pub type Parsed<T> = Result<Option<(T, usize)>, Socks5Error>;

/// Parses a greeting. `Ok(None)`: more bytes needed; `Ok(Some((g, n)))`: `n` bytes used.
pub fn parse_greeting(buf: &[u8]) -> Parsed<Greeting> {
    let Some(&ver) = buf.first() else {
        return Ok(None);
    };
    if ver != VERSION {
        return Err(Socks5Error::Version(ver));
    }
    let Some(&n) = buf.get(1) else {
        return Ok(None);
    };
    if n == 0 {
        return Err(Socks5Error::NoMethods);
    }
    let end = 2 + n as usize;
    let Some(methods) = buf.get(2..end) else {
        return Ok(None);
    };
    Ok(Some((
        Greeting {
            methods: methods.to_vec(),
        },
        end,
    )))
}

/// Parses a request. `Ok(None)`: more bytes needed; `Ok(Some((r, n)))`: `n` bytes used.
pub fn parse_request(buf: &[u8]) -> Parsed<Request> {
    let Some(head) = buf.get(..4) else {
        if let Some(&v) = buf.first() {
            if v != VERSION {
                return Err(Socks5Error::Version(v));
            }
        }
        return Ok(None);
    };
    let (ver, command, rsv, atyp) = (head[0], head[1], head[2], head[3]);
    if ver != VERSION {
        return Err(Socks5Error::Version(ver));
    }
    if rsv != 0 {
        return Err(Socks5Error::Reserved(rsv));
    }
    let rest = &buf[4..];
    let port_at = |i: usize| -> Option<u16> {
        let p = rest.get(i..i + 2)?;
        Some(u16::from_be_bytes([p[0], p[1]]))
    };
    let (target, used) = match atyp {
        ATYP_V4 => {
            let (Some(a), Some(port)) = (rest.get(..4), port_at(4)) else {
                return Ok(None);
            };
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            (Target::Ip(SocketAddr::new(ip.into(), port)), 4 + 6)
        }
        ATYP_V6 => {
            let (Some(a), Some(port)) = (rest.get(..16), port_at(16)) else {
                return Ok(None);
            };
            let mut o = [0u8; 16];
            o.copy_from_slice(a);
            let ip = Ipv6Addr::from(o);
            (Target::Ip(SocketAddr::new(ip.into(), port)), 4 + 18)
        }
        ATYP_DOMAIN => {
            let Some(&len) = rest.first() else {
                return Ok(None);
            };
            let len = len as usize;
            let (Some(name), Some(port)) = (rest.get(1..1 + len), port_at(1 + len)) else {
                return Ok(None);
            };
            let name = std::str::from_utf8(name).map_err(|_| Socks5Error::Domain)?;
            if name.is_empty() {
                return Err(Socks5Error::Domain);
            }
            (Target::Domain(name.to_owned(), port), 4 + 1 + len + 2)
        }
        other => return Err(Socks5Error::AddressType(other)),
    };
    Ok(Some((Request { command, target }, used)))
}

/// Encodes a reply with the bound address (all zeros when there is none).
pub fn encode_reply(reply: Reply, bound: Option<SocketAddr>) -> Vec<u8> {
    let bound = bound.unwrap_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let mut out = vec![VERSION, reply as u8, 0];
    match bound.ip() {
        IpAddr::V4(a) => {
            out.push(ATYP_V4);
            out.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.push(ATYP_V6);
            out.extend_from_slice(&a.octets());
        }
    }
    out.extend_from_slice(&bound.port().to_be_bytes());
    out
}

/// Resolves a peer's name or fqdn to its mesh address.
pub type Resolver = Arc<dyn Fn(&str) -> Option<IpAddr> + Send + Sync>;

/// Serves SOCKS5 clients on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, stack: Stack, resolve: Resolver) {
    loop {
        let (client, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!("socks5 accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let stack = stack.clone();
        let resolve = resolve.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(client, &stack, &resolve).await {
                debug!(%from, "socks5: {e}");
            }
        });
    }
}

/// Reads until `parse` has a whole message, at most `MAX_REQUEST` bytes.
async fn read_msg<T>(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    parse: fn(&[u8]) -> Parsed<T>,
) -> io::Result<Result<T, Socks5Error>> {
    loop {
        match parse(buf) {
            Ok(Some((msg, used))) => {
                buf.drain(..used);
                return Ok(Ok(msg));
            }
            Ok(None) => {}
            Err(e) => return Ok(Err(e)),
        }
        if buf.len() >= MAX_REQUEST {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request too long",
            ));
        }
        let mut chunk = [0u8; MAX_REQUEST];
        let n = client.read(&mut chunk[..MAX_REQUEST - buf.len()]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn handle(mut client: TcpStream, stack: &Stack, resolve: &Resolver) -> io::Result<()> {
    client.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(MAX_REQUEST);
    let handshake = async {
        let greeting = match read_msg(&mut client, &mut buf, parse_greeting).await? {
            Ok(g) => g,
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        };
        if !greeting.methods.contains(&NO_AUTH) {
            client.write_all(&[VERSION, NO_ACCEPTABLE]).await?;
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "client offers no method we accept (only \"no authentication\")",
            ));
        }
        client.write_all(&[VERSION, NO_AUTH]).await?;
        match read_msg(&mut client, &mut buf, parse_request).await? {
            Ok(r) => Ok(r),
            Err(e) => {
                client.write_all(&encode_reply(e.reply(), None)).await?;
                Err(io::Error::new(io::ErrorKind::InvalidData, e))
            }
        }
    };
    let req = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))??;
    if req.command != CMD_CONNECT {
        client
            .write_all(&encode_reply(Reply::CommandNotSupported, None))
            .await?;
        return Ok(());
    }
    let remote = match &req.target {
        Target::Ip(a) => *a,
        Target::Domain(name, port) => match resolve(name) {
            Some(ip) => SocketAddr::new(ip, *port),
            None => {
                client
                    .write_all(&encode_reply(Reply::HostUnreachable, None))
                    .await?;
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{name} is not a peer"),
                ));
            }
        },
    };
    trace!(%remote, "socks5 connect");
    let conn = match tokio::time::timeout(CONNECT_TIMEOUT, stack.connect(remote)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let code = match e.kind() {
                io::ErrorKind::ConnectionRefused => Reply::ConnectionRefused,
                io::ErrorKind::AddrNotAvailable => Reply::NetworkUnreachable,
                _ => Reply::GeneralFailure,
            };
            client.write_all(&encode_reply(code, None)).await?;
            return Err(e);
        }
        Err(_) => {
            client
                .write_all(&encode_reply(Reply::HostUnreachable, None))
                .await?;
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from {remote}"),
            ));
        }
    };
    client
        .write_all(&encode_reply(Reply::Succeeded, Some(conn.local)))
        .await?;
    super::splice(conn, client, buf).await
}

#[cfg(test)]
#[path = "socks5_tests.rs"]
mod tests;
