//! The idle connections of one funnel on one node, the most recently used last: which one a
//! request takes and which ones are kept. No I/O; the pool ([`super::nodes`]) keeps a list per
//! node and funnel name.
//!
//! A request costs O(1) in the usual case (the newest connection is ready): connections are not
//! all looked at on every take and put, so a busy funnel with many pooled connections does not
//! pay for each of them per request. Stale ones (closed, or idle past the timeout) are dropped
//! when a take passes them, when a put finds the list full, and by the pool's periodic sweep.

use std::time::{Duration, Instant};

/// What the list needs to know of a connection.
pub(crate) trait Conn {
    /// The connection is gone (the node closed it, or it failed). May look at the connection
    /// (a read that does not wait), hence `&mut`.
    fn is_closed(&mut self) -> bool;
    /// The connection can take a request now.
    fn is_ready(&self) -> bool;
}

#[derive(Debug)]
pub(crate) struct IdleList<C> {
    /// Each connection with the time it became idle; the most recent last.
    conns: Vec<(C, Instant)>,
}

impl<C> Default for IdleList<C> {
    fn default() -> Self {
        Self { conns: Vec::new() }
    }
}

impl<C: Conn> IdleList<C> {
    /// The most recently used connection that is open, idle for less than `timeout`, and ready.
    /// Stale connections passed on the way are dropped; open ones not ready yet stay.
    pub(crate) fn take(&mut self, now: Instant, timeout: Duration) -> Option<C> {
        for i in (0..self.conns.len()).rev() {
            let (c, since) = &mut self.conns[i];
            if !usable(c, *since, now, timeout) {
                self.conns.remove(i);
            } else if c.is_ready() {
                return Some(self.conns.remove(i).0);
            }
        }
        None
    }

    /// Keeps `c` for a later request, unless it is closed or `max` usable ones are kept already.
    pub(crate) fn put(&mut self, mut c: C, now: Instant, timeout: Duration, max: usize) {
        if c.is_closed() {
            return;
        }
        if self.conns.len() >= max {
            self.sweep(now, timeout);
        }
        if self.conns.len() < max {
            self.conns.push((c, now));
        }
    }

    /// Drops every closed connection and every one idle for `timeout` or longer.
    pub(crate) fn sweep(&mut self, now: Instant, timeout: Duration) {
        self.conns
            .retain_mut(|(c, since)| usable(c, *since, now, timeout));
    }

    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

fn usable<C: Conn>(c: &mut C, since: Instant, now: Instant, timeout: Duration) -> bool {
    !c.is_closed() && now.saturating_duration_since(since) < timeout
}

#[cfg(test)]
#[path = "idle_tests.rs"]
mod tests;
