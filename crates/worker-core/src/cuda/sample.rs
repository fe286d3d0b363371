//! Sampling on the device: argmax for greedy rows, `wk_sample` (top-k → top-p → min-p →
//! temperature → draw, the host sampler's order) otherwise; only the chosen ids (and the
//! requested log-probabilities) come back to the host.
//!
//! Presence/frequency penalties have no device kernel: a row that uses them is copied to the
//! host and sampled there by `sampling::sample_host` (the same function the CPU backend uses).

use super::device::Gpu;
use super::kernels::{self as k, SampleOut, SampleSettings};
use crate::engine::{BackendError, SampleRequest, Sampled, TokenLogprob};
use crate::sampling;
use cudarc::driver::{CudaSlice, DriverError};

/// Requests sampled per launch batch (their draws and outputs live in these buffers).
pub const SAMPLE_SLOTS: usize = 64;
/// Top log-probabilities returned per row from the device; more are computed on the host.
pub const MAX_TOP: usize = 32;

pub struct Sampler {
    vocab: usize,
    scratch: CudaSlice<u8>,
    /// A penalized copy of one logits row.
    pen_row: CudaSlice<f32>,
    pen_ids: CudaSlice<i32>,
    u: CudaSlice<f32>,
    tokens: CudaSlice<i32>,
    lse: CudaSlice<f32>,
    top_ids: CudaSlice<i32>,
    top_logits: CudaSlice<f32>,
    /// Outputs of the raw-logits pass for penalized rows that want logprobs.
    raw_token: CudaSlice<i32>,
}

fn cuda(e: impl std::fmt::Display) -> BackendError {
    BackendError::Cuda(e.to_string())
}

fn drv(e: DriverError) -> BackendError {
    if super::device::is_oom(&e) {
        BackendError::OutOfMemory(e.to_string())
    } else {
        BackendError::Cuda(e.to_string())
    }
}

impl Sampler {
    pub fn bytes_for(vocab: usize) -> Result<u64, String> {
        let scratch = k::sample_scratch_bytes(vocab).map_err(|e| e.to_string())?;
        Ok((scratch + 4 * (2 * vocab + SAMPLE_SLOTS * (3 + 2 * MAX_TOP) + 1)) as u64)
    }

    pub fn new(gpu: &Gpu, vocab: usize) -> Result<Self, String> {
        let scratch = k::sample_scratch_bytes(vocab).map_err(|e| e.to_string())?;
        let e = |e: DriverError| e.to_string();
        Ok(Sampler {
            vocab,
            scratch: gpu.zeros(scratch).map_err(e)?,
            pen_row: gpu.zeros(vocab).map_err(e)?,
            pen_ids: gpu.zeros(vocab).map_err(e)?,
            u: gpu.zeros(SAMPLE_SLOTS).map_err(e)?,
            tokens: gpu.zeros(SAMPLE_SLOTS).map_err(e)?,
            lse: gpu.zeros(SAMPLE_SLOTS).map_err(e)?,
            top_ids: gpu.zeros(SAMPLE_SLOTS * MAX_TOP).map_err(e)?,
            top_logits: gpu.zeros(SAMPLE_SLOTS * MAX_TOP).map_err(e)?,
            raw_token: gpu.zeros(1).map_err(e)?,
        })
    }

