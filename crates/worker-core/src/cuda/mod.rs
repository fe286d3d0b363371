//! The CUDA backend: the same [`Backend`] as the CPU one, with the weights (quantized, as stored),
//! the paged f16 KV cache, the activations and the logits in VRAM, and sampling on the device.
//!
//! Layout of this module:
//! - [`device`]: driver probe, context + the backend's single stream, VRAM budget, copies;
//! - [`kernels`]: size-checked safe wrappers around the cuda-sys launchers (the only place where
//!   raw device pointers exist);
//! - [`weights`]: the upload; [`kv`]: the KV pool and the validated KV index;
//! - [`forward`]: the forward pass; [`sample`]: the device sampler.
//!
//! VRAM-only: [`CudaBackend::new`] adds up weights + KV pool + activations + logits + scratch,
//! compares the sum with the free device memory (and with [`CudaConfig::max_vram_bytes`], e.g.
//! `WORKER_ORCD_VRAM_BUDGET`), and fails with both numbers before allocating anything. Plain
//! device allocations only (no unified or host-mapped memory). An allocation that fails while
//! serving (the logits buffer growing for a long prompt with per-position logits) returns
//! [`BackendError::OutOfMemory`] and leaves the backend usable.

pub mod device;
pub mod forward;
pub mod graph;
pub mod kernels;
pub mod kv;
pub mod sample;
pub mod weights;

use crate::engine::{
    Backend, BackendError, BackendInfo, BatchItem, LogitsWanted, SampleRequest, Sampled,
    TokenLogprob,
};
use crate::model::Model;
use crate::trace::Tracer;
use cudarc::driver::DriverError;
use device::{Gpu, mib};
use forward::{ActPlan, Activations, OutputBuffers};
use kv::{KvIndex, LayerCache};
use orch_log::Stage;
use sample::Sampler;
use std::sync::Arc;
use weights::DeviceWeights;

/// Tokens per KV block (the same as the CPU backend's).
pub const KV_BLOCK_SIZE: usize = 16;

/// Bytes kept free beyond the planned buffers (kernel images, driver bookkeeping).
pub const VRAM_MARGIN: u64 = 64 << 20;

/// Sizes the backend preallocates.
#[derive(Debug, Clone)]
pub struct CudaConfig {
    /// Tokens per launch sequence; longer chunks are processed in pieces of this size.
    pub max_batch_tokens: usize,
    /// Single-token sequences decoded together in one step.
    pub max_decode_seqs: usize,
    /// Logits rows preallocated; the buffer grows (within the budget) for longer
    /// per-position-logits chunks.
    pub max_logit_rows: usize,
    /// Cap on the VRAM this backend may use (None: the free device memory).
    pub max_vram_bytes: Option<u64>,
    /// Chunks of more than 8 tokens (prompts) go through cuBLAS f16 GEMMs on weights dequantized
    /// to f16 in row chunks; off (or without libcublas) they use the dp4a matvec like decode.
    /// `WORKER_ORCD_PROMPT_GEMM=0` turns it off.
    pub prompt_gemm: bool,
    /// A forward of ONE single-token sequence (plain decode) replays a CUDA graph of the whole
    /// step (see [`graph`]); off, it is launched eagerly. `WORKER_ORCD_CUDA_GRAPH=0` turns it off.
    pub decode_graph: bool,
    /// Fused decode matvecs (Q/K/V in one launch, gate/up + SwiGLU in one). Off only to measure
    /// the unfused path: `WORKER_ORCD_CUDA_FUSED=0`.
    pub fused_decode: bool,
}

impl Default for CudaConfig {
    fn default() -> Self {
        CudaConfig {
            max_batch_tokens: 512,
            max_decode_seqs: 64,
            max_logit_rows: 64,
            max_vram_bytes: None,
            prompt_gemm: true,
            decode_graph: true,
            fused_decode: true,
        }
    }
}

