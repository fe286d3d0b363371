//! Property tests of the real default model's tokenizer (the CI-sized version of the
//! `tokenizer` fuzz target in `fuzz/`): encode → decode round-trips any Unicode text, with and
//! without special-token parsing; `StreamDecoder` over arbitrary ids (weighted towards single-byte
//! tokens, which split multi-byte characters) emits the same text as `decode`, holds at most 3
//! bytes, and ids outside the vocabulary are errors, never panics.

use proptest::prelude::*;
use std::sync::{Arc, OnceLock};
use worker_core::gguf::GgufFile;
use worker_core::tokenizer::Tokenizer;

struct Vocab {
    tok: Tokenizer,
    /// Ids whose piece is one byte (the byte-level fallback tokens).
    byte_ids: Vec<u32>,
    /// Control and other special tokens.
    special_ids: Vec<u32>,
}

fn vocab() -> Arc<Vocab> {
    static V: OnceLock<Arc<Vocab>> = OnceLock::new();
    V.get_or_init(|| {
        let path = worker_core::fetch::resolve_model(worker_core::fetch::DEFAULT_MODEL)
            .expect("the default model");
        let tok = Tokenizer::from_gguf(&GgufFile::open(path).expect("gguf")).expect("tokenizer");
        let n = tok.vocab_size() as u32;
        let byte_ids = (0..n)
            .filter(|&id| tok.token_to_piece(id).is_ok_and(|p| p.len() == 1))
            .collect::<Vec<_>>();
        let special_ids = (0..n).filter(|&id| tok.is_special(id)).collect::<Vec<_>>();
        assert_eq!(
            byte_ids.len(),
            256,
            "a byte-level vocabulary has 256 byte tokens"
        );
        assert!(!special_ids.is_empty());
        Arc::new(Vocab {
            tok,
            byte_ids,
            special_ids,
        })
    })
    .clone()
}

/// An id: a byte token (half the time), a special token, or anything in the vocabulary.
fn id_strategy() -> impl Strategy<Value = u32> {
    let v = vocab();
    let n = v.tok.vocab_size() as u32;
    let (b, s) = (v.byte_ids.clone(), v.special_ids.clone());
    prop_oneof![
        4 => proptest::sample::select(b),
        1 => proptest::sample::select(s),
        3 => 0..n,
    ]
}

fn stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> Result<String, TestCaseError> {
    let mut d = tok.stream_decoder(skip_special);
    let mut out = String::new();
    for &id in ids {
        let piece = d.push(id).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(d.pending_bytes() <= 3, "{} bytes held", d.pending_bytes());
        // Held bytes are only ever the start of one unfinished character.
        out.push_str(&piece);
    }
    out.push_str(&d.finish());
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn stream_decoder_concatenation_equals_decode(
        ids in proptest::collection::vec(id_strategy(), 0..48),
        skip_special in any::<bool>(),
    ) {
        let v = vocab();
        let whole = v.tok.decode(&ids, skip_special).unwrap();
        prop_assert_eq!(stream(&v.tok, &ids, skip_special)?, whole);
    }

    #[test]
    fn encode_decode_round_trips_any_text(s in any::<String>(), parse_special in any::<bool>()) {
        let v = vocab();
        let ids = v.tok.encode(&s, parse_special).unwrap();
        prop_assert_eq!(&v.tok.decode(&ids, false).unwrap(), &s);
        // Streaming the same ids gives the same text.
        prop_assert_eq!(stream(&v.tok, &ids, false)?, s);
    }

    /// Text with special-token spellings mixed in (whole, cut, or nested in other text).
    #[test]
    fn special_token_text_round_trips(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("<|im_start|>".to_string()),
                Just("<|im_end|>".to_string()),
                Just("<|endoftext|>".to_string()),
                Just("<|im_".to_string()),
                Just("|>".to_string()),
                ".{0,6}",
            ],
            0..8,
        ),
        parse_special in any::<bool>(),
    ) {
        let v = vocab();
        let s: String = parts.concat();
        let ids = v.tok.encode(&s, parse_special).unwrap();
        prop_assert_eq!(v.tok.decode(&ids, false).unwrap(), s.clone());
        if !parse_special {
            // Control tokens written as text stay text.
            prop_assert!(ids.iter().all(|&id| !v.tok.is_special(id) || !s.contains("<|")));
        }
    }

    #[test]
    fn ids_outside_the_vocabulary_are_errors(extra in 0u32..1_000_000, at in 0usize..8) {
        let v = vocab();
        let bad = v.tok.vocab_size() as u32 + extra;
        let mut ids = vec![v.byte_ids[0]; 8];
        ids[at] = bad;
        prop_assert!(v.tok.decode(&ids, false).is_err());
        let mut d = v.tok.stream_decoder(false);
        let results: Vec<bool> = ids.iter().map(|&id| d.push(id).is_ok()).collect();
        prop_assert_eq!(results.iter().filter(|ok| !**ok).count(), 1);
    }
}
