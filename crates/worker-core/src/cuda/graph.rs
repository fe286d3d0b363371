//! The single-sequence decode step as a CUDA graph: embedding → layers → final norm → logits →
//! argmax, captured once per table width (a power of two of KV blocks: the attention grid
//! depends on it) and replayed. Its inputs (token id, position, sequence length, block table)
//! live in a fixed one-token [`KvIndex`] that ONE async copy from pinned host memory refreshes
//! before each replay; the argmax comes back through one small pinned read in `sample`.
//!
//! The graph records exactly the launches the eager path makes for the same step (the same
//! functions of [`super::forward`]), so its logits are bit-identical to the eager ones; only
//! the table width (the attention grid) differs, and the attention result does not depend on
//! it (splits past the sequence's length do nothing and are never merged).

use super::device::Pinned;
use super::forward::{self, Activations, OutputBuffers};
use super::kernels::{self as k, KResult};
use super::kv::{KvIndex, LayerCache, SINGLE_HEADER};
use super::weights::DeviceWeights;
use crate::model::ModelConfig;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaContext, CudaGraph, CudaSlice, CudaStream, DevicePtrMut, DriverError};
use std::collections::HashMap;
use std::sync::Arc;

/// Narrowest table width captured, in KV blocks (256 positions with blocks of 16).
pub const MIN_WIDTH: usize = 16;

/// A captured graph. CUDA graph handles are not internally synchronized, which is all `Send`
/// needs here: the backend (and so its graphs) is used by one thread at a time (the engine
/// thread), never shared.
struct SendGraph(CudaGraph);

// SAFETY: see above: moved between threads, never used from two at once (no `Sync`).
unsafe impl Send for SendGraph {}

pub struct DecodeGraphs {
    /// The one-token index the graphs read (its buffer address is baked into them).
    idx: KvIndex,
    /// Host staging of the index record `[id, pos, seq_id, seq_len, table...]`.
    stage: Pinned<i32>,
    /// The argmax of the logits row, written by the graph; and its host copy.
    token_dev: CudaSlice<i32>,
    token_host: Pinned<i32>,
    graphs: HashMap<usize, SendGraph>,
    stream: Arc<CudaStream>,
    /// A replay whose staging copy may still be reading `stage`.
    pending: bool,
    /// The last forward was a graph step: `token_dev` holds the argmax of logits row 0.
    token_ready: bool,
}

fn cuda_err(e: DriverError) -> cuda_sys::KernelError {
    cuda_sys::KernelError {
        code: e.0 as i32,
        message: format!("decode graph: {e}"),
    }
}

impl DecodeGraphs {
    /// Bytes of device memory besides the graphs themselves.
    pub fn bytes_for(table_cap: usize) -> u64 {
        KvIndex::bytes_for(1, table_cap) + 4
    }

    pub fn new(
        ctx: &Arc<CudaContext>,
        s: &Arc<CudaStream>,
        table_cap: usize,
    ) -> Result<Self, DriverError> {
        Ok(DecodeGraphs {
            idx: KvIndex::new(s, 1, table_cap)?,
            stage: Pinned::new(ctx, SINGLE_HEADER + table_cap.max(1))?,
            token_dev: s.alloc_zeros(1)?,
            token_host: Pinned::new(ctx, 1)?,
            graphs: HashMap::new(),
            stream: s.clone(),
            pending: false,
            token_ready: false,
        })
    }

    /// The table width (graph bucket) for a sequence using `blocks` KV blocks, or None when it
    /// does not fit the index.
    pub fn width_for(&self, blocks: usize) -> Option<usize> {
        let cap = self.idx.table_capacity();
        (blocks <= cap).then(|| blocks.next_power_of_two().max(MIN_WIDTH).min(cap))
    }

    /// Forgets every captured graph (the buffers they address were reallocated).
    pub fn invalidate(&mut self) {
        self.graphs.clear();
        self.token_ready = false;
    }

    /// Captured graphs (for tests and logs).
    pub fn captured(&self) -> usize {
        self.graphs.len()
    }

    pub fn set_token_ready(&mut self, ready: bool) {
        self.token_ready = ready;
    }

    pub fn token_ready(&self) -> bool {
        self.token_ready
    }

