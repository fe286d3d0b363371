//! The model description, read from GGUF metadata (never hard-coded).

use super::ModelError;
use super::arch::{self, ArchSpec};
use crate::gguf::GgufFile;

/// Dimensions and constants of a decoder-only transformer.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: ArchSpec,
    /// `general.name`, if the file has one.
    pub name: Option<String>,
    pub n_layers: usize,
    /// Residual stream width (embedding_length).
    pub d_model: usize,
    /// MLP hidden width (feed_forward_length).
    pub d_ff: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    /// Context length the model was trained for.
    pub context_length: usize,
    /// Rows of the embedding table (the tokenizer's vocabulary may be smaller).
    pub vocab_size: usize,
}

impl ModelConfig {
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ModelError> {
        let arch_name = file.get_str("general.architecture")?;
        let arch = *arch::lookup(arch_name).ok_or_else(|| ModelError::UnsupportedArchitecture {
            found: arch_name.to_owned(),
            supported: arch::supported_names(),
        })?;
        let key = |k: &str| format!("{}.{k}", arch.name);
        let n_heads = file.get_usize(&key("attention.head_count"))?;
        let d_model = file.get_usize(&key("embedding_length"))?;
        let n_kv_heads = file
            .opt(&key("attention.head_count_kv"), GgufFile::get_usize)?
            .unwrap_or(n_heads);
        let head_dim = match file.opt(&key("attention.key_length"), GgufFile::get_usize)? {
            Some(h) => h,
            None if n_heads > 0 => d_model / n_heads,
            None => 0,
        };
        let vocab_size = file
            .tensor("token_embd.weight")
            .map(|t| t.n_rows() as usize)
            .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?;
        let cfg = ModelConfig {
            arch,
            name: file.opt("general.name", |f, k| f.get_str(k).map(str::to_owned))?,
            n_layers: file.get_usize(&key("block_count"))?,
            d_model,
            d_ff: file.get_usize(&key("feed_forward_length"))?,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_base: file
                .opt(&key("rope.freq_base"), GgufFile::get_f32)?
                .unwrap_or(arch.default_rope_base),
            rms_eps: file.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            context_length: file.get_usize(&key("context_length"))?,
            vocab_size,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ModelError> {
        let bad = |why: String| Err(ModelError::BadConfig(why));
        if self.n_layers == 0
            || self.d_model == 0
            || self.d_ff == 0
            || self.n_heads == 0
            || self.n_kv_heads == 0
        {
            return bad(format!("zero dimension in {self:?}"));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "{} query heads do not divide into {} KV heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) || self.head_dim > 256 {
            return bad(format!(
                "head_dim {} must be even and at most 256",
                self.head_dim
            ));
        }
        if !(self.rope_base.is_finite() && self.rope_base > 0.0) {
            return bad(format!(
                "rope base {} is not a positive number",
                self.rope_base
            ));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            return bad(format!(
                "rms epsilon {} is not a positive number",
                self.rms_eps
            ));
        }
        Ok(())
    }

    /// Query heads per KV head (7 for the default model).
    pub fn gqa_group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    /// KV cache values stored per token across all layers (K and V).
    pub fn kv_values_per_token(&self) -> usize {
        2 * self.n_layers * self.kv_dim()
    }
}
