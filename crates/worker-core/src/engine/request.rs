//! What callers send to the engine and what it streams back.

use crate::sampling::SamplingParams;

/// Identifies one sequence (one request) inside the engine.
pub type SeqId = u64;

/// One generation request, already tokenized.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    /// Upper bound on generated tokens.
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop strings, matched on decoded text across token boundaries; never emitted.
    pub stop: Vec<String>,
    /// Top-N log-probabilities for each generated token (0 = only the chosen token's).
    pub logprobs: Option<usize>,
    /// Top-N log-probabilities for every prompt position after the first (`echo`).
    pub prompt_logprobs: Option<usize>,
    /// Keep generating past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
    /// Name used in checkpoint logs (`team` suffix), e.g. the job id.
    pub trace_name: Option<String>,
}

impl GenerateRequest {
    pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Self {
        GenerateRequest {
            prompt,
            max_tokens,
            sampling: SamplingParams::greedy(),
            stop: Vec::new(),
            logprobs: None,
            prompt_logprobs: None,
            ignore_eos: false,
            trace_name: None,
        }
    }
}

/// Why a sequence stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    MaxTokens,
    /// An end-of-generation token (not emitted as text).
    Eos,
    /// A stop string matched (the string is not emitted).
    StopSequence(String),
    Cancelled,
    /// The context window (or the model's context length) is full.
    ContextFull,
}

impl StopReason {
    /// The M0 contract's names.
    pub fn as_m0(&self) -> &'static str {
        match self {
            StopReason::MaxTokens => "MAX_TOKENS",
            StopReason::Eos => "EOS",
            StopReason::StopSequence(_) => "STOP_SEQUENCE",
            StopReason::Cancelled => "CANCELLED",
            StopReason::ContextFull => "CONTEXT_FULL",
        }
    }
    /// OpenAI's `finish_reason`.
    pub fn as_openai(&self) -> &'static str {
        match self {
            StopReason::MaxTokens | StopReason::ContextFull => "length",
            StopReason::Eos | StopReason::StopSequence(_) => "stop",
            StopReason::Cancelled => "cancelled",
        }
    }
}

/// A token's log-probability and the top alternatives at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// (token, logprob), most likely first.
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Submission to first generated token.
    pub ttft_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

/// Streamed to the caller, in order: `Started`, maybe `PromptLogprobs`, `Token`s, then exactly
/// one of `Finished` or `Error`.
#[derive(Debug, Clone)]
pub enum Event {
    Started {
        seq: SeqId,
        seed: u64,
        prompt_tokens: usize,
    },
    PromptLogprobs(Vec<Option<TokenLogprob>>),
    /// `text` is the decoded text this token completes (valid UTF-8, possibly empty when a
    /// character or a possible stop string is still incomplete).
    Token {
        id: u32,
        text: String,
        index: usize,
        logprob: Option<TokenLogprob>,
    },
    Finished {
        reason: StopReason,
        usage: Usage,
        timings: Timings,
        seed: u64,
    },
    Error(super::EngineError),
}
