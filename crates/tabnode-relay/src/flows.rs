//! `/v1/flows` (issue #15): a flow ([`tabnode_flows`]) run on the network.
//!
//! `POST /v1/flows/run` validates the flow and the run's inputs, starts the
//! run in a task of its own and streams its events as server-sent events
//! (`run` with its id first, then `node`, `token`, `error` and `done`), or,
//! with `"stream": false`, answers the finished run record. The run
//! computes the outputs' ancestors only; every node whose inputs are done
//! starts at once ([`Schedule`]); `llm` nodes go through matchmaking like
//! any chat request (their tokens streamed), `embed` and `retrieve` through
//! the network's embedding batches and the vector store; a failed node
//! skips its descendants while other branches finish. Limits: the run's
//! (`timeout_ms`) and each node's (`node_timeout_ms`). The requester
//! leaving, or `DELETE /v1/flows/runs/{id}`, cancels the run. Every run's
//! record (the flow, its inputs, each node's status, serving peers, times
//! and outputs, the run's outputs) is written to `flows.redb` when it
//! starts and when it ends, and read back by `GET /v1/flows/runs/{id}`.
//!
//! `scrape` nodes fetch through the relay's guarded scraper
//! ([`crate::scrape`]); rendered scrapes are refused before a run starts
//! (no headless browser on this relay yet).
//!
//! `python` nodes run in the requester's own tab, or else in a tab whose
//! visitor opted in to run Python for others (registered `python: true`;
//! the job goes to it as `Request::Python`, least loaded first, the next
//! one if it fails to answer). A run asked with
//! `"python": "requester"` sends each Python job as a `python` event (node,
//! job id, code, inputs, time limit) and waits for its answer at
//! `POST /v1/flows/runs/{id}/python` (`{"job", "text"}` or `{"job",
//! "error"}`). The job id (128 random bits) is the capability: only the
//! stream's reader has it. The flow editor runs the code in Pyodide inside
//! an opaque-origin sandbox (`www/python.js`), as do the node pages that
//! opted in.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, ConnectInfo, Path, State},
    http::StatusCode,
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    Json,
};
use futures::{FutureExt, StreamExt};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::{json, Map, Value};
use tabnode_core::infer::{ChatMessage, GenerateRequest, Prompt};
use tabnode_flows::{fill, plan, Flow, FlowDoc, LlmMode, Schedule, Status, Step};
use tabnode_vectors::Query;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinSet;

use crate::inference::{run_request, ApiEvent, ApiFailure, ApiRequest, Requester};
use crate::now_ms;
use crate::openai::{admit, error, Api};
use crate::scrape::Scraper;
use crate::vectors::Vectors;

const RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("runs");
/// (created at, id) of every run: the newest found without reading all.
const BY_TIME: TableDefinition<(u64, &str), ()> = TableDefinition::new("runs_by_time");

/// Longest a run may take (`timeout_ms` may only lower it).
pub const MAX_RUN_MS: u64 = 600_000;
/// A node's limit unless `node_timeout_ms` says less.
pub const DEFAULT_NODE_MS: u64 = 120_000;

/// Errors of the run store.
#[derive(Debug, thiserror::Error)]
pub enum RunStoreError {
    /// The database file cannot be opened, read or written.
    #[error("flow runs database {path}: {source}")]
    Database {
        /// The file.
        path: PathBuf,
        /// What redb reported.
        source: redb::Error,
    },
}

/// Run records in `flows.redb`: id → the record's JSON.
#[derive(Debug)]
pub struct RunStore {
    db: Database,
    path: PathBuf,
}

impl RunStore {
    /// Opens (or creates) the store.
    ///
    /// # Errors
    /// [`RunStoreError::Database`].
    pub fn open(path: &FsPath) -> Result<Self, RunStoreError> {
        let bad = |e: redb::Error| RunStoreError::Database {
            path: path.to_owned(),
            source: e,
        };
        // A relay restarted in the same process may still be letting go.
        let db = tabnode_vectors::open_when_free(path).map_err(|e| bad(e.into()))?;
        let tx = db.begin_write().map_err(|e| bad(e.into()))?;
        tx.open_table(BY_TIME).map_err(|e| bad(e.into()))?;
        {
            // Runs the last relay left running (it stopped, or was killed,
            // during them) are over: say so.
            let mut t = tx.open_table(RUNS).map_err(|e| bad(e.into()))?;
            let mut ended = Vec::new();
            for entry in t.iter().map_err(|e| bad(e.into()))? {
                let (k, v) = entry.map_err(|e| bad(e.into()))?;
                let Ok(mut r) = serde_json::from_slice::<Value>(v.value()) else {
                    continue;
                };
                if r["status"] == "running" {
                    r["status"] = json!("failed");
                    r["error"] = json!(INTERRUPTED);
                    end_nodes(&mut r, INTERRUPTED);
                    ended.push((k.value().to_owned(), r.to_string()));
                }
            }
            for (k, v) in ended {
                t.insert(k.as_str(), v.as_bytes())
                    .map_err(|e| bad(e.into()))?;
            }
        }
        tx.commit().map_err(|e| bad(e.into()))?;
        Ok(Self {
            db,
            path: path.to_owned(),
        })
    }

    fn bad(&self, e: impl Into<redb::Error>) -> RunStoreError {
        RunStoreError::Database {
            path: self.path.clone(),
            source: e.into(),
        }
    }

    /// Writes `record` under its id (durable when it returns).
    ///
    /// # Errors
    /// [`RunStoreError::Database`].
    pub fn save(&self, id: &str, record: &Value) -> Result<(), RunStoreError> {
        let bytes = record.to_string();
        let tx = self.db.begin_write().map_err(|e| self.bad(e))?;
        {
            let mut t = tx.open_table(RUNS).map_err(|e| self.bad(e))?;
            t.insert(id, bytes.as_bytes()).map_err(|e| self.bad(e))?;
            let mut by_time = tx.open_table(BY_TIME).map_err(|e| self.bad(e))?;
            let at = record["created_ms"].as_u64().unwrap_or(0);
            by_time.insert((at, id), ()).map_err(|e| self.bad(e))?;
        }
        tx.commit().map_err(|e| self.bad(e))
    }

