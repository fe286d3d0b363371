//! The JSONL sink: buffers one line per checkpoint in memory and writes them on `flush`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::LogError;
use crate::config::SinkConfig;
use crate::host::HostSlice;
use crate::line::{LogLine, Stage};
use crate::stats::{compute_stats, first_values, top_k, utc_timestamp};

/// Above this many buffered bytes `record` flushes on its own, so a very long request cannot grow
/// the buffer without bound (a 151,936-wide logits line is ~1 KiB, so this is thousands of lines).
const AUTO_FLUSH_BYTES: usize = 4 << 20;

/// One checkpoint handed to [`Sink::record`]. All data is borrowed host memory.
#[derive(Debug, Clone, Copy)]
pub struct Checkpoint<'a> {
    /// Which checkpoint this is.
    pub checkpoint: Stage,
    /// Name of the request (e.g. its `job_id`); when given, `team` becomes `<team>/<request>`,
    /// which `cargo xtask parity` uses to pair requests with the references (`reference/<name>`).
    pub request: Option<&'a str>,
    /// Generated-token counter of the request, 0 at the prompt's last position. Prefill
    /// positions (logged only when `config().prefill`) also carry 0, with their own `pos`.
    pub token_idx: u32,
    /// Absolute position in the sequence.
    pub pos: u32,
    /// The token fed in at `pos`.
    pub input_token: u32,
    /// Logical shape, e.g. `&[1, 896]`; its product must equal `data.len()`.
    pub shape: &'a [usize],
    /// The values, already copied to the host.
    pub data: HostSlice<'a>,
    /// Producer, e.g. `worker-orcd-cpu` or `worker-orcd-cuda`.
    pub source: &'a str,
    /// For logits: how many top `(id, value)` pairs to keep ([`crate::DEFAULT_TOP_K`] matches the
    /// references).
    pub top_k: Option<usize>,
}

/// A JSONL checkpoint writer.
///
/// Disabled logging costs nothing when the engine holds an `Option<Sink>` and guards each
/// checkpoint, including its device-to-host copy, behind it:
///
/// ```no_run
/// # use orch_log::{Checkpoint, HostSlice, Sink, Stage};
/// # fn step(sink: &mut Option<Sink>, hidden: &[f32]) -> Result<(), orch_log::LogError> {
/// if let Some(sink) = sink.as_mut().filter(|s| s.wants_layer(3)) {
///     // Only here, with logging on, would a GPU backend copy the residual to the host.
///     sink.record(&Checkpoint {
///         checkpoint: Stage::Layer(3),
///         request: Some("job-1"),
///         token_idx: 0,
///         pos: 26,
///         input_token: 198,
///         shape: &[1, hidden.len()],
///         data: HostSlice::from(hidden),
///         source: "worker-orcd-cpu",
///         top_k: None,
///     })?;
/// }
/// # Ok(()) }
/// ```
///
/// With `None` that is one branch per checkpoint: no copy, no allocation, no formatting.
///
/// Failure policy: logging must never stop serving. The first write error (disk full, file
/// removed from under a read-only mount, …) is returned once from `flush` (or from the `record`
/// that triggered an automatic flush); the sink then disables itself, drops its buffer, and every
/// later call is a no-op returning `Ok`. The sink never prints or logs anything itself.
#[derive(Debug)]
pub struct Sink {
    path: PathBuf,
    config: SinkConfig,
    /// `None` once a write failed: the sink is disabled for good.
    file: Option<File>,
    /// Complete JSONL lines not yet written.
    buf: String,
}

impl Sink {
    /// Opens (creates; truncates unless `config.append`) the log file. Opening eagerly makes a
    /// bad path an error at start-up rather than at the end of the first request.
    pub fn new(path: impl AsRef<Path>, config: SinkConfig) -> Result<Sink, LogError> {
        let path = path.as_ref().to_path_buf();
        let mut opts = OpenOptions::new();
        opts.create(true);
        if config.append {
            opts.append(true);
        } else {
            opts.write(true).truncate(true);
        }
        let file = opts.open(&path).map_err(|source| LogError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Sink {
            path,
            config,
            file: Some(file),
            buf: String::new(),
        })
    }

    /// `Ok(None)` when `ORCH_LOG_FILE` is unset or empty; otherwise a sink on that path with
    /// [`SinkConfig::from_env`].
    pub fn from_env() -> Result<Option<Sink>, LogError> {
        match std::env::var_os("ORCH_LOG_FILE").filter(|p| !p.is_empty()) {
            None => Ok(None),
            Some(path) => Sink::new(path, SinkConfig::from_env()?).map(Some),
        }
    }

    pub fn config(&self) -> &SinkConfig {
        &self.config
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// False once a write failed; `record` and `flush` are then no-ops.
    pub fn is_enabled(&self) -> bool {
        self.file.is_some()
    }

    /// Whether `layer.N` should be recorded. Check it before copying device data.
    pub fn wants_layer(&self, layer: u32) -> bool {
        self.is_enabled() && self.config.layers.contains(layer)
    }

    /// Whether prefill positions (before the prompt's last) should be recorded.
    pub fn wants_prefill(&self) -> bool {
        self.is_enabled() && self.config.prefill
    }

    /// Buffers one line: stats over all values, the first `config().values` values, and the
    /// top-k for `top_k: Some(k)`. Layers the config excludes are skipped silently. Returns an
    /// error for a shape that does not match the data, or when an automatic flush failed.
    pub fn record(&mut self, cp: &Checkpoint<'_>) -> Result<(), LogError> {
        if !self.is_enabled() {
            return Ok(());
        }
        if matches!(cp.checkpoint, Stage::Layer(n) if !self.config.layers.contains(n)) {
            return Ok(());
        }
        let elements = cp
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if elements != Some(cp.data.len()) {
            return Err(LogError::ShapeMismatch {
                checkpoint: cp.checkpoint.to_string(),
                shape: cp.shape.to_vec(),
                len: cp.data.len(),
            });
        }
        let line = self.line_for(cp);
        let json = serde_json::to_string(&line).map_err(LogError::Serialize)?;
        self.buf.push_str(&json);
        self.buf.push('\n');
        if self.buf.len() >= AUTO_FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffered lines. Call it at the end of every request and at shutdown (`Drop`
    /// also flushes, but can only swallow an error). See the failure policy on [`Sink`].
    pub fn flush(&mut self) -> Result<(), LogError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = file
            .write_all(self.buf.as_bytes())
            .and_then(|()| file.flush());
        self.buf.clear();
        result.map_err(|source| {
            self.file = None;
            self.buf = String::new();
            LogError::Write {
                path: self.path.clone(),
                source,
            }
        })
    }

    fn line_for(&self, cp: &Checkpoint<'_>) -> LogLine {
        let team = match cp.request {
            Some(req) if !req.is_empty() => format!("{}/{req}", self.config.team),
            _ => self.config.team.clone(),
        };
        let dims: Vec<String> = cp.shape.iter().map(usize::to_string).collect();
        LogLine {
            ts: utc_timestamp(),
            team,
            checkpoint: cp.checkpoint.to_string(),
            token_idx: cp.token_idx,
            pos: Some(cp.pos),
            input_token: Some(cp.input_token),
            dtype: cp.data.dtype().to_owned(),
            shape: format!("[{}]", dims.join(",")),
            values: first_values(&cp.data, self.config.values),
            stats: Some(compute_stats(&cp.data)),
            source: cp.source.to_owned(),
            top: cp.top_k.map(|k| top_k(&cp.data, k)),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // Nobody can receive an error here; callers who care flush explicitly before dropping.
        let _ = self.flush();
    }
}
