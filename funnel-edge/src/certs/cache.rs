//! A bounded in-memory cache of issued leaf certificates, by name. No I/O and no clock of its
//! own: the time is passed in. When full, inserting a new name evicts the entry issued longest
//! ago; an entry whose remaining validity is below the renewal margin counts as missing so the
//! caller issues a fresh one.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

#[derive(Debug)]
struct Entry<V> {
    seq: u64,
    value: V,
    not_after: SystemTime,
}

#[derive(Debug)]
pub(crate) struct LeafCache<V> {
    entries: HashMap<String, Entry<V>>,
    /// Insertion sequence number → name; the first entry is the oldest.
    order: BTreeMap<u64, String>,
    next_seq: u64,
    max: usize,
}

impl<V: Clone> LeafCache<V> {
    /// A cache holding at most `max` names (at least one).
    pub(crate) fn new(max: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            max: max.max(1),
        }
    }

    /// The value for `name` if, at `now`, more than `renew_before` of its validity remains.
    pub(crate) fn get(&self, name: &str, now: SystemTime, renew_before: Duration) -> Option<V> {
        let e = self.entries.get(name)?;
        let fresh = now
            .checked_add(renew_before)
            .is_some_and(|t| t < e.not_after);
        fresh.then(|| e.value.clone())
    }

    /// Stores `value` for `name` (replacing an older one), evicting the oldest names beyond the
    /// bound.
    pub(crate) fn insert(&mut self, name: String, value: V, not_after: SystemTime) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(old) = self.entries.remove(&name) {
            self.order.remove(&old.seq);
        }
        while self.entries.len() >= self.max {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.order.insert(seq, name.clone());
        self.entries.insert(
            name,
            Entry {
                seq,
                value,
                not_after,
            },
        );
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn bounded_evicting_oldest() {
        let t0 = SystemTime::UNIX_EPOCH + 1000 * DAY;
        let mut c = LeafCache::new(3);
        for (i, n) in ["a", "b", "c"].into_iter().enumerate() {
            c.insert(n.into(), i, t0 + 30 * DAY);
        }
        assert_eq!(c.len(), 3);
        // Re-inserting "a" makes it the newest: "b" is now the oldest.
        c.insert("a".into(), 10, t0 + 30 * DAY);
        assert_eq!(c.len(), 3);
        c.insert("d".into(), 3, t0 + 30 * DAY);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("b", t0, 7 * DAY), None);
        assert_eq!(c.get("a", t0, 7 * DAY), Some(10));
        assert_eq!(c.get("c", t0, 7 * DAY), Some(2));
        assert_eq!(c.get("d", t0, 7 * DAY), Some(3));
        for i in 0..100 {
            c.insert(format!("n{i}"), i, t0 + 30 * DAY);
            assert!(c.len() <= 3);
        }
        assert_eq!(c.order.len(), c.entries.len(), "no stale order entries");
        assert_eq!(c.get("n99", t0, 7 * DAY), Some(99));
        assert_eq!(c.get("n96", t0, 7 * DAY), None);
    }

    #[test]
    fn stale_when_less_than_margin_remains() {
        let t0 = SystemTime::UNIX_EPOCH + 1000 * DAY;
        let mut c = LeafCache::new(10);
        c.insert("a".into(), 1, t0 + 30 * DAY);
        assert_eq!(c.get("a", t0 + 22 * DAY, 7 * DAY), Some(1));
        assert_eq!(
            c.get("a", t0 + 23 * DAY, 7 * DAY),
            None,
            "exactly 7 days left"
        );
        assert_eq!(c.get("a", t0 + 40 * DAY, 7 * DAY), None, "expired");
        assert_eq!(c.get("a", SystemTime::UNIX_EPOCH, Duration::MAX), None);
    }
}
