//! The client's local link cache: (ns, uid, svc) → pod with a TTL shorter than the temporary
//! link, so a cached pod never outlives its link in Redis. Sharded read-write locks keep hits
//! cheap and concurrent; lookups do not allocate.

use std::{
    hash::{BuildHasher, Hash},
    sync::RwLock,
    time::{Duration, Instant},
};

use hashbrown::{DefaultHashBuilder, HashMap};

use super::keys::{LinkKey, LinkRef};

const SHARDS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Entry {
    pod: u32,
    expires: Instant,
}

/// A TTL cache of links.
#[derive(Debug)]
pub struct LinkCache {
    ttl: Duration,
    hasher: DefaultHashBuilder,
    shards: [RwLock<HashMap<LinkKey, Entry>>; SHARDS],
}

impl LinkCache {
    /// An empty cache whose entries live for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            hasher: DefaultHashBuilder::default(),
            shards: std::array::from_fn(|_| RwLock::new(HashMap::new())),
        }
    }

    fn shard(&self, key: &LinkRef<'_>) -> &RwLock<HashMap<LinkKey, Entry>> {
        let mut h = self.hasher.build_hasher();
        key.hash(&mut h);
        &self.shards[(std::hash::Hasher::finish(&h) as usize) % SHARDS]
    }

    /// The cached pod, if present and not expired.
    pub fn get(&self, ns: &str, uid: &str, svc: &str) -> Option<u32> {
        let key = LinkRef { ns, uid, svc };
        let shard = self.shard(&key).read().unwrap_or_else(|e| e.into_inner());
        shard.get(&key).filter(|e| e.expires > Instant::now()).map(|e| e.pod)
    }

    /// Caches `pod`; returns the previous unexpired pod.
    pub fn set(&self, ns: &str, uid: &str, svc: &str, pod: u32) -> Option<u32> {
        let key = LinkRef { ns, uid, svc };
        let now = Instant::now();
        let mut shard = self.shard(&key).write().unwrap_or_else(|e| e.into_inner());
        // Drop expired entries now and then so the cache cannot grow without bound.
        if shard.len() >= 4096 && shard.len().is_power_of_two() {
            shard.retain(|_, e| e.expires > now);
        }
        let entry = Entry { pod, expires: now + self.ttl };
        let prev = match shard.get_mut(&key) {
            Some(e) => Some(std::mem::replace(e, entry)),
            None => {
                shard.insert(key.to_owned(), entry);
                None
            }
        };
        prev.filter(|e| e.expires > now).map(|e| e.pod)
    }

    /// Expires the entry; returns the pod it held (the original's `CacheExpired`).
    pub fn expire(&self, ns: &str, uid: &str, svc: &str) -> Option<u32> {
        let key = LinkRef { ns, uid, svc };
        let mut shard = self.shard(&key).write().unwrap_or_else(|e| e.into_inner());
        shard.remove(&key).filter(|e| e.expires > Instant::now()).map(|e| e.pod)
    }

    /// Number of entries, expired or not.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len()).sum()
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_pod_zero_is_cached() {
        let c = LinkCache::new(Duration::from_millis(30));
        assert_eq!(c.get("n", "u", "s"), None);
        assert_eq!(c.set("n", "u", "s", 0), None);
        assert_eq!(c.get("n", "u", "s"), Some(0));
        assert_eq!(c.get("n", "u", "t"), None);
        assert_eq!(c.set("n", "u", "s", 2), Some(0));
        assert_eq!(c.expire("n", "u", "s"), Some(2));
        assert_eq!(c.get("n", "u", "s"), None);
        c.set("n", "u", "s", 1);
        std::thread::sleep(Duration::from_millis(40)); // the TTL itself is under test
        assert_eq!(c.get("n", "u", "s"), None);
        assert_eq!(c.set("n", "u", "s", 3), None, "an expired entry is no previous value");
    }
}
