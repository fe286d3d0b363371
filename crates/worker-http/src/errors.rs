//! API errors and their two wire shapes: the M0 contract's (`{"code","message","retriable"}`,
//! plus `errors` for validation) and OpenAI's (`{"error":{"message","type","param","code"}}`).
//! One type carries both so a handler never decides the shape; the route does.

use crate::http::{Resp, json_response};
use hyper::StatusCode;
use serde_json::json;
use worker_core::engine::{BackendError, EngineError};

/// One rejected field of a request.
#[derive(Debug, Clone)]
pub struct FieldError {
    pub field: String,
    /// The rule that was broken, e.g. "1 <= max_tokens <= 2048".
    pub constraint: String,
    /// Human-readable; never contains the rejected value (a prompt must not be echoed).
    pub message: String,
}

/// Which API's error shape to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    M0,
    OpenAi,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// The M0 contract's code, e.g. "INVALID_REQUEST".
    pub code: &'static str,
    pub message: String,
    pub retriable: bool,
    /// Seconds, sent as `Retry-After`.
    pub retry_after: Option<u64>,
    pub fields: Vec<FieldError>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retriable: false,
            retry_after: None,
            fields: Vec::new(),
        }
    }

    pub fn invalid(fields: Vec<FieldError>) -> Self {
        let message = fields
            .iter()
            .map(|f| format!("{}: {}", f.field, f.message))
            .collect::<Vec<_>>()
            .join("; ");
        ApiError {
            fields,
            ..Self::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", message)
        }
    }

    pub fn field(field: &str, constraint: &str, message: impl Into<String>) -> Self {
        Self::invalid(vec![FieldError {
            field: field.into(),
            constraint: constraint.into(),
            message: message.into(),
        }])
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", message)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint")
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "missing or wrong API key (send `Authorization: Bearer <key>`)",
        )
    }

    pub fn shutting_down() -> Self {
        Self {
            retriable: true,
            retry_after: Some(5),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "SHUTTING_DOWN",
                "the worker is shutting down",
            )
        }
    }

    pub fn queue_full(active: usize) -> Self {
        Self {
            retriable: true,
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "QUEUE_FULL",
                format!("the worker is at capacity ({active} jobs running or queued); retry later"),
            )
        }
    }

    /// The M0 body.
    pub fn m0_body(&self) -> serde_json::Value {
        let mut v =
            json!({ "code": self.code, "message": self.message, "retriable": self.retriable });
        if !self.fields.is_empty() {
            v["errors"] = self
                .fields
                .iter()
                .map(|f| json!({ "field": f.field, "constraint": f.constraint, "message": f.message }))
                .collect();
        }
        v
    }

    /// The OpenAI body.
    pub fn openai_body(&self) -> serde_json::Value {
        let kind = match self.status.as_u16() {
            400 | 404 | 405 | 408 | 409 | 413 => "invalid_request_error",
            401 => "authentication_error",
            503 => "service_unavailable_error",
            _ => "server_error",
        };
        let param = self.fields.first().map(|f| f.field.clone());
        json!({ "error": { "message": self.message, "type": kind, "param": param, "code": self.code } })
    }

    pub fn response(&self, flavor: Flavor) -> Resp {
        let body = match flavor {
            Flavor::M0 => self.m0_body(),
            Flavor::OpenAi => self.openai_body(),
        };
        let mut resp = json_response(self.status, &body);
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(hyper::header::RETRY_AFTER, secs.into());
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// The contract's code, HTTP status and retriability for an engine failure.
impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let (status, code, retriable) = match &e {
            EngineError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "INVALID_REQUEST", false),
            EngineError::QueueFull(n) => return ApiError::queue_full(*n),
            EngineError::ShuttingDown => return ApiError::shutting_down(),
            EngineError::Backend(BackendError::OutOfMemory(_)) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "VRAM_OOM", true)
            }
            EngineError::Backend(BackendError::Cuda(_)) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "CUDA_ERROR", false)
            }
            EngineError::Backend(BackendError::Invalid(_)) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", false)
            }
        };
        ApiError {
            retriable,
            ..ApiError::new(status, code, e.to_string())
        }
    }
}
