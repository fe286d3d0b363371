//! Safe, size-checked wrappers around the cuda-sys launchers: the one place where device pointers
//! are taken out of their owning buffers and handed to C.
//!
//! Every wrapper checks, on the host and before the launch, that each buffer holds at least the
//! elements the launcher will touch for the given shape, so a shape mistake is an error here
//! instead of an out-of-bounds access on the device. Index data that the kernels follow (block
//! tables, positions, token ids) is validated when it is written (see [`super::kv::KvIndex`] and
//! the callers of [`get_rows`]).
//!
//! Stream ordering: the backend uses ONE stream and creates its buffers with cudarc's event
//! tracking disabled, so every launch, copy and free is ordered on that stream. A pointer taken
//! here is used only by the launch enqueued right after it on the same stream, and a buffer's
//! free (`cuMemFreeAsync` on that stream, or a synchronous `cuMemFree`) is ordered after every
//! launch that used it; the pointer never escapes this module.

use cuda_sys::{self as sys, KernelError, wk_dtype, wk_rope_mode};
use cudarc::driver::{CudaSlice, CudaStream, CudaViewMut, DevicePtr, DevicePtrMut};
use std::ffi::c_void;

use super::kv::{KvIndex, LayerCache};

pub type KResult = Result<(), KernelError>;

/// Elements per q8_1 activation block and its size in bytes.
pub const Q8_1_BLOCK_ELEMS: usize = sys::WK_Q8_1_BLOCK_ELEMS as usize;
pub const Q8_1_BLOCK_BYTES: usize = sys::WK_Q8_1_BLOCK_BYTES as usize;

/// Alignment the launchers require of their scratch buffers (attention: 16, sampler: 256).
const ATTN_SCRATCH_ALIGN: usize = 16;
const SAMPLE_SCRATCH_ALIGN: usize = 256;

/// Bytes of the q8_1 form of a [t, k] activation.
pub fn q8_bytes(t: usize, k: usize) -> usize {
    t * (k / Q8_1_BLOCK_ELEMS) * Q8_1_BLOCK_BYTES
}

fn stream_handle(s: &CudaStream) -> sys::wk_stream_t {
    // A CUstream and a cudaStream_t are the same handle.
    s.cu_stream() as sys::wk_stream_t
}

/// The raw address of a buffer to be read by the launch enqueued next on `s`.
fn rd<T>(b: &impl DevicePtr<T>, s: &CudaStream) -> *const T {
    // With event tracking off the guard records nothing; ordering comes from the single stream.
    let (p, _guard) = b.device_ptr(s);
    p as usize as *const T
}

/// The raw address of a buffer to be written by the launch enqueued next on `s`.
fn wr<T>(b: &mut impl DevicePtrMut<T>, s: &CudaStream) -> *mut T {
    let (p, _guard) = b.device_ptr_mut(s);
    p as usize as *mut T
}

/// Scratch space at an `align`-byte boundary inside `buf`: (pointer, usable bytes). The
/// `*_scratch_bytes` functions below include the `align - 1` bytes of slack this may skip.
fn aligned_scratch(buf: &mut CudaSlice<u8>, s: &CudaStream, align: usize) -> (*mut c_void, usize) {
    let p = wr(buf, s) as usize;
    let skip = p.next_multiple_of(align) - p;
    // SAFETY (of the later use): `skip < align`, and callers check the returned length, which
    // excludes the skipped bytes, against the launcher's requirement.
    ((p + skip) as *mut c_void, buf.len().saturating_sub(skip))
}

fn invalid(msg: String) -> KernelError {
    KernelError {
        code: sys::wk_status::WK_ERR_INVALID_ARGUMENT.0,
        message: msg,
    }
}

/// Fails unless `len >= need`.
fn need(what: &str, len: usize, need: usize) -> KResult {
    if len < need {
        return Err(invalid(format!(
            "{what}: buffer holds {len} elements, the launch needs {need}"
        )));
    }
    Ok(())
}

fn int(what: &str, v: usize) -> Result<i32, KernelError> {
    i32::try_from(v).map_err(|_| invalid(format!("{what} = {v} does not fit in an int")))
}

/// Bytes per row of `k` elements of `ty`, or an error for an unsupported type / partial block.
pub fn row_bytes(ty: wk_dtype, k: usize) -> Result<usize, KernelError> {
    sys::row_bytes(ty, k)
        .ok_or_else(|| invalid(format!("type {} cannot hold rows of {k} elements", ty.0)))
}

/// Whether `ty` is a block-quantized type (matvec through q8_1 activations).
pub fn is_quantized(ty: wk_dtype) -> bool {
    !matches!(
        ty,
        wk_dtype::WK_TYPE_F32 | wk_dtype::WK_TYPE_F16 | wk_dtype::WK_TYPE_BF16
    )
}

