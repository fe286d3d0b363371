//! Incremental detokenization for streaming generated text.

use super::pieces::Pieces;
use super::{Tokenizer, TokenizerError};
use std::sync::Arc;

/// Turns generated ids into text one token at a time.
///
/// A byte-level token can end in the middle of a UTF-8 character (emoji and CJK characters
/// are often split over two or three tokens), so the decoder holds the incomplete tail and
/// emits only whole characters. Each push costs O(bytes of that token): the sequence is never
/// re-decoded. The concatenation of everything pushed and finished equals
/// [`Tokenizer::decode`] of the same ids.
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    pieces: Arc<Pieces>,
    pending: Vec<u8>,
    skip_special: bool,
}

impl StreamDecoder {
    /// `skip_special` hides control tokens (`<|im_end|>`) as [`Tokenizer::decode`] does.
    pub fn new(tokenizer: &Tokenizer, skip_special: bool) -> Self {
        StreamDecoder {
            pieces: Arc::clone(tokenizer.pieces()),
            pending: Vec::with_capacity(8),
            skip_special,
        }
    }

    /// Adds one token and returns the text that is now complete (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        let piece =
            self.pieces
                .output(id, self.skip_special)
                .ok_or(TokenizerError::IdOutOfRange {
                    id,
                    vocab_size: self.pieces.len(),
                })?;
        self.pending.extend_from_slice(piece);
        Ok(self.take_complete())
    }

    /// Flushes whatever is held back; an unfinished character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    /// Bytes held back waiting for the rest of a character (at most 3 after a push).
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Takes the longest prefix of the pending bytes that can be decided now. Bytes that can
    /// never become valid are replaced by U+FFFD right away (as `from_utf8_lossy` would);
    /// only a truncated-but-valid tail waits for the next token.
    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut start = 0;
        while start < self.pending.len() {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                }
                Err(e) => {
                    let valid_end = start + e.valid_up_to();
                    // The prefix is valid UTF-8 by construction, so this borrows, never replaces.
                    out.push_str(&String::from_utf8_lossy(&self.pending[start..valid_end]));
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start = valid_end + bad;
                        }
                        None => {
                            start = valid_end;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }
}
