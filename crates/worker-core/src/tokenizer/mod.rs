//! Byte-level BPE tokenizer built from a GGUF file's vocabulary, matching llama.cpp.
//!
//! The BPE merging and the regex pre-tokenizer come from the `tokenizers` crate (a BPE model
//! from `tokenizer.ggml.tokens` + `tokenizer.ggml.merges`, a sequence of `Split(Isolated)`
//! regexes chosen by `tokenizer.ggml.pre`, then `ByteLevel` without its own regex). Two parts
//! are done here instead, because llama.cpp's behaviour differs from what `tokenizers` offers
//! per call:
//!
//! - Special tokens are split out before BPE, longest first, exactly like llama.cpp's
//!   `tokenizer_st_partition`: with `parse_special = false` control tokens such as
//!   `<|im_start|>` stay plain text, while user-defined tokens (`<tool_call>`) are still
//!   matched. `tokenizers` only has a tokenizer-wide switch for that.
//! - Decoding uses a precomputed table of each token's raw bytes (the GPT-2 byte map reversed
//!   once at load), so decoding and streaming are a lookup per token.
//!
//! No normalizer runs (llama.cpp applies none; Qwen2's HF tokenizer.json has NFC, which only
//! matters for decomposed Unicode input).

pub mod chat;
mod pieces;
mod pretok;
mod stream;

pub use chat::{ChatError, ChatMessage, ChatTemplate};
pub use stream::StreamDecoder;

use crate::gguf::{GgufError, GgufFile};
use pieces::Pieces;
use std::sync::Arc;
use tokenizers::SplitDelimiterBehavior;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};

/// Texts that end a generation wherever they appear in a vocabulary (llama.cpp's list), on top
/// of the ids named by `tokenizer.ggml.eos_token_id` / `eot_token_id` / `eom_token_id`.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
];

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("reading tokenizer metadata: {0}")]
    Gguf(#[from] GgufError),
    #[error(
        "tokenizer.ggml.model {0:?} is not supported: worker-orcd supports byte-level BPE vocabularies (\"gpt2\") only"
    )]
    UnsupportedModel(String),
    #[error("tokenizer.ggml.pre {pre:?} is not supported; supported pre-tokenizers: {supported}")]
    UnsupportedPre {
        pre: String,
        supported: &'static str,
    },
    #[error("invalid tokenizer vocabulary: {0}")]
    BadVocab(String),
    #[error("building the BPE tokenizer failed: {0}")]
    Build(String),
    #[error("tokenizing failed: {0}")]
    Encode(String),
    #[error("token id {id} is out of range (the vocabulary has {vocab_size} tokens)")]
    IdOutOfRange { id: u32, vocab_size: usize },
}

/// What kind of token an id is (GGUF `tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAttr {
    Normal,
    Unknown,
    /// Control tokens (`<|im_start|>`, `<|endoftext|>`): only produced from text when special
    /// tokens are parsed, hidden when decoding with `skip_special`.
    Control,
    /// User-defined tokens (`<tool_call>`): always matched as a whole, printed as text.
    UserDefined,
    /// Padding slots (`[PAD151665]`): never produced by encoding.
    Unused,
    Byte,
}

impl TokenAttr {
    /// GGUF token type codes (llama.cpp's `llama_token_type`). 0 ("undefined") and anything
    /// unknown is treated as a normal token, as llama.cpp does for BPE vocabularies.
    fn from_gguf(code: i64) -> Self {
        match code {
            2 => TokenAttr::Unknown,
            3 => TokenAttr::Control,
            4 => TokenAttr::UserDefined,
            5 => TokenAttr::Unused,
            6 => TokenAttr::Byte,
            _ => TokenAttr::Normal,
        }
    }

    /// Control and user-defined tokens: the ones never split by BPE.
    pub fn is_special(self) -> bool {
        matches!(self, TokenAttr::Control | TokenAttr::UserDefined)
    }

    /// Tokens that `skip_special` decoding leaves out (user-defined ones stay, as in HF).
    fn is_hidden_when_skipping(self) -> bool {
        matches!(
            self,
            TokenAttr::Control | TokenAttr::Unknown | TokenAttr::Unused
        )
    }
}

/// A piece of input after special-token partitioning.
enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

