//! Pre-tokenizer regexes by `tokenizer.ggml.pre`, as llama.cpp (llama-vocab.cpp) applies them.
//!
//! llama.cpp runs each regex of a list in turn over the pieces the previous one produced,
//! keeping both the matches and the text between them ("Isolated" in HF terms). The same
//! list as a sequence of HF `Split(Isolated)` pre-tokenizers reproduces its splits.

/// GPT-2's original pattern (also the second stage of the starcoder/smollm family).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// Qwen2's pattern from its tokenizer.json. Unlike GPT-2 it puts each digit on its own and
/// keeps one leading non-letter with a word; the contractions are case-insensitive.
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3's pattern: like Qwen2's but numbers in groups of up to three digits.
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How one `tokenizer.ggml.pre` value tokenizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PreTokenizerSpec {
    /// Regexes applied one after another, each splitting the previous pieces.
    pub regexes: &'static [&'static str],
    /// A whole pre-token that is already in the vocabulary is emitted as is, without merging
    /// (llama.cpp sets this for Llama 3 vocabularies).
    pub ignore_merges: bool,
    /// Whether a BOS token is added when the file has no `tokenizer.ggml.add_bos_token`.
    pub default_add_bos: bool,
}

/// The names llama.cpp accepts for each supported family; `None` for anything else.
pub(crate) fn spec_for(pre: &str) -> Option<PreTokenizerSpec> {
    let spec = |regexes, ignore_merges, default_add_bos| PreTokenizerSpec {
        regexes,
        ignore_merges,
        default_add_bos,
    };
    match pre {
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" => Some(spec(&[QWEN2], false, false)),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            Some(spec(&[r"\p{N}", GPT2], false, false))
        }
        "gpt-2" | "gpt2" | "phi-2" | "mpt" | "olmo" | "jais" | "trillion" => {
            Some(spec(&[GPT2], false, false))
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => {
            Some(spec(&[LLAMA3], true, true))
        }
        _ => None,
    }
}

/// The names accepted by [`spec_for`], for error messages.
pub(crate) const SUPPORTED: &str = "qwen2, deepseek-r1-qwen, stablelm2, smollm, starcoder, refact, command-r, codeshell, exaone, minerva-7b, gpt-2, gpt2, phi-2, mpt, olmo, jais, trillion, llama3, llama-v3, llama-bpe, falcon3, pixtral";
