//! orch-log: a JSONL checkpoint sink that accepts host memory only.
//!
//! The engine records checkpoints (`embedding`, `layer.N`, `final_norm`, `logits`) with
//! [`Sink::record`]; each becomes one JSON line in the format of the golden references
//! (`../shared/golden/parity_hf.jsonl`), which `cargo xtask parity` compares. Data enters only as a
//! [`HostSlice`], so a device buffer cannot be logged without an explicit copy to the host.
//! See `docs/ORCH-LOG.md` for the format, the environment variables and the parity tool.

mod config;
mod host;
mod line;
mod sink;
mod stats;

use std::path::PathBuf;

pub use config::{DEFAULT_TEAM, DEFAULT_TOP_K, DEFAULT_VALUES, LayerFilter, SinkConfig};
pub use host::HostSlice;
pub use line::{LogLine, Stage, Stats, UnknownStage};
pub use sink::{Checkpoint, Sink};
pub use stats::utc_timestamp;

/// Everything that can go wrong in the sink.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open checkpoint log {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing checkpoint log {path} failed, checkpoint logging is now off: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{var}={value:?}: {reason}")]
    BadEnv {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("checkpoint {checkpoint}: shape {shape:?} does not hold {len} values")]
    ShapeMismatch {
        checkpoint: String,
        shape: Vec<usize>,
        len: usize,
    },
    #[error("serializing a checkpoint line: {0}")]
    Serialize(serde_json::Error),
}
