//! Project automation: `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! One module per task; each exposes an `Args` struct for clap and a `run(args) ->
//! anyhow::Result<ExitCode>`. Adding a task is three lines here: `mod`, a `Task` variant and a
//! `match` arm.

mod build_cuda;
use xtask::parity;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "worker-orcd project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Compare a checkpoint log (orch-log JSONL) against a reference log.
    Parity(parity::Args),
    /// Find or install the CUDA 13.0 toolchain and build the cuda-sys kernels (sm_90 + PTX).
    BuildCuda(build_cuda::Args),
}

fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().task {
        Task::Parity(args) => parity::run(args),
        Task::BuildCuda(args) => build_cuda::run(args),
    }
}
