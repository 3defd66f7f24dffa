//! Work this tab serves for the network: generations (taken from the
//! relay's `Infer`, run by the worker, streamed back in acknowledged
//! chunks) and flows' Python steps (handed to the page's sandbox).

use super::*;

/// A generation this tab runs for the network (the relay asked).
pub(super) struct Served {
    pub(super) request_id: u64,
    /// The driver's id of the `Infer` request, until it is answered.
    pub(super) answer: Option<u64>,
    pub(super) streamer: ChunkStreamer,
    pub(super) tokens: u64,
}

/// What the page is told about generations it serves.
#[derive(serde::Serialize)]
pub(super) struct ServingEvent {
    #[serde(rename = "type")]
    kind: &'static str,
    request_id: u64,
    state: &'static str,
    tokens: u64,
}

/// Takes a network request: refuses it at once (no model, another model,
/// busy) or hands it to the worker, which answers through
/// `GenerateStarted` / `GenerateRejected`.
pub(super) fn serve(shared: &Rc<Shared>, answer: u64, infer: &InferRequest) {
    let refuse = |code, message: String| {
        let _ = shared.command(Command::Respond {
            id: answer,
            response: Response::Error { code, message },
        });
    };
    let models = shared.capabilities.borrow().models.clone();
    if !models.iter().any(|m| model_id(m) == model_id(&infer.model)) {
        return refuse(
            ErrorCode::UnknownModel,
            format!("this tab serves {models:?}, not {}", infer.model),
        );
    }
    let slots = shared.capabilities.borrow().slots as usize;
    // A generation whose end is marked holds no slot any more, even while
    // its last chunk waits for the relay's acknowledgement.
    let generating = shared
        .served
        .borrow()
        .values()
        .filter(|s| s.streamer.generating())
        .count();
    if generating >= slots.max(1) {
        return refuse(ErrorCode::Busy, "this tab is generating already".into());
    }
    let id = shared.next_generation.get();
    shared.next_generation.set(id + 1);
    shared.served.borrow_mut().insert(
        id,
        Served {
            request_id: infer.request_id,
            answer: Some(answer),
            streamer: ChunkStreamer::new(infer),
            tokens: 0,
        },
    );
    let request = infer.request.clone();
    if let Err(e) = shared.post_worker(&ToWorker::Generate { id, request }) {
        shared.served.borrow_mut().remove(&id);
        return refuse(ErrorCode::Unsupported, e.to_string());
    }
    js_event(
        &shared.on_event,
        &PageEvent::Serving(ServingEvent {
            kind: "serving",
            request_id: infer.request_id,
            state: "started",
            tokens: 0,
        }),
    );
}

/// Stops the network generation of `request_id` (the relay asked).
pub(super) fn cancel_served(shared: &Rc<Shared>, request_id: u64) {
    let id = shared
        .served
        .borrow()
        .iter()
        .find(|(_, s)| s.request_id == request_id)
        .map(|(id, _)| *id);
    if let Some(id) = id {
        let _ = shared.post_worker(&ToWorker::Cancel { id });
    }
}

/// Sends the next chunk of network generation `id` if none is in flight;
/// forgets the generation once its last chunk is sent (unacknowledged), or
/// cancels it when the relay says stop.
pub(super) fn pump(shared: &Rc<Shared>, id: u64) {
    let chunk = match shared.served.borrow_mut().get_mut(&id) {
        Some(s) => s.streamer.next_chunk(),
        None => return,
    };
    let Some(chunk) = chunk else { return };
    let shared = shared.clone();
    spawn_local(async move {
        // The last chunk wants no acknowledgement: it goes as a notice.
        let ok = if chunk.end.is_some() {
            shared
                .command(Command::Notify(Request::InferChunk(Box::new(chunk))))
                .is_ok()
        } else {
            let reply = shared
                .request(None, Request::InferChunk(Box::new(chunk)))
                .await;
            matches!(reply, Ok(Response::Ack))
        };
        let done = {
            let mut served = shared.served.borrow_mut();
            match served.get_mut(&id) {
                Some(s) if ok => {
                    s.streamer.acked();
                    s.streamer.finished().then_some((s.request_id, s.tokens))
                }
                Some(s) => Some((s.request_id, s.tokens)),
                None => None,
            }
        };
        if !ok {
            let _ = shared.post_worker(&ToWorker::Cancel { id });
        }
        match done {
            Some((request_id, tokens)) => {
                shared.served.borrow_mut().remove(&id);
                js_event(
                    &shared.on_event,
                    &PageEvent::Serving(ServingEvent {
                        kind: "serving",
                        request_id,
                        state: if ok { "done" } else { "stopped" },
                        tokens,
                    }),
                );
            }
            None => pump(&shared, id),
        }
    });
}