// ---- activations ------------------------------------------------------------------------------

/// `q8 = q8_1(x)`, x f32 [t, k].
pub fn quantize_q8_1(
    s: &CudaStream,
    x: &impl DevicePtr<f32>,
    q8: &mut impl DevicePtrMut<u8>,
    t: usize,
    k: usize,
) -> KResult {
    need("quantize_q8_1 x", x.len(), t * k)?;
    need("quantize_q8_1 q8", q8.len(), q8_bytes(t, k))?;
    let (ti, ki) = (int("T", t)?, int("K", k)?);
    // SAFETY: sizes checked above; pointers are live buffers ordered on `s` (module docs).
    sys::check(unsafe {
        sys::wk_quantize_q8_1(stream_handle(s), rd(x, s), wr(q8, s) as *mut c_void, ti, ki)
    })
}

/// `out = rmsnorm(x) * w`, x and out f32 [t, k], w f32 [k].
pub fn rmsnorm(
    s: &CudaStream,
    x: &impl DevicePtr<f32>,
    w: &impl DevicePtr<f32>,
    out: &mut impl DevicePtrMut<f32>,
    t: usize,
    k: usize,
    eps: f32,
) -> KResult {
    need("rmsnorm x", x.len(), t * k)?;
    need("rmsnorm w", w.len(), k)?;
    need("rmsnorm out", out.len(), t * k)?;
    let (ti, ki) = (int("T", t)?, int("K", k)?);
    // SAFETY: sizes checked above; pointers are live buffers ordered on `s` (module docs).
    sys::check(unsafe {
        sys::wk_rmsnorm(
            stream_handle(s),
            rd(x, s),
            rd(w, s),
            wr(out, s),
            ti,
            ki,
            eps,
        )
    })
}

/// `q8 = q8_1(rmsnorm(x) * w)`.
pub fn rmsnorm_quantize_q8_1(
    s: &CudaStream,
    x: &impl DevicePtr<f32>,
    w: &impl DevicePtr<f32>,
    q8: &mut impl DevicePtrMut<u8>,
    t: usize,
    k: usize,
    eps: f32,
) -> KResult {
    need("rmsnorm_quantize x", x.len(), t * k)?;
    need("rmsnorm_quantize w", w.len(), k)?;
    need("rmsnorm_quantize q8", q8.len(), q8_bytes(t, k))?;
    let (ti, ki) = (int("T", t)?, int("K", k)?);
    // SAFETY: sizes checked above; pointers are live buffers ordered on `s` (module docs).
    sys::check(unsafe {
        sys::wk_rmsnorm_quantize_q8_1(
            stream_handle(s),
            rd(x, s),
            rd(w, s),
            wr(q8, s) as *mut c_void,
            ti,
            ki,
            eps,
        )
    })
}

// ---- matrix-vector products -------------------------------------------------------------------

/// `out[t, n] (+)= W[n, :] · x[t, :] (+ bias[n])` for a block-quantized W, x given as q8_1.
#[allow(clippy::too_many_arguments)]
pub fn matvec_q(
    s: &CudaStream,
    ty: wk_dtype,
    w: &impl DevicePtr<u8>,
    q8: &impl DevicePtr<u8>,
    bias: Option<&CudaSlice<f32>>,
    out: &mut impl DevicePtrMut<f32>,
    n: usize,
    k: usize,
    t: usize,
    accumulate: bool,
) -> KResult {
    need("matvec_q W", w.len(), n * row_bytes(ty, k)?)?;
    need("matvec_q q8", q8.len(), q8_bytes(t, k))?;
    need("matvec_q out", out.len(), t * n)?;
    if let Some(b) = bias {
        need("matvec_q bias", b.len(), n)?;
    }
    let (ni, ki, ti) = (int("N", n)?, int("K", k)?, int("T", t)?);
    let bp = bias.map_or(std::ptr::null(), |b| rd(b, s));
    // SAFETY: sizes checked above; pointers are live buffers ordered on `s` (module docs).
    sys::check(unsafe {
        sys::wk_matvec_q(
            stream_handle(s),
            ty,
            rd(w, s) as *const c_void,
            rd(q8, s) as *const c_void,
            bp,
            wr(out, s),
            ni,
            ki,
            ti,
            accumulate as i32,
        )
    })
}

/// One output of [`matvec_q_multi`]: a block-quantized W [n, k], optional bias [n], out [t, n].
pub struct MultiPart<'a> {
    pub ty: wk_dtype,
    pub w: &'a CudaSlice<u8>,
    pub bias: Option<&'a CudaSlice<f32>>,
    pub out: &'a mut CudaSlice<f32>,
    pub n: usize,
}