    /// The newest `limit` runs, newest first: id, status, when, how long.
    ///
    /// # Errors
    /// [`RunStoreError::Database`].
    pub fn recent(&self, limit: usize) -> Result<Vec<Value>, RunStoreError> {
        let tx = self.db.begin_read().map_err(|e| self.bad(e))?;
        let by_time = tx.open_table(BY_TIME).map_err(|e| self.bad(e))?;
        let runs = tx.open_table(RUNS).map_err(|e| self.bad(e))?;
        let mut out = Vec::new();
        for entry in by_time.iter().map_err(|e| self.bad(e))?.rev().take(limit) {
            let (key, _) = entry.map_err(|e| self.bad(e))?;
            let (_, id) = key.value();
            let Some(r) = runs
                .get(id)
                .map_err(|e| self.bad(e))?
                .and_then(|v| serde_json::from_slice::<Value>(v.value()).ok())
            else {
                continue;
            };
            out.push(json!({
                "id": r["id"], "status": r["status"], "created_ms": r["created_ms"], "ms": r["ms"],
            }));
        }
        Ok(out)
    }

    /// The record of run `id`, if there is one.
    ///
    /// # Errors
    /// [`RunStoreError::Database`].
    pub fn load(&self, id: &str) -> Result<Option<Value>, RunStoreError> {
        let tx = self.db.begin_read().map_err(|e| self.bad(e))?;
        let t = tx.open_table(RUNS).map_err(|e| self.bad(e))?;
        Ok(t.get(id)
            .map_err(|e| self.bad(e))?
            .and_then(|v| serde_json::from_slice(v.value()).ok()))
    }
}

/// Why a run the relay did not finish ended.
const INTERRUPTED: &str = "the relay stopped during the run";

/// A run record's nodes at its end: those running failed for `why`, those
/// queued skipped.
fn end_nodes(record: &mut Value, why: &str) {
    if let Some(nodes) = record["nodes"].as_object_mut() {
        for n in nodes.values_mut() {
            match n["status"].as_str() {
                Some("running") => {
                    n["status"] = json!("failed");
                    n["error"] = json!(why);
                }
                Some("queued") => n["status"] = json!("skipped"),
                _ => {}
            }
        }
    }
}

/// A Python job's answer from its runner: what the code printed, or why
/// it failed.
type PythonAnswer = Result<String, String>;

/// A run in progress.
#[derive(Debug)]
struct Live {
    record: Mutex<Value>,
    cancel: Notify,
    /// Python jobs sent to the requester, by job id, until answered.
    python: Mutex<HashMap<String, oneshot::Sender<PythonAnswer>>>,
}

/// What the flow routes share.
#[derive(Clone)]
pub(crate) struct Flows {
    pub vectors: Vectors,
    pub runs: Arc<RunStore>,
    pub scraper: Arc<Scraper>,
    live: Arc<Mutex<HashMap<String, Arc<Live>>>>,
}

impl Flows {
    pub fn new(vectors: Vectors, runs: Arc<RunStore>, scraper: Arc<Scraper>) -> Self {
        Self {
            vectors,
            runs,
            scraper,
            live: Arc::default(),
        }
    }

    fn api(&self) -> &Api {
        &self.vectors.api
    }

    /// Run `id`, while it runs.
    fn live_run(&self, id: &str) -> Option<Arc<Live>> {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    async fn save(&self, id: &str, record: Value) {
        let runs = self.runs.clone();
        let id = id.to_owned();
        match tokio::task::spawn_blocking(move || runs.save(&id, &record)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("saving a flow run: {e}"),
            Err(e) => tracing::error!("saving a flow run: {e}"),
        }
    }
}

fn invalid(code: &str, message: impl Into<String>) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        Some(code),
        None,
        message,
    )
}

/// A value on a connection.
#[derive(Debug, Clone)]
enum Val {
    Text(String),
    List(Vec<String>),
    Vector(Vec<f32>),
    Json(Value),
}

impl Val {
    fn json(&self) -> Value {
        match self {
            Val::Text(t) => json!(t),
            Val::List(l) => json!(l),
            Val::Vector(v) => json!(v),
            Val::Json(j) => j.clone(),
        }
    }

    /// As text: a list joined by `sep`, anything else as JSON.
    fn text(&self, sep: &str) -> String {
        match self {
            Val::Text(t) => t.clone(),
            Val::List(l) => l.join(sep),
            other => other.json().to_string(),
        }
    }
}

/// A node's outputs, by name.
type Outputs = BTreeMap<String, Val>;

