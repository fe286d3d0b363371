//! The CPU backend's KV pool: per layer, K and V for `num_blocks × block_size` positions.

/// Layout per layer: [num_blocks, block_size, kv_dim] for K and the same for V, f32.
pub struct KvPool {
    pub block_size: usize,
    pub num_blocks: usize,
    pub kv_dim: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl KvPool {
    pub fn new(n_layers: usize, num_blocks: usize, block_size: usize, kv_dim: usize) -> Self {
        let per_layer = num_blocks * block_size * kv_dim;
        KvPool {
            block_size,
            num_blocks,
            kv_dim,
            k: (0..n_layers).map(|_| vec![0.0; per_layer]).collect(),
            v: (0..n_layers).map(|_| vec![0.0; per_layer]).collect(),
        }
    }

    pub fn bytes(&self) -> u64 {
        (self.k.len() * 2 * self.num_blocks * self.block_size * self.kv_dim * 4) as u64
    }

    /// Offset of position `pos` of a sequence with `table` within a layer's buffer.
    #[inline]
    pub fn offset(&self, table: &[u32], pos: usize) -> usize {
        (table[pos / self.block_size] as usize * self.block_size + pos % self.block_size)
            * self.kv_dim
    }

    pub fn write(&mut self, layer: usize, table: &[u32], pos: usize, k: &[f32], v: &[f32]) {
        let o = self.offset(table, pos);
        self.k[layer][o..o + self.kv_dim].copy_from_slice(k);
        self.v[layer][o..o + self.kv_dim].copy_from_slice(v);
    }

    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.k[layer], &self.v[layer])
    }
}
