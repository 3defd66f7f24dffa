//! The relay's HTTP server: the site, the model files (`/models/`, listed
//! by `/api/models`) and the API.

use std::sync::Arc;

use axum::{
    extract::{DefaultBodyLimit, State},
    http::{header, HeaderName, HeaderValue, StatusCode},
    response::IntoResponse,
    routing::{any, get, post, put},
    Json, Router,
};
use tower_http::{
    cors::CorsLayer,
    services::{ServeDir, ServeFile},
    set_header::SetResponseHeaderLayer,
};

use crate::{
    inference::InferContext, openai, state::RelayState, Bootstrap, NetworkView, RelayConfig,
};

#[derive(Clone)]
struct AppState {
    relay: Arc<RelayState>,
    bootstrap: Arc<Bootstrap>,
    models_dir: Arc<std::path::PathBuf>,
    www: Arc<std::path::PathBuf>,
}

/// One model file the relay serves.
#[derive(Debug, Clone, serde::Serialize)]
struct ModelFile {
    /// File name.
    file: String,
    /// Where to fetch it.
    url: String,
    /// Its size.
    bytes: u64,
    /// The catalog's entry for the file (none for a file outside it):
    /// what a tab chooses by.
    #[serde(skip_serializing_if = "Option::is_none")]
    catalog: Option<CatalogFacts>,
}

/// What a tab needs of a model's catalog entry to choose it.
#[derive(Debug, Clone, serde::Serialize)]
struct CatalogFacts {
    id: String,
    title: String,
    chat: bool,
    params: u64,
    memory: crate::catalog::Memory,
    /// The pinned size and hash: the tab checks its download against them.
    bytes: u64,
    sha256: String,
}