/// Why a node failed (its message is what the run record and the events
/// say).
#[derive(Debug, thiserror::Error)]
enum NodeError {
    /// Its limit passed.
    #[error("the node's time limit ({0} ms) passed")]
    TimeLimit(u128),
    /// The model request failed.
    #[error("{0}")]
    Model(String),
    /// No node serves the model.
    #[error("no node serves the model {0}")]
    UnknownModel(String),
    /// The relay's catalog has no embedding model.
    #[error("this relay serves no embedding model")]
    NoEmbeddingModel,
    /// Embedding or the vector store refused.
    #[error(transparent)]
    Vectors(#[from] crate::vectors::Refusal),
    /// The page could not be scraped.
    #[error(transparent)]
    Scrape(#[from] crate::scrape::ScrapeError),
    /// The vector store failed.
    #[error(transparent)]
    Store(#[from] tabnode_vectors::VectorError),
    /// A blocking task died.
    #[error("a task of the relay failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A step this relay does not run.
    #[error("{0} steps do not run on this relay yet")]
    Unsupported(&'static str),
    /// The Python code failed in its sandbox (the runner's message).
    #[error("python: {0}")]
    Python(String),
    /// No tab runs Python for others now, and the requester does not run
    /// it either.
    #[error("no tab runs Python for others now (none opted in); run it in your own tab with \"python\": \"requester\" (the flow editor does)")]
    NoPythonRunner,
    /// The tabs that run Python did not answer.
    #[error("no tab ran the python step ({0})")]
    PythonNodes(String),
    /// The request's stream ended without an answer.
    #[error("the request ended without an answer")]
    NoAnswer,
    /// An item of a map.
    #[error("item {index}: {source}")]
    Item {
        /// Its place in the list.
        index: usize,
        /// Why.
        source: Box<NodeError>,
    },
}

impl From<ApiFailure> for NodeError {
    fn from(f: ApiFailure) -> Self {
        match f {
            ApiFailure::BadRequest(m)
            | ApiFailure::TooLarge(m)
            | ApiFailure::NoNode(m)
            | ApiFailure::NoPoints(m) => NodeError::Model(m),
            ApiFailure::UnknownModel(m) => NodeError::UnknownModel(m),
        }
    }
}

/// From a node's task to the run.
enum Msg {
    /// A node serves (part of) it.
    Peer { id: String, peer: String },
    /// A map item ran.
    Item {
        id: String,
        index: usize,
        peers: Vec<String>,
        started_ms: u64,
        ms: u64,
    },
    /// Generated text.
    Token { id: String, text: String },
    /// A Python job for the requester's runner.
    Python { id: String, job: Value },
}

/// Messages of a run's node to the run.
#[derive(Clone)]
struct Report {
    id: String,
    tx: mpsc::UnboundedSender<Msg>,
    /// Where Python jobs wait for their answers; `None` when the run has
    /// no Python runner.
    python: Option<Arc<Live>>,
    /// The account paying for the run's model and embedding work (its
    /// API key), if any.
    account: Option<String>,
}

impl Report {
    fn peer(&self, peer: &str) {
        let _ = self.tx.send(Msg::Peer {
            id: self.id.clone(),
            peer: peer.to_owned(),
        });
    }

    /// Runs `code` with `inputs` as its variables in the requester's
    /// sandbox, or else in a tab that runs Python for others: what it
    /// printed.
    async fn python(
        &self,
        f: &Flows,
        code: &str,
        inputs: Map<String, Value>,
        timeout_ms: u64,
        item: Option<usize>,
    ) -> Result<String, NodeError> {
        let Some(live) = self.python.as_ref() else {
            return self.python_on_network(f, code, inputs, timeout_ms).await;
        };
        let job = format!("{:032x}", rand::random::<u128>());
        let (tx, rx) = oneshot::channel();
        live.python
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(job.clone(), tx);
        // Forgotten when answered or when this node ends (time limit,
        // cancellation).
        struct Forget<'a>(&'a Live, &'a str);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0
                    .python
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(self.1);
            }
        }
        let _forget = Forget(live, &job);
        let _ = self.tx.send(Msg::Python {
            id: self.id.clone(),
            job: json!({
                "job": job, "code": code, "inputs": inputs, "timeout_ms": timeout_ms, "item": item,
            }),
        });
        match rx.await {
            Ok(Ok(text)) => Ok(text),
            Ok(Err(why)) => Err(NodeError::Python(why)),
            Err(_) => Err(NodeError::NoAnswer),
        }
    }

    /// Runs a Python job in a tab that runs Python for others (registered
    /// `python: true`), least loaded first; a tab that fails to answer
    /// (gone, busy, its runner broke) hands the job to the next, a failure
    /// of the code itself ends it.
    async fn python_on_network(
        &self,
        f: &Flows,
        code: &str,
        inputs: Map<String, Value>,
        timeout_ms: u64,
    ) -> Result<String, NodeError> {
        use crate::registry::{NoNode, PYTHON};
        use tabnode_core::{PythonJob, PythonOutcome, Request, Response};
        let ctx = &f.api().infer;
        let registry = &ctx.state.registry;
        let job = PythonJob {
            job: format!("{}/{}", self.id, rand::random::<u32>()),
            code: code.to_owned(),
            inputs_json: Value::Object(inputs).to_string(),
            timeout_ms,
        };
        // The code's limit, and Pyodide's loading in a tab that has not
        // run Python yet.
        let wait = Duration::from_millis(timeout_ms) + PYTHON_LOAD_ALLOWANCE;
        let mut exclude = std::collections::HashSet::new();
        let mut last = String::from("none was free");
        for _ in 0..ctx.config.max_attempts.max(1) {
            // Every such tab tried: waiting for one to free up is no use.
            if !exclude.is_empty() && registry.serving(PYTHON).iter().all(|p| exclude.contains(p)) {
                break;
            }
            let slot = match crate::inference::acquire(ctx, PYTHON, &exclude).await {
                Ok(s) => s,
                Err(NoNode::UnknownModel) => return Err(NodeError::NoPythonRunner),
                Err(NoNode::Unavailable) => break,
            };
            let peer = slot.peer;
            self.peer(&peer.to_string());
            let answer = ctx
                .client
                .request(peer, Request::Python(Box::new(job.clone())), wait)
                .await;
            match answer {
                Ok(Response::Python(PythonOutcome::Printed(text))) => {
                    registry.release(slot, true);
                    return Ok(text);
                }
                Ok(Response::Python(PythonOutcome::Failed(why))) => {
                    registry.release(slot, true);
                    return Err(NodeError::Python(why));
                }
                Ok(other) => {
                    registry.release(slot, false);
                    last = format!("{other:?}");
                }
                Err(e) => {
                    registry.release(slot, false);
                    last = e.to_string();
                }
            }
            tracing::warn!(%peer, "python job {} leaves its tab: {last}", job.job);
            exclude.insert(peer);
        }
        Err(NodeError::PythonNodes(last))
    }
}

/// How long a tab may take to load Pyodide before a job's own limit starts.
const PYTHON_LOAD_ALLOWANCE: Duration = Duration::from_secs(30);

/// A request's body admitted (rate limit, size) and read as a JSON object.
fn object(
    f: &Flows,
    addr: SocketAddr,
    body: Result<Bytes, BytesRejection>,
) -> Result<Map<String, Value>, Box<Response>> {
    let body = admit(f.api(), addr, body)?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(Box::new(invalid(
            "invalid_json",
            "the body is not a JSON object",
        ))),
    }
}

/// `POST /v1/flows/run`.
pub(crate) async fn run(
    State(f): State<Flows>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    caller: Option<axum::Extension<crate::openai::Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut o = match object(&f, addr, body) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    if let Err(r) = crate::openai::within_allowance(
        f.api(),
        addr,
        caller.as_ref().and_then(|c| c.0.account.as_deref()),
    ) {
        return *r;
    }
    let doc = match (o.remove("flow"), o.get("template")) {
        (Some(_), Some(_)) => {
            return invalid(
                "invalid_flow",
                "give a \"flow\" or a \"template\", not both",
            )
        }
        (Some(doc), None) => serde_json::from_value(doc).map_err(|e| e.to_string()),
        (None, Some(name)) => match from_template(name, &o) {
            Ok(doc) => Ok(doc),
            Err(r) => return *r,
        },
        (None, None) => {
            return invalid(
                "invalid_flow",
                "give the flow to run as \"flow\", or a \"template\" by name",
            )
        }
    };
    let flow = match doc
        .map_err(tabnode_flows::FlowError::Json)
        .and_then(Flow::parse)
    {
        Ok(flow) => flow,
        Err(e) => return invalid("invalid_flow", e.to_string()),
    };
    let needed = flow.needed();
    let stream = !matches!(o.get("stream"), Some(Value::Bool(false)));
    let python_runner = match o.get("python") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "requester" && stream => true,
        Some(Value::String(s)) if s == "requester" => return invalid(
            "invalid_request",
            "python: \"requester\" answers the stream's python events; it needs \"stream\": true",
        ),
        Some(other) => {
            return invalid(
                "invalid_request",
                format!("python: \"requester\" (the requester runs the python steps), not {other}"),
            )
        }
    };
    // What this relay does not run: pages rendered in a headless browser.
    let unsupported = |step: &Step| match step {
        Step::Scrape { render: true, .. } => {
            Some("scrape with render (a headless browser) does not run on this relay yet")
        }
        _ => None,
    };
    let refused = flow
        .nodes
        .iter()
        .filter(|(id, _)| needed.contains(*id))
        .find_map(|(id, n)| {
            let step = match &n.step {
                Step::Map { step, .. } => step.as_ref(),
                s => s,
            };
            unsupported(step).map(|why| format!("node {id}: {why}"))
        });
    if let Some(why) = refused {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "invalid_request_error",
            Some("unsupported_node"),
            None,
            why,
        );
    }
    let inputs = match o.remove("inputs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return invalid("invalid_inputs", "inputs: an object of strings"),
    };
    let mut given = BTreeMap::new();
    for (k, v) in inputs {
        let Value::String(s) = v else {
            return invalid("invalid_inputs", format!("inputs.{k}: a string"));
        };
        given.insert(k, s);
    }
    if let Some(missing) = flow
        .input_names()
        .into_iter()
        .find(|n| !given.contains_key(n))
    {
        return invalid(
            "invalid_inputs",
            format!("inputs.{missing}: the flow reads it and it is not given"),
        );
    }
    // A limit's value, or why not.
    let limit = |name: &str, default: u64, hi: u64| -> Result<u64, String> {
        match o.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => match v.as_u64() {
                Some(n) if (1000..=hi).contains(&n) => Ok(n),
                _ => Err(format!("{name}: {v} is not an integer from 1000 to {hi}")),
            },
        }
    };
    let limits = limit("timeout_ms", MAX_RUN_MS, MAX_RUN_MS).and_then(|run| {
        limit("node_timeout_ms", DEFAULT_NODE_MS.min(run), run).map(|node| (run, node))
    });
    let (run_ms, node_ms) = match limits {
        Ok(l) => l,
        Err(why) => return invalid("invalid_limit", why),
    };

    let id = format!("run-{:016x}", rand::random::<u64>());
    let record = json!({
        "id": id,
        "status": "running",
        "created_ms": now_ms(),
        "flow": flow.doc,
        "inputs": given,
        "nodes": flow.nodes.keys().map(|n| {
            let s = if needed.contains(n) { "queued" } else { "skipped" };
            (n.clone(), json!({ "status": s }))
        }).collect::<Map<String, Value>>(),
        "outputs": {},
    });
    let live = Arc::new(Live {
        record: Mutex::new(record.clone()),
        cancel: Notify::new(),
        python: Mutex::default(),
    });
    f.live
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id.clone(), live.clone());
    f.save(&id, record).await;
    let (tx, mut rx) = mpsc::channel::<Value>(1024);
    // The first event names the run (to cancel it, or read it later).
    let _ = tx.try_send(json!({ "type": "run", "id": id }));
    tokio::spawn(execute(
        f.clone(),
        id.clone(),
        live,
        RunSpec {
            flow,
            inputs: given,
            run_limit: Duration::from_millis(run_ms),
            node_limit: Duration::from_millis(node_ms),
            python_runner,
            account: caller.and_then(|c| c.0.account.clone()),
        },
        tx,
    ));
    if stream {
        let body = futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
                .map(|e| e.map(|v| Ok::<_, Infallible>(Event::default().data(v.to_string()))))
        });
        return Sse::new(body)
            .keep_alive(KeepAlive::default())
            .into_response();
    }
    // The whole run, then its record.
    while let Some(event) = rx.recv().await {
        if event["type"] == "done" {
            break;
        }
    }
    record_of(&f, &id).await.map_or_else(
        || {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                None,
                "the run's record is lost",
            )
        },
        |r| Json(r).into_response(),
    )
}

