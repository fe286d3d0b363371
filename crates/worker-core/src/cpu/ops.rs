//! Element-wise and row-wise operations of the forward pass, in f32 (the reference math).

use crate::model::RopeStyle;

/// `out[t] = x[t] * rsqrt(mean(x[t]^2) + eps) * w` for each row of width `w.len()`.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ss: f64 = xr.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let scale = (1.0 / ((ss / d as f64) + eps as f64).sqrt()) as f32;
        for ((o, &v), &wi) in or.iter_mut().zip(xr).zip(w) {
            *o = v * scale * wi;
        }
    }
}

/// Adds `bias` to every row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// `x += y`.
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `gate = silu(gate) * up`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// Inverse frequencies `base^(-2i/head_dim)` for i in 0..head_dim/2, computed in f32 as
/// HF transformers does.
pub fn rope_inv_freq(base: f32, head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
        .collect()
}

/// Rotates every head of `x` ([T, n_heads, head_dim]) by its token's position.
pub fn rope(
    x: &mut [f32],
    positions: &[usize],
    n_heads: usize,
    inv_freq: &[f32],
    style: RopeStyle,
) {
    let hd = inv_freq.len() * 2;
    let half = hd / 2;
    for (row, &pos) in x.chunks_exact_mut(n_heads * hd).zip(positions) {
        let (sin, cos): (Vec<f32>, Vec<f32>) =
            inv_freq.iter().map(|&f| (pos as f32 * f).sin_cos()).unzip();
        for head in row.chunks_exact_mut(hd) {
            for i in 0..half {
                let (a, b) = match style {
                    RopeStyle::Neox => (i, i + half),
                    RopeStyle::Adjacent => (2 * i, 2 * i + 1),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos[i] - x1 * sin[i];
                head[b] = x0 * sin[i] + x1 * cos[i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmsnorm_matches_formula() {
        let x = [1.0, 2.0, 3.0, 4.0];
        let w = [1.0, 0.5, 2.0, 1.0];
        let mut out = [0.0; 4];
        rmsnorm(&x, &w, 1e-6, &mut out);
        let rms = ((1.0 + 4.0 + 9.0 + 16.0) / 4.0f32 + 1e-6).sqrt();
        for i in 0..4 {
            assert!((out[i] - x[i] / rms * w[i]).abs() < 1e-6);
        }
    }

    #[test]
    fn rope_neox_pairs_halves_and_adjacent_pairs_neighbours() {
        // head_dim 4: NEOX rotates (0,2) and (1,3); adjacent rotates (0,1) and (2,3).
        let inv = rope_inv_freq(10000.0, 4);
        assert_eq!(inv[0], 1.0);
        let mut x = vec![1.0, 0.0, 0.0, 0.0];
        rope(&mut x, &[1], 1, &inv, RopeStyle::Neox);
        assert!(
            (x[0] - 1f32.cos()).abs() < 1e-6 && (x[2] - 1f32.sin()).abs() < 1e-6 && x[1] == 0.0
        );
        let mut y = vec![1.0, 0.0, 0.0, 0.0];
        rope(&mut y, &[1], 1, &inv, RopeStyle::Adjacent);
        assert!(
            (y[0] - 1f32.cos()).abs() < 1e-6 && (y[1] - 1f32.sin()).abs() < 1e-6 && y[2] == 0.0
        );
    }

    #[test]
    fn rope_at_position_zero_is_identity() {
        let inv = rope_inv_freq(1e6, 8);
        let orig: Vec<f32> = (0..16).map(|i| i as f32 * 0.3 - 1.0).collect();
        let mut x = orig.clone();
        rope(&mut x, &[0], 2, &inv, RopeStyle::Neox);
        assert_eq!(x, orig);
    }

    #[test]
    fn silu_mul_values() {
        let mut g = [0.0f32, 1.0, -2.0];
        silu_mul(&mut g, &[1.0, 2.0, 3.0]);
        assert_eq!(g[0], 0.0);
        assert!((g[1] - 2.0 / (1.0 + (-1f32).exp())).abs() < 1e-6);
        assert!((g[2] - 3.0 * -2.0 / (1.0 + 2f32.exp())).abs() < 1e-6);
    }
}