/// The router: `/api/*`, `/metrics`, `/pkg`, `/worker`, `/models`, and `www/`
/// at the root.
pub(crate) fn router(
    config: &RelayConfig,
    relay: Arc<RelayState>,
    boot: Bootstrap,
    infer: InferContext,
    store: Arc<tabnode_vectors::VectorStore>,
    runs: Arc<crate::flows::RunStore>,
    scraper: Arc<crate::scrape::Scraper>,
) -> Router {
    use crate::vectors as vx;
    let root = &config.site_root;
    let www = root.join("www");
    let relay_for_stop = relay.clone();
    let goodbye = Router::new()
        .route("/api/goodbye", post(crate::goodbye::goodbye))
        .with_state(crate::goodbye::Desk::new(
            relay.clone(),
            infer.client.clone(),
        ));
    let api = openai::Api::new(infer);
    // The vector routes take larger bodies (vectors as JSON).
    let vectors = Router::new()
        .route("/v1/vectors", get(vx::list))
        .route(
            "/v1/vectors/{collection}",
            put(vx::create).get(vx::info).delete(vx::delete_collection),
        )
        .route("/v1/vectors/{collection}/points", post(vx::upsert))
        .route(
            "/v1/vectors/{collection}/points/delete",
            post(vx::delete_points),
        )
        .route("/v1/vectors/{collection}/points/{id}", get(vx::get_point))
        .route("/v1/vectors/{collection}/query", post(vx::query))
        .method_not_allowed_fallback(openai::wrong_method)
        .layer(DefaultBodyLimit::max(vx::MAX_BODY_BYTES))
        .with_state(vx::Vectors {
            api: api.clone(),
            store: store.clone(),
        });
    let flows = Router::new()
        .route("/v1/flows/run", post(crate::flows::run))
        .route("/v1/flows/plan", post(crate::flows::plan_query))
        .route("/v1/flows/templates", get(crate::flows::templates))
        .route("/v1/flows/runs", get(crate::flows::list_runs))
        .route(
            "/v1/flows/runs/{id}",
            get(crate::flows::get_run).delete(crate::flows::cancel_run),
        )
        .route(
            "/v1/flows/runs/{id}/python",
            post(crate::flows::python_answer),
        )
        .method_not_allowed_fallback(openai::wrong_method)
        .layer(DefaultBodyLimit::max(config.infer.max_body_bytes))
        .with_state(crate::flows::Flows::new(
            vx::Vectors {
                api: api.clone(),
                store: store.clone(),
            },
            runs,
            scraper,
        ));
    // Jobs take up to 50,000 inputs.
    let jobs = Router::new()
        .route("/v1/embeddings/jobs", post(crate::jobs::create))
        .route(
            "/v1/embeddings/jobs/{id}",
            get(crate::jobs::get).delete(crate::jobs::delete),
        )
        .method_not_allowed_fallback(openai::wrong_method)
        .layer(DefaultBodyLimit::max(crate::jobs::MAX_JOB_BODY_BYTES))
        .with_state(api.clone());
    let v1 = Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(crate::embeddings::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{id}", get(openai::model))
        .route("/v1/{*rest}", any(openai::not_found))
        .method_not_allowed_fallback(openai::wrong_method)
        .layer(DefaultBodyLimit::max(config.infer.max_body_bytes))
        .with_state(api)
        .merge(vectors)
        .merge(jobs)
        .merge(flows)
        .layer(axum::middleware::from_fn_with_state(
            relay.clone(),
            openai::authenticate,
        ));
    let api = Router::new()
        .route("/api/ledger", get(ledger))
        .route("/api/ledger/{peer_id}", get(ledger_of))
        .route("/api/bootstrap", get(bootstrap))
        .route("/api/network", get(network))
        .route("/api/models", get(models))
        .route("/api/embedding-models", get(embedding_models))
        .route("/api/pof/{peer_id}", get(pof_history))
        .route("/api/checks", get(checks))
        .route("/api/stats", get(stats))
        .route("/api/stats/stream", get(stats_stream))
        .route("/api/nodes", get(nodes))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/nodes/{peer_id}", get(node_detail))
        .route("/metrics", get(metrics))
        .route("/python-sandbox.html", get(python_sandbox))
        .with_state(AppState {
            relay,
            bootstrap: Arc::new(boot),
            models_dir: Arc::new(config.models_dir.clone()),
            www: Arc::new(www.clone()),
        })
        .merge(goodbye);
    // Development server: always revalidate, so a rebuilt wasm is picked up.
    let no_cache = SetResponseHeaderLayer::overriding(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    // The site's pages, files and JSON: the headers documents and their
    // subresources need. The OpenAI-compatible API (`v1`, merged below)
    // answers programs, not documents: none of them (its responses are
    // CORS-enabled fetches, which cross-origin isolation lets through).
    let site = api
        .nest_service("/pkg", ServeDir::new(root.join("pkg")))
        .nest_service("/worker", ServeDir::new(root.join("worker")))
        .nest_service("/models", ServeDir::new(&config.models_dir))
        .fallback_service(
            ServeDir::new(&www).not_found_service(ServeFile::new(www.join("404.html"))),
        )
        .layer(no_cache)
        // Cross-origin isolated, so the tab's workers can share memory
        // (the CPU engine splits the model over them): every page and
        // worker script is served with COOP/COEP. Subresources are this
        // origin's; CORP lets other sites (which may be isolated
        // themselves) embed the widget and load its modules.
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("cross-origin-embedder-policy"),
            HeaderValue::from_static("require-corp"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("cross-origin"),
        ))
        // The site's content security policy (the Python sandbox page sets
        // its own, stricter one).
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(SITE_POLICY),
        ))
        .merge(v1);
    // The layers every request passes, outermost first, go around the
    // routed site as one stack: each `Router::layer` call would box every
    // route's service once more, and a request clones (allocates) every
    // level of that nesting, once per middleware (a quarter of a routed API
    // request's allocations).
    let outer = tower::ServiceBuilder::new()
        // Every handler sees the client behind trusted proxies (without
        // any, the peer is the client: no layer).
        .option_layer((!config.trusted_proxies.is_empty()).then(|| {
            axum::middleware::from_fn_with_state(
                Arc::new(config.trusted_proxies.clone()),
                crate::proxies::real_client,
            )
        }))
        .layer(axum::middleware::from_fn_with_state(
            RequestIds::default(),
            access_log,
        ))
        // Over HTTPS, browsers are told to come back only over HTTPS.
        .option_layer(config.tls.is_some().then(|| {
            SetResponseHeaderLayer::overriding(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static("max-age=31536000"),
            )
        }))
        .layer(axum::middleware::from_fn_with_state(
            relay_for_stop,
            refuse_when_stopping,
        ))
        // Open to every origin: third-party pages call the API and load the
        // embed widget's modules.
        .layer(CorsLayer::permissive());
    Router::new().fallback_service(site).layer(outer)
}

