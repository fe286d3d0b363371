//! worker-core: the model and inference engine of worker-orcd.
//!
//! See `docs/ARCHITECTURE.md` for the code map.

pub mod gguf;
pub mod quant;
pub mod tokenizer;
pub mod fetch;
pub mod cpu;
pub mod engine;
pub mod model;
pub mod sampling;
pub mod trace;
#[cfg(feature = "cuda")] pub mod cuda;
pub mod bench;
pub mod synth;
