//! Model description and weight checks: every expected tensor present with the expected shape,
//! every tensor used, unsupported architectures and types named — on small synthetic files the
//! test writes itself (a real model's metadata layout, tiny dimensions).

use worker_core::gguf::writer::GgufWriter;
use worker_core::gguf::{GgufFile, Value};
use worker_core::model::{Model, ModelError};
use worker_core::quant::GgmlType;
use worker_core::synth::{SynthSpec, write_synthetic};

fn tiny() -> GgufFile {
    let spec = SynthSpec {
        n_layers: 2,
        d_model: 64,
        d_ff: 256,
        n_heads: 4,
        n_kv_heads: 2,
        vocab: 300,
        high_bit_layers: vec![1],
        ..SynthSpec::qwen2_0_5b()
    };
    let mut bytes = Vec::new();
    write_synthetic(&spec, 3, &mut bytes).unwrap();
    GgufFile::from_bytes(bytes).unwrap()
}

/// Rewrites `file`: `meta` may replace metadata values, `tensor` may drop (None) or replace a
/// tensor's (dims, type, bytes).
fn rebuild(
    file: &GgufFile,
    meta: impl Fn(&str, &Value) -> Value,
    tensor: impl Fn(&str, Vec<u64>, GgmlType, Vec<u8>) -> Option<(Vec<u64>, GgmlType, Vec<u8>)>,
    extra: Option<(&str, Vec<u64>, GgmlType, Vec<u8>)>,
) -> GgufFile {
    let mut w = GgufWriter::new();
    for (k, v) in file.metadata() {
        w.add_metadata(k, meta(k, v));
    }
    for t in file.tensors() {
        if let Some((dims, ty, bytes)) =
            tensor(&t.name, t.dims.clone(), t.ty, file.tensor_data(t).to_vec())
        {
            w.add_tensor(t.name.clone(), &dims, ty, bytes).unwrap();
        }
    }
    if let Some((name, dims, ty, bytes)) = extra {
        w.add_tensor(name, &dims, ty, bytes).unwrap();
    }
    GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap()
}

fn keep(_: &str, v: &Value) -> Value {
    v.clone()
}

fn load_err(file: GgufFile) -> String {
    match Model::from_gguf(file) {
        Ok(_) => panic!("the model loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_complete_file_loads_with_its_description() {
    let m = Model::from_gguf(tiny()).unwrap();
    let c = &m.config;
    assert_eq!(
        (
            c.n_layers,
            c.d_model,
            c.d_ff,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim
        ),
        (2, 64, 256, 4, 2, 16)
    );
    assert_eq!(
        (c.rope_base, c.rms_eps, c.vocab_size, c.context_length),
        (1_000_000.0, 1e-6, 300, 32_768)
    );
    assert_eq!(c.arch.name, "qwen2");
    assert!(m.weights.layers[0].bq.is_some(), "qwen2 has Q/K/V biases");
    assert_eq!(m.weights.layers[1].wv.ty, GgmlType::Q8_0);
}

#[test]
fn a_missing_tensor_is_named() {
    let f = rebuild(
        &tiny(),
        keep,
        |n, d, t, b| (n != "blk.1.attn_k.bias").then_some((d, t, b)),
        None,
    );
    let e = load_err(f);
    assert!(
        e.contains("blk.1.attn_k.bias") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn a_misshapen_tensor_is_named_with_both_shapes() {
    let f = rebuild(
        &tiny(),
        keep,
        |n, d, t, b| {
            if n == "blk.0.ffn_norm.weight" {
                Some((vec![32, 2], t, b))
            } else {
                Some((d, t, b))
            }
        },
        None,
    );
    let e = load_err(f);
    assert!(
        e.contains("blk.0.ffn_norm.weight") && e.contains("[64]") && e.contains("[32, 2]"),
        "{e}"
    );
}

#[test]
fn an_unused_tensor_is_an_error() {
    let f = rebuild(
        &tiny(),
        keep,
        |_, d, t, b| Some((d, t, b)),
        Some((
            "blk.0.mystery.weight",
            vec![64],
            GgmlType::F32,
            vec![0; 256],
        )),
    );
    let e = load_err(f);
    assert!(
        e.contains("blk.0.mystery.weight") && e.contains("not used"),
        "{e}"
    );
}

#[test]
fn a_quantized_norm_is_rejected() {
    let f = rebuild(
        &tiny(),
        keep,
        |n, d, t, b| {
            if n == "output_norm.weight" {
                Some((d, GgmlType::Q8_0, vec![0; 2 * 34]))
            } else {
                Some((d, t, b))
            }
        },
        None,
    );
    let e = load_err(f);
    assert!(
        e.contains("output_norm.weight") && e.contains("Q8_0"),
        "{e}"
    );
}

#[test]
fn an_unsupported_architecture_lists_the_supported_ones() {
    let f = rebuild(
        &tiny(),
        |k, v| {
            if k == "general.architecture" {
                Value::String("gemma3".into())
            } else {
                v.clone()
            }
        },
        |_, d, t, b| Some((d, t, b)),
        None,
    );
    let e = load_err(f);
    assert!(
        e.contains("gemma3") && e.contains("qwen2") && e.contains("llama"),
        "{e}"
    );
}

#[test]
fn a_missing_metadata_key_is_named() {
    let f = rebuild(
        &tiny(),
        |k, v| {
            if k == "qwen2.block_count" {
                Value::String("two".into())
            } else {
                v.clone()
            }
        },
        |_, d, t, b| Some((d, t, b)),
        None,
    );
    let e = load_err(f);
    assert!(e.contains("qwen2.block_count"), "{e}");
    assert!(Model::from_gguf(tiny()).is_ok());
}

#[test]
fn inconsistent_heads_are_rejected() {
    let f = rebuild(
        &tiny(),
        |k, v| {
            if k == "qwen2.attention.head_count_kv" {
                Value::U32(3)
            } else {
                v.clone()
            }
        },
        |_, d, t, b| Some((d, t, b)),
        None,
    );
    assert!(matches!(Model::from_gguf(f), Err(ModelError::BadConfig(_))));
}

#[test]
fn the_default_model_description_matches_the_brief() {
    let path = worker_core::fetch::resolve_model(worker_core::fetch::DEFAULT_MODEL).unwrap();
    let m = Model::load(path).unwrap();
    let c = &m.config;
    assert_eq!(
        (
            c.n_layers,
            c.d_model,
            c.d_ff,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim
        ),
        (24, 896, 4864, 14, 2, 64)
    );
    assert_eq!(
        (c.rope_base, c.rms_eps, c.context_length, c.vocab_size),
        (1_000_000.0, 1e-6, 32_768, 151_936)
    );
    let summary = m.type_summary();
    let mut types: Vec<&str> = summary.split(", ").collect();
    types.sort();
    assert_eq!(
        types,
        ["12 Q4_K", "12 Q6_K", "121 F32", "13 Q8_0", "133 Q5_0"],
        "BRIEF §1's tensor census"
    );
    assert!(!m.weights.tied_output);
    assert_eq!(m.weights.output.ty, GgmlType::Q8_0);
}
