//! A native node's sentence-embedding model: the relay sends
//! [`Request::Embed`](tabnode_core::Request::Embed) batches, the node
//! answers them with the portable [`Embedder`] (the same code a tab's
//! worker runs), the texts of a batch on all cores.

use std::path::Path;

pub use tabnode_infer::embedder::Embedder;
use tabnode_infer::embedder::FILES;

/// Why an embedding model cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum EmbedLoadError {
    /// A file of the model's directory cannot be read.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The encoder refused the files.
    #[error("{dir}: {source}")]
    Model {
        /// The model's directory.
        dir: String,
        /// Why.
        source: tabnode_infer::bert::BertError,
    },
}

/// Loads the model in `dir` (`scripts/fetch-model.py ID` puts it in
/// `<models dir>/<id>/`; the directory's name is the id).
///
/// # Errors
/// [`EmbedLoadError`] for a missing or unreadable file, or files the
/// encoder refuses.
pub fn load(dir: &Path) -> Result<Embedder, EmbedLoadError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| EmbedLoadError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    };
    let files = FILES.map(read);
    let [a, b, c, d] = files;
    let (a, b, c, d) = (a?, b?, c?, d?);
    let id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Embedder::from_files(&id, [&a, &b, &c, &d]).map_err(|source| EmbedLoadError::Model {
        dir: dir.display().to_string(),
        source,
    })
}
