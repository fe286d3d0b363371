//! Causal grouped-query attention over the paged KV cache.

use super::kv_pool::KvPool;
use rayon::prelude::*;

pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// `q` is [T, n_heads, head_dim] for positions `start_pos..start_pos+T`; keys and values for
/// positions `0..=start_pos+t` are read from `layer` of the pool. `out` is [T, n_heads, head_dim].
pub fn attention(
    q: &[f32],
    pool: &KvPool,
    layer: usize,
    table: &[u32],
    start_pos: usize,
    s: &AttnShape,
    out: &mut [f32],
) {
    let hd = s.head_dim;
    let group = s.n_heads / s.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let (kc, vc) = pool.layer(layer);
    out.par_chunks_mut(hd).enumerate().for_each(|(th, o)| {
        let (t, h) = (th / s.n_heads, th % s.n_heads);
        let g = h / group;
        let qh = &q[th * hd..(th + 1) * hd];
        let n_keys = start_pos + t + 1;
        let mut scores = Vec::with_capacity(n_keys);
        let mut max = f32::NEG_INFINITY;
        for j in 0..n_keys {
            let off = pool.offset(table, j) + g * hd;
            let kj = &kc[off..off + hd];
            let sc = qh.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
            max = max.max(sc);
            scores.push(sc);
        }
        let mut sum = 0.0f32;
        for sc in scores.iter_mut() {
            *sc = (*sc - max).exp();
            sum += *sc;
        }
        o.fill(0.0);
        for (j, &w) in scores.iter().enumerate() {
            let off = pool.offset(table, j) + g * hd;
            let w = w / sum;
            for (oi, vi) in o.iter_mut().zip(&vc[off..off + hd]) {
                *oi += w * vi;
            }
        }
    });
}
