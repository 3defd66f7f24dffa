//! `/v1/vectors`: the relay's vector store over HTTP, shaped after
//! Qdrant's points API (`ARCHITECTURE.md` maps the two).
//!
//! * `GET /v1/vectors`: the collections.
//! * `PUT /v1/vectors/{collection}` with `{"model": "<embedding model>"}`
//!   or an empty body (the catalog's first embedding model): creates it
//!   (201), or leaves it as it is for the same model (200); 409 for
//!   another model.
//! * `GET`, `DELETE /v1/vectors/{collection}`.
//! * `POST /v1/vectors/{collection}/points` with `{"points": [{"id",
//!   "text"?, "vector"?, "payload"?}]}`: upsert; a point with a text and no
//!   vector is embedded by the network first (credited to its nodes as
//!   `/v1/embeddings` is). Nothing is written unless every point is good.
//! * `POST /v1/vectors/{collection}/points/delete` with `{"points": [ids]}`.
//! * `GET /v1/vectors/{collection}/points/{id}` (digits are an integer id).
//! * `POST /v1/vectors/{collection}/query` with `{"text" | "vector" |
//!   "query", "limit"?, "filter"?, "params"?: {"exact", "hnsw_ef"}}`:
//!   `{"points": [{"id", "score", "payload", "text"}]}`, nearest first.
//!
//! The store's work (fsync, scans, graph search) runs on the blocking pool.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, ConnectInfo, Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde_json::{json, Map, Value};
use tabnode_core::infer::EmbedInput;
use tabnode_vectors::{CollectionInfo, Filter, NewPoint, PointId, Query, VectorError, VectorStore};

use crate::catalog::EmbeddingModel;
use crate::openai::{admit_within, error, Api};

/// Largest body on the vector routes: 2,048 points of 384 floats as JSON
/// take about 10 MB.
pub const MAX_BODY_BYTES: usize = 32 << 20;

/// The store and the API state the routes share.
#[derive(Clone)]
pub(crate) struct Vectors {
    pub api: Api,
    pub store: Arc<VectorStore>,
}

fn invalid(param: &'static str, message: impl Into<String>) -> Refusal {
    Refusal::Invalid {
        param,
        message: message.into(),
    }
}

/// Why a vector route refuses, typed until it becomes OpenAI's error
/// format at the edge ([`IntoResponse`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    /// A bad field of the request.
    #[error("{message}")]
    Invalid {
        /// The field.
        param: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The store refused the request, or failed.
    #[error(transparent)]
    Store(#[from] VectorError),
    /// The store's blocking task died.
    #[error("the vector store task failed")]
    Task,
    /// Texts for a collection whose model left the catalog.
    #[error("this collection's model {0} is no longer an embedding model of this network; give vectors instead of texts")]
    ModelGone(String),
    /// The network could not embed the texts.
    #[error("{}", .0.message())]
    Embed(crate::embeddings::Failure),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Invalid { param, message } => error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                Some(param),
                message,
            ),
            Refusal::Store(e) => store_error(&e),
            Refusal::Task => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                None,
                self.to_string(),
            ),
            Refusal::ModelGone(_) => error(
                StatusCode::CONFLICT,
                "invalid_request_error",
                Some("model_not_found"),
                None,
                self.to_string(),
            ),
            Refusal::Embed(f) => f.into_response(),
        }
    }
}

fn store_error(e: &VectorError) -> Response {
    let (status, code, param) = match e {
        VectorError::NoCollection(_) => (StatusCode::NOT_FOUND, Some("collection_not_found"), None),
        VectorError::Exists { .. } | VectorError::TooManyCollections(_) => {
            (StatusCode::CONFLICT, Some("conflict"), None)
        }
        VectorError::Full { .. } => (
            StatusCode::CONFLICT,
            Some("collection_full"),
            Some("points"),
        ),
        VectorError::BadName(_) => (StatusCode::BAD_REQUEST, None, Some("collection")),
        VectorError::BadFilter(_) => (StatusCode::BAD_REQUEST, None, Some("filter")),
        VectorError::BadLimit { .. } => (StatusCode::BAD_REQUEST, None, Some("limit")),
        VectorError::Dimensions { id, .. } | VectorError::BadVector { id, .. } if id == "query" => {
            (StatusCode::BAD_REQUEST, None, Some("vector"))
        }
        VectorError::BatchTooLarge { .. }
        | VectorError::Dimensions { .. }
        | VectorError::BadVector { .. }
        | VectorError::BadId { .. }
        | VectorError::PointTooLarge { .. } => (StatusCode::BAD_REQUEST, None, Some("points")),
        VectorError::Database { .. } | VectorError::Corrupt { .. } => {
            tracing::error!("vector store: {e}");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                None,
                format!("the vector store failed: {e}"),
            );
        }
    };
    error(status, "invalid_request_error", code, param, e.to_string())
}

