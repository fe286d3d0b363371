//! The model: its description (config + architecture facts) and its weights.

pub mod arch;
mod config;
mod weights;

pub use arch::{ArchSpec, RopeStyle};
pub use config::ModelConfig;
pub use weights::{LayerWeights, ModelWeights, QMatrix};

use crate::gguf::{GgufError, GgufFile};
use crate::quant::GgmlType;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported architecture {found:?}; supported: {supported}")]
    UnsupportedArchitecture { found: String, supported: String },
    #[error("invalid model description: {0}")]
    BadConfig(String),
    #[error("tensor {0:?} is missing")]
    MissingTensor(String),
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?}")]
    BadTensorShape {
        name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("tensor {name:?} has type {found}, expected {expected}")]
    BadTensorType {
        name: String,
        found: GgmlType,
        expected: &'static str,
    },
    #[error("tensors not used by the {arch} architecture: {names:?}")]
    UnusedTensors {
        arch: &'static str,
        names: Vec<String>,
    },
}

/// A loaded model: the mapped file, its description and its weight views.
#[derive(Debug, Clone)]
pub struct Model {
    pub file: GgufFile,
    pub config: ModelConfig,
    pub weights: ModelWeights,
}

impl Model {
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        Self::from_gguf(GgufFile::open(path)?)
    }

    pub fn from_gguf(file: GgufFile) -> Result<Self, ModelError> {
        let config = ModelConfig::from_gguf(&file)?;
        let weights = ModelWeights::from_gguf(&file, &config)?;
        Ok(Model {
            file,
            config,
            weights,
        })
    }

    /// Tensor counts by type, e.g. "121 F32, 133 Q5_0, ...", for the start-up log.
    pub fn type_summary(&self) -> String {
        let mut counts: Vec<(GgmlType, usize)> = Vec::new();
        for t in self.file.tensors() {
            match counts.iter_mut().find(|(ty, _)| *ty == t.ty) {
                Some((_, n)) => *n += 1,
                None => counts.push((t.ty, 1)),
            }
        }
        counts
            .iter()
            .map(|(t, n)| format!("{n} {t}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Bytes of all tensors.
    pub fn weight_bytes(&self) -> u64 {
        self.file.tensors().iter().map(|t| t.size_bytes).sum()
    }
}
