//! The OpenAI-compatible API: `POST /v1/chat/completions` and the legacy
//! `POST /v1/completions` (a prompt continued as it is; both streamed as
//! server-sent events or whole), `GET /v1/models` and `GET /v1/models/{id}`,
//! with errors in OpenAI's format and status codes, per-address rate
//! limiting, and CORS for third-party pages. Answers carry a `tabnode`
//! object (serving nodes, time to first token, tokens/s) that OpenAI
//! clients ignore.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, ConnectInfo, Path, State},
    http::{header, HeaderValue, StatusCode},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    Json,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tabnode_core::infer::{ChatMessage, FinishReason, GenerateRequest, Prompt};
use tokio::sync::mpsc;

use crate::inference::{
    run_request, ApiEvent, ApiFailure, ApiRequest, InferContext, Requester, Usage, Whole,
};
use crate::limiter::RateLimiter;

/// Tokens generated when the request does not say.
const DEFAULT_MAX_TOKENS: u32 = 256;
/// Tokens a text completion generates when the request does not say
/// (OpenAI's default for `/v1/completions`).
const DEFAULT_COMPLETION_TOKENS: u32 = 16;
/// The most tokens one request may ask for.
const MAX_TOKENS: u32 = 4096;

/// What the API handlers share.
#[derive(Clone)]
pub(crate) struct Api {
    pub infer: InferContext,
    /// Embedding jobs in progress and finished.
    pub jobs: Arc<crate::jobs::Jobs>,
    limiter: Arc<RateLimiter<IpAddr>>,
    /// Anonymous requests' free allowance per address.
    anonymous: Arc<RateLimiter<IpAddr>>,
}

impl Api {
    pub fn new(infer: InferContext) -> Self {
        let per_minute = infer.config.rate_limit_per_minute;
        let per_hour = infer.config.anonymous_per_hour;
        Self {
            infer,
            jobs: Arc::default(),
            limiter: Arc::new(RateLimiter::new(per_minute, 60)),
            anonymous: Arc::new(RateLimiter::new(per_hour, 3600)),
        }
    }
}

/// Refuses an anonymous request (no API key) past its address's free
/// allowance (`InferConfig::anonymous_per_hour`), with a 429 that says how
/// to get a key.
pub(crate) fn within_allowance(
    api: &Api,
    addr: SocketAddr,
    account: Option<&str>,
) -> Result<(), Box<Response>> {
    if account.is_some() {
        return Ok(());
    }
    let Err(retry) = api.anonymous.check(addr.ip()) else {
        return Ok(());
    };
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "requests",
        Some("anonymous_limit_exceeded"),
        None,
        format!(
            "The free allowance of {} requests an hour without an API key is used up for {}: try again in {retry} s, or open the node page (/), create an API key under API keys and send it as `Authorization: Bearer tn-…` (its requests are paid with the points your tab or node earns).",
            api.infer.config.anonymous_per_hour,
            addr.ip()
        ),
    );
    if let Ok(v) = HeaderValue::from_str(&retry.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    Err(Box::new(r))
}

/// An error in OpenAI's format.
pub(crate) fn error(
    status: StatusCode,
    kind: &str,
    code: Option<&str>,
    param: Option<&str>,
    message: impl Into<String>,
) -> Response {
    (
        status,
        Json(json!({
            "error": {
                "message": message.into(),
                "type": kind,
                "param": param,
                "code": code,
            }
        })),
    )
        .into_response()
}

fn bad_request(param: Option<&str>, message: impl Into<String>) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        None,
        param,
        message,
    )
}

fn failure(f: &ApiFailure) -> Response {
    match f {
        ApiFailure::BadRequest(m) => bad_request(Some("messages"), m.clone()),
        ApiFailure::TooLarge(m) => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("context_length_exceeded"),
            Some("messages"),
            m.clone(),
        ),
        ApiFailure::UnknownModel(model) => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found"),
            Some("model"),
            format!("The model `{model}` is not served by any node on the network now (see GET /v1/models)."),
        ),
        ApiFailure::NoNode(m) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("no_node_available"),
            None,
            m.clone(),
        ),
        ApiFailure::NoPoints(m) => error(
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_quota",
            Some("insufficient_points"),
            None,
            m.clone(),
        ),
    }
}

