//! The GGUF reader and the model loader on arbitrary bytes: every input must give a value or
//! an error, never a panic, an out-of-bounds read, a hang or an allocation beyond the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use worker_core::gguf::GgufFile;
use worker_core::model::Model;
use worker_core::tokenizer::Tokenizer;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    // Every accessor on whatever parsed.
    for (k, v) in file.metadata() {
        std::hint::black_box((k.len(), format!("{v:?}").len()));
    }
    for t in file.tensors() {
        let bytes = file.tensor_data(t);
        assert_eq!(bytes.len() as u64, t.size_bytes, "{}", t.name);
    }
    let _ = file.get_str_array("tokenizer.ggml.tokens");
    let _ = file.get_int_array("tokenizer.ggml.token_type");
    let _ = Tokenizer::from_gguf(&file);
    if let Ok(model) = Model::from_gguf(file) {
        std::hint::black_box((model.type_summary(), model.weight_bytes()));
    }
});