/// The flow of template `name`, with the body's `model` and `collection`
/// set in it.
fn from_template(name: &Value, body: &Map<String, Value>) -> Result<FlowDoc, Box<Response>> {
    let names = || {
        plan::TEMPLATES
            .iter()
            .map(|t| t.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(t) = name.as_str().and_then(plan::template) else {
        return Err(Box::new(invalid(
            "unknown_template",
            format!("template {name}: one of {}", names()),
        )));
    };
    let mut doc = t
        .doc()
        .map_err(|e| Box::new(invalid("invalid_flow", e.to_string())))?;
    for (field, set) in [
        ("model", plan::set_model as fn(&mut FlowDoc, &str)),
        ("collection", plan::set_collection),
    ] {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(v)) if !v.is_empty() => set(&mut doc, v),
            Some(other) => {
                return Err(Box::new(invalid(
                    "invalid_request",
                    format!("{field}: a name, not {other}"),
                )))
            }
        }
    }
    Ok(doc)
}

/// `GET /v1/flows/templates`: the shipped flows.
pub(crate) async fn templates() -> Response {
    let list: Vec<Value> = plan::TEMPLATES
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "about": t.about,
                "inputs": t.inputs,
                "flow": t.doc().ok(),
            })
        })
        .collect();
    Json(json!({ "templates": list })).into_response()
}

