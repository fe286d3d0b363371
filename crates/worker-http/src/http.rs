//! Response/body plumbing shared by every route.

use crate::errors::ApiError;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use std::convert::Infallible;
use std::time::Duration;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;
pub type Resp = Response<Body>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    UnsyncBoxBody::new(Full::new(bytes.into()))
}

pub fn response(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Resp {
    response(
        status,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

pub fn json_ok(value: &serde_json::Value) -> Resp {
    json_response(StatusCode::OK, value)
}

/// A client whose body is over the limit by at most this much is read to the end (and the
/// excess discarded) before the 413 goes out: closing a socket with unread data makes the
/// kernel send a reset, which can destroy the 413 before the client reads it.
const DRAIN_CAP: u64 = 8 * 1024 * 1024;

/// Reads a request body of at most `limit` bytes within `timeout` (a client that trickles its
/// body must not hold a connection forever). Too large → 413, too slow → 408.
pub async fn read_body(
    req: Request<Incoming>,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "INVALID_REQUEST",
            format!("the request body exceeds {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_CAP) {
        return Err(too_large());
    }
    let mut body = req.into_body();
    let read = async {
        let mut buf = Vec::new();
        let mut seen = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "INVALID_REQUEST",
                    format!("reading the request body: {e}"),
                )
            })?;
            if let Ok(data) = frame.into_data() {
                seen += data.len() as u64;
                if seen > DRAIN_CAP {
                    break;
                }
                if seen <= limit as u64 {
                    buf.extend_from_slice(&data);
                }
            }
        }
        if seen > limit as u64 {
            Err(too_large())
        } else {
            Ok(Bytes::from(buf))
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "INVALID_REQUEST",
            "the request body was not received in time",
        )),
        Ok(r) => r,
    }
}
