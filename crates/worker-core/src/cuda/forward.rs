//! The forward pass on the device (BRIEF §2 order), over preallocated activation buffers:
//! no allocation and no host synchronization inside a step (checkpoint logging aside, which
//! copies to the host explicitly and only when a sink is attached).

use super::kernels::{self as k, Heads, KResult};
use super::kv::{KvIndex, LayerCache};
use super::weights::{DeviceLayer, DeviceMatrix, DeviceWeights};
use crate::model::ModelConfig;
use cudarc::driver::{CudaSlice, CudaStream, CudaViewMut, DriverError};
use std::sync::Arc;

/// Tokens processed per launch sequence; the activations are sized for this many rows.
pub struct Activations {
    pub cap: usize,
    pub ids: CudaSlice<i32>,
    /// The residual stream [cap, d].
    pub x: CudaSlice<f32>,
    /// Normalized activations in f32 [cap, d] (used only by float-typed weights).
    pub h: CudaSlice<f32>,
    pub q: CudaSlice<f32>,
    pub k: CudaSlice<f32>,
    pub v: CudaSlice<f32>,
    /// Attention output [cap, q_dim].
    pub a: CudaSlice<f32>,
    pub gate: CudaSlice<f32>,
    pub up: CudaSlice<f32>,
    /// q8_1 form of whichever activation feeds the next quantized matmul.
    pub q8: CudaSlice<u8>,
    pub attn_scratch: CudaSlice<u8>,
    /// Largest context the decode-attention scratch was sized for.
    pub max_ctx: usize,
    /// The prompt path (cuBLAS f16 GEMM), when enabled.
    pub gemm: Option<Gemm>,
    /// Fused decode launches (Q/K/V in one matvec, gate/up + SwiGLU in one); off only to
    /// measure against the unfused path.
    pub fused: bool,
}

/// Chunks of more than this many tokens go through the f16 GEMM (when enabled); shorter ones
/// (decode) through the dp4a matvec.
pub const GEMM_MIN_T: usize = 9;

/// The prompt path's state: the cuBLAS handle (bound to the backend's stream) and f16 scratch for
/// one dequantized weight chunk and the converted activations.
pub struct Gemm {
    pub blas: cudarc::cublas::CudaBlas,
    pub w16: CudaSlice<u16>,
    pub x16: CudaSlice<u16>,
}

