//! The official `openai` Python client (tests/python/requirements.txt) against the real
//! binary: runs tests/python/test_openai_client.py, which compares the client's greedy output
//! with the engine's greedy output from `/execute`.
//!
//! Python: `$WORKER_E2E_PYTHON` if set, else a virtual environment at `target/py-venv`, created
//! and filled from requirements.txt with pip when it lacks the client (needs the package index).

use std::path::{Path, PathBuf};
use std::process::Command;
use worker_e2e::Worker;

fn has_openai(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success())
}

fn python_with_openai() -> PathBuf {
    if let Some(p) = std::env::var_os("WORKER_E2E_PYTHON") {
        let p = PathBuf::from(p);
        assert!(
            has_openai(&p),
            "WORKER_E2E_PYTHON={} cannot import openai",
            p.display()
        );
        return p;
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // target/<profile>/deps/<test> → target/
    let exe = std::env::current_exe().expect("test executable path");
    let target = exe.ancestors().nth(3).expect("target dir").to_path_buf();
    let venv = target.join("py-venv");
    let python = venv.join("bin").join("python");
    if !has_openai(&python) {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "python3 -m venv {} failed", venv.display());
        let ok = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(manifest.join("python/requirements.txt"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "pip install -r tests/python/requirements.txt failed");
    }
    python
}

#[test]
fn official_openai_python_client() {
    let python = python_with_openai();
    let key = "py-test-key";
    let dev = worker_e2e::device();
    let w = Worker::start(&[
        "--ctx-size",
        "512",
        "--max-batch",
        "2",
        "--device",
        &dev,
        "--api-key",
        key,
    ]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/test_openai_client.py");
    let out = Command::new(&python)
        .arg(&script)
        .env("WORKER_URL", format!("http://{}", w.addr))
        .env("WORKER_API_KEY", key)
        .output()
        .expect("running the Python test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the openai client test failed:\n{stdout}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}
