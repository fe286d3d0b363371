//! The JSONL line format, shared by the writer (`Sink`) and readers (`cargo xtask parity`).
//!
//! Field order and spelling match `../shared/golden/parity_hf.jsonl`. Readers must accept the
//! reference files too, so everything the references sometimes omit (`pos`, `input_token`, some
//! `stats` fields, `top`) is optional when parsing.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One checkpoint record: one JSON object per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// UTC time the line was recorded, `YYYY-MM-DDTHH:MM:SSZ`.
    pub ts: String,
    /// `ORCH_LOG_TEAM`, or `<team>/<request>` when the engine names the request.
    pub team: String,
    /// `embedding`, `layer.N`, `final_norm` or `logits` (see [`Stage`]).
    pub checkpoint: String,
    /// Generated-token counter of the request; the prompt's last position is 0.
    pub token_idx: u32,
    /// Absolute position in the sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos: Option<u32>,
    /// The token fed in at `pos`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_token: Option<u32>,
    /// `f32`, `f16`, `bf16` or `i32`: the type of the logged host data.
    pub dtype: String,
    /// The shape as a string, e.g. `"[1,896]"`.
    pub shape: String,
    /// The first N values; NaN and ±infinity are written as `null`.
    pub values: Vec<Option<f64>>,
    /// Statistics over all values, not only the first N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
    /// Who produced the data (backend name, or the reference implementation).
    pub source: String,
    /// For logits: the top-k `[id, value]` pairs, highest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<Vec<(u32, f64)>>,
}

/// Statistics over every value of a checkpoint.
///
/// NaN and ±infinity are excluded from `min`, `max`, `mean`, `l2` and `argmax` and counted in
/// `nan` and `inf` instead. When no value is finite, `min`, `max`, `mean` and `argmax` are `null`
/// and `l2` is 0. The references omit some fields (llama.cpp's lines have only `l2`, `mean`,
/// `argmax`, `max`), hence every field is optional when reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Stats {
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub mean: Option<f64>,
    #[serde(default)]
    pub l2: Option<f64>,
    /// Index of the first largest finite value.
    #[serde(default)]
    pub argmax: Option<u64>,
    #[serde(default)]
    pub nan: Option<u64>,
    #[serde(default)]
    pub inf: Option<u64>,
}

impl LogLine {
    /// The request name: what follows the first `/` of `team` (`reference/haiku` → `haiku`).
    pub fn request_name(&self) -> Option<&str> {
        self.team
            .split_once('/')
            .map(|(_, name)| name)
            .filter(|n| !n.is_empty())
    }

    /// The checkpoint parsed as a [`Stage`], if it is one of the known names.
    pub fn stage(&self) -> Option<Stage> {
        self.checkpoint.parse().ok()
    }
}

/// A checkpoint in forward order. The derived `Ord` is that order:
/// `Embedding < Layer(0) < Layer(1) < … < FinalNorm < Logits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// The embedding row of the input token.
    Embedding,
    /// The residual stream after layer N.
    Layer(u32),
    /// The output of the final RMS norm.
    FinalNorm,
    /// The output logits.
    Logits,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Embedding => f.write_str("embedding"),
            Stage::Layer(n) => write!(f, "layer.{n}"),
            Stage::FinalNorm => f.write_str("final_norm"),
            Stage::Logits => f.write_str("logits"),
        }
    }
}

/// The string was not a known checkpoint name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown checkpoint name {0:?} (expected embedding, layer.N, final_norm or logits)")]
pub struct UnknownStage(pub String);

impl FromStr for Stage {
    type Err = UnknownStage;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "embedding" => Ok(Stage::Embedding),
            "final_norm" => Ok(Stage::FinalNorm),
            "logits" => Ok(Stage::Logits),
            _ => s
                .strip_prefix("layer.")
                .and_then(|n| n.parse().ok())
                .map(Stage::Layer)
                .ok_or_else(|| UnknownStage(s.to_owned())),
        }
    }
}