impl Gemm {
    /// f16 elements of the weight scratch: the largest layer matrix (the output head is done in
    /// row chunks of it).
    pub fn w16_elems(c: &ModelConfig) -> usize {
        let d = c.d_model;
        [
            d * c.q_dim(),
            d * c.kv_dim(),
            c.q_dim() * d,
            d * c.d_ff,
            c.d_ff * d,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }

    pub fn bytes_for(c: &ModelConfig, cap: usize) -> u64 {
        let widest = c.d_model.max(c.q_dim()).max(c.d_ff);
        2 * (Self::w16_elems(c) + cap * widest) as u64 + GEMM_WORKSPACE
    }

    pub fn new(s: &Arc<CudaStream>, c: &ModelConfig, cap: usize) -> Result<Self, String> {
        let widest = c.d_model.max(c.q_dim()).max(c.d_ff);
        let blas = cudarc::cublas::CudaBlas::new(s.clone())
            .map_err(|e| format!("creating a cuBLAS handle: {e:?}"))?;
        Ok(Gemm {
            blas,
            w16: s
                .alloc_zeros(Self::w16_elems(c))
                .map_err(|e| e.to_string())?,
            x16: s.alloc_zeros(cap * widest).map_err(|e| e.to_string())?,
        })
    }
}

/// Device memory cuBLAS may take for its own workspace (counted in the VRAM plan).
pub const GEMM_WORKSPACE: u64 = 32 << 20;

/// `out (+)= W · x (+ bias)` for `t` rows of f32 `x`: W dequantized to f16 in row chunks, one
/// tensor-core GEMM per chunk.
#[allow(clippy::too_many_arguments)]
pub fn matmul_gemm(
    s: &CudaStream,
    g: &mut Gemm,
    w: &DeviceMatrix,
    x: &impl cudarc::driver::DevicePtr<f32>,
    bias: Option<&CudaSlice<f32>>,
    out: &mut CudaViewMut<'_, f32>,
    t: usize,
    accumulate: bool,
) -> KResult {
    let (n, kk) = (w.rows, w.cols);
    k::f32_to_f16(s, x, &mut g.x16, t, kk)?;
    let rows_per = (g.w16.len() / kk).clamp(1, n);
    let rb = k::row_bytes(w.ty, kk)?;
    let mut r0 = 0;
    while r0 < n {
        let m = rows_per.min(n - r0);
        let wv = w.buf.slice(r0 * rb..(r0 + m) * rb);
        k::dequantize(
            s,
            w.ty,
            &wv,
            &mut g.w16,
            cuda_sys::wk_dtype::WK_TYPE_F16,
            m,
            kk,
        )?;
        k::gemm_f16(&g.blas, s, &g.w16, m, &g.x16, t, kk, out, n, r0, accumulate)?;
        r0 += m;
    }
    if let Some(b) = bias {
        k::add_bias(s, out, b, t, n)?;
    }
    Ok(())
}

/// Sizes of the activation buffers, in elements; `bytes` is their total.
pub struct ActPlan {
    pub cap: usize,
    pub q8_bytes: usize,
    pub attn_scratch: usize,
    pub max_ctx: usize,
}

impl ActPlan {
    pub fn new(
        c: &ModelConfig,
        cap: usize,
        max_decode_seqs: usize,
        max_ctx: usize,
    ) -> Result<Self, String> {
        let widest = c.d_model.max(c.q_dim()).max(c.d_ff);
        let attn_scratch =
            k::attention_decode_scratch_bytes(max_decode_seqs.min(cap), heads(c), max_ctx)
                .map_err(|e| format!("sizing the attention scratch: {e}"))?;
        Ok(ActPlan {
            cap,
            q8_bytes: k::q8_bytes(cap, widest),
            attn_scratch,
            max_ctx,
        })
    }

    pub fn bytes(&self, c: &ModelConfig) -> u64 {
        let floats = self.cap * (2 * c.d_model + 2 * c.q_dim() + 2 * c.kv_dim() + 2 * c.d_ff);
        (4 * floats + 4 * self.cap + self.q8_bytes + self.attn_scratch.max(1)) as u64
    }
}

pub fn heads(c: &ModelConfig) -> Heads {
    Heads {
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        head_dim: c.head_dim,
    }
}

impl Activations {
    pub fn new(
        s: &Arc<CudaStream>,
        c: &ModelConfig,
        p: &ActPlan,
        gemm: Option<Gemm>,
    ) -> Result<Self, DriverError> {
        let f = |n: usize| s.alloc_zeros::<f32>(p.cap * n);
        Ok(Activations {
            cap: p.cap,
            ids: s.alloc_zeros(p.cap)?,
            x: f(c.d_model)?,
            h: f(c.d_model)?,
            q: f(c.q_dim())?,
            k: f(c.kv_dim())?,
            v: f(c.kv_dim())?,
            a: f(c.q_dim())?,
            gate: f(c.d_ff)?,
            up: f(c.d_ff)?,
            q8: s.alloc_zeros(p.q8_bytes)?,
            attn_scratch: s.alloc_zeros(p.attn_scratch.max(1))?,
            max_ctx: p.max_ctx,
            gemm,
            fused: true,
        })
    }
}

/// `out (+)= W · x`: through the q8_1 activations for quantized W, the f32 ones otherwise.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    s: &CudaStream,
    w: &DeviceMatrix,
    xf: &CudaSlice<f32>,
    q8: &CudaSlice<u8>,
    bias: Option<&CudaSlice<f32>>,
    out: &mut CudaSlice<f32>,
    t: usize,
    accumulate: bool,
) -> KResult {
    if w.is_quantized() {
        k::matvec_q(
            s, w.ty, &w.buf, q8, bias, out, w.rows, w.cols, t, accumulate,
        )
    } else {
        k::matvec_f(
            s, w.ty, &w.buf, xf, bias, out, w.rows, w.cols, t, accumulate,
        )
    }
}

