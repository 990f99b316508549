//! Embedding cache: the BF16 features of recently encoded images, keyed by a hash of the
//! decoded image, the preprocessing options and the model, least recently used out first, bounded
//! in bytes.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

/// Cache key: SHA-256 over image content, preprocessing options and model identity.
pub type CacheKey = [u8; 32];

/// One tile's features as they go on the wire: `tokens x hidden` little-endian BF16 values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedTile {
    /// Feature rows.
    pub tokens: u32,
    /// The values.
    pub data: Bytes,
}

/// Every tile of one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedImage {
    /// Tiles in order.
    pub tiles: Vec<CachedTile>,
}

impl CachedImage {
    /// Bytes the features take.
    pub fn bytes(&self) -> u64 {
        self.tiles.iter().map(|t| t.data.len() as u64).sum()
    }
}

/// Counters of a [`FeatureCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Images held.
    pub entries: u64,
    /// Feature bytes held.
    pub bytes: u64,
    /// Lookups that found the image.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
}

/// An LRU map from [`CacheKey`] to features, at most `capacity` bytes.
#[derive(Debug)]
pub struct FeatureCache {
    capacity: u64,
    entries: HashMap<CacheKey, Entry>,
    /// Ticks once per lookup or insertion; orders the entries by last use.
    clock: u64,
    stats: CacheStats,
}

/// A cached image and when it was last used.
#[derive(Debug)]
struct Entry {
    image: Arc<CachedImage>,
    /// The cache's clock at the last lookup or insertion.
    used: u64,
}

impl FeatureCache {
    /// The capacity a vision server's cache gets unless told otherwise (`--cache-mib`).
    pub const DEFAULT_CAPACITY: u64 = 512 << 20;

    /// An empty cache holding at most `capacity` bytes (0 disables it).
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            clock: 0,
            stats: CacheStats::default(),
        }
    }

    /// The image under `key`, marked as just used.
    pub fn get(&mut self, key: &CacheKey) -> Option<Arc<CachedImage>> {
        self.clock += 1;
        match self.entries.get_mut(key) {
            Some(entry) => {
                entry.used = self.clock;
                self.stats.hits += 1;
                Some(entry.image.clone())
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Stores `image` under `key`, evicting the least recently used images to make room; an
    /// image larger than the whole cache is not stored.
    pub fn insert(&mut self, key: CacheKey, image: Arc<CachedImage>) {
        let size = image.bytes();
        if size > self.capacity || self.entries.contains_key(&key) {
            return;
        }
        while self.stats.bytes + size > self.capacity {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some(evicted) = self.entries.remove(&oldest) {
                self.stats.bytes -= evicted.image.bytes();
            }
        }
        self.clock += 1;
        self.stats.bytes += size;
        self.entries.insert(
            key,
            Entry {
                image,
                used: self.clock,
            },
        );
    }

    /// Counters at this moment.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.entries.len() as u64,
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(bytes: usize) -> Arc<CachedImage> {
        Arc::new(CachedImage {
            tiles: vec![CachedTile {
                tokens: 1,
                data: Bytes::from(vec![0u8; bytes]),
            }],
        })
    }

    #[test]
    fn evicts_least_recently_used_within_the_byte_bound() {
        let mut cache = FeatureCache::new(100);
        cache.insert([1; 32], image(40));
        cache.insert([2; 32], image(40));
        assert!(cache.get(&[1; 32]).is_some()); // 2 is now the oldest
        cache.insert([3; 32], image(40));
        assert!(cache.get(&[2; 32]).is_none());
        assert!(cache.get(&[1; 32]).is_some() && cache.get(&[3; 32]).is_some());
        let s = cache.stats();
        assert_eq!((s.entries, s.bytes, s.hits, s.misses), (2, 80, 3, 1));
        // Too big for the whole cache: not stored, nothing evicted.
        cache.insert([4; 32], image(101));
        assert_eq!(cache.stats().entries, 2);
        let mut off = FeatureCache::new(0);
        off.insert([1; 32], image(1));
        assert!(off.get(&[1; 32]).is_none());
    }
}
