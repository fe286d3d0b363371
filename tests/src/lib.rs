//! End-to-end tests live in `tests/tests/`; this library starts the real `worker-http` binary
//! and talks plain HTTP/1.1 to it over TCP (no client library in between, so tests can also
//! misbehave: disconnect mid-stream, trickle headers, hold connections open).
//!
//! Environment: `WORKER_HTTP_BIN` (use this binary instead of building one), `WORKER_TEST_MODEL`
//! (a GGUF path or known model name; default the default model, fetched on first use),
//! `WORKER_E2E_DEVICE` (the `--device` the tests serve on; default `cpu`).

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The worker binary: `$WORKER_HTTP_BIN`, else built once with the same cargo and profile as
/// the test itself.
pub fn worker_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("WORKER_HTTP_BIN") {
            return PathBuf::from(p);
        }
        // The test runs as target/<profile>/deps/<name>-<hash>.
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("target/<profile>")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "worker-http",
            "--bin",
            "worker-http",
        ]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build for worker-http");
        assert!(status.success(), "building worker-http failed");
        profile_dir.join(format!("worker-http{}", std::env::consts::EXE_SUFFIX))
    })
    .clone()
}

/// The `--device` the tests run the worker on: `$WORKER_E2E_DEVICE`, default `cpu`.
pub fn device() -> String {
    std::env::var("WORKER_E2E_DEVICE").unwrap_or_else(|_| "cpu".into())
}

/// The golden reference folder (`../shared/golden`).
pub fn golden_dir() -> PathBuf {
    std::env::var_os("WORKER_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden"))
}

/// The address in the worker's `ready` log line, human (`ready addr=…`) or JSON (`--log-json`).
pub fn ready_addr(line: &str) -> Option<String> {
    if line.starts_with('{') {
        let v: Value = serde_json::from_str(line).ok()?;
        let fields = v.get("fields")?;
        return (fields.get("message")? == "ready")
            .then(|| fields.get("addr")?.as_str().map(str::to_owned))?;
    }
    if !line.contains(" ready ") {
        return None;
    }
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .map(str::to_owned)
}

/// A running worker process, killed when dropped.
pub struct Worker {
    child: Child,
    pub addr: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    /// Starts the worker on a free port with the test model and `extra` flags, and waits for
    /// its `ready` log line.
    pub fn start(extra: &[&str]) -> Worker {
        let model =
            std::env::var("WORKER_TEST_MODEL").unwrap_or_else(|_| "qwen2.5-coder-0.5b".into());
        let mut child = Command::new(worker_bin())
            .args(["--port", "0", "--model", &model])
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("WORKER_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting worker-http");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = ready_addr(&line) {
                    let _ = tx.send(addr);
                }
                sink.lock().expect("log lock").push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(100)) {
                return Worker { child, addr, logs };
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "worker exited ({status}) before ready:\n{}",
                    logs.lock().expect("log lock").join("\n")
                );
            }
            assert!(Instant::now() < deadline, "worker not ready in time");
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().expect("log lock").join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (TERM, INT, KILL) with the system's `kill`.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -s {name} failed");
    }

    /// Waits for the process to exit; None if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn get(&self, path: &str) -> Response {
        request(&self.addr, "GET", path, &[], None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        request(
            &self.addr,
            "POST",
            path,
            &[],
            Some(body.to_string().as_bytes()),
        )
    }

    /// A Prometheus sample's value (`name{labels}` exactly as printed), 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        let text = self.get("/metrics").text();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                l.strip_prefix(sample)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .map(|v| v.trim().parse().unwrap_or(f64::NAN))
            })
            .unwrap_or(0.0)
    }

    /// Waits until `cond` holds (polling), or panics with `what`.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut cond: impl FnMut(&Worker) -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .expect("read timeout");
    s
}

fn write_request(
    s: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("writing request head");
    if let Some(b) = body {
        s.write_all(b).expect("writing request body");
    }
}

/// Reads a response head: status and headers.
fn read_head(r: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).expect("reading status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("reading a header");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    (status, headers)
}

/// One HTTP/1.1 request on a fresh connection (`connection: close`).
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    let mut s = connect(addr);
    write_request(&mut s, method, path, headers, body);
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        let mut body_reader = Body {
            r,
            chunked: true,
            done: false,
        };
        while let Some(c) = body_reader.next_chunk() {
            body.extend_from_slice(&c);
        }
    } else {
        // A server may close right after its answer (e.g. a 413 before the whole upload was
        // read); keep what arrived.
        if let Err(e) = r.read_to_end(&mut body) {
            assert!(
                e.kind() == std::io::ErrorKind::ConnectionReset,
                "reading body: {e}"
            );
        }
    }
    Response {
        status,
        headers,
        body,
    }
}

/// A response body read piece by piece (HTTP chunks, as the server flushed them).
struct Body {
    r: BufReader<TcpStream>,
    chunked: bool,
    done: bool,
}

impl Body {
    fn next_chunk(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        if !self.chunked {
            let mut buf = vec![0u8; 8192];
            let n = self.r.read(&mut buf).ok()?;
            if n == 0 {
                self.done = true;
                return None;
            }
            buf.truncate(n);
            return Some(buf);
        }
        let mut line = String::new();
        if self.r.read_line(&mut line).ok()? == 0 {
            self.done = true;
            return None;
        }
        let size = usize::from_str_radix(line.trim(), 16).ok()?;
        if size == 0 {
            self.done = true;
            return None;
        }
        let mut buf = vec![0u8; size + 2];
        self.r.read_exact(&mut buf).ok()?;
        buf.truncate(size);
        Some(buf)
    }
}

/// One server-sent event and when it was read.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// `event:` name, "message" when absent.
    pub event: String,
    pub data: String,
    pub at: Instant,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {}", self.data))
    }
}

/// A streaming response read event by event.
pub struct SseStream {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    body: Body,
    buf: String,
}

impl SseStream {
    pub fn open(addr: &str, path: &str, body: &Value) -> SseStream {
        Self::open_with(addr, path, &[], body)
    }

    pub fn open_with(addr: &str, path: &str, headers: &[(&str, &str)], body: &Value) -> SseStream {
        let mut s = connect(addr);
        write_request(
            &mut s,
            "POST",
            path,
            headers,
            Some(body.to_string().as_bytes()),
        );
        let mut r = BufReader::new(s);
        let (status, headers) = read_head(&mut r);
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        SseStream {
            status,
            headers,
            body: Body {
                r,
                chunked,
                done: false,
            },
            buf: String::new(),
        }
    }

    /// The next event, or None at the end of the stream.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent {
                    event: "message".into(),
                    data: String::new(),
                    at: Instant::now(),
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !ev.data.is_empty() {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if ev.data.is_empty() && ev.event == "message" {
                    continue; // a comment or keep-alive
                }
                return Some(ev);
            }
            let chunk = self.body.next_chunk()?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Every remaining event.
    pub fn collect(mut self) -> Vec<SseEvent> {
        let mut v = Vec::new();
        while let Some(e) = self.next_event() {
            v.push(e);
        }
        v
    }
}

/// The `data` of OpenAI-style events up to `[DONE]`, parsed; panics if `[DONE]` is missing.
pub fn openai_chunks(events: &[SseEvent]) -> Vec<Value> {
    let done = events
        .iter()
        .position(|e| e.data == "[DONE]")
        .expect("stream ends with [DONE]");
    assert_eq!(done, events.len() - 1, "[DONE] is the last event");
    events[..done].iter().map(SseEvent::json).collect()
}
