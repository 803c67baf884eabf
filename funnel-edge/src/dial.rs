//! How the proxy reaches a node: a [`Dialer`] opens a byte stream to a mesh address. A TUN-mode
//! edge dials with the kernel ([`TcpDialer`]); a userspace-mode edge plugs in its TCP/IP stack.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A boxed, sendable future (what trait methods return in place of `async fn`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A bidirectional byte stream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Opens streams to mesh addresses. The proxy gives it only a route's node address and
/// [`proto::map::FUNNEL_INGRESS_PORT`]; time limits are the caller's.
pub trait Dialer: Send + Sync + fmt::Debug {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn Io>>>;
}

/// Dials with the host's TCP stack (`TcpStream::connect`), Nagle off.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpDialer;

impl Dialer for TcpDialer {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn Io>>> {
        Box::pin(async move {
            let s = TcpStream::connect(addr).await?;
            // Proxied requests are small writes that should go out at once.
            s.set_nodelay(true)?;
            Ok(Box::new(s) as Box<dyn Io>)
        })
    }
}
