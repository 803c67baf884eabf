//! Receive coalescing for the userspace stack: in-order TCP segments of one connection that
//! arrive one after another become one large segment before smoltcp sees them, as a kernel's
//! generic receive offload does. smoltcp's cost is per segment (parse, socket lookup, sequence
//! checks, the assembler, a wake-up); a peer's bulk data arrives as runs of mesh-MTU segments of
//! one flow, so a run of 40 costs the stack about what the three parts it is taken in do.
//!
//! A segment joins the one before it only if nothing but its payload and window differ in
//! meaning: same addresses and ports, the next sequence number, the same acknowledgement, the
//! same TCP options byte for byte, flags ACK (and PSH) only, no IP options, extension headers or
//! fragments. The joined packet carries the latest window and a PSH if any part had one; its IP
//! length (and IPv4 header checksum) is set when the run is complete. The TCP checksum is not:
//! the stack does not check it on what it receives (every packet was authenticated by
//! WireGuard; see `device`).
//! No I/O here.

use crate::packet::build::internet_checksum;

/// The largest packet a join makes: IPv4's total length and IPv6's payload length are 16 bits.
pub const JOINED_MAX: usize = 65_535;

const TCP: u8 = 6;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
const TCP_MIN: usize = 20;

/// What a packet that later segments may join is, as far as joining needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// The IP header's length: 20 (IPv4 without options) or 40 (IPv6 with TCP next).
    ip_len: usize,
    /// The TCP header's length, options included.
    tcp_len: usize,
    /// The sequence number just after the packet's payload.
    next_seq: u32,
    /// The packet's length by its IP header (bytes after it in the buffer are not its own).
    len: usize,
}

impl Run {
    /// The run a packet starts: `None` unless it is a TCP segment with payload and no other flag
    /// than ACK and PSH, without IP options, extension headers or fragmentation.
    pub fn of(packet: &[u8]) -> Option<Run> {
        let ip_len = match packet.first()? >> 4 {
            4 => {
                let h = packet.get(..20)?;
                // IHL 5, TCP, and neither "more fragments" nor an offset.
                let whole = h[6] & 0x3f == 0 && h[7] == 0;
                (h[0] == 0x45 && h[9] == TCP && whole).then_some(20)?
            }
            6 => (*packet.get(6)? == TCP).then_some(40)?,
            _ => return None,
        };
        let tcp = packet.get(ip_len..ip_len + TCP_MIN)?;
        let tcp_len = usize::from(tcp[12] >> 4) * 4;
        // No SYN, FIN, RST, URG, ECE or CWR (nor the reserved bits): plain data.
        if tcp_len < TCP_MIN || tcp[12] & 0x0f != 0 || tcp[13] & !PSH != ACK {
            return None;
        }
        let len = ip_total(packet, ip_len)?;
        let payload = len.checked_sub(ip_len + tcp_len)?;
        if payload == 0 || len > packet.len() {
            return None;
        }
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        Some(Run {
            ip_len,
            tcp_len,
            next_seq: seq.wrapping_add(payload as u32),
            len,
        })
    }

    /// The header bytes before the payload.
    fn header_len(&self) -> usize {
        self.ip_len + self.tcp_len
    }

    /// The packet's payload bytes.
    pub fn payload_len(&self) -> usize {
        self.len - self.header_len()
    }

    /// Sets the IP length (and IPv4's header checksum) of the packet whose run this is.
    #[cfg(test)]
    pub fn finish(&self, packet: &mut [u8]) {
        set_ip_len(&mut packet[..self.len], self.ip_len);
    }

    /// Cuts the packet whose run this is (a joined one) after its first `keep` payload bytes:
    /// its IP length then covers those. Returns that length, where [`Run::rest`] starts.
    pub fn cut(&self, packet: &mut [u8], keep: usize) -> usize {
        let first = self.header_len() + keep.clamp(1, self.payload_len() - 1);
        set_ip_len(&mut packet[..first], self.ip_len);
        first
    }

