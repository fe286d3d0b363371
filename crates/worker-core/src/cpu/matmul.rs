//! `out = x · Wᵀ` straight from quantized weights, parallel over output rows.

use crate::model::QMatrix;
use crate::quant;
use rayon::prelude::*;

/// Rows per rayon task: large enough to amortize scheduling, small enough to balance 2..64 cores.
const ROWS_PER_TASK: usize = 32;
/// Activation rows multiplied per pass over the weights: 32 × 4864 floats (622 KB) stay in L2,
/// while each weight block is still decoded once per 32 tokens.
const TOKEN_TILE: usize = 32;

/// `x` is [t, w.cols] row-major; `out` is [t, w.rows].
pub fn matmul(w: &QMatrix, x: &[f32], t: usize, out: &mut [f32]) {
    let (k, n) = (w.cols, w.rows);
    assert_eq!(x.len(), t * k, "{}: input is not [{t}, {k}]", w.name);
    assert_eq!(out.len(), t * n, "{}: output is not [{t}, {n}]", w.name);
    if t == 1 {
        out.par_chunks_mut(ROWS_PER_TASK)
            .enumerate()
            .for_each(|(c, chunk)| {
                for (i, o) in chunk.iter_mut().enumerate() {
                    *o = quant::dot_row(w.ty, w.row(c * ROWS_PER_TASK + i), x);
                }
            });
        return;
    }
    for (xt, ot) in x.chunks(TOKEN_TILE * k).zip(out.chunks_mut(TOKEN_TILE * n)) {
        matmul_tile(w, xt, ot);
    }
}

/// One token tile: each weight row is decoded once and multiplied against every row of `x`.
fn matmul_tile(w: &QMatrix, x: &[f32], out: &mut [f32]) {
    let (k, n) = (w.cols, w.rows);
    let t = x.len() / k;
    // Compute [n, t] (contiguous per weight row), then transpose into [t, n].
    let mut nt = vec![0.0f32; n * t];
    nt.par_chunks_mut(ROWS_PER_TASK * t)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (i, o) in chunk.chunks_exact_mut(t).enumerate() {
                quant::dot_rows_multi(w.ty, w.row(c * ROWS_PER_TASK + i), x, k, o);
            }
        });
    for (ti, orow) in out.chunks_exact_mut(n).enumerate() {
        for (ni, o) in orow.iter_mut().enumerate() {
            *o = nt[ni * t + ti];
        }
    }
}
