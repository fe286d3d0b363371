//! Writes the binary seeds of the fuzz corpora into the given directory (default `fuzz/seeds`):
//! a tiny but complete synthetic model (1 layer, width 32, 300-token byte-level vocabulary;
//! it loads with `Model::from_gguf`) and prefixes of it. The text seeds (golden prompts and
//! texts, request bodies) are written by `fuzz/seeds/make_text_seeds.py`.

use std::path::PathBuf;
use worker_core::gguf::writer::GgufWriter;
use worker_core::gguf::{GgufFile, Value};
use worker_core::model::Model;
use worker_core::quant::GgmlType;
use worker_core::synth::{SynthSpec, write_synthetic};

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/seeds".into()),
    );
    let out = dir.join("gguf_parse");
    std::fs::create_dir_all(&out).unwrap();

    let q8 = GgmlType::Q8_0;
    let spec = SynthSpec {
        n_layers: 1,
        d_model: 32,
        d_ff: 64,
        n_heads: 2,
        n_kv_heads: 1,
        vocab: 300,
        context_length: 64,
        embd_type: q8,
        output_type: q8,
        matrix_type: GgmlType::Q4_0,
        high_bit: (q8, q8),
        low_bit: (GgmlType::Q5_0, GgmlType::Q4_0),
        high_bit_layers: vec![],
        ..SynthSpec::qwen2_0_5b()
    };
    let mut bytes = Vec::new();
    write_synthetic(&spec, 3, &mut bytes).unwrap();
    let file = GgufFile::from_bytes(bytes).unwrap();
    // The synthetic vocabulary's special-token ids are Qwen's (151k); point them into 300.
    let mut w = GgufWriter::new();
    for (k, v) in file.metadata() {
        let v = match k {
            "tokenizer.ggml.eos_token_id" => Value::U32(299),
            "tokenizer.ggml.bos_token_id" | "tokenizer.ggml.padding_token_id" => Value::U32(298),
            _ => v.clone(),
        };
        w.add_metadata(k, v);
    }
    for t in file.tensors() {
        w.add_tensor(&t.name, &t.dims, t.ty, file.tensor_data(t).to_vec())
            .unwrap();
    }
    let tiny = w.to_bytes().unwrap();
    let model = Model::from_gguf(GgufFile::from_bytes(tiny.clone()).unwrap()).unwrap();
    println!("tiny model: {} bytes, {}", tiny.len(), model.type_summary());
    std::fs::write(out.join("tiny-model"), &tiny).unwrap();
    for (name, n) in [("header", 24), ("half", tiny.len() / 2)] {
        std::fs::write(out.join(format!("tiny-model-{name}")), &tiny[..n]).unwrap();
    }
}
