//! The index tables the paged kernels follow into device buffers (RoPE positions, pool slots,
//! block ids, output rows), checked on the host before upload: an index that would send a kernel
//! outside a buffer is an [`IndexError`] here, not a stray read or write on the GPU.
//!
//! A checked table keeps the buffer sizes it was checked against, and the kernel that takes its
//! uploaded form refuses smaller buffers. Only [`RowSlots::new`] and [`PagedTables::new`] build
//! a table, and only their `upload` builds what the kernels take. This module is built without
//! the `cuda` feature too, so CPU tests exercise every check.

use candle_core::{Device, Result, Tensor};

/// An index that would take a kernel outside a buffer, or a table the kernels cannot address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// A row's position has no entry in the RoPE tables.
    #[error("row {row}: position {position} is past the RoPE tables' {positions} positions")]
    PositionPastRope {
        /// The row of the batch.
        row: usize,
        /// Its position.
        position: u32,
        /// Positions the RoPE tables hold.
        positions: usize,
    },
    /// A row's slot is not in the KV pool.
    #[error("row {row}: slot {slot} is past the KV pool's {slots} slots")]
    SlotPastPool {
        /// The row of the batch.
        row: usize,
        /// Its slot.
        slot: u32,
        /// Slots of the pool.
        slots: usize,
    },
    /// Blocks of zero positions.
    #[error("the KV pool's block size is zero")]
    ZeroBlockSize,
    /// A block table names a block the pool does not have.
    #[error(
        "sequence {sequence}: block table entry {entry} names block {block}, the pool has {blocks}"
    )]
    BlockPastPool {
        /// The sequence (row of the block tables).
        sequence: usize,
        /// The entry of its table.
        entry: usize,
        /// The block id found.
        block: u32,
        /// Whole blocks in the pool.
        blocks: usize,
    },
    /// A query's output row is not a row of the query and output tensors.
    #[error("query {query}: row {row} is past the output's {rows} rows")]
    RowPastOutput {
        /// The query (entry of the tables).
        query: usize,
        /// Its row.
        row: u32,
        /// Rows of the query and output tensors.
        rows: usize,
    },
    /// A query names a sequence that has no block table.
    #[error("query {query}: sequence {sequence} has no block table (there are {sequences})")]
    SequencePastTables {
        /// The query (entry of the tables).
        query: usize,
        /// Its sequence.
        sequence: u32,
        /// Block tables given.
        sequences: usize,
    },
    /// A query attends past the positions its sequence's blocks hold.
    #[error("query {query}: position {position} is past the {reserved} positions of its blocks")]
    PositionPastBlocks {
        /// The query (entry of the tables).
        query: usize,
        /// Its position.
        position: u32,
        /// Positions the sequence's blocks hold.
        reserved: usize,
    },
    /// The longest block table holds more positions than the kernels' 32-bit counters reach.
    #[error("a block table of {blocks} blocks of {block_size} positions is past 2^31 positions")]
    TablesTooLong {
        /// Blocks of the longest table.
        blocks: usize,
        /// Positions per block.
        block_size: usize,
    },
}

/// Where one new row of a packed batch goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowSlot {
    /// Its position in its sequence: which RoPE angles rotate it.
    pub position: u32,
    /// Its KV pool slot: where its key and value are written.
    pub slot: u32,
}

/// The buffers [`RowSlots`] must stay inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowSlotBounds {
    /// Positions the RoPE tables hold (rows of the cos and sin tables).
    pub rope_positions: usize,
    /// Slots of the KV pool (its second axis).
    pub pool_slots: usize,
}

/// Every new row's position and pool slot, checked against the RoPE tables and the pool; what
/// `qk_norm_rope_cache` (built with `cuda`) writes where, once uploaded.
#[derive(Debug, Clone)]
pub struct RowSlots {
    positions: Vec<u32>,
    slots: Vec<u32>,
    bounds: RowSlotBounds,
}

