//! Synthetic models: a GGUF file with a real model's exact shapes and tensor types but random
//! (valid) weights, so a GPU machine gets a full-size model in seconds instead of moving 491 MB.
//! Speed is the real model's; for correctness compare backends on the same synthetic file.

use crate::gguf::Value;
use crate::gguf::writer::{GgufWriteError, GgufWriter};
use crate::quant::{self, GgmlType};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use std::io::Write;

/// The shapes and types of one model to imitate.
#[derive(Debug, Clone)]
pub struct SynthSpec {
    pub n_layers: usize,
    pub d_model: usize,
    pub d_ff: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab: usize,
    pub context_length: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    pub embd_type: GgmlType,
    pub output_type: GgmlType,
    pub matrix_type: GgmlType,
    /// (attn_v, ffn_down) types of layers in `high_bit_layers`, and of the others.
    pub high_bit: (GgmlType, GgmlType),
    pub low_bit: (GgmlType, GgmlType),
    pub high_bit_layers: Vec<usize>,
}

impl SynthSpec {
    /// Qwen2.5-Coder-0.5B-Instruct Q4_K_M, the default model (layer pattern read off the file).
    pub fn qwen2_0_5b() -> Self {
        SynthSpec {
            n_layers: 24,
            d_model: 896,
            d_ff: 4864,
            n_heads: 14,
            n_kv_heads: 2,
            vocab: 151_936,
            context_length: 32_768,
            rope_base: 1_000_000.0,
            rms_eps: 1e-6,
            embd_type: GgmlType::Q5_0,
            output_type: GgmlType::Q8_0,
            matrix_type: GgmlType::Q5_0,
            high_bit: (GgmlType::Q8_0, GgmlType::Q6K),
            low_bit: (GgmlType::Q5_0, GgmlType::Q4K),
            high_bit_layers: vec![0, 1, 3, 6, 7, 8, 9, 10, 13, 16, 19, 21],
        }
    }
}

/// Special tokens of the synthetic vocabulary (the Qwen2 ids).
const SPECIALS: [(u32, &str); 3] = [
    (151_643, "<|endoftext|>"),
    (151_644, "<|im_start|>"),
    (151_645, "<|im_end|>"),
];

/// GPT-2's byte-to-character table: byte b is written as this char in byte-level BPE vocabularies.
fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = vec!['\0'; 256];
    for &b in &printable {
        chars[b as usize] = char::from_u32(b).expect("latin-1");
    }
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            chars[b as usize] = char::from_u32(256 + extra).expect("valid char");
            extra += 1;
            printable.push(b);
        }
    }
    chars
}

fn metadata(w: &mut GgufWriter, s: &SynthSpec) {
    let a = "qwen2";
    let u32v = |x: usize| Value::U32(x as u32);
    w.add_metadata("general.architecture", Value::String(a.into()));
    w.add_metadata(
        "general.name",
        Value::String("synthetic qwen2 0.5B (random weights)".into()),
    );
    w.add_metadata(format!("{a}.block_count"), u32v(s.n_layers));
    w.add_metadata(format!("{a}.context_length"), u32v(s.context_length));
    w.add_metadata(format!("{a}.embedding_length"), u32v(s.d_model));
    w.add_metadata(format!("{a}.feed_forward_length"), u32v(s.d_ff));
    w.add_metadata(format!("{a}.attention.head_count"), u32v(s.n_heads));
    w.add_metadata(format!("{a}.attention.head_count_kv"), u32v(s.n_kv_heads));
    w.add_metadata(format!("{a}.rope.freq_base"), Value::F32(s.rope_base));
    w.add_metadata(
        format!("{a}.attention.layer_norm_rms_epsilon"),
        Value::F32(s.rms_eps),
    );
    // A byte-level vocabulary: 256 byte tokens, filler tokens, and the special tokens. No merges,
    // so text encodes byte by byte: enough for benchmarks and backend comparisons.
    let bytes = byte_chars();
    let mut tokens = Vec::with_capacity(s.vocab);
    let mut types = Vec::with_capacity(s.vocab);
    for id in 0..s.vocab as u32 {
        let (text, ty) = match SPECIALS.iter().find(|(sid, _)| *sid == id) {
            Some((_, t)) => (t.to_string(), 3),
            None if id < 256 => (bytes[id as usize].to_string(), 1),
            None => (format!("<synth_{id}>"), 4),
        };
        tokens.push(Value::String(text));
        types.push(Value::I32(ty));
    }
    w.add_metadata("tokenizer.ggml.model", Value::String("gpt2".into()));
    w.add_metadata("tokenizer.ggml.pre", Value::String("qwen2".into()));
    w.add_metadata("tokenizer.ggml.tokens", Value::Array(tokens));
    w.add_metadata("tokenizer.ggml.token_type", Value::Array(types));
    w.add_metadata("tokenizer.ggml.merges", Value::Array(Vec::new()));
    w.add_metadata("tokenizer.ggml.eos_token_id", Value::U32(151_645));
    w.add_metadata("tokenizer.ggml.bos_token_id", Value::U32(151_643));
    w.add_metadata("tokenizer.ggml.padding_token_id", Value::U32(151_643));
    w.add_metadata("tokenizer.ggml.add_bos_token", Value::Bool(false));
}