/// Request ids: this relay's start (ms, hex) and a counter, unique across
/// restarts.
#[derive(Clone)]
struct RequestIds {
    prefix: Arc<str>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self {
            prefix: format!("{:x}", crate::now_ms()).into(),
            next: Arc::default(),
        }
    }
}

/// The access log: every request gets an id (the client's `X-Request-Id`
/// when it sends a usable one), answered in `X-Request-Id` and carried by
/// a span around its handler, so every log line of the request names it;
/// its end is logged with status and time: API requests at `info`, the
/// site's files at `debug`.
async fn access_log(
    State(ids): State<RequestIds>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    const X_REQUEST_ID: &str = "x-request-id";
    // Header values and the URI share the request's bytes: cloning them
    // copies nothing.
    let given = request
        .headers()
        .get(X_REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.as_bytes().iter().all(u8::is_ascii_graphic))
        .cloned();
    let id = match given {
        Some(id) => id,
        None => {
            let n = ids.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let id =
                HeaderValue::from_maybe_shared(bytes::Bytes::from(format!("{}-{n}", ids.prefix)))
                    .unwrap_or(HeaderValue::from_static("-"));
            request.headers_mut().insert(X_REQUEST_ID, id.clone());
            id
        }
    };
    let method = request.method().clone();
    let uri = request.uri().clone();
    let path = uri.path();
    let api = path.starts_with("/v1/") || path.starts_with("/api/") || path == "/metrics";
    let span = tracing::info_span!("request", id = %id.to_str().unwrap_or("-"), %method, %path);
    let started = std::time::Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let status = response.status().as_u16();
    span.in_scope(|| {
        if api {
            tracing::info!(status, ms, "answered");
        } else {
            tracing::debug!(status, ms, "answered");
        }
    });
    response.headers_mut().insert(X_REQUEST_ID, id);
    response
}

/// The site's content security policy: scripts, workers, frames and
/// connections from this origin only (WebAssembly compiled, nothing
/// evaluated from strings), styles also inline (the widget's shadow DOM,
/// the flow editor's boxes), images also as data and blob URLs, no plugins,
/// forms and `<base>` to this origin. Other sites may frame the node page
/// (the embed widget's "contribute compute").
const SITE_POLICY: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; \
    connect-src 'self'; worker-src 'self' blob:; frame-src 'self'; object-src 'none'; \
    base-uri 'self'; form-action 'self'";

/// The policy of the Python sandbox page: its own opaque origin (CSP
/// `sandbox` without `allow-same-origin`, so even opened on its own it
/// cannot reach this origin's storage), scripts only from itself, Pyodide's
/// files and the worker it makes, and no connection but to Pyodide's files
/// (the code gets its inputs by message, never from the network).
fn sandbox_policy(host: Option<&str>) -> String {
    // A scheme-less source matches this page's own scheme; `'self'` where
    // the host is not a plain name or IPv4 address (CSP has no IPv6
    // literals).
    let plain = host.filter(|h| {
        !h.is_empty()
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
    });
    let (page, pyodide) = match plain {
        Some(h) => (
            format!("{h}/python-sandbox.js"),
            format!("{h}/node_modules/pyodide/"),
        ),
        None => ("'self'".to_owned(), "'self'".to_owned()),
    };
    format!(
        "sandbox allow-scripts; default-src 'none'; script-src {page} {pyodide} blob: 'wasm-unsafe-eval' 'unsafe-eval'; \
         worker-src blob:; connect-src {pyodide}; base-uri 'none'; form-action 'none'"
    )
}

/// `/python-sandbox.html` with [`sandbox_policy`].
async fn python_sandbox(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let Ok(page) = tokio::fs::read(s.www.join("python-sandbox.html")).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Ok(policy) = HeaderValue::from_str(&sandbox_policy(host)) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CONTENT_SECURITY_POLICY, policy),
        ],
        page,
    )
        .into_response()
}