impl RowSlots {
    /// Checks every row's position against the RoPE tables and its slot against the pool.
    pub fn new(rows: &[RowSlot], bounds: RowSlotBounds) -> std::result::Result<Self, IndexError> {
        for (row, r) in rows.iter().enumerate() {
            if r.position as usize >= bounds.rope_positions {
                return Err(IndexError::PositionPastRope {
                    row,
                    position: r.position,
                    positions: bounds.rope_positions,
                });
            }
            if r.slot as usize >= bounds.pool_slots {
                return Err(IndexError::SlotPastPool {
                    row,
                    slot: r.slot,
                    slots: bounds.pool_slots,
                });
            }
        }
        Ok(Self {
            positions: rows.iter().map(|r| r.position).collect(),
            slots: rows.iter().map(|r| r.slot).collect(),
            bounds,
        })
    }

    /// Rows in the table.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// The table on `device`, as the kernel takes it.
    pub fn upload(&self, device: &Device) -> Result<DeviceRowSlots> {
        let n = self.len();
        Ok(DeviceRowSlots {
            positions: Tensor::from_slice(&self.positions, n, device)?,
            slots: Tensor::from_slice(&self.slots, n, device)?,
            bounds: self.bounds,
        })
    }
}

/// [`RowSlots`] on the device: u32 positions and slots `[rows]`, and the bounds they were checked
/// against.
#[derive(Debug, Clone)]
// Read by the kernels, which only the `cuda` build has.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub struct DeviceRowSlots {
    pub(crate) positions: Tensor,
    pub(crate) slots: Tensor,
    pub(crate) bounds: RowSlotBounds,
}

impl DeviceRowSlots {
    /// Rows in the table.
    pub fn len(&self) -> usize {
        self.positions.elem_count()
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One query row of the paged decode kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagedRow {
    /// Its row in the query and output tensors.
    pub row: u32,
    /// Its sequence: which block table it reads.
    pub sequence: u32,
    /// Its position: it sees cached positions `0..=position`.
    pub position: u32,
}

/// The buffers [`PagedTables`] must stay inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagedBounds {
    /// Rows of the query and output tensors.
    pub rows: usize,
    /// Slots of the KV pool (its second axis).
    pub pool_slots: usize,
}

/// The block tables of a batch's sequences and the query rows that read them, checked against
/// the pool and the output; what `paged_attention` (built with `cuda`) reads, once uploaded.
#[derive(Debug, Clone)]
pub struct PagedTables {
    rows: Vec<u32>,
    sequences: Vec<u32>,
    positions: Vec<u32>,
    /// `[sequences, max_blocks]`, shorter tables padded with block 0 (never read).
    tables: Vec<u32>,
    max_blocks: usize,
    block_size: usize,
    bounds: PagedBounds,
}

impl PagedTables {
    /// Checks every block id of `blocks` (one table per sequence, in position order) against the
    /// pool, and every query's row against the output, its sequence against the tables and its
    /// position against the positions its sequence's blocks hold.
    pub fn new(
        blocks: &[&[u32]],
        block_size: usize,
        queries: &[PagedRow],
        bounds: PagedBounds,
    ) -> std::result::Result<Self, IndexError> {
        if block_size == 0 {
            return Err(IndexError::ZeroBlockSize);
        }
        let pool_blocks = bounds.pool_slots / block_size;
        for (sequence, table) in blocks.iter().enumerate() {
            if let Some((entry, &block)) = table
                .iter()
                .enumerate()
                .find(|(_, b)| **b as usize >= pool_blocks)
            {
                return Err(IndexError::BlockPastPool {
                    sequence,
                    entry,
                    block,
                    blocks: pool_blocks,
                });
            }
        }
        let max_blocks = blocks.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
        if max_blocks
            .checked_mul(block_size)
            .is_none_or(|positions| positions > i32::MAX as usize)
        {
            return Err(IndexError::TablesTooLong {
                blocks: max_blocks,
                block_size,
            });
        }
        for (query, q) in queries.iter().enumerate() {
            if q.row as usize >= bounds.rows {
                return Err(IndexError::RowPastOutput {
                    query,
                    row: q.row,
                    rows: bounds.rows,
                });
            }
            let Some(table) = blocks.get(q.sequence as usize) else {
                return Err(IndexError::SequencePastTables {
                    query,
                    sequence: q.sequence,
                    sequences: blocks.len(),
                });
            };
            let reserved = table.len() * block_size;
            if q.position as usize >= reserved {
                return Err(IndexError::PositionPastBlocks {
                    query,
                    position: q.position,
                    reserved,
                });
            }
        }
        let mut tables = vec![0u32; blocks.len() * max_blocks];
        for (row, table) in tables.chunks_exact_mut(max_blocks).zip(blocks) {
            row[..table.len()].copy_from_slice(table);
        }
        Ok(Self {
            rows: queries.iter().map(|q| q.row).collect(),
            sequences: queries.iter().map(|q| q.sequence).collect(),
            positions: queries.iter().map(|q| q.position).collect(),
            tables,
            max_blocks,
            block_size,
            bounds,
        })
    }

