//! `worker-http synth-model OUT.gguf`: writes a GGUF with the default model's exact shapes and
//! tensor types and random valid weights (a full-size model on a GPU machine in seconds).

use anyhow::Context;
use clap::Args;
use std::io::BufWriter;
use std::path::PathBuf;
use worker_core::synth::{SynthSpec, write_synthetic};

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Where to write the GGUF file.
    out: PathBuf,
    /// Seed of the random weights (the same seed writes the same file).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let file = std::fs::File::create(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let bytes = write_synthetic(&SynthSpec::qwen2_0_5b(), args.seed, BufWriter::new(file))
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote {} ({bytes} bytes) in {:.1} s",
        args.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
