//! Engine-level speed measurement in llama-bench's shape: prompt processing (`pp N`), decode
//! (`tg N`) and decode after a context depth (`tg N @ dD`), repeated, mean ± stdev.
//!
//! Runs the backend directly (no HTTP, no scheduler) so the numbers are the model's, not the
//! server's. Each repetition starts from an empty KV cache (or a freshly filled one for depth
//! tests) and feeds sampled tokens back in, as generation does.

use crate::engine::{Backend, BackendError, BatchItem, LogitsWanted, SampleRequest};
use crate::sampling::SamplingParams;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Prompt lengths to time (pp).
    pub prompt_sizes: Vec<usize>,
    /// Tokens to decode per tg test.
    pub gen_tokens: usize,
    /// Context depths before the tg tests (0 = empty).
    pub depths: Vec<usize>,
    pub repetitions: usize,
    /// Prompt tokens per forward call (long prompts go in chunks, as in serving).
    pub prefill_chunk: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            prompt_sizes: vec![512],
            gen_tokens: 128,
            depths: vec![0],
            repetitions: 3,
            prefill_chunk: 512,
        }
    }
}

impl BenchConfig {
    /// KV positions the backend must hold for this configuration.
    pub fn kv_tokens_needed(&self) -> usize {
        let pp = self.prompt_sizes.iter().copied().max().unwrap_or(0);
        let tg = self.depths.iter().copied().max().unwrap_or(0) + self.gen_tokens;
        pp.max(tg) + 1
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// "pp512", "tg128", "tg128 @ d4096".
    pub test: String,
    pub tokens: usize,
    pub depth: usize,
    pub repetitions: usize,
    pub tokens_per_sec_mean: f64,
    pub tokens_per_sec_stdev: f64,
    /// Wall time of each repetition, milliseconds.
    pub times_ms: Vec<f64>,
}

/// Runs the configured tests on `backend`.
pub fn run(
    backend: &mut dyn Backend,
    vocab: usize,
    cfg: &BenchConfig,
) -> Result<Vec<BenchResult>, BackendError> {
    let bs = backend.kv_block_size();
    let need = cfg.kv_tokens_needed();
    if need.div_ceil(bs) > backend.kv_num_blocks() {
        return Err(BackendError::Invalid(format!(
            "the KV pool is smaller than the {need} positions this bench needs"
        )));
    }
    let table: Vec<u32> = (0..need.div_ceil(bs) as u32).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1234);
    let mut random_tokens =
        |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(0..vocab as u32)).collect() };
    let mut results = Vec::new();

    // Warm-up: one short prompt and a few decode steps (kernel loading, caches, graph capture).
    let warm = random_tokens(16);
    prefill(backend, &warm, 0, &table, cfg.prefill_chunk)?;
    decode(backend, 4, warm.len(), *warm.last().unwrap(), &table)?;

    for &n in &cfg.prompt_sizes {
        // One untimed run of the same size first (as llama-bench does): library heuristics,
        // caches and lazily loaded kernels for this shape stay out of the numbers.
        prefill(backend, &random_tokens(n), 0, &table, cfg.prefill_chunk)?;
        let mut times = Vec::new();
        for _ in 0..cfg.repetitions {
            let prompt = random_tokens(n);
            let t0 = Instant::now();
            prefill(backend, &prompt, 0, &table, cfg.prefill_chunk)?;
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        results.push(summarize(format!("pp{n}"), n, 0, times));
    }
    for &depth in &cfg.depths {
        let mut times = Vec::new();
        for _ in 0..cfg.repetitions {
            let mut last = random_tokens(1)[0];
            if depth > 0 {
                let ctx = random_tokens(depth);
                last = prefill(backend, &ctx, 0, &table, cfg.prefill_chunk)?;
            }
            let t0 = Instant::now();
            decode(backend, cfg.gen_tokens, depth, last, &table)?;
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        let name = if depth == 0 {
            format!("tg{}", cfg.gen_tokens)
        } else {
            format!("tg{} @ d{depth}", cfg.gen_tokens)
        };
        results.push(summarize(name, cfg.gen_tokens, depth, times));
    }
    Ok(results)
}

/// Processes `tokens` from position `start` in chunks; returns the greedy next token (which also
/// waits for the device to finish).
fn prefill(
    backend: &mut dyn Backend,
    tokens: &[u32],
    start: usize,
    table: &[u32],
    chunk: usize,
) -> Result<u32, BackendError> {
    let mut pos = start;
    for c in tokens.chunks(chunk.max(1)) {
        let last = pos + c.len() == start + tokens.len();
        let logits = if last {
            LogitsWanted::Last
        } else {
            LogitsWanted::None
        };
        backend.forward(&[BatchItem {
            tokens: c,
            start_pos: pos,
            block_table: table,
            logits,
            trace: None,
            cancel: None,
        }])?;
        pos += c.len();
    }
    greedy(backend, tokens)
}

fn greedy(backend: &mut dyn Backend, history: &[u32]) -> Result<u32, BackendError> {
    let params = SamplingParams::greedy();
    let s = backend.sample(&[SampleRequest {
        row: 0,
        params: &params,
        history,
        uniform: 0.0,
        logprobs: None,
    }])?;
    Ok(s[0].token)
}

/// Decodes `n` tokens one at a time from position `pos`, feeding each sampled token back.
fn decode(
    backend: &mut dyn Backend,
    n: usize,
    mut pos: usize,
    mut token: u32,
    table: &[u32],
) -> Result<(), BackendError> {
    for _ in 0..n {
        let t = [token];
        backend.forward(&[BatchItem {
            tokens: &t,
            start_pos: pos,
            block_table: table,
            logits: LogitsWanted::Last,
            trace: None,
            cancel: None,
        }])?;
        token = greedy(backend, &t)?;
        pos += 1;
    }
    Ok(())
}

fn summarize(test: String, tokens: usize, depth: usize, times_ms: Vec<f64>) -> BenchResult {
    let tps: Vec<f64> = times_ms
        .iter()
        .map(|ms| tokens as f64 / (ms / 1e3))
        .collect();
    let mean = tps.iter().sum::<f64>() / tps.len() as f64;
    let var = if tps.len() > 1 {
        tps.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (tps.len() - 1) as f64
    } else {
        0.0
    };
    BenchResult {
        test,
        tokens,
        depth,
        repetitions: times_ms.len(),
        tokens_per_sec_mean: mean,
        tokens_per_sec_stdev: var.sqrt(),
        times_ms,
    }
}

/// A markdown table in llama-bench's shape.
pub fn format_table(model: &str, device: &str, results: &[BenchResult]) -> String {
    let mut s =
        String::from("| model | device | test | reps | t/s |\n| --- | --- | --- | ---: | ---: |\n");
    for r in results {
        s.push_str(&format!(
            "| {model} | {device} | {} | {} | {:.2} ± {:.2} |\n",
            r.test, r.repetitions, r.tokens_per_sec_mean, r.tokens_per_sec_stdev
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_statistics() {
        let r = summarize("tg2".into(), 2, 0, vec![1000.0, 500.0]);
        assert_eq!(r.tokens_per_sec_mean, 3.0);
        assert!((r.tokens_per_sec_stdev - std::f64::consts::SQRT_2).abs() < 1e-12);
    }

    #[test]
    fn kv_budget_covers_the_largest_test() {
        let c = BenchConfig {
            prompt_sizes: vec![512, 2048],
            gen_tokens: 128,
            depths: vec![0, 4096],
            ..Default::default()
        };
        assert_eq!(c.kv_tokens_needed(), 4096 + 128 + 1);
    }
}