    /// Query rows in the table.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table has no query rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The tables on `device`, as the kernel takes them.
    pub fn upload(&self, device: &Device) -> Result<DevicePagedTables> {
        let n = self.len();
        let sequences = self.tables.len() / self.max_blocks;
        Ok(DevicePagedTables {
            rows: Tensor::from_slice(&self.rows, n, device)?,
            sequences: Tensor::from_slice(&self.sequences, n, device)?,
            positions: Tensor::from_slice(&self.positions, n, device)?,
            tables: Tensor::from_slice(&self.tables, (sequences, self.max_blocks), device)?,
            block_size: self.block_size,
            bounds: self.bounds,
        })
    }
}

/// [`PagedTables`] on the device: u32 rows, sequences and positions `[queries]`, block tables
/// `[sequences, max_blocks]`, and the bounds they were checked against.
#[derive(Debug, Clone)]
// Read by the kernels, which only the `cuda` build has.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub struct DevicePagedTables {
    pub(crate) rows: Tensor,
    pub(crate) sequences: Tensor,
    pub(crate) positions: Tensor,
    pub(crate) tables: Tensor,
    pub(crate) block_size: usize,
    pub(crate) bounds: PagedBounds,
}

impl DevicePagedTables {
    /// Query rows in the table.
    pub fn len(&self) -> usize {
        self.rows.elem_count()
    }