/// `POST /v1/flows/plan`: a flow for `{"query", "collection"?, "model"?,
/// "planner"?}`. `planner` `rules` (the default) picks a template by rules;
/// `model` asks a model which template (its choice checked: a template the
/// query cannot fill falls back to the rules, saying why); `free` has the
/// model write the flow, validated, one repair asked with the error, then
/// refused (422 `plan_refused`). The answer: the planner, the template (or
/// none), why, the inputs, the flow (the model and collection set in it),
/// and the model's own answers.
pub(crate) async fn plan_query(
    State(f): State<Flows>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    caller: Option<axum::Extension<crate::openai::Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let o = match object(&f, addr, body) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let account = caller.and_then(|c| c.0.account);
    let Some(query) = o
        .get("query")
        .and_then(Value::as_str)
        .filter(|q| !q.trim().is_empty())
    else {
        return invalid("invalid_request", "query: the question or task, a string");
    };
    let collection = o.get("collection").and_then(Value::as_str);
    let planner = match o.get("planner") {
        None | Some(Value::Null) => "rules",
        Some(Value::String(p)) if ["rules", "model", "free"].contains(&p.as_str()) => p.as_str(),
        Some(other) => {
            return invalid(
                "invalid_request",
                format!("planner: rules, model or free, not {other}"),
            )
        }
    };
    let rules = plan::plan(query, collection);
    if planner == "rules" {
        return planned(&o, "rules", rules, Vec::new());
    }
    // Asking the model is work on the network: a key pays for it, else
    // the address's free allowance.
    if let Err(r) = crate::openai::within_allowance(f.api(), addr, account.as_deref()) {
        return *r;
    }
    let model = match planning_model(&f, &o) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    if planner == "model" {
        let answer = match ask(
            &f,
            &model,
            plan::choice_prompt(query),
            16,
            account.as_deref(),
        )
        .await
        {
            Ok(a) => a,
            Err(r) => return *r,
        };
        let chosen = plan::read_choice(&answer, query).unwrap_or_else(|why| plan::Plan {
            why: format!(
                "the model's choice was refused ({why}); by rules: {}",
                rules.why
            ),
            ..rules
        });
        return planned(&o, "model", chosen, vec![answer]);
    }
    // Free: the model writes the flow; one repair, then refused.
    let mut answers = Vec::new();
    let mut prompt = plan::flow_prompt(query, &model);
    loop {
        let answer = match ask(&f, &model, prompt, FREE_PLAN_TOKENS, account.as_deref()).await {
            Ok(a) => a,
            Err(r) => return *r,
        };
        answers.push(answer.clone());
        match plan::read_flow(&answer) {
            Ok(mut doc) => {
                plan::set_model(&mut doc, &model);
                if let Some(c) = collection {
                    plan::set_collection(&mut doc, c);
                }
                return Json(json!({
                    "planner": "free",
                    "template": null,
                    "why": format!("{model} wrote it ({} attempts)", answers.len()),
                    "inputs": { plan::FREE_INPUT: query },
                    "flow": doc,
                    "answers": answers,
                }))
                .into_response();
            }
            Err(e) if answers.len() < 2 => {
                prompt = plan::repair_prompt(query, &model, &answer, &e.to_string());
            }
            Err(e) => {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Json(json!({
                        "error": {
                            "message": format!("the model's flow is not valid after a repair: {e}"),
                            "type": "invalid_request_error",
                            "param": null,
                            "code": "plan_refused",
                        },
                        "answers": answers,
                    })),
                )
                    .into_response();
            }
        }
    }
}

/// The most tokens a model may write a flow in (a flow of a dozen nodes
/// takes about 400).
pub const FREE_PLAN_TOKENS: u32 = 512;

/// The answer for a chosen template.
fn planned(
    body: &Map<String, Value>,
    planner: &str,
    p: plan::Plan,
    answers: Vec<String>,
) -> Response {
    let doc = match from_template(&json!(p.template), body) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    Json(json!({
        "planner": planner,
        "template": p.template,
        "why": p.why,
        "inputs": p.inputs,
        "flow": doc,
        "answers": answers,
    }))
    .into_response()
}

/// The model a planner asks: the body's, else the first chat model a node
/// serves now.
fn planning_model(f: &Flows, body: &Map<String, Value>) -> Result<String, Box<Response>> {
    if let Some(m) = body.get("model").and_then(Value::as_str) {
        return Ok(m.to_owned());
    }
    let state = &f.api().infer.state;
    let served = state.registry.served_models();
    state
        .catalog
        .models
        .iter()
        .find(|m| m.chat && served.iter().any(|(id, _, _)| id == &m.id))
        .map(|m| m.id.clone())
        .ok_or_else(|| {
            Box::new(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("no_planner"),
                None,
                "no node serves a chat model to plan with",
            ))
        })
}

/// `prompt` asked of `model` as a greedy chat: its answer.
async fn ask(
    f: &Flows,
    model: &str,
    prompt: String,
    max_tokens: u32,
    account: Option<&str>,
) -> Result<String, Box<Response>> {
    let step = Step::Llm(tabnode_flows::Llm {
        model: model.to_owned(),
        mode: LlmMode::Chat,
        max_tokens,
        temperature: 0.0,
        system: None,
    });
    match llm(f, &step, prompt, None, account).await {
        Ok((text, _)) => Ok(text),
        Err(NodeError::UnknownModel(m)) => Err(Box::new(error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found"),
            Some("model"),
            format!("no node serves the model {m}"),
        ))),
        Err(e) => Err(Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("no_planner"),
            None,
            format!("the planning model did not answer: {e}"),
        ))),
    }
}

async fn record_of(f: &Flows, id: &str) -> Option<Value> {
    if let Some(l) = f.live_run(id) {
        return Some(
            l.record
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        );
    }
    let runs = f.runs.clone();
    let id = id.to_owned();
    match tokio::task::spawn_blocking(move || runs.load(&id)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::error!("reading a flow run: {e}");
            None
        }
        Err(_) => None,
    }
}

/// The answer for a run id the relay does not know.
fn no_run(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("run_not_found"),
        None,
        format!("no flow run {id}"),
    )
}

/// `GET /v1/flows/runs/{id}`.
pub(crate) async fn get_run(State(f): State<Flows>, Path(id): Path<String>) -> Response {
    match record_of(&f, &id).await {
        Some(r) => Json(r).into_response(),
        None => no_run(&id),
    }
}

/// `GET /v1/flows/runs?limit=`: the newest runs (20, at most 100), newest
/// first.
pub(crate) async fn list_runs(
    State(f): State<Flows>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 20,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => return invalid("invalid_limit", "limit: an integer from 1 to 100"),
    };
    let runs = f.runs.clone();
    let failed = |why: String| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            None,
            None,
            why,
        )
    };
    match tokio::task::spawn_blocking(move || runs.recent(limit)).await {
        Ok(Ok(list)) => Json(json!({ "runs": list })).into_response(),
        Ok(Err(e)) => failed(e.to_string()),
        Err(e) => failed(e.to_string()),
    }
}

/// `DELETE /v1/flows/runs/{id}`: cancels a run in progress.
pub(crate) async fn cancel_run(State(f): State<Flows>, Path(id): Path<String>) -> Response {
    match f.live_run(&id) {
        Some(l) => {
            l.cancel.notify_one();
            Json(json!({ "id": id, "cancelling": true })).into_response()
        }
        None if record_of(&f, &id).await.is_some() => error(
            StatusCode::CONFLICT,
            "invalid_request_error",
            Some("run_finished"),
            None,
            format!("flow run {id} has finished"),
        ),
        None => no_run(&id),
    }
}

/// The longest answer a Python job may give (what it printed).
pub const MAX_PYTHON_ANSWER_BYTES: usize = 1 << 20;

