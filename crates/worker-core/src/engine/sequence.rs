//! One request's state inside the engine.

use super::request::{Event, GenerateRequest, SeqId, StopReason, Timings, Usage};
use super::stop::StopMatcher;
use crate::sampling::RequestRng;
use crate::tokenizer::StreamDecoder;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

pub(super) struct Sequence {
    pub id: SeqId,
    pub req: GenerateRequest,
    pub events: UnboundedSender<Event>,
    pub cancel: Arc<AtomicBool>,
    /// Prompt followed by generated tokens.
    pub tokens: Vec<u32>,
    /// Positions whose K/V are in the cache.
    pub n_cached: usize,
    pub block_table: Vec<u32>,
    pub seed: u64,
    pub rng: RequestRng,
    pub decoder: StreamDecoder,
    pub stop: StopMatcher,
    pub generated: usize,
    pub submitted: Instant,
    pub prefill_done: Option<Instant>,
    pub first_token: Option<Instant>,
}

impl Sequence {
    pub fn n_prompt(&self) -> usize {
        self.req.prompt.len()
    }

    pub fn in_prefill(&self) -> bool {
        self.n_cached < self.n_prompt()
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Sends an event; a receiver that went away means the client left: cancel.
    pub fn send(&self, e: Event) {
        if self.events.send(e).is_err() {
            self.cancel.store(true, Ordering::Relaxed);
        }
    }

    pub fn finish(&mut self, reason: StopReason) {
        let now = Instant::now();
        let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e3;
        let timings = Timings {
            ttft_ms: self
                .first_token
                .map(|t| ms(self.submitted, t))
                .unwrap_or(0.0),
            prefill_ms: self
                .prefill_done
                .map(|t| ms(self.submitted, t))
                .unwrap_or(0.0),
            decode_ms: self.prefill_done.map(|t| ms(t, now)).unwrap_or(0.0),
        };
        let usage = Usage {
            prompt_tokens: self.n_prompt(),
            completion_tokens: self.generated,
            cached_tokens: 0,
        };
        let _ = self.events.send(Event::Finished {
            reason,
            usage,
            timings,
            seed: self.seed,
        });
    }
}