fn failure_json(f: &ApiFailure) -> Value {
    let (kind, code, message) = match f {
        ApiFailure::BadRequest(m) => ("invalid_request_error", None, m.clone()),
        ApiFailure::TooLarge(m) => (
            "invalid_request_error",
            Some("context_length_exceeded"),
            m.clone(),
        ),
        ApiFailure::UnknownModel(m) => (
            "invalid_request_error",
            Some("model_not_found"),
            format!("unknown model {m}"),
        ),
        ApiFailure::NoNode(m) => ("server_error", Some("no_node_available"), m.clone()),
        ApiFailure::NoPoints(m) => ("insufficient_quota", Some("insufficient_points"), m.clone()),
    };
    json!({ "error": { "message": message, "type": kind, "param": null, "code": code } })
}

/// A request that breaks the API's rules: answered with a 400 naming the
/// parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
struct Invalid {
    param: Option<String>,
    message: String,
}

fn invalid(param: Option<&str>, message: impl Into<String>) -> Invalid {
    Invalid {
        param: param.map(str::to_string),
        message: message.into(),
    }
}

impl IntoResponse for Invalid {
    fn into_response(self) -> Response {
        bad_request(self.param.as_deref(), self.message)
    }
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The fields of a chat completion request that tabnode reads; others are
/// accepted and ignored, as OpenAI's optional parameters.
#[derive(Debug, Deserialize)]
struct ChatBody {
    messages: Option<Vec<Value>>,
    #[serde(flatten)]
    common: Common,
}

/// The fields of a legacy text completion request that tabnode reads.
#[derive(Debug, Deserialize)]
struct CompletionBody {
    prompt: Option<Value>,
    suffix: Option<Value>,
    #[serde(default)]
    echo: bool,
    logprobs: Option<Value>,
    best_of: Option<u32>,
    #[serde(flatten)]
    common: Common,
}

/// What chat and text completion requests share.
#[derive(Debug, Deserialize)]
struct Common {
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    seed: Option<i64>,
    stop: Option<Value>,
    n: Option<u32>,
}

struct Parsed {
    api: ApiRequest,
    stream: bool,
    include_usage: bool,
}

fn text_of(content: &Value, i: usize) -> Result<String, Invalid> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    (kind, _) => {
                        return Err(invalid(
                            Some(&format!("messages[{i}].content")),
                            format!("content parts of type {kind:?} are not supported; only text"),
                        ))
                    }
                }
            }
            Ok(out)
        }
        Value::Null => Ok(String::new()),
        _ => Err(invalid(
            Some(&format!("messages[{i}].content")),
            "content must be a string or an array of text parts",
        )),
    }
}

fn parse(body: &[u8]) -> Result<Parsed, Invalid> {
    let b: ChatBody = serde_json::from_slice(body).map_err(|e| {
        invalid(
            None,
            format!("The request body is not valid JSON for a chat completion: {e}"),
        )
    })?;
    let model = model_of(&b.common)?;
    let raw = b
        .messages
        .filter(|m| !m.is_empty())
        .ok_or_else(|| invalid(Some("messages"), "messages must be a non-empty array"))?;
    let mut messages = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let role = match m.get("role").and_then(Value::as_str) {
            Some(r @ ("system" | "user" | "assistant")) => r.to_string(),
            Some("developer") => "system".to_string(),
            other => {
                return Err(invalid(
                    Some(&format!("messages[{i}].role")),
                    format!("role {other:?} is not supported (system, developer, user, assistant)"),
                ))
            }
        };
        let content = text_of(m.get("content").unwrap_or(&Value::Null), i)?;
        messages.push(ChatMessage { role, content });
    }
    common(model, Prompt::Chat(messages), b.common, DEFAULT_MAX_TOKENS)
}

fn model_of(b: &Common) -> Result<String, Invalid> {
    b.model
        .clone()
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| invalid(Some("model"), "you must provide a model parameter"))
}

/// The request of `prompt` with the sampling parameters of `b`
/// (`default_max` tokens when it names none).
fn common(model: String, prompt: Prompt, b: Common, default_max: u32) -> Result<Parsed, Invalid> {
    if b.n.is_some_and(|n| n != 1) {
        return Err(invalid(Some("n"), "only n = 1 is supported"));
    }
    let max_tokens = b
        .max_completion_tokens
        .or(b.max_tokens)
        .unwrap_or(default_max);
    if max_tokens == 0 || max_tokens > MAX_TOKENS {
        return Err(invalid(
            Some("max_tokens"),
            format!("max_tokens must be between 1 and {MAX_TOKENS}"),
        ));
    }
    let temperature = b.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(invalid(
            Some("temperature"),
            "temperature must be between 0 and 2",
        ));
    }
    let top_p = b.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(invalid(Some("top_p"), "top_p must be in (0, 1]"));
    }
    let stop = match b.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(a)) if a.len() <= 4 => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid(Some("stop"), "stop must be a string or up to 4 strings"))?,
        Some(_) => {
            return Err(invalid(
                Some("stop"),
                "stop must be a string or up to 4 strings",
            ))
        }
    };
    let mut request = GenerateRequest::new(prompt);
    request.max_tokens = max_tokens;
    request.temperature = temperature;
    request.top_p = top_p;
    request.top_k = b.top_k.unwrap_or(0);
    request.seed = b.seed.map_or_else(rand::random, |s| s as u64);
    request.stop = stop;
    Ok(Parsed {
        api: ApiRequest {
            model,
            request,
            account: None,
        },
        stream: b.stream,
        include_usage: b.stream_options.is_some_and(|o| o.include_usage),
    })
}