    /// Samples `requests` from `logits` ([rows, vocab], `rows` valid).
    pub fn sample(
        &mut self,
        gpu: &Gpu,
        logits: &CudaSlice<f32>,
        rows: usize,
        requests: &[SampleRequest<'_>],
    ) -> Result<Vec<Sampled>, BackendError> {
        let mut out = Vec::with_capacity(requests.len());
        for chunk in requests.chunks(SAMPLE_SLOTS) {
            out.extend(self.sample_chunk(gpu, logits, rows, chunk)?);
        }
        Ok(out)
    }

    fn sample_chunk(
        &mut self,
        gpu: &Gpu,
        logits: &CudaSlice<f32>,
        rows: usize,
        reqs: &[SampleRequest<'_>],
    ) -> Result<Vec<Sampled>, BackendError> {
        let v = self.vocab;
        let s = &gpu.stream;
        for r in reqs {
            if r.row >= rows {
                return Err(BackendError::Invalid(format!(
                    "logits row {} was not computed",
                    r.row
                )));
            }
        }
        let us: Vec<f32> = reqs.iter().map(|r| r.uniform.clamp(0.0, 1.0)).collect();
        s.memcpy_htod(&us, &mut self.u.slice_mut(..us.len()))
            .map_err(drv)?;
        // Results computed on the host (presence/frequency penalties, many top logprobs).
        let mut host: Vec<Option<Sampled>> = vec![None; reqs.len()];
        for (i, r) in reqs.iter().enumerate() {
            let p = r.params;
            let row = logits.slice(r.row * v..(r.row + 1) * v);
            let host_only = p.presence_penalty != 0.0
                || p.frequency_penalty != 0.0
                || r.logprobs.is_some_and(|n| n > MAX_TOP);
            if host_only {
                let l = gpu.download(&row).map_err(drv)?;
                let (token, logprob) =
                    sampling::sample_host(&l, p, r.history, r.uniform, r.logprobs);
                host[i] = Some(Sampled { token, logprob });
                continue;
            }
            let penalized =
                p.repetition_penalty != 1.0 && p.penalty_last_n > 0 && !r.history.is_empty();
            let n_top = r.logprobs.unwrap_or(0);
            let src = if penalized {
                s.memcpy_dtod(&row, &mut self.pen_row).map_err(drv)?;
                let recent = &r.history[r.history.len().saturating_sub(p.penalty_last_n)..];
                k::repetition_penalty(
                    s,
                    &mut self.pen_row,
                    v,
                    recent,
                    &mut self.pen_ids,
                    p.repetition_penalty,
                )
                .map_err(cuda)?;
                self.pen_row.slice(..)
            } else {
                logits.slice(r.row * v..(r.row + 1) * v)
            };
            let mut tok = self.tokens.slice_mut(i..i + 1);
            if p.is_greedy() && r.logprobs.is_none() {
                k::argmax(s, &src, &mut tok, 1, v).map_err(cuda)?;
                continue;
            }
            let cfg = SampleSettings {
                top_k: p.top_k,
                top_p: p.top_p,
                min_p: p.min_p,
                temperature: p.temperature,
            };
            let top_here = if penalized { 0 } else { n_top };
            let u = self.u.slice(i..i + 1);
            let mut lse = self.lse.slice_mut(i..i + 1);
            let mut ti = self.top_ids.slice_mut(i * MAX_TOP..i * MAX_TOP + top_here);
            let mut tl = self
                .top_logits
                .slice_mut(i * MAX_TOP..i * MAX_TOP + top_here);
            let o = SampleOut {
                token: &mut tok,
                logsumexp: &mut lse,
                top_ids: &mut ti,
                top_logits: &mut tl,
            };
            k::sample(s, &src, v, &mut self.scratch, cfg, &u, top_here, o).map_err(cuda)?;
            if penalized && r.logprobs.is_some() {
                // Log-probabilities are those of the raw model: a greedy pass over the raw row.
                let greedy = SampleSettings {
                    top_k: 0,
                    top_p: 1.0,
                    min_p: 0.0,
                    temperature: 0.0,
                };
                let mut ti = self.top_ids.slice_mut(i * MAX_TOP..i * MAX_TOP + n_top);
                let mut tl = self.top_logits.slice_mut(i * MAX_TOP..i * MAX_TOP + n_top);
                let o = SampleOut {
                    token: &mut self.raw_token,
                    logsumexp: &mut lse,
                    top_ids: &mut ti,
                    top_logits: &mut tl,
                };
                k::sample(s, &row, v, &mut self.scratch, greedy, &u, n_top, o).map_err(cuda)?;
            }
        }
        let n = reqs.len();
        let tokens = gpu.download(&self.tokens.slice(..n)).map_err(drv)?;
        let want_lp = reqs.iter().any(|r| r.logprobs.is_some());
        let (lse, top_ids, top_logits) = if want_lp {
            (
                gpu.download(&self.lse.slice(..n)).map_err(drv)?,
                gpu.download(&self.top_ids.slice(..n * MAX_TOP))
                    .map_err(drv)?,
                gpu.download(&self.top_logits.slice(..n * MAX_TOP))
                    .map_err(drv)?,
            )
        } else {
            (Vec::new(), Vec::new(), Vec::new())
        };
        let mut out = Vec::with_capacity(n);
        for (i, r) in reqs.iter().enumerate() {
            if let Some(done) = host[i].take() {
                out.push(done);
                continue;
            }
            let token = tokens[i];
            if token < 0 || token as usize >= v {
                return Err(BackendError::Cuda(format!(
                    "device sampler returned token {token} outside [0, {v})"
                )));
            }
            let token = token as u32;
            let logprob = match r.logprobs {
                None => None,
                Some(n_top) => {
                    let chosen = gpu
                        .download(
                            &logits
                                .slice(r.row * v + token as usize..r.row * v + token as usize + 1),
                        )
                        .map_err(drv)?[0];
                    let l = lse[i];
                    let top = (0..n_top)
                        .map(|j| {
                            (
                                top_ids[i * MAX_TOP + j] as u32,
                                top_logits[i * MAX_TOP + j] - l,
                            )
                        })
                        .collect();
                    Some(TokenLogprob {
                        token,
                        logprob: chosen - l,
                        top,
                    })
                }
            };
            out.push(Sampled { token, logprob });
        }
        Ok(out)
    }

    /// Log-probability of `token` in row `row` with the top `n` alternatives (raw logits).
    pub fn token_logprob(
        &mut self,
        gpu: &Gpu,
        logits: &CudaSlice<f32>,
        row: usize,
        token: u32,
        n: usize,
    ) -> Result<TokenLogprob, BackendError> {
        let v = self.vocab;
        let r = logits.slice(row * v..(row + 1) * v);
        if n > MAX_TOP {
            let l = gpu.download(&r).map_err(drv)?;
            return Ok(sampling::token_logprob(&l, token, n));
        }
        let greedy = SampleSettings {
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            temperature: 0.0,
        };
        let u = self.u.slice(..1);
        let mut lse = self.lse.slice_mut(..1);
        let mut ti = self.top_ids.slice_mut(..n);
        let mut tl = self.top_logits.slice_mut(..n);
        let o = SampleOut {
            token: &mut self.raw_token,
            logsumexp: &mut lse,
            top_ids: &mut ti,
            top_logits: &mut tl,
        };
        k::sample(&gpu.stream, &r, v, &mut self.scratch, greedy, &u, n, o).map_err(cuda)?;
        let lse = gpu.download(&self.lse.slice(..1)).map_err(drv)?[0];
        let ids = gpu.download(&self.top_ids.slice(..n)).map_err(drv)?;
        let tls = gpu.download(&self.top_logits.slice(..n)).map_err(drv)?;
        let chosen = gpu
            .download(&r.slice(token as usize..token as usize + 1))
            .map_err(drv)?[0];
        let top = ids
            .iter()
            .zip(&tls)
            .map(|(&i, &l)| (i as u32, l - lse))
            .collect();
        Ok(TokenLogprob {
            token,
            logprob: chosen - lse,
            top,
        })
    }
}
