//! The paged KV cache in VRAM and the validated index (positions, block tables) the kernels follow.
//!
//! Layout per layer, for K and for V: f16 `[num_blocks, block_size, n_kv_heads, head_dim]`
//! (cuda-sys `wk_rope_kv_write`). A sequence's position `p` lives in physical block
//! `table[p / block_size]` at slot `p % block_size`.

use cudarc::driver::{CudaSlice, CudaStream, DriverError};
use std::sync::Arc;

/// One layer's K and V pools (f16 bits).
pub struct LayerCache {
    pub(crate) k: CudaSlice<u16>,
    pub(crate) v: CudaSlice<u16>,
    num_blocks: usize,
    block_size: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl LayerCache {
    pub fn new(
        s: &Arc<CudaStream>,
        num_blocks: usize,
        block_size: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Result<Self, DriverError> {
        let n = num_blocks * block_size * n_kv_heads * head_dim;
        Ok(LayerCache {
            k: s.alloc_zeros::<u16>(n)?,
            v: s.alloc_zeros::<u16>(n)?,
            num_blocks,
            block_size,
            n_kv_heads,
            head_dim,
        })
    }

    /// Bytes of one layer's K and V pools.
    pub fn bytes_for(
        num_blocks: usize,
        block_size: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> u64 {
        2 * (num_blocks * block_size * n_kv_heads * head_dim * 2) as u64
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub(crate) fn check_geometry(&self, n_kv_heads: usize, head_dim: usize) -> Result<(), String> {
        if (n_kv_heads, head_dim) != (self.n_kv_heads, self.head_dim) {
            return Err(format!(
                "KV cache holds {}x{} per position, the launch uses {n_kv_heads}x{head_dim}",
                self.n_kv_heads, self.head_dim
            ));
        }
        Ok(())
    }

    /// Copies K and V of one position (f16 bits, `[n_kv_heads * head_dim]` each) to the host:
    /// for tests.
    pub fn read_position(
        &self,
        s: &Arc<CudaStream>,
        block: usize,
        slot: usize,
    ) -> Result<(Vec<u16>, Vec<u16>), DriverError> {
        let w = self.n_kv_heads * self.head_dim;
        let off = (block * self.block_size + slot) * w;
        let k = s.clone_dtoh(&self.k.slice(off..off + w))?;
        let v = s.clone_dtoh(&self.v.slice(off..off + w))?;
        s.synchronize()?;
        Ok((k, v))
    }
}

/// Positions, sequence ids, sequence lengths and block tables of one launch, in device memory,
/// validated on the host against the pool's geometry when written: every position's block
/// index lies inside its table row and every block id inside the pool, so the kernels cannot
/// address outside the cache.
pub struct KvIndex {
    pub(crate) pos: CudaSlice<i32>,
    pub(crate) seq_ids: CudaSlice<i32>,
    pub(crate) seq_lens: CudaSlice<i32>,
    pub(crate) block_table: CudaSlice<i32>,
    tokens: usize,
    decode: bool,
    max_blocks: usize,
    max_seq_len: usize,
    /// (num_blocks, block_size) the contents were validated against; None = nothing written.
    pool: Option<(usize, usize)>,
}

impl KvIndex {
    /// Room for `max_tokens` tokens (or decode sequences) and `max_table` block-table entries.
    pub fn new(
        s: &Arc<CudaStream>,
        max_tokens: usize,
        max_table: usize,
    ) -> Result<Self, DriverError> {
        Ok(KvIndex {
            pos: s.alloc_zeros(max_tokens.max(1))?,
            seq_ids: s.alloc_zeros(max_tokens.max(1))?,
            seq_lens: s.alloc_zeros(max_tokens.max(1))?,
            block_table: s.alloc_zeros(max_table.max(1))?,
            tokens: 0,
            decode: false,
            max_blocks: 0,
            max_seq_len: 0,
            pool: None,
        })
    }

    pub fn bytes_for(max_tokens: usize, max_table: usize) -> u64 {
        (3 * max_tokens.max(1) + max_table.max(1)) as u64 * 4
    }

    pub fn tokens(&self) -> usize {
        self.tokens
    }
    pub fn is_decode(&self) -> bool {
        self.decode
    }
    pub fn max_blocks(&self) -> usize {
        self.max_blocks
    }
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    pub(crate) fn check_pool(&self, num_blocks: usize, block_size: usize) -> Result<(), String> {
        match self.pool {
            Some(p) if p == (num_blocks, block_size) => Ok(()),
            Some((nb, bs)) => Err(format!(
                "KV index was validated for a pool of {nb} blocks of {bs}, used with {num_blocks} blocks of {block_size}"
            )),
            None => Err("KV index is empty".into()),
        }
    }

    fn blocks_checked(
        table: &[u32],
        positions: usize,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<Vec<i32>, String> {
        let needed = positions.div_ceil(block_size);
        if table.len() < needed {
            return Err(format!(
                "block table of {} blocks covers fewer than {positions} positions",
                table.len()
            ));
        }
        table[..needed]
            .iter()
            .map(|&b| {
                if (b as usize) < num_blocks {
                    Ok(b as i32)
                } else {
                    Err(format!(
                        "KV block {b} is outside the pool of {num_blocks} blocks"
                    ))
                }
            })
            .collect()
    }

    /// `t` consecutive tokens of one sequence starting at `start_pos` (block table row 0).
    pub fn set_prefill(
        &mut self,
        s: &Arc<CudaStream>,
        start_pos: usize,
        t: usize,
        table: &[u32],
        num_blocks: usize,
        block_size: usize,
    ) -> Result<(), String> {
        self.pool = None;
        if t == 0 || t > self.pos.len() {
            return Err(format!(
                "{t} tokens do not fit the index (room for {})",
                self.pos.len()
            ));
        }
        let end = start_pos + t;
        let blocks = Self::blocks_checked(table, end, num_blocks, block_size)?;
        if blocks.len() > self.block_table.len() {
            return Err(format!(
                "{} table entries do not fit the index (room for {})",
                blocks.len(),
                self.block_table.len()
            ));
        }
        let pos: Vec<i32> = (start_pos..end).map(|p| p as i32).collect();
        let up = |e: DriverError| format!("uploading the KV index: {e}");
        s.memcpy_htod(&pos, &mut self.pos.slice_mut(..t))
            .map_err(up)?;
        s.memcpy_htod(&blocks, &mut self.block_table.slice_mut(..blocks.len()))
            .map_err(up)?;
        self.tokens = t;
        self.decode = false;
        self.max_blocks = blocks.len();
        self.max_seq_len = end;
        self.pool = Some((num_blocks, block_size));
        Ok(())
    }

    /// One token per sequence: `(position, block table)` each; the token attends to keys
    /// `[0, position]`.
    pub fn set_decode(
        &mut self,
        s: &Arc<CudaStream>,
        seqs: &[(usize, &[u32])],
        num_blocks: usize,
        block_size: usize,
    ) -> Result<(), String> {
        self.pool = None;
        let n = seqs.len();
        if n == 0 || n > self.pos.len() {
            return Err(format!(
                "{n} sequences do not fit the index (room for {})",
                self.pos.len()
            ));
        }
        let rows: Vec<Vec<i32>> = seqs
            .iter()
            .map(|&(p, table)| Self::blocks_checked(table, p + 1, num_blocks, block_size))
            .collect::<Result<_, _>>()?;
        let max_blocks = rows.iter().map(Vec::len).max().unwrap_or(1);
        if n * max_blocks > self.block_table.len() {
            return Err(format!(
                "{n}x{max_blocks} table entries do not fit the index (room for {})",
                self.block_table.len()
            ));
        }
        let mut flat = vec![0i32; n * max_blocks];
        for (i, r) in rows.iter().enumerate() {
            flat[i * max_blocks..i * max_blocks + r.len()].copy_from_slice(r);
        }
        let pos: Vec<i32> = seqs.iter().map(|&(p, _)| p as i32).collect();
        let lens: Vec<i32> = seqs.iter().map(|&(p, _)| p as i32 + 1).collect();
        let ids: Vec<i32> = (0..n as i32).collect();
        let up = |e: DriverError| format!("uploading the KV index: {e}");
        s.memcpy_htod(&pos, &mut self.pos.slice_mut(..n))
            .map_err(up)?;
        s.memcpy_htod(&lens, &mut self.seq_lens.slice_mut(..n))
            .map_err(up)?;
        s.memcpy_htod(&ids, &mut self.seq_ids.slice_mut(..n))
            .map_err(up)?;
        s.memcpy_htod(&flat, &mut self.block_table.slice_mut(..flat.len()))
            .map_err(up)?;
        self.tokens = n;
        self.decode = true;
        self.max_blocks = max_blocks;
        self.max_seq_len = seqs.iter().map(|&(p, _)| p + 1).max().unwrap_or(0);
        self.pool = Some((num_blocks, block_size));
        Ok(())
    }
}