/// Normalizes `x [t, d]` with `w` into the forms `consumers` need: f32 in `h` when one of them
/// has float weights, q8_1 in `q8` when one is quantized (fused when only q8_1 is needed).
#[allow(clippy::too_many_arguments)]
pub fn norm_for(
    s: &CudaStream,
    x: &CudaSlice<f32>,
    w: &CudaSlice<f32>,
    consumers: &[&DeviceMatrix],
    h: &mut CudaSlice<f32>,
    q8: &mut CudaSlice<u8>,
    t: usize,
    d: usize,
    eps: f32,
) -> KResult {
    let need_f = consumers.iter().any(|m| !m.is_quantized());
    let need_q = consumers.iter().any(|m| m.is_quantized());
    if need_f {
        k::rmsnorm(s, x, w, h, t, d, eps)?;
        if need_q {
            k::quantize_q8_1(s, h, q8, t, d)?;
        }
        Ok(())
    } else {
        k::rmsnorm_quantize_q8_1(s, x, w, q8, t, d, eps)
    }
}

/// Embeds the `t` token ids already in `act.ids` into `act.x`.
pub fn embed(
    s: &CudaStream,
    c: &ModelConfig,
    w: &DeviceWeights,
    act: &mut Activations,
    t: usize,
) -> KResult {
    let Activations { ids, x, .. } = act;
    embed_from(s, c, w, &*ids, x, t)
}

/// Embeds the `t` token ids in `ids` into `x`.
pub fn embed_from(
    s: &CudaStream,
    c: &ModelConfig,
    w: &DeviceWeights,
    ids: &impl cudarc::driver::DevicePtr<i32>,
    x: &mut CudaSlice<f32>,
    t: usize,
) -> KResult {
    let e = &w.token_embd;
    k::get_rows(s, e.ty, &e.buf, ids, x, t, c.vocab_size, c.d_model)
}

