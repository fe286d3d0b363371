//! Generation jobs as the HTTP side sees them: admission (capacity, duplicate ids, draining),
//! the registry `/cancel` looks ids up in, and a guard that cancels the engine's work when the
//! client goes away (the guard is dropped with the response body or the handler future).

use crate::errors::ApiError;
use crate::state::AppState;
use hyper::StatusCode;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::oneshot;
use worker_core::engine::{Event, GenerateRequest, SeqId, StopReason};

struct Entry {
    seq: SeqId,
    flag: Arc<AtomicBool>,
    /// Fires the job's stream so it ends with CANCELLED at once, without waiting for the
    /// engine to reach its next step boundary.
    notify: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
pub struct JobRegistry {
    map: Mutex<HashMap<String, Entry>>,
}

impl JobRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().expect("job registry lock")
    }

    /// Cancels a job by id; false when no such job is active (cancelling is idempotent).
    pub fn cancel(&self, state: &AppState, id: &str) -> bool {
        let mut map = self.lock();
        let Some(e) = map.get_mut(id) else {
            return false;
        };
        e.flag.store(true, Ordering::Relaxed);
        state.engine.cancel(e.seq);
        if let Some(tx) = e.notify.take() {
            let _ = tx.send(());
        }
        true
    }

    /// Cancels every active job (end of a drain).
    pub fn cancel_all(&self, state: &AppState) -> usize {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        ids.iter().filter(|id| self.cancel(state, id)).count()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    fn remove(&self, id: &str, seq: SeqId) {
        let mut map = self.lock();
        if map.get(id).is_some_and(|e| e.seq == seq) {
            map.remove(id);
        }
    }
}

/// What a job's stream yields next.
#[derive(Debug)]
pub enum Item {
    Engine(Event),
    /// `/cancel` (or the end of a drain) stopped the job.
    Cancelled,
    /// The engine dropped the job without a terminal event (engine thread gone).
    Lost,
}

/// An accepted job: its events and its guard.
pub struct Job {
    events: UnboundedReceiver<Event>,
    cancelled: Option<oneshot::Receiver<()>>,
    pub guard: JobGuard,
}

impl Job {
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Item> {
        match self.events.poll_recv(cx) {
            Poll::Ready(Some(ev)) => return Poll::Ready(Item::Engine(ev)),
            Poll::Ready(None) => return Poll::Ready(Item::Lost),
            Poll::Pending => {}
        }
        if let Some(rx) = self.cancelled.as_mut()
            && Pin::new(rx).poll(cx).is_ready()
        {
            self.cancelled = None;
            return Poll::Ready(Item::Cancelled);
        }
        Poll::Pending
    }

    pub async fn next(&mut self) -> Item {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }
}

/// Accepts a job: refuses when draining or at capacity, or when `id` is already active.
pub fn submit(
    state: &Arc<AppState>,
    id: String,
    endpoint: &'static str,
    req: GenerateRequest,
) -> Result<Job, ApiError> {
    if state.draining() {
        return Err(ApiError::shutting_down());
    }
    let active = state.metrics.active_jobs.load(Ordering::Relaxed) as usize;
    if active >= state.limits.max_active_jobs {
        return Err(ApiError::queue_full(active));
    }
    if state.jobs.lock().contains_key(&id) {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            ..ApiError::field(
                "job_id",
                "unique among active jobs",
                "a job with this job_id is already running",
            )
        });
    }
    let sub = state.engine.submit(req)?;
    let (tx, rx) = oneshot::channel();
    let flag = sub.cancel_flag();
    state.jobs.lock().insert(
        id.clone(),
        Entry {
            seq: sub.id,
            flag: flag.clone(),
            notify: Some(tx),
        },
    );
    state.metrics.active_jobs.fetch_add(1, Ordering::Relaxed);
    let guard = JobGuard {
        state: state.clone(),
        id,
        seq: sub.id,
        flag,
        endpoint,
        submitted: Instant::now(),
        first_token: None,
        last_token: None,
        last_index: None,
        tokens: 0,
        ended: false,
    };
    Ok(Job {
        events: sub.events,
        cancelled: Some(rx),
        guard,
    })
}

/// Lives as long as the client is being served; dropping it before `end` means the client left.
pub struct JobGuard {
    state: Arc<AppState>,
    id: String,
    seq: SeqId,
    flag: Arc<AtomicBool>,
    endpoint: &'static str,
    submitted: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    last_index: Option<usize>,
    /// Distinct generated tokens seen so far.
    pub tokens: usize,
    ended: bool,
}

impl JobGuard {
    /// Records a token's arrival; false when `index` repeats the previous one (the engine's
    /// final flush of held-back text), which is not a new token.
    pub fn on_token(&mut self, index: usize) -> bool {
        if self.last_index == Some(index) {
            return false;
        }
        let now = Instant::now();
        match self.last_token {
            None => self.state.metrics.ttft.observe(now - self.submitted),
            Some(prev) => self.state.metrics.inter_token.observe(now - prev),
        }
        self.first_token.get_or_insert(now);
        self.last_token = Some(now);
        self.last_index = Some(index);
        self.tokens += 1;
        true
    }

    /// Milliseconds from the first token to now (decode time as the client saw it).
    pub fn decode_ms(&self) -> f64 {
        self.first_token
            .map(|t| t.elapsed().as_secs_f64() * 1e3)
            .unwrap_or(0.0)
    }

    /// Records how the job ended; the guard then no longer cancels on drop.
    pub fn end(&mut self, outcome: &'static str) {
        if !self.ended {
            self.ended = true;
            if outcome == "cancelled" {
                // The engine may still be mid-step; make sure it drops the sequence.
                self.flag.store(true, Ordering::Relaxed);
                self.state.engine.cancel(self.seq);
            }
            self.state.metrics.job_outcome(self.endpoint, outcome);
            // Ids, counts and timings only: prompts and outputs never reach the log.
            tracing::info!(
                job = %self.id,
                endpoint = self.endpoint,
                outcome,
                tokens = self.tokens,
                ms = self.submitted.elapsed().as_millis() as u64,
                "job ended"
            );
        }
    }
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        if !self.ended {
            self.flag.store(true, Ordering::Relaxed);
            self.state.engine.cancel(self.seq);
            self.state
                .metrics
                .job_outcome(self.endpoint, "disconnected");
            tracing::info!(job = %self.id, "client went away; job cancelled");
        }
        self.state.jobs.remove(&self.id, self.seq);
        self.state
            .metrics
            .active_jobs
            .fetch_sub(1, Ordering::Relaxed);
        self.state
            .metrics
            .job_duration
            .observe(self.submitted.elapsed());
    }
}

/// The metrics label of a stop reason.
pub fn outcome(reason: &StopReason) -> &'static str {
    match reason {
        StopReason::MaxTokens => "max_tokens",
        StopReason::Eos => "eos",
        StopReason::StopSequence(_) => "stop_sequence",
        StopReason::Cancelled => "cancelled",
        StopReason::ContextFull => "context_full",
    }
}