impl CudaConfig {
    /// The defaults, with `max_vram_bytes` from `WORKER_ORCD_VRAM_BUDGET` when set and the prompt
    /// GEMM off when `WORKER_ORCD_PROMPT_GEMM=0`.
    pub fn from_env() -> Self {
        let gemm_off = std::env::var("WORKER_ORCD_PROMPT_GEMM").is_ok_and(|v| v.trim() == "0");
        let graph_off = std::env::var("WORKER_ORCD_CUDA_GRAPH").is_ok_and(|v| v.trim() == "0");
        CudaConfig {
            max_vram_bytes: device::budget_from_env(),
            prompt_gemm: !gemm_off,
            decode_graph: !graph_off,
            fused_decode: !std::env::var("WORKER_ORCD_CUDA_FUSED").is_ok_and(|v| v.trim() == "0"),
            ..Default::default()
        }
    }
}

/// Why the backend could not start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CudaInitError {
    /// No driver, no such device, or the context could not be created.
    #[error("no usable CUDA device cuda:{ordinal}: {reason}")]
    NoDevice { ordinal: usize, reason: String },
    /// The model needs more VRAM than is free (or than the budget allows).
    #[error("{}", insufficient(.device, *.needed, *.free, .budget, .breakdown))]
    InsufficientVram {
        device: String,
        needed: u64,
        free: u64,
        budget: Option<u64>,
        breakdown: String,
    },
    /// A tensor type or shape the kernels cannot run.
    #[error("the model cannot run on the CUDA backend: {0}")]
    Unsupported(String),
    #[error("CUDA error while starting: {0}")]
    Cuda(String),
}

fn insufficient(
    device: &str,
    needed: u64,
    free: u64,
    budget: &Option<u64>,
    breakdown: &str,
) -> String {
    let limit = match budget {
        Some(b) if *b < free => format!(
            "; the VRAM budget ({}) allows {b} bytes ({})",
            device::VRAM_BUDGET_ENV,
            mib(*b)
        ),
        _ => String::new(),
    };
    format!(
        "insufficient VRAM on {device}: needed {needed} bytes ({}), free {free} bytes ({}){limit} [{breakdown}]",
        mib(needed),
        mib(free)
    )
}

impl CudaInitError {
    /// The start-up failure the M0 contract reports as INSUFFICIENT_VRAM (exit 1).
    pub fn is_insufficient_vram(&self) -> bool {
        matches!(self, CudaInitError::InsufficientVram { .. })
    }
}

/// Planned VRAM use, by purpose.
#[derive(Debug, Clone, Copy)]
pub struct VramPlan {
    pub weights: u64,
    pub kv: u64,
    pub activations: u64,
    pub logits: u64,
    pub sampler: u64,
    pub margin: u64,
}

impl VramPlan {
    pub fn total(&self) -> u64 {
        self.weights + self.kv + self.activations + self.logits + self.sampler + self.margin
    }
    fn describe(&self) -> String {
        format!(
            "weights {}, KV cache {}, activations+scratch {}, logits {}, sampler {}, margin {}",
            mib(self.weights),
            mib(self.kv),
            mib(self.activations),
            mib(self.logits),
            mib(self.sampler),
            mib(self.margin)
        )
    }
}

pub struct CudaBackend {
    gpu: Gpu,
    model: Arc<Model>,
    w: DeviceWeights,
    kv: Vec<LayerCache>,
    idx: KvIndex,
    act: Activations,
    out: OutputBuffers,
    sampler: Sampler,
    /// The single-sequence decode graphs (None when `cfg.decode_graph` is off).
    graphs: Option<graph::DecodeGraphs>,
    cfg: CudaConfig,
    num_blocks: usize,
    /// Logits rows the last forward produced.
    rows: usize,
    tracer: Tracer,
    plan: VramPlan,
    bytes_used: u64,
    device_name: String,
}

fn drv(e: DriverError) -> BackendError {
    if device::is_oom(&e) {
        BackendError::OutOfMemory(e.to_string())
    } else {
        BackendError::Cuda(e.to_string())
    }
}

