//! Limits and hostile clients against the real binary: the API key (constant-time compared,
//! `/health` exempt), body size (413), the bounded queue (503 + Retry-After), the header read
//! timeout and the connection cap.

use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use worker_e2e::{SseStream, Worker, request};

const KEY: &str = "sekret-key-123";
const AUTH: (&str, &str) = ("authorization", "Bearer sekret-key-123");

fn post(w: &Worker, path: &str, body: &serde_json::Value) -> worker_e2e::Response {
    request(
        &w.addr,
        "POST",
        path,
        &[AUTH],
        Some(body.to_string().as_bytes()),
    )
}

fn api_key(w: &Worker) {
    assert_eq!(w.get("/health").status, 200, "/health needs no key");
    let body = json!({"job_id": "k", "prompt": "hi", "max_tokens": 1});
    let r = w.post("/execute", &body);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(r.json()["code"], "UNAUTHORIZED");
    assert_eq!(w.get("/metrics").status, 401);
    let r = w.get("/v1/models");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    // Same length, one character off.
    let r = request(
        &w.addr,
        "GET",
        "/v1/models",
        &[("authorization", "Bearer sekret-key-124")],
        None,
    );
    assert_eq!(r.status, 401);
    let r = request(&w.addr, "GET", "/v1/models", &[AUTH], None);
    assert_eq!(r.status, 200);
    assert_eq!(post(w, "/tokenize", &json!({"content": "hi"})).status, 200);
}

fn body_limit(w: &Worker) {
    let big = json!({"job_id": "big", "prompt": "a".repeat(5000), "max_tokens": 1});
    let r = post(w, "/execute", &big);
    assert_eq!(r.status, 413);
    let r = post(w, "/v1/completions", &json!({"prompt": "a".repeat(5000)}));
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    // A body sent without a length (chunked) is cut off at the same limit.
    let mut s = TcpStream::connect(&w.addr).unwrap();
    let chunk = "b".repeat(3000);
    let msg = format!(
        "POST /execute HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {KEY}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len(),
        chunk.len()
    );
    s.write_all(msg.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
}

fn queue_full(w: &Worker) {
    // --max-batch 1 --max-queue 1: one runs, one waits, the third is refused at once.
    let long = |id: &str| json!({"job_id": id, "prompt": "Count: 1, 2, 3,", "max_tokens": 2000, "temperature": 0});
    let mut running = SseStream::open_with(&w.addr, "/execute", &[AUTH], &long("q1"));
    assert_eq!(running.next_event().unwrap().event, "started");
    let mut waiting = SseStream::open_with(&w.addr, "/execute", &[AUTH], &long("q2"));
    assert_eq!(waiting.status, 200);
    let t0 = Instant::now();
    let r = post(w, "/execute", &long("q3"));
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "refusal took {:?}",
        t0.elapsed()
    );
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["code"], "QUEUE_FULL");
    assert_eq!(r.json()["retriable"], true);
    assert!(
        r.header("retry-after")
            .is_some_and(|v| v.parse::<u64>().is_ok())
    );
    let r = post(
        w,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 1}),
    );
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    // Cancelling the waiting job ends its stream even though it never started.
    assert_eq!(post(w, "/cancel", &json!({"job_id": "q2"})).status, 202);
    let ev = waiting.next_event().unwrap();
    assert_eq!(
        (ev.event.as_str(), ev.json()["stop_reason"].as_str()),
        ("end", Some("CANCELLED"))
    );
    assert_eq!(post(w, "/cancel", &json!({"job_id": "q1"})).status, 202);
    let last = std::iter::from_fn(|| running.next_event()).last().unwrap();
    assert_eq!(last.json()["stop_reason"], "CANCELLED");
}

fn vanish_mid_prompt_and_cancel_storm(w: &Worker) {
    // The jobs of the previous check leave the books when their responses are done.
    w.wait_until("earlier jobs to end", Duration::from_secs(5), |w| {
        w.get("/health").json()["active_jobs"] == 0
    });
    // A client that leaves while its long prompt is still being processed frees its job.
    let prompt = "word ".repeat(450);
    let s = SseStream::open_with(
        &w.addr,
        "/execute",
        &[AUTH],
        &json!({"job_id": "gone", "prompt": prompt, "max_tokens": 50}),
    );
    assert_eq!(s.status, 200);
    drop(s);
    let active = |w: &Worker| request(&w.addr, "GET", "/health", &[], None).json();
    w.wait_until(
        "the vanished job to be dropped",
        Duration::from_secs(10),
        |w| {
            let h = active(w);
            h["active_jobs"] == 0 && h["running_jobs"] == 0
        },
    );
    // Cancels for ids that do not exist, in a burst, change nothing and break nothing.
    for k in 0..200 {
        assert_eq!(
            post(w, "/cancel", &json!({"job_id": format!("ghost-{k}")})).status,
            202
        );
    }
    let h = active(w);
    assert_eq!(
        (h["status"].as_str(), h["active_jobs"].as_u64()),
        (Some("ok"), Some(0))
    );
}

fn header_timeout(w: &Worker) {
    // A client that never finishes its headers is cut off (--header-timeout-secs 2).
    let mut s = TcpStream::connect(&w.addr).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: slow\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(6),
        "closed after {waited:?}"
    );
}

fn connection_cap(w: &Worker) {
    // --max-connections 6: six idle connections fill the worker; the seventh is refused.
    let idle: Vec<TcpStream> = (0..6)
        .map(|_| TcpStream::connect(&w.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = TcpStream::connect(&w.addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut out = String::new();
    let _ = extra.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 503"), "{out:?}");
    drop(idle);
    w.wait_until("connections to free up", Duration::from_secs(5), |w| {
        w.get("/health").status == 200
    });
    // At least the seventh connection (health polls above may have been refused too).
    let metrics = request(&w.addr, "GET", "/metrics", &[AUTH], None).text();
    let refused: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("worker_refused_connections_total "))
        .and_then(|v| v.parse().ok())
        .expect("refused connections counter");
    assert!(refused >= 1.0, "{metrics}");
}

#[test]
fn limits_and_hostile_clients() {
    let dev = worker_e2e::device();
    let w = Worker::start(&[
        "--api-key",
        KEY,
        "--max-body-bytes",
        "4096",
        "--max-batch",
        "1",
        "--max-queue",
        "1",
        "--header-timeout-secs",
        "2",
        "--max-connections",
        "6",
        "--ctx-size",
        "512",
        "--device",
        &dev,
    ]);
    api_key(&w);
    body_limit(&w);
    queue_full(&w);
    vanish_mid_prompt_and_cancel_storm(&w);
    header_timeout(&w);
    connection_cap(&w);
    assert!(!w.logs().contains(KEY), "the API key reached the log");
}