/// Runs store work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, VectorError> + Send + 'static,
) -> Result<T, Refusal> {
    match tokio::task::spawn_blocking(work).await {
        Ok(r) => Ok(r?),
        Err(e) => {
            tracing::error!("vector store task: {e}");
            Err(Refusal::Task)
        }
    }
}

fn body_json(body: &[u8], empty_ok: bool) -> Result<Map<String, Value>, Refusal> {
    if empty_ok && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(invalid("body", "the body must be a JSON object")),
        Err(e) => Err(invalid("body", format!("the body is not JSON: {e}"))),
    }
}

impl Vectors {
    fn models(&self) -> &[EmbeddingModel] {
        &self.api.infer.state.catalog.embeddings
    }

    fn model(&self, id: &str) -> Option<&EmbeddingModel> {
        self.models().iter().find(|m| m.id == id)
    }

    /// Embeds `texts` on the network, charged to `account` if one pays.
    pub(crate) async fn embed(
        &self,
        model: &str,
        texts: Vec<String>,
        account: Option<&str>,
    ) -> Result<Embedded, Refusal> {
        let Some(model) = self.model(model).cloned() else {
            return Err(Refusal::ModelGone(model.to_owned()));
        };
        let inputs = texts.into_iter().map(EmbedInput::Text).collect();
        let (r, nodes) = crate::embeddings::embed(&self.api.infer, &model, inputs, account)
            .await
            .map_err(Refusal::Embed)?;
        Ok(Embedded {
            tokens: r.tokens.iter().map(|&t| u64::from(t)).sum(),
            truncated: r.truncated.iter().map(|&t| t > 0).collect(),
            vectors: r.vectors,
            nodes,
        })
    }
}

/// Texts embedded by the network.
#[derive(Default)]
pub(crate) struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    /// Tokens in all.
    pub tokens: u64,
    /// Per text: whether it was cut to the model's length.
    pub truncated: Vec<bool>,
    /// The nodes that served.
    pub nodes: Vec<String>,
}

/// `GET /v1/vectors`.
pub(crate) async fn list(State(v): State<Vectors>) -> Response {
    Json(json!({ "collections": v.store.list() })).into_response()
}

/// `PUT /v1/vectors/{collection}`.
pub(crate) async fn create(
    State(v): State<Vectors>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match admit_within(&v.api, addr, body, MAX_BODY_BYTES) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let o = match body_json(&body, true) {
        Ok(o) => o,
        Err(r) => return r.into_response(),
    };
    let model = match o.get("model") {
        None | Some(Value::Null) => v.models().first(),
        Some(Value::String(id)) => v.model(&id.to_ascii_lowercase()),
        Some(other) => {
            return invalid("model", format!("model is a string, not {other}")).into_response()
        }
    };
    let Some(model) = model.cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found"),
            Some("model"),
            format!(
                "{} is not an embedding model of this network (it has: {})",
                o.get("model")
                    .map_or_else(|| "none".to_owned(), Value::to_string),
                v.models()
                    .iter()
                    .map(|m| m.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    };
    let store = v.store.clone();
    match blocking(move || store.create(&name, &model.id, model.dimensions as usize)).await {
        Ok((info, true)) => (StatusCode::CREATED, Json(info)).into_response(),
        Ok((info, false)) => Json(info).into_response(),
        Err(r) => r.into_response(),
    }
}

/// `GET /v1/vectors/{collection}`.
pub(crate) async fn info(State(v): State<Vectors>, Path(name): Path<String>) -> Response {
    match v.store.info(&name) {
        Ok(i) => Json(i).into_response(),
        Err(e) => store_error(&e),
    }
}

/// `DELETE /v1/vectors/{collection}`.
pub(crate) async fn delete_collection(
    State(v): State<Vectors>,
    Path(name): Path<String>,
) -> Response {
    let store = v.store.clone();
    let n = name.clone();
    match blocking(move || store.delete_collection(&n)).await {
        Ok(true) => Json(json!({ "deleted": name })).into_response(),
        Ok(false) => store_error(&VectorError::NoCollection(name)),
        Err(r) => r.into_response(),
    }
}

/// A point as sent, before its text is embedded.
struct Incoming {
    id: PointId,
    text: Option<String>,
    vector: Option<Vec<f32>>,
    payload: Option<Map<String, Value>>,
}

fn read_point(i: usize, v: &Value, dims: usize, max_bytes: usize) -> Result<Incoming, Refusal> {
    let at = |what: &str| format!("points[{i}]{what}");
    let Some(o) = v.as_object() else {
        return Err(invalid(
            "points",
            format!("{} is an object, not {v}", at("")),
        ));
    };
    if let Some(k) = o
        .keys()
        .find(|k| !matches!(k.as_str(), "id" | "text" | "vector" | "payload"))
    {
        return Err(invalid(
            "points",
            format!(
                "{}: unknown field {k:?} (id, text, vector, payload)",
                at("")
            ),
        ));
    }
    let id = o
        .get("id")
        .ok_or_else(|| invalid("points", format!("{} needs an id", at(""))))
        .and_then(|id| {
            PointId::from_json(id).map_err(|e| invalid("points", format!("{}: {e}", at(".id"))))
        })?;
    let text = match o.get("text") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if t.len() > max_bytes => {
            return Err(invalid(
                "points",
                format!("{}: {} bytes; at most {max_bytes}", at(".text"), t.len()),
            ))
        }
        Some(Value::String(t)) => Some(t.clone()),
        Some(other) => {
            return Err(invalid(
                "points",
                format!("{} is a string, not {other}", at(".text")),
            ))
        }
    };
    let vector = match o.get("vector") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => {
            let v: Option<Vec<f32>> = a.iter().map(|x| x.as_f64().map(|x| x as f32)).collect();
            let v = v.ok_or_else(|| {
                invalid("points", format!("{} holds numbers only", at(".vector")))
            })?;
            if v.len() != dims {
                return Err(Refusal::Store(VectorError::Dimensions {
                    id: id.to_string(),
                    expected: dims,
                    got: v.len(),
                }));
            }
            Some(v)
        }
        Some(other) => {
            return Err(invalid(
                "points",
                format!("{} is a list of numbers, not {other}", at(".vector")),
            ))
        }
    };
    let payload = match o.get("payload") {
        None | Some(Value::Null) => None,
        Some(Value::Object(p)) => Some(p.clone()),
        Some(other) => {
            return Err(invalid(
                "points",
                format!("{} is an object, not {other}", at(".payload")),
            ))
        }
    };
    if text.is_none() && vector.is_none() {
        return Err(invalid(
            "points",
            format!("{} needs a text (to embed) or a vector", at("")),
        ));
    }
    Ok(Incoming {
        id,
        text,
        vector,
        payload,
    })
}