/// Several quantized matvecs of the same q8_1 activations `q8 [t, k]` in ONE launch (e.g. Q, K
/// and V with their biases): `part.out[t, :] = part.W · x[t, :] (+ part.bias)`.
pub fn matvec_q_multi(
    s: &CudaStream,
    parts: &mut [MultiPart<'_>],
    q8: &impl DevicePtr<u8>,
    k: usize,
    t: usize,
) -> KResult {
    if parts.is_empty() || parts.len() > sys::WK_MATVEC_MAX_PARTS as usize {
        return Err(invalid(format!("matvec_q_multi: {} parts", parts.len())));
    }
    need("matvec_q_multi q8", q8.len(), q8_bytes(t, k))?;
    let (ki, ti) = (int("K", k)?, int("T", t)?);
    let mut descs = Vec::with_capacity(parts.len());
    for p in parts.iter_mut() {
        if !is_quantized(p.ty) {
            return Err(invalid(format!(
                "matvec_q_multi: type {} is not block-quantized",
                p.ty.0
            )));
        }
        need("matvec_q_multi W", p.w.len(), p.n * row_bytes(p.ty, k)?)?;
        need("matvec_q_multi out", p.out.len(), t * p.n)?;
        if let Some(b) = p.bias {
            need("matvec_q_multi bias", b.len(), p.n)?;
        }
        descs.push(sys::wk_matvec_part {
            type_: p.ty,
            W: rd(p.w, s) as *const c_void,
            bias: p.bias.map_or(std::ptr::null(), |b| rd(b, s)),
            out: wr(p.out, s),
            N: int("N", p.n)?,
            accumulate: 0,
        });
    }
    // SAFETY: sizes checked above; the outputs are distinct `&mut` buffers (they cannot overlap);
    // the descriptors are copied into the launch's parameters before this returns.
    sys::check(unsafe {
        sys::wk_matvec_q_multi(
            stream_handle(s),
            descs.as_ptr(),
            descs.len() as i32,
            rd(q8, s) as *const c_void,
            ki,
            ti,
        )
    })
}

/// `out [t, n] = silu(Wg · x) * (Wu · x)` in one launch; Wg and Wu [n, k] of the same quantized
/// type, x given as q8_1 `q8 [t, k]`.
#[allow(clippy::too_many_arguments)]
pub fn matvec_q_swiglu(
    s: &CudaStream,
    ty: wk_dtype,
    wg: &impl DevicePtr<u8>,
    wu: &impl DevicePtr<u8>,
    q8: &impl DevicePtr<u8>,
    out: &mut impl DevicePtrMut<f32>,
    n: usize,
    k: usize,
    t: usize,
) -> KResult {
    if !is_quantized(ty) {
        return Err(invalid(format!(
            "matvec_q_swiglu: type {} is not block-quantized",
            ty.0
        )));
    }
    let rb = row_bytes(ty, k)?;
    need("matvec_q_swiglu Wg", wg.len(), n * rb)?;
    need("matvec_q_swiglu Wu", wu.len(), n * rb)?;
    need("matvec_q_swiglu q8", q8.len(), q8_bytes(t, k))?;
    need("matvec_q_swiglu out", out.len(), t * n)?;
    let (ni, ki, ti) = (int("N", n)?, int("K", k)?, int("T", t)?);
    // SAFETY: sizes checked above; `out` is f32 and cannot alias the u8 `q8` buffer.
    sys::check(unsafe {
        sys::wk_matvec_q_swiglu(
            stream_handle(s),
            ty,
            rd(wg, s) as *const c_void,
            rd(wu, s) as *const c_void,
            rd(q8, s) as *const c_void,
            wr(out, s),
            ni,
            ki,
            ti,
        )
    })
}

/// As [`matvec_q`] for F32/F16/BF16 weights with f32 activations x [t, k].
#[allow(clippy::too_many_arguments)]
pub fn matvec_f(
    s: &CudaStream,
    ty: wk_dtype,
    w: &impl DevicePtr<u8>,
    x: &impl DevicePtr<f32>,
    bias: Option<&CudaSlice<f32>>,
    out: &mut impl DevicePtrMut<f32>,
    n: usize,
    k: usize,
    t: usize,
    accumulate: bool,
) -> KResult {
    need("matvec_f W", w.len(), n * row_bytes(ty, k)?)?;
    need("matvec_f x", x.len(), t * k)?;
    need("matvec_f out", out.len(), t * n)?;
    if let Some(b) = bias {
        need("matvec_f bias", b.len(), n)?;
    }
    let (ni, ki, ti) = (int("N", n)?, int("K", k)?, int("T", t)?);
    let bp = bias.map_or(std::ptr::null(), |b| rd(b, s));
    // SAFETY: sizes checked above; pointers are live buffers ordered on `s` (module docs).
    sys::check(unsafe {
        sys::wk_matvec_f(
            stream_handle(s),
            ty,
            rd(w, s) as *const c_void,
            rd(x, s),
            bp,
            wr(out, s),
            ni,
            ki,
            ti,
            accumulate as i32,
        )
    })
}

// ---- dequantize / gather ----------------------------------------------------------------------

/// `out [n, k]` (element type `out_type`: F32 with `T = f32`, F16/BF16 with `T = u16`) =
/// dequantized `w [n, k]` of type `ty`.
pub fn dequantize<T>(
    s: &CudaStream,
    ty: wk_dtype,
    w: &impl DevicePtr<u8>,
    out: &mut impl DevicePtrMut<T>,
    out_type: wk_dtype,
    n: usize,
    k: usize,
) -> KResult {
    let elem = match out_type {
        wk_dtype::WK_TYPE_F32 => 4,
        wk_dtype::WK_TYPE_F16 | wk_dtype::WK_TYPE_BF16 => 2,
        other => {
            return Err(invalid(format!(
                "dequantize: output type {} is not F32/F16/BF16",
                other.0
            )));
        }
    };
    if std::mem::size_of::<T>() != elem {
        return Err(invalid(format!(
            "dequantize: output elements of {} bytes for type {}",
            std::mem::size_of::<T>(),
            out_type.0
        )));
    }
    need("dequantize W", w.len(), n * row_bytes(ty, k)?)?;
    need("dequantize out", out.len(), n * k)?;
    let (ni, ki) = (int("N", n)?, int("K", k)?);
    // SAFETY: sizes and element width checked above; pointers ordered on `s` (module docs).
    sys::check(unsafe {
        sys::wk_dequantize(
            stream_handle(s),
            ty,
            rd(w, s) as *const c_void,
            wr(out, s) as *mut c_void,
            out_type,
            ni,
            ki,
        )
    })
}

/// `out [t, k] = table[ids[t], :]` (f32). Ids outside `[0, v)` give NaN rows (never an
/// out-of-bounds read); callers bounds-check ids before uploading them.
#[allow(clippy::too_many_arguments)]
pub fn get_rows(
    s: &CudaStream,
    ty: wk_dtype,
    table: &impl DevicePtr<u8>,
    ids: &impl DevicePtr<i32>,
    out: &mut impl DevicePtrMut<f32>,
    t: usize,
    v: usize,
    k: usize,
) -> KResult {
    need("get_rows table", table.len(), v * row_bytes(ty, k)?)?;
    need("get_rows ids", ids.len(), t)?;
    need("get_rows out", out.len(), t * k)?;
    let (ti, vi, ki) = (int("T", t)?, int("V", v)?, int("K", k)?);
    // SAFETY: sizes checked above; the kernel bounds-checks each id against V itself.
    sys::check(unsafe {
        sys::wk_get_rows(
            stream_handle(s),
            ty,
            rd(table, s) as *const c_void,
            rd(ids, s),
            wr(out, s),
            ti,
            vi,
            ki,
        )
    })
}

// ---- RoPE + KV cache, attention ---------------------------------------------------------------

/// Attention geometry.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl Heads {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// Rotates `q [t, Hq, hd]` and `k [t, Hkv, hd]` in place at the positions of `idx`, then writes
/// the rotated k and `v` into `cache` at those positions. `t = idx.tokens()`.
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_write(
    s: &CudaStream,
    q: &mut impl DevicePtrMut<f32>,
    k: &mut impl DevicePtrMut<f32>,
    v: &impl DevicePtr<f32>,
    idx: &KvIndex,
    cache: &mut LayerCache,
    h: Heads,
    rope_base: f32,
    neox: bool,
) -> KResult {
    let t = idx.tokens();
    need("rope q", q.len(), t * h.q_dim())?;
    need("rope k", k.len(), t * h.kv_dim())?;
    need("rope v", v.len(), t * h.kv_dim())?;
    cache
        .check_geometry(h.n_kv_heads, h.head_dim)
        .map_err(invalid)?;
    idx.check_pool(cache.num_blocks(), cache.block_size())
        .map_err(invalid)?;
    let mode = if neox {
        wk_rope_mode::WK_ROPE_NEOX
    } else {
        wk_rope_mode::WK_ROPE_NORM
    };
    let (hq, hkv, hd) = (
        int("Hq", h.n_heads)?,
        int("Hkv", h.n_kv_heads)?,
        int("hd", h.head_dim)?,
    );
    let (ti, bs, mb) = (
        int("T", t)?,
        int("block_size", cache.block_size())?,
        int("max_blocks", idx.max_blocks())?,
    );
    let seq_ids = if idx.is_decode() {
        rd(&idx.seq_ids(), s)
    } else {
        std::ptr::null()
    };
    let (kc, vc) = (
        wr(&mut cache.k, s) as *mut c_void,
        wr(&mut cache.v, s) as *mut c_void,
    );
    // SAFETY: activation sizes checked above; the index (positions, sequence ids, block table)
    // was validated against this pool's geometry when it was written (KvIndex), so every cache
    // slot the kernel writes is inside `cache`.
    sys::check(unsafe {
        sys::wk_rope_kv_write(
            stream_handle(s),
            wr(q, s),
            wr(k, s),
            rd(v, s),
            rd(&idx.pos(), s),
            seq_ids,
            rd(&idx.block_table(), s),
            mb,
            kc,
            vc,
            ti,
            hq,
            hkv,
            hd,
            bs,
            rope_base,
            mode,
        )
    })
}

/// Bytes of scratch [`attention_decode`] needs for `n_seqs` sequences up to `max_ctx` keys.
pub fn attention_decode_scratch_bytes(
    n_seqs: usize,
    h: Heads,
    max_ctx: usize,
) -> Result<usize, KernelError> {
    let mut bytes = 0usize;
    let (si, hq, hd, mc) = (
        int("S", n_seqs)?,
        int("Hq", h.n_heads)?,
        int("hd", h.head_dim)?,
        int("max_ctx", max_ctx)?,
    );
    // SAFETY: a plain out-parameter to a host function.
    sys::check(unsafe { sys::wk_attention_decode_scratch_bytes(si, hq, hd, mc, &mut bytes) })?;
    Ok(bytes + ATTN_SCRATCH_ALIGN - 1)
}

/// One query token per sequence of a decode index: `out [S, Hq, hd]` = attention of `q` over
/// each sequence's keys `[0, pos + 1)`. The launch grid covers the index's widest block table
/// (`max_ctx = max_blocks * block_size`); `scratch` must hold
/// [`attention_decode_scratch_bytes`] for that `max_ctx`.
pub fn attention_decode(
    s: &CudaStream,
    q: &impl DevicePtr<f32>,
    cache: &LayerCache,
    idx: &KvIndex,
    out: &mut impl DevicePtrMut<f32>,
    scratch: &mut CudaSlice<u8>,
    h: Heads,
) -> KResult {
    attention_decode_into(s, q, cache, idx, out, None, scratch, h)
}

/// [`attention_decode`] that also writes `out` as q8_1 blocks into `q8` (the output
/// projection's input), as [`quantize_q8_1`] would: one launch less.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode_q8(
    s: &CudaStream,
    q: &impl DevicePtr<f32>,
    cache: &LayerCache,
    idx: &KvIndex,
    out: &mut impl DevicePtrMut<f32>,
    q8: &mut CudaSlice<u8>,
    scratch: &mut CudaSlice<u8>,
    h: Heads,
) -> KResult {
    attention_decode_into(s, q, cache, idx, out, Some(q8), scratch, h)
}

