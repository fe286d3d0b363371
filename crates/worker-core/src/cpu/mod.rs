//! The CPU backend: the reference implementation of the forward pass, computing in f32
//! straight from the quantized weights (no dequantized copy of the model).

mod attention;
mod kv_pool;
mod matmul;
pub mod ops;

pub use matmul::matmul;

use crate::engine::TokenLogprob;
use crate::engine::{
    Backend, BackendError, BackendInfo, BatchItem, LogitsWanted, SampleRequest, Sampled,
};
use crate::model::Model;
use crate::sampling;
use crate::trace::Tracer;
use attention::{AttnShape, attention};
use kv_pool::KvPool;
use orch_log::Stage;
use std::sync::Arc;

/// Tokens per KV block.
pub const KV_BLOCK_SIZE: usize = 16;

pub struct CpuBackend {
    model: Arc<Model>,
    pool: KvPool,
    inv_freq: Vec<f32>,
    /// Logits rows of the last forward, [rows, vocab].
    logits: Vec<f32>,
    tracer: Tracer,
}

impl CpuBackend {
    /// `kv_tokens`: positions the KV pool holds across all sequences.
    pub fn new(model: Arc<Model>, kv_tokens: usize) -> Self {
        let c = &model.config;
        let num_blocks = kv_tokens.div_ceil(KV_BLOCK_SIZE).max(1);
        let pool = KvPool::new(c.n_layers, num_blocks, KV_BLOCK_SIZE, c.kv_dim());
        let inv_freq = ops::rope_inv_freq(c.rope_base, c.head_dim);
        CpuBackend {
            model,
            pool,
            inv_freq,
            logits: Vec::new(),
            tracer: Tracer::default(),
        }
    }

    fn vocab(&self) -> usize {
        self.model.config.vocab_size
    }

    fn row(&self, row: usize) -> Result<&[f32], BackendError> {
        let v = self.vocab();
        self.logits
            .get(row * v..(row + 1) * v)
            .ok_or_else(|| BackendError::Invalid(format!("logits row {row} was not computed")))
    }

    /// The forward pass for one chunk of one sequence; appends its requested logits rows.
    fn forward_item(&mut self, item: &BatchItem<'_>) -> Result<(), BackendError> {
        let model = self.model.clone();
        let (c, w) = (&model.config, &model.weights);
        let t = item.tokens.len();
        let (d, qd, kvd) = (c.d_model, c.q_dim(), c.kv_dim());
        let needed = item.start_pos + t;
        if item.block_table.len() * KV_BLOCK_SIZE < needed {
            return Err(BackendError::Invalid(format!(
                "block table covers fewer than {needed} positions"
            )));
        }
        if let Some(&bad) = item
            .block_table
            .iter()
            .find(|&&b| b as usize >= self.pool.num_blocks)
        {
            return Err(BackendError::Invalid(format!(
                "KV block {bad} is outside the pool"
            )));
        }
        let positions: Vec<usize> = (item.start_pos..needed).collect();
        let trace = item.trace.as_ref();

        let mut x = vec![0.0f32; t * d];
        for (row, &tok) in x.chunks_exact_mut(d).zip(item.tokens) {
            if tok as usize >= c.vocab_size {
                return Err(BackendError::Invalid(format!(
                    "token id {tok} is outside the vocabulary"
                )));
            }
            w.token_embd.dequantize_row(tok as usize, row);
        }
        self.tracer.record(trace, Stage::Embedding, item, &x, d);

        let shape = AttnShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
        };
        let mut h = vec![0.0f32; t * d];
        let mut q = vec![0.0f32; t * qd];
        let mut k = vec![0.0f32; t * kvd];
        let mut v = vec![0.0f32; t * kvd];
        let mut a = vec![0.0f32; t * qd];
        let mut o = vec![0.0f32; t * d];
        let mut g = vec![0.0f32; t * c.d_ff];
        let mut u = vec![0.0f32; t * c.d_ff];
        let n_logit_rows = match item.logits {
            LogitsWanted::None => 0,
            LogitsWanted::Last => 1,
            LogitsWanted::All => t,
        };
        for (li, l) in w.layers.iter().enumerate() {
            if item.is_cancelled() {
                // Keep row numbering intact for the other items; these rows are never sampled.
                let len = self.logits.len();
                self.logits.resize(len + n_logit_rows * c.vocab_size, 0.0);
                return Ok(());
            }
            ops::rmsnorm(&x, &l.attn_norm, c.rms_eps, &mut h);
            matmul(&l.wq, &h, t, &mut q);
            matmul(&l.wk, &h, t, &mut k);
            matmul(&l.wv, &h, t, &mut v);
            for (m, b) in [(&mut q, &l.bq), (&mut k, &l.bk), (&mut v, &l.bv)] {
                if let Some(b) = b {
                    ops::add_bias(m, b);
                }
            }
            ops::rope(
                &mut q,
                &positions,
                c.n_heads,
                &self.inv_freq,
                c.arch.rope_style,
            );
            ops::rope(
                &mut k,
                &positions,
                c.n_kv_heads,
                &self.inv_freq,
                c.arch.rope_style,
            );
            for (i, &p) in positions.iter().enumerate() {
                self.pool.write(
                    li,
                    item.block_table,
                    p,
                    &k[i * kvd..(i + 1) * kvd],
                    &v[i * kvd..(i + 1) * kvd],
                );
            }
            attention(
                &q,
                &self.pool,
                li,
                item.block_table,
                item.start_pos,
                &shape,
                &mut a,
            );
            matmul(&l.wo, &a, t, &mut o);
            ops::add_in_place(&mut x, &o);

            ops::rmsnorm(&x, &l.ffn_norm, c.rms_eps, &mut h);
            matmul(&l.w_gate, &h, t, &mut g);
            matmul(&l.w_up, &h, t, &mut u);
            ops::silu_mul(&mut g, &u);
            matmul(&l.w_down, &g, t, &mut o);
            ops::add_in_place(&mut x, &o);
            if self.tracer.wants_layer(li) {
                self.tracer
                    .record(trace, Stage::Layer(li as u32), item, &x, d);
            }
        }