/// A request on a collection's points: admitted (rate, body size), the
/// collection first (an unknown one is a 404 whatever the body), then the
/// body as a JSON object.
fn admitted(
    v: &Vectors,
    addr: SocketAddr,
    name: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<(CollectionInfo, Map<String, Value>), Box<Response>> {
    let body = admit_within(&v.api, addr, body, MAX_BODY_BYTES)?;
    let info = v.store.info(name).map_err(|e| Box::new(store_error(&e)))?;
    let o = body_json(&body, false).map_err(|r| Box::new(r.into_response()))?;
    Ok((info, o))
}

/// `POST /v1/vectors/{collection}/points`.
pub(crate) async fn upsert(
    State(v): State<Vectors>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    caller: Option<axum::Extension<crate::openai::Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let account = caller.and_then(|c| c.0.account);
    let (info, o) = match admitted(&v, addr, &name, body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let Some(points) = o.get("points").and_then(Value::as_array) else {
        return invalid(
            "points",
            "points must be a list of {id, text?, vector?, payload?}",
        )
        .into_response();
    };
    let config = v.store.config();
    if points.len() > config.max_batch {
        return store_error(&VectorError::BatchTooLarge {
            got: points.len(),
            max: config.max_batch,
        });
    }
    let incoming: Vec<Incoming> = match points
        .iter()
        .enumerate()
        .map(|(i, p)| read_point(i, p, info.dimensions, config.max_point_bytes))
        .collect()
    {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    // Texts without vectors go to the network, in one job.
    let to_embed: Vec<String> = incoming
        .iter()
        .filter(|p| p.vector.is_none())
        .filter_map(|p| p.text.clone())
        .collect();
    let embedded = if to_embed.is_empty() {
        Embedded::default()
    } else {
        match v.embed(&info.model, to_embed, account.as_deref()).await {
            Ok(r) => r,
            Err(r) => return r.into_response(),
        }
    };
    let (tokens, nodes) = (embedded.tokens, embedded.nodes);
    let mut vectors = embedded.vectors.into_iter();
    let mut truncated = embedded.truncated.into_iter();
    let mut truncated_ids = Vec::new();
    let points: Vec<NewPoint> = incoming
        .into_iter()
        .map(|p| {
            let vector = match p.vector {
                Some(v) => v,
                None => {
                    if truncated.next() == Some(true) {
                        truncated_ids.push(p.id.to_json());
                    }
                    vectors.next().unwrap_or_default()
                }
            };
            NewPoint {
                id: p.id,
                vector,
                text: p.text,
                payload: p.payload,
            }
        })
        .collect();
    let store = v.store.clone();
    match blocking(move || store.upsert(&name, points)).await {
        Ok(n) => Json(json!({
            "status": "ok",
            "upserted": n,
            "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
            "tabnode": { "nodes": nodes, "truncated": truncated_ids },
        }))
        .into_response(),
        Err(r) => r.into_response(),
    }
}

fn read_ids(o: &Map<String, Value>) -> Result<Vec<PointId>, Refusal> {
    let Some(ids) = o.get("points").and_then(Value::as_array) else {
        return Err(invalid("points", "points must be a list of point ids"));
    };
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            PointId::from_json(id).map_err(|e| invalid("points", format!("points[{i}]: {e}")))
        })
        .collect()
}

/// `POST /v1/vectors/{collection}/points/delete`.
pub(crate) async fn delete_points(
    State(v): State<Vectors>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match admit_within(&v.api, addr, body, MAX_BODY_BYTES) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let ids = match body_json(&body, false).and_then(|o| read_ids(&o)) {
        Ok(ids) => ids,
        Err(r) => return r.into_response(),
    };
    let store = v.store.clone();
    match blocking(move || store.delete(&name, &ids)).await {
        Ok(n) => Json(json!({ "status": "ok", "deleted": n })).into_response(),
        Err(r) => r.into_response(),
    }
}

/// `GET /v1/vectors/{collection}/points/{id}`.
pub(crate) async fn get_point(
    State(v): State<Vectors>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    let pid = match id.parse::<u64>() {
        Ok(n) => PointId::Num(n),
        Err(_) => match PointId::string(id.clone()) {
            Ok(p) => p,
            Err(e) => return store_error(&e),
        },
    };
    match v.store.point(&name, &pid) {
        Ok(Some(p)) => Json(p).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("point_not_found"),
            None,
            format!("collection {name:?} holds no point {pid}"),
        ),
        Err(e) => store_error(&e),
    }
}