#[allow(clippy::too_many_arguments)]
fn attention_decode_into(
    s: &CudaStream,
    q: &impl DevicePtr<f32>,
    cache: &LayerCache,
    idx: &KvIndex,
    out: &mut impl DevicePtrMut<f32>,
    q8: Option<&mut CudaSlice<u8>>,
    scratch: &mut CudaSlice<u8>,
    h: Heads,
) -> KResult {
    if !idx.is_decode() {
        return Err(invalid(
            "attention_decode needs a decode index (one token per sequence)".into(),
        ));
    }
    let n = idx.tokens();
    need("attention_decode q", q.len(), n * h.q_dim())?;
    need("attention_decode out", out.len(), n * h.q_dim())?;
    if let Some(b) = q8.as_ref() {
        need("attention_decode q8", b.len(), q8_bytes(n, h.q_dim()))?;
    }
    cache
        .check_geometry(h.n_kv_heads, h.head_dim)
        .map_err(invalid)?;
    idx.check_pool(cache.num_blocks(), cache.block_size())
        .map_err(invalid)?;
    // max_seq_len <= max_blocks * block_size by construction of the index.
    let max_ctx = idx.max_blocks() * cache.block_size();
    let (scratch_ptr, scratch_bytes) = aligned_scratch(scratch, s, ATTN_SCRATCH_ALIGN);
    let need_scratch = attention_decode_scratch_bytes(n, h, max_ctx)? - (ATTN_SCRATCH_ALIGN - 1);
    need("attention_decode scratch", scratch_bytes, need_scratch)?;
    let (hq, hkv, hd) = (
        int("Hq", h.n_heads)?,
        int("Hkv", h.n_kv_heads)?,
        int("hd", h.head_dim)?,
    );
    let (si, bs, mb, mc) = (
        int("S", n)?,
        int("block_size", cache.block_size())?,
        int("max_blocks", idx.max_blocks())?,
        int("max_ctx", max_ctx)?,
    );
    let scale = 1.0 / (h.head_dim as f32).sqrt();
    let (kc, vc) = (
        rd(&cache.k, s) as *const c_void,
        rd(&cache.v, s) as *const c_void,
    );
    let (sh, qp, kb, vb, op) = (
        stream_handle(s),
        rd(q, s),
        rd(&idx.block_table(), s),
        rd(&idx.seq_lens(), s),
        wr(out, s),
    );
    // SAFETY: sizes checked above; the index was validated against this pool (KvIndex), and
    // every seq_len is at most max_ctx, which sized the scratch; q8 (when given) holds the q8_1
    // form of `out` (checked above).
    sys::check(unsafe {
        match q8 {
            Some(b) => sys::wk_attention_decode_q8(
                sh,
                qp,
                kc,
                vc,
                kb,
                mb,
                vb,
                op,
                wr(b, s) as *mut c_void,
                scratch_ptr,
                scratch_bytes,
                si,
                hq,
                hkv,
                hd,
                bs,
                mc,
                scale,
            ),
            None => sys::wk_attention_decode(
                sh,
                qp,
                kc,
                vc,
                kb,
                mb,
                vb,
                op,
                scratch_ptr,
                scratch_bytes,
                si,
                hq,
                hkv,
                hd,
                bs,
                mc,
                scale,
            ),
        }
    })
}

