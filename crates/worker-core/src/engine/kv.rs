//! KV cache bookkeeping: a pool of fixed-size blocks and a block table per sequence.
//! The backend stores the values; this only decides which physical block holds what.

/// Hands out physical block ids from a fixed pool.
#[derive(Debug)]
pub struct BlockAllocator {
    block_size: usize,
    total: usize,
    free: Vec<u32>,
}

impl BlockAllocator {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        // Reverse so that blocks are handed out in increasing order (easier to read in logs).
        BlockAllocator {
            block_size,
            total: num_blocks,
            free: (0..num_blocks as u32).rev().collect(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn total(&self) -> usize {
        self.total
    }
    pub fn free(&self) -> usize {
        self.free.len()
    }
    pub fn used(&self) -> usize {
        self.total - self.free.len()
    }

    /// Blocks needed to hold `tokens` positions.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Grows `table` to cover `tokens` positions. On failure nothing is taken.
    pub fn grow(&mut self, table: &mut Vec<u32>, tokens: usize) -> bool {
        let need = self.blocks_for(tokens).saturating_sub(table.len());
        if need > self.free.len() {
            return false;
        }
        for _ in 0..need {
            table.push(self.free.pop().expect("checked above"));
        }
        true
    }

    /// Returns a sequence's blocks to the pool.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        self.free.append(table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_and_release() {
        let mut a = BlockAllocator::new(4, 16);
        let mut t = Vec::new();
        assert!(a.grow(&mut t, 17));
        assert_eq!(t, vec![0, 1]);
        assert!(a.grow(&mut t, 32));
        assert_eq!(t.len(), 2);
        assert!(!a.grow(&mut t, 16 * 5), "only 2 blocks left");
        assert_eq!(t.len(), 2, "a failed grow takes nothing");
        a.release(&mut t);
        assert_eq!(a.free(), 4);
        assert!(t.is_empty());
    }
}
