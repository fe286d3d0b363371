//! The raw bytes behind every token id, precomputed once so decoding is a table lookup.
//!
//! Byte-level BPE vocabularies (GPT-2 style) store each byte as a printable character
//! (space becomes `Ġ`, newline `Ċ`, ...). Reversing that map per token up front makes
//! [`super::Tokenizer::decode`] and the streaming decoder O(bytes) with no per-call work on
//! strings, and lets a token that ends mid-character be handled at the byte level.

use super::TokenAttr;

/// GPT-2's `bytes_to_unicode`, reversed: index = char code point, value = the byte it encodes.
/// Printable bytes map to themselves; the other 68 bytes (0..=32, 127..=160, 173) map in order
/// to U+0100.. so every byte has a visible, non-whitespace character.
fn char_to_byte_table() -> [Option<u8>; 324] {
    let mut table = [None; 324];
    let mut next = 256usize;
    for b in 0..=255u8 {
        let printable = matches!(b, 33..=126 | 161..=172 | 174..=255);
        if printable {
            table[b as usize] = Some(b);
        } else {
            table[next] = Some(b);
            next += 1;
        }
    }
    table
}

/// All token pieces in one flat buffer: piece `i` is `bytes[offsets[i]..offsets[i + 1]]`.
#[derive(Debug)]
pub(crate) struct Pieces {
    bytes: Vec<u8>,
    offsets: Vec<u32>,
    attrs: Vec<TokenAttr>,
}

impl Pieces {
    /// Builds the table. Normal tokens are reversed through the byte map; special tokens
    /// (control, user-defined, unknown, unused) are kept as their literal text, which is what
    /// llama.cpp and HF print for them. A character outside the byte map (a malformed vocab)
    /// falls back to its own UTF-8 bytes rather than failing the whole model.
    pub(crate) fn build(tokens: &[&str], attrs: Vec<TokenAttr>) -> Self {
        let table = char_to_byte_table();
        let total: usize = tokens.iter().map(|t| t.len()).sum();
        let mut bytes = Vec::with_capacity(total);
        let mut offsets = Vec::with_capacity(tokens.len() + 1);
        offsets.push(0u32);
        for (tok, attr) in tokens.iter().zip(&attrs) {
            if matches!(attr, TokenAttr::Normal | TokenAttr::Byte) {
                for c in tok.chars() {
                    match table.get(c as usize).copied().flatten() {
                        Some(b) => bytes.push(b),
                        None => {
                            let mut buf = [0u8; 4];
                            bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                }
            } else {
                bytes.extend_from_slice(tok.as_bytes());
            }
            // Vocab bytes are bounded by the GGUF file size, far below 4 GiB in practice; saturate
            // rather than wrap if a forged file ever got there.
            offsets.push(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
        }
        Pieces {
            bytes,
            offsets,
            attrs,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.attrs.len()
    }

    /// The bytes of token `id`, or `None` when out of range.
    pub(crate) fn get(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        let start = *self.offsets.get(i)? as usize;
        let end = *self.offsets.get(i + 1)? as usize;
        self.bytes.get(start..end)
    }

    pub(crate) fn attr(&self, id: u32) -> Option<TokenAttr> {
        self.attrs.get(id as usize).copied()
    }

    /// The bytes to print for `id`: empty for special tokens when `skip_special` is set.
    pub(crate) fn output(&self, id: u32, skip_special: bool) -> Option<&[u8]> {
        let attr = self.attr(id)?;
        if skip_special && attr.is_hidden_when_skipping() {
            return Some(&[]);
        }
        self.get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection_over_256_bytes() {
        let table = char_to_byte_table();
        let mut seen = [false; 256];
        for b in table.iter().flatten() {
            assert!(!seen[*b as usize], "byte {b} mapped twice");
            seen[*b as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        // The well-known anchors of GPT-2's table.
        assert_eq!(table['Ġ' as usize], Some(b' '));
        assert_eq!(table['Ċ' as usize], Some(b'\n'));
        assert_eq!(table['ĉ' as usize], Some(b'\t'));
        assert_eq!(table['!' as usize], Some(b'!'));
        assert_eq!(table[' ' as usize], None);
    }

    #[test]
    fn special_tokens_keep_their_text_and_can_be_hidden() {
        let p = Pieces::build(
            &["ĠHello", "<|im_end|>", "Ã¤"],
            vec![TokenAttr::Normal, TokenAttr::Control, TokenAttr::Normal],
        );
        assert_eq!(p.get(0), Some(&b" Hello"[..]));
        assert_eq!(p.get(1), Some(&b"<|im_end|>"[..]));
        assert_eq!(p.get(2), Some("ä".as_bytes()));
        assert_eq!(p.output(1, true), Some(&b""[..]));
        assert_eq!(p.get(3), None);
    }
}