/// Causal attention of a prefill index's `t` tokens (one sequence) over its cached keys.
pub fn attention_prefill(
    s: &CudaStream,
    q: &impl DevicePtr<f32>,
    cache: &LayerCache,
    idx: &KvIndex,
    out: &mut impl DevicePtrMut<f32>,
    h: Heads,
) -> KResult {
    if idx.is_decode() {
        return Err(invalid(
            "attention_prefill needs a prefill index (one sequence)".into(),
        ));
    }
    let t = idx.tokens();
    need("attention_prefill q", q.len(), t * h.q_dim())?;
    need("attention_prefill out", out.len(), t * h.q_dim())?;
    cache
        .check_geometry(h.n_kv_heads, h.head_dim)
        .map_err(invalid)?;
    idx.check_pool(cache.num_blocks(), cache.block_size())
        .map_err(invalid)?;
    let (hq, hkv, hd) = (
        int("Hq", h.n_heads)?,
        int("Hkv", h.n_kv_heads)?,
        int("hd", h.head_dim)?,
    );
    let (ti, bs) = (int("T", t)?, int("block_size", cache.block_size())?);
    let scale = 1.0 / (h.head_dim as f32).sqrt();
    let (kc, vc) = (
        rd(&cache.k, s) as *const c_void,
        rd(&cache.v, s) as *const c_void,
    );
    // SAFETY: sizes checked above; the index was validated against this pool (KvIndex).
    sys::check(unsafe {
        sys::wk_attention_prefill(
            stream_handle(s),
            rd(q, s),
            kc,
            vc,
            rd(&idx.block_table(), s),
            rd(&idx.pos(), s),
            wr(out, s),
            ti,
            hq,
            hkv,
            hd,
            bs,
            scale,
        )
    })
}

