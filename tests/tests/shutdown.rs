//! Graceful shutdown of the real binary: SIGTERM lets a running stream finish and exits 0;
//! `POST /shutdown` with a short drain timeout cancels what is still running, and every
//! stream still gets its terminal event.

use serde_json::json;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use worker_e2e::{SseStream, Worker};

fn sigterm_finishes_running_work() {
    let dev = worker_e2e::device();
    let mut w = Worker::start(&[
        "--ctx-size",
        "256",
        "--device",
        &dev,
        "--drain-timeout-secs",
        "60",
    ]);
    let mut s = SseStream::open(
        &w.addr,
        "/execute",
        &json!({"job_id": "drain", "prompt": "1, 2, 3,", "max_tokens": 8, "temperature": 0}),
    );
    assert_eq!(s.next_event().unwrap().event, "started");
    assert_eq!(s.next_event().unwrap().event, "token");
    w.signal("TERM");
    // No new connections once draining (the listener is closed).
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        TcpStream::connect(&w.addr).is_err(),
        "still accepting after SIGTERM"
    );
    let rest = s.collect();
    let end = rest.last().expect("terminal event");
    assert_eq!(end.event, "end");
    assert_eq!(
        end.json()["stop_reason"],
        "MAX_TOKENS",
        "the running job was allowed to finish"
    );
    assert_eq!(end.json()["tokens_out"], 8);
    let status = w
        .wait_exit(Duration::from_secs(10))
        .expect("exits after the drain");
    assert!(status.success(), "exit status {status}");
}

fn shutdown_endpoint_cancels_after_the_drain_timeout() {
    let dev = worker_e2e::device();
    // A context and budget large enough that the job outlives the 1 s drain on a GPU too.
    let mut w = Worker::start(&[
        "--ctx-size",
        "4096",
        "--max-batch",
        "1",
        "--device",
        &dev,
        "--drain-timeout-secs",
        "1",
    ]);
    let mut s = SseStream::open(
        &w.addr,
        "/execute",
        &json!({"job_id": "long", "prompt": "1, 2, 3,", "max_tokens": 2048, "temperature": 0}),
    );
    assert_eq!(s.next_event().unwrap().event, "started");
    let t0 = Instant::now();
    let r = w.post("/shutdown", &json!({}));
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["status"], "draining");
    let rest = s.collect();
    let end = rest.last().expect("terminal event");
    assert_eq!(end.event, "end");
    assert_eq!(end.json()["stop_reason"], "CANCELLED");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "cancelled after {took:?}"
    );
    let status = w
        .wait_exit(Duration::from_secs(10))
        .expect("exits after the drain");
    assert!(status.success(), "exit status {status}");
}

fn second_signal_cancels_running_work() {
    let dev = worker_e2e::device();
    let mut w = Worker::start(&[
        "--ctx-size",
        "4096",
        "--max-batch",
        "1",
        "--device",
        &dev,
        "--drain-timeout-secs",
        "60",
    ]);
    let mut s = SseStream::open(
        &w.addr,
        "/execute",
        &json!({"job_id": "stubborn", "prompt": "1, 2, 3,", "max_tokens": 2048, "temperature": 0}),
    );
    assert_eq!(s.next_event().unwrap().event, "started");
    w.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        w.wait_exit(Duration::from_millis(10)).is_none(),
        "exited with a job still draining"
    );
    let t0 = Instant::now();
    w.signal("INT");
    let end = s.collect().pop().expect("terminal event");
    assert_eq!(end.event, "end");
    assert_eq!(end.json()["stop_reason"], "CANCELLED");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "second signal took {:?}",
        t0.elapsed()
    );
    let status = w.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn graceful_shutdown() {
    sigterm_finishes_running_work();
    shutdown_endpoint_cancels_after_the_drain_timeout();
    second_signal_cancels_running_work();
}
