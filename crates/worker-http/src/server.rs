//! The HTTP server: accept loop with a connection cap, per-connection hyper tasks with a
//! header read timeout, routing and authentication, and the graceful drain on shutdown.
//!
//! Everything runs on one `current_thread` runtime (M0-W-1301) inside a `LocalSet`; inference
//! runs on the engine's own thread, so no handler ever blocks on a forward pass.

use crate::errors::{ApiError, Flavor};
use crate::http::{Resp, read_body};
use crate::state::AppState;
use crate::{admin, m0, openai, tokenize};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub max_connections: usize,
    /// A client must finish sending request headers within this time (slow-loris guard; also
    /// closes idle keep-alive connections).
    pub header_timeout: Duration,
    /// After a shutdown signal, how long running jobs may take to finish before they are cancelled.
    pub drain_timeout: Duration,
}

/// Serves until a shutdown is requested, then drains: stops accepting, lets running jobs
/// finish for up to `drain_timeout`, cancels the rest (their streams end with CANCELLED) and
/// waits for open responses to complete.
pub async fn serve(state: Arc<AppState>, listener: TcpListener, cfg: ServerConfig) {
    let mut shutdown = state.shutdown_signal();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    if state.metrics.open_connections.load(Ordering::Relaxed) as usize >= cfg.max_connections {
                        state.metrics.refused_connections.fetch_add(1, Ordering::Relaxed);
                        tokio::task::spawn_local(refuse(stream));
                        continue;
                    }
                    conns.spawn_local(connection(state.clone(), stream, cfg.header_timeout));
                }
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.wait_for(|&s| s) => break,
        }
    }
    drop(listener);
    tracing::info!(
        active_jobs = state.jobs.len(),
        "shutting down: no new connections; draining running jobs"
    );
    let drained = tokio::time::timeout(cfg.drain_timeout, async {
        while state.metrics.active_jobs.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if drained.is_err() {
        let n = state.jobs.cancel_all(&state);
        tracing::warn!("drain timeout reached: cancelled {n} job(s)");
    }
    // Open responses finish (cancelled streams end at once); idle connections close.
    let closing = tokio::time::timeout(Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if closing.is_err() {
        tracing::warn!(
            "closing {} connection(s) that did not finish in time",
            conns.len()
        );
        conns.shutdown().await;
    }
}

/// Answers a connection over the cap with 503 and closes it.
async fn refuse(mut stream: TcpStream) {
    let msg = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(msg)).await;
}

/// Counts an open connection while alive.
struct ConnGuard(Arc<AppState>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0
            .metrics
            .open_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(state: Arc<AppState>, stream: TcpStream, header_timeout: Duration) {
    state
        .metrics
        .open_connections
        .fetch_add(1, Ordering::Relaxed);
    let _count = ConnGuard(state.clone());
    let _ = stream.set_nodelay(true);
    let mut shutdown = state.shutdown_signal();
    let svc_state = state.clone();
    let svc = service_fn(move |req| {
        let st = svc_state.clone();
        async move { Ok::<_, Infallible>(route(st, req).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.wait_for(|&s| s) => {
            // Finish the response in flight (a stream runs to its terminal event), then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!("connection ended: {e}");
    }
}

/// Fixed labels for metrics (never the raw path, so label cardinality stays bounded).
fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/health" => "health",
        "/execute" => "execute",
        "/cancel" => "cancel",
        "/metrics" => "metrics",
        "/shutdown" => "shutdown",
        "/tokenize" => "tokenize",
        "/detokenize" => "detokenize",
        "/apply-template" => "apply_template",
        "/v1/models" => "models",
        "/v1/completions" => "completions",
        "/v1/chat/completions" => "chat_completions",
        _ => "other",
    }
}

/// Generation endpoints, whose refusals count as request outcomes too.
fn is_generation(endpoint: &str) -> bool {
    matches!(endpoint, "execute" | "completions" | "chat_completions")
}

/// Marks a response whose job outcome its job guard already recorded.
#[derive(Debug, Clone, Copy)]
pub struct JobRecorded;

fn authorized(state: &AppState, req: &Request<Incoming>) -> bool {
    let Some(key) = &state.limits.api_key else {
        return true;
    };
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .unwrap_or("");
    crate::util::constant_time_eq(given.trim().as_bytes(), key.as_bytes())
}

async fn route(state: Arc<AppState>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    let endpoint = endpoint_label(&path);
    let flavor = if path.starts_with("/v1/") {
        Flavor::OpenAi
    } else {
        Flavor::M0
    };
    let resp = match dispatch(&state, req, &path).await {
        Ok(r) => r,
        Err(e) => e.response(flavor),
    };
    let status = resp.status().as_u16();
    state.metrics.http_request(endpoint, status);
    if is_generation(endpoint) && status >= 400 && resp.extensions().get::<JobRecorded>().is_none()
    {
        let outcome = match status {
            401 => "unauthorized",
            503 => "rejected",
            400..=499 => "invalid",
            _ => "error",
        };
        state.metrics.job_outcome(endpoint, outcome);
    }
    resp
}

async fn dispatch(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    path: &str,
) -> Result<Resp, ApiError> {
    if path != "/health" && !authorized(state, &req) {
        return Err(ApiError::unauthorized());
    }
    let method = req.method().clone();
    let body = |req| read_body(req, state.limits.max_body_bytes, state.limits.body_timeout);
    match (method, path) {
        (Method::GET, "/health") => Ok(m0::health(state)),
        (Method::POST, "/execute") => m0::execute(state, &body(req).await?).await,
        (Method::POST, "/cancel") => m0::cancel(state, &body(req).await?),
        (Method::GET, "/metrics") => Ok(admin::metrics(state)),
        (Method::POST, "/shutdown") => Ok(admin::shutdown(state)),
        (Method::POST, "/tokenize") => tokenize::tokenize(state, &body(req).await?),
        (Method::POST, "/detokenize") => tokenize::detokenize(state, &body(req).await?),
        (Method::POST, "/apply-template") => tokenize::apply_template(state, &body(req).await?),
        (Method::GET, "/v1/models") => Ok(openai::models(state)),
        (Method::POST, "/v1/completions") => openai::completions(state, &body(req).await?).await,
        (Method::POST, "/v1/chat/completions") => {
            openai::chat_completions(state, &body(req).await?).await
        }
        (_, p) if endpoint_label(p) != "other" => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "INVALID_REQUEST",
            "method not allowed on this endpoint",
        )),
        _ => Err(ApiError::not_found()),
    }
}
