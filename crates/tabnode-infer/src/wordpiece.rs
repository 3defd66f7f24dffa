//! BERT's WordPiece tokenizer, read from a Hugging Face `tokenizer.json`
//! (`BertNormalizer`, `BertPreTokenizer`, `WordPiece`, `[CLS] … [SEP]`):
//! the ids of the `tokenizers` library that sentence-transformers runs,
//! checked on the fixture texts (`tests/minilm.rs`).
//!
//! Hand-written rather than the `tokenizers` crate: its wasm build is
//! marked unstable and brings a regex engine and a suffix-array crate in C++
//! by default, while BERT's rules fit in this file (the `regex` crate
//! already here gives the Unicode categories, `unicode-normalization` the
//! decomposition accents are stripped with).
//!
//! The steps, in the library's order: added tokens (`[CLS]`, `[MASK]`, …)
//! are matched in the raw text first, longest first, and kept whole; the
//! rest is cleaned (NUL, U+FFFD and other control characters dropped,
//! whitespace made a space), CJK ideographs spaced apart, accents stripped
//! (NFD, combining marks dropped) when lower-casing, lower-cased; split at
//! whitespace and around each punctuation character; each word cut into the
//! longest vocabulary pieces from its start (`##` marks a continuation), a
//! word of more than 100 characters or with no split being `[UNK]`.

use std::collections::HashMap;

use regex::Regex;
use serde::Deserialize;
use unicode_normalization::UnicodeNormalization;

/// Why a `tokenizer.json` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WordPieceError {
    /// Not JSON of the expected shape.
    #[error("tokenizer.json: {0}")]
    Json(String),
    /// Not a WordPiece model with a BERT normaliser.
    #[error("tokenizer.json: not a BERT WordPiece tokenizer ({0})")]
    NotWordPiece(String),
    /// A token the tokenizer needs is not in its vocabulary.
    #[error("tokenizer.json: no {0} token")]
    MissingToken(&'static str),
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    added_tokens: Vec<Added>,
    normalizer: Option<Normalizer>,
    model: Model,
}

#[derive(Deserialize)]
struct Added {
    id: u32,
    content: String,
    #[serde(default)]
    normalized: bool,
}

#[derive(Deserialize)]
struct Normalizer {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "yes")]
    clean_text: bool,
    #[serde(default = "yes")]
    handle_chinese_chars: bool,
    strip_accents: Option<bool>,
    #[serde(default = "yes")]
    lowercase: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct Model {
    #[serde(rename = "type")]
    kind: String,
    vocab: HashMap<String, u32>,
    unk_token: String,
    #[serde(default = "prefix")]
    continuing_subword_prefix: String,
    #[serde(default = "max_chars")]
    max_input_chars_per_word: usize,
}

fn prefix() -> String {
    "##".into()
}

fn max_chars() -> usize {
    100
}

/// A text's ids: `[CLS]`, its pieces (cut to fit), `[SEP]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The ids the model reads.
    pub ids: Vec<u32>,
    /// Pieces cut off the end to fit the limit (0: the whole text).
    pub truncated: usize,
}

/// The tokenizer.
#[derive(Debug, Clone)]
pub struct WordPiece {
    vocab: HashMap<String, u32>,
    /// Added tokens matched in the raw text, longest first.
    added: Vec<(String, u32)>,
    unk: u32,
    cls: u32,
    sep: u32,
    prefix: String,
    max_chars: usize,
    clean_text: bool,
    chinese: bool,
    strip_accents: bool,
    lowercase: bool,
    control: Regex,
    punctuation: Regex,
    marks: Regex,
}

