//! Recycled payload buffers for receivers.
//!
//! A fresh 2 MiB allocation per tile is served by `mmap` and page-faulted in on every read, which
//! cost about a seventh of the receiver's time in `dvd bench transport`. Buffers handed to
//! consumers as `Bytes` come back here when the last reference is dropped.

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

/// A bounded set of reusable byte buffers.
#[derive(Debug)]
pub(crate) struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    max_buffers: usize,
}

impl BufferPool {
    /// A pool keeping at most `max_buffers` idle buffers.
    pub(crate) fn new(max_buffers: usize) -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new(Vec::new()),
            max_buffers,
        })
    }

    /// An empty buffer with room for `len` bytes, recycled when one is available.
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        match free.iter().position(|b| b.capacity() >= len) {
            Some(i) => free.swap_remove(i),
            None => Vec::with_capacity(len),
        }
    }

    /// Wraps a filled buffer as `Bytes` that returns it to `pool` once dropped.
    pub(crate) fn freeze(pool: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            pool: Arc::downgrade(pool),
        })
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.max_buffers {
            buf.clear();
            free.push(buf);
        }
    }
}

struct Pooled {
    buf: Vec<u8>,
    pool: Weak<BufferPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.give_back(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_the_last_reference_drops() {
        let pool = BufferPool::new(2);
        let mut buf = pool.take(1000);
        buf.extend_from_slice(&[7u8; 1000]);
        let ptr = buf.as_ptr();
        let bytes = BufferPool::freeze(&pool, buf);
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(&slice[..], &[7u8; 10]);
        assert!(pool.free.lock().unwrap().is_empty(), "still referenced");
        drop(slice);
        let again = pool.take(500);
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.is_empty());
    }

    #[test]
    fn the_pool_is_bounded() {
        let pool = BufferPool::new(1);
        let a = BufferPool::freeze(&pool, pool.take(10));
        let b = BufferPool::freeze(&pool, pool.take(10));
        drop((a, b));
        assert_eq!(pool.free.lock().unwrap().len(), 1);
    }
}