/// A parsed text completion request: the request, and the prompt when the
/// answer is to repeat it (`echo`).
struct ParsedCompletion {
    parsed: Parsed,
    echo: Option<String>,
}

fn parse_completion(body: &[u8]) -> Result<ParsedCompletion, Invalid> {
    let b: CompletionBody = serde_json::from_slice(body).map_err(|e| {
        invalid(
            None,
            format!("The request body is not valid JSON for a completion: {e}"),
        )
    })?;
    let model = model_of(&b.common)?;
    let prompt = match b.prompt {
        Some(Value::String(s)) => s,
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_string()
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            return Err(invalid(
                Some("prompt"),
                "only one prompt per request is supported (an array of one string)",
            ))
        }
        Some(Value::Array(_)) => {
            return Err(invalid(
                Some("prompt"),
                "prompts as token ids are not supported; send the text",
            ))
        }
        None | Some(Value::Null) => {
            return Err(invalid(Some("prompt"), "you must provide a prompt"))
        }
        Some(_) => return Err(invalid(Some("prompt"), "prompt must be a string")),
    };
    if b.suffix.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(invalid(Some("suffix"), "suffix is not supported"));
    }
    if b.logprobs
        .as_ref()
        .is_some_and(|v| !v.is_null() && v.as_u64() != Some(0))
    {
        return Err(invalid(Some("logprobs"), "logprobs are not supported"));
    }
    if b.best_of.is_some_and(|n| n != 1) {
        return Err(invalid(Some("best_of"), "only best_of = 1 is supported"));
    }
    let echo = b.echo.then(|| prompt.clone());
    Ok(ParsedCompletion {
        parsed: common(
            model,
            Prompt::Text(prompt),
            b.common,
            DEFAULT_COMPLETION_TOKENS,
        )?,
        echo,
    })
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "length",
        FinishReason::Eos | FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

/// OpenAI's `usage` of an answer.
#[derive(Serialize)]
struct TokenCounts {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
}

impl From<&Usage> for TokenCounts {
    fn from(u: &Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens.saturating_add(u.completion_tokens),
        }
    }
}

/// The relay's own figures of an answer (its `tabnode` member).
#[derive(Serialize)]
struct Figures<'a> {
    nodes: &'a [String],
    ttft_ms: f64,
    tokens_per_s: f64,
    failovers: u32,
}

impl<'a> From<&'a Usage> for Figures<'a> {
    fn from(u: &'a Usage) -> Self {
        Self {
            nodes: &u.nodes,
            ttft_ms: u.ttft_ms,
            tokens_per_s: u.tokens_per_s,
            failovers: u.failovers,
        }
    }
}

/// A whole answer, serialized as it is (no `Value` tree in between).
#[derive(Serialize)]
struct WholeAnswer<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    /// Always `null`.
    system_fingerprint: Option<()>,
    choices: [Choice; 1],
    usage: TokenCounts,
    tabnode: Figures<'a>,
}

/// The one choice of a whole answer.
#[derive(Serialize)]
#[serde(untagged)]
enum Choice {
    Chat {
        index: u32,
        message: Message,
        /// Always `null`.
        logprobs: Option<()>,
        finish_reason: &'static str,
    },
    Text {
        text: String,
        index: u32,
        /// Always `null`.
        logprobs: Option<()>,
        finish_reason: &'static str,
    },
}

/// The assistant's message of a chat answer.
#[derive(Serialize)]
struct Message {
    role: &'static str,
    content: String,
    /// Always `null`.
    refusal: Option<()>,
}

