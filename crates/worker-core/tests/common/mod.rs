//! Shared test support: the real default model and the golden files.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use worker_core::model::Model;

/// The golden files: `../shared/golden` beside the checkout, or `$WORKER_ORCD_GOLDEN` (used on
/// the GPU machine, where test binaries run away from the source tree).
pub fn golden(name: &str) -> PathBuf {
    golden_dir().join(name)
}

pub fn golden_dir() -> PathBuf {
    std::env::var_os("WORKER_ORCD_GOLDEN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden"))
}

/// The known model whose cached file is `file`, fetched if needed.
pub fn known_model_file(file: &str) -> PathBuf {
    let known = worker_core::fetch::KNOWN_MODELS
        .iter()
        .find(|m| m.file_name == file)
        .unwrap_or_else(|| panic!("{file} is not a known model"));
    worker_core::fetch::ensure_model(known).unwrap_or_else(|e| panic!("fetching {file}: {e}"))
}

pub fn golden_lines(name: &str) -> Vec<serde_json::Value> {
    let path = golden(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("golden JSON"))
        .collect()
}

/// The default model, fetched into the cache on first use (tests never skip for lack of it).
pub fn default_model_path() -> PathBuf {
    worker_core::fetch::resolve_model(worker_core::fetch::DEFAULT_MODEL).expect("the default model")
}

pub fn default_model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            Arc::new(Model::load(default_model_path()).expect("loading the default model"))
        })
        .clone()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}