// ---- element-wise -----------------------------------------------------------------------------

/// `gate = silu(gate) * up` over the first `n` elements.
pub fn silu_mul_inplace(
    s: &CudaStream,
    gate: &mut impl DevicePtrMut<f32>,
    up: &impl DevicePtr<f32>,
    n: usize,
) -> KResult {
    need("silu_mul gate", gate.len(), n)?;
    need("silu_mul up", up.len(), n)?;
    let g = wr(gate, s);
    // SAFETY: sizes checked above; out == gate is allowed by the launcher.
    sys::check(unsafe { sys::wk_silu_mul(stream_handle(s), g, rd(up, s), g, n as i64) })
}

/// `x += y` over the first `n` elements.
pub fn add_inplace(
    s: &CudaStream,
    x: &mut impl DevicePtrMut<f32>,
    y: &impl DevicePtr<f32>,
    n: usize,
) -> KResult {
    need("add x", x.len(), n)?;
    need("add y", y.len(), n)?;
    let xp = wr(x, s);
    // SAFETY: sizes checked above; out == a is allowed by the launcher.
    sys::check(unsafe { sys::wk_add(stream_handle(s), xp, rd(y, s), xp, n as i64) })
}

/// `x [t, n] += bias [n]`.
pub fn add_bias(
    s: &CudaStream,
    x: &mut impl DevicePtrMut<f32>,
    bias: &impl DevicePtr<f32>,
    t: usize,
    n: usize,
) -> KResult {
    need("add_bias x", x.len(), t * n)?;
    need("add_bias bias", bias.len(), n)?;
    let (ti, ni) = (int("T", t)?, int("N", n)?);
    // SAFETY: sizes checked above.
    sys::check(unsafe { sys::wk_add_bias(stream_handle(s), wr(x, s), rd(bias, s), ti, ni) })
}

