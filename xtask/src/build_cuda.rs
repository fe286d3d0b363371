//! `cargo xtask build-cuda`: get a CUDA 13.0 toolchain (an existing one, or nvcc + headers from
//! the Python package index into `.cuda-toolchain/`), then build the `cuda-sys` kernels for sm_90 +
//! compute_90 PTX, and print where the artifacts are.
//!
//! Works on machines without a GPU (development machines, CI): only compiling needs the toolchain.
//! Idempotent: a second run finds the toolchain through a stamp file and only runs cargo.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};

/// The CUDA pieces from the package index, pinned to 13.0: the GPU machines' driver (580, CUDA
/// 13.0) cannot load PTX from a newer nvcc.
const CUDA_PACKAGES: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.*",
    "nvidia-cuda-runtime==13.0.*",
    "nvidia-cuda-crt==13.0.*",
    "nvidia-nvvm==13.0.*",
    "nvidia-cuda-cccl==13.0.*",
];
/// CMake for machines whose own is missing or older than the kernels' CMakeLists needs.
const CMAKE_PACKAGE: &str = "cmake>=3.24,<5";
const CMAKE_MIN: (u32, u32) = (3, 24);
const TOOLCHAIN_DIR: &str = ".cuda-toolchain";
const STAMP_FILE: &str = ".worker-toolchain-stamp";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Build with `--release`.
    #[arg(long)]
    release: bool,
    /// Also build worker-core with its `cuda` feature (the CUDA backend), not only cuda-sys.
    #[arg(long)]
    backend: bool,
    /// Only set up the toolchain and print `export` lines for it; build nothing.
    #[arg(long)]
    env_only: bool,
    /// Arguments for `cargo build` instead of the default packages (after `--`).
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

/// The toolchain the build will use.
#[derive(Debug)]
struct Toolchain {
    /// A directory with bin/nvcc, include/, lib or lib64 (what CUDA_HOME should be).
    cuda_home: PathBuf,
    /// A CMake to force through `$CMAKE`; `None` = the one on PATH is good enough.
    cmake: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let args = &args;
    let root = workspace_root();
    let toolchain = resolve_toolchain(&root)?;
    let nvcc_version = nvcc_version(&toolchain.cuda_home)?;
    if args.env_only {
        println!("export CUDA_HOME='{}'", toolchain.cuda_home.display());
        if let Some(cmake) = &toolchain.cmake {
            println!("export CMAKE='{}'", cmake.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    cargo_build(&root, &toolchain, args)?;
    report(&root, &toolchain, &nvcc_version, args.release);
    Ok(ExitCode::SUCCESS)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// CUDA_HOME if it has nvcc, else /usr/local/cuda if it is 13.0, else the local toolchain
/// (installed on first use). CMake: $CMAKE, a new enough one on PATH, else the toolchain's.
fn resolve_toolchain(root: &Path) -> Result<Toolchain> {
    let venv = root.join(TOOLCHAIN_DIR);
    let mut cuda_home = None;
    if let Some(home) = std::env::var_os("CUDA_HOME").map(PathBuf::from) {
        if home.join("bin/nvcc").is_file() {
            cuda_home = Some(home);
        } else {
            eprintln!(
                "build-cuda: CUDA_HOME={} has no bin/nvcc; using the local toolchain instead",
                home.display()
            );
        }
    }
    if cuda_home.is_none() {
        let system = PathBuf::from("/usr/local/cuda");
        if system.join("bin/nvcc").is_file()
            && nvcc_version(&system).is_ok_and(|v| v.contains("release 13.0"))
        {
            cuda_home = Some(system);
        }
    }
    let cuda_home = match cuda_home {
        Some(home) => home,
        None => install_cuda_packages(&venv)?,
    };
    let cmake = resolve_cmake(&venv)?;
    Ok(Toolchain { cuda_home, cmake })
}

/// Installs the pinned CUDA packages into the virtual environment `venv` (once) and returns the
/// CUDA root inside it, `venv/cuda` (a link to site-packages/nvidia/cu13).
fn install_cuda_packages(venv: &Path) -> Result<PathBuf> {
    let link = venv.join("cuda");
    let wanted = CUDA_PACKAGES.join("\n");
    let stamp = venv.join(STAMP_FILE);
    let stamped = std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted);
    if stamped && link.join("bin/nvcc").is_file() {
        return Ok(link);
    }
    eprintln!(
        "build-cuda: installing CUDA 13.0 (nvcc, runtime, headers) into {}",
        venv.display()
    );
    ensure_venv(venv)?;
    pip_install(venv, CUDA_PACKAGES)?;
    let cu13 = find_cu13(venv)?;
    fix_wheel_layout(&cu13)?;
    replace_symlink(&cu13, &link)?;
    std::fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(link)
}

fn ensure_venv(venv: &Path) -> Result<()> {
    if venv.join("bin/python").is_file() {
        return Ok(());
    }
    let python = std::env::var_os("PYTHON").unwrap_or_else(|| OsString::from("python3"));
    run_checked(
        Command::new(&python).arg("-m").arg("venv").arg(venv),
        "create the venv",
    )
}

fn pip_install(venv: &Path, packages: &[&str]) -> Result<()> {
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ])
    .args(packages);
    run_checked(&mut cmd, "pip install")
}

/// `site-packages/nvidia/cu13` inside the venv, whatever the Python version.
fn find_cu13(venv: &Path) -> Result<PathBuf> {
    let lib = venv.join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let candidate = entry?.path().join("site-packages/nvidia/cu13");
        if candidate.join("bin/nvcc").is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "pip installed the CUDA packages but no {}/python3.*/site-packages/nvidia/cu13/bin/nvcc exists",
        lib.display()
    )
}