        let rows: &[f32] = match item.logits {
            LogitsWanted::None => return Ok(()),
            LogitsWanted::Last => &x[(t - 1) * d..],
            LogitsWanted::All => &x,
        };
        let n_rows = n_logit_rows;
        let mut normed = vec![0.0f32; rows.len()];
        ops::rmsnorm(rows, &w.output_norm, c.rms_eps, &mut normed);
        self.tracer
            .record(trace, Stage::FinalNorm, item, &normed, d);
        let start = self.logits.len();
        self.logits.resize(start + n_rows * c.vocab_size, 0.0);
        matmul(&w.output, &normed, n_rows, &mut self.logits[start..]);
        let new = &self.logits[start..];
        self.tracer
            .record(trace, Stage::Logits, item, new, c.vocab_size);
        Ok(())
    }
}

impl Backend for CpuBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            device: "cpu".into(),
            bytes_used: self.model.weight_bytes() + self.pool.bytes(),
            resident_on_device: false,
        }
    }

    fn kv_block_size(&self) -> usize {
        KV_BLOCK_SIZE
    }

    fn kv_num_blocks(&self) -> usize {
        self.pool.num_blocks
    }

    fn forward(&mut self, batch: &[BatchItem<'_>]) -> Result<(), BackendError> {
        self.logits.clear();
        // The CPU runs one sequence at a time; each item already uses every core.
        for item in batch {
            if item.tokens.is_empty() {
                return Err(BackendError::Invalid("empty batch item".into()));
            }
            self.forward_item(item)?;
        }
        Ok(())
    }

    fn sample(&mut self, requests: &[SampleRequest<'_>]) -> Result<Vec<Sampled>, BackendError> {
        requests
            .iter()
            .map(|r| {
                let logits = self.row(r.row)?;
                let (token, logprob) =
                    sampling::sample_host(logits, r.params, r.history, r.uniform, r.logprobs);
                Ok(Sampled { token, logprob })
            })
            .collect()
    }

    fn token_logprob(
        &mut self,
        row: usize,
        token: u32,
        n: usize,
    ) -> Result<TokenLogprob, BackendError> {
        if token as usize >= self.vocab() {
            return Err(BackendError::Invalid(format!(
                "token id {token} is outside the vocabulary"
            )));
        }
        Ok(sampling::token_logprob(self.row(row)?, token, n))
    }

    fn logits(&mut self, row: usize) -> Result<Vec<f32>, BackendError> {
        self.row(row).map(<[f32]>::to_vec)
    }

    fn set_log_sink(&mut self, sink: Option<orch_log::Sink>) {
        self.tracer = Tracer::new(sink, "worker-orcd-cpu");
    }

    fn flush_log(&mut self) {
        self.tracer.flush();
    }
}