// ---- sampling ---------------------------------------------------------------------------------

/// `out [t]` = index of the largest value of each row of `x [t, v]`.
pub fn argmax(
    s: &CudaStream,
    x: &impl DevicePtr<f32>,
    out: &mut impl DevicePtrMut<i32>,
    t: usize,
    v: usize,
) -> KResult {
    need("argmax x", x.len(), t * v)?;
    need("argmax out", out.len(), t)?;
    let (ti, vi) = (int("T", t)?, int("V", v)?);
    // SAFETY: sizes checked above.
    sys::check(unsafe { sys::wk_argmax(stream_handle(s), rd(x, s), wr(out, s), ti, vi) })
}

/// Repetition penalty on `logits [v]` for the distinct in-range ids of `ids_host`, staged through
/// `ids_dev` (the ids are validated and de-duplicated here, on the host).
pub fn repetition_penalty(
    s: &std::sync::Arc<CudaStream>,
    logits: &mut impl DevicePtrMut<f32>,
    v: usize,
    ids_host: &[u32],
    ids_dev: &mut CudaSlice<i32>,
    penalty: f32,
) -> KResult {
    need("repetition_penalty logits", logits.len(), v)?;
    let mut ids: Vec<i32> = ids_host
        .iter()
        .filter(|&&id| (id as usize) < v)
        .map(|&id| id as i32)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(());
    }
    need("repetition_penalty ids", ids_dev.len(), ids.len())?;
    let mut dst = ids_dev.slice_mut(..ids.len());
    s.memcpy_htod(&ids, &mut dst)
        .map_err(|e| invalid(format!("uploading penalty ids: {e}")))?;
    let (vi, ni) = (int("V", v)?, int("n", ids.len())?);
    // SAFETY: sizes checked above; the ids are distinct and in [0, v) (filtered above).
    sys::check(unsafe {
        sys::wk_repetition_penalty(
            stream_handle(s),
            wr(logits, s),
            vi,
            rd(ids_dev, s),
            ni,
            penalty,
        )
    })
}

/// Bytes of scratch [`sample`] needs for `v` logits.
pub fn sample_scratch_bytes(v: usize) -> Result<usize, KernelError> {
    let mut bytes = 0usize;
    // SAFETY: a plain out-parameter to a host function.
    sys::check(unsafe { sys::wk_sample_scratch_bytes(int("V", v)?, &mut bytes) })?;
    Ok(bytes + SAMPLE_SCRATCH_ALIGN - 1)
}

/// The sampler's settings, as the launcher takes them.
#[derive(Debug, Clone, Copy)]
pub struct SampleSettings {
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub temperature: f32,
}

/// Where [`sample`] writes: one token, the raw logsumexp and the `n_top` largest raw logits.
pub struct SampleOut<
    'a,
    A: DevicePtrMut<i32>,
    B: DevicePtrMut<f32>,
    C: DevicePtrMut<i32>,
    D: DevicePtrMut<f32>,
> {
    pub token: &'a mut A,
    pub logsumexp: &'a mut B,
    pub top_ids: &'a mut C,
    pub top_logits: &'a mut D,
}

/// Samples one token from `logits [v]` with the uniform draw in `u [1]` (device memory).
#[allow(clippy::too_many_arguments)]
pub fn sample<A, B, C, D>(
    s: &CudaStream,
    logits: &impl DevicePtr<f32>,
    v: usize,
    scratch: &mut CudaSlice<u8>,
    cfg: SampleSettings,
    u: &impl DevicePtr<f32>,
    n_top: usize,
    out: SampleOut<'_, A, B, C, D>,
) -> KResult
where
    A: DevicePtrMut<i32>,
    B: DevicePtrMut<f32>,
    C: DevicePtrMut<i32>,
    D: DevicePtrMut<f32>,
{
    need("sample logits", logits.len(), v)?;
    need("sample u", u.len(), 1)?;
    need("sample token", out.token.len(), 1)?;
    need("sample logsumexp", out.logsumexp.len(), 1)?;
    need("sample top_ids", out.top_ids.len(), n_top)?;
    need("sample top_logits", out.top_logits.len(), n_top)?;
    if n_top > v {
        return Err(invalid(format!("sample: n_top {n_top} > V {v}")));
    }
    let (scratch_ptr, scratch_bytes) = aligned_scratch(scratch, s, SAMPLE_SCRATCH_ALIGN);
    need(
        "sample scratch",
        scratch_bytes,
        sample_scratch_bytes(v)? - (SAMPLE_SCRATCH_ALIGN - 1),
    )?;
    let top_k = int("top_k", cfg.top_k.min(v))?;
    let (vi, nt) = (int("V", v)?, int("n_top", n_top)?);
    let (ti, tl) = if n_top == 0 {
        (std::ptr::null_mut(), std::ptr::null_mut())
    } else {
        (wr(out.top_ids, s), wr(out.top_logits, s))
    };
    // SAFETY: sizes checked above; the scratch pointer is 256-byte aligned inside `scratch` with
    // `scratch_bytes` usable bytes after it (aligned_scratch).
    sys::check(unsafe {
        sys::wk_sample(
            stream_handle(s),
            rd(logits, s),
            vi,
            scratch_ptr,
            scratch_bytes,
            top_k,
            cfg.top_p,
            cfg.min_p,
            cfg.temperature,
            rd(u, s),
            nt,
            wr(out.token, s),
            wr(out.logsumexp, s),
            ti,
            tl,
        )
    })
}