impl WordPiece {
    /// Reads a Hugging Face `tokenizer.json`.
    ///
    /// # Errors
    /// [`WordPieceError`] when it is not JSON, not a BERT WordPiece
    /// tokenizer, or lacks `[UNK]`, `[CLS]` or `[SEP]`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, WordPieceError> {
        let f: File =
            serde_json::from_slice(bytes).map_err(|e| WordPieceError::Json(e.to_string()))?;
        if f.model.kind != "WordPiece" {
            return Err(WordPieceError::NotWordPiece(format!(
                "model {}",
                f.model.kind
            )));
        }
        let n = f
            .normalizer
            .ok_or_else(|| WordPieceError::NotWordPiece("no normalizer".into()))?;
        if n.kind != "BertNormalizer" {
            return Err(WordPieceError::NotWordPiece(format!(
                "normalizer {}",
                n.kind
            )));
        }
        let id = |t: &str, name| {
            f.model
                .vocab
                .get(t)
                .copied()
                .ok_or(WordPieceError::MissingToken(name))
        };
        let unk = id(&f.model.unk_token, "unknown")?;
        let (cls, sep) = (id("[CLS]", "[CLS]")?, id("[SEP]", "[SEP]")?);
        // Tokens that go through the normaliser are matched after it, as
        // words; BERT's are all raw.
        let mut added: Vec<(String, u32)> = f
            .added_tokens
            .into_iter()
            .filter(|a| !a.normalized && !a.content.is_empty())
            .map(|a| (a.content, a.id))
            .collect();
        added.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        let re = |p: &str| Regex::new(p).map_err(|e| WordPieceError::Json(e.to_string()));
        Ok(Self {
            vocab: f.model.vocab,
            added,
            unk,
            cls,
            sep,
            prefix: f.model.continuing_subword_prefix,
            max_chars: f.model.max_input_chars_per_word,
            clean_text: n.clean_text,
            chinese: n.handle_chinese_chars,
            // Unset: stripped when lower-casing, as BERT's uncased models.
            strip_accents: n.strip_accents.unwrap_or(n.lowercase),
            lowercase: n.lowercase,
            // Unicode's "Other" categories (Cc, Cf, Cs, Co, Cn).
            control: re(r"^\p{C}$")?,
            punctuation: re(r"^\p{P}$")?,
            marks: re(r"^\p{Mn}$")?,
        })
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// `[CLS]`, the pieces of `text`, `[SEP]`: at most `max_tokens` ids in
    /// all (the pieces past them cut off, and counted).
    pub fn encode(&self, text: &str, max_tokens: usize) -> Encoded {
        let mut pieces = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            // The earliest added token, the longest where several start at
            // the same place.
            let hit = self
                .added
                .iter()
                .filter_map(|(t, id)| rest.find(t.as_str()).map(|at| (at, t.len(), *id)))
                .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            match hit {
                Some((at, len, id)) => {
                    self.words(&rest[..at], &mut pieces);
                    pieces.push(id);
                    rest = &rest[at + len..];
                }
                None => {
                    self.words(rest, &mut pieces);
                    rest = "";
                }
            }
        }
        let room = max_tokens.saturating_sub(2);
        let truncated = pieces.len().saturating_sub(room);
        pieces.truncate(room);
        let mut ids = Vec::with_capacity(pieces.len() + 2);
        ids.push(self.cls);
        ids.extend(pieces);
        ids.push(self.sep);
        Encoded { ids, truncated }
    }

    /// `[CLS]`, `pieces` (token ids as [`WordPiece::encode`] gives them
    /// between the two, e.g. OpenAI's token-array input), `[SEP]`: at most
    /// `max_tokens` ids, as `encode` cuts them.
    pub fn wrap(&self, pieces: &[u32], max_tokens: usize) -> Encoded {
        let room = max_tokens.saturating_sub(2);
        let kept = &pieces[..pieces.len().min(room)];
        let mut ids = Vec::with_capacity(kept.len() + 2);
        ids.push(self.cls);
        ids.extend_from_slice(kept);
        ids.push(self.sep);
        Encoded {
            ids,
            truncated: pieces.len() - kept.len(),
        }
    }

    fn is(re: &Regex, c: char) -> bool {
        let mut buf = [0u8; 4];
        re.is_match(c.encode_utf8(&mut buf))
    }

    /// The normaliser's text.
    fn normalize(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            if self.clean_text {
                // Tab, newline and return are spaces; other control
                // characters go (U+000B, U+000C and U+0085 too, though
                // whitespace); the remaining whitespace is a space.
                if matches!(c, '\t' | '\n' | '\r') {
                    out.push(' ');
                    continue;
                }
                if c == '\0' || c == '\u{fffd}' || Self::is(&self.control, c) {
                    continue;
                }
                if c.is_whitespace() {
                    out.push(' ');
                    continue;
                }
            }
            if self.chinese && is_chinese(c) {
                out.push(' ');
                out.push(c);
                out.push(' ');
            } else {
                out.push(c);
            }
        }
        if self.strip_accents {
            out = out.nfd().filter(|&c| !Self::is(&self.marks, c)).collect();
        }
        if self.lowercase {
            out = out.to_lowercase();
        }
        out
    }

    /// The pieces of a stretch of text without added tokens.
    fn words(&self, text: &str, out: &mut Vec<u32>) {
        let text = self.normalize(text);
        let mut word = String::new();
        for c in text.chars() {
            if c.is_whitespace() {
                self.word(&word, out);
                word.clear();
            } else if c.is_ascii_punctuation() || Self::is(&self.punctuation, c) {
                self.word(&word, out);
                word.clear();
                self.word(c.encode_utf8(&mut [0u8; 4]), out);
            } else {
                word.push(c);
            }
        }
        self.word(&word, out);
    }

    /// One word's pieces: the longest vocabulary entry from the start, then
    /// from where it ended (with the continuation prefix); `[UNK]` for the
    /// whole word when a stretch has none, or the word is too long.
    fn word(&self, word: &str, out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if word.chars().count() > self.max_chars {
            out.push(self.unk);
            return;
        }
        let at = out.len();
        let mut start = 0;
        let mut piece = String::new();
        while start < word.len() {
            let mut end = word.len();
            let mut found = None;
            while end > start {
                piece.clear();
                if start > 0 {
                    piece.push_str(&self.prefix);
                }
                piece.push_str(&word[start..end]);
                if let Some(&id) = self.vocab.get(&piece) {
                    found = Some(id);
                    break;
                }
                // The previous character boundary.
                end -= 1;
                while !word.is_char_boundary(end) {
                    end -= 1;
                }
            }
            match found {
                Some(id) => {
                    out.push(id);
                    start = end;
                }
                None => {
                    out.truncate(at);
                    out.push(self.unk);
                    return;
                }
            }
        }
    }
}

