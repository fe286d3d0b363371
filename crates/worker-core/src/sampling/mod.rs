//! Sampling: llama.cpp's order (penalties → top-k → top-p → min-p → temperature → draw),
//! with the request's own seeded random stream so a request and seed replay exactly.
//!
//! The host implementation here is the reference; the CUDA backend's device sampler must pick
//! the same token for the same logits and uniform draw.

use crate::engine::TokenLogprob;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// 1 = off. Seen tokens: logit / p when positive, logit * p when negative.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every seen token (OpenAI semantics).
    pub presence_penalty: f32,
    /// Subtracted per occurrence of a seen token.
    pub frequency_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub penalty_last_n: usize,
    /// None: the engine picks one and reports it.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
    pub fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
    }
}

/// A request's random stream: one uniform draw per generated token.
#[derive(Debug, Clone)]
pub struct RequestRng(rand_chacha::ChaCha8Rng);

impl RequestRng {
    pub fn new(seed: u64) -> Self {
        RequestRng(rand_chacha::ChaCha8Rng::seed_from_u64(seed))
    }
    /// Uniform in [0, 1).
    pub fn next_uniform(&mut self) -> f32 {
        self.0.random::<f32>()
    }
}

/// A fresh seed for requests that give none (reported back so they can be replayed).
pub fn random_seed() -> u64 {
    rand::rng().random()
}

/// Applies the penalties in place to the logits of tokens seen in `history`'s last
/// `penalty_last_n` entries.
pub fn apply_penalties(logits: &mut [f32], p: &SamplingParams, history: &[u32]) {
    if !p.has_penalties() || p.penalty_last_n == 0 {
        return;
    }
    let recent = &history[history.len().saturating_sub(p.penalty_last_n)..];
    let mut counts: Vec<(u32, u32)> = Vec::new();
    for &t in recent {
        match counts.iter_mut().find(|(id, _)| *id == t) {
            Some((_, c)) => *c += 1,
            None => counts.push((t, 1)),
        }
    }
    for (t, c) in counts {
        let Some(l) = logits.get_mut(t as usize) else {
            continue;
        };
        if p.repetition_penalty != 1.0 {
            *l = if *l > 0.0 {
                *l / p.repetition_penalty
            } else {
                *l * p.repetition_penalty
            };
        }
        *l -= c as f32 * p.frequency_penalty + p.presence_penalty;
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Picks a token from `logits` (already penalized) with draw `u` in [0, 1).
pub fn sample_from_logits(logits: &[f32], p: &SamplingParams, u: f32) -> u32 {
    if p.is_greedy() {
        return argmax(logits) as u32;
    }
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l))
        .collect();
    let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    // top-k
    if p.top_k > 0 && p.top_k < cand.len() {
        cand.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
        cand.truncate(p.top_k);
    }
    cand.sort_unstable_by(by_logit_desc);
    // top-p, on probabilities at temperature 1 over the remaining candidates
    if p.top_p < 1.0 {
        let probs = softmax(&cand, 1.0);
        let mut cum = 0.0;
        let mut keep = cand.len();
        for (i, pr) in probs.iter().enumerate() {
            cum += pr;
            if cum >= f64::from(p.top_p) {
                keep = i + 1;
                break;
            }
        }
        cand.truncate(keep.max(1));
    }
    // min-p: keep tokens whose probability is at least min_p times the best one's
    if p.min_p > 0.0 {
        let floor = cand[0].1 + p.min_p.ln();
        let keep = cand.iter().take_while(|c| c.1 >= floor).count();
        cand.truncate(keep.max(1));
    }
    // temperature, then draw
    let probs = softmax(&cand, p.temperature);
    let target = f64::from(u.clamp(0.0, 1.0)) * probs.iter().sum::<f64>();
    let mut cum = 0.0;
    for (c, pr) in cand.iter().zip(&probs) {
        cum += pr;
        if cum > target {
            return c.0;
        }
    }
    cand.last().expect("at least one candidate").0
}

/// Probabilities of sorted candidates at temperature `t` (max-subtracted), in f64: with the
/// whole vocabulary (151,936 candidates) an f32 running sum drifts by up to ~1e-3, enough to
/// move a draw by thousands of tokens.
fn softmax(cand: &[(u32, f32)], t: f32) -> Vec<f64> {
    let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = cand
        .iter()
        .map(|c| (f64::from(c.1 - max) / f64::from(t)).exp())
        .collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

/// log(sum(exp(logits))), max-subtracted, accumulated in f64.
pub fn logsumexp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    max + s.ln() as f32
}

