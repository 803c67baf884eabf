//! The edge's own HTTP/1.1 client for requests without a body, to a node's funnel ingress.
//!
//! Most requests through a funnel are pages and assets: no body, no protocol switch. For those the
//! requesting task writes the request and reads the answer itself ([`Conn`], [`Fetched`]),
//! without hyper's client connection task and the channels between it and the request. A request
//! with a body or an upgrade goes through hyper's client ([`super::nodes`]), which streams the
//! body while the answer arrives. The wire work is without I/O ([`head`], [`chunked`]).

pub(crate) mod chunked;
mod conn;
pub(crate) mod head;

pub(crate) use conn::{Conn, FetchError, Fetched};

#[cfg(test)]
mod chunked_tests;
#[cfg(test)]
mod conn_tests;
#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod head_tests;
