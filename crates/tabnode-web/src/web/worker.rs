//! The compute worker bridge: starts the worker, posts it messages and
//! routes what it answers (capabilities, model, generations, proofs).

use super::*;

/// What the page is told when the worker answered a request.
#[derive(serde::Serialize)]
pub(super) struct HandledEvent {
    #[serde(rename = "type")]
    kind: &'static str,
    id: u64,
    elapsed_ms: f64,
    device: String,
    answer: String,
}

pub(super) fn post(worker: &Worker, msg: &ToWorker) -> Result<(), WebError> {
    // 64-bit values travel as BigInts (see `tabnode_core::worker`).
    let serializer =
        serde_wasm_bindgen::Serializer::new().serialize_large_number_types_as_bigints(true);
    let v = serde::Serialize::serialize(msg, &serializer)
        .map_err(|e| WebError::Worker(e.to_string()))?;
    worker
        .post_message(&v)
        .map_err(|e| WebError::Worker(format!("{e:?}")))
}

pub(super) fn start_worker(shared: &Rc<Shared>, url: &str) -> Result<(), WebError> {
    let opts = WorkerOptions::new();
    opts.set_type(WorkerType::Module);
    let worker =
        Worker::new_with_options(url, &opts).map_err(|e| WebError::Worker(format!("{e:?}")))?;
    let weak = Rc::downgrade(shared);
    let w = worker.clone();
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
        let Some(shared) = weak.upgrade() else { return };
        let msg = match serde_wasm_bindgen::from_value::<FromWorker>(ev.data()) {
            Ok(m) => m,
            Err(e) => {
                web_sys::console::error_1(&format!("tabnode: bad worker message: {e}").into());
                return;
            }
        };
        match &msg {
            FromWorker::Loaded => {
                shared.worker_loaded.set(true);
                let queued = std::mem::take(&mut *shared.queued.borrow_mut());
                for m in std::iter::once(ToWorker::Init).chain(queued) {
                    if let Err(e) = post(&w, &m) {
                        web_sys::console::error_1(&e.to_string().into());
                    }
                }
            }
            FromWorker::GpuReady { gpu } => {
                let caps = {
                    let mut c = shared.capabilities.borrow_mut();
                    c.gpu = Some(gpu.clone());
                    c.gpu_error = None;
                    // The worker's prover accepts the same size.
                    c.max_pof_n = tabnode_core::pof::max_n_for(Some(gpu));
                    c.clone()
                };
                let _ = shared.command(Command::SetCapabilities(caps));
            }
            FromWorker::GpuUnavailable { reason } => {
                let caps = {
                    let mut c = shared.capabilities.borrow_mut();
                    c.gpu = None;
                    c.gpu_error = Some(reason.clone());
                    c.max_pof_n = tabnode_core::pof::max_n_for(None);
                    c.clone()
                };
                let _ = shared.command(Command::SetCapabilities(caps));
            }
            FromWorker::Error { message } => {
                web_sys::console::error_1(&format!("tabnode worker: {message}").into());
            }
            FromWorker::Bench { .. }
            | FromWorker::ModelProgress { .. }
            | FromWorker::EmbedderProgress { .. } => {}
            FromWorker::ModelReady { model, engine, .. } => {
                let caps = {
                    let mut c = shared.capabilities.borrow_mut();
                    c.models = vec![model.name.clone()];
                    c.models.extend(shared.embedder.borrow().clone());
                    c.engine = Some(engine.clone());
                    c.clone()
                };
                let _ = shared.command(Command::SetCapabilities(caps));
                let v = serde::Serialize::serialize(
                    &msg,
                    &serde_wasm_bindgen::Serializer::json_compatible(),
                )
                .unwrap_or(JsValue::NULL);
                let waiters = std::mem::take(&mut *shared.model_waiters.borrow_mut());
                for w in waiters {
                    let _ = w.send(Ok(v.clone()));
                }
            }
            FromWorker::EmbedderReady { id, .. } => {
                *shared.embedder.borrow_mut() = Some(id.clone());
                let caps = {
                    let mut c = shared.capabilities.borrow_mut();
                    if !c.models.contains(id) {
                        c.models.push(id.clone());
                    }
                    c.clone()
                };
                let _ = shared.command(Command::SetCapabilities(caps));
                let v = serde::Serialize::serialize(
                    &msg,
                    &serde_wasm_bindgen::Serializer::json_compatible(),
                )
                .unwrap_or(JsValue::NULL);
                for w in std::mem::take(&mut *shared.embedder_waiters.borrow_mut()) {
                    let _ = w.send(Ok(v.clone()));
                }
            }
            FromWorker::EmbedderFailed { message, .. } => {
                for w in std::mem::take(&mut *shared.embedder_waiters.borrow_mut()) {
                    let _ = w.send(Err(message.clone()));
                }
            }
            FromWorker::ModelFailed { message } => {
                let waiters = std::mem::take(&mut *shared.model_waiters.borrow_mut());
                for w in waiters {
                    let _ = w.send(Err(message.clone()));
                }
            }
            FromWorker::GenerateStarted { id, prompt_tokens } => {
                let answer = shared
                    .served
                    .borrow_mut()
                    .get_mut(id)
                    .and_then(|s| s.answer.take());
                if let Some(answer) = answer {
                    let _ = shared.command(Command::Respond {
                        id: answer,
                        response: Response::InferAccepted {
                            prompt_tokens: *prompt_tokens,
                        },
                    });
                }
                return;
            }
            FromWorker::GenerateRejected { id, code, message } => {
                if let Some(s) = shared.served.borrow_mut().remove(id) {
                    if let Some(answer) = s.answer {
                        let _ = shared.command(Command::Respond {
                            id: answer,
                            response: Response::Error {
                                code: *code,
                                message: message.clone(),
                            },
                        });
                    }
                } else if let Some(g) = shared.generations.borrow_mut().remove(id) {
                    let _ = g.reply.send(Err(message.clone()));
                }
                return;
            }
            FromWorker::Token { id, tokens, text } if shared.served.borrow().contains_key(id) => {
                if let Some(s) = shared.served.borrow_mut().get_mut(id) {
                    s.streamer.push(tokens, text);
                    s.tokens += tokens.len() as u64;
                }
                pump(&shared, *id);
                return;
            }
            FromWorker::Generated { id, result } if shared.served.borrow().contains_key(id) => {
                if let Some(s) = shared.served.borrow_mut().get_mut(id) {
                    s.streamer.end(InferEnd::Done(InferDone {
                        finish: result.finish,
                        prefill_ms: result.prefill_ms,
                        decode_ms: result.decode_ms,
                        device: result.device.clone(),
                    }));
                }
                pump(&shared, *id);
                return;
            }
            FromWorker::GenerateFailed { id, message }
                if shared.served.borrow().contains_key(id) =>
            {
                if let Some(s) = shared.served.borrow_mut().get_mut(id) {
                    s.streamer.end(InferEnd::Failed(message.clone()));
                }
                pump(&shared, *id);
                return;
            }
            FromWorker::Token { id, text, .. } => {
                // Cloned out first: the callback may start another generation.
                let f = shared
                    .generations
                    .borrow()
                    .get(id)
                    .and_then(|g| g.on_token.clone());
                if let (Some(f), false) = (f, text.is_empty()) {
                    if let Err(e) = f.call1(&JsValue::NULL, &JsValue::from_str(text)) {
                        web_sys::console::error_2(&"tabnode: onToken threw".into(), &e);
                    }
                }
                return;
            }
            FromWorker::Generated { id, result } => {
                if let Some(g) = shared.generations.borrow_mut().remove(id) {
                    let _ = g.reply.send(Ok(result.clone()));
                }
                return;
            }
            FromWorker::GenerateFailed { id, message } => {
                if let Some(g) = shared.generations.borrow_mut().remove(id) {
                    let _ = g.reply.send(Err(message.clone()));
                }
                return;
            }
            FromWorker::Handled {
                id,
                response,
                elapsed_ms,
                device,
            } => {
                // The page sees a summary: the answer itself (2⁶¹-sized
                // numbers) goes straight back to the network.
                let summary = HandledEvent {
                    kind: "handled",
                    id: *id,
                    elapsed_ms: *elapsed_ms,
                    device: device.clone(),
                    answer: match response {
                        Response::PofCommit { .. } => "pof_commit".into(),
                        Response::PofOpening(_) => "pof_opening".into(),
                        Response::Embedded(r) => format!("embedded {}", r.vectors.len()),
                        Response::Error { message, .. } => format!("error: {message}"),
                        other => format!("{other:?}"),
                    },
                };
                let _ = shared.command(Command::Respond {
                    id: *id,
                    response: response.clone(),
                });
                js_event(&shared.on_event, &PageEvent::Handled(summary));
                return;
            }
        }
        js_event(&shared.on_event, &PageEvent::Worker(&msg));
    });
    worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    on_message.forget();
    let on_error = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
        web_sys::console::error_2(&"tabnode: worker error".into(), &e);
    });
    worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    on_error.forget();
    *shared.worker.borrow_mut() = Some(worker);
    Ok(())
}
