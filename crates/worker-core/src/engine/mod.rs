//! The engine: one thread that owns the backend and advances a batch of sequences per step.
//!
//! Callers hold an [`EngineHandle`]; requests go in over a channel and each request's
//! [`Event`]s come back over its own channel, so the HTTP side never blocks on inference.
//! Architecture invariant: only the engine thread touches the backend (and so the GPU).

mod backend;
mod kv;
mod request;
mod sequence;
mod stop;

pub use backend::{
    Backend, BackendError, BackendInfo, BatchItem, LogitsWanted, SampleRequest, Sampled, TraceInfo,
};
pub use kv::BlockAllocator;
pub use request::{Event, GenerateRequest, SeqId, StopReason, Timings, TokenLogprob, Usage};
pub use stop::{StopMatcher, StopOutcome};

use crate::sampling::{RequestRng, random_seed};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use sequence::Sequence;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("the request queue is full ({0} waiting)")]
    QueueFull(usize),
    #[error("the engine is shutting down")]
    ShuttingDown,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Sequences advanced together per step.
    pub max_batch: usize,
    /// Tokens of one prompt processed per step (long prompts go in chunks).
    pub prefill_chunk: usize,
    /// Context window per sequence (prompt + generated).
    pub ctx_size: usize,
    /// Requests allowed to wait for a slot before submissions are refused.
    pub max_queue: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch: 1,
            prefill_chunk: 512,
            ctx_size: 4096,
            max_queue: 64,
        }
    }
}

/// Counters shared with the HTTP side (read without touching the engine thread).
#[derive(Debug, Default)]
pub struct EngineStats {
    pub running: AtomicU64,
    pub waiting: AtomicU64,
    pub kv_blocks_used: AtomicU64,
    pub kv_blocks_total: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub steps: AtomicU64,
}

enum Command {
    Submit(Box<Sequence>),
    Cancel(SeqId),
    Shutdown { cancel_running: bool },
}

/// A submitted request: its id and its event stream.
#[derive(Debug)]
pub struct Submission {
    pub id: SeqId,
    pub events: UnboundedReceiver<Event>,
    /// Setting it cancels the request (checked between layers of the current step).
    pub cancel: Arc<AtomicBool>,
}

impl Submission {
    /// Asks the engine to stop this request; it ends with `StopReason::Cancelled`.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }
}

/// The caller's side of the engine. Cloneable; the engine stops when `shutdown` is called.
#[derive(Clone)]
pub struct EngineHandle {
    tx: Sender<Command>,
    /// Cancel flags of live requests, so `cancel(id)` takes effect mid-step.
    live: Arc<Mutex<HashMap<SeqId, Arc<AtomicBool>>>>,
    next_id: Arc<AtomicU64>,
    pub stats: Arc<EngineStats>,
    tokenizer: Arc<Tokenizer>,
    config: EngineConfig,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("config", &self.config)
            .finish()
    }
}

impl EngineHandle {
    /// Starts the engine thread, which takes ownership of `backend`. Checkpoint logging is on
    /// when `ORCH_LOG_FILE` is set (see orch-log).
    pub fn spawn(
        backend: Box<dyn Backend>,
        tokenizer: Arc<Tokenizer>,
        config: EngineConfig,
    ) -> Self {
        let sink = orch_log::Sink::from_env().unwrap_or_else(|e| {
            tracing::warn!("checkpoint logging disabled: {e}");
            None
        });
        Self::spawn_with_log(backend, tokenizer, config, sink)
    }