/// One transformer block over the `t = idx.tokens()` rows of `act.x`.
pub fn layer(
    s: &CudaStream,
    c: &ModelConfig,
    l: &DeviceLayer,
    cache: &mut LayerCache,
    idx: &KvIndex,
    act: &mut Activations,
) -> KResult {
    let t = idx.tokens();
    let (d, eps) = (c.d_model, c.rms_eps);
    let hd = heads(c);
    let neox = c.arch.rope_style == crate::model::RopeStyle::Neox;
    let a = act;

    let use_gemm = t >= GEMM_MIN_T && a.gemm.is_some();

    // Attention.
    if use_gemm {
        k::rmsnorm(s, &a.x, &l.attn_norm, &mut a.h, t, d, eps)?;
    } else {
        norm_for(
            s,
            &a.x,
            &l.attn_norm,
            &[&l.wq, &l.wk, &l.wv],
            &mut a.h,
            &mut a.q8,
            t,
            d,
            eps,
        )?;
    }
    let fused_qkv =
        a.fused && !use_gemm && l.wq.is_quantized() && l.wk.is_quantized() && l.wv.is_quantized();
    if fused_qkv {
        // Q, K and V (biases in the epilogue) in one launch.
        let mut parts = [
            k::MultiPart {
                ty: l.wq.ty,
                w: &l.wq.buf,
                bias: l.bq.as_ref(),
                out: &mut a.q,
                n: l.wq.rows,
            },
            k::MultiPart {
                ty: l.wk.ty,
                w: &l.wk.buf,
                bias: l.bk.as_ref(),
                out: &mut a.k,
                n: l.wk.rows,
            },
            k::MultiPart {
                ty: l.wv.ty,
                w: &l.wv.buf,
                bias: l.bv.as_ref(),
                out: &mut a.v,
                n: l.wv.rows,
            },
        ];
        k::matvec_q_multi(s, &mut parts, &a.q8, d, t)?;
    } else {
        matmul_any(
            s,
            gm(&mut a.gemm, use_gemm),
            &l.wq,
            &a.h,
            &a.q8,
            l.bq.as_ref(),
            &mut a.q,
            t,
            false,
        )?;
        matmul_any(
            s,
            gm(&mut a.gemm, use_gemm),
            &l.wk,
            &a.h,
            &a.q8,
            l.bk.as_ref(),
            &mut a.k,
            t,
            false,
        )?;
        matmul_any(
            s,
            gm(&mut a.gemm, use_gemm),
            &l.wv,
            &a.h,
            &a.q8,
            l.bv.as_ref(),
            &mut a.v,
            t,
            false,
        )?;
    }
    k::rope_kv_write(
        s,
        &mut a.q,
        &mut a.k,
        &a.v,
        idx,
        cache,
        hd,
        c.rope_base,
        neox,
    )?;
    let wo_q8 = !use_gemm && l.wo.is_quantized();
    if idx.is_decode() && wo_q8 && a.fused {
        // The merge writes the q8_1 input of the output projection too.
        k::attention_decode_q8(
            s,
            &a.q,
            cache,
            idx,
            &mut a.a,
            &mut a.q8,
            &mut a.attn_scratch,
            hd,
        )?;
    } else {
        if idx.is_decode() {
            k::attention_decode(s, &a.q, cache, idx, &mut a.a, &mut a.attn_scratch, hd)?;
        } else {
            k::attention_prefill(s, &a.q, cache, idx, &mut a.a, hd)?;
        }
        if wo_q8 {
            k::quantize_q8_1(s, &a.a, &mut a.q8, t, c.q_dim())?;
        }
    }
    matmul_any(
        s,
        gm(&mut a.gemm, use_gemm),
        &l.wo,
        &a.a,
        &a.q8,
        None,
        &mut a.x,
        t,
        true,
    )?;

    // MLP.
    if use_gemm {
        k::rmsnorm(s, &a.x, &l.ffn_norm, &mut a.h, t, d, eps)?;
    } else {
        norm_for(
            s,
            &a.x,
            &l.ffn_norm,
            &[&l.w_gate, &l.w_up],
            &mut a.h,
            &mut a.q8,
            t,
            d,
            eps,
        )?;
    }
    let fused_swiglu = a.fused
        && !use_gemm
        && l.w_gate.is_quantized()
        && l.w_gate.ty == l.w_up.ty
        && l.w_gate.cols == l.w_up.cols;
    if fused_swiglu {
        // gate, up and silu(gate) * up in one launch.
        k::matvec_q_swiglu(
            s,
            l.w_gate.ty,
            &l.w_gate.buf,
            &l.w_up.buf,
            &a.q8,
            &mut a.gate,
            l.w_gate.rows,
            l.w_gate.cols,
            t,
        )?;
    } else {
        matmul_any(
            s,
            gm(&mut a.gemm, use_gemm),
            &l.w_gate,
            &a.h,
            &a.q8,
            None,
            &mut a.gate,
            t,
            false,
        )?;
        matmul_any(
            s,
            gm(&mut a.gemm, use_gemm),
            &l.w_up,
            &a.h,
            &a.q8,
            None,
            &mut a.up,
            t,
            false,
        )?;
        k::silu_mul_inplace(s, &mut a.gate, &a.up, t * c.d_ff)?;
    }
    if !use_gemm && l.w_down.is_quantized() {
        k::quantize_q8_1(s, &a.gate, &mut a.q8, t, c.d_ff)?;
    }
    matmul_any(
        s,
        gm(&mut a.gemm, use_gemm),
        &l.w_down,
        &a.gate,
        &a.q8,
        None,
        &mut a.x,
        t,
        true,
    )
}

fn gm(g: &mut Option<Gemm>, on: bool) -> Option<&mut Gemm> {
    if on { g.as_mut() } else { None }
}