/// The checks every generation request passes first: the client's rate
/// limit and a readable body.
pub(crate) fn admit(
    api: &Api,
    addr: SocketAddr,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, Box<Response>> {
    admit_within(api, addr, body, api.infer.config.max_body_bytes)
}

/// [`admit`] for a route whose bodies may take up to `limit` bytes.
pub(crate) fn admit_within(
    api: &Api,
    addr: SocketAddr,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, Box<Response>> {
    if let Err(retry) = api.limiter.check(addr.ip()) {
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "requests",
            Some("rate_limit_exceeded"),
            None,
            format!(
                "Rate limit reached for {}: try again in {retry} s.",
                addr.ip()
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&retry.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Err(Box::new(r));
    }
    match body {
        Ok(b) => Ok(b),
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            Some("request_too_large"),
            None,
            format!("The request body is larger than {limit} bytes."),
        ))),
        Err(e) => Err(Box::new(bad_request(None, e.body_text()))),
    }
}

/// A request handed to the network and matched with a node.
struct Started {
    request_id: u64,
    node: String,
    events: mpsc::Receiver<ApiEvent>,
}

/// Runs `request` on the network until a node takes it (or it fails).
async fn start(api: &Api, request: ApiRequest) -> Result<Started, Box<Response>> {
    let (tx, mut rx) = mpsc::channel(256);
    tokio::spawn(run_request(
        api.infer.clone(),
        request,
        Requester::Events(tx),
    ));
    match rx.recv().await {
        Some(ApiEvent::Started {
            request_id, node, ..
        }) => Ok(Started {
            request_id,
            node,
            events: rx,
        }),
        Some(ApiEvent::Failed(f)) => Err(Box::new(failure(&f))),
        other => Err(Box::new(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            None,
            None,
            format!("unexpected start of a request: {other:?}"),
        ))),
    }
}

/// Who makes a `/v1` request: the account of its API key, if it gave one
/// ([`authenticate`] puts it in the request's extensions).
#[derive(Debug, Clone, Default)]
pub(crate) struct Caller {
    /// The paying account.
    pub account: Option<String>,
}

/// Reads `Authorization: Bearer <key>`: a live tabnode key (`tn-…`) makes
/// the request its account's ([`Caller`]); an unknown or revoked one is
/// refused with OpenAI's 401 `invalid_api_key`. Any other bearer value
/// (OpenAI clients insist on sending one) leaves the request anonymous.
pub(crate) async fn authenticate(
    State(state): State<std::sync::Arc<crate::state::RelayState>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let key = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| k.starts_with(crate::accounts::KEY_PREFIX))
        .map(str::to_owned);
    let mut caller = Caller::default();
    if let Some(key) = key {
        let found = match &state.accounts {
            Some(store) => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.account_of(&key))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
            }
            None => Ok(None),
        };
        match found {
            Ok(Some(account)) => caller.account = Some(account),
            Ok(None) => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_request_error",
                    Some("invalid_api_key"),
                    None,
                    "Incorrect API key provided: it is unknown or revoked. Create a key on the node page (/), under API keys.",
                )
            }
            Err(e) => {
                tracing::error!("reading API keys: {e}");
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    None,
                    None,
                    "the relay could not read its API keys",
                );
            }
        }
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(api): State<Api>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    caller: Option<axum::Extension<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let account = caller.and_then(|c| c.0.account);
    serve(&api, addr, body, "chatcmpl", account, |b| {
        Ok((parse(b)?, Kind::Chat))
    })
    .await
}

/// `POST /v1/completions`: OpenAI's legacy text completion, the prompt
/// continued as it is (no chat template), for base models and chat models
/// alike.
pub(crate) async fn completions(
    State(api): State<Api>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    caller: Option<axum::Extension<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let account = caller.and_then(|c| c.0.account);
    serve(&api, addr, body, "cmpl", account, |b| {
        let ParsedCompletion { parsed, echo } = parse_completion(b)?;
        Ok((parsed, Kind::Text { echo }))
    })
    .await
}

/// A generation request end to end: admitted, parsed (`parse`: the request
/// and the API its answer is in), run on the network, answered whole or
/// streamed under an id `{prefix}-{request id}`.
async fn serve(
    api: &Api,
    addr: SocketAddr,
    body: Result<Bytes, BytesRejection>,
    prefix: &str,
    account: Option<String>,
    parse: impl FnOnce(&[u8]) -> Result<(Parsed, Kind), Invalid>,
) -> Response {
    let body = match admit(api, addr, body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if let Err(r) = within_allowance(api, addr, account.as_deref()) {
        return *r;
    }
    let (mut parsed, kind) = match parse(&body) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    parsed.api.account = account;
    let catalog = &api.infer.state.catalog;
    let entry = catalog.find(&parsed.api.model);
    if let (Kind::Chat, Some(m)) = (&kind, entry) {
        if !m.chat {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("model_not_chat"),
                Some("model"),
                format!(
                    "The model `{}` is a base model without a chat template: use POST /v1/completions.",
                    m.id
                ),
            );
        }
    }
    let model = entry.map_or_else(
        || tabnode_core::model_id(&parsed.api.model),
        |m| m.id.clone(),
    );
    let created = now_s();
    if !parsed.stream {
        let (requester, answer) = Requester::whole();
        tokio::spawn(run_request(api.infer.clone(), parsed.api, requester));
        return match answer.await {
            Ok(w) => whole(kind, prefix, created, &model, w),
            Err(_) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                None,
                "the request ended without an answer",
            ),
        };
    }
    let started = match start(api, parsed.api).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let id = format!("{prefix}-{:016x}", started.request_id);
    stream(
        kind,
        id,
        created,
        model,
        started.node,
        parsed.include_usage,
        started.events,
    )
}