fn kerr(e: cuda_sys::KernelError) -> BackendError {
    BackendError::Cuda(e.to_string())
}

/// One piece of a forward step: token rows `rows` of the current launch belong to `item`
/// (a sub-chunk of an engine item, or one decode sequence).
struct Piece<'a> {
    item: BatchItem<'a>,
    /// Whether this piece's rows are logged (only the last piece of a split chunk is).
    traced: bool,
}

impl CudaBackend {
    /// Uploads `model` to device `ordinal` with a KV pool of `kv_tokens` positions, after checking
    /// that it fits (see the module docs). `WORKER_ORCD_VRAM_BUDGET` caps the VRAM it may use.
    pub fn new(
        model: Arc<Model>,
        kv_tokens: usize,
        ordinal: usize,
    ) -> Result<CudaBackend, CudaInitError> {
        Self::with_config(model, kv_tokens, ordinal, CudaConfig::from_env())
    }

    /// The planned VRAM use for `model` with this configuration. Needs the CUDA driver (the
    /// sampler's CUB scratch size is queried from the runtime), not an open backend.
    pub fn plan(
        model: &Model,
        kv_tokens: usize,
        cfg: &CudaConfig,
    ) -> Result<VramPlan, CudaInitError> {
        let c = &model.config;
        let weights = DeviceWeights::plan(model).map_err(CudaInitError::Unsupported)?;
        let num_blocks = kv_tokens.div_ceil(KV_BLOCK_SIZE).max(1);
        let kv = c.n_layers as u64
            * LayerCache::bytes_for(num_blocks, KV_BLOCK_SIZE, c.n_kv_heads, c.head_dim);
        let cap = cfg.max_batch_tokens.max(1);
        let max_ctx = max_decode_ctx(c, num_blocks);
        let ap = ActPlan::new(c, cap, cfg.max_decode_seqs.max(1), max_ctx)
            .map_err(CudaInitError::Unsupported)?;
        let table = table_entries(cfg, num_blocks);
        let gemm = if use_gemm(cfg) {
            forward::Gemm::bytes_for(c, cap)
        } else {
            0
        };
        let graphs = if cfg.decode_graph {
            graph::DecodeGraphs::bytes_for(max_ctx / KV_BLOCK_SIZE)
        } else {
            0
        };
        let activations = ap.bytes(c) + KvIndex::bytes_for(cap, table) + gemm + graphs;
        let logits = OutputBuffers::bytes_for(c, cfg.max_logit_rows.max(1));
        let sampler = Sampler::bytes_for(c.vocab_size).map_err(CudaInitError::Unsupported)?;
        Ok(VramPlan {
            weights,
            kv,
            activations,
            logits,
            sampler,
            margin: VRAM_MARGIN,
        })
    }

