//! Operations endpoints: `GET /metrics` and `POST /shutdown`.

use crate::http::{Resp, json_response, response};
use crate::state::AppState;
use hyper::StatusCode;
use serde_json::json;

pub fn metrics(state: &AppState) -> Resp {
    let text = state.metrics.render(&state.gauges());
    response(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        text,
    )
}

/// Starts the same graceful shutdown as SIGTERM; the answer goes out before connections close.
pub fn shutdown(state: &AppState) -> Resp {
    tracing::info!("shutdown requested over HTTP");
    state.begin_shutdown();
    json_response(
        StatusCode::ACCEPTED,
        &json!({ "status": "draining", "active_jobs": state.jobs.len() }),
    )
}
