//! Embedding jobs: inputs too many to wait on in one request.
//!
//! * `POST /v1/embeddings/jobs` takes `/v1/embeddings`' body with up to
//!   [`MAX_JOB_INPUTS`] inputs and answers 202 with the job's id at once;
//!   the relay embeds them on the network as it does a request (batches
//!   over every node serving the model, failover, credits).
//! * `GET /v1/embeddings/jobs/{id}` shows its `status` (`running`,
//!   `completed`, `failed`, `cancelled`) and progress (`done` of `total`
//!   inputs); once completed, a page of the vectors as `/v1/embeddings`
//!   answers them (`?offset=0&limit=2048`, indices the inputs' own;
//!   `next_offset` while more remain).
//! * `DELETE /v1/embeddings/jobs/{id}` cancels a running job, or forgets a
//!   finished one.
//!
//! Jobs live in the relay's memory (a restart forgets them; a client
//! sends the job again). At most [`MAX_JOBS`] are held at once; a finished
//! job is kept [`KEEP`] after it ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, ConnectInfo, Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde_json::{json, Value};
use tabnode_core::infer::EmbedResult;

use crate::catalog::EmbeddingModel;
use crate::embeddings::{self, Encoding};
use crate::openai::{admit_within, error, Api};

/// Inputs one job may carry.
pub const MAX_JOB_INPUTS: usize = 50_000;
/// Largest job body: 50,000 texts of about 600 bytes.
pub const MAX_JOB_BODY_BYTES: usize = 32 << 20;
/// Jobs held at once, running or finished.
pub const MAX_JOBS: usize = 16;
/// How long a finished job's results are kept.
pub const KEEP: Duration = Duration::from_secs(3600);
/// Vectors in one page.
pub const PAGE: usize = 2048;

enum Outcome {
    Running,
    Completed {
        result: EmbedResult,
        nodes: Vec<String>,
    },
    Failed(embeddings::Failure),
    Cancelled,
}

struct Job {
    id: String,
    model: EmbeddingModel,
    encoding: Encoding,
    total: usize,
    done: AtomicUsize,
    created_at: u64,
    outcome: Mutex<(Outcome, Option<Instant>)>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

/// The jobs of this relay run.
#[derive(Default)]
pub(crate) struct Jobs {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    next: AtomicU64,
}

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Job>>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets jobs finished more than [`KEEP`] ago.
    fn sweep(&self) {
        self.lock().retain(|_, j| {
            j.outcome
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .1
                .is_none_or(|ended| ended.elapsed() < KEEP)
        });
    }
}

fn finish(job: &Job, outcome: Outcome) {
    let mut o = job.outcome.lock().unwrap_or_else(PoisonError::into_inner);
    if matches!(o.0, Outcome::Running) {
        *o = (outcome, Some(Instant::now()));
    }
}

fn status(job: &Job) -> Value {
    let o = job.outcome.lock().unwrap_or_else(PoisonError::into_inner);
    let status = match o.0 {
        Outcome::Running => "running",
        Outcome::Completed { .. } => "completed",
        Outcome::Failed(_) => "failed",
        Outcome::Cancelled => "cancelled",
    };
    let error = match &o.0 {
        Outcome::Failed(f) => json!({ "message": f.message() }),
        _ => Value::Null,
    };
    json!({
        "id": job.id,
        "object": "embedding.job",
        "error": error,
        "model": job.model.id,
        "status": status,
        "created_at": job.created_at,
        "total": job.total,
        "done": job.done.load(Ordering::SeqCst),
    })
}

fn no_job(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("job_not_found"),
        None,
        format!("no embedding job {id:?} (jobs are kept an hour after they end, and not across relay restarts)"),
    )
}

