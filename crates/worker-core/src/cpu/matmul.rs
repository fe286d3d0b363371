//! `out = x · Wᵀ` straight from quantized weights, parallel over output rows.

use crate::model::QMatrix;
use crate::quant;
use rayon::prelude::*;

/// Rows per rayon task: large enough to amortize scheduling, small enough to balance 2..64 cores.
const ROWS_PER_TASK: usize = 32;

/// `x` is [t, w.cols] row-major; `out` is [t, w.rows]. Each weight row is decoded once per call
/// and multiplied against all `t` activation rows.
pub fn matmul(w: &QMatrix, x: &[f32], t: usize, out: &mut [f32]) {
    let (k, n) = (w.cols, w.rows);
    assert_eq!(x.len(), t * k, "{}: input is not [{t}, {k}]", w.name);
    assert_eq!(out.len(), t * n, "{}: output is not [{t}, {n}]", w.name);
    if t == 1 {
        out.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each(|(c, chunk)| {
            for (i, o) in chunk.iter_mut().enumerate() {
                *o = quant::dot_row(w.ty, w.row(c * ROWS_PER_TASK + i), x);
            }
        });
        return;
    }
    // Compute [n, t] (contiguous per weight row), then transpose into [t, n].
    let mut nt = vec![0.0f32; n * t];
    nt.par_chunks_mut(ROWS_PER_TASK * t).enumerate().for_each(|(c, chunk)| {
        for (i, o) in chunk.chunks_exact_mut(t).enumerate() {
            quant::dot_rows_multi(w.ty, w.row(c * ROWS_PER_TASK + i), x, k, o);
        }
    });
    out.par_chunks_mut(n).enumerate().for_each(|(ti, orow)| {
        for (ni, o) in orow.iter_mut().enumerate() {
            *o = nt[ni * t + ti];
        }
    });
}