/// The CJK ideograph blocks BERT spaces apart.
fn is_chinese(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B920..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> WordPiece {
        let vocab: Vec<&str> = vec![
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "a", "cafe",
            ",", "!", "北", "京",
        ];
        let vocab: serde_json::Map<String, serde_json::Value> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| ((*t).to_owned(), serde_json::Value::from(i)))
            .collect();
        let json = serde_json::json!({
            "added_tokens": [{"id": 4, "content": "[MASK]", "normalized": false}],
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
            "model": {"type": "WordPiece", "vocab": vocab, "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100}
        });
        WordPiece::from_json(json.to_string().as_bytes()).expect("tokenizer")
    }

    #[test]
    fn pieces_accents_cjk_added_tokens_and_truncation() {
        let t = tiny();
        assert_eq!(
            t.encode("Unaffable, CAFÉ!", 64).ids,
            [2, 5, 6, 7, 10, 9, 11, 3]
        );
        assert_eq!(t.encode("北京x", 64).ids, [2, 12, 13, 1, 3]);
        assert_eq!(t.encode("a[MASK]a", 64).ids, [2, 8, 4, 8, 3]);
        // A word with a stretch the vocabulary lacks is one [UNK].
        assert_eq!(t.encode("unaffx", 64).ids, [2, 1, 3]);
        assert_eq!(t.encode(&"a".repeat(101), 64).ids, [2, 1, 3]);
        assert_eq!(t.encode("\u{0}\u{7}  \t", 64).ids, [2, 3]);
        let long = t.encode(&"a ".repeat(10), 6);
        assert_eq!(long.ids, [2, 8, 8, 8, 8, 3]);
        assert_eq!(long.truncated, 6);
        assert_eq!(t.wrap(&[8; 10], 6), long);
        assert_eq!(t.wrap(&[], 6).ids, [2, 3]);
    }

    #[test]
    fn other_tokenizers_are_refused() {
        assert!(matches!(
            WordPiece::from_json(b"{"),
            Err(WordPieceError::Json(_))
        ));
        let bpe = serde_json::json!({"normalizer": null, "model": {"type": "BPE", "vocab": {}, "unk_token": "x"}});
        assert!(matches!(
            WordPiece::from_json(bpe.to_string().as_bytes()),
            Err(WordPieceError::NotWordPiece(_))
        ));
    }
}
