//! Start-up of the real binary: failures exit 1 with a message that names the problem; the
//! ready callback reaches its URL with the worker's address; `--log-json` logs JSON lines.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::Duration;
use worker_e2e::{Worker, worker_bin};

fn model() -> String {
    std::env::var("WORKER_TEST_MODEL").unwrap_or_else(|_| "qwen2.5-coder-0.5b".into())
}

fn run(args: &[&str]) -> Output {
    Command::new(worker_bin())
        .args(["--port", "0"])
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("running worker-http")
}

fn fails_with(args: &[&str], needle: &str) {
    exits_with(1, args, needle);
}

/// Exit status `code` (clap answers usage errors with 2) and `needle` in stderr.
fn exits_with(code: i32, args: &[&str], needle: &str) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected {needle:?} in:\n{stderr}"
    );
}

fn start_up_failures() {
    fails_with(
        &["--model", "no-such-model-or-file"],
        "neither a file nor a known model name",
    );
    // An explicit GPU that is not there never falls back to the CPU.
    fails_with(&["--model", &model(), "--device", "cuda:99"], "cuda:99");
    exits_with(
        2,
        &["--model", &model(), "--device", "tpu"],
        "unknown device",
    );

    // A truncated model file is named as the problem.
    let path = worker_core::fetch::resolve_model(&model()).expect("test model");
    let mut head = vec![0u8; 1 << 20];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("worker-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let truncated = dir.join("truncated.gguf");
    std::fs::write(&truncated, &head).unwrap();
    fails_with(
        &["--model", truncated.to_str().unwrap()],
        "MODEL_LOAD_FAILED",
    );
    std::fs::write(&truncated, b"not a gguf file at all").unwrap();
    fails_with(
        &["--model", truncated.to_str().unwrap()],
        "MODEL_LOAD_FAILED",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn ready_callback_and_json_logs() {
    let pool = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/workers/ready", pool.local_addr().unwrap());
    let dev = worker_e2e::device();
    let w = Worker::start(&[
        "--ctx-size",
        "256",
        "--device",
        &dev,
        "--worker-id",
        "w-7",
        "--callback-url",
        &url,
        "--log-json",
    ]);
    let (stream, _) = pool.accept().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("POST /workers/ready HTTP/1.1"), "{line:?}");
    let mut length = 0;
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; length];
    r.read_exact(&mut body).unwrap();
    r.get_mut()
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        .unwrap();
    let msg: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(msg["event"], "ready");
    assert_eq!(msg["worker_id"], "w-7");
    assert_eq!(msg["url"], format!("http://{}", w.addr));
    assert_eq!(msg["model"], "qwen2.5-coder-0.5b");
    assert_eq!(msg["context_length"], 256);

    // Every log line is a JSON object.
    let logs = w.logs();
    assert!(!logs.is_empty());
    for l in logs.lines() {
        serde_json::from_str::<Value>(l)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"));
    }
}

#[test]
fn start_up() {
    start_up_failures();
    ready_callback_and_json_logs();
}
