//! Address and name allocation: pure functions over what is already taken.
//!
//! IPv4 comes from 100.64.0.0/10 (the shared address space Tailscale also uses), IPv6 from the
//! mesh's ULA /48 with the IPv4 address as interface id (`fdXX:XXXX:XXXX::100.64.0.7`), so a
//! node's two addresses are easy to match by eye. Names are DNS labels made unique with `-2`,
//! `-3`, ...

use std::collections::{BTreeSet, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use rand::RngCore;

const V4_FIRST: u32 = u32::from_be_bytes([100, 64, 0, 1]);
const V4_LAST: u32 = u32::from_be_bytes([100, 127, 255, 254]);
/// Kept free for the MagicDNS resolver, as Tailscale does.
const V4_RESERVED: u32 = u32::from_be_bytes([100, 100, 100, 100]);

/// Every address of 100.64.0.0/10 is taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the mesh has no free IPv4 address left in 100.64.0.0/10")]
pub struct MeshFull;

/// The next free IPv4 address after the highest one in use (wrapping), never a reserved one.
pub fn next_ipv4(used: &BTreeSet<u32>) -> Result<Ipv4Addr, MeshFull> {
    let start =
        used.iter()
            .next_back()
            .map_or(V4_FIRST, |&a| if a >= V4_LAST { V4_FIRST } else { a + 1 });
    let span = V4_LAST - V4_FIRST + 1;
    (0..span)
        .map(|i| V4_FIRST + (start - V4_FIRST + i) % span)
        .find(|a| *a != V4_RESERVED && !used.contains(a))
        .map(Ipv4Addr::from)
        .ok_or(MeshFull)
}

/// A new random ULA /48 prefix per RFC 4193: `fd` and 40 random bits. Returned as the top 48
/// bits of an address.
pub fn random_ula_prefix() -> Ipv6Addr {
    let mut r = [0u8; 5];
    rand::rngs::OsRng.fill_bytes(&mut r);
    let mut b = [0u8; 16];
    b[0] = 0xfd;
    b[1..6].copy_from_slice(&r);
    Ipv6Addr::from(b)
}

/// The node's IPv6 address: the ULA /48 prefix, subnet 0, interface id = its IPv4 address.
pub fn ipv6_for(prefix: Ipv6Addr, v4: Ipv4Addr) -> Ipv6Addr {
    let mut b = prefix.octets();
    b[6..12].fill(0);
    b[12..].copy_from_slice(&v4.octets());
    Ipv6Addr::from(b)
}

/// A DNS label from whatever hostname a node sent: lowercase, `a-z0-9-`, at most 63 chars.
pub fn sanitize_label(hostname: &str) -> String {
    let mut out = String::new();
    let mut dash = false;
    for c in hostname.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
            dash = false;
        } else if !dash && !out.is_empty() {
            out.push('-');
            dash = true;
        }
        if out.len() >= 56 {
            break;
        }
    }
    let out = out.trim_end_matches('-').to_owned();
    if out.is_empty() {
        "node".into()
    } else {
        out
    }
}

/// `label`, or `label-2`, `label-3`, ... whichever is free first.
pub fn unique_name(label: &str, taken: &HashSet<String>) -> String {
    if !taken.contains(label) {
        return label.to_owned();
    }
    (2u32..)
        .map(|i| format!("{label}-{i}"))
        .find(|n| !taken.contains(n))
        .unwrap_or_else(|| label.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_allocation_is_sequential_and_skips_reserved() {
        let mut used = BTreeSet::new();
        let a = next_ipv4(&used).unwrap();
        assert_eq!(a, Ipv4Addr::new(100, 64, 0, 1));
        used.insert(u32::from(a));
        assert_eq!(next_ipv4(&used).unwrap(), Ipv4Addr::new(100, 64, 0, 2));
        used.insert(V4_RESERVED - 1);
        assert_eq!(next_ipv4(&used).unwrap(), Ipv4Addr::new(100, 100, 100, 101));
        used.insert(V4_LAST);
        // Wraps to the lowest free.
        assert_eq!(next_ipv4(&used).unwrap(), Ipv4Addr::new(100, 64, 0, 2));
    }

    #[test]
    fn full_mesh_is_an_error() {
        let used: BTreeSet<u32> = (V4_FIRST..=V4_LAST).collect();
        assert_eq!(next_ipv4(&used), Err(MeshFull));
    }

    #[test]
    fn ipv6_embeds_ipv4_under_the_prefix() {
        let prefix: Ipv6Addr = "fd12:3456:789a::".parse().unwrap();
        let v6 = ipv6_for(prefix, Ipv4Addr::new(100, 64, 0, 7));
        assert_eq!(v6.to_string(), "fd12:3456:789a::6440:7");
        let p = random_ula_prefix();
        assert_eq!(p.octets()[0], 0xfd);
        assert_eq!(&p.octets()[6..], &[0u8; 10]);
    }

    #[test]
    fn names() {
        assert_eq!(sanitize_label("Alice's MacBook Pro"), "alice-s-macbook-pro");
        assert_eq!(sanitize_label("---"), "node");
        assert_eq!(sanitize_label("ünïcode"), "n-code");
        assert_eq!(sanitize_label(&"x".repeat(300)).len(), 56);
        let mut taken = HashSet::new();
        assert_eq!(unique_name("laptop", &taken), "laptop");
        taken.insert("laptop".to_owned());
        assert_eq!(unique_name("laptop", &taken), "laptop-2");
        taken.insert("laptop-2".to_owned());
        assert_eq!(unique_name("laptop", &taken), "laptop-3");
    }
}
