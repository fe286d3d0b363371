//! The interface every compute backend (CPU, CUDA) implements.
//!
//! A backend owns the weights in its memory, the KV pool and the activations. The engine owns
//! the scheduling: it hands the backend a batch of sequence chunks with their KV block tables,
//! then asks it to sample the rows whose logits were requested. Logits stay in backend memory;
//! only sampled ids (and requested log-probabilities) come back.

use super::request::TokenLogprob;
use crate::sampling::SamplingParams;
use std::sync::atomic::{AtomicBool, Ordering};

/// Which positions of a chunk need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsWanted {
    None,
    /// Only the chunk's last token (normal generation).
    Last,
    /// Every token of the chunk (prompt log-probabilities, teacher forcing).
    All,
}

/// Checkpoint logging for one chunk: which request it belongs to and the `token_idx` of its
/// last position (the engine counts generated tokens; the prompt's last position is 0).
#[derive(Debug, Clone)]
pub struct TraceInfo {
    /// The request's name (job id), written as the `team` suffix.
    pub request: Option<String>,
    pub last_token_idx: u32,
}

/// A run of consecutive tokens of one sequence: a prefill chunk or a single decode token.
#[derive(Debug, Clone)]
pub struct BatchItem<'a> {
    pub tokens: &'a [u32],
    /// Absolute position of `tokens[0]`; positions before it are already in the KV cache.
    pub start_pos: usize,
    /// Physical KV block ids; block `i` holds positions `i*block_size .. (i+1)*block_size`.
    /// Covers at least `start_pos + tokens.len()` positions.
    pub block_table: &'a [u32],
    pub logits: LogitsWanted,
    pub trace: Option<TraceInfo>,
    /// Set when the request is cancelled. Slow backends check it between layers and stop
    /// work on this item early (its logits rows are then left as zeros, never sampled).
    pub cancel: Option<&'a AtomicBool>,
}

impl BatchItem<'_> {
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// One logits row to sample from, addressed by its index among the rows the last `forward`
/// produced (items in order; `Last` gives one row, `All` gives `tokens.len()` rows).
#[derive(Debug, Clone)]
pub struct SampleRequest<'a> {
    pub row: usize,
    pub params: &'a SamplingParams,
    /// Recent tokens for the repetition/presence/frequency penalties (oldest first).
    pub history: &'a [u32],
    /// The request's uniform random draw in [0, 1) for this step (ignored when greedy).
    pub uniform: f32,
    /// Top-N log-probabilities to return (None: none).
    pub logprobs: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Sampled {
    pub token: u32,
    pub logprob: Option<TokenLogprob>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("out of device memory: {0}")]
    OutOfMemory(String),
    #[error("CUDA error: {0}")]
    Cuda(String),
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// Memory and identity facts for `/health` and start-up logs (cached, no device calls).
#[derive(Debug, Clone, Default)]
pub struct BackendInfo {
    /// "cpu" or "cuda:0 (NVIDIA H200)".
    pub device: String,
    /// Bytes held for weights, KV pool and activations.
    pub bytes_used: u64,
    /// Model state lives in device memory (VRAM) — false for the CPU backend.
    pub resident_on_device: bool,
}

pub trait Backend: Send {
    fn info(&self) -> BackendInfo;

    /// Tokens per KV block.
    fn kv_block_size(&self) -> usize;
    /// Physical blocks in the KV pool.
    fn kv_num_blocks(&self) -> usize;

    /// Runs the model over a batch, writing KV for every token and keeping the requested
    /// logits rows for `sample`/`logits`.
    fn forward(&mut self, batch: &[BatchItem<'_>]) -> Result<(), BackendError>;

    /// Samples the given rows of the last forward's logits.
    fn sample(&mut self, requests: &[SampleRequest<'_>]) -> Result<Vec<Sampled>, BackendError>;

    /// Log-probability of `token` at `row`, with the top `n` alternatives (prompt logprobs).
    fn token_logprob(
        &mut self,
        row: usize,
        token: u32,
        n: usize,
    ) -> Result<TokenLogprob, BackendError>;

    /// A whole logits row copied to the host (tests, parity tools; not the hot path).
    fn logits(&mut self, row: usize) -> Result<Vec<f32>, BackendError>;

    /// Attaches (or detaches) the checkpoint sink; backends log `embedding`, `layer.N`,
    /// `final_norm` and `logits` for chunks that carry a `TraceInfo`.
    fn set_log_sink(&mut self, sink: Option<orch_log::Sink>);

    /// Writes buffered checkpoint lines (end of a request, shutdown).
    fn flush_log(&mut self) {}
}