/// `POST /v1/flows/runs/{id}/python`: a Python job's answer from the
/// requester's runner, `{"job", "text"}` or `{"job", "error"}`.
pub(crate) async fn python_answer(
    State(f): State<Flows>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let o = match object(&f, addr, body) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let answer = match (o.get("text"), o.get("error")) {
        (Some(Value::String(t)), None) => Ok(t.clone()),
        (None, Some(Value::String(e))) => Err(e.clone()),
        _ => {
            return invalid(
                "invalid_request",
                "give the job's \"text\" (what it printed) or its \"error\", a string",
            )
        }
    };
    if answer.as_ref().map_or_else(String::len, String::len) > MAX_PYTHON_ANSWER_BYTES {
        return invalid(
            "invalid_request",
            format!("an answer is at most {MAX_PYTHON_ANSWER_BYTES} bytes"),
        );
    }
    let Some(job) = o.get("job").and_then(Value::as_str) else {
        return invalid("invalid_request", "job: the python event's job id");
    };
    let Some(live) = f.live_run(&id) else {
        return no_run(&id);
    };
    let waiting = live
        .python
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(job);
    match waiting.map(|tx| tx.send(answer)) {
        Some(Ok(())) => Json(json!({ "accepted": true })).into_response(),
        _ => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("job_not_found"),
            None,
            format!("run {id} waits for no python job {job}"),
        ),
    }
}

/// How a run ended.
enum End {
    Finished,
    TimedOut,
    Cancelled,
}

/// What a run runs, and how.
struct RunSpec {
    flow: Flow,
    inputs: BTreeMap<String, String>,
    run_limit: Duration,
    node_limit: Duration,
    /// The requester answers the run's Python jobs.
    python_runner: bool,
    /// The account the run's work is charged to.
    account: Option<String>,
}

/// Runs the spec's flow to its end, keeping `live`'s record and sending
/// events on `events`; saves the record and forgets the live run at the
/// end.
async fn execute(
    f: Flows,
    run_id: String,
    live: Arc<Live>,
    spec: RunSpec,
    events: mpsc::Sender<Value>,
) {
    let RunSpec {
        flow,
        inputs,
        run_limit,
        node_limit,
        python_runner,
        account,
    } = spec;
    let started = Instant::now();
    let update = |change: &dyn Fn(&mut Value)| {
        let mut r = live.record.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut r);
    };
    // Events wait here and are sent (in order, at the requester's pace)
    // at each turn of the loop.
    let pending: Mutex<Vec<Value>> = Mutex::new(Vec::new());
    let emit = |v: Value| {
        pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(v)
    };
    let take = || std::mem::take(&mut *pending.lock().unwrap_or_else(PoisonError::into_inner));
    let (msg_tx, mut msgs) = mpsc::unbounded_channel::<Msg>();
    let mut schedule = Schedule::new(&flow);
    let mut values: HashMap<(String, String), Val> = HashMap::new();
    let mut tasks: JoinSet<(String, Result<Outputs, NodeError>)> = JoinSet::new();
    let mut node_started: HashMap<String, Instant> = HashMap::new();
    let deadline = tokio::time::sleep(run_limit);
    tokio::pin!(deadline);
    let end = 'run: loop {
        for v in take() {
            if events.send(v).await.is_err() {
                // The requester left.
                break 'run End::Cancelled;
            }
        }
        for id in schedule.ready() {
            let Some(node) = flow.nodes.get(&id) else {
                continue;
            };
            let mut given = BTreeMap::new();
            for (name, src) in &node.inputs {
                if let Some(v) = values.get(&(src.0.clone(), src.1.clone())) {
                    given.insert(name.clone(), v.clone());
                }
            }
            let at = now_ms();
            update(&|r| {
                r["nodes"][&id] = json!({ "status": "running", "started_ms": at, "peers": [] })
            });
            emit(json!({ "type": "node", "id": id, "status": "running" }));
            node_started.insert(id.clone(), Instant::now());
            let report = Report {
                id: id.clone(),
                tx: msg_tx.clone(),
                python: python_runner.then(|| live.clone()),
                account: account.clone(),
            };
            let step = node.step.clone();
            let (f, run_inputs) = (f.clone(), inputs.clone());
            tasks.spawn(async move {
                let r = tokio::time::timeout(
                    node_limit,
                    node_outputs(&f, &step, given, &run_inputs, &report),
                )
                .await
                .unwrap_or_else(|_| Err(NodeError::TimeLimit(node_limit.as_millis())));
                (report.id, r)
            });
        }
        if schedule.finished() {
            break End::Finished;
        }
        tokio::select! {
            Some(joined) = tasks.join_next() => {
                let (id, result) = match joined {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("flow node task: {e}");
                        continue;
                    }
                };
                let ms = node_started.get(&id).map_or(0, |t| t.elapsed().as_millis() as u64);
                match result {
                    Ok(outs) => {
                        schedule.done(&id);
                        let shown: Map<String, Value> = outs.iter().map(|(k, v)| (k.clone(), v.json())).collect();
                        update(&|r| {
                            let n = &mut r["nodes"][&id];
                            n["status"] = json!("done");
                            n["ms"] = json!(ms);
                            n["output"] = Value::Object(shown.clone());
                        });
                        emit(json!({ "type": "node", "id": id, "status": "done", "ms": ms, "output": shown }));
                        if matches!(flow.nodes.get(&id).map(|n| &n.step), Some(Step::Output)) {
                            update(&|r| {
                                for (k, v) in &shown {
                                    r["outputs"][k] = v.clone();
                                }
                            });
                        }
                        for (k, v) in outs {
                            values.insert((id.clone(), k), v);
                        }
                    }
                    Err(why) => {
                        let why = why.to_string();
                        let skipped = schedule.failed(&id);
                        update(&|r| {
                            let n = &mut r["nodes"][&id];
                            n["status"] = json!("failed");
                            n["ms"] = json!(ms);
                            n["error"] = json!(why);
                            for s in &skipped {
                                r["nodes"][s]["status"] = json!("skipped");
                            }
                        });
                        emit(json!({ "type": "node", "id": id, "status": "failed", "ms": ms, "error": why }));
                        for s in skipped {
                            emit(json!({ "type": "node", "id": s, "status": "skipped" }));
                        }
                    }
                }
            }
            Some(msg) = msgs.recv() => match msg {
                Msg::Peer { id, peer } => {
                    update(&|r| {
                        if let Some(p) = r["nodes"][&id]["peers"].as_array_mut() {
                            if !p.iter().any(|x| x == &json!(peer)) {
                                p.push(json!(peer));
                            }
                        }
                    });
                    emit(json!({ "type": "node", "id": id, "status": "running", "peer": peer }));
                }
                Msg::Item { id, index, peers, started_ms, ms } => {
                    update(&|r| {
                        let n = &mut r["nodes"][&id];
                        if !n["items"].is_array() {
                            n["items"] = json!([]);
                        }
                        if let Some(items) = n["items"].as_array_mut() {
                            items.push(json!({ "index": index, "peers": peers, "started_ms": started_ms, "ms": ms }));
                        }
                        if let Some(p) = n["peers"].as_array_mut() {
                            for peer in &peers {
                                if !p.iter().any(|x| x == &json!(peer)) {
                                    p.push(json!(peer));
                                }
                            }
                        }
                    });
                }
                Msg::Token { id, text } => emit(json!({ "type": "token", "id": id, "text": text })),
                Msg::Python { id, mut job } => {
                    job["type"] = json!("python");
                    job["id"] = json!(id);
                    emit(job);
                }
            },
            () = &mut deadline => break End::TimedOut,
            () = live.cancel.notified() => break End::Cancelled,
            () = events.closed() => break End::Cancelled,
        }
    };
    tasks.abort_all();
    let (status, why) = match end {
        End::Finished => {
            let failed = flow
                .nodes
                .keys()
                .any(|id| schedule.status(id) == Some(Status::Failed));
            (if failed { "failed" } else { "done" }, None)
        }
        End::TimedOut => (
            "failed",
            Some(format!(
                "the run's time limit ({} ms) passed",
                run_limit.as_millis()
            )),
        ),
        End::Cancelled => ("cancelled", Some("cancelled".to_owned())),
    };
    let ms = started.elapsed().as_millis() as u64;
    update(&|r| {
        r["status"] = json!(status);
        r["ms"] = json!(ms);
        if let Some(why) = &why {
            end_nodes(r, why);
        }
    });
    let record = live
        .record
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    f.save(&run_id, record.clone()).await;
    f.live
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&run_id);
    if let Some(why) = why {
        emit(json!({ "type": "error", "run": run_id, "message": why }));
    }
    emit(
        json!({ "type": "done", "run": run_id, "status": status, "ms": ms, "outputs": record["outputs"] }),
    );
    for v in take() {
        if events.send(v).await.is_err() {
            break;
        }
    }
}

