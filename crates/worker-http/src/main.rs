//! worker-http: the worker binary. Loads one model, starts the engine thread and serves the
//! M0 contract and the OpenAI-compatible API over HTTP (see docs/API.md).

mod admin;
mod backend;
mod bench_cmd;
mod callback;
mod errors;
mod http;
mod jobs;
mod m0;
mod metrics;
mod openai;
mod server;
mod sse;
mod state;
mod synth_cmd;
mod tokenize;
mod util;
mod validate;

use anyhow::Context;
use backend::Device;
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use worker_core::engine::{EngineConfig, EngineHandle};
use worker_core::model::Model;
use worker_core::tokenizer::{ChatTemplate, Tokenizer};

#[derive(Debug, Parser)]
#[command(
    name = "worker-http",
    version,
    about = "worker-orcd: an LLM inference worker (M0 contract + OpenAI-compatible API)"
)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "WORKER_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

/// Without a subcommand the worker serves.
#[derive(Debug, Subcommand)]
enum Command {
    /// Time prompt processing and decode without HTTP (llama-bench's shape).
    Bench(bench_cmd::BenchArgs),
    /// Write a synthetic GGUF with the default model's shapes and types (random weights).
    SynthModel(synth_cmd::SynthArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// A GGUF file, or a known model name fetched into the cache on first use.
    #[arg(long, env = "WORKER_MODEL", default_value = worker_core::fetch::DEFAULT_MODEL)]
    model: String,
    /// The model name clients see (default: the known model's name, else the file name without .gguf).
    #[arg(long)]
    served_model_name: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (the `ready` log line names it).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// cpu or cuda:N (default: the GPU when built with CUDA and one is present, else cpu).
    #[arg(long)]
    device: Option<Device>,
    /// Context window per request (prompt + generated), capped at the model's context length.
    #[arg(long, default_value_t = 4096)]
    ctx_size: usize,
    /// Requests generated together.
    #[arg(long, default_value_t = 4)]
    max_batch: usize,
    /// Requests allowed to wait for a batch slot; beyond that, 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Prompt tokens processed per engine step (default: 512 on a GPU; 64 on the CPU, where a
    /// step checks cancellation between layers and 64 tokens keep that within ~100 ms).
    #[arg(long)]
    prefill_chunk: Option<usize>,
    /// Require `Authorization: Bearer <key>` on every endpoint but /health.
    #[arg(long, env = "WORKER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// This worker's id, sent in the ready callback.
    #[arg(long)]
    worker_id: Option<String>,
    /// POST the ready message here once serving (http:// only).
    #[arg(long)]
    callback_url: Option<String>,
    /// Largest accepted request body; larger ones get 413.
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Open connections at once; more are answered 503 and closed.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// Seconds a client has to send request headers (also closes idle keep-alive connections).
    #[arg(long, default_value_t = 15)]
    header_timeout_secs: u64,
    /// Seconds a client has to send a request body.
    #[arg(long, default_value_t = 30)]
    body_timeout_secs: u64,
    /// On shutdown, seconds running jobs may take to finish before they are cancelled.
    #[arg(long, default_value_t = 30)]
    drain_timeout_secs: u64,
    /// Write orch-log checkpoints (embedding, layer.N, final_norm, logits) of every request to
    /// this JSONL file; ORCH_LOG_FILE does the same. ORCH_LOG_* variables tune it (docs/ORCH-LOG.md).
    #[arg(long, env = "ORCH_LOG_FILE")]
    orch_log: Option<std::path::PathBuf>,
}

fn init_logging(json: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

fn main() -> ExitCode {
    let process_start = std::time::Instant::now();
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let result = match cli.command {
        None => serve(cli.serve),
        Some(Command::Bench(args)) => bench_cmd::run(args, process_start),
        Some(Command::SynthModel(args)) => synth_cmd::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The name clients see for the model.
fn served_name(args: &ServeArgs, path: &Path) -> String {
    if let Some(n) = &args.served_model_name {
        return n.clone();
    }
    if worker_core::fetch::known_model(&args.model).is_some() {
        return args.model.clone();
    }
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| args.model.clone())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let path = worker_core::fetch::resolve_model(&args.model).context("finding the model")?;
    let model = Model::load(&path)
        .with_context(|| format!("MODEL_LOAD_FAILED: loading {}", path.display()))?;
    let c = &model.config;
    tracing::info!(
        path = %path.display(),
        arch = c.arch.name,
        name = c.name.as_deref().unwrap_or("?"),
        layers = c.n_layers,
        d_model = c.d_model,
        heads = c.n_heads,
        kv_heads = c.n_kv_heads,
        head_dim = c.head_dim,
        context_length = c.context_length,
        vocab = c.vocab_size,
        weight_bytes = model.weight_bytes(),
        tensors = %model.type_summary(),
        "model loaded"
    );
    let tokenizer = Arc::new(
        Tokenizer::from_gguf(&model.file).context("MODEL_LOAD_FAILED: building the tokenizer")?,
    );
    let chat = ChatTemplate::from_gguf(&model.file)
        .context("MODEL_LOAD_FAILED: reading the chat template")?;
    if chat.is_fallback() {
        tracing::warn!("the model has no chat template; using plain ChatML");
    }
    anyhow::ensure!(args.ctx_size >= 2, "--ctx-size must be at least 2");
    anyhow::ensure!(args.max_batch >= 1, "--max-batch must be at least 1");
    anyhow::ensure!(
        args.prefill_chunk != Some(0),
        "--prefill-chunk must be at least 1"
    );
    let ctx_size = args.ctx_size.min(c.context_length.max(2));
    if ctx_size < args.ctx_size {
        tracing::warn!(
            "--ctx-size {} is above the model's context length; using {ctx_size}",
            args.ctx_size
        );
    }
    let max_active_jobs = args.max_batch + args.max_queue;
    let mut cfg = EngineConfig {
        max_batch: args.max_batch,
        prefill_chunk: args.prefill_chunk.unwrap_or(512),
        ctx_size,
        // Admission is the HTTP side's (`jobs::submit` counts accepted jobs). The engine's own
        // bound counts submissions it has not picked up yet, which pile up while it is inside
        // a step, so at the same value it would refuse jobs the worker has room for; it stays
        // as a backstop only.
        max_queue: 2 * max_active_jobs,
    };
    let model = Arc::new(model);
    let backend = backend::make_backend(args.device, &model, &cfg)?;
    let binfo = backend.info();
    if args.prefill_chunk.is_none() && !binfo.resident_on_device {
        cfg.prefill_chunk = 64;
    }
    tracing::info!(device = %binfo.device, memory_bytes = binfo.bytes_used, resident_on_device = binfo.resident_on_device, "backend ready");
    let info = state::ModelInfo::new(
        served_name(&args, &path),
        &model,
        &tokenizer,
        ctx_size,
        binfo,
    );
    // Logging must never stop serving: a log that cannot be opened is a warning.
    let sink = args.orch_log.as_ref().and_then(|path| {
        let opened = orch_log::SinkConfig::from_env().and_then(|c| orch_log::Sink::new(path, c));
        match opened {
            Ok(sink) => {
                tracing::info!(path = %path.display(), "checkpoint logging on");
                Some(sink)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "checkpoint logging disabled: {e}");
                None
            }
        }
    });
    let engine = EngineHandle::spawn_with_log(backend, tokenizer, cfg.clone(), sink);
    let limits = state::Limits {
        max_body_bytes: args.max_body_bytes,
        body_timeout: Duration::from_secs(args.body_timeout_secs),
        max_active_jobs,
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
    };
    let state = Arc::new(state::AppState::new(engine.clone(), chat, info, limits));
    let server_cfg = server::ServerConfig {
        max_connections: args.max_connections.max(1),
        header_timeout: Duration::from_secs(args.header_timeout_secs.max(1)),
        drain_timeout: Duration::from_secs(args.drain_timeout_secs),
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(state.clone(), &args, server_cfg))?;
    // Running jobs were finished or cancelled by the drain; stop the engine thread.
    engine.shutdown(true);
    tracing::info!("stopped");
    Ok(())
}

async fn run(
    state: Arc<state::AppState>,
    args: &ServeArgs,
    cfg: server::ServerConfig,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.host, args.port))?;
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(addr = %addr, model = %state.info.served_name, ctx_size = state.info.ctx_size, "ready");
    if let Some(url) = args.callback_url.clone() {
        let msg = json!({
            "event": "ready",
            "worker_id": args.worker_id,
            "url": format!("http://{addr}"),
            "model": state.info.served_name,
            "device": state.info.backend.device,
            "vram_bytes": state.info.vram_bytes(),
            "memory_bytes": state.info.backend.bytes_used,
            "context_length": state.info.ctx_size,
            "quant_kind": state.info.quant_kind,
        });
        tokio::task::spawn_local(async move {
            match callback::post_ready(&url, &msg).await {
                Ok(()) => tracing::info!("ready callback delivered"),
                Err(e) => tracing::warn!("ready callback to {url} failed: {e:#}"),
            }
        });
    }
    let signals = state.clone();
    tokio::task::spawn_local(async move {
        wait_for_signal().await;
        tracing::info!("signal received: draining (a second signal cancels running jobs)");
        signals.begin_shutdown();
        wait_for_signal().await;
        let n = signals.jobs.cancel_all(&signals);
        tracing::warn!("second signal: cancelled {n} job(s)");
    });
    server::serve(state, listener, cfg).await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
