//! Device selection: the one place that decides which backend serves the model.

use std::sync::Arc;
use worker_core::engine::{Backend, EngineConfig};
use worker_core::model::Model;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device {s:?}; expected cpu or cuda:N")),
        }
    }
}

/// KV positions the pool holds: a full context for every batch slot.
fn kv_tokens(cfg: &EngineConfig) -> usize {
    cfg.ctx_size * cfg.max_batch
}

/// Builds the backend for `device`. `None` means: the GPU when built with CUDA and one is
/// there, else the CPU, said loudly. An explicit `cuda:N` never falls back to the CPU.
pub fn make_backend(
    device: Option<Device>,
    model: &Arc<Model>,
    cfg: &EngineConfig,
) -> anyhow::Result<Box<dyn Backend>> {
    match device {
        Some(Device::Cpu) => Ok(Box::new(worker_core::cpu::CpuBackend::new(
            model.clone(),
            kv_tokens(cfg),
        ))),
        Some(Device::Cuda(ordinal)) => cuda_backend(model, cfg, ordinal),
        None => {
            #[cfg(feature = "cuda")]
            match worker_core::cuda::CudaBackend::new(model.clone(), kv_tokens(cfg), 0) {
                Ok(b) => return Ok(Box::new(b)),
                // Only "no GPU here" falls back; a GPU that is present but too small or
                // failing is an error the operator must see (no silent host fallback).
                Err(e @ worker_core::cuda::CudaInitError::NoDevice { .. }) => {
                    tracing::warn!("{e}; FALLING BACK TO THE CPU BACKEND (slow)")
                }
                Err(e) => return Err(cuda_error(e, 0)),
            }
            #[cfg(not(feature = "cuda"))]
            tracing::warn!("built without CUDA support: RUNNING ON THE CPU BACKEND (slow)");
            make_backend(Some(Device::Cpu), model, cfg)
        }
    }
}

/// Names the contract's code for a start-up failure that is about memory.
#[cfg(feature = "cuda")]
fn cuda_error(e: worker_core::cuda::CudaInitError, ordinal: usize) -> anyhow::Error {
    match e {
        worker_core::cuda::CudaInitError::InsufficientVram { .. } => {
            anyhow::anyhow!("INSUFFICIENT_VRAM: {e}")
        }
        other => anyhow::Error::new(other)
            .context(format!("starting the CUDA backend on cuda:{ordinal}")),
    }
}

#[cfg(feature = "cuda")]
fn cuda_backend(
    model: &Arc<Model>,
    cfg: &EngineConfig,
    ordinal: usize,
) -> anyhow::Result<Box<dyn Backend>> {
    let b = worker_core::cuda::CudaBackend::new(model.clone(), kv_tokens(cfg), ordinal)
        .map_err(|e| cuda_error(e, ordinal))?;
    Ok(Box::new(b))
}

#[cfg(not(feature = "cuda"))]
fn cuda_backend(
    _model: &Arc<Model>,
    _cfg: &EngineConfig,
    ordinal: usize,
) -> anyhow::Result<Box<dyn Backend>> {
    anyhow::bail!(
        "--device cuda:{ordinal}: this worker-http was built without CUDA support (rebuild with `--features cuda`)"
    )
}