/// `POST /v1/embeddings/jobs`.
pub(crate) async fn create(
    State(api): State<Api>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    caller: Option<axum::Extension<crate::openai::Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match admit_within(&api, addr, body, MAX_JOB_BODY_BYTES) {
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
    let parsed =
        match embeddings::parse_up_to(&body, &api.infer.state.catalog.embeddings, MAX_JOB_INPUTS) {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
    let jobs = api.jobs.clone();
    jobs.sweep();
    let n = jobs.next.fetch_add(1, Ordering::SeqCst);
    let job = Arc::new(Job {
        id: format!("embjob-{}-{n}", api.infer.state.sessions.epoch),
        model: parsed.model.clone(),
        encoding: parsed.encoding,
        total: parsed.inputs.len(),
        done: AtomicUsize::new(0),
        created_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        outcome: Mutex::new((Outcome::Running, None)),
        task: Mutex::new(None),
    });
    {
        let mut all = jobs.lock();
        if all.len() >= MAX_JOBS {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                Some("too_many_jobs"),
                None,
                format!("this relay holds {MAX_JOBS} embedding jobs; delete finished ones or try again later"),
            );
        }
        all.insert(job.id.clone(), job.clone());
    }
    let infer = api.infer.clone();
    let account = caller.and_then(|c| c.0.account);
    let j = job.clone();
    let task = tokio::spawn(async move {
        let done = |n: usize| {
            j.done.fetch_add(n, Ordering::SeqCst);
        };
        let outcome = match embeddings::embed_with_progress(
            &infer,
            &j.model,
            parsed.inputs,
            account.as_deref(),
            &done,
        )
        .await
        {
            Ok((result, nodes)) => Outcome::Completed { result, nodes },
            Err(f) => Outcome::Failed(f),
        };
        finish(&j, outcome);
    });
    *job.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task.abort_handle());
    (StatusCode::ACCEPTED, Json(status(&job))).into_response()
}

/// Which vectors a `GET` shows.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Page {
    offset: Option<usize>,
    limit: Option<usize>,
}

/// `GET /v1/embeddings/jobs/{id}`.
pub(crate) async fn get(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(page): Query<Page>,
) -> Response {
    api.jobs.sweep();
    let Some(job) = api.jobs.lock().get(&id).cloned() else {
        return no_job(&id);
    };
    let limit = page.limit.unwrap_or(PAGE);
    if limit == 0 || limit > PAGE {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            Some("limit"),
            format!("limit must be from 1 to {PAGE}, not {limit}"),
        );
    }
    let offset = page.offset.unwrap_or(0);
    let mut out = status(&job);
    let o = job.outcome.lock().unwrap_or_else(PoisonError::into_inner);
    match &o.0 {
        Outcome::Completed { result, nodes } => {
            if offset > job.total {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    None,
                    Some("offset"),
                    format!("offset {offset} is past the job's {} inputs", job.total),
                );
            }
            let end = offset.saturating_add(limit).min(job.total);
            let page = embeddings::answer(&job.model.id, job.encoding, result, nodes, offset..end);
            if let (Some(o), Value::Object(p)) = (out.as_object_mut(), page) {
                for k in ["data", "usage", "tabnode"] {
                    if let Some(v) = p.get(k) {
                        o.insert(k.to_owned(), v.clone());
                    }
                }
                o.insert(
                    "next_offset".to_owned(),
                    if end < job.total {
                        json!(end)
                    } else {
                        Value::Null
                    },
                );
            }
            Json(out).into_response()
        }
        Outcome::Failed(_) | Outcome::Running | Outcome::Cancelled => Json(out).into_response(),
    }
}

/// `DELETE /v1/embeddings/jobs/{id}`.
pub(crate) async fn delete(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let Some(job) = api.jobs.lock().remove(&id) else {
        return no_job(&id);
    };
    if let Some(task) = job
        .task
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        task.abort();
    }
    finish(&job, Outcome::Cancelled);
    let mut out = status(&job);
    if let Some(o) = out.as_object_mut() {
        o.insert("deleted".to_owned(), json!(true));
    }
    Json(out).into_response()
}
