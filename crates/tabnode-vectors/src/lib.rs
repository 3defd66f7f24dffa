//! The relay's vector store.
//!
//! A [`VectorStore`] keeps named collections of points. A point is an id
//! (an unsigned integer or a string), a vector of the collection's
//! dimensions, and optionally the text it was embedded from and a JSON
//! payload. Vectors are stored normalised to unit length, so a query's
//! score is its cosine similarity with each point (Qdrant's `Cosine`
//! distance does the same).
//!
//! * **Durable**: every upsert and delete is committed to a redb database
//!   (fsync) before it is acknowledged, so a relay killed with `kill -9`
//!   keeps everything it answered for; reopening rebuilds the indexes.
//! * **Indexed behind [`VectorIndex`]**: the [`Exact`] scan is the source of
//!   truth and answers every collection below
//!   [`StoreConfig::hnsw_threshold`] points; above it an [`Hnsw`] graph
//!   (`hnsw_rs`) is built in the background and kept up to date in chunks,
//!   and a query asks the graph for the points it holds and scans the few
//!   that arrived since. A query never waits for the graph: while it is
//!   being built or extended, the exact scan answers.
//! * **Filtered** by a subset of Qdrant's filter language ([`Filter`]:
//!   `must`, `should`, `must_not`, `min_should`; `match` value/any/except,
//!   `range`, `is_empty`, `has_id`, nested `filter`s).
//!
//! The points API the relay serves over it (`/v1/vectors/…`) follows
//! Qdrant's; `ARCHITECTURE.md` maps one onto the other.

mod codec;
pub mod filter;
pub mod index;
mod point;
mod store;

pub use filter::Filter;
pub use index::{Exact, Hit, Hnsw, HnswParams, VectorIndex};
pub use point::{NewPoint, PointId, MAX_ID_BYTES};
pub use store::{
    open_when_free, CollectionInfo, Found, IndexKind, Query, StoreConfig, VectorStore, MAX_LIMIT,
    RELEASE_WAIT,
};

use std::path::PathBuf;

/// Errors of the vector store. The first group is the caller's mistake (a
/// 4xx); [`VectorError::Database`] and [`VectorError::Corrupt`] are the
/// store's.
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    /// A collection name outside `[A-Za-z0-9_-]{1,64}`.
    #[error("collection names are 1 to 64 letters, digits, '-' or '_': {0:?} is not one")]
    BadName(String),
    /// No collection of that name.
    #[error("no collection named {0:?}")]
    NoCollection(String),
    /// The collection exists for another model.
    #[error("collection {name:?} exists for {model}; delete it first to change its model")]
    Exists {
        /// The collection.
        name: String,
        /// Its model.
        model: String,
    },
    /// The store holds as many collections as it may.
    #[error("this relay keeps at most {0} collections")]
    TooManyCollections(usize),
    /// A vector of the wrong size.
    #[error("point {id}: a vector of {got} dimensions; the collection's model makes {expected}")]
    Dimensions {
        /// The point (or `query`).
        id: String,
        /// What the collection holds.
        expected: usize,
        /// What was sent.
        got: usize,
    },
    /// A vector with no direction, or with a NaN or infinity.
    #[error("point {id}: {why}")]
    BadVector {
        /// The point (or `query`).
        id: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A point id that is neither an unsigned integer nor a string of 1 to
    /// [`MAX_ID_BYTES`] bytes.
    #[error("point ids are unsigned integers or strings of 1 to {max} bytes: {got}", max = point::MAX_ID_BYTES)]
    BadId {
        /// What was sent.
        got: String,
    },
    /// More points in one request than [`StoreConfig::max_batch`].
    #[error("{got} points in one request; at most {max}")]
    BatchTooLarge {
        /// Points sent.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// The collection would hold more than [`StoreConfig::max_points`].
    #[error(
        "collection {name:?} holds {held} points and may hold {max}: {adding} more do not fit"
    )]
    Full {
        /// The collection.
        name: String,
        /// Points in it.
        held: usize,
        /// New points in the request.
        adding: usize,
        /// The limit.
        max: usize,
    },
    /// A text or payload larger than [`StoreConfig::max_point_bytes`].
    #[error("point {id}: its text and payload take {got} bytes; at most {max}")]
    PointTooLarge {
        /// The point.
        id: String,
        /// Bytes.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// A filter that cannot be read.
    #[error("filter: {0}")]
    BadFilter(String),
    /// A `limit` of zero or above [`MAX_LIMIT`].
    #[error("limit must be from 1 to {max}, not {got}", max = store::MAX_LIMIT)]
    BadLimit {
        /// What was asked.
        got: usize,
    },
    /// The database cannot be opened, read or written.
    #[error("vector database {path}: {source}")]
    Database {
        /// The file.
        path: PathBuf,
        /// What redb reported.
        source: redb::Error,
    },
    /// A stored record cannot be decoded.
    #[error("vector database record {key} is corrupt: {why}")]
    Corrupt {
        /// Its key.
        key: String,
        /// Why.
        why: String,
    },
}

impl VectorError {
    /// Whether the request was at fault (a 4xx) rather than the store.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, Self::Database { .. } | Self::Corrupt { .. })
    }
}
