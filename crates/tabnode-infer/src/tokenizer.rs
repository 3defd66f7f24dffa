//! The tokenizers stored in a GGUF file, encoding and decoding exactly as
//! llama.cpp does: byte-level BPE (`tokenizer.ggml.model = "gpt2"`: SmolLM2,
//! Qwen2.5) and SentencePiece (`"llama"`: Gemma 3).
//!
//! Encoding: the vocabulary's user-defined tokens (Gemma's runs of spaces
//! and line breaks, HTML tags) are cut out of the text first, and its
//! control tokens too when `parse_special` is set, longest first, as
//! llama.cpp partitions a text. For BPE the rest is pre-tokenized (for the `smollm`
//! pre-tokenizer: every `\p{N}` alone, then the GPT-2 pattern
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`;
//! for `qwen2` llama.cpp's pattern with case-insensitive contractions,
//! single digits and line breaks kept with the whitespace before them),
//! each piece's bytes are mapped to GPT-2's printable byte alphabet, and the
//! merges are applied lowest rank first, leftmost first. For SentencePiece
//! spaces become `▁` (and a space is put first where the file asks), the
//! text starts as its characters, and the adjacent pair whose joined text is
//! the highest-scoring token is merged (leftmost on ties) until no pair is a
//! token; a character that is no token is spelled with byte tokens
//! (`<0x41>`).
//!
//! Chat prompts come from the model's own Jinja template (rendered by
//! `minijinja`); message contents are encoded without specials, so a
//! message cannot forge a turn.
//!
//! Decoding is to bytes: a token can end in the middle of a UTF-8 character.
//! [`StreamDecoder`] turns a stream of tokens into text, holding back an
//! incomplete character until it is complete and replacing invalid sequences
//! with U+FFFD.

use std::collections::HashMap;

use regex::Regex;

use crate::gguf::{Gguf, Value};

/// Why a tokenizer cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenizerError {
    /// A required metadata entry is missing or malformed.
    #[error("tokenizer metadata {0} is missing or malformed")]
    Metadata(&'static str),
    /// Neither byte-level BPE nor SentencePiece.
    #[error("tokenizer model {0:?} is not supported (\"gpt2\" or \"llama\")")]
    Model(String),
    /// A pre-tokenizer this implementation does not know.
    #[error("pre-tokenizer {0:?} is not supported")]
    PreTokenizer(String),
    /// A merge line that is not two symbols.
    #[error("merge {0:?} is malformed")]
    Merge(String),
    /// A token string that uses characters outside the byte alphabet.
    #[error("token {0} is not in the byte-level alphabet")]
    Token(u32),
    /// The model has no chat template (a base model: completion only).
    #[error("the model has no chat template (a completion model)")]
    NoChatTemplate,
    /// The model's chat template does not parse or does not render.
    #[error("the model's chat template failed: {0}")]
    ChatTemplate(String),
    /// A message role the chat templates do not know.
    #[error("message role {0:?} is not one of system, user, assistant, tool")]
    Role(String),
}

/// GPT-2's map from bytes to printable characters.
fn byte_alphabet() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        map[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).unwrap_or('\u{FFFD}');
            next += 1;
            c
        };
    }
    map
}

/// A chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// The tokenizer.
#[derive(Debug)]
pub struct Tokenizer {
    /// Each token's bytes.
    token_bytes: Vec<Vec<u8>>,
    /// How text between special tokens becomes tokens.
    model: Model,
    /// Control and user-defined tokens, longest first (then by id), and
    /// whether each is cut out of any text (user-defined) or only where
    /// specials are parsed (control).
    specials: Vec<Special>,
    /// Beginning-of-sequence token.
    pub bos: u32,
    /// Whether a prompt starts with [`Tokenizer::bos`]
    /// (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    /// End-of-sequence token.
    pub eos: u32,
    /// The Jinja chat template from the file's metadata, parsed once at
    /// load (as [`CHAT`]) in an environment set as chat templates expect.
    chat_template: Option<minijinja::Environment<'static>>,
}

/// A token cut out of the text before the model's own encoding.
#[derive(Debug)]
struct Special {
    text: String,
    id: u32,
    /// User-defined: cut out even where specials are not parsed.
    always: bool,
}

/// Text between specials to tokens.
#[derive(Debug)]
enum Model {
    Bpe(Bpe),
    Spm(Spm),
}

/// Byte-level BPE.
#[derive(Debug)]
struct Bpe {
    /// The merges by the ids of their two parts: `(rank, merged id)`. A
    /// merge whose parts or result are not tokens of the vocabulary could
    /// only make a piece no token spells; it is left out.
    ranks: HashMap<(u32, u32), (u32, u32)>,
    /// Each byte's token (its character of the byte alphabet), if any.
    byte_ids: [Option<u32>; 256],
    digits: Option<Regex>,
    words: Regex,
    /// The pattern has qwen2's `\s*[\r\n]+` before `\s+(?!\S)`: a
    /// whitespace run ending in a line break keeps all of it.
    line_breaks: bool,
}

/// SentencePiece (llama.cpp's `llm_tokenizer_spm`).
#[derive(Debug)]
struct Spm {
    /// Every token's text (`▁` for spaces) to its id; the last of equal
    /// texts wins, as in llama.cpp's map.
    ids: HashMap<Box<str>, u32>,
    /// Each token's score: the higher, the earlier its pair merges.
    scores: Vec<f32>,
    /// Each byte's `<0xXX>` token.
    byte_ids: [Option<u32>; 256],
    /// A space before text that starts the input or follows a special.
    add_space_prefix: bool,
}

impl Bpe {
    fn encode(&self, text: &str, out: &mut Vec<u32>) {
        let mut pieces = Vec::new();
        match &self.digits {
            Some(re) => {
                let mut last = 0;
                for m in re.find_iter(text) {
                    if m.start() > last {
                        pieces.push(&text[last..m.start()]);
                    }
                    pieces.push(m.as_str());
                    last = m.end();
                }
                if last < text.len() {
                    pieces.push(&text[last..]);
                }
            }
            None => pieces.push(text),
        }
        for piece in pieces {
            let mut pos = 0;
            while pos < piece.len() {
                let Some(m) = self.words.find_at(piece, pos) else {
                    break;
                };
                let mut end = m.end();
                let s = m.as_str();
                // `\s+(?!\S)`: a run of whitespace before a word gives its
                // last character to that word.
                let broken = self.line_breaks && s.ends_with(['\r', '\n']);
                if s.chars().all(char::is_whitespace)
                    && !broken
                    && end < piece.len()
                    && s.chars().count() > 1
                {
                    end -= s.chars().last().map_or(0, char::len_utf8);
                }
                if m.start() > pos {
                    // Not reachable with this pattern (its classes cover
                    // every character), kept so no text is ever dropped.
                    self.bpe(&piece[pos..m.start()], out);
                }
                self.bpe(&piece[m.start()..end], out);
                pos = end;
            }
        }
    }

    fn bpe(&self, word: &str, out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        // Token ids from the start: each byte's token, then the
        // lowest-ranked adjacent pair merged (leftmost first) until none
        // is a merge.
        let mut symbols: Vec<u32> = word
            .bytes()
            .filter_map(|b| self.byte_ids[b as usize])
            .collect();
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| self.ranks.get(&(w[0], w[1])).map(|&(r, id)| (r, i, id)))
                .min();
            let Some((_, i, merged)) = best else { break };
            symbols[i] = merged;
            symbols.remove(i + 1);
        }
        out.extend(symbols);
    }
}

impl Spm {
    /// SentencePiece on one piece of text (llama.cpp's `llm_tokenizer_spm`).
    fn encode(&self, text: &str, after_special: bool, out: &mut Vec<u32>) {
        let mut escaped = String::with_capacity(text.len() + 3);
        if self.add_space_prefix && after_special {
            escaped.push('\u{2581}');
        }
        for c in text.chars() {
            escaped.push(if c == ' ' { '\u{2581}' } else { c });
        }
        let text = escaped.as_str();
        if text.is_empty() {
            return;
        }
        // Symbols: byte ranges linked both ways; a merged-away one is empty.
        struct Symbol {
            at: usize,
            len: usize,
            prev: Option<usize>,
            next: Option<usize>,
        }
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (at, c) in text.char_indices() {
            let i = symbols.len();
            symbols.push(Symbol {
                at,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: None,
            });
            if let Some(p) = i.checked_sub(1) {
                symbols[p].next = Some(i);
            }
        }
        // Candidate merges: the highest score first, then the leftmost.
        #[derive(PartialEq)]
        struct Bigram {
            score: f32,
            left: usize,
            right: usize,
            len: usize,
        }
        impl Eq for Bigram {}
        impl Ord for Bigram {
            fn cmp(&self, o: &Self) -> std::cmp::Ordering {
                self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
            }
        }
        impl PartialOrd for Bigram {
            fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(o))
            }
        }
        let mut queue = std::collections::BinaryHeap::new();
        let bigram = |symbols: &[Symbol], left: Option<usize>, right: Option<usize>| {
            let (l, r) = (left?, right?);
            let (a, b) = (&symbols[l], &symbols[r]);
            let joined = text.get(a.at..b.at + b.len)?;
            let id = *self.ids.get(joined)?;
            Some(Bigram {
                score: self.scores.get(id as usize).copied().unwrap_or(f32::MIN),
                left: l,
                right: r,
                len: joined.len(),
            })
        };
        for i in 1..symbols.len() {
            queue.extend(bigram(&symbols, Some(i - 1), Some(i)));
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (&symbols[b.left], &symbols[b.right]);
            // Skip a pair one of whose symbols has changed since.
            if l.len == 0 || r.len == 0 || l.len + r.len != b.len {
                continue;
            }
            let next = r.next;
            symbols[b.left].len += symbols[b.right].len;
            symbols[b.right].len = 0;
            symbols[b.left].next = next;
            if let Some(n) = next {
                symbols[n].prev = Some(b.left);
            }
            let prev = symbols[b.left].prev;
            queue.extend(bigram(&symbols, prev, Some(b.left)));
            queue.extend(bigram(&symbols, Some(b.left), next));
        }
        let mut i = Some(0);
        while let Some(at) = i {
            let sym = &symbols[at];
            let piece = &text[sym.at..sym.at + sym.len];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                // A character no token spells: its bytes' tokens.
                None => out.extend(piece.bytes().filter_map(|b| self.byte_ids[b as usize])),
            }
            i = sym.next;
        }
    }
}

/// A piece of text, or a special token cut out of it.
enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

/// GGUF token types (llama.cpp's `llama_token_type`).
const NORMAL: u64 = 1;
const UNKNOWN: u64 = 2;
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;
const BYTE: u64 = 6;

/// The byte a SentencePiece byte token (`<0x0A>`) stands for.
fn byte_token(s: &str) -> Option<u8> {
    let hex = s.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The chat template's name in its environment.
const CHAT: &str = "chat";

/// A Jinja environment set as Hugging Face's chat templates expect
/// (`trim_blocks`, `lstrip_blocks`, `raise_exception`) holding `source`.
fn template_env(source: &str) -> Result<minijinja::Environment<'static>, minijinja::Error> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template_owned(CHAT, source.to_string())?;
    Ok(env)
}

/// Stands for message `i`'s content while a template renders: private-use
/// characters that no template writes, so the rendered frame can be split
/// into the template's own text and the messages'.
fn content_marker(i: usize) -> String {
    format!("\u{E000}{i}\u{E001}")
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF file's metadata.
    ///
    /// # Errors
    /// Missing or malformed metadata, or a model / pre-tokenizer this
    /// implementation does not support.
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Self, TokenizerError> {
        let model = g
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .ok_or(TokenizerError::Metadata("tokenizer.ggml.model"))?;
        let tokens = g
            .get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .ok_or(TokenizerError::Metadata("tokenizer.ggml.tokens"))?;
        let types = g.get("tokenizer.ggml.token_type").and_then(Value::as_array);
        let type_of = |id: usize| {
            types
                .and_then(|ty| ty.get(id))
                .and_then(Value::as_u64)
                .unwrap_or(NORMAL)
        };
        let texts = tokens
            .iter()
            .map(|t| {
                t.as_str()
                    .ok_or(TokenizerError::Metadata("tokenizer.ggml.tokens"))
            })
            .collect::<Result<Vec<&str>, _>>()?;
        let mut specials: Vec<Special> = texts
            .iter()
            .enumerate()
            .filter(|&(id, _)| matches!(type_of(id), CONTROL | USER_DEFINED))
            .filter(|(_, text)| !text.is_empty())
            .map(|(id, text)| Special {
                text: (*text).to_string(),
                id: id as u32,
                always: type_of(id) == USER_DEFINED,
            })
            .collect();
        specials.sort_by(|a, b| b.text.len().cmp(&a.text.len()).then(a.id.cmp(&b.id)));
        let (model, token_bytes) = match model {
            "gpt2" => Self::bpe_model(g, &texts, &type_of)?,
            "llama" => Self::spm_model(g, &texts, &type_of)?,
            other => return Err(TokenizerError::Model(other.into())),
        };
        let id = |key: &'static str| {
            g.get(key)
                .and_then(Value::as_u64)
                .map(|v| v as u32)
                .ok_or(TokenizerError::Metadata(key))
        };
        // A template that does not parse fails the load, not a request.
        let chat_template = g
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
            .map(template_env)
            .transpose()
            .map_err(|e| TokenizerError::ChatTemplate(e.to_string()))?;
        Ok(Self {
            token_bytes,
            model,
            specials,
            bos: id("tokenizer.ggml.bos_token_id")?,
            add_bos: matches!(
                g.get("tokenizer.ggml.add_bos_token"),
                Some(Value::Bool(true))
            ),
            eos: id("tokenizer.ggml.eos_token_id")?,
            chat_template,
        })
    }

    /// Byte-level BPE's merges, pre-tokenizer and token bytes.
    fn bpe_model(
        g: &Gguf<'_>,
        texts: &[&str],
        type_of: &dyn Fn(usize) -> u64,
    ) -> Result<(Model, Vec<Vec<u8>>), TokenizerError> {
        let pre = g
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let re = |pattern: &str| {
            Regex::new(pattern).map_err(|_| TokenizerError::PreTokenizer(pre.into()))
        };
        // GPT-2's pattern less its `\s+(?!\S)` (the `regex` crate has no
        // look-ahead; `encode_text` applies it).
        let gpt2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";
        let (digits, words, line_breaks) = match pre {
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" => {
                (Some(re(r"\p{N}")?), re(gpt2)?, false)
            }
            "gpt-2" | "gpt2" | "default" | "mpt" | "olmo" | "jais" => (None, re(gpt2)?, false),
            // llama.cpp's qwen2 pattern, likewise less `\s+(?!\S)`.
            "qwen2" => (
                None,
                re(
                    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+",
                )?,
                true,
            ),
            other => return Err(TokenizerError::PreTokenizer(other.into())),
        };
        let merges = g
            .get("tokenizer.ggml.merges")
            .and_then(Value::as_array)
            .ok_or(TokenizerError::Metadata("tokenizer.ggml.merges"))?;
        let byte_map = byte_alphabet();
        let unmap: HashMap<char, u8> = byte_map
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let mut vocab = HashMap::with_capacity(texts.len());
        let mut token_bytes = Vec::with_capacity(texts.len());
        for (id, &s) in texts.iter().enumerate() {
            if matches!(type_of(id), CONTROL | USER_DEFINED) {
                token_bytes.push(s.as_bytes().to_vec());
            } else {
                let bytes = s
                    .chars()
                    .map(|c| unmap.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .ok_or(TokenizerError::Token(id as u32))?;
                token_bytes.push(bytes);
            }
            vocab.insert(s, id as u32);
        }
        let mut ranks = HashMap::with_capacity(merges.len());
        let mut joined = String::new();
        for (rank, m) in merges.iter().enumerate() {
            let m = m
                .as_str()
                .ok_or(TokenizerError::Metadata("tokenizer.ggml.merges"))?;
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| TokenizerError::Merge(m.into()))?;
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            if let (Some(&a), Some(&b), Some(&ab)) =
                (vocab.get(a), vocab.get(b), vocab.get(joined.as_str()))
            {
                // A pair listed twice keeps its first rank (as llama.cpp's
                // `emplace`).
                ranks.entry((a, b)).or_insert((rank as u32, ab));
            }
        }
        let byte_ids =
            std::array::from_fn(|b| vocab.get(byte_map[b].to_string().as_str()).copied());
        let bpe = Bpe {
            ranks,
            byte_ids,
            digits,
            words,
            line_breaks,
        };
        Ok((Model::Bpe(bpe), token_bytes))
    }

    /// SentencePiece's pieces, scores and token bytes (`▁` as a space,
    /// `<0xXX>` as its byte).
    fn spm_model(
        g: &Gguf<'_>,
        texts: &[&str],
        type_of: &dyn Fn(usize) -> u64,
    ) -> Result<(Model, Vec<Vec<u8>>), TokenizerError> {
        let scores = g
            .get("tokenizer.ggml.scores")
            .and_then(Value::as_array)
            .ok_or(TokenizerError::Metadata("tokenizer.ggml.scores"))?
            .iter()
            .map(|v| v.as_f64().map(|f| f as f32))
            .collect::<Option<Vec<f32>>>()
            .filter(|s| s.len() == texts.len())
            .ok_or(TokenizerError::Metadata("tokenizer.ggml.scores"))?;
        let mut ids = HashMap::with_capacity(texts.len());
        let mut byte_ids = [None; 256];
        let mut token_bytes = Vec::with_capacity(texts.len());
        for (id, &s) in texts.iter().enumerate() {
            let bytes = match (type_of(id), byte_token(s)) {
                (BYTE, Some(b)) => {
                    byte_ids[b as usize] = Some(id as u32);
                    vec![b]
                }
                (NORMAL | UNKNOWN, _) => s.replace('\u{2581}', " ").into_bytes(),
                _ => s.as_bytes().to_vec(),
            };
            token_bytes.push(bytes);
            ids.insert(Box::from(s), id as u32);
        }
        let spm = Spm {
            ids,
            scores,
            byte_ids,
            add_space_prefix: matches!(
                g.get("tokenizer.ggml.add_space_prefix"),
                Some(Value::Bool(true)) | None
            ),
        };
        Ok((Model::Spm(spm), token_bytes))
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// The bytes of one token (empty for an unknown id).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Encodes `text`; with `parse_special`, control tokens written in the
    /// text (`<|im_start|>`) become their ids (user-defined ones always do).
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        // SentencePiece's space prefix goes before text that starts the
        // input or follows a special token.
        let mut after_special = true;
        for fragment in self.partition(text, parse_special) {
            match fragment {
                Fragment::Token(id) => {
                    out.push(id);
                    after_special = true;
                }
                Fragment::Text(t) => {
                    match &self.model {
                        Model::Bpe(bpe) => bpe.encode(t, &mut out),
                        Model::Spm(spm) => spm.encode(t, after_special, &mut out),
                    }
                    after_special = false;
                }
            }
        }
        out
    }

    /// `text` cut at the special tokens it contains, as llama.cpp's
    /// `tokenizer_st_partition`: each special, longest first, splits every
    /// piece of text left at each of its occurrences, left to right.
    fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let mut parts = vec![Fragment::Text(text)];
        for sp in self.specials.iter().filter(|s| s.always || parse_special) {
            if !parts
                .iter()
                .any(|p| matches!(p, Fragment::Text(t) if t.contains(sp.text.as_str())))
            {
                continue;
            }
            let mut next = Vec::with_capacity(parts.len() + 2);
            for part in parts {
                let Fragment::Text(mut rest) = part else {
                    next.push(part);
                    continue;
                };
                while let Some(at) = rest.find(sp.text.as_str()) {
                    if at > 0 {
                        next.push(Fragment::Text(&rest[..at]));
                    }
                    next.push(Fragment::Token(sp.id));
                    rest = &rest[at + sp.text.len()..];
                }
                if !rest.is_empty() {
                    next.push(Fragment::Text(rest));
                }
            }
            parts = next;
        }
        parts
    }

    /// The concatenated bytes of `ids` (possibly not valid UTF-8).
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        ids.iter()
            .flat_map(|&id| self.token_bytes(id).iter().copied())
            .collect()
    }

    /// Whether the model has a chat template (an instruct model).
    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// Renders a conversation with the model's own chat template (Jinja,
    /// from the GGUF metadata, through `minijinja`), as llama.cpp and
    /// Hugging Face do: `messages`, `add_generation_prompt`, `bos_token`,
    /// `eos_token`, no tools.
    ///
    /// # Errors
    /// No template, a template that fails, a role it does not know.
    pub fn chat_prompt(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let env = self
            .chat_template
            .as_ref()
            .ok_or(TokenizerError::NoChatTemplate)?;
        let template = env
            .get_template(CHAT)
            .map_err(|e| TokenizerError::ChatTemplate(e.to_string()))?;
        let messages = messages
            .iter()
            .map(|m| {
                if matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") {
                    Ok(minijinja::context! { role => m.role, content => m.content })
                } else {
                    Err(TokenizerError::Role(m.role.clone()))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let text = |id: u32| String::from_utf8_lossy(self.token_bytes(id)).into_owned();
        template
            .render(minijinja::context! {
                messages,
                add_generation_prompt,
                bos_token => text(self.bos),
                eos_token => text(self.eos),
            })
            .map_err(|e| TokenizerError::ChatTemplate(e.to_string()))
    }
}

impl Tokenizer {
    /// The token ids of a conversation in the chat template, ending with
    /// the assistant's turn. Only the template's own text may hold control
    /// tokens: a message that spells `<|im_start|>` stays text, so it
    /// cannot forge a turn.
    ///
    /// # Errors
    /// As [`Tokenizer::chat_prompt`], or a template that drops, repeats or
    /// reorders a message.
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>, TokenizerError> {
        // Render with a marker for each content, then encode the frame with
        // specials and each content without.
        let marked: Vec<Message> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| Message {
                role: m.role.clone(),
                content: if m.content.is_empty() {
                    String::new()
                } else {
                    content_marker(i)
                },
            })
            .collect();
        let frame = self.chat_prompt(&marked, true)?;
        let mut ids = Vec::new();
        let mut rest = frame.as_str();
        for (i, m) in messages.iter().enumerate() {
            if m.content.is_empty() {
                continue;
            }
            let marker = content_marker(i);
            let Some(at) = rest.find(&marker) else {
                return Err(TokenizerError::ChatTemplate(format!(
                    "message {i} is missing from the rendered prompt or out of order"
                )));
            };
            ids.extend(self.encode(&rest[..at], true));
            ids.extend(self.encode(&m.content, false));
            rest = &rest[at + marker.len()..];
        }
        if rest.contains('\u{E000}') {
            return Err(TokenizerError::ChatTemplate(
                "a message appears twice in the rendered prompt".into(),
            ));
        }
        ids.extend(self.encode(rest, true));
        Ok(ids)
    }
}

/// Turns a stream of token bytes into text without splitting characters.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// Adds one token's bytes; returns the text that is now complete.
    /// Invalid sequences become U+FFFD; an incomplete character at the end
    /// waits for the next token.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: a trailing incomplete character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = if self.pending.is_empty() {
            String::new()
        } else {
            "\u{FFFD}".to_string()
        };
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_alphabet_is_a_bijection() {
        let m = byte_alphabet();
        let set: std::collections::HashSet<char> = m.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(m[b' ' as usize], 'Ġ');
        assert_eq!(m[b'\n' as usize], 'Ċ');
        assert_eq!(m[b'a' as usize], 'a');
    }

    #[test]
    fn stream_decoding_waits_for_whole_characters() {
        let mut d = StreamDecoder::default();
        let snow = "☃".as_bytes(); // 3 bytes
        assert_eq!(d.push(b"a"), "a");
        assert_eq!(d.push(&snow[..1]), "");
        assert_eq!(d.push(&snow[1..2]), "");
        assert_eq!(d.push(&snow[2..]), "☃");
        assert_eq!(d.push(&[0xff, b'b']), "\u{FFFD}b");
        assert_eq!(d.push(&snow[..2]), "");
        assert_eq!(d.finish(), "\u{FFFD}");
        assert_eq!(d.push(b"c"), "c");
    }
}
