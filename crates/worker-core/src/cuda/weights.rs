//! The model's weights in VRAM: matrices in their quantized GGUF block layout (one device
//! buffer per tensor, so every one starts 256-byte aligned), norms and biases as f32.

use crate::model::{Model, QMatrix};
use crate::quant::GgmlType;
use cuda_sys::wk_dtype;
use cudarc::driver::{CudaSlice, CudaStream, DriverError};
use std::sync::Arc;

/// A weight matrix on the device: `rows` output neurons of `cols` inputs, GGUF block layout.
pub struct DeviceMatrix {
    pub name: String,
    pub ty: wk_dtype,
    pub rows: usize,
    pub cols: usize,
    pub(crate) buf: CudaSlice<u8>,
}

impl DeviceMatrix {
    pub fn is_quantized(&self) -> bool {
        super::kernels::is_quantized(self.ty)
    }

    /// Uploads `bytes` (`rows` rows of `cols` elements of `ty`) as one buffer.
    pub fn upload(
        s: &Arc<CudaStream>,
        name: &str,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<Self, String> {
        let dt =
            dtype(ty).ok_or_else(|| format!("tensor {name}: type {ty} has no CUDA kernels"))?;
        let rb = cuda_sys::row_bytes(dt, cols).ok_or_else(|| {
            format!("tensor {name}: type {ty} has no CUDA kernels for rows of {cols}")
        })?;
        if bytes.len() != rows * rb {
            return Err(format!(
                "tensor {name}: {} bytes, expected {rows} rows of {rb}",
                bytes.len()
            ));
        }
        let buf = s
            .clone_htod(bytes)
            .map_err(|e| format!("uploading {name}: {e}"))?;
        Ok(DeviceMatrix {
            name: name.to_owned(),
            ty: dt,
            rows,
            cols,
            buf,
        })
    }

    fn from_q(s: &Arc<CudaStream>, m: &QMatrix) -> Result<Self, String> {
        Self::upload(s, &m.name, m.ty, m.rows, m.cols, m.data())
    }
}

/// The cuda-sys type of a GGML type, if the kernels support it.
pub fn dtype(ty: GgmlType) -> Option<wk_dtype> {
    let dt = wk_dtype(ty.code());
    cuda_sys::row_bytes(dt, ty.block_elements()).map(|_| dt)
}

/// Whether the CUDA kernels support `ty` (Q2_K and Q3_K have none).
pub fn supported(ty: GgmlType) -> bool {
    dtype(ty).is_some()
}

pub struct DeviceLayer {
    pub attn_norm: CudaSlice<f32>,
    pub wq: DeviceMatrix,
    pub wk: DeviceMatrix,
    pub wv: DeviceMatrix,
    pub bq: Option<CudaSlice<f32>>,
    pub bk: Option<CudaSlice<f32>>,
    pub bv: Option<CudaSlice<f32>>,
    pub wo: DeviceMatrix,
    pub ffn_norm: CudaSlice<f32>,
    pub w_gate: DeviceMatrix,
    pub w_up: DeviceMatrix,
    pub w_down: DeviceMatrix,
}

pub struct DeviceWeights {
    pub token_embd: DeviceMatrix,
    pub layers: Vec<DeviceLayer>,
    pub output_norm: CudaSlice<f32>,
    /// None when the output head is tied to the embedding table.
    output: Option<DeviceMatrix>,
}

impl DeviceWeights {
    /// Bytes [`upload`](Self::upload) will allocate for `model`, and the first tensor the kernels
    /// cannot run (checked before anything is allocated).
    pub fn plan(model: &Model) -> Result<u64, String> {
        let w = &model.weights;
        let mut bytes = 0u64;
        for m in w.matrices() {
            if !supported(m.ty) {
                return Err(format!(
                    "tensor {} has type {}, which the CUDA kernels do not support",
                    m.name, m.ty
                ));
            }
            bytes += m.data().len() as u64;
        }
        let mut floats = w.output_norm.len();
        for l in &w.layers {
            floats += l.attn_norm.len() + l.ffn_norm.len();
            for b in [&l.bq, &l.bk, &l.bv].into_iter().flatten() {
                floats += b.len();
            }
        }
        Ok(bytes + 4 * floats as u64)
    }

    pub fn upload(s: &Arc<CudaStream>, model: &Model) -> Result<Self, String> {
        let w = &model.weights;
        let vec = |v: &Vec<f32>| -> Result<CudaSlice<f32>, String> {
            s.clone_htod(v).map_err(|e: DriverError| e.to_string())
        };
        let opt = |v: &Option<Vec<f32>>| v.as_ref().map(vec).transpose();
        let mut layers = Vec::with_capacity(w.layers.len());
        for l in &w.layers {
            layers.push(DeviceLayer {
                attn_norm: vec(&l.attn_norm)?,
                wq: DeviceMatrix::from_q(s, &l.wq)?,
                wk: DeviceMatrix::from_q(s, &l.wk)?,
                wv: DeviceMatrix::from_q(s, &l.wv)?,
                bq: opt(&l.bq)?,
                bk: opt(&l.bk)?,
                bv: opt(&l.bv)?,
                wo: DeviceMatrix::from_q(s, &l.wo)?,
                ffn_norm: vec(&l.ffn_norm)?,
                w_gate: DeviceMatrix::from_q(s, &l.w_gate)?,
                w_up: DeviceMatrix::from_q(s, &l.w_up)?,
                w_down: DeviceMatrix::from_q(s, &l.w_down)?,
            });
        }
        Ok(DeviceWeights {
            token_embd: DeviceMatrix::from_q(s, &w.token_embd)?,
            layers,
            output_norm: vec(&w.output_norm)?,
            output: if w.tied_output {
                None
            } else {
                Some(DeviceMatrix::from_q(s, &w.output)?)
            },
        })
    }

    /// The output head (the embedding table when tied).
    pub fn output(&self) -> &DeviceMatrix {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }
}