/// `GET /api/stats?history=false`.
#[derive(Debug, serde::Deserialize)]
struct StatsQuery {
    /// With the rings (default), or the latest sample alone.
    history: Option<bool>,
}

/// `/api/stats`: the latest sample and the last hour and day (see
/// `stats.rs`).
async fn stats(
    State(s): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<StatsQuery>,
) -> Json<crate::stats::History> {
    Json(s.relay.stats.history(q.history.unwrap_or(true)))
}

/// `/api/stats/stream`: server-sent events, a `history` event (what
/// `/api/stats` answers) and then a `sample` event each interval.
async fn stats_stream(State(s): State<AppState>) -> axum::response::Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    use tokio::sync::broadcast::{error::RecvError, Receiver};
    /// The next message of `rx`; a slow reader skips what it missed.
    async fn next<T: Clone>(mut rx: Receiver<T>) -> Option<(T, Receiver<T>)> {
        loop {
            match rx.recv().await {
                Ok(m) => return Some((m, rx)),
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    }
    // Subscribed before the history and the roster are read: nothing falls
    // between.
    let samples = s.relay.stats.subscribe();
    let deltas = s.relay.roster.subscribe();
    let history = s.relay.stats.history(true);
    let first = [
        Event::default().event("history").json_data(&history),
        Event::default()
            .event("nodes")
            .json_data(s.relay.roster.full(crate::now_ms())),
    ];
    let relay = s.relay.clone();
    let samples = futures::stream::unfold(samples, next).flat_map(move |closed| {
        let started = std::time::Instant::now();
        let sample = Event::default().event("sample").json_data(&*closed.sample);
        let minute = closed
            .minute
            .map(|m| Event::default().event("minute").json_data(&*m));
        relay
            .metrics
            .stats_stream_seconds
            .inc_by(started.elapsed().as_secs_f64());
        futures::stream::iter(std::iter::once(sample).chain(minute))
    });
    // The roster's deltas come serialised once for every subscriber.
    let nodes = futures::stream::unfold(deltas, next)
        .map(|json| Ok(Event::default().event("nodes").data(&*json)));
    // The stream ends when the relay stops (it would hold the HTTP server's
    // graceful shutdown open); the browser reconnects to the next relay.
    let events = futures::stream::iter(first)
        .chain(futures::stream::select(samples, nodes))
        .take_until(s.relay.stopped());
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `GET /healthz`: the process serves HTTP (liveness).
async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: whether the relay takes requests (503 while it stops, or
/// when its ledger is gone), with its node count.
async fn readyz(State(s): State<AppState>) -> axum::response::Response {
    let stopping = s.relay.is_stopping();
    let ledger = s.relay.ledger().is_some();
    let ready = !stopping && ledger;
    let counts = s.relay.registry.counts();
    let body = Json(serde_json::json!({
        "ready": ready,
        "stopping": stopping,
        "ledger": ledger,
        "nodes": counts.browsers + counts.natives,
    }));
    if ready {
        body.into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// Refuses new API requests while the relay stops (on connections kept
/// alive: new connections are not accepted any more).
async fn refuse_when_stopping(
    State(relay): State<Arc<RelayState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if relay.is_stopping() && request.uri().path().starts_with("/v1/") {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            Json(serde_json::json!({ "error": {
                "message": "the relay is stopping: retry in a moment",
                "type": "server_error",
                "code": "stopping",
            }})),
        )
            .into_response();
    }
    next.run(request).await
}

/// A path's peer id that is none: a 400 saying so.
struct NotAPeer(String);

impl IntoResponse for NotAPeer {
    fn into_response(self) -> axum::response::Response {
        (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": format!("not a peer id: {}", self.0) })),
        )
            .into_response()
    }
}

/// The peer id in a path.
fn peer_of(text: &str) -> Result<libp2p::PeerId, NotAPeer> {
    text.parse().map_err(|_| NotAPeer(text.to_owned()))
}

/// `GET /api/nodes`: every connected node's row (what the dashboard lists).
async fn nodes(State(s): State<AppState>) -> Json<crate::roster::NodesDelta> {
    Json(s.relay.roster.full(crate::now_ms()))
}

/// `GET /api/nodes/{peer_id}`: a node's row and its recent requests.
async fn node_detail(
    State(s): State<AppState>,
    axum::extract::Path(peer_id): axum::extract::Path<String>,
) -> axum::response::Response {
    let peer = match peer_of(&peer_id) {
        Ok(p) => p,
        Err(refused) => return refused.into_response(),
    };
    match s.relay.roster.detail(&s.relay, &peer) {
        Some(d) => Json(d).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("{peer_id} is not connected") })),
        )
            .into_response(),
    }
}