/// Which API an answer is in.
#[derive(Debug, Clone)]
enum Kind {
    /// `chat.completion` and its chunks.
    Chat,
    /// `text_completion`, starting with the prompt when `echo` holds it.
    Text { echo: Option<String> },
}

impl Kind {
    fn object(&self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text { .. }, _) => "text_completion",
        }
    }

    /// The one choice of a whole answer.
    fn choice(&self, text: String, finish: FinishReason) -> Choice {
        let finish_reason = finish_reason(finish);
        match self {
            Kind::Chat => Choice::Chat {
                index: 0,
                message: Message {
                    role: "assistant",
                    content: text,
                    refusal: None,
                },
                logprobs: None,
                finish_reason,
            },
            Kind::Text { echo } => Choice::Text {
                text: match echo {
                    Some(echo) => format!("{echo}{text}"),
                    None => text,
                },
                index: 0,
                logprobs: None,
                finish_reason,
            },
        }
    }

    /// The choice of a chunk: `text` (`None`: the opening chunk) and the
    /// finish reason of the last.
    fn delta<'a>(&'a self, text: Option<&'a str>, finish: Option<&'static str>) -> Delta<'a> {
        match self {
            Kind::Chat => Delta::Chat {
                index: 0,
                delta: match text {
                    None => ChatDelta {
                        role: Some("assistant"),
                        content: Some(""),
                    },
                    Some(t) if finish.is_none() => ChatDelta {
                        role: None,
                        content: Some(t),
                    },
                    Some(_) => ChatDelta {
                        role: None,
                        content: None,
                    },
                },
                logprobs: None,
                finish_reason: finish,
            },
            Kind::Text { echo } => Delta::Text {
                text: match text {
                    None => echo.as_deref().unwrap_or_default(),
                    Some(t) => t,
                },
                index: 0,
                logprobs: None,
                finish_reason: finish,
            },
        }
    }
}

/// The one choice of a streamed chunk.
#[derive(Serialize)]
#[serde(untagged)]
enum Delta<'a> {
    Chat {
        index: u32,
        delta: ChatDelta<'a>,
        /// Always `null`.
        logprobs: Option<()>,
        finish_reason: Option<&'static str>,
    },
    Text {
        text: &'a str,
        index: u32,
        /// Always `null`.
        logprobs: Option<()>,
        finish_reason: Option<&'static str>,
    },
}

/// What a chat chunk adds to the message: the role in the opening chunk,
/// text in the others, nothing in the last.
#[derive(Serialize)]
struct ChatDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

/// One chunk of a streamed answer, serialized as it is (no `Value` tree
/// in between); `T` is its `tabnode` part.
#[derive(Serialize)]
struct StreamChunk<'a, T> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    /// Always `null`.
    system_fingerprint: Option<()>,
    /// The one choice; none in the usage chunk.
    #[serde(serialize_with = "one_or_none")]
    choices: Option<Delta<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<TokenCounts>,
    tabnode: T,
}

/// A choice as a list of one, none as an empty list.
fn one_or_none<S: serde::Serializer>(choice: &Option<Delta<'_>>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(choice)
}

/// The `tabnode` part of a chunk with text: the node that generated it.
#[derive(Serialize)]
struct ChunkNode<'a> {
    node: &'a str,
}

/// What every chunk of one streamed answer shares.
struct Chunks {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
}