// ---- prompt path: f16 GEMM through cuBLAS ------------------------------------------------------

/// `out [n, k]` f16 bits = `x [n, k]` f32 (activations for the tensor-core GEMM).
pub fn f32_to_f16(
    s: &CudaStream,
    x: &impl DevicePtr<f32>,
    out: &mut impl DevicePtrMut<u16>,
    n: usize,
    k: usize,
) -> KResult {
    need("f32_to_f16 x", x.len(), n * k)?;
    need("f32_to_f16 out", out.len(), n * k)?;
    let (ni, ki) = (int("N", n)?, int("K", k)?);
    // SAFETY: sizes checked above; an F32 "matrix" dequantized to F16 is a conversion.
    sys::check(unsafe {
        sys::wk_dequantize(
            stream_handle(s),
            wk_dtype::WK_TYPE_F32,
            rd(x, s) as *const c_void,
            wr(out, s) as *mut c_void,
            wk_dtype::WK_TYPE_F16,
            ni,
            ki,
        )
    })
}

/// Columns `col0 .. col0 + m` of `out [t, ldc]` (f32, row-major) (+)= `x [t, k] · w [m, k]ᵀ`,
/// with `w` and `x` f16 bits, f32 accumulation (cuBLAS `GemmEx`, tensor cores). `blas` must be
/// bound to stream `s`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_f16(
    blas: &cudarc::cublas::CudaBlas,
    s: &CudaStream,
    w: &impl DevicePtr<u16>,
    m: usize,
    x: &impl DevicePtr<u16>,
    t: usize,
    k: usize,
    out: &mut CudaViewMut<'_, f32>,
    ldc: usize,
    col0: usize,
    accumulate: bool,
) -> KResult {
    use cudarc::cublas::{result as cr, sys as cs};
    need("gemm w", w.len(), m * k)?;
    need("gemm x", x.len(), t * k)?;
    if t == 0 || m == 0 {
        return Ok(());
    }
    if col0 + m > ldc {
        return Err(invalid(format!(
            "gemm: columns {col0}..{} exceed the row width {ldc}",
            col0 + m
        )));
    }
    need("gemm out", out.len(), (t - 1) * ldc + col0 + m)?;
    let (mi, ti, ki, ldci) = (int("m", m)?, int("t", t)?, int("k", k)?, int("ldc", ldc)?);
    let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
    let mut view = out.slice_mut(col0..);
    let (wp, xp, op) = (rd(w, s), rd(x, s), wr(&mut view, s));
    // Column-major view of the row-major data: out^T [m, t] (ld ldc) = w [k, m]^T · x^T [k, t].
    // SAFETY: sizes checked above (w: m*k, x: t*k, out: (t-1)*ldc + m from col0); the handle's
    // stream is `s`, so the GEMM is ordered with every other launch of the backend; alpha and
    // beta are host scalars (the handle's default pointer mode).
    unsafe {
        cr::gemm_ex(
            *blas.handle(),
            cs::cublasOperation_t::CUBLAS_OP_T,
            cs::cublasOperation_t::CUBLAS_OP_N,
            mi,
            ti,
            ki,
            &alpha as *const f32 as *const c_void,
            wp as *const c_void,
            cs::cudaDataType::CUDA_R_16F,
            ki,
            xp as *const c_void,
            cs::cudaDataType::CUDA_R_16F,
            ki,
            &beta as *const f32 as *const c_void,
            op as *mut c_void,
            cs::cudaDataType::CUDA_R_32F,
            ldci,
            cs::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cs::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| KernelError {
        code: -100,
        message: format!("cublasGemmEx: {e:?}"),
    })
}
