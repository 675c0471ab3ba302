//! The client's local link cache: (ns, uid, svc) → pod with a TTL shorter than the temporary
//! link, so a cached pod never outlives its link in Redis. Sharded read-write locks keep hits
//! cheap and concurrent; a lookup hashes its borrowed key once (shard and slot from the same
//! hash) and allocates nothing.

use std::{
    hash::BuildHasher,
    sync::RwLock,
    time::{Duration, Instant},
};

use hashbrown::{DefaultHashBuilder, Equivalent, HashTable};

use super::keys::{LinkKey, LinkRef};

const SHARDS: usize = 16;

#[derive(Debug, Clone)]
struct Entry {
    key: LinkKey,
    hash: u64,
    pod: u32,
    expires: Instant,
}

/// A TTL cache of links.
#[derive(Debug)]
pub struct LinkCache {
    ttl: Duration,
    hasher: DefaultHashBuilder,
    shards: [RwLock<HashTable<Entry>>; SHARDS],
}

impl LinkCache {
    /// An empty cache whose entries live for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            hasher: DefaultHashBuilder::default(),
            shards: std::array::from_fn(|_| RwLock::new(HashTable::new())),
        }
    }

    /// The key's hash and its shard (high bits pick the shard, hashbrown uses the low ones).
    fn locate(&self, key: &LinkRef<'_>) -> (u64, &RwLock<HashTable<Entry>>) {
        let hash = self.hasher.hash_one(key);
        (hash, &self.shards[(hash >> 60) as usize % SHARDS])
    }

    /// The cached pod, if present and not expired at `now`.
    pub fn get_at(&self, ns: &str, uid: &str, svc: &str, now: Instant) -> Option<u32> {
        let key = LinkRef { ns, uid, svc };
        let (hash, shard) = self.locate(&key);
        let shard = shard.read().unwrap_or_else(|e| e.into_inner());
        shard.find(hash, |e| key.equivalent(&e.key)).filter(|e| e.expires > now).map(|e| e.pod)
    }

    /// The cached pod, if present and not expired.
    pub fn get(&self, ns: &str, uid: &str, svc: &str) -> Option<u32> {
        self.get_at(ns, uid, svc, Instant::now())
    }

    /// Caches `pod`; returns the previous unexpired pod.
    pub fn set(&self, ns: &str, uid: &str, svc: &str, pod: u32) -> Option<u32> {
        let key = LinkRef { ns, uid, svc };
        let (hash, shard) = self.locate(&key);
        let now = Instant::now();
        let expires = now + self.ttl;
        let mut shard = shard.write().unwrap_or_else(|e| e.into_inner());
        // Drop expired entries now and then so the cache cannot grow without bound.
        if shard.len() >= 4096 && shard.len().is_power_of_two() {
            shard.retain(|e| e.expires > now);
        }
        match shard.find_mut(hash, |e| key.equivalent(&e.key)) {
            Some(e) => {
                let prev = (e.expires > now).then_some(e.pod);
                e.pod = pod;
                e.expires = expires;
                prev
            }
            None => {
                shard.insert_unique(hash, Entry { key: key.to_owned(), hash, pod, expires }, |e| e.hash);
                None
            }
        }
    }

    /// Expires the entry; returns the pod it held (the original's `CacheExpired`).
    pub fn expire(&self, ns: &str, uid: &str, svc: &str) -> Option<u32> {
        let key = LinkRef { ns, uid, svc };
        let (hash, shard) = self.locate(&key);
        let mut shard = shard.write().unwrap_or_else(|e| e.into_inner());
        let entry = shard.find_entry(hash, |e| key.equivalent(&e.key)).ok()?;
        let (e, _) = entry.remove();
        (e.expires > Instant::now()).then_some(e.pod)
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
        let c = LinkCache::new(Duration::from_secs(60));
        assert_eq!(c.get("n", "u", "s"), None);
        assert_eq!(c.set("n", "u", "s", 0), None);
        assert_eq!(c.get("n", "u", "s"), Some(0));
        assert_eq!(c.get("n", "u", "t"), None);
        assert_eq!(c.get("n", "us", ""), None, "parts are not concatenated");
        assert_eq!(c.set("n", "u", "s", 2), Some(0));
        assert_eq!(c.expire("n", "u", "s"), Some(2));
        assert_eq!(c.get("n", "u", "s"), None);
        assert_eq!(c.expire("n", "u", "s"), None);
        c.set("n", "u", "s", 1);
        let later = Instant::now() + Duration::from_secs(61);
        assert_eq!(c.get_at("n", "u", "s", later), None, "expired after the TTL");
        assert_eq!(c.get_at("n", "u", "s", Instant::now()), Some(1));
    }

    #[test]
    fn many_keys_stay_distinct() {
        let c = LinkCache::new(Duration::from_secs(60));
        for i in 0..10_000u32 {
            c.set("n", &format!("u{i}"), "s", i);
        }
        assert_eq!(c.len(), 10_000);
        for i in (0..10_000u32).step_by(97) {
            assert_eq!(c.get("n", &format!("u{i}"), "s"), Some(i));
        }
    }
}