impl Chunks {
    /// A chunk: `choice` (none in the usage chunk), `usage` in the usage
    /// chunk, and its `tabnode` part.
    fn chunk<'a, T>(
        &'a self,
        choice: Option<Delta<'a>>,
        usage: Option<TokenCounts>,
        tabnode: T,
    ) -> StreamChunk<'a, T> {
        StreamChunk {
            id: &self.id,
            object: self.kind.object(true),
            created: self.created,
            model: &self.model,
            system_fingerprint: None,
            choices: choice,
            usage,
            tabnode,
        }
    }

    /// [`Chunks::chunk`] as its event.
    fn event<T: Serialize>(
        &self,
        choice: Option<Delta<'_>>,
        usage: Option<TokenCounts>,
        tabnode: T,
    ) -> Event {
        // Plain structs of strings and numbers always serialize; should one
        // not, the client hears it as an error in OpenAI's shape.
        Event::default()
            .json_data(self.chunk(choice, usage, tabnode))
            .unwrap_or_else(|e| {
                tracing::error!("a chunk did not serialize: {e}");
                let error = json!({ "error": {
                    "message": format!("the answer could not be written: {e}"),
                    "type": "server_error", "param": null, "code": null,
                } });
                Event::default().data(error.to_string())
            })
    }
}

/// A whole answer under the id `{prefix}-{request id}`.
fn whole(kind: Kind, prefix: &str, created: u64, model: &str, answer: Whole) -> Response {
    match answer.end {
        Err(f) => failure(&f),
        Ok((finish, usage)) => Json(WholeAnswer {
            id: format!("{prefix}-{:016x}", answer.request_id),
            object: kind.object(false),
            created,
            model,
            system_fingerprint: None,
            choices: [kind.choice(answer.text, finish)],
            usage: TokenCounts::from(&usage),
            tabnode: Figures::from(&usage),
        })
        .into_response(),
    }
}

fn stream(
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    node: String,
    include_usage: bool,
    mut rx: mpsc::Receiver<ApiEvent>,
) -> Response {
    let chunks = Chunks {
        kind,
        id,
        created,
        model,
    };
    let (out, mut events) = mpsc::channel::<Event>(256);
    tokio::spawn(async move {
        let kind = &chunks.kind;
        let first = chunks.event(
            Some(kind.delta(None, None)),
            None,
            ChunkNode { node: &node },
        );
        if out.send(first).await.is_err() {
            return;
        }
        while let Some(e) = rx.recv().await {
            let sent = match e {
                ApiEvent::Started { .. } => true,
                ApiEvent::Text { text, node, .. } => {
                    let c = chunks.event(
                        Some(kind.delta(Some(&text), None)),
                        None,
                        ChunkNode { node: &node },
                    );
                    out.send(c).await.is_ok()
                }
                ApiEvent::Done { finish, usage } => {
                    let last = chunks.event(
                        Some(kind.delta(Some(""), Some(finish_reason(finish)))),
                        None,
                        Figures::from(&usage),
                    );
                    let ok = out.send(last).await.is_ok();
                    if ok && include_usage {
                        let counts = chunks.event(
                            None,
                            Some(TokenCounts::from(&usage)),
                            Figures::from(&usage),
                        );
                        let _ = out.send(counts).await;
                    }
                    let _ = out.send(Event::default().data("[DONE]")).await;
                    return;
                }
                ApiEvent::Failed(f) => {
                    let _ = out
                        .send(Event::default().data(failure_json(&f).to_string()))
                        .await;
                    return;
                }
            };
            if !sent {
                return;
            }
        }
    });
    let body = futures::stream::poll_fn(move |cx| {
        events.poll_recv(cx).map(|e| e.map(Ok::<_, Infallible>))
    });
    Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// What `/v1/models` tells about a model beyond OpenAI's fields.
fn model_json(m: &crate::NetworkModel) -> Value {
    json!({
        "name": m.name,
        "title": m.title,
        "context_length": m.context,
        "chat": m.chat,
        "bytes": m.bytes,
        "nodes": m.nodes,
        "slots": m.slots,
    })
}

/// `GET /v1/models`: the models nodes serve now.
pub(crate) async fn models(State(api): State<Api>) -> Json<Value> {
    let data: Vec<Value> = api
        .infer
        .state
        .models()
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "object": "model",
                "created": 0,
                "owned_by": "tabnode",
                "tabnode": model_json(m),
            })
        })
        .chain(embedding_models(&api))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

/// The catalog's embedding models nodes serve now, as `/v1/models` lists
/// them (`tabnode.kind` says what they are for).
fn embedding_models(api: &Api) -> Vec<Value> {
    let state = &api.infer.state;
    state
        .catalog
        .embeddings
        .iter()
        .filter_map(|e| {
            let nodes = state.registry.serving(&e.id).len();
            (nodes > 0).then(|| {
                json!({
                    "id": e.id,
                    "object": "model",
                    "created": 0,
                    "owned_by": "tabnode",
                    "tabnode": {
                        "kind": "embedding",
                        "title": e.title,
                        "dimensions": e.dimensions,
                        "max_tokens": e.max_tokens,
                        "nodes": nodes,
                    },
                })
            })
        })
        .collect()
}

