//! The caption vocabulary: words from the catalogue captions plus four special tokens.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::labels::rank_by_frequency;

pub const PAD: i64 = 0;
pub const UNK: i64 = 1;
pub const START: i64 = 2;
pub const END: i64 = 3;
const SPECIALS: [&str; 4] = ["<pad>", "<unk>", "<start>", "<end>"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vocab {
    pub words: Vec<String>,
    #[serde(skip)]
    index: HashMap<String, i64>,
}

/// Lower-cases and splits on anything that is not a letter, digit, `-` or `'`.
pub fn tokenize(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '\''))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

impl Vocab {
    /// Words seen at least `min_count` times, by descending frequency (ties by word).
    pub fn build<'a>(captions: impl IntoIterator<Item = &'a str>, min_count: usize) -> Self {
        let tokens: Vec<String> = captions.into_iter().flat_map(tokenize).collect();
        let mut words: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
        words.extend(rank_by_frequency(
            tokens.iter().map(String::as_str),
            min_count,
        ));
        Self::from_words(words)
    }

    pub fn from_words(words: Vec<String>) -> Self {
        let index = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), i as i64))
            .collect();
        Self { words, index }
    }

    pub fn reindexed(self) -> Self {
        Self::from_words(self.words)
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Token ids of a caption, without start and end tokens; unknown words map to `<unk>`.
    pub fn encode(&self, caption: &str) -> Vec<i64> {
        tokenize(caption)
            .iter()
            .map(|w| self.index.get(w).copied().unwrap_or(UNK))
            .collect()
    }

    /// Words of a token sequence, stopping at `<end>` and skipping other specials.
    pub fn decode(&self, tokens: &[i64]) -> String {
        tokens
            .iter()
            .take_while(|&&t| t != END)
            .filter(|&&t| t > END)
            .filter_map(|&t| self.words.get(usize::try_from(t).ok()?))
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_encodes_and_decodes() {
        let vocab = Vocab::build(
            ["Red T-Shirt by Norda", "red dress by Okto", "blue dress"],
            2,
        );
        assert_eq!(&vocab.words[..4], &SPECIALS.map(String::from));
        assert!(
            vocab.words.contains(&"dress".to_string())
                && !vocab.words.contains(&"blue".to_string())
        );
        let tokens = vocab.encode("red dress by Velour");
        assert_eq!(tokens[3], UNK);
        assert_eq!(
            vocab.decode(&[tokens[0], tokens[1], END, tokens[2]]),
            "red dress"
        );
    }
}
