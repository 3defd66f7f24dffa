//! `POST /v1/embeddings`, OpenAI's embeddings endpoint, served by the
//! network: the inputs (a string, strings, a token array or token arrays)
//! are cut into batches of [`MAX_EMBED_INPUTS`], every batch goes at once
//! to a node serving the catalog's embedding model (the registry spreads
//! them over the nodes by load), a batch whose node fails, leaves or
//! answers wrongly goes to another (at most `max_attempts` nodes), and the
//! vectors come back in the inputs' order, as floats or base64. A node
//! whose last proof passed earns points per token embedded, once per
//! batch, capped by the rate its proof makes plausible and by what the
//! inputs can hold.

use std::collections::HashSet;
use std::net::SocketAddr;

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, ConnectInfo, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use base64::Engine as _;
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use tabnode_core::infer::{EmbedInput, EmbedRequest, EmbedResult, MAX_EMBED_INPUTS};
use tabnode_core::{Request, Response as NodeResponse};
use tokio::time::Instant;

use crate::catalog::EmbeddingModel;
use crate::inference::InferContext;
use crate::ledger::Credit;
use crate::openai::{admit, error, Api};
use crate::registry::NoNode;

/// Inputs one request may carry (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;
/// Batches of one request in flight at once, whatever the nodes.
pub const MAX_IN_FLIGHT: usize = 64;

/// A request that breaks the API's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    status: StatusCode,
    code: Option<&'static str>,
    param: Option<&'static str>,
    message: String,
}

fn invalid(param: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        status: StatusCode::BAD_REQUEST,
        code: None,
        param: Some(param),
        message: message.into(),
    }
}

impl IntoResponse for Invalid {
    fn into_response(self) -> Response {
        error(
            self.status,
            "invalid_request_error",
            self.code,
            self.param,
            self.message,
        )
    }
}

/// How the vectors are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// JSON numbers.
    Float,
    /// Little-endian `f32` bytes in base64 (what OpenAI's clients ask for
    /// by default, and decode).
    Base64,
}

/// A request as read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Parsed {
    pub model: EmbeddingModel,
    pub inputs: Vec<EmbedInput>,
    pub encoding: Encoding,
}

/// Reads a request body against the catalog's embedding models.
pub(crate) fn parse(body: &[u8], models: &[EmbeddingModel]) -> Result<Parsed, Invalid> {
    parse_up_to(body, models, MAX_INPUTS)
}