/// A special token's text, id and kind, in llama.cpp's matching order (longest first).
#[derive(Debug)]
struct SpecialToken {
    text: String,
    id: u32,
    attr: TokenAttr,
}

/// The tokenizer of one model. Immutable after construction and `Send + Sync`: share it
/// between threads behind an `Arc`.
pub struct Tokenizer {
    bpe: tokenizers::Tokenizer,
    pieces: Arc<Pieces>,
    specials: Vec<SpecialToken>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    eog: Vec<u32>,
    pre: String,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("pre", &self.pre)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("eog", &self.eog)
            .finish()
    }
}

/// Reads an optional token id key and checks it against the vocabulary size.
fn opt_token_id(gguf: &GgufFile, key: &str, n_vocab: usize) -> Result<Option<u32>, TokenizerError> {
    match gguf.opt(key, GgufFile::get_u64)? {
        None => Ok(None),
        Some(id) if usize::try_from(id).is_ok_and(|i| i < n_vocab) => Ok(Some(id as u32)),
        Some(id) => Err(TokenizerError::BadVocab(format!(
            "{key} = {id} is outside the vocabulary of {n_vocab} tokens"
        ))),
    }
}

/// Splits a GGUF merge line "a b" into its two parts. llama.cpp searches for the separating
/// space from the second character on, so a part that itself starts with a space survives.
fn split_merge(line: &str) -> Option<(&str, &str)> {
    let first_len = line.chars().next()?.len_utf8();
    let pos = line[first_len..].find(' ')? + first_len;
    Some((&line[..pos], &line[pos + 1..]))
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, TokenizerError> {
        let model = gguf.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(model.to_owned()));
        }
        let pre = gguf
            .opt("tokenizer.ggml.pre", GgufFile::get_str)?
            .ok_or_else(|| TokenizerError::UnsupportedPre {
                pre: "(absent: the file has no tokenizer.ggml.pre)".to_owned(),
                supported: pretok::SUPPORTED,
            })?;
        let spec = pretok::spec_for(pre).ok_or_else(|| TokenizerError::UnsupportedPre {
            pre: pre.to_owned(),
            supported: pretok::SUPPORTED,
        })?;

        let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
        let n_vocab = tokens.len();
        if n_vocab == 0 || u32::try_from(n_vocab).is_err() {
            return Err(TokenizerError::BadVocab(format!("{n_vocab} tokens")));
        }
        let mut attrs: Vec<TokenAttr> =
            match gguf.opt("tokenizer.ggml.token_type", GgufFile::get_int_array)? {
                None => vec![TokenAttr::Normal; n_vocab],
                Some(types) if types.len() == n_vocab => {
                    types.into_iter().map(TokenAttr::from_gguf).collect()
                }
                Some(types) => {
                    return Err(TokenizerError::BadVocab(format!(
                        "tokenizer.ggml.token_type has {} entries for {n_vocab} tokens",
                        types.len()
                    )));
                }
            };

        let bos = opt_token_id(gguf, "tokenizer.ggml.bos_token_id", n_vocab)?;
        let eos = opt_token_id(gguf, "tokenizer.ggml.eos_token_id", n_vocab)?;
        let eot = opt_token_id(gguf, "tokenizer.ggml.eot_token_id", n_vocab)?;
        let eom = opt_token_id(gguf, "tokenizer.ggml.eom_token_id", n_vocab)?;
        let add_bos = gguf
            .opt("tokenizer.ggml.add_bos_token", GgufFile::get_bool)?
            .unwrap_or(spec.default_add_bos);
        if add_bos && bos.is_none() {
            return Err(TokenizerError::BadVocab(
                "tokenizer.ggml.add_bos_token is set but tokenizer.ggml.bos_token_id is missing"
                    .to_owned(),
            ));
        }

        // End-of-generation tokens: the ids the metadata names, plus every token whose text is
        // a known end marker. Like llama.cpp, such tokens are made control tokens so they are
        // parsed as one token and hidden when special tokens are skipped.
        let mut eog: Vec<u32> = [eos, eot, eom].into_iter().flatten().collect();
        for (id, text) in tokens.iter().enumerate() {
            if EOG_TEXTS.contains(text) {
                eog.push(id as u32);
                if attrs[id] == TokenAttr::Normal {
                    attrs[id] = TokenAttr::Control;
                }
            }
        }
        eog.sort_unstable();
        eog.dedup();

        let mut specials: Vec<SpecialToken> = tokens
            .iter()
            .zip(&attrs)
            .enumerate()
            .filter(|(_, (text, attr))| {
                !text.is_empty()
                    && matches!(
                        attr,
                        TokenAttr::Control | TokenAttr::UserDefined | TokenAttr::Unknown
                    )
            })
            .map(|(id, (text, attr))| SpecialToken {
                text: (*text).to_owned(),
                id: id as u32,
                attr: *attr,
            })
            .collect();
        specials.sort_by(|a, b| b.text.len().cmp(&a.text.len()).then(a.id.cmp(&b.id)));

        // Building the BPE merge table and compiling the Unicode regexes each take a few
        // hundred milliseconds; they are independent, so start-up overlaps them.
        let (model, (pre_tokenizer, pieces)) = rayon::join(
            || Self::build_bpe(gguf, &tokens, spec),
            || {
                (
                    Self::build_pre_tokenizer(spec),
                    Pieces::build(&tokens, attrs),
                )
            },
        );
        let mut bpe = tokenizers::Tokenizer::new(model?);
        bpe.with_pre_tokenizer(Some(pre_tokenizer?));
        let pieces = Arc::new(pieces);
        Ok(Tokenizer {
            bpe,
            pieces,
            specials,
            bos,
            eos,
            add_bos,
            eog,
            pre: pre.to_owned(),
        })
    }

    fn build_bpe(
        gguf: &GgufFile,
        tokens: &[&str],
        spec: pretok::PreTokenizerSpec,
    ) -> Result<BPE, TokenizerError> {
        // A later duplicate text overrides an earlier one, as in llama.cpp's token_to_id map.
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, t)| ((*t).to_owned(), id as u32))
            .collect();
        let merge_lines = gguf
            .opt("tokenizer.ggml.merges", GgufFile::get_str_array)?
            .unwrap_or_default();
        let mut merges = Vec::with_capacity(merge_lines.len());
        let mut skipped = 0usize;
        let mut joined = String::new();
        for line in merge_lines {
            let Some((a, b)) = split_merge(line) else {
                return Err(TokenizerError::BadVocab(format!(
                    "merge {line:?} has no separating space"
                )));
            };
            // A merge whose parts or result are not tokens can never fire; `tokenizers` would
            // reject the whole vocabulary for it, llama.cpp just never uses it.
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            if vocab.contains_key(a) && vocab.contains_key(b) && vocab.contains_key(joined.as_str())
            {
                merges.push((a.to_owned(), b.to_owned()));
            } else {
                skipped += 1;
            }
        }
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "tokenizer merges referring to tokens not in the vocabulary were ignored"
            );
        }
        BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(spec.ignore_merges)
            .build()
            .map_err(|e| TokenizerError::Build(e.to_string()))
    }

    /// The regex splits of `spec` as `Split(Isolated)` stages, then the byte-to-character map.
    fn build_pre_tokenizer(
        spec: pretok::PreTokenizerSpec,
    ) -> Result<PreTokenizerWrapper, TokenizerError> {
        let mut stages = Vec::with_capacity(spec.regexes.len() + 1);
        for re in spec.regexes {
            let split = Split::new(
                SplitPattern::Regex((*re).to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| TokenizerError::Build(format!("pre-tokenizer regex {re:?}: {e}")))?;
            stages.push(PreTokenizerWrapper::Split(split));
        }
        // The regexes above already split the text: ByteLevel only maps bytes to characters.
        stages.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
            false, false, false,
        )));

        Ok(PreTokenizerWrapper::Sequence(Sequence::new(stages)))
    }

    /// Number of tokens in the vocabulary (may be smaller than the output layer's rows).
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether [`Tokenizer::encode`] puts a BOS token first.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// All end-of-generation ids, sorted: eos, eot, eom and tokens such as `<|im_end|>` and
    /// `<|endoftext|>`.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// The value of `tokenizer.ggml.pre` this tokenizer was built for (e.g. "qwen2").
    pub fn pre_tokenizer(&self) -> &str {
        &self.pre
    }

    /// Control or user-defined token. Out-of-range ids are not special.
    pub fn is_special(&self, id: u32) -> bool {
        self.pieces.attr(id).is_some_and(TokenAttr::is_special)
    }

    pub fn token_attr(&self, id: u32) -> Option<TokenAttr> {
        self.pieces.attr(id)
    }

    /// Errors when `id` is not a token of this vocabulary.
    pub fn check_id(&self, id: u32) -> Result<(), TokenizerError> {
        if (id as usize) < self.vocab_size() {
            Ok(())
        } else {
            Err(TokenizerError::IdOutOfRange {
                id,
                vocab_size: self.vocab_size(),
            })
        }
    }

    /// The id of a token given its vocabulary text (e.g. "<|im_end|>"), if there is one.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.bpe.token_to_id(text)
    }

    /// The raw bytes of one token (special tokens give their text). A byte-level token may be
    /// part of a multi-byte character, so this is bytes, not a string.
    pub fn token_to_piece(&self, id: u32) -> Result<&[u8], TokenizerError> {
        self.pieces.get(id).ok_or(TokenizerError::IdOutOfRange {
            id,
            vocab_size: self.vocab_size(),
        })
    }

    /// Tokenizes `text`. With `parse_special`, control tokens written in the text
    /// (`<|im_start|>`) become their ids; without it they are tokenized as plain text, like
    /// llama.cpp's `parse_special = false`. A BOS token is put first only when the model asks
    /// for one ([`Tokenizer::add_bos`]) and the text did not already start with it.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        for fragment in self.partition(text, parse_special) {
            match fragment {
                Fragment::Token(id) => ids.push(id),
                Fragment::Text(t) => {
                    let enc = self
                        .bpe
                        .encode_fast(t, false)
                        .map_err(|e| TokenizerError::Encode(e.to_string()))?;
                    ids.extend_from_slice(enc.get_ids());
                }
            }
        }
        if let Some(bos) = self
            .bos
            .filter(|&b| self.add_bos && ids.first() != Some(&b))
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Splits out special tokens, longest first, as llama.cpp's `tokenizer_st_partition` does.
    /// User-defined tokens are matched even without `parse_special`.
    fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut fragments = vec![Fragment::Text(text)];
        for special in &self.specials {
            if !parse_special && special.attr != TokenAttr::UserDefined {
                continue;
            }
            let occurs = fragments
                .iter()
                .any(|f| matches!(f, Fragment::Text(t) if t.contains(special.text.as_str())));
            if !occurs {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(mut rest) = fragment else {
                    next.push(fragment);
                    continue;
                };
                while let Some(pos) = rest.find(special.text.as_str()) {
                    if pos > 0 {
                        next.push(Fragment::Text(&rest[..pos]));
                    }
                    next.push(Fragment::Token(special.id));
                    rest = &rest[pos + special.text.len()..];
                }
                if !rest.is_empty() {
                    next.push(Fragment::Text(rest));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// Decodes ids to text. Invalid UTF-8 (a sequence cut mid-character) becomes U+FFFD.
    /// With `skip_special`, control tokens (`<|im_end|>`) are left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let piece =
                self.pieces
                    .output(id, skip_special)
                    .ok_or(TokenizerError::IdOutOfRange {
                        id,
                        vocab_size: self.vocab_size(),
                    })?;
            bytes.extend_from_slice(piece);
        }
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// A decoder for one generated sequence, emitting text as soon as it is complete UTF-8.
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder {
        StreamDecoder::new(self, skip_special)
    }

    pub(crate) fn pieces(&self) -> &Arc<Pieces> {
        &self.pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_lines_split_at_the_first_inner_space() {
        assert_eq!(split_merge("Ġ t"), Some(("Ġ", "t")));
        assert_eq!(split_merge("ĠĠ ĠĠ"), Some(("ĠĠ", "ĠĠ")));
        assert_eq!(split_merge("  x"), Some((" ", "x")));
        assert_eq!(split_merge("ab"), None);
        assert_eq!(split_merge(""), None);
    }

    #[test]
    fn every_pre_tokenizer_regex_compiles() {
        for pre in ["qwen2", "smollm", "gpt2", "llama-bpe"] {
            let spec = pretok::spec_for(pre).expect(pre);
            for re in spec.regexes {
                Split::new(
                    SplitPattern::Regex((*re).to_owned()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .unwrap_or_else(|e| panic!("{pre}: {re}: {e}"));
            }
        }
        assert!(pretok::spec_for("no-such-pre").is_none());
    }
}
