//! The connection-tracking table behind [`PacketFilter`](super::PacketFilter): flows keyed by
//! protocol and local/remote address and port, each with a deadline. Bounded: when full, the
//! least recently used flow is evicted. Entries live in one `Vec` of slots linked in LRU order
//! by index, so a lookup or touch moves nothing and allocates nothing; inserts allocate only
//! while the table grows toward its bound. Time is passed in.

use std::net::IpAddr;
use std::time::Instant;

use proto::NodeId;

use crate::packet::Flow;
use crate::FastMap;

/// A flow as seen from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Key {
    protocol: u8,
    local: IpAddr,
    remote: IpAddr,
    local_port: u16,
    remote_port: u16,
}

impl Key {
    /// The key of a flow this node sends.
    pub(super) fn sent(f: &Flow) -> Key {
        Key {
            protocol: f.protocol,
            local: f.src,
            remote: f.dst,
            local_port: f.src_port,
            remote_port: f.dst_port,
        }
    }

    /// The key of a flow this node receives.
    pub(super) fn received(f: &Flow) -> Key {
        Key::sent(&f.reversed())
    }
}

/// Who opened a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// This node: the peer's packets on it are replies.
    Local,
    /// The peer `peer`, admitted (or no longer) by the rules of `generation`.
    Remote {
        peer: NodeId,
        generation: u64,
        admitted: bool,
    },
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    pub(super) origin: Origin,
    pub(super) deadline: Instant,
    pub(super) seen_local: bool,
    pub(super) seen_remote: bool,
    pub(super) fin_local: bool,
    pub(super) fin_remote: bool,
    pub(super) reset: bool,
}

impl Entry {
    pub(super) fn new(origin: Origin, now: Instant) -> Entry {
        Entry {
            origin,
            deadline: now,
            seen_local: false,
            seen_remote: false,
            fin_local: false,
            fin_remote: false,
            reset: false,
        }
    }
}

const NIL: u32 = u32::MAX;

#[derive(Debug)]
struct Slot {
    key: Key,
    entry: Entry,
    prev: u32,
    next: u32,
}

/// The bounded flow table.
#[derive(Debug)]
pub(super) struct Table {
    map: FastMap<Key, u32>,
    slots: Vec<Slot>,
    /// Most recently used.
    head: u32,
    /// Least recently used: the next to evict.
    tail: u32,
    /// Unused slots, chained through `next`.
    free: u32,
    max: usize,
    pub(super) evicted: u64,
    pub(super) expired: u64,
}

impl Table {
    pub(super) fn new(max: usize) -> Table {
        Table {
            map: FastMap::default(),
            slots: Vec::new(),
            head: NIL,
            tail: NIL,
            free: NIL,
            max: max.clamp(1, NIL as usize - 1),
            evicted: 0,
            expired: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// The live entry of `key`, now the most recently used. An expired one is removed.
    pub(super) fn get_mut(&mut self, key: &Key, now: Instant) -> Option<&mut Entry> {
        let i = *self.map.get(key)?;
        if now >= self.slots[i as usize].entry.deadline {
            self.release(i);
            self.expired += 1;
            return None;
        }
        self.unlink(i);
        self.push_front(i);
        Some(&mut self.slots[i as usize].entry)
    }

    /// The live entry of `key`, leaving the LRU order alone.
    pub(super) fn peek(&self, key: &Key, now: Instant) -> Option<&Entry> {
        let entry = &self.slots[*self.map.get(key)? as usize].entry;
        (now < entry.deadline).then_some(entry)
    }

    /// Adds a flow that is not in the table, evicting the least recently used one when full.
    pub(super) fn insert(&mut self, key: Key, entry: Entry) {
        if self.map.len() >= self.max && self.tail != NIL {
            self.release(self.tail);
            self.evicted += 1;
        }
        let slot = Slot {
            key,
            entry,
            prev: NIL,
            next: NIL,
        };
        let i = if self.free != NIL {
            let i = self.free;
            self.free = self.slots[i as usize].next;
            self.slots[i as usize] = slot;
            i
        } else {
            self.slots.push(slot);
            (self.slots.len() - 1) as u32
        };
        self.push_front(i);
        if let Some(old) = self.map.insert(key, i) {
            // Callers insert only absent keys; should one not, drop the older slot.
            self.unlink(old);
            self.slots[old as usize].next = self.free;
            self.free = old;
        }
    }

    /// Removes every flow whose deadline has passed; returns how many.
    pub(super) fn expire(&mut self, now: Instant) -> usize {
        let mut removed = 0;
        let mut i = self.tail;
        while i != NIL {
            let slot = &self.slots[i as usize];
            let prev = slot.prev;
            if now >= slot.entry.deadline {
                self.release(i);
                removed += 1;
            }
            i = prev;
        }
        self.expired += removed as u64;
        removed
    }

    /// Drops slot `i` from the map and the LRU list and puts it on the free list.
    fn release(&mut self, i: u32) {
        let key = self.slots[i as usize].key;
        self.map.remove(&key);
        self.unlink(i);
        self.slots[i as usize].next = self.free;
        self.free = i;
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, i: u32) {
        let old_head = self.head;
        {
            let s = &mut self.slots[i as usize];
            s.prev = NIL;
            s.next = old_head;
        }
        match old_head {
            NIL => self.tail = i,
            h => self.slots[h as usize].prev = i,
        }
        self.head = i;
    }
}