/// [`parse`] taking up to `max_inputs` inputs (jobs take more).
pub(crate) fn parse_up_to(
    body: &[u8],
    models: &[EmbeddingModel],
    max_inputs: usize,
) -> Result<Parsed, Invalid> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| invalid("input", format!("the body is not JSON: {e}")))?;
    let Some(o) = v.as_object() else {
        return Err(invalid("input", "the body must be a JSON object"));
    };
    let name = o
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("model", "you must provide a model parameter"))?;
    let model = models
        .iter()
        .find(|m| m.id == name.to_ascii_lowercase())
        .cloned()
        .ok_or_else(|| Invalid {
            status: StatusCode::NOT_FOUND,
            code: Some("model_not_found"),
            param: Some("model"),
            message: format!(
                "The model `{name}` is not an embedding model of this network (it has: {}).",
                models
                    .iter()
                    .map(|m| m.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })?;
    if let Some(d) = o.get("dimensions").filter(|d| !d.is_null()) {
        return Err(invalid(
            "dimensions",
            format!(
                "dimensions ({d}) cannot be chosen: {} has {} and no other size",
                model.id, model.dimensions
            ),
        ));
    }
    let encoding = match o.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => Encoding::Float,
        Some("base64") => Encoding::Base64,
        Some(other) => {
            return Err(invalid(
                "encoding_format",
                format!("encoding_format must be \"float\" or \"base64\", not {other:?}"),
            ))
        }
    };
    let tokens = |v: &Value| -> Option<Vec<u32>> {
        v.as_array()?
            .iter()
            .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
            .collect()
    };
    let inputs = match o.get("input") {
        Some(Value::String(s)) => vec![EmbedInput::Text(s.clone())],
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(invalid("input", "input must not be an empty array"))
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|s| s.as_str().map(|s| EmbedInput::Text(s.to_owned())))
            .collect(),
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => {
            vec![EmbedInput::Tokens(tokens(&Value::Array(a.clone())).ok_or_else(
                || invalid("input", "token ids must be integers from 0 to 2^32 - 1"),
            )?)]
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_array) => a
            .iter()
            .map(|t| {
                tokens(t)
                    .map(EmbedInput::Tokens)
                    .ok_or_else(|| invalid("input", "token ids must be integers from 0 to 2^32 - 1"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(invalid(
                "input",
                "input must be a string, an array of strings, an array of token ids or an array of such arrays",
            ))
        }
        None => return Err(invalid("input", "you must provide an input parameter")),
    };
    if inputs.len() > max_inputs {
        return Err(invalid(
            "input",
            format!("{} inputs; at most {max_inputs} a request", inputs.len()),
        ));
    }
    Ok(Parsed {
        model,
        inputs,
        encoding,
    })
}

/// The most tokens an input can be worth: `[CLS]`, `[SEP]` and a piece per
/// character of a text as the tokenizer sees it (decomposed, NFD, and
/// lower-cased: a Hangul syllable is two or three jamo, each a piece at
/// most; a WordPiece piece covers one or more), or the ids sent, all
/// within the model's limit. What a node reports above it is not believed.
fn token_bound(input: &EmbedInput, max_tokens: u32) -> u32 {
    use unicode_normalization::UnicodeNormalization;
    let n = match input {
        EmbedInput::Text(t) => t.nfd().flat_map(char::to_lowercase).count(),
        EmbedInput::Tokens(ids) => ids.len(),
    };
    u32::try_from(n.saturating_add(2))
        .unwrap_or(u32::MAX)
        .min(max_tokens)
}

/// A batch's outcome.
struct Batch {
    result: EmbedResult,
    node: String,
}

/// Why a request failed on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No node serves the model.
    NoModel(String),
    /// The nodes that took a batch failed, or none was free in time.
    NoNode(String),
    /// The nodes refused an input (an id outside the vocabulary).
    BadInput(String),
    /// The paying account has no points left.
    NoPoints(String),
}

/// Runs one batch on the network: a node, then another on failure.
async fn run_batch(
    ctx: &InferContext,
    model: &EmbeddingModel,
    request_id: u64,
    batch: usize,
    inputs: Vec<EmbedInput>,
) -> Result<Batch, Failure> {
    let registry = &ctx.state.registry;
    let mut exclude = HashSet::new();
    let mut last = String::from("no attempt");
    for _ in 0..ctx.config.max_attempts.max(1) {
        let slot = match crate::inference::acquire(ctx, &model.id, &exclude).await {
            Ok(s) => s,
            Err(NoNode::UnknownModel) => {
                return Err(Failure::NoModel(model.id.clone()));
            }
            Err(NoNode::Unavailable) => break,
        };
        let peer = slot.peer;
        let started = Instant::now();
        let request = Request::Embed(Box::new(EmbedRequest {
            request_id,
            model: model.id.clone(),
            inputs: inputs.clone(),
        }));
        let answer = ctx
            .client
            .request(peer, request, ctx.config.stall_timeout)
            .await;
        let checked = match answer {
            Ok(NodeResponse::Embedded(r))
                if r.vectors.len() == inputs.len()
                    && r.tokens.len() == inputs.len()
                    && r.truncated.len() == inputs.len()
                    && r.vectors.iter().all(|v| {
                        v.len() == model.dimensions as usize && v.iter().all(|x| x.is_finite())
                    }) =>
            {
                Ok(*r)
            }
            Ok(NodeResponse::Embedded(_)) => Err("an answer of the wrong shape".to_owned()),
            Ok(NodeResponse::Error {
                code: tabnode_core::ErrorCode::Invalid,
                message,
            }) => {
                registry.release(slot, true);
                return Err(Failure::BadInput(message));
            }
            Ok(other) => Err(format!("{other:?}")),
            Err(e) => Err(e.to_string()),
        };
        match checked {
            Ok(mut result) => {
                registry.release(slot, true);
                // Counts past what the inputs can hold are not believed.
                for (t, input) in result.tokens.iter_mut().zip(&inputs) {
                    *t = (*t).min(token_bound(input, model.max_tokens));
                }
                credit(ctx, model, request_id, batch, peer, &result, started).await;
                return Ok(Batch {
                    result,
                    node: peer.to_string(),
                });
            }
            Err(why) => {
                registry.release(slot, false);
                tracing::warn!(%peer, "embedding batch {request_id}:{batch} leaves its node: {why}");
                exclude.insert(peer);
                last = why;
            }
        }
    }
    Err(Failure::NoNode(format!(
        "no node embedded batch {batch} of the request ({last})"
    )))
}

/// Points for a batch's tokens, once (the id names the batch), to a node
/// whose last proof passed, no faster than its proof makes plausible.
async fn credit(
    ctx: &InferContext,
    model: &EmbeddingModel,
    request_id: u64,
    batch: usize,
    peer: libp2p::PeerId,
    result: &EmbedResult,
    started: Instant,
) {
    if !ctx.state.proof_valid(&peer) {
        return;
    }
    let Some(ledger) = ctx.state.ledger() else {
        return;
    };
    let tokens: u64 = result.tokens.iter().map(|&t| u64::from(t)).sum();
    let gflops = ctx.state.registry.proven_gflops(&peer).unwrap_or(0.0);
    let amount = model.creditable(tokens, started.elapsed().as_secs_f64(), gflops);
    let id = format!("embed:{}-{request_id}:{batch}", ctx.state.sessions.epoch);
    if let Err(e) = ledger
        .apply(vec![Credit::tokens(id, peer.to_string(), amount)])
        .await
    {
        tracing::error!("crediting embedding batch {request_id}:{batch}: {e}");
    }
}

/// The vectors of `inputs`, in order, with the tokens each took, the pieces
/// each lost and the nodes that served.
pub(crate) async fn embed(
    ctx: &InferContext,
    model: &EmbeddingModel,
    inputs: Vec<EmbedInput>,
    account: Option<&str>,
) -> Result<(EmbedResult, Vec<String>), Failure> {
    embed_with_progress(ctx, model, inputs, account, &|_| {}).await
}

/// [`embed`], calling `progress(n)` as each batch of `n` inputs comes back.
///
/// At most two batches per node serving the model are in flight (at least
/// two, at most [`MAX_IN_FLIGHT`]): each node has the next batch queued
/// when it finishes one, and a job of thousands of batches does not leave
/// most of them waiting in the registry's queue past its timeout. The
/// first batch that fails on every node it is tried on fails the whole
/// (the rest are dropped).
pub(crate) async fn embed_with_progress(
    ctx: &InferContext,
    model: &EmbeddingModel,
    inputs: Vec<EmbedInput>,
    account: Option<&str>,
    progress: &(dyn Fn(usize) + Send + Sync),
) -> Result<(EmbedResult, Vec<String>), Failure> {
    // A paying account needs points to start.
    if let Some(why) = account.and_then(|a| crate::accounts::broke(&ctx.state, a)) {
        return Err(Failure::NoPoints(why));
    }
    let request_id = ctx.state.sessions.next_request_id();
    let nodes_now = ctx.state.registry.serving(&model.id).len();
    let width = (2 * nodes_now).clamp(2, MAX_IN_FLIGHT);
    // Collected first: a stream over a borrowing closure would make the
    // future of a spawned job not general enough over lifetimes.
    let futures: Vec<_> = inputs
        .chunks(MAX_EMBED_INPUTS)
        .enumerate()
        .map(|(i, b)| {
            let n = b.len();
            let b = b.to_vec();
            async move {
                let r = run_batch(ctx, model, request_id, i, b).await;
                if r.is_ok() {
                    progress(n);
                }
                r
            }
        })
        .collect();
    let mut batches = stream::iter(futures).buffered(width);
    let mut out = EmbedResult {
        vectors: Vec::with_capacity(inputs.len()),
        tokens: Vec::with_capacity(inputs.len()),
        truncated: Vec::with_capacity(inputs.len()),
    };
    let mut nodes = Vec::new();
    while let Some(batch) = batches.next().await {
        let b = batch?;
        out.vectors.extend(b.result.vectors);
        out.tokens.extend(b.result.tokens);
        out.truncated.extend(b.result.truncated);
        if !nodes.contains(&b.node) {
            nodes.push(b.node);
        }
    }
    ctx.state
        .metrics
        .embeddings
        .inc_by(out.vectors.len() as u64);
    // The paying account is charged every embedded token, at the model's
    // price.
    if let Some(account) = account {
        let tokens: u64 = out.tokens.iter().map(|&t| u64::from(t)).sum();
        let id = format!("spend:embed:{}-{request_id}", ctx.state.sessions.epoch);
        let points = tokens.saturating_mul(model.price);
        crate::accounts::charge(&ctx.state, id, account, tokens, points).await;
    }
    Ok((out, nodes))
}

fn vector_json(v: &[f32], encoding: Encoding) -> Value {
    match encoding {
        Encoding::Float => json!(v),
        Encoding::Base64 => {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            json!(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    }
}

/// `POST /v1/embeddings`.
pub(crate) async fn embeddings(
    State(api): State<Api>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    caller: Option<axum::Extension<crate::openai::Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match admit(&api, addr, body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if let Err(r) = crate::openai::within_allowance(
        &api,
        addr,
        caller.as_ref().and_then(|c| c.0.account.as_deref()),
    ) {
        return *r;
    }
    let parsed = match parse(&body, &api.infer.state.catalog.embeddings) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let account = caller.as_ref().and_then(|c| c.0.account.as_deref());
    match embed(&api.infer, &parsed.model, parsed.inputs, account).await {
        Ok((r, nodes)) => Json(answer(
            &parsed.model.id,
            parsed.encoding,
            &r,
            &nodes,
            0..r.vectors.len(),
        ))
        .into_response(),
        Err(f) => f.into_response(),
    }
}

/// The embeddings list OpenAI's API answers, for the inputs in `range`
/// (indices stay the inputs' own); usage counts every input.
pub(crate) fn answer(
    model: &str,
    encoding: Encoding,
    r: &EmbedResult,
    nodes: &[String],
    range: std::ops::Range<usize>,
) -> Value {
    let prompt_tokens: u64 = r.tokens.iter().map(|&t| u64::from(t)).sum();
    let range = range.start.min(r.vectors.len())..range.end.min(r.vectors.len());
    let data: Vec<Value> = r.vectors[range.clone()]
        .iter()
        .zip(range.clone())
        .map(|(v, i)| {
            json!({
                "object": "embedding",
                "index": i,
                "embedding": vector_json(v, encoding),
            })
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": { "prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens },
        "tabnode": {
            "nodes": nodes,
            "tokens": r.tokens[range.clone()],
            "truncated": r.truncated[range],
        },
    })
}

impl Failure {
    /// What went wrong, for people.
    pub(crate) fn message(&self) -> String {
        match self {
            Failure::NoModel(m) => {
                format!("The model `{m}` is not served by any node on the network now.")
            }
            Failure::NoNode(m) | Failure::BadInput(m) | Failure::NoPoints(m) => m.clone(),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::NoModel(_) => error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model_not_found"),
                Some("model"),
                self.message(),
            ),
            Failure::BadInput(m) => error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                Some("input"),
                m,
            ),
            Failure::NoNode(m) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("no_node_available"),
                None,
                m,
            ),
            Failure::NoPoints(m) => error(
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_quota",
                Some("insufficient_points"),
                None,
                m,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    fn models() -> Vec<EmbeddingModel> {
        Catalog::builtin().embeddings
    }

    fn read(body: Value) -> Result<Parsed, Invalid> {
        parse(body.to_string().as_bytes(), &models())
    }

    #[test]
    fn inputs_are_read_as_openai_reads_them() {
        let m = "all-minilm-l6-v2";
        let p = read(json!({"model": m, "input": "hi"})).expect("string");
        assert_eq!(p.inputs, [EmbedInput::Text("hi".into())]);
        assert_eq!(p.encoding, Encoding::Float);
        let p = read(json!({"model": m, "input": ["a", ""], "encoding_format": "base64"}))
            .expect("strings");
        assert_eq!(
            p.inputs,
            [
                EmbedInput::Text("a".into()),
                EmbedInput::Text(String::new())
            ]
        );
        assert_eq!(p.encoding, Encoding::Base64);
        let p = read(json!({"model": m, "input": [1, 2, 3]})).expect("ids");
        assert_eq!(p.inputs, [EmbedInput::Tokens(vec![1, 2, 3])]);
        let p = read(json!({"model": "All-MiniLM-L6-v2", "input": [[1], [2, 3]], "dimensions": null, "user": "x"}))
            .expect("id arrays");
        assert_eq!(
            p.inputs,
            [EmbedInput::Tokens(vec![1]), EmbedInput::Tokens(vec![2, 3])]
        );
    }

    #[test]
    fn bad_requests_are_clear_4xx_naming_the_parameter() {
        let m = "all-minilm-l6-v2";
        for (body, status, param, says) in [
            (json!({"input": "x"}), 400, "model", "provide a model"),
            (
                json!({"model": "smollm2-135m-instruct", "input": "x"}),
                404,
                "model",
                "not an embedding model",
            ),
            (json!({"model": m}), 400, "input", "provide an input"),
            (
                json!({"model": m, "input": []}),
                400,
                "input",
                "empty array",
            ),
            (
                json!({"model": m, "input": 7}),
                400,
                "input",
                "must be a string",
            ),
            (
                json!({"model": m, "input": ["a", 1]}),
                400,
                "input",
                "must be a string",
            ),
            (
                json!({"model": m, "input": [1, -2]}),
                400,
                "input",
                "token ids must be integers",
            ),
            (
                json!({"model": m, "input": [[1], "a"]}),
                400,
                "input",
                "must be a string",
            ),
            (
                json!({"model": m, "input": "x", "dimensions": 128}),
                400,
                "dimensions",
                "has 384 and no other size",
            ),
            (
                json!({"model": m, "input": "x", "encoding_format": "int8"}),
                400,
                "encoding_format",
                "\"float\" or \"base64\"",
            ),
            (
                json!({"model": m, "input": vec!["x"; MAX_INPUTS + 1]}),
                400,
                "input",
                "at most 2048",
            ),
        ] {
            let e = read(body.clone()).expect_err("refused");
            assert_eq!(e.status.as_u16(), status, "{body}");
            assert_eq!(e.param, Some(param), "{body}");
            assert!(e.message.contains(says), "{body}: {}", e.message);
        }
        assert!(parse(b"{", &models()).is_err());
    }

    #[test]
    fn a_node_cannot_claim_more_tokens_than_an_input_holds() {
        assert_eq!(token_bound(&EmbedInput::Text("abc".into()), 256), 5);
        assert_eq!(token_bound(&EmbedInput::Text("é".repeat(1000)), 256), 256);
        assert_eq!(token_bound(&EmbedInput::Tokens(vec![1; 10]), 256), 12);
        // Decomposed: the tokenizer gives this text 26 ids (the fixtures of
        // sentence-transformers), more than its 16 characters and two.
        let mixed = EmbedInput::Text("日本語のテキストと한국어 텍스트".into());
        assert!(
            token_bound(&mixed, 256) >= 26,
            "{}",
            token_bound(&mixed, 256)
        );
        // Lower-casing may lengthen too (İ is i and a combining dot).
        assert_eq!(token_bound(&EmbedInput::Text("İ".into()), 256), 4);
    }

    #[test]
    fn embedding_credits_are_capped_by_the_proven_rate() {
        let m = &models()[0];
        // 10 GFLOP/s for 1 s: 4·10¹⁰ / 21,293,568 = 1,878 tokens + 32.
        assert_eq!(m.creditable(100_000, 1.0, 10.0), 32 + 1878);
        assert_eq!(m.creditable(500, 1.0, 10.0), 500);
        assert_eq!(m.creditable(500, 0.0, 0.0), 32, "no proof: the burst only");
    }

    #[test]
    fn base64_vectors_are_little_endian_f32s() {
        let v = [1.0f32, -0.5];
        let b64 = vector_json(&v, Encoding::Base64);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("string"))
            .expect("base64");
        assert_eq!(bytes, [0, 0, 128, 63, 0, 0, 0, 191]);
        assert_eq!(vector_json(&v, Encoding::Float), json!([1.0, -0.5]));
    }
}
