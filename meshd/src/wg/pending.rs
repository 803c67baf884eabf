//! Handshake initiations from keys the netmap does not list yet, kept a moment in case it soon
//! will. A node that joins gets a netmap listing us and sends its initiation at once; our netmap
//! delta adding it often lands a few milliseconds later. Without this, that initiation is dropped
//! and the joiner only retries after boringtun's REKEY_TIMEOUT (5 s).
//!
//! Only initiations that passed mac1 / the rate limiter and whose static key decrypted with our
//! key are offered here, so each entry really was addressed to us. Bounded: one entry per sender
//! key (the latest wins), at most [`MAX_PENDING`] entries, none older than [`PENDING_TTL`]. When
//! full, the oldest entry makes room, because the race this covers lasts milliseconds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keys::PublicKey;

/// Most initiations kept at once.
pub(super) const MAX_PENDING: usize = 64;
/// How long an initiation is kept: less than REKEY_TIMEOUT (5 s), after which the initiator has
/// sent a new one and stopped waiting for an answer to this one.
pub(super) const PENDING_TTL: Duration = Duration::from_secs(3);

/// An initiation as it arrived.
pub(super) struct Pending {
    pub(super) from: SocketAddr,
    pub(super) datagram: Vec<u8>,
    pub(super) at: Instant,
}

#[derive(Default)]
pub(super) struct PendingInits {
    by_key: HashMap<PublicKey, Pending>,
}

impl PendingInits {
    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Keeps an initiation from `key`, replacing an earlier one from the same key. A copy of
    /// the one already kept changes nothing: WireGuard never resends an initiation byte for byte,
    /// so that is someone replaying it, perhaps from elsewhere to take the answer.
    pub(super) fn insert(
        &mut self,
        key: PublicKey,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) {
        if self
            .by_key
            .get(&key)
            .is_some_and(|p| p.datagram == datagram)
        {
            return;
        }
        if !self.by_key.contains_key(&key) && self.by_key.len() >= MAX_PENDING {
            if let Some(oldest) = self
                .by_key
                .iter()
                .min_by_key(|(_, p)| p.at)
                .map(|(k, _)| *k)
            {
                self.by_key.remove(&oldest);
            }
        }
        self.by_key.insert(
            key,
            Pending {
                from,
                datagram: datagram.to_vec(),
                at: now,
            },
        );
    }

    /// Forgets entries older than [`PENDING_TTL`].
    pub(super) fn expire(&mut self, now: Instant) {
        self.by_key.retain(|_, p| !is_stale(p, now));
    }

    /// Removes and returns the fresh entries whose key `known` accepts; drops stale ones.
    pub(super) fn take_known(
        &mut self,
        now: Instant,
        known: impl Fn(&PublicKey) -> bool,
    ) -> Vec<Pending> {
        let keys: Vec<PublicKey> = self.by_key.keys().filter(|k| known(k)).copied().collect();
        let mut out: Vec<Pending> = keys
            .iter()
            .filter_map(|k| self.by_key.remove(k))
            .filter(|p| !is_stale(p, now))
            .collect();
        // In arrival order, so replays behave as the datagrams would have.
        out.sort_by_key(|p| p.at);
        out
    }
}

fn is_stale(p: &Pending, now: Instant) -> bool {
    now.saturating_duration_since(p.at) > PENDING_TTL
}
