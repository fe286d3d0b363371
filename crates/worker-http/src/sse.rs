//! Server-Sent Events: a response body that pulls a job's events straight from the engine's
//! channel, so each token is written as soon as it exists (nothing buffers a whole response),
//! and dropping the body (the client went away) drops the job guard, which cancels the job.

use crate::http::{Body, Resp};
use crate::jobs::{Item, Job, JobGuard};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Frame;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Turns a job's items into SSE text.
pub trait StreamFormat: Unpin + Send + 'static {
    /// The text for one item, and whether the stream is complete after it.
    fn item(&mut self, guard: &mut JobGuard, item: Item) -> (String, bool);
}

struct EventBody<F> {
    job: Job,
    fmt: F,
    done: bool,
}

impl<F: StreamFormat> hyper::body::Body for EventBody<F> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let mut out = String::new();
        // Everything already available goes out in one frame; each frame is flushed by hyper,
        // so a token is on the wire as soon as the engine produced it.
        while !this.done {
            match this.job.poll_next(cx) {
                Poll::Ready(item) => {
                    let (text, end) = this.fmt.item(&mut this.job.guard, item);
                    out.push_str(&text);
                    this.done = end;
                }
                Poll::Pending => break,
            }
        }
        if !out.is_empty() {
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
        } else if this.done {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

/// A 200 `text/event-stream` response fed by `job`.
pub fn response<F: StreamFormat>(job: Job, fmt: F) -> Resp {
    let body: Body = UnsyncBoxBody::new(EventBody {
        job,
        fmt,
        done: false,
    });
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tell reverse proxies (nginx) not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// A named event: `event: NAME\ndata: JSON\n\n`.
pub fn event(name: &str, data: &impl Serialize) -> String {
    format!(
        "event: {name}\ndata: {}\n\n",
        serde_json::to_string(data).unwrap_or_default()
    )
}

/// An unnamed event (OpenAI style): `data: JSON\n\n`.
pub fn data(data: &impl Serialize) -> String {
    format!(
        "data: {}\n\n",
        serde_json::to_string(data).unwrap_or_default()
    )
}
