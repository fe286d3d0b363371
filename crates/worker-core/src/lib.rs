//! worker-core: the model and inference engine of worker-orcd.
//!
//! See `docs/ARCHITECTURE.md` for the code map.

pub mod bench;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod engine;
pub mod fetch;
pub mod gguf;
pub mod model;
pub mod quant;
pub mod sampling;
pub mod synth;
pub mod tokenizer;
pub mod trace;