    pub fn with_config(
        model: Arc<Model>,
        kv_tokens: usize,
        ordinal: usize,
        cfg: CudaConfig,
    ) -> Result<CudaBackend, CudaInitError> {
        // The device first: without one the error is NoDevice (the caller may fall back to the
        // CPU), whatever else is wrong.
        let gpu =
            Gpu::open(ordinal).map_err(|reason| CudaInitError::NoDevice { ordinal, reason })?;
        let c = model.config.clone();
        if c.head_dim != 64 && c.head_dim != 128 && c.head_dim != 256 {
            return Err(CudaInitError::Unsupported(format!(
                "head_dim {} (the attention kernels take 64, 128 or 256)",
                c.head_dim
            )));
        }
        if !(c.d_model.is_multiple_of(32)
            && c.d_ff.is_multiple_of(32)
            && c.q_dim().is_multiple_of(32))
        {
            return Err(CudaInitError::Unsupported(
                "widths must be multiples of 32 (q8_1 activations)".into(),
            ));
        }
        let plan = Self::plan(&model, kv_tokens, &cfg)?;
        let device_name = format!("cuda:{ordinal} ({})", gpu.name);
        let (free, _total) = gpu
            .mem_info()
            .map_err(|e| CudaInitError::Cuda(e.to_string()))?;
        let needed = plan.total();
        let available = cfg.max_vram_bytes.map_or(free, |b| b.min(free));
        if needed > available {
            return Err(CudaInitError::InsufficientVram {
                device: device_name,
                needed,
                free,
                budget: cfg.max_vram_bytes,
                breakdown: plan.describe(),
            });
        }
        let oom_or = |what: &str, e: DriverError| {
            if device::is_oom(&e) {
                let free_now = gpu.mem_info().map(|m| m.0).unwrap_or(0);
                CudaInitError::InsufficientVram {
                    device: device_name.clone(),
                    needed,
                    free: free_now,
                    budget: cfg.max_vram_bytes,
                    breakdown: format!("allocating {what} failed: {}", plan.describe()),
                }
            } else {
                CudaInitError::Cuda(format!("allocating {what}: {e}"))
            }
        };
        let s = gpu.stream.clone();
        let w = DeviceWeights::upload(&s, &model).map_err(CudaInitError::Cuda)?;
        let num_blocks = kv_tokens.div_ceil(KV_BLOCK_SIZE).max(1);
        let kv = (0..c.n_layers)
            .map(|_| LayerCache::new(&s, num_blocks, KV_BLOCK_SIZE, c.n_kv_heads, c.head_dim))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| oom_or("the KV cache", e))?;
        let cap = cfg.max_batch_tokens.max(1);
        let max_ctx = max_decode_ctx(&c, num_blocks);
        let ap = ActPlan::new(&c, cap, cfg.max_decode_seqs.max(1), max_ctx)
            .map_err(CudaInitError::Unsupported)?;
        let gemm = if use_gemm(&cfg) {
            Some(forward::Gemm::new(&s, &c, cap).map_err(CudaInitError::Cuda)?)
        } else {
            None
        };
        let mut act = Activations::new(&s, &c, &ap, gemm).map_err(|e| oom_or("activations", e))?;
        act.fused = cfg.fused_decode;
        let idx = KvIndex::new(&s, cap, table_entries(&cfg, num_blocks))
            .map_err(|e| oom_or("the KV index", e))?;
        let out =
            OutputBuffers::new(&s, &c, cfg.max_logit_rows).map_err(|e| oom_or("logits", e))?;
        let sampler = Sampler::new(&gpu, c.vocab_size).map_err(CudaInitError::Cuda)?;
        let graphs = if cfg.decode_graph {
            Some(
                graph::DecodeGraphs::new(&gpu.ctx, &s, max_ctx / KV_BLOCK_SIZE)
                    .map_err(|e| oom_or("the decode graph inputs", e))?,
            )
        } else {
            None
        };
        gpu.sync().map_err(|e| CudaInitError::Cuda(e.to_string()))?;
        tracing::info!(
            "CUDA backend on {device_name}: {} planned ({}); {} free before loading",
            mib(needed),
            plan.describe(),
            mib(free)
        );
        Ok(CudaBackend {
            gpu,
            model,
            w,
            kv,
            idx,
            act,
            out,
            sampler,
            graphs,
            cfg,
            num_blocks,
            rows: 0,
            tracer: Tracer::default(),
            plan,
            bytes_used: needed,
            device_name,
        })
    }

    /// Whether prompts (chunks of more than 8 tokens) run through the cuBLAS GEMM path.
    pub fn uses_prompt_gemm(&self) -> bool {
        self.act.gemm.is_some()
    }

    /// The VRAM plan this backend was started with.
    pub fn vram_plan(&self) -> VramPlan {
        self.plan
    }

    /// Grows the logits buffers to `rows` rows, within the budget.
    fn ensure_rows(&mut self, rows: usize) -> Result<(), BackendError> {
        if rows <= self.out.rows {
            return Ok(());
        }
        let c = &self.model.config;
        let extra = OutputBuffers::bytes_for(c, rows) - OutputBuffers::bytes_for(c, self.out.rows);
        if let Some(b) = self.cfg.max_vram_bytes
            && self.bytes_used + extra > b
        {
            return Err(BackendError::OutOfMemory(format!(
                "logits for {rows} rows need {} more, the VRAM budget of {} has {} left",
                mib(extra),
                mib(b),
                mib(b.saturating_sub(self.bytes_used))
            )));
        }
        // The decode graphs address the logits buffers: capture them again after this.
        if let Some(g) = self.graphs.as_mut() {
            g.invalidate();
        }
        // Free the old buffers first so the peak is the new size, not old + new.
        let old_rows = self.out.rows;
        self.out = OutputBuffers::new(&self.gpu.stream, c, 1).map_err(drv)?;
        match OutputBuffers::new(&self.gpu.stream, c, rows) {
            Ok(o) => {
                self.out = o;
                self.bytes_used += extra;
                Ok(())
            }
            Err(e) => {
                // Restore the previous capacity so the backend keeps serving.
                self.out = OutputBuffers::new(&self.gpu.stream, c, old_rows).map_err(drv)?;
                Err(drv(e))
            }
        }
    }

    fn validate(&self, item: &BatchItem<'_>) -> Result<(), BackendError> {
        let v = self.model.config.vocab_size;
        if item.tokens.is_empty() {
            return Err(BackendError::Invalid("empty batch item".into()));
        }
        if let Some(&bad) = item.tokens.iter().find(|&&t| t as usize >= v) {
            return Err(BackendError::Invalid(format!(
                "token id {bad} is outside the vocabulary"
            )));
        }
        let needed = item.start_pos + item.tokens.len();
        if item.block_table.len() * KV_BLOCK_SIZE < needed {
            return Err(BackendError::Invalid(format!(
                "block table covers fewer than {needed} positions"
            )));
        }
        if let Some(&bad) = item.block_table[..needed.div_ceil(KV_BLOCK_SIZE)]
            .iter()
            .find(|&&b| b as usize >= self.num_blocks)
        {
            return Err(BackendError::Invalid(format!(
                "KV block {bad} is outside the pool"
            )));
        }
        Ok(())
    }

    /// Copies `data` rows to the host and logs each piece's rows (only when a sink is on).
    fn trace(
        &mut self,
        stage: Stage,
        pieces: &[Piece<'_>],
        rows_per_piece: &[usize],
        t: usize,
        width: usize,
        which: TraceBuf,
    ) {
        if pieces.iter().all(|p| !p.traced || p.item.trace.is_none()) {
            return;
        }
        let src = match which {
            TraceBuf::X => self.act.x.slice(..t * width),
        };
        let host = match self.gpu.download(&src) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("checkpoint copy failed: {e}");
                return;
            }
        };
        let mut r0 = 0;
        for (p, &n) in pieces.iter().zip(rows_per_piece) {
            if p.traced {
                self.tracer.record(
                    p.item.trace.as_ref(),
                    stage,
                    &p.item,
                    &host[r0 * width..(r0 + n) * width],
                    width,
                );
            }
            r0 += n;
        }
    }

    /// Runs the layers over the tokens currently indexed by `self.idx` (ids already uploaded),
    /// logging checkpoints for `pieces`.
    fn run_layers(
        &mut self,
        pieces: &[Piece<'_>],
        rows_per_piece: &[usize],
    ) -> Result<(), BackendError> {
        let model = self.model.clone();
        let c = &model.config;
        let s = self.gpu.stream.clone();
        let t = self.idx.tokens();
        forward::embed(&s, c, &self.w, &mut self.act, t).map_err(kerr)?;
        if self.tracer.enabled() {
            self.trace(
                Stage::Embedding,
                pieces,
                rows_per_piece,
                t,
                c.d_model,
                TraceBuf::X,
            );
        }
        for li in 0..c.n_layers {
            forward::layer(
                &s,
                c,
                &self.w.layers[li],
                &mut self.kv[li],
                &self.idx,
                &mut self.act,
            )
            .map_err(kerr)?;
            if self.tracer.wants_layer(li) {
                self.trace(
                    Stage::Layer(li as u32),
                    pieces,
                    rows_per_piece,
                    t,
                    c.d_model,
                    TraceBuf::X,
                );
            }
        }
        Ok(())
    }

    /// Copies `n` rows of `act.x` starting at row `from` into `out.xf` at row `to`.
    fn keep_rows(&mut self, from: usize, n: usize, to: usize) -> Result<(), BackendError> {
        let d = self.model.config.d_model;
        let src = self.act.x.slice(from * d..(from + n) * d);
        let mut dst = self.out.xf.slice_mut(to * d..(to + n) * d);
        self.gpu.stream.memcpy_dtod(&src, &mut dst).map_err(drv)
    }

    fn upload_ids(&mut self, ids: &[i32]) -> Result<(), BackendError> {
        let mut dst = self.act.ids.slice_mut(..ids.len());
        self.gpu.stream.memcpy_htod(ids, &mut dst).map_err(drv)
    }

    /// A run of single-token items, decoded together; their logits rows start at `row0`
    /// (each item that wants logits takes the next row).
    fn decode_group(
        &mut self,
        items: &[BatchItem<'_>],
        mut row: usize,
    ) -> Result<usize, BackendError> {
        let ids: Vec<i32> = items.iter().map(|it| it.tokens[0] as i32).collect();
        self.upload_ids(&ids)?;
        let seqs: Vec<(usize, &[u32])> = items
            .iter()
            .map(|it| (it.start_pos, it.block_table))
            .collect();
        self.idx
            .set_decode(&self.gpu.stream, &seqs, self.num_blocks, KV_BLOCK_SIZE)
            .map_err(BackendError::Invalid)?;
        let pieces: Vec<Piece<'_>> = items
            .iter()
            .map(|it| Piece {
                item: it.clone(),
                traced: true,
            })
            .collect();
        let ones = vec![1; items.len()];
        self.run_layers(&pieces, &ones)?;
        // Keep the rows that want logits; consecutive rows in one copy.
        let mut i = 0;
        while i < items.len() {
            if items[i].logits == LogitsWanted::None {
                i += 1;
                continue;
            }
            let mut j = i;
            while j < items.len() && items[j].logits != LogitsWanted::None {
                j += 1;
            }
            self.keep_rows(i, j - i, row)?;
            row += j - i;
            i = j;
        }
        Ok(row)
    }

    /// One multi-token chunk of one sequence, in pieces of at most `cap` tokens.
    fn prefill_item(
        &mut self,
        item: &BatchItem<'_>,
        mut row: usize,
    ) -> Result<usize, BackendError> {
        let cap = self.act.cap;
        let n = item.tokens.len();
        let mut off = 0;
        while off < n {
            let len = (n - off).min(cap);
            let last = off + len == n;
            let ids: Vec<i32> = item.tokens[off..off + len]
                .iter()
                .map(|&t| t as i32)
                .collect();
            self.upload_ids(&ids)?;
            self.idx
                .set_prefill(
                    &self.gpu.stream,
                    item.start_pos + off,
                    len,
                    item.block_table,
                    self.num_blocks,
                    KV_BLOCK_SIZE,
                )
                .map_err(BackendError::Invalid)?;
            let sub = BatchItem {
                tokens: &item.tokens[off..off + len],
                start_pos: item.start_pos + off,
                ..item.clone()
            };
            let pieces = [Piece {
                item: sub,
                traced: last,
            }];
            self.run_layers(&pieces, &[len])?;
            match item.logits {
                LogitsWanted::None => {}
                LogitsWanted::Last if last => {
                    self.keep_rows(len - 1, 1, row)?;
                    row += 1;
                }
                LogitsWanted::Last => {}
                LogitsWanted::All => {
                    self.keep_rows(0, len, row)?;
                    row += len;
                }
            }
            off += len;
        }
        Ok(row)
    }

    /// Final norm + output head over the `r` kept rows, with their checkpoints.
    fn finish(&mut self, batch: &[BatchItem<'_>], r: usize) -> Result<(), BackendError> {
        let model = self.model.clone();
        let c = &model.config;
        let s = self.gpu.stream.clone();
        forward::output_head(&s, c, &self.w, &mut self.out, &mut self.act, r).map_err(kerr)?;
        if self.tracer.enabled() && batch.iter().any(|b| b.trace.is_some()) {
            let (d, v) = (c.d_model, c.vocab_size);
            let hf = self
                .gpu
                .download(&self.out.hf.slice(..r * d))
                .map_err(drv)?;
            let lg = self
                .gpu
                .download(&self.out.logits.slice(..r * v))
                .map_err(drv)?;
            let mut r0 = 0;
            for item in batch {
                let n = rows_of(item);
                if n > 0 {
                    let trace = item.trace.as_ref();
                    self.tracer
                        .record(trace, Stage::FinalNorm, item, &hf[r0 * d..(r0 + n) * d], d);
                    self.tracer
                        .record(trace, Stage::Logits, item, &lg[r0 * v..(r0 + n) * v], v);
                }
                r0 += n;
            }
        }
        Ok(())
    }

    /// Runs `batch` as one replay of the decode graph when it is a single one-token sequence
    /// that wants logits and is not traced; false when it must go the eager way.
    fn graph_step(&mut self, batch: &[BatchItem<'_>]) -> Result<bool, BackendError> {
        let [item] = batch else {
            return Ok(false);
        };
        if item.tokens.len() != 1 || item.logits == LogitsWanted::None || item.trace.is_some() {
            return Ok(false);
        }
        let Some(g) = self.graphs.as_mut() else {
            return Ok(false);
        };
        let blocks = (item.start_pos + 1).div_ceil(KV_BLOCK_SIZE);
        let Some(width) = g.width_for(blocks) else {
            return Ok(false);
        };
        let c = &self.model.config;
        g.step(
            c,
            &self.w,
            &mut self.kv,
            &mut self.act,
            &mut self.out,
            item.tokens[0] as i32,
            item.start_pos,
            item.block_table,
            width,
            self.num_blocks,
            KV_BLOCK_SIZE,
        )
        .map_err(kerr)?;
        Ok(true)
    }

    /// Decode graphs captured so far (for tests).
    pub fn decode_graphs_captured(&self) -> usize {
        self.graphs.as_ref().map_or(0, |g| g.captured())
    }

    fn row_check(&self, row: usize) -> Result<(), BackendError> {
        if row >= self.rows {
            return Err(BackendError::Invalid(format!(
                "logits row {row} was not computed"
            )));
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum TraceBuf {
    X,
}

/// Whether the prompt GEMM path is on: asked for, and libcublas can be loaded.
fn use_gemm(cfg: &CudaConfig) -> bool {
    if !cfg.prompt_gemm {
        return false;
    }
    let present = device::cublas_present();
    if !present {
        tracing::warn!(
            "libcublas not found: prompts use the matvec path (set LD_LIBRARY_PATH to CUDA's lib64)"
        );
    }
    present
}

/// Widest decode attention launch: a table of `num_blocks` blocks, but no wider than the model's
/// context (rounded up to a block) — sequences the engine admits are never longer.
fn max_decode_ctx(c: &crate::model::ModelConfig, num_blocks: usize) -> usize {
    (num_blocks * KV_BLOCK_SIZE)
        .min(c.context_length.max(1).div_ceil(KV_BLOCK_SIZE) * KV_BLOCK_SIZE)
}

/// A request the graph's argmax answers: greedy, no log-probabilities, no penalties.
fn plain_greedy(r: &SampleRequest<'_>) -> bool {
    let p = r.params;
    let penalized = p.repetition_penalty != 1.0 && p.penalty_last_n > 0 && !r.history.is_empty();
    p.is_greedy()
        && r.logprobs.is_none()
        && !penalized
        && p.presence_penalty == 0.0
        && p.frequency_penalty == 0.0
}

/// Logits rows an item produces.
fn rows_of(item: &BatchItem<'_>) -> usize {
    match item.logits {
        LogitsWanted::None => 0,
        LogitsWanted::Last => 1,
        LogitsWanted::All => item.tokens.len(),
    }
}

/// Block-table entries the KV index holds: a full table per decode sequence.
fn table_entries(cfg: &CudaConfig, num_blocks: usize) -> usize {
    cfg.max_decode_seqs.max(1).min(cfg.max_batch_tokens.max(1)) * num_blocks
}

impl Backend for CudaBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            device: self.device_name.clone(),
            bytes_used: self.bytes_used,
            resident_on_device: true,
        }
    }

    fn kv_block_size(&self) -> usize {
        KV_BLOCK_SIZE
    }

    fn kv_num_blocks(&self) -> usize {
        self.num_blocks
    }

    fn forward(&mut self, batch: &[BatchItem<'_>]) -> Result<(), BackendError> {
        self.rows = 0;
        self.gpu.bind().map_err(drv)?;
        for item in batch {
            self.validate(item)?;
        }
        let total: usize = batch.iter().map(rows_of).sum();
        self.ensure_rows(total)?;
        if let Some(g) = self.graphs.as_mut() {
            g.set_token_ready(false);
        }
        if self.graph_step(batch)? {
            self.rows = 1;
            return Ok(());
        }
        let max_seqs = self.cfg.max_decode_seqs.max(1).min(self.act.cap);
        let mut row = 0;
        let mut i = 0;
        while i < batch.len() {
            if batch[i].tokens.len() == 1 {
                let mut j = i + 1;
                while j < batch.len() && batch[j].tokens.len() == 1 && j - i < max_seqs {
                    j += 1;
                }
                row = self.decode_group(&batch[i..j], row)?;
                i = j;
            } else {
                row = self.prefill_item(&batch[i], row)?;
                i += 1;
            }
        }
        debug_assert_eq!(row, total);
        if total > 0 {
            self.finish(batch, total)?;
        }
        self.rows = total;
        Ok(())
    }

    fn sample(&mut self, requests: &[SampleRequest<'_>]) -> Result<Vec<Sampled>, BackendError> {
        self.gpu.bind().map_err(drv)?;
        if let [r] = requests
            && r.row == 0
            && self.rows == 1
            && plain_greedy(r)
            && let Some(g) = self.graphs.as_mut()
            && g.token_ready()
        {
            // The graph step already took the argmax of this row: one pinned 4-byte read.
            let token = g.read_token().map_err(drv)?;
            let v = self.model.config.vocab_size;
            if token < 0 || token as usize >= v {
                return Err(BackendError::Cuda(format!(
                    "device argmax returned token {token} outside [0, {v})"
                )));
            }
            return Ok(vec![Sampled {
                token: token as u32,
                logprob: None,
            }]);
        }
        self.sampler
            .sample(&self.gpu, &self.out.logits, self.rows, requests)
    }

    fn token_logprob(
        &mut self,
        row: usize,
        token: u32,
        n: usize,
    ) -> Result<TokenLogprob, BackendError> {
        self.gpu.bind().map_err(drv)?;
        self.row_check(row)?;
        if token as usize >= self.model.config.vocab_size {
            return Err(BackendError::Invalid(format!(
                "token id {token} is outside the vocabulary"
            )));
        }
        self.sampler
            .token_logprob(&self.gpu, &self.out.logits, row, token, n)
    }

    fn logits(&mut self, row: usize) -> Result<Vec<f32>, BackendError> {
        self.gpu.bind().map_err(drv)?;
        self.row_check(row)?;
        let v = self.model.config.vocab_size;
        self.gpu
            .download(&self.out.logits.slice(row * v..(row + 1) * v))
            .map_err(drv)
    }

    fn set_log_sink(&mut self, sink: Option<orch_log::Sink>) {
        self.tracer = Tracer::new(sink, "worker-orcd-cuda");
    }

    fn flush_log(&mut self) {
        self.tracer.flush();
    }
}
