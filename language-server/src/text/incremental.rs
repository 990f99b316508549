//! Streaming detokenisation: token ids in, text deltas out, never a broken character.

use super::error::Result;
use super::tokenizer::Tokenizer;

/// Turns generated token ids into text deltas as they arrive.
///
/// Byte-level BPE splits multi-byte characters (emoji, CJK) over several tokens; decoding a prefix
/// that ends inside a character gives U+FFFD. The decoder keeps a small window of ids
/// (`prefix_offset..`) and emits the new text only once the window's decode no longer ends in
/// U+FFFD, so the concatenated deltas equal the one-shot decode of all ids. Decoding a window
/// rather than a single token also keeps decoders that treat the first token specially
/// (SentencePiece's leading space) correct.
#[derive(Debug, Clone)]
pub struct IncrementalDecoder {
    tokenizer: Tokenizer,
    skip_special: bool,
    ids: Vec<u32>,
    /// Start of the window decoded for context.
    prefix_offset: usize,
    /// End of what has been emitted.
    read_offset: usize,
}

impl IncrementalDecoder {
    /// A decoder with nothing decoded yet; `skip_special` drops special tokens from the text.
    pub fn new(tokenizer: Tokenizer, skip_special: bool) -> Self {
        Self {
            tokenizer,
            skip_special,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Adds one token id; returns the text that became complete (often empty while a character
    /// is still incomplete).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = self.decode(self.prefix_offset, self.read_offset)?;
        let full = self.decode(self.prefix_offset, self.ids.len())?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            let delta = new_suffix(&prefix, &full).to_owned();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Adds several ids; returns the concatenated deltas.
    pub fn push_all(&mut self, ids: &[u32]) -> Result<String> {
        let mut out = String::new();
        for &id in ids {
            out.push_str(&self.push(id)?);
        }
        Ok(out)
    }

    /// The text still held back (an incomplete character decodes to U+FFFD here). After this,
    /// everything pushed so far has been emitted.
    pub fn finish(&mut self) -> Result<String> {
        let prefix = self.decode(self.prefix_offset, self.read_offset)?;
        let full = self.decode(self.prefix_offset, self.ids.len())?;
        let delta = new_suffix(&prefix, &full).to_owned();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(delta)
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Whether text is held back waiting for more ids.
    pub fn has_pending(&self) -> bool {
        self.read_offset < self.ids.len()
    }

    fn decode(&self, start: usize, end: usize) -> Result<String> {
        self.tokenizer
            .decode(&self.ids[start..end], self.skip_special)
    }
}

/// The part of `full` after `prefix`. Decoding is prefix-stable for the decoders dvd meets; if it
/// is not, the text after the longest common prefix (on a character boundary) is returned.
fn new_suffix<'a>(prefix: &str, full: &'a str) -> &'a str {
    if let Some(rest) = full.strip_prefix(prefix) {
        return rest;
    }
    let common = prefix
        .char_indices()
        .zip(full.chars())
        .find(|((_, a), b)| a != b)
        .map_or(prefix.len().min(full.len()), |((i, _), _)| i);
    full.get(common..).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::new_suffix;

    #[test]
    fn suffix_after_divergence_is_on_a_char_boundary() {
        assert_eq!(new_suffix("ab", "abc"), "c");
        assert_eq!(new_suffix("a\u{FFFD}", "aé!"), "é!");
        assert_eq!(new_suffix("", "x"), "x");
    }
}
