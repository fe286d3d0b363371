//! `worker-http bench`: the engine's speed without HTTP, in llama-bench's shape (see
//! `worker_core::bench`), plus the time from process start to a ready backend. Prints a markdown
//! table and writes the same as JSON.

use crate::backend::{Device, make_backend};
use anyhow::Context;
use clap::Args;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use worker_core::bench::{self, BenchConfig};
use worker_core::engine::EngineConfig;
use worker_core::gguf::GgufFile;
use worker_core::model::Model;
use worker_core::synth::{SynthSpec, write_synthetic};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A GGUF file or a known model name (ignored with --synthetic).
    #[arg(long, default_value = worker_core::fetch::DEFAULT_MODEL)]
    model: String,
    /// Use a synthetic model with the default model's exact shapes and types (random weights).
    #[arg(long)]
    synthetic: bool,
    /// cpu or cuda:N (default: the GPU when built with CUDA and one is present, else cpu).
    #[arg(long)]
    device: Option<Device>,
    /// Prompt lengths to time (pp), comma separated; 0 for none.
    #[arg(short = 'p', long, value_delimiter = ',', default_value = "512")]
    prompt: Vec<usize>,
    /// Tokens to generate per tg test; 0 for none.
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    n_gen: usize,
    /// Context depths before the tg tests, comma separated.
    #[arg(short = 'd', long, value_delimiter = ',', default_value = "0")]
    depth: Vec<usize>,
    /// Repetitions of each test.
    #[arg(short = 'r', long, default_value_t = 3)]
    reps: usize,
    /// Prompt tokens per forward call.
    #[arg(long, default_value_t = 512)]
    prefill_chunk: usize,
    /// Also write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: BenchArgs, process_start: Instant) -> anyhow::Result<()> {
    let (model, label) = if args.synthetic {
        let mut bytes = Vec::new();
        write_synthetic(&SynthSpec::qwen2_0_5b(), 1, &mut bytes)
            .context("writing the synthetic model")?;
        let m = Model::from_gguf(GgufFile::from_bytes(bytes)?)
            .context("loading the synthetic model")?;
        (m, "qwen2 0.5B synthetic".to_string())
    } else {
        let path = worker_core::fetch::resolve_model(&args.model).context("finding the model")?;
        let m = Model::load(&path).with_context(|| format!("loading {}", path.display()))?;
        let label = m.config.name.clone().unwrap_or_else(|| args.model.clone());
        (m, label)
    };
    let model = Arc::new(model);
    let cfg = BenchConfig {
        prompt_sizes: args.prompt.iter().copied().filter(|&p| p > 0).collect(),
        gen_tokens: args.n_gen,
        depths: if args.n_gen == 0 {
            Vec::new()
        } else {
            args.depth.clone()
        },
        repetitions: args.reps.max(1),
        prefill_chunk: args.prefill_chunk,
    };
    let engine_cfg = EngineConfig {
        max_batch: 1,
        ctx_size: cfg.kv_tokens_needed(),
        ..Default::default()
    };
    let mut backend = make_backend(args.device, &model, &engine_cfg)?;
    let ready_ms = process_start.elapsed().as_secs_f64() * 1e3;
    let device = backend.info().device;
    eprintln!("{label} on {device}: ready {ready_ms:.0} ms after process start; running {cfg:?}");

    let results =
        bench::run(backend.as_mut(), model.config.vocab_size, &cfg).context("benchmark")?;
    println!("{}", bench::format_table(&label, &device, &results));
    println!("process start to ready: {ready_ms:.0} ms");
    if let Some(path) = &args.json {
        let doc = json!({
            "model": label,
            "device": device,
            "startup_ms": ready_ms,
            "date": orch_log::utc_timestamp(),
            "results": results,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
