//! CRC-32C (Castagnoli), the checksum of frame headers and payloads.
//!
//! `crc-fast` uses carry-less multiplication (VPCLMULQDQ/PCLMULQDQ on x86-64, PMULL on ARM):
//! about 44 GB/s on the 2-core development machine, against about 18 GB/s for a `crc32`
//! instruction loop, which matters when every 2 MiB tile is checksummed on both ends.

use crc_fast::{CrcAlgorithm, Digest};

/// CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc_fast::checksum(CrcAlgorithm::Crc32Iscsi, data) as u32
}

/// A CRC-32C computed over data that arrives in pieces.
pub(crate) struct Crc32c(Digest);

impl Crc32c {
    pub(crate) fn new() -> Self {
        Self(Digest::new(CrcAlgorithm::Crc32Iscsi))
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub(crate) fn finish(&self) -> u32 {
        self.0.finalize() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer_and_incremental_agree() {
        // The CRC-32C check value.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut c = Crc32c::new();
        for piece in data.chunks(4099) {
            c.update(piece);
        }
        assert_eq!(c.finish(), crc32c(&data));
    }
}
