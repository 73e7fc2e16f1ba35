//! A bounded cache whose entries expire: the oldest entry makes room for a new one.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// At most `capacity` entries, each kept for `ttl` after it was put in.
#[derive(Debug)]
pub(crate) struct Expiring<K, V> {
    entries: HashMap<K, (V, Instant)>,
    /// Keys in the order they were put in (a key put in again appears twice; the older
    /// appearance is skipped when it comes out).
    order: VecDeque<(K, Instant)>,
    capacity: usize,
    ttl: Duration,
}

impl<K: Hash + Eq + Clone, V: Clone> Expiring<K, V> {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Expiring {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            ttl,
        }
    }

    /// The value of `key`, if it was put in less than the ttl ago.
    pub(crate) fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let (value, at) = self.entries.get(key)?;
        (at.elapsed() < self.ttl).then(|| value.clone())
    }

    pub(crate) fn put(&mut self, key: K, value: V) {
        if self.capacity == 0 || self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        self.entries.insert(key.clone(), (value, now));
        self.order.push_back((key, now));
        while self.entries.len() > self.capacity || self.order.len() > 2 * self.capacity {
            let Some((key, at)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&key).is_some_and(|(_, put)| *put == at) {
                self.entries.remove(&key);
            }
        }
    }

    pub(crate) fn remove<Q: Hash + Eq + ?Sized>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
    {
        self.entries.remove(key);
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.entries.retain(|key, _| keep(key));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_entry_makes_room_and_entries_expire() {
        let mut cache = Expiring::new(2, Duration::from_secs(60));
        cache.put("a", 1);
        cache.put("b", 2);
        cache.put("a", 3);
        cache.put("c", 4);
        assert_eq!(cache.get(&"b"), None, "b was put in before a's second put");
        assert_eq!((cache.get(&"a"), cache.get(&"c")), (Some(3), Some(4)));
        assert_eq!(cache.len(), 2);
        let mut expired = Expiring::new(2, Duration::from_millis(1));
        expired.put("a", 1);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(expired.get(&"a"), None);
        let mut none = Expiring::new(0, Duration::from_secs(1));
        none.put("a", 1);
        assert_eq!(none.get(&"a"), None);
    }
}