/// `?limit=N` of the listings (`/api/checks`: the newest checks, default
/// 100, at most the 1,000 the relay keeps; `/api/ledger`: the accounts
/// with the most points, the totals still counting every account).
#[derive(Debug, serde::Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

/// `/api/checks`: the newest spot checks (`limit`, default 100, newest
/// first) and each node's record.
async fn checks(
    State(s): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<LimitQuery>,
) -> Json<serde_json::Value> {
    let c = &s.relay.checks;
    Json(serde_json::json!({
        "checks": c.recent(q.limit.unwrap_or(100)),
        "nodes": c.standings(),
    }))
}

async fn bootstrap(State(s): State<AppState>) -> Json<Bootstrap> {
    Json((*s.bootstrap).clone())
}

/// The GGUF files in the models directory, by name.
async fn models(State(s): State<AppState>) -> Json<Vec<ModelFile>> {
    let mut out = Vec::new();
    if let Ok(mut dir) = tokio::fs::read_dir(&*s.models_dir).await {
        while let Ok(Some(entry)) = dir.next_entry().await {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata().await else {
                continue;
            };
            if meta.is_file() && file.ends_with(".gguf") {
                let catalog = s
                    .relay
                    .catalog
                    .models
                    .iter()
                    .find(|m| m.file == file)
                    .map(|m| CatalogFacts {
                        id: m.id.clone(),
                        title: m.title.clone(),
                        chat: m.chat,
                        params: m.params,
                        memory: m.memory,
                        bytes: m.bytes,
                        sha256: m.sha256.clone(),
                    });
                out.push(ModelFile {
                    url: format!("/models/{file}"),
                    file,
                    bytes: meta.len(),
                    catalog,
                });
            }
        }
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    Json(out)
}

/// A sentence-embedding model of the catalog whose files the relay serves
/// (`/models/<id>/`): what a tab loads with `loadEmbedder`.
#[derive(Debug, Clone, serde::Serialize)]
struct EmbeddingModelFiles {
    id: String,
    title: String,
    dimensions: u32,
    /// Where its files are, ending in `/`.
    url: String,
    /// All its files' bytes.
    bytes: u64,
    /// Each with its pin, in the catalog's order.
    files: Vec<crate::catalog::EmbeddingFile>,
}

/// `GET /api/embedding-models`: the catalog's embedding models whose every
/// file is in the models directory at its pinned size.
async fn embedding_models(State(s): State<AppState>) -> Json<Vec<EmbeddingModelFiles>> {
    let mut out = Vec::new();
    for m in &s.relay.catalog.embeddings {
        let dir = s.models_dir.join(&m.id);
        let mut whole = true;
        for f in &m.files {
            match tokio::fs::metadata(dir.join(&f.file)).await {
                Ok(meta) if meta.is_file() && meta.len() == f.bytes => {}
                _ => whole = false,
            }
        }
        if whole {
            out.push(EmbeddingModelFiles {
                id: m.id.clone(),
                title: m.title.clone(),
                dimensions: m.dimensions,
                url: format!("/models/{}/", m.id),
                bytes: m.files.iter().map(|f| f.bytes).sum(),
                files: m.files.clone(),
            });
        }
    }
    Json(out)
}

async fn network(State(s): State<AppState>) -> Json<NetworkView> {
    Json(NetworkView {
        relay: s.bootstrap.peer_id.clone(),
        nodes: s.relay.summaries(),
    })
}

async fn pof_history(
    State(s): State<AppState>,
    axum::extract::Path(peer_id): axum::extract::Path<String>,
) -> axum::response::Response {
    let peer = match peer_of(&peer_id) {
        Ok(p) => p,
        Err(refused) => return refused.into_response(),
    };
    match s.relay.pof_history(&peer) {
        Some(h) => Json(serde_json::json!({
            "peer_id": peer_id,
            "standing": h.standing,
            "records": h.records,
        }))
        .into_response(),
        None => (
            axum::http::StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("no proofs recorded for {peer_id}") })),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        s.relay.render_metrics(),
    )
}