/// The two gaps of the wheel layout against a real toolkit (GPU-WORKFLOW.md): nvcc's link step
/// (CMake's compiler check links a test program) looks in lib64, and FindCUDAToolkit wants an
/// unversioned libcudart.so.
fn fix_wheel_layout(cu13: &Path) -> Result<()> {
    let lib64 = cu13.join("lib64");
    if !lib64.exists() {
        symlink(Path::new("lib"), &lib64)?;
    }
    let unversioned = cu13.join("lib/libcudart.so");
    if !unversioned.exists() {
        let versioned = std::fs::read_dir(cu13.join("lib"))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|name| name.starts_with("libcudart.so."))
            .context("the nvidia-cuda-runtime wheel has no libcudart.so.*")?;
        symlink(Path::new(&versioned), &unversioned)?;
    }
    Ok(())
}

/// `$CMAKE` if set; else `cmake` on PATH when >= 3.24; else the venv's (installed on first use).
fn resolve_cmake(venv: &Path) -> Result<Option<PathBuf>> {
    if let Some(explicit) = std::env::var_os("CMAKE") {
        return Ok(Some(PathBuf::from(explicit)));
    }
    let venv_cmake = venv.join("bin/cmake");
    if venv_cmake.is_file() {
        return Ok(Some(venv_cmake));
    }
    if cmake_version(Path::new("cmake")).is_some_and(|v| v >= CMAKE_MIN) {
        return Ok(None);
    }
    eprintln!(
        "build-cuda: no CMake >= 3.24 on PATH; installing one into {}",
        venv.display()
    );
    ensure_venv(venv)?;
    pip_install(venv, &[CMAKE_PACKAGE])?;
    Ok(Some(venv_cmake))
}

