//! Prefix cache: full KV blocks of earlier prompts, found again by a chained hash of their
//! contents so identical prompt prefixes skip recomputation.
//!
//! Block `i`'s key hashes block `i - 1`'s key, the block's token ids and, for every image token
//! in the block, the image's content hash and the token's offset in that image: two prompts share
//! a block only if everything before it and in it is identical, and two different images never
//! share cache even though their placeholder ids are the same.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::allocator::BlockAllocator;

/// A block's content key.
pub type BlockKey = [u8; 32];

/// An image's place in a prompt: positions `start..start + len` hold its feature tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSpan {
    /// First position of the image's feature tokens.
    pub start: usize,
    /// Number of feature tokens.
    pub len: usize,
    /// Hash of the image's content (as sent by the client or computed from the bytes).
    pub content_hash: [u8; 32],
}

/// Keys of the full blocks of a prompt.
pub fn block_keys(ids: &[u32], images: &[ImageSpan], block_size: usize) -> Vec<BlockKey> {
    let mut keys = Vec::with_capacity(ids.len() / block_size.max(1));
    let mut parent = [0u8; 32];
    for (b, block) in ids.chunks_exact(block_size.max(1)).enumerate() {
        let start = b * block_size;
        let mut hasher = Sha256::new();
        hasher.update(parent);
        for id in block {
            hasher.update(id.to_le_bytes());
        }
        for image in images {
            let lo = image.start.max(start);
            let hi = (image.start + image.len).min(start + block_size);
            if lo < hi {
                hasher.update(image.content_hash);
                hasher.update(((lo - image.start) as u64).to_le_bytes());
                hasher.update(((hi - lo) as u64).to_le_bytes());
            }
        }
        parent = hasher.finalize().into();
        keys.push(parent);
    }
    keys
}

/// Cached blocks by key. The cache holds one allocator reference on each cached block; a block
/// only the cache holds is evictable, least recently used first.
#[derive(Debug, Default)]
pub struct PrefixCache {
    blocks: HashMap<BlockKey, u32>,
    keys: HashMap<u32, BlockKey>,
    /// Last use of each cached block (a logical clock).
    last_used: HashMap<u32, u64>,
    clock: u64,
    lookups: u64,
    hits: u64,
}

impl PrefixCache {
    /// Blocks of the longest cached prefix of `keys`, each retained once for the caller.
    pub fn lookup(&mut self, keys: &[BlockKey], allocator: &mut BlockAllocator) -> Vec<u32> {
        self.clock += 1;
        let mut found = Vec::new();
        for key in keys {
            self.lookups += 1;
            let Some(&block) = self.blocks.get(key) else {
                break;
            };
            self.hits += 1;
            allocator.retain(block);
            self.last_used.insert(block, self.clock);
            found.push(block);
        }
        found
    }

    /// Remembers `blocks[i]` under `keys[i]` (blocks already cached under a key are kept).
    pub fn insert(&mut self, keys: &[BlockKey], blocks: &[u32], allocator: &mut BlockAllocator) {
        self.clock += 1;
        for (key, &block) in keys.iter().zip(blocks) {
            if self.blocks.contains_key(key) || self.keys.contains_key(&block) {
                continue;
            }
            allocator.retain(block);
            self.blocks.insert(*key, block);
            self.keys.insert(block, *key);
            self.last_used.insert(block, self.clock);
        }
    }

    /// Frees up to `wanted` blocks that only the cache holds, least recently used first;
    /// returns how many were freed.
    pub fn evict(&mut self, wanted: usize, allocator: &mut BlockAllocator) -> usize {
        let mut candidates: Vec<(u64, u32)> = self
            .last_used
            .iter()
            .filter(|&(&b, _)| allocator.refcount(b) == 1)
            .map(|(&b, &t)| (t, b))
            .collect();
        candidates.sort_unstable();
        let mut freed = 0;
        for (_, block) in candidates.into_iter().take(wanted) {
            if let Some(key) = self.keys.remove(&block) {
                self.blocks.remove(&key);
            }
            self.last_used.remove(&block);
            allocator.release(&[block]);
            freed += 1;
        }
        freed
    }

    /// Whether `block` is in the cache.
    pub fn contains_block(&self, block: u32) -> bool {
        self.keys.contains_key(&block)
    }

    /// Blocks currently cached.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Block lookups that hit, over all lookups (0 before any lookup).
    pub fn hit_rate(&self) -> f64 {
        if self.lookups == 0 {
            0.0
        } else {
            self.hits as f64 / self.lookups as f64
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn image(start: usize, len: usize, byte: u8) -> ImageSpan {
        ImageSpan {
            start,
            len,
            content_hash: [byte; 32],
        }
    }

    #[test]
    fn keys_chain_and_fold_image_hashes() {
        let ids: Vec<u32> = (0..40).collect();
        let a = block_keys(&ids, &[], 16);
        assert_eq!(a.len(), 2, "only full blocks get keys");
        assert_eq!(block_keys(&ids[..32], &[], 16), a);
        // A change in block 0 changes every later key.
        let mut other = ids.clone();
        other[3] = 99;
        let b = block_keys(&other, &[], 16);
        assert!(a[0] != b[0] && a[1] != b[1]);
        // Same ids, different image content: different keys from the image's first block on.
        let x = block_keys(&ids, &[image(20, 8, 1)], 16);
        let y = block_keys(&ids, &[image(20, 8, 2)], 16);
        assert_eq!(x[0], y[0]);
        assert_ne!(x[1], y[1]);
    }

    #[test]
    fn lookup_insert_and_lru_eviction() {
        let mut alloc = BlockAllocator::new(4);
        let mut cache = PrefixCache::default();
        let keys = block_keys(&(0..48).collect::<Vec<u32>>(), &[], 16);
        let blocks = alloc.allocate(3).unwrap();
        cache.insert(&keys, &blocks, &mut alloc);
        alloc.release(&blocks); // the sequence ends; the cache keeps them
        assert_eq!((alloc.free(), cache.len()), (1, 3));
        let hit = cache.lookup(&keys[..2], &mut alloc);
        assert_eq!(hit, blocks[..2].to_vec());
        // Blocks in use by a sequence are not evictable; the third one is.
        assert_eq!(cache.evict(3, &mut alloc), 1);
        assert_eq!(alloc.free(), 2);
        alloc.release(&hit);
        assert_eq!(cache.evict(3, &mut alloc), 2);
        assert_eq!((alloc.free(), cache.len()), (4, 0));
        assert!(cache.hit_rate() > 0.0);
    }
}