    /// As `spawn`, with an explicit checkpoint sink (None: logging off, at no cost).
    pub fn spawn_with_log(
        backend: Box<dyn Backend>,
        tokenizer: Arc<Tokenizer>,
        config: EngineConfig,
        sink: Option<orch_log::Sink>,
    ) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let stats = Arc::new(EngineStats::default());
        let live = Arc::new(Mutex::new(HashMap::new()));
        let mut engine = Engine::new(
            backend,
            tokenizer.clone(),
            config.clone(),
            stats.clone(),
            rx,
            live.clone(),
            sink,
        );
        let thread = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || engine.run())
            .expect("spawning the engine thread");
        EngineHandle {
            tx,
            live,
            next_id: Arc::new(AtomicU64::new(1)),
            stats,
            tokenizer,
            config,
            thread: Arc::new(Mutex::new(Some(thread))),
        }
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Validates and queues a request.
    pub fn submit(&self, req: GenerateRequest) -> Result<Submission, EngineError> {
        validate(&req, &self.config, self.tokenizer.vocab_size())?;
        let waiting = self.stats.waiting.load(Ordering::Relaxed) as usize;
        if waiting >= self.config.max_queue {
            return Err(EngineError::QueueFull(waiting));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let seed = req.sampling.seed.unwrap_or_else(random_seed);
        let (etx, erx) = unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let seq = Sequence {
            id,
            tokens: req.prompt.clone(),
            stop: StopMatcher::new(&req.stop),
            req,
            events: etx,
            cancel: cancel.clone(),
            n_cached: 0,
            block_table: Vec::new(),
            seed,
            rng: RequestRng::new(seed),
            decoder: StreamDecoder::new(&self.tokenizer, true),
            generated: 0,
            submitted: Instant::now(),
            prefill_done: None,
            first_token: None,
        };
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        self.live
            .lock()
            .expect("live map")
            .insert(id, cancel.clone());
        if self.tx.send(Command::Submit(Box::new(seq))).is_err() {
            self.live.lock().expect("live map").remove(&id);
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::ShuttingDown);
        }
        Ok(Submission {
            id,
            events: erx,
            cancel,
        })
    }

    /// Cancels a request by id (idempotent; unknown ids are ignored). Takes effect within
    /// one layer of the current step.
    pub fn cancel(&self, id: SeqId) {
        if let Some(flag) = self.live.lock().expect("live map").get(&id) {
            flag.store(true, Ordering::Relaxed);
        }
        let _ = self.tx.send(Command::Cancel(id));
    }

    /// Stops the engine: running requests finish (`cancel_running = false`) or end with
    /// `Cancelled`; waiting ones are cancelled. Blocks until the thread has exited.
    pub fn shutdown(&self, cancel_running: bool) {
        let _ = self.tx.send(Command::Shutdown { cancel_running });
        if let Some(t) = self.thread.lock().expect("engine thread lock").take() {
            let _ = t.join();
        }
    }
}

fn validate(req: &GenerateRequest, cfg: &EngineConfig, vocab: usize) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::InvalidRequest(m));
    if req.prompt.is_empty() {
        return bad("the prompt has no tokens".into());
    }
    if let Some(t) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
        return bad(format!(
            "token id {t} is outside the vocabulary (size {vocab})"
        ));
    }
    if req.prompt.len() >= cfg.ctx_size {
        return bad(format!(
            "the prompt has {} tokens; the context size is {} (at least one token must be generated)",
            req.prompt.len(),
            cfg.ctx_size
        ));
    }
    if req.max_tokens == 0 {
        return bad("max_tokens must be at least 1".into());
    }
    Ok(())
}

struct Engine {
    backend: Box<dyn Backend>,
    tokenizer: Arc<Tokenizer>,
    config: EngineConfig,
    stats: Arc<EngineStats>,
    rx: Receiver<Command>,
    kv: BlockAllocator,
    waiting: VecDeque<Box<Sequence>>,
    running: Vec<Sequence>,
    draining: bool,
    tracing: bool,
    live: Arc<Mutex<HashMap<SeqId, Arc<AtomicBool>>>>,
}

impl Engine {
    fn new(
        backend: Box<dyn Backend>,
        tokenizer: Arc<Tokenizer>,
        config: EngineConfig,
        stats: Arc<EngineStats>,
        rx: Receiver<Command>,
        live: Arc<Mutex<HashMap<SeqId, Arc<AtomicBool>>>>,
        sink: Option<orch_log::Sink>,
    ) -> Self {
        let kv = BlockAllocator::new(backend.kv_num_blocks(), backend.kv_block_size());
        stats
            .kv_blocks_total
            .store(kv.total() as u64, Ordering::Relaxed);
        let mut backend = backend;
        let tracing = sink.is_some();
        backend.set_log_sink(sink);
        Engine {
            backend,
            tokenizer,
            config,
            stats,
            rx,
            kv,
            waiting: VecDeque::new(),
            running: Vec::new(),
            draining: false,
            tracing,
            live,
        }
    }

