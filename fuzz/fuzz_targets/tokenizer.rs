//! The tokenizer on arbitrary input, with the real default model's vocabulary when it is in the
//! cache (`$WORKER_FUZZ_MODEL` names another GGUF), else a synthetic full-size byte-level one.
//!
//! Input: byte 0 is a mode (bit 0: parse special tokens, bit 1: skip special tokens on output,
//! bit 2: the rest is token ids, 3 bytes little-endian each, else it is text).
//! - text: encode → decode gives the text back; streaming the ids gives the same text.
//! - ids: `StreamDecoder` never holds more than 3 bytes, its output concatenated equals
//!   `decode`, and ids outside the vocabulary are errors.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use worker_core::gguf::GgufFile;
use worker_core::synth::{SynthSpec, write_synthetic};
use worker_core::tokenizer::Tokenizer;

fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let real = std::env::var_os("WORKER_FUZZ_MODEL")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                worker_core::fetch::Fetcher::new().model_path(worker_core::fetch::default_model())
            });
        if real.exists() {
            eprintln!("tokenizer fuzz: vocabulary of {}", real.display());
            return Tokenizer::from_gguf(&GgufFile::open(&real).unwrap()).unwrap();
        }
        eprintln!("tokenizer fuzz: synthetic byte-level vocabulary");
        let spec = SynthSpec {
            n_layers: 1,
            d_model: 32,
            d_ff: 64,
            n_heads: 2,
            n_kv_heads: 1,
            high_bit_layers: vec![],
            embd_type: worker_core::quant::GgmlType::Q8_0,
            output_type: worker_core::quant::GgmlType::Q8_0,
            matrix_type: worker_core::quant::GgmlType::Q8_0,
            high_bit: (
                worker_core::quant::GgmlType::Q8_0,
                worker_core::quant::GgmlType::Q8_0,
            ),
            low_bit: (
                worker_core::quant::GgmlType::Q8_0,
                worker_core::quant::GgmlType::Q8_0,
            ),
            ..SynthSpec::qwen2_0_5b()
        };
        let mut bytes = Vec::new();
        write_synthetic(&spec, 1, &mut bytes).unwrap();
        Tokenizer::from_gguf(&GgufFile::from_bytes(bytes).unwrap()).unwrap()
    })
}

fn stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> Result<String, ()> {
    let mut d = tok.stream_decoder(skip_special);
    let mut out = String::new();
    for &id in ids {
        out.push_str(&d.push(id).map_err(|_| ())?);
        assert!(d.pending_bytes() <= 3, "{} bytes held", d.pending_bytes());
    }
    out.push_str(&d.finish());
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (parse_special, skip_special, as_ids) = (mode & 1 != 0, mode & 2 != 0, mode & 4 != 0);
    let tok = tokenizer();
    if as_ids {
        let n = tok.vocab_size() as u32;
        // A few ids past the end, to check they are refused.
        let ids: Vec<u32> = rest
            .chunks_exact(3)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], 0]) % (n + 8))
            .collect();
        let whole = tok.decode(&ids, skip_special);
        let streamed = stream(tok, &ids, skip_special);
        assert_eq!(whole.is_ok(), ids.iter().all(|&i| i < n));
        assert_eq!(whole.is_ok(), streamed.is_ok());
        if let (Ok(w), Ok(s)) = (whole, streamed) {
            assert_eq!(w, s);
        }
    } else {
        let text = String::from_utf8_lossy(rest);
        let ids = tok.encode(&text, parse_special).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        assert_eq!(stream(tok, &ids, false).unwrap(), text);
        // Skipping special tokens only removes text.
        assert!(tok.decode(&ids, true).unwrap().len() <= text.len());
    }
});