    /// One decode step of `token` at position `pos` of the sequence with block table `table`:
    /// stages and copies the inputs, captures the graph of this width on first use, replays it.
    /// The logits land in row 0 of `out.logits`, their argmax in `token_dev`.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        c: &ModelConfig,
        w: &DeviceWeights,
        kv: &mut [LayerCache],
        act: &mut Activations,
        out: &mut OutputBuffers,
        token: i32,
        pos: usize,
        table: &[u32],
        width: usize,
        num_blocks: usize,
        block_size: usize,
    ) -> KResult {
        let s = self.stream.clone();
        self.token_ready = false;
        if self.pending {
            // The previous staging copy may still read `stage`; it is long done in the usual
            // forward → sample flow, where the token read synchronized already.
            s.synchronize().map_err(cuda_err)?;
            self.pending = false;
        }
        let rec = self.stage.as_mut_slice();
        self.idx
            .stage_single_decode(rec, token, pos, table, width, num_blocks, block_size)
            .map_err(|m| cuda_sys::KernelError {
                code: cuda_sys::wk_status::WK_ERR_INVALID_ARGUMENT.0,
                message: m,
            })?;
        let n = SINGLE_HEADER + width;
        {
            let dst = self.idx.raw_mut();
            let (dp, _g) = dst.device_ptr_mut(&s);
            // SAFETY: `n` <= the index buffer's length (checked by stage_single_decode against
            // its table capacity); `stage` is pinned memory that stays untouched until the copy
            // is known complete (`pending`).
            unsafe {
                cudarc::driver::result::memcpy_htod_async(
                    dp,
                    &self.stage.as_slice()[..n],
                    s.cu_stream(),
                )
            }
            .map_err(cuda_err)?;
        }
        self.pending = true;
        if !self.graphs.contains_key(&width) {
            let g = self.capture(c, w, kv, act, out)?;
            self.graphs.insert(width, SendGraph(g));
            tracing::debug!("captured the decode graph for a table of {width} blocks");
        }
        self.graphs[&width].0.launch().map_err(cuda_err)?;
        self.token_ready = true;
        Ok(())
    }

    fn capture(
        &mut self,
        c: &ModelConfig,
        w: &DeviceWeights,
        kv: &mut [LayerCache],
        act: &mut Activations,
        out: &mut OutputBuffers,
    ) -> Result<CudaGraph, cuda_sys::KernelError> {
        let s = self.stream.clone();
        s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(cuda_err)?;
        let body = Self::record(&s, c, w, kv, act, out, &self.idx, &mut self.token_dev);
        let end = s.end_capture(CUgraphInstantiate_flags(0));
        body?;
        match end {
            Ok(Some(g)) => {
                g.upload().map_err(cuda_err)?;
                Ok(g)
            }
            Ok(None) => Err(cuda_err(DriverError(
                cudarc::driver::sys::CUresult::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
            ))),
            Err(e) => Err(cuda_err(e)),
        }
    }

    /// The launches of one step (the eager path's, for one sequence with logits).
    #[allow(clippy::too_many_arguments)]
    fn record(
        s: &Arc<CudaStream>,
        c: &ModelConfig,
        w: &DeviceWeights,
        kv: &mut [LayerCache],
        act: &mut Activations,
        out: &mut OutputBuffers,
        idx: &KvIndex,
        token_dev: &mut CudaSlice<i32>,
    ) -> KResult {
        forward::embed_from(s, c, w, &idx.ids(), &mut act.x, 1)?;
        for (l, cache) in w.layers.iter().zip(kv.iter_mut()) {
            forward::layer(s, c, l, cache, idx, act)?;
        }
        let d = c.d_model;
        let Activations { x, q8, cap, .. } = act;
        let xr = x.slice(..d);
        forward::output_head_from(
            s,
            c,
            w,
            &xr,
            &mut out.hf,
            &mut out.logits,
            q8,
            None,
            *cap,
            1,
        )?;
        k::argmax(s, &out.logits, token_dev, 1, c.vocab_size)
    }

    /// The token the last graph step chose (greedy), read through pinned memory; waits for the
    /// step to finish.
    pub fn read_token(&mut self) -> Result<i32, DriverError> {
        let s = &self.stream;
        let (sp, _g) = cudarc::driver::DevicePtr::device_ptr(&self.token_dev, s);
        // SAFETY: one i32 from a live device buffer into pinned memory we own; synchronized
        // before it is read.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(
                self.token_host.as_mut_slice(),
                sp,
                s.cu_stream(),
            )?
        };
        s.synchronize()?;
        self.pending = false;
        Ok(self.token_host.as_slice()[0])
    }
}

impl Drop for DecodeGraphs {
    fn drop(&mut self) {
        // No copy may still read the pinned staging when it is freed.
        let _ = self.stream.synchronize();
    }
}