/// A node's outputs from its inputs.
async fn node_outputs(
    f: &Flows,
    step: &Step,
    mut inputs: BTreeMap<String, Val>,
    run_inputs: &BTreeMap<String, String>,
    report: &Report,
) -> Result<Outputs, NodeError> {
    let text = |inputs: &BTreeMap<String, Val>, name: &str| {
        inputs.get(name).map(|v| v.text("\n\n")).unwrap_or_default()
    };
    let one = |name: &str, v: Val| Ok(BTreeMap::from([(name.to_owned(), v)]));
    match step {
        Step::Input { .. } => Ok(run_inputs
            .iter()
            .map(|(k, v)| (k.clone(), Val::Text(v.clone())))
            .collect()),
        Step::Output => Ok(inputs),
        Step::Template { text: t, .. } => {
            let values = inputs
                .iter()
                .map(|(k, v)| (k.clone(), v.text("\n\n")))
                .collect();
            one("text", Val::Text(fill(t, &values)))
        }
        Step::Merge { separator } => {
            let parts: Vec<String> = inputs.values().map(|v| v.text(separator)).collect();
            one("text", Val::Text(parts.join(separator)))
        }
        Step::Split {
            chunk_chars,
            overlap,
        } => one(
            "chunks",
            Val::List(split(
                &text(&inputs, "text"),
                *chunk_chars as usize,
                *overlap as usize,
            )),
        ),
        Step::Llm(_) => {
            let account = report.account.as_deref();
            let (t, _) = llm(f, step, text(&inputs, "prompt"), Some(report), account).await?;
            one("text", Val::Text(t))
        }
        Step::Embed { model } => {
            let model = match model {
                Some(m) => m.clone(),
                None => f
                    .api()
                    .infer
                    .state
                    .catalog
                    .embeddings
                    .first()
                    .map(|m| m.id.clone())
                    .ok_or(NodeError::NoEmbeddingModel)?,
            };
            let mut e = f
                .vectors
                .embed(
                    &model,
                    vec![text(&inputs, "text")],
                    report.account.as_deref(),
                )
                .await?;
            for n in &e.nodes {
                report.peer(n);
            }
            one("vector", Val::Vector(e.vectors.pop().unwrap_or_default()))
        }
        Step::Retrieve { collection, limit } => {
            let store = f.vectors.store.clone();
            let info = store.info(collection)?;
            let mut e = f
                .vectors
                .embed(
                    &info.model,
                    vec![text(&inputs, "query")],
                    report.account.as_deref(),
                )
                .await?;
            for n in &e.nodes {
                report.peer(n);
            }
            let vector = e.vectors.pop().unwrap_or_default();
            let (name, limit) = (collection.clone(), *limit as usize);
            let found = tokio::task::spawn_blocking(move || {
                store.query(
                    &name,
                    &Query {
                        vector,
                        limit,
                        filter: None,
                        exact: false,
                        effort: 0,
                    },
                )
            })
            .await??;
            let texts: Vec<&str> = found.iter().filter_map(|p| p.text.as_deref()).collect();
            Ok(BTreeMap::from([
                ("text".to_owned(), Val::Text(texts.join("\n\n"))),
                ("points".to_owned(), Val::Json(json!(found))),
            ]))
        }
        Step::Map {
            step: inner,
            port,
            max_parallel,
        } => {
            let items = match inputs.remove("items") {
                Some(Val::List(l)) => l,
                _ => Vec::new(),
            };
            let runs = items.into_iter().enumerate().map(|(index, item)| {
                let (inner, port) = (inner.as_ref(), port.as_str());
                async move {
                    let started_ms = now_ms();
                    let t = Instant::now();
                    let (text, peers) = match inner {
                        Step::Llm(_) => {
                            llm(f, inner, item, None, report.account.as_deref()).await?
                        }
                        Step::Scrape { max_bytes, .. } => {
                            (f.scraper.scrape(&item, *max_bytes).await?.text, Vec::new())
                        }
                        Step::Template { text: tpl, .. } => (
                            fill(tpl, &BTreeMap::from([(port.to_owned(), item)])),
                            Vec::new(),
                        ),
                        Step::Python { code, timeout_ms } => {
                            let vars = Map::from_iter([(port.to_owned(), json!(item))]);
                            (
                                report
                                    .python(f, code, vars, *timeout_ms, Some(index))
                                    .await?,
                                Vec::new(),
                            )
                        }
                        other => return Err(NodeError::Unsupported(other.kind())),
                    };
                    let _ = report.tx.send(Msg::Item {
                        id: report.id.clone(),
                        index,
                        peers: peers.clone(),
                        started_ms,
                        ms: t.elapsed().as_millis() as u64,
                    });
                    Ok::<_, NodeError>(text)
                }
                .map(move |r| {
                    r.map_err(|e| NodeError::Item {
                        index,
                        source: Box::new(e),
                    })
                })
            });
            let texts: Vec<String> = futures::stream::iter(runs)
                .buffered(*max_parallel as usize)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;
            Ok(BTreeMap::from([
                ("text".to_owned(), Val::Text(texts.join("\n\n"))),
                ("texts".to_owned(), Val::List(texts)),
            ]))
        }
        Step::Scrape { max_bytes, .. } => {
            let page = f
                .scraper
                .scrape(text(&inputs, "url").trim(), *max_bytes)
                .await?;
            Ok(BTreeMap::from([
                ("text".to_owned(), Val::Text(page.text)),
                ("title".to_owned(), Val::Text(page.title)),
                ("links".to_owned(), Val::List(page.links)),
            ]))
        }
        Step::Python { code, timeout_ms } => {
            let vars = inputs.iter().map(|(k, v)| (k.clone(), v.json())).collect();
            one(
                "text",
                Val::Text(report.python(f, code, vars, *timeout_ms, None).await?),
            )
        }
    }
}

