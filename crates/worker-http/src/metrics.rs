//! Prometheus counters and histograms, kept by the HTTP side (the engine's own counters are
//! read from `EngineStats` when rendering).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A fixed-bucket histogram in seconds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<HistInner>,
}

#[derive(Debug, Default)]
struct HistInner {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            inner: Mutex::new(HistInner {
                counts: vec![0; bounds.len()],
                ..Default::default()
            }),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let mut h = self.inner.lock().expect("histogram lock");
        if let Some(i) = self.bounds.iter().position(|&b| s <= b) {
            h.counts[i] += 1;
        }
        h.sum += s;
        h.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let h = self.inner.lock().expect("histogram lock");
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&h.counts) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            h.count, h.sum, h.count
        );
    }
}

const TTFT_BOUNDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const ITL_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const E2E_BOUNDS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Debug)]
pub struct Metrics {
    /// (endpoint, status) → count.
    http: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// (endpoint, outcome) → count, for generation jobs.
    jobs: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    pub ttft: Histogram,
    pub inter_token: Histogram,
    pub job_duration: Histogram,
    /// Jobs accepted and not yet ended (running or queued), as the HTTP side sees them.
    pub active_jobs: AtomicU64,
    pub open_connections: AtomicU64,
    pub refused_connections: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            http: Mutex::default(),
            jobs: Mutex::default(),
            ttft: Histogram::new(TTFT_BOUNDS),
            inter_token: Histogram::new(ITL_BOUNDS),
            job_duration: Histogram::new(E2E_BOUNDS),
            active_jobs: AtomicU64::new(0),
            open_connections: AtomicU64::new(0),
            refused_connections: AtomicU64::new(0),
        }
    }
}

/// Gauges read from elsewhere at render time.
#[derive(Debug, Default)]
pub struct Gauges {
    pub running: u64,
    pub kv_blocks_used: u64,
    pub kv_blocks_total: u64,
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    pub engine_steps: u64,
    pub uptime_seconds: f64,
    pub memory_bytes: u64,
}

impl Metrics {
    pub fn http_request(&self, endpoint: &'static str, status: u16) {
        *self
            .http
            .lock()
            .expect("metrics lock")
            .entry((endpoint, status))
            .or_default() += 1;
    }

    pub fn job_outcome(&self, endpoint: &'static str, outcome: &'static str) {
        *self
            .jobs
            .lock()
            .expect("metrics lock")
            .entry((endpoint, outcome))
            .or_default() += 1;
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut o = String::with_capacity(4096);
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let gauge = |o: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let _ = writeln!(
            o,
            "# HELP worker_http_requests_total HTTP requests by endpoint and status."
        );
        let _ = writeln!(o, "# TYPE worker_http_requests_total counter");
        for ((ep, st), n) in self.http.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                o,
                "worker_http_requests_total{{endpoint=\"{ep}\",status=\"{st}\"}} {n}"
            );
        }
        let _ = writeln!(
            o,
            "# HELP worker_requests_total Generation requests by endpoint and outcome."
        );
        let _ = writeln!(o, "# TYPE worker_requests_total counter");
        for ((ep, oc), n) in self.jobs.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                o,
                "worker_requests_total{{endpoint=\"{ep}\",outcome=\"{oc}\"}} {n}"
            );
        }
        counter(
            &mut o,
            "worker_prompt_tokens_total",
            "Prompt tokens admitted to the engine.",
            g.prompt_tokens,
        );
        counter(
            &mut o,
            "worker_generated_tokens_total",
            "Tokens generated by the engine.",
            g.generated_tokens,
        );
        counter(
            &mut o,
            "worker_engine_steps_total",
            "Engine forward steps.",
            g.engine_steps,
        );
        counter(
            &mut o,
            "worker_refused_connections_total",
            "Connections refused at the connection cap.",
            self.refused_connections.load(Ordering::Relaxed),
        );
        let active = self.active_jobs.load(Ordering::Relaxed);
        gauge(
            &mut o,
            "worker_active_jobs",
            "Generation jobs accepted and not yet ended.",
            active as f64,
        );
        gauge(
            &mut o,
            "worker_running_jobs",
            "Sequences in the engine's batch.",
            g.running as f64,
        );
        gauge(
            &mut o,
            "worker_queue_depth",
            "Accepted jobs waiting for a batch slot.",
            active.saturating_sub(g.running) as f64,
        );
        gauge(
            &mut o,
            "worker_kv_cache_blocks_used",
            "KV cache blocks in use.",
            g.kv_blocks_used as f64,
        );
        gauge(
            &mut o,
            "worker_kv_cache_blocks_total",
            "KV cache blocks in the pool.",
            g.kv_blocks_total as f64,
        );
        let usage = if g.kv_blocks_total > 0 {
            g.kv_blocks_used as f64 / g.kv_blocks_total as f64
        } else {
            0.0
        };
        gauge(
            &mut o,
            "worker_kv_cache_usage_ratio",
            "Fraction of KV cache blocks in use.",
            usage,
        );
        gauge(
            &mut o,
            "worker_open_connections",
            "Open HTTP connections.",
            self.open_connections.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut o,
            "worker_memory_bytes",
            "Bytes the backend holds (weights, KV, activations).",
            g.memory_bytes as f64,
        );
        gauge(
            &mut o,
            "worker_uptime_seconds",
            "Seconds since start.",
            g.uptime_seconds,
        );
        self.ttft.render(
            &mut o,
            "worker_time_to_first_token_seconds",
            "Submission to first generated token.",
        );
        self.inter_token.render(
            &mut o,
            "worker_inter_token_latency_seconds",
            "Time between consecutive generated tokens.",
        );
        self.job_duration.render(
            &mut o,
            "worker_request_duration_seconds",
            "Submission to the end of a generation job.",
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.1\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"1\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count 3\n"), "{s}");
    }
}
