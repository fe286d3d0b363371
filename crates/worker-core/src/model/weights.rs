//! Weight views into the mapped GGUF file, checked against the model description.
//!
//! Matrices stay in their quantized form (zero-copy views); only the small norm and bias
//! vectors are converted to f32. Every tensor of the file must be claimed by exactly one
//! slot here: a missing, misshapen or unused tensor is a load error naming it.

use super::ModelError;
use super::config::ModelConfig;
use crate::gguf::{GgufFile, TensorInfo};
use crate::quant::{self, GgmlType};
use std::collections::BTreeSet;

/// A weight matrix of `rows` output neurons, each a row of `cols` inputs (GGUF ne0 = cols).
#[derive(Clone)]
pub struct QMatrix {
    file: GgufFile,
    pub name: String,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    offset: usize,
    row_bytes: usize,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QMatrix({} {} {}x{})",
            self.name, self.ty, self.rows, self.cols
        )
    }
}

impl QMatrix {
    fn new(file: &GgufFile, t: &TensorInfo) -> Self {
        let cols = t.ne0() as usize;
        let row_bytes = cols / t.ty.block_elements() * t.ty.block_bytes();
        QMatrix {
            file: file.clone(),
            name: t.name.clone(),
            ty: t.ty,
            rows: t.n_rows() as usize,
            cols,
            offset: t.offset as usize,
            row_bytes,
        }
    }

    /// All rows, in the file's block layout.
    pub fn data(&self) -> &[u8] {
        &self.file.bytes()[self.offset..self.offset + self.rows * self.row_bytes]
    }

    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// One row's blocks.
    pub fn row(&self, r: usize) -> &[u8] {
        let start = self.offset + r * self.row_bytes;
        &self.file.bytes()[start..start + self.row_bytes]
    }

    /// One row dequantized to f32.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        quant::dequantize_row(self.ty, self.row(r), out).expect("row length checked at load time");
    }
}

/// One transformer block's weights.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: QMatrix,
    pub wk: QMatrix,
    pub wv: QMatrix,
    /// Present when the architecture has Q/K/V biases (qwen2).
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub wo: QMatrix,
    pub ffn_norm: Vec<f32>,
    pub w_gate: QMatrix,
    pub w_up: QMatrix,
    pub w_down: QMatrix,
}

#[derive(Debug, Clone)]
pub struct ModelWeights {
    /// Gathered by row, never multiplied (unless it doubles as the output head).
    pub token_embd: QMatrix,
    pub layers: Vec<LayerWeights>,
    pub output_norm: Vec<f32>,
    /// The output head; the embedding table when the file has no `output.weight` (tied).
    pub output: QMatrix,
    pub tied_output: bool,
}

struct Claimer<'a> {
    file: &'a GgufFile,
    claimed: BTreeSet<String>,
}

impl Claimer<'_> {
    fn info(&mut self, name: &str, dims: &[usize]) -> Result<TensorInfo, ModelError> {
        let t = self
            .file
            .tensor(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_owned()))?;
        let want: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        if t.dims != want {
            return Err(ModelError::BadTensorShape {
                name: name.to_owned(),
                expected: want,
                found: t.dims.clone(),
            });
        }
        self.claimed.insert(name.to_owned());
        Ok(t.clone())
    }

    /// A [rows × cols] matrix of any supported type.
    fn matrix(&mut self, name: &str, cols: usize, rows: usize) -> Result<QMatrix, ModelError> {
        let t = self.info(name, &[cols, rows])?;
        Ok(QMatrix::new(self.file, &t))
    }

    /// A float vector (norm weights, biases), converted to f32 exactly as stored.
    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let t = self.info(name, &[len])?;
        if t.ty.is_quantized() {
            return Err(ModelError::BadTensorType {
                name: name.to_owned(),
                found: t.ty,
                expected: "a float type",
            });
        }
        let mut out = vec![0.0; len];
        quant::dequantize_row(t.ty, self.file.tensor_data(&t), &mut out)
            .expect("size checked by the reader");
        Ok(out)
    }
}

impl ModelWeights {
    pub fn from_gguf(file: &GgufFile, cfg: &ModelConfig) -> Result<Self, ModelError> {
        let mut c = Claimer {
            file,
            claimed: BTreeSet::new(),
        };
        let d = cfg.d_model;
        let token_embd = c.matrix("token_embd.weight", d, cfg.vocab_size)?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            let bias = |c: &mut Claimer, s: &str, len| -> Result<Option<Vec<f32>>, ModelError> {
                if cfg.arch.qkv_bias {
                    c.vector(&n(s), len).map(Some)
                } else {
                    Ok(None)
                }
            };
            layers.push(LayerWeights {
                attn_norm: c.vector(&n("attn_norm.weight"), d)?,
                wq: c.matrix(&n("attn_q.weight"), d, cfg.q_dim())?,
                wk: c.matrix(&n("attn_k.weight"), d, cfg.kv_dim())?,
                wv: c.matrix(&n("attn_v.weight"), d, cfg.kv_dim())?,
                bq: bias(&mut c, "attn_q.bias", cfg.q_dim())?,
                bk: bias(&mut c, "attn_k.bias", cfg.kv_dim())?,
                bv: bias(&mut c, "attn_v.bias", cfg.kv_dim())?,
                wo: c.matrix(&n("attn_output.weight"), cfg.q_dim(), d)?,
                ffn_norm: c.vector(&n("ffn_norm.weight"), d)?,
                w_gate: c.matrix(&n("ffn_gate.weight"), d, cfg.d_ff)?,
                w_up: c.matrix(&n("ffn_up.weight"), d, cfg.d_ff)?,
                w_down: c.matrix(&n("ffn_down.weight"), cfg.d_ff, d)?,
            });
        }
        let output_norm = c.vector("output_norm.weight", d)?;
        let (output, tied_output) = if file.tensor("output.weight").is_some() {
            (c.matrix("output.weight", d, cfg.vocab_size)?, false)
        } else {
            (token_embd.clone(), true)
        };
        let unused: Vec<String> = file
            .tensors()
            .iter()
            .map(|t| t.name.clone())
            .filter(|n| !c.claimed.contains(n))
            .collect();
        if !unused.is_empty() {
            return Err(ModelError::UnusedTensors {
                arch: cfg.arch.name,
                names: unused,
            });
        }
        Ok(ModelWeights {
            token_embd,
            layers,
            output_norm,
            output,
            tied_output,
        })
    }

    /// Every matrix of the model with its role, for reports and the GPU upload.
    pub fn matrices(&self) -> Vec<&QMatrix> {
        let mut v = vec![&self.token_embd];
        for l in &self.layers {
            v.extend([&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]);
        }
        if !self.tied_output {
            v.push(&self.output);
        }
        v
    }
}
