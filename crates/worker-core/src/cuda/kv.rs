//! The paged KV cache in VRAM and the validated index (positions, block tables) the kernels follow.
//!
//! Layout per layer, for K and for V: f16 `[num_blocks, block_size, n_kv_heads, head_dim]`
//! (cuda-sys `wk_rope_kv_write`). A sequence's position `p` lives in physical block
//! `table[p / block_size]` at slot `p % block_size`.

use cudarc::driver::{CudaSlice, CudaStream, CudaView, DriverError};
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
///
/// All of it lives in ONE device buffer, laid out `[ids | pos | seq_ids | seq_lens | table]`
/// (`max_tokens` entries each, then `max_table`), so that an index of one token (the decode
/// graph's) is a single contiguous `[id, pos, seq_id, seq_len, table...]` record that one copy
/// from pinned host memory refreshes.
pub struct KvIndex {
    buf: CudaSlice<i32>,
    max_tokens: usize,
    max_table: usize,
    tokens: usize,
    decode: bool,
    max_blocks: usize,
    max_seq_len: usize,
    /// (num_blocks, block_size) the contents were validated against; None = nothing written.
    pool: Option<(usize, usize)>,
}

/// Entries before the block table in a one-token index record (id, pos, seq_id, seq_len).
pub const SINGLE_HEADER: usize = 4;

impl KvIndex {
    /// Room for `max_tokens` tokens (or decode sequences) and `max_table` block-table entries.
    pub fn new(
        s: &Arc<CudaStream>,
        max_tokens: usize,
        max_table: usize,
    ) -> Result<Self, DriverError> {
        let (mt, mtab) = (max_tokens.max(1), max_table.max(1));
        Ok(KvIndex {
            buf: s.alloc_zeros(4 * mt + mtab)?,
            max_tokens: mt,
            max_table: mtab,
            tokens: 0,
            decode: false,
            max_blocks: 0,
            max_seq_len: 0,
            pool: None,
        })
    }

    /// Token ids `[max_tokens]` (used by the decode graph; the eager path keeps its ids in the
    /// activations).
    pub(crate) fn ids(&self) -> CudaView<'_, i32> {
        self.buf.slice(..self.max_tokens)
    }
    pub(crate) fn pos(&self) -> CudaView<'_, i32> {
        let m = self.max_tokens;
        self.buf.slice(m..2 * m)
    }
    pub(crate) fn seq_ids(&self) -> CudaView<'_, i32> {
        let m = self.max_tokens;
        self.buf.slice(2 * m..3 * m)
    }
    pub(crate) fn seq_lens(&self) -> CudaView<'_, i32> {
        let m = self.max_tokens;
        self.buf.slice(3 * m..4 * m)
    }
    pub(crate) fn block_table(&self) -> CudaView<'_, i32> {
        let m = self.max_tokens;
        self.buf.slice(4 * m..4 * m + self.max_table)
    }
    /// The whole buffer (the decode graph copies its record into it).
    pub(crate) fn raw_mut(&mut self) -> &mut CudaSlice<i32> {
        &mut self.buf
    }
    pub fn table_capacity(&self) -> usize {
        self.max_table
    }

    pub fn bytes_for(max_tokens: usize, max_table: usize) -> u64 {
        (4 * max_tokens.max(1) + max_table.max(1)) as u64 * 4
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
        if t == 0 || t > self.max_tokens {
            return Err(format!(
                "{t} tokens do not fit the index (room for {})",
                self.max_tokens
            ));
        }
        let end = start_pos + t;
        let blocks = Self::blocks_checked(table, end, num_blocks, block_size)?;
        if blocks.len() > self.max_table {
            return Err(format!(
                "{} table entries do not fit the index (room for {})",
                blocks.len(),
                self.max_table
            ));
        }
        let pos: Vec<i32> = (start_pos..end).map(|p| p as i32).collect();
        let up = |e: DriverError| format!("uploading the KV index: {e}");
        let m = self.max_tokens;
        s.memcpy_htod(&pos, &mut self.buf.slice_mut(m..m + t))
            .map_err(up)?;
        s.memcpy_htod(
            &blocks,
            &mut self.buf.slice_mut(4 * m..4 * m + blocks.len()),
        )
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
        if n == 0 || n > self.max_tokens {
            return Err(format!(
                "{n} sequences do not fit the index (room for {})",
                self.max_tokens
            ));
        }
        let rows: Vec<Vec<i32>> = seqs
            .iter()
            .map(|&(p, table)| Self::blocks_checked(table, p + 1, num_blocks, block_size))
            .collect::<Result<_, _>>()?;
        let max_blocks = rows.iter().map(Vec::len).max().unwrap_or(1);
        if n * max_blocks > self.max_table {
            return Err(format!(
                "{n}x{max_blocks} table entries do not fit the index (room for {})",
                self.max_table
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
        let m = self.max_tokens;
        s.memcpy_htod(&pos, &mut self.buf.slice_mut(m..m + n))
            .map_err(up)?;
        s.memcpy_htod(&ids, &mut self.buf.slice_mut(2 * m..2 * m + n))
            .map_err(up)?;
        s.memcpy_htod(&lens, &mut self.buf.slice_mut(3 * m..3 * m + n))
            .map_err(up)?;
        s.memcpy_htod(&flat, &mut self.buf.slice_mut(4 * m..4 * m + flat.len()))
            .map_err(up)?;
        self.tokens = n;
        self.decode = true;
        self.max_blocks = max_blocks;
        self.max_seq_len = seqs.iter().map(|&(p, _)| p + 1).max().unwrap_or(0);
        self.pool = Some((num_blocks, block_size));
        Ok(())
    }

    /// Fills `rec` (host, at least `SINGLE_HEADER + width` entries) with the one-token decode
    /// record `[token, pos, 0, pos + 1, table[..width]]` of a single sequence, validating the
    /// table as [`Self::set_decode`] does (entries past the used blocks are 0, never read), and
    /// sets this index's shape to it: the caller copies `rec` into [`Self::raw_mut`] on the stream
    /// before the launches that read it. `width` (the launch's table width, >= the blocks in
    /// use) sets the attention grid; this index must have been made with `max_tokens == 1`.
    #[allow(clippy::too_many_arguments)]
    pub fn stage_single_decode(
        &mut self,
        rec: &mut [i32],
        token: i32,
        pos: usize,
        table: &[u32],
        width: usize,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<(), String> {
        self.pool = None;
        if self.max_tokens != 1 {
            return Err("a single-decode record needs an index of one token".into());
        }
        let blocks = Self::blocks_checked(table, pos + 1, num_blocks, block_size)?;
        if blocks.len() > width || width > self.max_table || rec.len() < SINGLE_HEADER + width {
            return Err(format!(
                "{} blocks do not fit a table width of {width} (room for {})",
                blocks.len(),
                self.max_table
            ));
        }
        let len = i32::try_from(pos + 1).map_err(|_| format!("position {pos} is too large"))?;
        rec[0] = token;
        rec[1] = len - 1;
        rec[2] = 0;
        rec[3] = len;
        rec[SINGLE_HEADER..SINGLE_HEADER + blocks.len()].copy_from_slice(&blocks);
        rec[SINGLE_HEADER + blocks.len()..SINGLE_HEADER + width].fill(0);
        self.tokens = 1;
        self.decode = true;
        self.max_blocks = width;
        self.max_seq_len = pos + 1;
        self.pool = Some((num_blocks, block_size));
        Ok(())
    }
}
