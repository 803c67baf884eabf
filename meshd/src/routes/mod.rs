//! A longest-prefix-match table from IP prefixes to a value (a peer), for both directions of the
//! data plane: [`RouteTable::lookup`] picks the peer an outbound packet goes to, and
//! [`RouteTable::source_allowed`] checks the inner source of a decrypted packet. Allowed IPs
//! are one routing table across all peers, not a per-peer list: a packet from peer A is
//! accepted only if the longest-prefix match of its source is A, so when B owns a more specific
//! prefix inside A's range, A may not use it (DESIGN.md, "Security notes").
//!
//! One hash map per prefix length, probed from the longest populated length down: a lookup is
//! one hash probe per distinct length in use (two or three in a typical mesh of host routes
//! plus a few subnet routes), independent of the number of peers, and never allocates.
//! Pure data; no I/O.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Longest-prefix-match table over IPv4 and IPv6 prefixes.
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    v4: Family<u32, T>,
    v6: Family<u128, T>,
}

impl<T: Copy + Eq> Default for RouteTable<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Eq> RouteTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        RouteTable {
            v4: Family::new(32),
            v6: Family::new(128),
        }
    }

    /// Routes `net` (host bits ignored) to `value`; returns the value it replaces. The same
    /// prefix has one owner: the last insert wins.
    pub fn insert(&mut self, net: IpNet, value: T) -> Option<T> {
        match net {
            IpNet::V4(n) => self.v4.insert(u32::from(n.addr()), n.prefix_len(), value),
            IpNet::V6(n) => self.v6.insert(u128::from(n.addr()), n.prefix_len(), value),
        }
    }

    /// Removes exactly the prefix `net` (host bits ignored); returns its value.
    pub fn remove(&mut self, net: IpNet) -> Option<T> {
        match net {
            IpNet::V4(n) => self.v4.remove(u32::from(n.addr()), n.prefix_len()),
            IpNet::V6(n) => self.v6.remove(u128::from(n.addr()), n.prefix_len()),
        }
    }

    /// Removes every prefix routed to `value` (a peer leaving); returns how many.
    pub fn remove_value(&mut self, value: T) -> usize {
        self.v4.remove_value(value) + self.v6.remove_value(value)
    }

    /// The value of exactly the prefix `net`, not a covering one.
    pub fn get(&self, net: IpNet) -> Option<T> {
        match net {
            IpNet::V4(n) => self.v4.get(u32::from(n.addr()), n.prefix_len()),
            IpNet::V6(n) => self.v6.get(u128::from(n.addr()), n.prefix_len()),
        }
    }

    /// The value of the longest prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<T> {
        match addr {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a)),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)),
        }
    }

    /// Whether a packet with inner source `src` may come from peer `from`: the longest prefix
    /// containing `src`, across all peers, must be `from`'s.
    pub fn source_allowed(&self, src: IpAddr, from: T) -> bool {
        self.lookup(src) == Some(from)
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether the table has no prefix.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every prefix.
    pub fn clear(&mut self) {
        *self = Self::new();
    }

    /// Every prefix and its value: IPv4 first, longer prefixes first, otherwise unordered.
    pub fn iter(&self) -> impl Iterator<Item = (IpNet, T)> + '_ {
        let v4 = self.v4.iter().filter_map(|(k, len, v)| {
            Some((IpNet::V4(Ipv4Net::new(Ipv4Addr::from(k), len).ok()?), v))
        });
        let v6 = self.v6.iter().filter_map(|(k, len, v)| {
            Some((IpNet::V6(Ipv6Net::new(Ipv6Addr::from(k), len).ok()?), v))
        });
        v4.chain(v6)
    }
}

/// An address as an integer, maskable to a prefix.
trait Bits: Copy + Eq + Hash + std::fmt::Debug {
    /// Keeps the first `len` bits.
    fn mask(self, len: u8) -> Self;
}

impl Bits for u32 {
    fn mask(self, len: u8) -> u32 {
        self & !(u32::MAX.checked_shr(u32::from(len)).unwrap_or(0))
    }
}

impl Bits for u128 {
    fn mask(self, len: u8) -> u128 {
        self & !(u128::MAX.checked_shr(u32::from(len)).unwrap_or(0))
    }
}

type PrefixMap<K, T> = HashMap<K, T, BuildHasherDefault<PrefixHasher>>;

/// The table of one address family.
#[derive(Debug, Clone)]
struct Family<K, T> {
    /// Index: prefix length, 0 to the address width.
    by_len: Vec<PrefixMap<K, T>>,
    /// Prefix lengths with at least one entry, longest first.
    lens: Vec<u8>,
}

impl<K: Bits, T: Copy + Eq> Family<K, T> {
    fn new(width: u8) -> Self {
        Family {
            by_len: (0..=width).map(|_| PrefixMap::default()).collect(),
            lens: Vec::new(),
        }
    }

    fn insert(&mut self, key: K, len: u8, value: T) -> Option<T> {
        let map = self.by_len.get_mut(usize::from(len))?;
        let old = map.insert(key.mask(len), value);
        if !self.lens.contains(&len) {
            self.lens.push(len);
            self.lens.sort_unstable_by(|a, b| b.cmp(a));
        }
        old
    }

    fn remove(&mut self, key: K, len: u8) -> Option<T> {
        let map = self.by_len.get_mut(usize::from(len))?;
        let old = map.remove(&key.mask(len));
        if map.is_empty() {
            self.lens.retain(|l| *l != len);
        }
        old
    }

    fn remove_value(&mut self, value: T) -> usize {
        let mut removed = 0;
        for map in &mut self.by_len {
            let before = map.len();
            map.retain(|_, v| *v != value);
            removed += before - map.len();
        }
        let by_len = &self.by_len;
        self.lens
            .retain(|l| by_len.get(usize::from(*l)).is_some_and(|m| !m.is_empty()));
        removed
    }

    fn get(&self, key: K, len: u8) -> Option<T> {
        self.by_len
            .get(usize::from(len))?
            .get(&key.mask(len))
            .copied()
    }

    fn lookup(&self, addr: K) -> Option<T> {
        self.lens.iter().find_map(|&len| {
            let map = self.by_len.get(usize::from(len))?;
            map.get(&addr.mask(len)).copied()
        })
    }

    fn len(&self) -> usize {
        self.by_len.iter().map(HashMap::len).sum()
    }

    fn iter(&self) -> impl Iterator<Item = (K, u8, T)> + '_ {
        self.lens.iter().flat_map(move |&len| {
            self.by_len
                .get(usize::from(len))
                .into_iter()
                .flat_map(move |m| m.iter().map(move |(k, v)| (*k, len, *v)))
        })
    }
}

/// A fast hasher for the masked-address keys. Keys come from the netmap (the coordinator), not
/// from packets, so collision flooding is not a concern; lookups only probe.
#[derive(Debug, Default, Clone, Copy)]
struct PrefixHasher(u64);

impl PrefixHasher {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0 ^ word)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(23);
    }
}

impl Hasher for PrefixHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.mix(u64::from(n));
    }
    fn write_u128(&mut self, n: u128) {
        self.mix(n as u64);
        self.mix((n >> 64) as u64);
    }
    fn finish(&self) -> u64 {
        // murmur3's finalizer: every input bit reaches the high and the low bits.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests;