/// An `llm` step's answer to `prompt` and the nodes that served it; its
/// tokens reported as they come when `report` is given.
async fn llm(
    f: &Flows,
    step: &Step,
    prompt: String,
    report: Option<&Report>,
    account: Option<&str>,
) -> Result<(String, Vec<String>), NodeError> {
    let Step::Llm(p) = step else {
        return Err(NodeError::Unsupported(step.kind()));
    };
    let prompt = match p.mode {
        LlmMode::Completion => Prompt::Text(prompt),
        LlmMode::Chat => {
            let mut messages = Vec::new();
            if let Some(system) = &p.system {
                messages.push(ChatMessage {
                    role: "system".into(),
                    content: system.clone(),
                });
            }
            messages.push(ChatMessage {
                role: "user".into(),
                content: prompt,
            });
            Prompt::Chat(messages)
        }
    };
    let mut request = GenerateRequest::new(prompt);
    request.max_tokens = p.max_tokens;
    request.temperature = p.temperature;
    let (tx, mut rx) = mpsc::channel(256);
    tokio::spawn(run_request(
        f.api().infer.clone(),
        ApiRequest {
            model: p.model.clone(),
            request,
            account: account.map(str::to_owned),
        },
        Requester::Events(tx),
    ));
    let mut text = String::new();
    while let Some(e) = rx.recv().await {
        match e {
            ApiEvent::Started { node, .. } => {
                if let Some(r) = report {
                    r.peer(&node);
                }
            }
            ApiEvent::Text { text: t, node, .. } => {
                if let Some(r) = report {
                    r.peer(&node);
                    let _ = r.tx.send(Msg::Token {
                        id: r.id.clone(),
                        text: t.clone(),
                    });
                }
                text.push_str(&t);
            }
            ApiEvent::Done { usage, .. } => return Ok((text, usage.nodes)),
            ApiEvent::Failed(f) => return Err(f.into()),
        }
    }
    Err(NodeError::NoAnswer)
}

/// `text` cut into chunks of at most `size` characters, each starting
/// `size - overlap` characters after the last, cut at a space where one
/// lies in the chunk's last fifth.
fn split(text: &str, size: usize, overlap: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut at = 0;
    while at < chars.len() {
        let mut end = (at + size).min(chars.len());
        if end < chars.len() {
            if let Some(space) = (at + size * 4 / 5..end)
                .rev()
                .find(|&i| chars[i].is_whitespace())
            {
                end = space + 1;
            }
        }
        out.push(chars[at..end].iter().collect::<String>().trim().to_owned());
        if end == chars.len() {
            break;
        }
        at = (end.saturating_sub(overlap)).max(at + 1);
    }
    out.retain(|c| !c.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_cuts_at_spaces_with_overlap() {
        let text = "alpha beta gamma delta epsilon zeta eta theta iota kappa ".repeat(10);
        let chunks = split(&text, 100, 20);
        assert!(chunks.len() > 5);
        for c in &chunks {
            assert!(c.chars().count() <= 100, "{c}");
            assert!(!c.starts_with(' ') && !c.ends_with(' '));
        }
        // Every word of the text is in some chunk, in order.
        let joined = chunks.join(" ");
        for w in text.split_whitespace() {
            assert!(joined.contains(w));
        }
        assert_eq!(split("", 100, 0), Vec::<String>::new());
        assert_eq!(split("short", 100, 0), ["short"]);
        // No space: cut at the size.
        let long = "x".repeat(250);
        assert_eq!(
            split(&long, 100, 0)
                .iter()
                .map(String::len)
                .collect::<Vec<_>>(),
            [100, 100, 50]
        );
    }

    #[test]
    fn runs_are_kept_across_reopening() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("flows.redb");
        {
            let s = RunStore::open(&path).expect("open");
            s.save("run-1", &json!({"id": "run-1", "status": "done"}))
                .expect("save");
        }
        let s = RunStore::open(&path).expect("reopen");
        assert_eq!(
            s.load("run-1").expect("load"),
            Some(json!({"id": "run-1", "status": "done"}))
        );
        assert_eq!(s.load("run-2").expect("load"), None);
        // A run left running (the relay was killed) reads as failed after a
        // restart, its running node failed and its queued one skipped.
        s.save(
            "run-3",
            &json!({"id": "run-3", "status": "running", "nodes": {
                "a": {"status": "done"}, "b": {"status": "running"}, "c": {"status": "queued"}}}),
        )
        .expect("save");
        drop(s);
        let s = RunStore::open(&path).expect("reopen");
        let r = s.load("run-3").expect("load").expect("kept");
        assert_eq!(r["status"], "failed");
        assert_eq!(r["error"], INTERRUPTED);
        let status = |n: &str| r["nodes"][n]["status"].clone();
        assert_eq!(
            [status("a"), status("b"), status("c")],
            ["done", "failed", "skipped"]
        );
        assert_eq!(r["nodes"]["b"]["error"], INTERRUPTED);
        assert_eq!(
            s.load("run-1").expect("load").expect("kept")["status"],
            "done"
        );
        // Newest first, each once (a run saved twice is listed once).
        for (id, at) in [("run-a", 10), ("run-b", 30), ("run-c", 20)] {
            let r = json!({"id": id, "status": "done", "created_ms": at, "ms": 1});
            s.save(id, &r).expect("save");
            s.save(id, &r).expect("save again");
        }
        let ids: Vec<Value> = s
            .recent(3)
            .expect("recent")
            .iter()
            .map(|r| r["id"].clone())
            .collect();
        assert_eq!(ids, ["run-b", "run-c", "run-a"]);
        assert_eq!(
            s.recent(100).expect("recent").len(),
            5,
            "run-1, run-3 and these"
        );
    }
}