/// `POST /v1/vectors/{collection}/query`.
pub(crate) async fn query(
    State(v): State<Vectors>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    caller: Option<axum::Extension<crate::openai::Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let account = caller.and_then(|c| c.0.account);
    let (info, o) = match admitted(&v, addr, &name, body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let limit = match o.get("limit") {
        None | Some(Value::Null) => 10,
        Some(l) => match l.as_u64() {
            Some(l) => usize::try_from(l).unwrap_or(usize::MAX),
            None => {
                return invalid("limit", format!("limit is a positive integer, not {l}"))
                    .into_response()
            }
        },
    };
    let filter = match o.get("filter") {
        None | Some(Value::Null) => None,
        Some(f) => match Filter::parse(f) {
            Ok(f) => Some(f),
            Err(e) => return store_error(&e),
        },
    };
    let params = o.get("params").and_then(Value::as_object);
    let exact = params
        .and_then(|p| p.get("exact"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let effort = params
        .and_then(|p| p.get("hnsw_ef"))
        .and_then(Value::as_u64)
        .map_or(0, |e| usize::try_from(e).unwrap_or(usize::MAX).min(4096));
    let vector = o
        .get("vector")
        .or_else(|| o.get("query"))
        .filter(|v| !v.is_null());
    let text = o.get("text").filter(|t| !t.is_null());
    let (vector, tokens) = match (text, vector) {
        (Some(_), Some(_)) => {
            return invalid("text", "give a text or a vector, not both").into_response()
        }
        (None, None) => {
            return invalid("text", "give a text (to embed) or a vector to search by")
                .into_response()
        }
        (None, Some(vector)) => {
            let Some(v) = vector.as_array().and_then(|a| {
                a.iter()
                    .map(|x| x.as_f64().map(|x| x as f32))
                    .collect::<Option<Vec<f32>>>()
            }) else {
                return invalid("vector", "the vector is a list of numbers").into_response();
            };
            (v, 0)
        }
        (Some(text), None) => {
            let Some(text) = text.as_str() else {
                return invalid("text", "the text is a string").into_response();
            };
            match v
                .embed(&info.model, vec![text.to_owned()], account.as_deref())
                .await
            {
                Ok(mut e) => (e.vectors.pop().unwrap_or_default(), e.tokens),
                Err(r) => return r.into_response(),
            }
        }
    };
    let store = v.store.clone();
    let found = blocking(move || {
        store.query(
            &name,
            &Query {
                vector,
                limit,
                filter: filter.as_ref(),
                exact,
                effort,
            },
        )
    })
    .await;
    match found {
        Ok(points) => Json(json!({
            "points": points,
            "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
        }))
        .into_response(),
        Err(r) => r.into_response(),
    }
}