fn cmake_version(cmake: &Path) -> Option<(u32, u32)> {
    let out = Command::new(cmake).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.lines().next()?.strip_prefix("cmake version ")?;
    let mut parts = version.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn nvcc_version(cuda_home: &Path) -> Result<String> {
    let nvcc = cuda_home.join("bin/nvcc");
    let out = Command::new(&nvcc)
        .arg("--version")
        .output()
        .with_context(|| format!("running {}", nvcc.display()))?;
    if !out.status.success() {
        bail!(
            "{} --version failed: {}",
            nvcc.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let release = text
        .lines()
        .find(|l| l.contains("release"))
        .unwrap_or("unknown version");
    if !release.contains("release 13.0") {
        eprintln!(
            "build-cuda: warning: {} is not CUDA 13.0 ({release}); the GPU machines' driver may \
             reject its PTX",
            nvcc.display()
        );
    }
    Ok(release.trim().to_string())
}

fn cargo_build(root: &Path, toolchain: &Toolchain, args: &Args) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).arg("build");
    if args.release {
        cmd.arg("--release");
    }
    if args.cargo_args.is_empty() {
        cmd.args(["-p", "cuda-sys"]);
        if args.backend {
            cmd.args(["-p", "worker-core", "--features", "worker-core/cuda"]);
        }
    } else {
        cmd.args(&args.cargo_args);
    }
    cmd.env("CUDA_HOME", &toolchain.cuda_home);
    if let Some(cmake) = &toolchain.cmake {
        cmd.env("CMAKE", cmake);
    }
    run_checked(&mut cmd, "cargo build")
}

/// Prints the toolchain and the newest build artifacts of this profile.
fn report(root: &Path, toolchain: &Toolchain, nvcc_version: &str, release: bool) {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let profile_dir = target.join(if release { "release" } else { "debug" });
    println!("build-cuda: done");
    println!(
        "  nvcc:       {} ({nvcc_version})",
        toolchain.cuda_home.join("bin/nvcc").display()
    );
    match &toolchain.cmake {
        Some(cmake) => println!("  cmake:      {}", cmake.display()),
        None => println!("  cmake:      cmake on PATH"),
    }
    println!("  CUDA_HOME:  {}", toolchain.cuda_home.display());
    let out_dir = newest(
        &profile_dir.join("build"),
        |name| name.starts_with("cuda-sys-"),
        |dir| dir.join("out/lib/libworker_kernels.a").is_file(),
    )
    .map(|dir| dir.join("out"));
    match out_dir {
        Some(out) => {
            println!(
                "  kernels:    {} (sm_90 + compute_90 PTX)",
                out.join("lib/libworker_kernels.a").display()
            );
            println!("  bindings:   {}", out.join("bindings.rs").display());
        }
        None => println!(
            "  kernels:    (not found under {})",
            profile_dir.join("build").display()
        ),
    }
    let rlib = newest(
        &profile_dir.join("deps"),
        |name| name.starts_with("libcuda_sys-") && name.ends_with(".rlib"),
        |_| true,
    );
    if let Some(rlib) = rlib {
        println!("  cuda-sys:   {}", rlib.display());
    }
}

/// The most recently modified entry of `dir` whose name passes `name_ok` and that passes `ok`.
fn newest(
    dir: &Path,
    name_ok: impl Fn(&str) -> bool,
    ok: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    let mut best: Option<(SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok()) {
        let path = entry.path();
        if !name_ok(&entry.file_name().to_string_lossy()) || !ok(&path) {
            continue;
        }
        let modified = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        if best.as_ref().is_none_or(|(t, _)| modified > *t) {
            best = Some((modified, path));
        }
    }
    best.map(|(_, p)| p)
}

fn symlink(target: &Path, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}

/// Points `link` at `target` (relative to the link's directory when possible), replacing an old link.
fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(link).with_context(|| format!("removing {}", link.display()))?;
    }
    let relative = link
        .parent()
        .and_then(|dir| target.strip_prefix(dir).ok())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| target.to_path_buf());
    symlink(&relative, link)
}

/// Runs a command with its stdout sent to our stderr: `--env-only`'s stdout must stay pure shell.
fn run_checked(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .with_context(|| format!("{what}: could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status}): {cmd:?}");
    }
    Ok(())
}