/// [`matmul_gemm`] when `gemm` is given, [`matmul`] otherwise.
#[allow(clippy::too_many_arguments)]
fn matmul_any(
    s: &CudaStream,
    gemm: Option<&mut Gemm>,
    w: &DeviceMatrix,
    xf: &CudaSlice<f32>,
    q8: &CudaSlice<u8>,
    bias: Option<&CudaSlice<f32>>,
    out: &mut CudaSlice<f32>,
    t: usize,
    accumulate: bool,
) -> KResult {
    match gemm {
        Some(g) => matmul_gemm(s, g, w, xf, bias, &mut out.slice_mut(..), t, accumulate),
        None => matmul(s, w, xf, q8, bias, out, t, accumulate),
    }
}

/// Buffers of the output head: the final hidden rows that want logits, normalized, and the
/// logits, for up to `rows` rows.
pub struct OutputBuffers {
    pub rows: usize,
    pub xf: CudaSlice<f32>,
    pub hf: CudaSlice<f32>,
    pub logits: CudaSlice<f32>,
}

impl OutputBuffers {
    pub fn bytes_for(c: &ModelConfig, rows: usize) -> u64 {
        4 * (rows * (2 * c.d_model + c.vocab_size)) as u64
    }

    pub fn new(s: &Arc<CudaStream>, c: &ModelConfig, rows: usize) -> Result<Self, DriverError> {
        let rows = rows.max(1);
        Ok(OutputBuffers {
            rows,
            xf: s.alloc_zeros(rows * c.d_model)?,
            hf: s.alloc_zeros(rows * c.d_model)?,
            logits: s.alloc_zeros(rows * c.vocab_size)?,
        })
    }
}

/// `logits[0..r] = W_out · rmsnorm(xf[0..r])`, the q8_1 staging done `act.cap` rows at a time.
pub fn output_head(
    s: &CudaStream,
    c: &ModelConfig,
    w: &DeviceWeights,
    out: &mut OutputBuffers,
    act: &mut Activations,
    r: usize,
) -> KResult {
    let OutputBuffers { xf, hf, logits, .. } = out;
    let Activations { q8, gemm, cap, .. } = act;
    output_head_from(s, c, w, &*xf, hf, logits, q8, gemm.as_mut(), *cap, r)
}

/// [`output_head`] with the final hidden rows read from `src` (e.g. straight from `act.x`).
#[allow(clippy::too_many_arguments)]
pub fn output_head_from(
    s: &CudaStream,
    c: &ModelConfig,
    w: &DeviceWeights,
    src: &impl cudarc::driver::DevicePtr<f32>,
    hf_buf: &mut CudaSlice<f32>,
    logits: &mut CudaSlice<f32>,
    q8: &mut CudaSlice<u8>,
    gemm: Option<&mut Gemm>,
    cap: usize,
    r: usize,
) -> KResult {
    let (d, v) = (c.d_model, c.vocab_size);
    k::rmsnorm(s, src, &w.output_norm, hf_buf, r, d, c.rms_eps)?;
    let head = w.output();
    if r >= GEMM_MIN_T
        && let Some(g) = gemm
    {
        // Row chunks that fit the f16 activation scratch.
        let per = (g.x16.len() / d).max(1);
        let mut r0 = 0;
        while r0 < r {
            let n = per.min(r - r0);
            let hf = hf_buf.slice(r0 * d..(r0 + n) * d);
            let mut lg = logits.slice_mut(r0 * v..(r0 + n) * v);
            matmul_gemm(s, g, head, &hf, None, &mut lg, n, false)?;
            r0 += n;
        }
        return Ok(());
    }
    let mut r0 = 0;
    while r0 < r {
        let n = (r - r0).min(cap);
        let hf = hf_buf.slice(r0 * d..(r0 + n) * d);
        let mut lg = logits.slice_mut(r0 * v..(r0 + n) * v);
        if head.is_quantized() {
            k::quantize_q8_1(s, &hf, q8, n, d)?;
            k::matvec_q(
                s, head.ty, &head.buf, &*q8, None, &mut lg, head.rows, head.cols, n, false,
            )?;
        } else {
            k::matvec_f(
                s, head.ty, &head.buf, &hf, None, &mut lg, head.rows, head.cols, n, false,
            )?;
        }
        r0 += n;
    }
    Ok(())
}