/// The raw model's log-probability of `token` and its top `n` alternatives.
pub fn token_logprob(logits: &[f32], token: u32, n: usize) -> TokenLogprob {
    let lse = logsumexp(logits);
    TokenLogprob {
        token,
        logprob: logits[token as usize] - lse,
        top: top_n(logits, n, lse),
    }
}

/// The `n` largest logits as (id, logprob), most likely first.
pub fn top_n(logits: &[f32], n: usize, lse: f32) -> Vec<(u32, f32)> {
    let n = n.min(logits.len());
    if n == 0 {
        return Vec::new();
    }
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if n < idx.len() {
        idx.select_nth_unstable_by(n - 1, cmp);
        idx.truncate(n);
    }
    idx.sort_unstable_by(cmp);
    idx.into_iter()
        .map(|i| (i, logits[i as usize] - lse))
        .collect()
}

/// The host sampler: penalties, then the chain, plus log-probabilities of the raw logits.
pub fn sample_host(
    logits: &[f32],
    p: &SamplingParams,
    history: &[u32],
    u: f32,
    logprobs: Option<usize>,
) -> (u32, Option<TokenLogprob>) {
    let token = if p.has_penalties() {
        let mut l = logits.to_vec();
        apply_penalties(&mut l, p, history);
        sample_from_logits(&l, p, u)
    } else {
        sample_from_logits(logits, p, u)
    };
    (token, logprobs.map(|n| token_logprob(logits, token, n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32) -> SamplingParams {
        SamplingParams {
            temperature: t,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_is_argmax_and_ignores_u() {
        let l = [0.1, 3.0, 2.9, -1.0];
        assert_eq!(sample_from_logits(&l, &SamplingParams::greedy(), 0.99), 1);
    }

    #[test]
    fn draw_follows_probabilities() {
        // probabilities at T=1: e^0 : e^ln3 = 1 : 3 → token 1 has 0.75
        let l = [0.0, 3f32.ln()];
        assert_eq!(sample_from_logits(&l, &params(1.0), 0.1), 1);
        assert_eq!(sample_from_logits(&l, &params(1.0), 0.74), 1);
        assert_eq!(sample_from_logits(&l, &params(1.0), 0.76), 0);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let l = [0.0, 1.0, 0.5];
        let p = SamplingParams {
            top_k: 1,
            ..params(1.0)
        };
        for u in [0.0, 0.5, 0.999] {
            assert_eq!(sample_from_logits(&l, &p, u), 1);
        }
    }

    #[test]
    fn top_p_uses_probabilities_not_logits() {
        // probs ≈ [0.6652, 0.2447, 0.0900]; top_p 0.7 keeps the first two.
        let l = [2.0, 1.0, 0.0];
        let p = SamplingParams {
            top_p: 0.7,
            ..params(1.0)
        };
        let picks: Vec<u32> = (0..100)
            .map(|i| sample_from_logits(&l, &p, i as f32 / 100.0))
            .collect();
        assert!(picks.contains(&1));
        assert!(!picks.contains(&2));
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let l = [5.0, 4.0, 0.0];
        let p = SamplingParams {
            min_p: 0.1,
            ..params(1.0)
        };
        assert!((0..100).all(|i| sample_from_logits(&l, &p, i as f32 / 100.0) != 2));
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let mut l = vec![2.0, -2.0, 1.0];
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..params(1.0)
        };
        apply_penalties(&mut l, &p, &[0, 1, 0]);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn frequency_and_presence_penalties() {
        let mut l = vec![2.0, 2.0];
        let p = SamplingParams {
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            ..params(1.0)
        };
        apply_penalties(&mut l, &p, &[0, 0, 1]);
        assert_eq!(l, vec![2.0 - 1.0 - 0.25, 2.0 - 0.5 - 0.25]);
    }

    #[test]
    fn logprobs_are_normalized() {
        let l = [1.0f32, 2.0, 3.0];
        let lp = token_logprob(&l, 2, 3);
        let total: f32 = lp.top.iter().map(|(_, x)| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
        assert_eq!(lp.top[0].0, 2);
        assert!((lp.logprob - lp.top[0].1).abs() < 1e-7);
    }

    #[test]
    fn same_seed_same_stream() {
        let mut a = RequestRng::new(7);
        let mut b = RequestRng::new(7);
        let mut c = RequestRng::new(8);
        let xa: Vec<f32> = (0..5).map(|_| a.next_uniform()).collect();
        let xb: Vec<f32> = (0..5).map(|_| b.next_uniform()).collect();
        let xc: Vec<f32> = (0..5).map(|_| c.next_uniform()).collect();
        assert_eq!(xa, xb);
        assert_ne!(xa, xc);
    }
}