/// `GET /v1/models/{id}`.
pub(crate) async fn model(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let want = api
        .infer
        .state
        .catalog
        .find(&id)
        .map_or_else(|| tabnode_core::model_id(&id), |m| m.id.clone());
    match api.infer.state.models().into_iter().find(|m| m.id == want) {
        Some(m) => Json(json!({
            "id": m.id,
            "object": "model",
            "created": 0,
            "owned_by": "tabnode",
            "tabnode": model_json(&m),
        }))
        .into_response(),
        None => failure(&ApiFailure::UnknownModel(id)),
    }
}

/// Any other `/v1/...` path.
pub(crate) async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("unknown_url"),
        None,
        "Unknown request URL. tabnode serves POST /v1/chat/completions, POST /v1/completions, POST /v1/embeddings, GET /v1/models and /v1/vectors.",
    )
}

/// A known `/v1/...` path with another method.
pub(crate) async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        Some("method_not_allowed"),
        None,
        format!("{} is not served with {method}.", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(r: Result<Parsed, Invalid>) -> StatusCode {
        match r {
            Ok(_) => StatusCode::OK,
            Err(e) => e.into_response().status(),
        }
    }

    #[test]
    fn requests_are_read_like_openai_reads_them() {
        let p = parse(
            br#"{"model":"SmolLM2 135M Instruct","messages":[
                {"role":"developer","content":"Be brief."},
                {"role":"user","content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"}]}],
                "max_completion_tokens":5,"temperature":0,"stop":"\n","stream":true,
                "stream_options":{"include_usage":true},"frequency_penalty":0}"#,
        )
        .unwrap_or_else(|_| panic!("valid request"));
        assert!(p.stream && p.include_usage);
        let r = &p.api.request;
        assert_eq!(r.max_tokens, 5);
        assert_eq!(r.stop, vec!["\n".to_string()]);
        match &r.prompt {
            Prompt::Chat(m) => {
                assert_eq!(m[0].role, "system");
                assert_eq!(m[1].content, "Hi there");
            }
            Prompt::Text(_) => panic!("chat expected"),
        }
    }

    #[test]
    fn bad_requests_are_400s() {
        for body in [
            &b"not json"[..],
            br#"{"messages":[{"role":"user","content":"x"}]}"#,
            br#"{"model":"m","messages":[]}"#,
            br#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#,
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":["a","b","c","d","e"]}"#,
        ] {
            assert_eq!(status(parse(body)), StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn text_completions_are_read_like_openai_reads_them() {
        let p = parse_completion(
            br#"{"model":"m","prompt":["Once upon a time"],"echo":true,"logprobs":null,
                "suffix":null,"best_of":1,"temperature":0,"stop":["\n"],"stream":true}"#,
        )
        .unwrap_or_else(|e| panic!("valid request: {e}"));
        assert!(p.parsed.stream);
        assert_eq!(p.echo.as_deref(), Some("Once upon a time"));
        let r = &p.parsed.api.request;
        assert_eq!(r.prompt, Prompt::Text("Once upon a time".into()));
        assert_eq!(
            (r.max_tokens, r.temperature),
            (DEFAULT_COMPLETION_TOKENS, 0.0)
        );
        assert_eq!(r.stop, vec!["\n".to_string()]);
        let p = parse_completion(br#"{"model":"m","prompt":"x","max_tokens":3}"#)
            .unwrap_or_else(|e| panic!("valid request: {e}"));
        assert_eq!((p.echo, p.parsed.api.request.max_tokens), (None, 3));
    }

    #[test]
    fn bad_text_completions_are_400s_naming_the_parameter() {
        for (body, param) in [
            (&b"[1]"[..], None),
            (br#"{"prompt":"x"}"#, Some("model")),
            (br#"{"model":"m"}"#, Some("prompt")),
            (br#"{"model":"m","prompt":[1,2,3]}"#, Some("prompt")),
            (br#"{"model":"m","prompt":["a","b"]}"#, Some("prompt")),
            (br#"{"model":"m","prompt":7}"#, Some("prompt")),
            (
                br#"{"model":"m","prompt":"x","suffix":"y"}"#,
                Some("suffix"),
            ),
            (
                br#"{"model":"m","prompt":"x","logprobs":2}"#,
                Some("logprobs"),
            ),
            (
                br#"{"model":"m","prompt":"x","best_of":3}"#,
                Some("best_of"),
            ),
            (br#"{"model":"m","prompt":"x","n":2}"#, Some("n")),
            (
                br#"{"model":"m","prompt":"x","max_tokens":5000}"#,
                Some("max_tokens"),
            ),
            (br#"{"model":"m","prompt":"x","top_p":0}"#, Some("top_p")),
        ] {
            let text = String::from_utf8_lossy(body);
            match parse_completion(body) {
                Ok(_) => panic!("accepted {text}"),
                Err(e) => {
                    assert_eq!(e.param.as_deref(), param, "{text}: {e}");
                    assert_eq!(e.into_response().status(), StatusCode::BAD_REQUEST);
                }
            }
        }
    }

    /// Every chunk of a streamed answer, chat and text, in OpenAI's shape
    /// (the fields its clients read) with the relay's `tabnode` part.
    #[test]
    fn streamed_chunks_are_openais() {
        let usage = Usage {
            prompt_tokens: 5,
            completion_tokens: 2,
            ttft_ms: 12.5,
            tokens_per_s: 40.0,
            nodes: vec!["A".into(), "B".into()],
            failovers: 1,
        };
        let chat = Chunks {
            kind: Kind::Chat,
            id: "chatcmpl-1".into(),
            created: 7,
            model: "m".into(),
        };
        let k = &chat.kind;
        fn value<T: Serialize>(chunk: &T) -> Value {
            serde_json::to_value(chunk).expect("a chunk serializes")
        }
        let head = |object: &str| {
            json!({ "id": "chatcmpl-1", "object": object, "created": 7, "model": "m",
                "system_fingerprint": null })
        };
        let with = |mut base: Value, more: Value| {
            base.as_object_mut()
                .expect("object")
                .extend(more.as_object().expect("object").clone());
            base
        };
        let figures =
            json!({ "nodes": ["A", "B"], "ttft_ms": 12.5, "tokens_per_s": 40.0, "failovers": 1 });
        let object = "chat.completion.chunk";
        assert_eq!(
            value(&chat.chunk(Some(k.delta(None, None)), None, ChunkNode { node: "A" })),
            with(
                head(object),
                json!({ "choices": [{ "index": 0, "delta": { "role": "assistant", "content": "" },
                "logprobs": null, "finish_reason": null }], "tabnode": { "node": "A" } })
            )
        );
        assert_eq!(
            value(&chat.chunk(
                Some(k.delta(Some("Hi"), None)),
                None,
                ChunkNode { node: "B" }
            )),
            with(
                head(object),
                json!({ "choices": [{ "index": 0, "delta": { "content": "Hi" },
                "logprobs": null, "finish_reason": null }], "tabnode": { "node": "B" } })
            )
        );
        assert_eq!(
            value(&chat.chunk(
                Some(k.delta(Some(""), Some("stop"))),
                None,
                Figures::from(&usage)
            )),
            with(
                head(object),
                json!({ "choices": [{ "index": 0, "delta": {},
                "logprobs": null, "finish_reason": "stop" }], "tabnode": figures })
            )
        );
        assert_eq!(
            value(&chat.chunk(None, Some(TokenCounts::from(&usage)), Figures::from(&usage))),
            with(
                head(object),
                json!({ "choices": [], "tabnode": figures,
                "usage": { "prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7 } })
            )
        );
        // The legacy completions: text (the prompt first when echoed).
        let text = Chunks {
            kind: Kind::Text {
                echo: Some("Say: ".into()),
            },
            ..chat
        };
        let k = &text.kind;
        let object = "text_completion";
        assert_eq!(
            value(&text.chunk(Some(k.delta(None, None)), None, ChunkNode { node: "A" })),
            with(
                head(object),
                json!({ "choices": [{ "text": "Say: ", "index": 0,
                "logprobs": null, "finish_reason": null }], "tabnode": { "node": "A" } })
            )
        );
        assert_eq!(
            value(&text.chunk(
                Some(k.delta(Some("ok"), None)),
                None,
                ChunkNode { node: "A" }
            )),
            with(
                head(object),
                json!({ "choices": [{ "text": "ok", "index": 0,
                "logprobs": null, "finish_reason": null }], "tabnode": { "node": "A" } })
            )
        );
        assert_eq!(
            value(&text.chunk(
                Some(k.delta(Some(""), Some("length"))),
                None,
                Figures::from(&usage)
            )),
            with(
                head(object),
                json!({ "choices": [{ "text": "", "index": 0,
                "logprobs": null, "finish_reason": "length" }], "tabnode": figures })
            )
        );
    }
}