    /// After [`Run::cut`] at `first`, once that part has been read: makes the bytes from
    /// `first` on a packet of their own, with a copy of the header (and the sequence number they
    /// start at) just before them (over the first part's last bytes). Returns where that packet
    /// starts in `packet`, and its run.
    pub fn rest(&self, packet: &mut [u8], first: usize) -> (usize, Run) {
        let h = self.header_len();
        let start = first - h;
        let seq = self.next_seq.wrapping_sub((self.len - first) as u32);
        packet.copy_within(..h, start);
        let rest = &mut packet[start..self.len];
        rest[self.ip_len + 4..self.ip_len + 8].copy_from_slice(&seq.to_be_bytes());
        set_ip_len(rest, self.ip_len);
        let len = rest.len();
        (start, Run { len, ..*self })
    }

    /// The packet's length by its IP header.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether `next` (a packet, with the run that [`Run::of`] found for it) continues `head`,
    /// the packet whose run this is, and fits beside it in [`JOINED_MAX`].
    pub fn continued_by(&self, head: &[u8], next: &[u8], next_run: &Run) -> bool {
        let h = self.header_len();
        if next_run.ip_len != self.ip_len
            || next_run.tcp_len != self.tcp_len
            || self.len + next_run.len - h > JOINED_MAX
            || head.len() < self.len
            || next.len() < next_run.len
        {
            return false;
        }
        // The TCP header starts where the IP header ends.
        let tcp = self.ip_len;
        let addresses = if self.ip_len == 20 { 12..20 } else { 8..40 };
        let seq = u32::from_be_bytes([next[tcp + 4], next[tcp + 5], next[tcp + 6], next[tcp + 7]]);
        seq == self.next_seq
            && head[addresses.clone()] == next[addresses]
            // Ports, then the acknowledgement number.
            && head[tcp..tcp + 4] == next[tcp..tcp + 4]
            && head[tcp + 8..tcp + 12] == next[tcp + 8..tcp + 12]
            // Options (a timestamp that moved ends the run, as it does a kernel's).
            && head[tcp + TCP_MIN..h] == next[tcp + TCP_MIN..h]
    }

    /// Appends `next`'s payload to `head` (the packet whose run this is; bytes after it are cut)
    /// and takes `next`'s window and PSH; `next` must have passed [`Run::continued_by`]. Returns
    /// the joined packet's run. The IP length is left as it was, for [`Run::cut`] to set once
    /// the run is complete.
    pub fn join(&self, head: &mut Vec<u8>, next: &[u8], next_run: &Run) -> Run {
        let (tcp, h) = (self.ip_len, self.header_len());
        head.truncate(self.len);
        head.extend_from_slice(&next[h..next_run.len]);
        head[tcp + 13] |= next[tcp + 13] & PSH;
        head[tcp + 14..tcp + 16].copy_from_slice(&next[tcp + 14..tcp + 16]);
        let len = head.len();
        Run {
            next_seq: next_run.next_seq,
            len,
            ..*self
        }
    }
}

/// Sets the IP length of a packet to all of `packet` (and IPv4's header checksum).
fn set_ip_len(packet: &mut [u8], ip_len: usize) {
    let len = packet.len();
    if ip_len == 20 {
        packet[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        packet[10..12].fill(0);
        let sum = internet_checksum(&[&packet[..20]]);
        packet[10..12].copy_from_slice(&sum.to_be_bytes());
    } else {
        packet[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    }
}

/// The packet's length by its IP header.
fn ip_total(packet: &[u8], ip_len: usize) -> Option<usize> {
    let field = |i: usize| {
        Some(usize::from(u16::from_be_bytes([
            *packet.get(i)?,
            *packet.get(i + 1)?,
        ])))
    };
    if ip_len == 20 {
        field(2)
    } else {
        Some(field(4)? + 40)
    }
}

#[cfg(test)]
#[path = "coalesce_tests.rs"]
mod tests;