    /// Whether the table has no query rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROW_BOUNDS: RowSlotBounds = RowSlotBounds {
        rope_positions: 100,
        pool_slots: 64,
    };
    const PAGED_BOUNDS: PagedBounds = PagedBounds {
        rows: 4,
        pool_slots: 64,
    };

    fn slot(position: u32, slot: u32) -> RowSlot {
        RowSlot { position, slot }
    }

    fn query(row: u32, sequence: u32, position: u32) -> PagedRow {
        PagedRow {
            row,
            sequence,
            position,
        }
    }

    #[test]
    fn row_slots_in_range_pass_and_upload() {
        let rows = [slot(0, 0), slot(99, 63), slot(5, 17)];
        let table = RowSlots::new(&rows, ROW_BOUNDS).unwrap();
        assert_eq!(table.len(), 3);
        let device = table.upload(&Device::Cpu).unwrap();
        assert_eq!(device.len(), 3);
        assert_eq!(device.positions.to_vec1::<u32>().unwrap(), [0, 99, 5]);
        assert_eq!(device.slots.to_vec1::<u32>().unwrap(), [0, 63, 17]);
        assert_eq!(device.bounds, ROW_BOUNDS);
        assert!(RowSlots::new(&[], ROW_BOUNDS).unwrap().is_empty());
    }

    #[test]
    fn row_position_past_rope_is_refused() {
        assert_eq!(
            RowSlots::new(&[slot(3, 1), slot(100, 2)], ROW_BOUNDS).unwrap_err(),
            IndexError::PositionPastRope {
                row: 1,
                position: 100,
                positions: 100
            }
        );
    }

    #[test]
    fn row_slot_past_pool_is_refused() {
        assert_eq!(
            RowSlots::new(&[slot(3, 64)], ROW_BOUNDS).unwrap_err(),
            IndexError::SlotPastPool {
                row: 0,
                slot: 64,
                slots: 64
            }
        );
    }

    #[test]
    fn paged_tables_in_range_pass_and_upload_padded() {
        // 64 slots of 16 positions: blocks 0..4.
        let blocks: [&[u32]; 2] = [&[3, 1], &[0]];
        let queries = [query(0, 0, 31), query(3, 1, 15), query(2, 0, 0)];
        let tables = PagedTables::new(&blocks, 16, &queries, PAGED_BOUNDS).unwrap();
        assert_eq!(tables.len(), 3);
        let device = tables.upload(&Device::Cpu).unwrap();
        assert_eq!(
            device.tables.to_vec2::<u32>().unwrap(),
            [vec![3, 1], vec![0, 0]]
        );
        assert_eq!(device.rows.to_vec1::<u32>().unwrap(), [0, 3, 2]);
        assert_eq!(device.sequences.to_vec1::<u32>().unwrap(), [0, 1, 0]);
        assert_eq!(device.positions.to_vec1::<u32>().unwrap(), [31, 15, 0]);
        assert_eq!((device.block_size, device.bounds), (16, PAGED_BOUNDS));
        let empty = PagedTables::new(&[], 16, &[], PAGED_BOUNDS).unwrap();
        assert_eq!(empty.upload(&Device::Cpu).unwrap().tables.dims(), [0, 1]);
    }

    #[test]
    fn zero_block_size_is_refused() {
        assert_eq!(
            PagedTables::new(&[&[0]], 0, &[], PAGED_BOUNDS).unwrap_err(),
            IndexError::ZeroBlockSize
        );
    }

    #[test]
    fn block_past_pool_is_refused() {
        // 60 slots of 16 positions hold 3 whole blocks: block 3 would end past the pool.
        let bounds = PagedBounds {
            rows: 4,
            pool_slots: 60,
        };
        let blocks: [&[u32]; 2] = [&[0, 1], &[2, 3]];
        assert_eq!(
            PagedTables::new(&blocks, 16, &[], bounds).unwrap_err(),
            IndexError::BlockPastPool {
                sequence: 1,
                entry: 1,
                block: 3,
                blocks: 3
            }
        );
    }

    #[test]
    fn tables_past_the_kernels_position_range_are_refused() {
        let long = vec![0u32; 3];
        let bounds = PagedBounds {
            rows: 1,
            pool_slots: usize::MAX,
        };
        assert_eq!(
            PagedTables::new(&[&long], 1 << 30, &[], bounds).unwrap_err(),
            IndexError::TablesTooLong {
                blocks: 3,
                block_size: 1 << 30
            }
        );
    }

    #[test]
    fn query_row_past_output_is_refused() {
        assert_eq!(
            PagedTables::new(&[&[0]], 16, &[query(0, 0, 0), query(4, 0, 0)], PAGED_BOUNDS)
                .unwrap_err(),
            IndexError::RowPastOutput {
                query: 1,
                row: 4,
                rows: 4
            }
        );
    }

    #[test]
    fn query_sequence_without_table_is_refused() {
        assert_eq!(
            PagedTables::new(&[&[0]], 16, &[query(0, 1, 0)], PAGED_BOUNDS).unwrap_err(),
            IndexError::SequencePastTables {
                query: 0,
                sequence: 1,
                sequences: 1
            }
        );
    }

    #[test]
    fn query_position_past_its_blocks_is_refused() {
        // Sequence 1 holds one block (16 positions) though the longest table holds two.
        let blocks: [&[u32]; 2] = [&[0, 1], &[2]];
        assert_eq!(
            PagedTables::new(&blocks, 16, &[query(0, 1, 16)], PAGED_BOUNDS).unwrap_err(),
            IndexError::PositionPastBlocks {
                query: 0,
                position: 16,
                reserved: 16
            }
        );
    }
}
