//! Block ids with reference counts (a block can be shared by sequences with a common prefix).

/// Hands out block ids `0..total` and takes them back when their last holder releases them.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    free: Vec<u32>,
    refcounts: Vec<u32>,
}

impl BlockAllocator {
    /// An allocator of `total` blocks, all free.
    pub fn new(total: usize) -> Self {
        Self {
            // Pop from the end: low ids first.
            free: (0..total as u32).rev().collect(),
            refcounts: vec![0; total],
        }
    }

    /// Blocks in the pool.
    pub fn total(&self) -> usize {
        self.refcounts.len()
    }

    /// Blocks nobody holds.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// `n` blocks with one reference each, or `None` (and nothing taken) if fewer are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<u32>> {
        if n > self.free.len() {
            return None;
        }
        let blocks = self.free.split_off(self.free.len() - n);
        for &b in &blocks {
            self.refcounts[b as usize] = 1;
        }
        Some(blocks.into_iter().rev().collect())
    }

    /// One more holder of `block`.
    pub fn retain(&mut self, block: u32) {
        if let Some(count) = self.refcounts.get_mut(block as usize) {
            *count += 1;
        }
    }

    /// Drops one reference to each of `blocks`; blocks nobody holds any more become free.
    pub fn release(&mut self, blocks: &[u32]) {
        for &b in blocks {
            if let Some(count) = self.refcounts.get_mut(b as usize)
                && *count > 0
            {
                *count -= 1;
                if *count == 0 {
                    self.free.push(b);
                }
            }
        }
    }

    /// References held on `block`.
    pub fn refcount(&self, block: u32) -> u32 {
        self.refcounts.get(block as usize).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn allocation_is_all_or_nothing_and_release_frees() {
        let mut a = BlockAllocator::new(4);
        let first = a.allocate(3).unwrap();
        assert_eq!(first, vec![0, 1, 2]);
        assert!(a.allocate(2).is_none());
        assert_eq!(a.free(), 1);
        a.retain(1);
        a.release(&first);
        assert_eq!((a.free(), a.refcount(1)), (3, 1));
        a.release(&[1]);
        assert_eq!(a.free(), 4);
        // Releasing a free block again changes nothing.
        a.release(&[1]);
        assert_eq!(a.free(), 4);
    }
}
