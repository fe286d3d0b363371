//! Builds the CUDA kernels (kernels/, a CMake project) into a static library, links it with the
//! static CUDA runtime, and generates Rust bindings for kernels/include/worker_kernels.h.
//!
//! Where CUDA comes from, in order: `CUDA_HOME`, the toolchain `cargo xtask build-cuda` installs
//! (`<workspace>/.cuda-toolchain/cuda`), `/usr/local/cuda`. CMake: `CMAKE`, the toolchain's
//! `cmake`, then `cmake` on PATH.

use std::env;
use std::path::{Path, PathBuf};

const HEADER: &str = "kernels/include/worker_kernels.h";

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=CMAKE");

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let toolchain = manifest_dir.join("../.cuda-toolchain");
    let cuda = cuda_home(&toolchain);
    select_cmake(&toolchain);
    let install_dir = build_kernels(&cuda);
    link(&install_dir, &cuda);
    generate_bindings(&manifest_dir);
}

/// The CUDA toolkit root: a directory with `bin/nvcc`.
fn cuda_home(toolchain: &Path) -> PathBuf {
    let candidates = [
        env::var_os("CUDA_HOME").map(PathBuf::from),
        Some(toolchain.join("cuda")),
        Some(PathBuf::from("/usr/local/cuda")),
    ];
    let explicit_without_nvcc = candidates[0]
        .as_ref()
        .filter(|dir| !dir.join("bin/nvcc").is_file());
    if let Some(explicit) = explicit_without_nvcc {
        panic!(
            "CUDA_HOME={} has no bin/nvcc. Point CUDA_HOME at a CUDA 13.0 toolkit, or unset it \
             and run `cargo xtask build-cuda` to install one.",
            explicit.display()
        );
    }
    for dir in candidates.into_iter().flatten() {
        if dir.join("bin/nvcc").is_file() {
            println!("cargo:rerun-if-changed={}", dir.join("bin/nvcc").display());
            return dir;
        }
    }
    panic!(
        "no CUDA toolkit found (CUDA_HOME unset, no {}/cuda, no /usr/local/cuda). \
         Run `cargo xtask build-cuda` once: it installs nvcc 13.0 from the Python package index \
         into .cuda-toolchain and builds this crate.",
        toolchain.display()
    );
}

/// The `cmake` crate runs `$CMAKE` or `cmake` from PATH; prefer the toolchain's CMake 4 when the
/// caller did not choose one (Debian's CMake 3.25 may be missing or too old for CUDA 13).
fn select_cmake(toolchain: &Path) {
    if env::var_os("CMAKE").is_some() {
        return;
    }
    let venv_cmake = toolchain.join("bin/cmake");
    if venv_cmake.is_file() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment
        // concurrently.
        unsafe { env::set_var("CMAKE", &venv_cmake) };
    }
}

/// Configures and builds kernels/ with CMake; returns the install prefix (lib/ holds the archive).
fn build_kernels(cuda: &Path) -> PathBuf {
    let nvcc = cuda.join("bin/nvcc");
    let mut cfg = cmake::Config::new("kernels");
    cfg.define("CMAKE_CUDA_COMPILER", &nvcc)
        .define("CUDAToolkit_ROOT", cuda)
        // The kernels are always optimized: a debug build of the worker still needs usable speed.
        .profile("Release");
    // Let nvcc find its own tools (cicc, ptxas) whatever PATH the caller has.
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![cuda.join("bin")];
    paths.extend(env::split_paths(&path));
    cfg.env(
        "PATH",
        env::join_paths(paths).expect("PATH entries are valid"),
    );
    cfg.build()
}

/// Links the kernels archive and the static CUDA runtime. Static cudart means the binary needs only
/// the driver (libcuda.so) on the GPU machine, not a matching libcudart.so.
fn link(install_dir: &Path, cuda: &Path) {
    println!(
        "cargo:rustc-link-search=native={}",
        install_dir.join("lib").display()
    );
    println!("cargo:rustc-link-lib=static=worker_kernels");
    for sub in ["lib64", "lib", "targets/x86_64-linux/lib"] {
        let dir = cuda.join(sub);
        if dir.join("libcudart_static.a").is_file() {
            println!("cargo:rustc-link-search=native={}", dir.display());
        }
    }
    println!("cargo:rustc-link-lib=static=cudart_static");
    // cudart_static needs the C++ runtime (for the kernels' host code), dlopen (it loads
    // libcuda.so), clock_gettime and threads.
    for lib in ["stdc++", "dl", "rt", "pthread"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
}

/// Bindings for the `wk_` API only; the header needs no CUDA headers, so any libclang works.
fn generate_bindings(manifest_dir: &Path) {
    let header = manifest_dir.join(HEADER);
    let bindings = bindgen::Builder::default()
        .header(header.to_string_lossy())
        .allowlist_function("wk_.*")
        .allowlist_type("wk_.*")
        .allowlist_var("WK_.*")
        .newtype_enum("wk_.*")
        .derive_debug(true)
        .derive_default(false)
        .layout_tests(true)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .unwrap_or_else(|e| {
            panic!(
                "bindgen failed on {}: {e}. bindgen needs libclang (apt-get install libclang-dev).",
                header.display()
            )
        });
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("bindings.rs");
    bindings.write_to_file(&out).expect("writing bindings.rs");
}