fn ledger_unavailable(e: &dyn std::fmt::Display) -> axum::response::Response {
    tracing::error!("ledger: {e}");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({ "error": format!("the ledger is unavailable: {e}") })),
    )
        .into_response()
}

/// `GET /api/ledger`: every account, most points first, and the totals.
async fn ledger(
    State(s): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<LimitQuery>,
) -> axum::response::Response {
    let Some(ledger) = s.relay.ledger() else {
        return ledger_unavailable(&"this relay keeps no ledger");
    };
    match ledger.balances() {
        Ok((mut balances, totals)) => {
            balances.truncate(q.limit.unwrap_or(usize::MAX));
            Json(serde_json::json!({
                "points": {
                    "per_token": crate::ledger::POINTS_PER_TOKEN,
                    "per_proof_gflop": crate::ledger::POINTS_PER_PROOF_GFLOP,
                    "per_uptime_minute": crate::ledger::POINTS_PER_UPTIME_MINUTE,
                },
                "totals": totals,
                "balances": balances,
            }))
            .into_response()
        }
        Err(e) => ledger_unavailable(&e),
    }
}

/// `GET /api/ledger/{peer_id}`: one account (zeros if it has earned nothing).
async fn ledger_of(
    State(s): State<AppState>,
    axum::extract::Path(peer_id): axum::extract::Path<String>,
) -> axum::response::Response {
    let peer = match peer_of(&peer_id) {
        Ok(p) => p,
        Err(refused) => return refused.into_response(),
    };
    let Some(ledger) = s.relay.ledger() else {
        return ledger_unavailable(&"this relay keeps no ledger");
    };
    match ledger.balance(&peer_id) {
        Ok(balance) => {
            let (standing, strikes) = s.relay.checks.of(&peer);
            Json(AccountView {
                balance,
                standing,
                strikes,
            })
            .into_response()
        }
        Err(e) => ledger_unavailable(&e),
    }
}

/// `/api/ledger/{peer}`: the account's balance (earned by kind, spent,
/// clawed back), its spot-check record and its strikes (failed checks
/// this relay still lists; the count survives restarts as clawbacks).
#[derive(serde::Serialize)]
struct AccountView {
    #[serde(flatten)]
    balance: crate::ledger::Balance,
    /// Its spot-check record, if its tokens were ever drawn or checked.
    standing: Option<crate::checks::CheckStanding>,
    /// Its failed checks, newest first.
    strikes: Vec<crate::checks::CheckRecord>,
}

#[cfg(test)]
mod tests {
    use super::sandbox_policy;

    #[test]
    fn the_sandbox_policy_names_only_its_host_and_refuses_odd_ones() {
        let p = sandbox_policy(Some("127.0.0.1:8080"));
        assert!(p.starts_with("sandbox allow-scripts;"), "{p}");
        assert!(!p.contains("allow-same-origin"));
        assert!(
            p.contains("connect-src 127.0.0.1:8080/node_modules/pyodide/;"),
            "{p}"
        );
        assert!(p.contains("script-src 127.0.0.1:8080/python-sandbox.js 127.0.0.1:8080/node_modules/pyodide/ blob:"), "{p}");
        // A host that could break out of the header's grammar, an IPv6
        // literal or none: 'self'.
        for odd in [Some("a; script-src *"), Some("[::1]:8080"), Some(""), None] {
            let p = sandbox_policy(odd);
            assert!(p.contains("connect-src 'self';"), "{odd:?}: {p}");
            assert!(!p.contains('*'), "{p}");
        }
    }
}