/// (name, dims, type) of every tensor, in the real file's order within a layer.
fn tensor_list(s: &SynthSpec) -> Vec<(String, Vec<u64>, GgmlType)> {
    let (d, f, q, kv) = (
        s.d_model as u64,
        s.d_ff as u64,
        (s.n_heads * (s.d_model / s.n_heads)) as u64,
        (s.n_kv_heads * (s.d_model / s.n_heads)) as u64,
    );
    let mut t = vec![
        (
            "token_embd.weight".to_string(),
            vec![d, s.vocab as u64],
            s.embd_type,
        ),
        ("output_norm.weight".to_string(), vec![d], GgmlType::F32),
        (
            "output.weight".to_string(),
            vec![d, s.vocab as u64],
            s.output_type,
        ),
    ];
    for i in 0..s.n_layers {
        let (v_ty, down_ty) = if s.high_bit_layers.contains(&i) {
            s.high_bit
        } else {
            s.low_bit
        };
        let n = |x: &str| format!("blk.{i}.{x}");
        t.extend([
            (n("attn_norm.weight"), vec![d], GgmlType::F32),
            (n("attn_q.weight"), vec![d, q], s.matrix_type),
            (n("attn_q.bias"), vec![q], GgmlType::F32),
            (n("attn_k.weight"), vec![d, kv], s.matrix_type),
            (n("attn_k.bias"), vec![kv], GgmlType::F32),
            (n("attn_v.weight"), vec![d, kv], v_ty),
            (n("attn_v.bias"), vec![kv], GgmlType::F32),
            (n("attn_output.weight"), vec![q, d], s.matrix_type),
            (n("ffn_norm.weight"), vec![d], GgmlType::F32),
            (n("ffn_gate.weight"), vec![d, f], s.matrix_type),
            (n("ffn_up.weight"), vec![d, f], s.matrix_type),
            (n("ffn_down.weight"), vec![f, d], down_ty),
        ]);
    }
    t
}

/// Random tensor contents: norms near 1, biases small, matrices valid random blocks.
fn tensor_bytes(name: &str, dims: &[u64], ty: GgmlType, seed: u64) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: u64 = dims.iter().product();
    if ty == GgmlType::F32 {
        let (center, spread) = if name.ends_with("norm.weight") {
            (1.0f32, 0.2f32)
        } else {
            (0.0, 0.05)
        };
        return (0..n)
            .flat_map(|_| (center + rng.random_range(-spread..=spread)).to_le_bytes())
            .collect();
    }
    quant::random_blocks(ty, (n / ty.block_elements() as u64) as usize, &mut rng)
}

/// Writes a synthetic model to `out`; the same seed gives the same file.
pub fn write_synthetic(
    spec: &SynthSpec,
    seed: u64,
    out: impl Write,
) -> Result<u64, GgufWriteError> {
    let mut w = GgufWriter::new();
    metadata(&mut w, spec);
    let list = tensor_list(spec);
    let data: Vec<Vec<u8>> = list
        .par_iter()
        .enumerate()
        .map(|(i, (name, dims, ty))| tensor_bytes(name, dims, *ty, seed ^ (i as u64) << 20))
        .collect();
    for ((name, dims, ty), bytes) in list.into_iter().zip(data) {
        w.add_tensor(name, &dims, ty, bytes)?;
    }
    w.write_to(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection() {
        let c = byte_chars();
        let mut sorted = c.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
        assert_eq!(c[b'A' as usize], 'A');
        assert_eq!(c[b' ' as usize], 'Ġ', "GPT-2 writes a space as Ġ");
    }

    #[test]
    fn small_synthetic_model_loads_and_matches_its_spec() {
        let spec = SynthSpec {
            n_layers: 2,
            d_model: 64,
            d_ff: 256,
            n_heads: 4,
            n_kv_heads: 2,
            vocab: 151_936,
            high_bit_layers: vec![1],
            ..SynthSpec::qwen2_0_5b()
        };
        let mut bytes = Vec::new();
        write_synthetic(&spec, 7, &mut bytes).unwrap();
        let model =
            crate::model::Model::from_gguf(crate::gguf::GgufFile::from_bytes(bytes).unwrap())
                .unwrap();
        assert_eq!(model.config.n_layers, 2);
        assert_eq!(model.config.head_dim, 16);
        assert_eq!(model.weights.layers[1].wv.ty, GgmlType::Q8_0);
        assert_eq!(model.weights.layers[0].w_down.ty, GgmlType::Q4K);
        let tok = crate::tokenizer::Tokenizer::from_gguf(&model.file).unwrap();
        assert_eq!(tok.encode("<|im_end|>", true).unwrap(), vec![151_645]);
        assert_eq!(
            tok.decode(&tok.encode("hi there", true).unwrap(), false)
                .unwrap(),
            "hi there"
        );
    }
}