/// The most of what a Python step printed that goes back to the relay
/// (the relay takes no more from a requester's tab either).
const MAX_PYTHON_ANSWER_BYTES: usize = 1 << 20;

/// Runs a flow's Python step in the page's sandbox (the relay asked; the
/// driver has checked that): answers [`PythonOutcome`], or refuses when
/// the visitor has not opted in.
pub(super) fn run_python(shared: &Rc<Shared>, answer: u64, job: &PythonJob) {
    let respond = {
        let shared = shared.clone();
        move |response: Response| {
            let _ = shared.command(Command::Respond {
                id: answer,
                response,
            });
        }
    };
    let Some(runner) = shared.python_runner.borrow().clone() else {
        return respond(Response::Error {
            code: ErrorCode::Unsupported,
            message: "this tab does not run Python for others".into(),
        });
    };
    let Ok(inputs) = js_sys::JSON::parse(&job.inputs_json) else {
        return respond(Response::Error {
            code: ErrorCode::Invalid,
            message: "the job's inputs are not JSON".into(),
        });
    };
    let call = js_sys::Object::new();
    let set = |k: &str, v: &JsValue| js_sys::Reflect::set(&call, &k.into(), v).is_ok();
    let made = set("job", &job.job.as_str().into())
        && set("code", &job.code.as_str().into())
        && set("inputs", &inputs)
        && set("timeout_ms", &(job.timeout_ms as f64).into());
    let promise = match runner.call1(&JsValue::NULL, &call) {
        Ok(p) if made => js_sys::Promise::resolve(&p),
        Ok(_) | Err(_) => {
            return respond(Response::Error {
                code: ErrorCode::Busy,
                message: "the page's Python runner failed".into(),
            })
        }
    };
    js_event(
        &shared.on_event,
        &PageEvent::Serving(ServingEvent {
            kind: "python",
            request_id: 0,
            state: "started",
            tokens: 0,
        }),
    );
    let shared = shared.clone();
    spawn_local(async move {
        let result = wasm_bindgen_futures::JsFuture::from(promise).await;
        let field = |v: &JsValue, k: &str| {
            js_sys::Reflect::get(v, &k.into())
                .ok()
                .and_then(|x| x.as_string())
        };
        let (response, state) = match result {
            Ok(v) => match (field(&v, "text"), field(&v, "error")) {
                (_, Some(error)) => (
                    Response::Python(PythonOutcome::Failed(cap(error))),
                    "failed",
                ),
                (Some(text), None) => (Response::Python(PythonOutcome::Printed(cap(text))), "done"),
                (None, None) => (
                    Response::Error {
                        code: ErrorCode::Busy,
                        message: "the page's Python runner answered neither text nor error".into(),
                    },
                    "stopped",
                ),
            },
            Err(_) => (
                Response::Error {
                    code: ErrorCode::Busy,
                    message: "the page's Python runner failed".into(),
                },
                "stopped",
            ),
        };
        respond(response);
        js_event(
            &shared.on_event,
            &PageEvent::Serving(ServingEvent {
                kind: "python",
                request_id: 0,
                state,
                tokens: 0,
            }),
        );
    });
}

/// `text` cut to [`MAX_PYTHON_ANSWER_BYTES`] at a character boundary.
fn cap(mut text: String) -> String {
    if text.len() > MAX_PYTHON_ANSWER_BYTES {
        let mut end = MAX_PYTHON_ANSWER_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}