    fn run(&mut self) {
        loop {
            let idle = self.running.is_empty() && self.waiting.is_empty();
            if idle && self.draining {
                break;
            }
            // Block for work when idle; otherwise just drain what has arrived.
            if idle {
                match self.rx.recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => break,
                }
            }
            loop {
                match self.rx.try_recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.draining = true;
                        break;
                    }
                }
            }
            self.retire_cancelled();
            self.admit();
            if !self.running.is_empty() {
                self.step();
            }
            self.publish_stats();
        }
        self.backend.flush_log();
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(seq) => {
                if self.draining {
                    self.left_queue();
                    self.forget(seq.id);
                    let _ = seq.events.send(Event::Error(EngineError::ShuttingDown));
                } else {
                    self.waiting.push_back(seq);
                }
            }
            Command::Cancel(id) => {
                let waiting = self.waiting.iter().map(|b| &**b);
                for s in self.running.iter().chain(waiting).filter(|s| s.id == id) {
                    s.cancel.store(true, Ordering::Relaxed);
                }
            }
            Command::Shutdown { cancel_running } => {
                self.draining = true;
                let running = if cancel_running {
                    &self.running[..]
                } else {
                    &[]
                };
                for s in self.waiting.iter().map(|b| &**b).chain(running) {
                    s.cancel.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    fn retire_cancelled(&mut self) {
        for mut s in std::mem::take(&mut self.waiting) {
            if s.cancelled() {
                s.finish(StopReason::Cancelled);
                self.left_queue();
                self.forget(s.id);
            } else {
                self.waiting.push_back(s);
            }
        }
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].cancelled() {
                let s = self.running.swap_remove(i);
                self.retire(s, StopReason::Cancelled);
            } else {
                i += 1;
            }
        }
    }

    /// Moves waiting requests into the batch while there is room. A request reserves KV
    /// blocks for its whole budget (prompt + max_tokens, capped by the context) up front, so
    /// a running sequence never fails for lack of KV memory; new work waits instead.
    fn admit(&mut self) {
        while self.running.len() < self.config.max_batch {
            let Some(seq) = self.waiting.front() else {
                break;
            };
            let budget = (seq.n_prompt() + seq.req.max_tokens).min(self.config.ctx_size);
            if self.kv.blocks_for(budget) > self.kv.total() {
                let seq = self.waiting.pop_front().expect("front exists");
                self.left_queue();
                self.forget(seq.id);
                seq.send(Event::Error(EngineError::InvalidRequest(format!(
                    "the request needs {budget} tokens of KV cache; the pool holds {}",
                    self.kv.total() * self.kv.block_size()
                ))));
                continue;
            }
            let mut table = Vec::new();
            if !self.kv.grow(&mut table, budget) {
                break; // wait for running sequences to free blocks
            }
            let mut seq = self.waiting.pop_front().expect("front exists");
            self.left_queue();
            seq.block_table = table;
            seq.send(Event::Started {
                seq: seq.id,
                seed: seq.seed,
                prompt_tokens: seq.n_prompt(),
            });
            self.stats
                .prompt_tokens
                .fetch_add(seq.n_prompt() as u64, Ordering::Relaxed);
            self.running.push(*seq);
        }
    }

    fn step(&mut self) {
        // One chunk per running sequence: the next piece of its prompt, or its last token.
        let mut plan = Vec::with_capacity(self.running.len());
        for s in &self.running {
            let start = s.n_cached;
            let end = if s.in_prefill() {
                (start + self.config.prefill_chunk).min(s.n_prompt())
            } else {
                s.tokens.len()
            };
            let completes = end == s.tokens.len();
            let logits = if s.in_prefill() && s.req.prompt_logprobs.is_some() {
                LogitsWanted::All
            } else if completes {
                LogitsWanted::Last
            } else {
                LogitsWanted::None
            };
            plan.push((start, end, logits));
        }
        let items: Vec<BatchItem<'_>> = self
            .running
            .iter()
            .zip(&plan)
            .map(|(s, &(start, end, logits))| BatchItem {
                tokens: &s.tokens[start..end],
                start_pos: start,
                block_table: &s.block_table,
                logits,
                cancel: Some(&*s.cancel),
                trace: self.tracing.then(|| TraceInfo {
                    request: s.req.trace_name.clone(),
                    last_token_idx: s.generated as u32,
                }),
            })
            .collect();
        let result = self.backend.forward(&items);
        drop(items);
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = result {
            tracing::error!("forward pass failed: {e}");
            self.fail_running(&e);
            return;
        }

        // Rows of logits, in batch order.
        let mut row = 0;
        let mut to_sample = Vec::new(); // (running index, row)
        for (i, (s, &(start, end, logits))) in self.running.iter_mut().zip(&plan).enumerate() {
            let n = end - start;
            let was_prefill = s.in_prefill();
            s.n_cached = end;
            if was_prefill && !s.in_prefill() {
                s.prefill_done = Some(Instant::now());
            }
            match logits {
                LogitsWanted::None => {}
                LogitsWanted::Last => {
                    to_sample.push((i, row));
                    row += 1;
                }
                LogitsWanted::All => {
                    if let Some(n_top) = s.req.prompt_logprobs {
                        let mut lps = Vec::with_capacity(n);
                        if start == 0 {
                            lps.push(None);
                        }
                        for j in 0..n {
                            let next = start + j + 1;
                            if next < s.n_prompt() {
                                match self.backend.token_logprob(row + j, s.tokens[next], n_top) {
                                    Ok(lp) => lps.push(Some(lp)),
                                    Err(e) => {
                                        s.send(Event::Error(EngineError::Backend(e)));
                                        s.cancel.store(true, Ordering::Relaxed);
                                    }
                                }
                            }
                        }
                        s.send(Event::PromptLogprobs(lps));
                    }
                    if end == s.tokens.len() {
                        to_sample.push((i, row + n - 1));
                    }
                    row += n;
                }
            }
        }
        // A request cancelled during the step is retired next loop; never sample for it.
        to_sample.retain(|&(i, _)| !self.running[i].cancelled());
        if to_sample.is_empty() {
            return;
        }

        let uniforms: Vec<f32> = to_sample
            .iter()
            .map(|&(i, _)| self.running[i].rng.next_uniform())
            .collect();
        let requests: Vec<SampleRequest<'_>> = to_sample
            .iter()
            .zip(&uniforms)
            .map(|(&(i, r), &u)| {
                let s = &self.running[i];
                SampleRequest {
                    row: r,
                    params: &s.req.sampling,
                    history: &s.tokens,
                    uniform: u,
                    logprobs: s.req.logprobs,
                }
            })
            .collect();
        let sampled = self.backend.sample(&requests);
        drop(requests);
        let sampled = match sampled {
            Ok(v) => v,
            Err(e) => {
                self.fail_running(&e);
                return;
            }
        };

        let mut finished = Vec::new();
        for (&(i, _), smp) in to_sample.iter().zip(sampled) {
            if let Some(reason) = self.accept_token(i, smp) {
                finished.push((self.running[i].id, reason));
            }
        }
        for (id, reason) in finished {
            if let Some(pos) = self.running.iter().position(|s| s.id == id) {
                let s = self.running.swap_remove(pos);
                self.retire(s, reason);
            }
        }
    }

    /// Records a sampled token and streams its text; returns why the sequence ends, if it does.
    fn accept_token(&mut self, i: usize, smp: Sampled) -> Option<StopReason> {
        let eog = self.tokenizer.eog_ids().contains(&smp.token);
        let s = &mut self.running[i];
        let now = Instant::now();
        s.first_token.get_or_insert(now);
        s.generated += 1;
        self.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        if eog && !s.req.ignore_eos {
            return Some(StopReason::Eos);
        }
        s.tokens.push(smp.token);
        let piece = match s.decoder.push(smp.token) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("decoding token {}: {e}", smp.token);
                String::new()
            }
        };
        let out = s.stop.push(&piece);
        let reason = if let Some(stop) = out.matched {
            Some(StopReason::StopSequence(stop))
        } else if s.generated >= s.req.max_tokens {
            Some(StopReason::MaxTokens)
        } else if s.tokens.len() >= self.config.ctx_size {
            Some(StopReason::ContextFull)
        } else {
            None
        };
        let mut text = out.emit;
        if matches!(
            reason,
            Some(StopReason::MaxTokens | StopReason::ContextFull)
        ) {
            text.push_str(&s.decoder.finish());
            text.push_str(&s.stop.flush());
        }
        s.send(Event::Token {
            id: smp.token,
            text,
            index: s.generated - 1,
            logprob: smp.logprob,
        });
        reason
    }

    fn retire(&mut self, mut s: Sequence, reason: StopReason) {
        if reason == StopReason::Eos {
            // Text held back as a possible stop string (or an unfinished character) is real
            // output: send it before the end.
            let mut tail = s.decoder.finish();
            tail.push_str(&s.stop.flush());
            if !tail.is_empty() {
                let last = *s.tokens.last().expect("non-empty");
                s.send(Event::Token {
                    id: last,
                    text: tail,
                    index: s.generated.saturating_sub(1),
                    logprob: None,
                });
            }
        }
        s.finish(reason);
        self.forget(s.id);
        self.kv.release(&mut s.block_table);
        if self.tracing {
            self.backend.flush_log();
        }
    }

    /// Ends every running request with `e` (the backend failed a whole step).
    fn fail_running(&mut self, e: &BackendError) {
        for mut s in std::mem::take(&mut self.running) {
            s.send(Event::Error(EngineError::Backend(e.clone())));
            self.forget(s.id);
            self.kv.release(&mut s.block_table);
        }
    }

    /// A request stopped waiting (admitted, cancelled or refused). `stats.waiting` counts
    /// requests from `submit` until then, whether still in the channel or in the engine's queue.
    fn left_queue(&self) {
        self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
    }

    fn forget(&self, id: SeqId) {
        self.live.lock().expect("live map").remove(&id);
    }

    fn publish_stats(&self) {
        self.stats
            .running
            .store(self.running.len() as u64, Ordering::Relaxed);
        self.stats
            .kv_blocks_used
            .store(self.kv.used() as u64, Ordering::Relaxed);
    }
}
