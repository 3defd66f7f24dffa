//! Serving generations to the network from the local [`Engine`].
//!
//! A server holds one or more models; its slots are shared by all of them.
//! The relay sends [`Request::Infer`]; [`InferServer::accept`] checks it
//! (model, prompt size, sampling values, free slot) and answers at once;
//! [`InferServer::run`] then generates on a blocking thread and streams the
//! tokens to the relay as acknowledged [`InferChunk`](tabnode_core::InferChunk)s
//! (one in flight, the rest batched by [`ChunkStreamer`]; the last, with
//! the end, goes unacknowledged as a [`Command::Notify`]). An error answer
//! to a chunk, or [`Request::InferCancel`], stops the generation after the
//! token in flight.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures::channel::{mpsc, oneshot};
use futures::{SinkExt, StreamExt};
use tabnode_core::infer::{Backend, EngineChoice, GenerateRequest, GenerateResult};
use tabnode_core::{
    driver::Command, model_id, ChunkStreamer, ErrorCode, InferDone, InferEnd, InferRequest,
    Request, Response,
};
use tabnode_infer::{generate::GenerateError, Engine, EngineError};

/// What a node serves: the [`Engine`], or in benchmarks a stand-in.
pub trait ServedModel: Send + Sync + 'static {
    /// The model's name (registered with the relay).
    fn name(&self) -> &str;
    /// Checks a request without running it: the prompt's token count.
    ///
    /// # Errors
    /// Why the request cannot run.
    fn check(&self, request: &GenerateRequest) -> Result<u32, EngineError>;
    /// Generates, streaming `(tokens, text)` pieces; polls `cancelled`.
    ///
    /// # Errors
    /// A bad request or a failing device.
    fn generate(
        &self,
        request: &GenerateRequest,
        cancelled: &dyn Fn() -> bool,
        on_piece: &mut dyn FnMut(&[u32], &str),
    ) -> Result<GenerateResult, EngineError>;
    /// Where it runs, as the node advertises it (none for stand-ins).
    fn engine(&self) -> Option<EngineChoice> {
        None
    }
    /// Scores a completion for a spot check ([`Engine::score`]).
    ///
    /// # Errors
    /// This model does not score, or the request is bad.
    fn score(
        &self,
        request: &GenerateRequest,
        tokens: &[u32],
    ) -> Result<Vec<tabnode_core::check::TokenScore>, EngineError> {
        let _ = (request, tokens);
        Err(GenerateError::Device("this model does not score".into()).into())
    }
    /// Whether [`ServedModel::score`] works.
    fn scores(&self) -> bool {
        false
    }
}

impl ServedModel for Engine {
    fn name(&self) -> &str {
        &self.info.name
    }
    fn engine(&self) -> Option<EngineChoice> {
        let device = self.device().to_owned();
        Some(EngineChoice {
            // burn's wgpu backend is a WebGPU implementation.
            backend: if device == "wgpu" {
                Backend::Webgpu
            } else {
                Backend::Cpu
            },
            reason: "chosen with tabnode-node --device".into(),
            device,
            timings: Vec::new(),
            threads: std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
        })
    }
    fn check(&self, request: &GenerateRequest) -> Result<u32, EngineError> {
        Engine::check(self, request)
    }
    fn score(
        &self,
        request: &GenerateRequest,
        tokens: &[u32],
    ) -> Result<Vec<tabnode_core::check::TokenScore>, EngineError> {
        Engine::score(self, request, tokens)
    }
    fn scores(&self) -> bool {
        matches!(self.runner, tabnode_infer::engine::Runner::Cpu(_))
    }
    fn generate(
        &self,
        request: &GenerateRequest,
        cancelled: &dyn Fn() -> bool,
        on_piece: &mut dyn FnMut(&[u32], &str),
    ) -> Result<GenerateResult, EngineError> {
        Engine::generate(self, request, cancelled, on_piece)
    }
}

/// A model served to the network.
pub struct InferServer {
    /// The models by network id, in the order given.
    models: Vec<(String, Arc<dyn ServedModel>)>,
    slots: usize,
    running: Mutex<HashSet<u64>>,
    cancelled: Mutex<HashSet<u64>>,
}

impl std::fmt::Debug for InferServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.models.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("InferServer")
            .field("models", &ids)
            .field("slots", &self.slots)
            .finish()
    }
}

enum Piece {
    Tokens(Vec<u32>, String),
    End(InferEnd),
}

/// Why a set of models cannot be served together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServeError {
    /// No model was given.
    #[error("no model to serve")]
    NoModel,
    /// Two models have the same network id (the same model twice).
    #[error("two of the models are {0}: serve each model once")]
    Duplicate(String),
}

impl InferServer {
    /// Serves `engine`, running at most `slots` generations at once.
    pub fn new(engine: Arc<dyn ServedModel>, slots: usize) -> Self {
        Self::from_parts(vec![(model_id(engine.name()), engine)], slots)
    }

    /// Serves every model of `engines`, running at most `slots` generations
    /// at once in all.
    ///
    /// # Errors
    /// [`ServeError::NoModel`] for an empty list,
    /// [`ServeError::Duplicate`] when two have the same network id.
    pub fn serving(engines: Vec<Arc<dyn ServedModel>>, slots: usize) -> Result<Self, ServeError> {
        if engines.is_empty() {
            return Err(ServeError::NoModel);
        }
        let mut models: Vec<(String, Arc<dyn ServedModel>)> = Vec::with_capacity(engines.len());
        for engine in engines {
            let id = model_id(engine.name());
            if models.iter().any(|(other, _)| *other == id) {
                return Err(ServeError::Duplicate(id));
            }
            models.push((id, engine));
        }
        Ok(Self::from_parts(models, slots))
    }

    fn from_parts(models: Vec<(String, Arc<dyn ServedModel>)>, slots: usize) -> Self {
        Self {
            models,
            slots: slots.max(1),
            running: Mutex::new(HashSet::new()),
            cancelled: Mutex::new(HashSet::new()),
        }
    }

    /// The models' names, as registered with the relay.
    pub fn model_names(&self) -> Vec<String> {
        self.models
            .iter()
            .map(|(_, m)| m.name().to_string())
            .collect()
    }

    /// Where the models run (see [`ServedModel::engine`]; the first
    /// model's: a node runs all of them on one device).
    pub fn engine(&self) -> Option<EngineChoice> {
        self.models.first().and_then(|(_, m)| m.engine())
    }

    /// The model a request names, if this server has it.
    fn model(&self, name: &str) -> Option<&Arc<dyn ServedModel>> {
        let id = model_id(name);
        self.models.iter().find(|(m, _)| *m == id).map(|(_, m)| m)
    }

    /// Generations this server runs at once.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Generations running now.
    pub fn active(&self) -> usize {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Checks `request` and takes a slot for it: the answer to send back.
    /// [`Response::InferAccepted`] means [`InferServer::run`] must follow.
    pub fn accept(&self, request: &InferRequest) -> Response {
        let refuse = |code, message: String| Response::Error { code, message };
        let Some(engine) = self.model(&request.model) else {
            let ids: Vec<&str> = self.models.iter().map(|(id, _)| id.as_str()).collect();
            return refuse(
                ErrorCode::UnknownModel,
                format!("this node serves {}, not {}", ids.join(", "), request.model),
            );
        };
        let prompt_tokens = match engine.check(&request.request) {
            Ok(n) => n,
            Err(e @ EngineError::Generate(GenerateError::PromptTooLong { .. })) => {
                return refuse(ErrorCode::TooLarge, e.to_string())
            }
            Err(e) => return refuse(ErrorCode::Invalid, e.to_string()),
        };
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.contains(&request.request_id) {
            return refuse(ErrorCode::Invalid, "request already running".into());
        }
        if running.len() >= self.slots {
            return refuse(ErrorCode::Busy, format!("all {} slots busy", self.slots));
        }
        running.insert(request.request_id);
        Response::InferAccepted { prompt_tokens }
    }

    /// Whether one of its models scores completions for spot checks.
    pub fn scores(&self) -> bool {
        self.models.iter().any(|(_, m)| m.scores())
    }

    /// Scores a completion for a spot check (blocking: run it off the
    /// event loop): the answer to send back.
    pub fn score(&self, job: &tabnode_core::check::ScoreRequest) -> Response {
        let refuse = |code, message: String| Response::Error { code, message };
        let Some(engine) = self.model(&job.model) else {
            return refuse(
                ErrorCode::UnknownModel,
                format!("this node does not serve {}", job.model),
            );
        };
        if job.tokens.len() > tabnode_core::check::MAX_SCORED_TOKENS {
            return refuse(
                ErrorCode::TooLarge,
                format!("{} tokens to score", job.tokens.len()),
            );
        }
        match engine.score(&job.request, &job.tokens) {
            Ok(scores) => Response::Scored(scores),
            Err(e) => refuse(ErrorCode::Invalid, e.to_string()),
        }
    }

    /// Stops generation `request_id` after the token in flight.
    pub fn cancel(&self, request_id: u64) {
        if self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&request_id)
        {
            self.cancelled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(request_id);
        }
    }

    fn is_cancelled(&self, request_id: u64) -> bool {
        self.cancelled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&request_id)
    }

    fn release(&self, request_id: u64) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&request_id);
        self.cancelled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&request_id);
    }

    /// Adds what the generation thread sent (`None`: it stopped) to
    /// `streamer`; returns whether the generation still runs.
    fn take(&self, id: u64, streamer: &mut ChunkStreamer, piece: Option<Piece>) -> bool {
        match piece {
            Some(Piece::Tokens(t, s)) => {
                streamer.push(&t, &s);
                true
            }
            Some(Piece::End(end)) => {
                streamer.end(end);
                // Free before the last chunk goes out (see
                // `ChunkStreamer::generating`).
                self.release(id);
                false
            }
            None => {
                streamer.end(InferEnd::Failed("the generation thread stopped".into()));
                self.release(id);
                false
            }
        }
    }

    /// Generates an accepted request and streams it to the relay through
    /// `commands`; returns when the last chunk is sent or the relay said
    /// stop.
    pub async fn run(self: Arc<Self>, request: InferRequest, mut commands: mpsc::Sender<Command>) {
        let id = request.request_id;
        let (tx, mut pieces) = mpsc::unbounded::<Piece>();
        let server = self.clone();
        let generation = request.request.clone();
        let engine = self.model(&request.model).cloned();
        let model = request.model.clone();
        let worker = tokio::task::spawn_blocking(move || {
            let on = tx.clone();
            let result = match engine {
                Some(engine) => engine
                    .generate(&generation, &|| server.is_cancelled(id), &mut |t, s| {
                        let _ = on.unbounded_send(Piece::Tokens(t.to_vec(), s.to_string()));
                    })
                    .map_err(|e| e.to_string()),
                // `accept` checked the model: only a caller that skipped
                // it gets here.
                None => Err(format!("this node does not serve {model}")),
            };
            let end = match result {
                Ok(r) => InferEnd::Done(InferDone {
                    finish: r.finish,
                    prefill_ms: r.prefill_ms,
                    decode_ms: r.decode_ms,
                    device: r.device,
                }),
                Err(e) => InferEnd::Failed(e),
            };
            let _ = tx.unbounded_send(Piece::End(end));
        });
        let mut streamer = ChunkStreamer::new(&request);
        let mut in_flight: Option<oneshot::Receiver<_>> = None;
        let mut generating = true;
        while !streamer.finished() {
            if in_flight.is_none() {
                // Whatever the generation produced already goes in this
                // chunk (a fast or short generation: one chunk, not two);
                // nothing waits for more.
                while generating {
                    match pieces.try_recv() {
                        Ok(piece) => generating = self.take(id, &mut streamer, Some(piece)),
                        Err(mpsc::TryRecvError::Closed) => {
                            generating = self.take(id, &mut streamer, None);
                        }
                        Err(mpsc::TryRecvError::Empty) => break,
                    }
                }
                if let Some(chunk) = streamer.next_chunk() {
                    if chunk.end.is_some() {
                        // The last chunk wants no acknowledgement: the
                        // generation is over and nothing follows it.
                        let request = Request::InferChunk(Box::new(chunk));
                        if commands.send(Command::Notify(request)).await.is_err() {
                            self.cancel(id);
                        }
                        streamer.acked();
                        break;
                    }
                    let (reply, rx) = oneshot::channel();
                    let sent = commands
                        .send(Command::Request {
                            peer: None,
                            request: Request::InferChunk(Box::new(chunk)),
                            reply,
                        })
                        .await;
                    if sent.is_err() {
                        // The node is stopping.
                        self.cancel(id);
                        break;
                    }
                    in_flight = Some(rx);
                }
            }
            let ack = async {
                match in_flight.as_mut() {
                    Some(rx) => rx.await,
                    None => futures::future::pending().await,
                }
            };
            tokio::select! {
                piece = pieces.next(), if generating => {
                    generating = self.take(id, &mut streamer, piece);
                }
                reply = ack => {
                    in_flight = None;
                    match reply {
                        Ok(Ok(Response::Ack)) => streamer.acked(),
                        other => {
                            tracing::info!(request = id, "relay stopped the stream: {other:?}");
                            self.cancel(id);
                            break;
                        }
                    }
                }
            }
        }
        // Let the generation thread see the cancel flag and end.
        let _ = worker.await;
        self.release(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model that only has a name: the server's bookkeeping is under test.
    struct Named(&'static str);

    impl ServedModel for Named {
        fn name(&self) -> &str {
            self.0
        }
        fn check(&self, _: &GenerateRequest) -> Result<u32, EngineError> {
            Ok(1)
        }
        fn generate(
            &self,
            _: &GenerateRequest,
            _: &dyn Fn() -> bool,
            _: &mut dyn FnMut(&[u32], &str),
        ) -> Result<GenerateResult, EngineError> {
            Err(EngineError::Generate(GenerateError::Device(
                "a name only".into(),
            )))
        }
    }

    fn request(model: &str, id: u64) -> InferRequest {
        InferRequest {
            request_id: id,
            attempt: 0,
            model: model.into(),
            request: GenerateRequest::new(tabnode_core::infer::Prompt::Text("x".into())),
        }
    }

    #[test]
    fn several_models_share_the_slots_and_unknown_ones_are_refused() {
        let s = InferServer::serving(vec![Arc::new(Named("A Model")), Arc::new(Named("B"))], 2)
            .expect("two models");
        assert_eq!(s.model_names(), ["A Model", "B"]);
        assert!(matches!(
            s.accept(&request("a-model", 1)),
            Response::InferAccepted { .. }
        ));
        assert!(matches!(
            s.accept(&request("B", 2)),
            Response::InferAccepted { .. }
        ));
        match s.accept(&request("B", 3)) {
            Response::Error { code, .. } => assert_eq!(code, ErrorCode::Busy),
            other => panic!("{other:?}"),
        }
        s.release(1);
        match s.accept(&request("c", 4)) {
            Response::Error { code, message } => {
                assert_eq!(code, ErrorCode::UnknownModel);
                assert!(message.contains("a-model, b"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// Emits one token, waits for `go`, then emits seven more at once
    /// (telling `done`) and ends.
    struct Paused {
        go: Mutex<std::sync::mpsc::Receiver<()>>,
        done: Mutex<std::sync::mpsc::Sender<()>>,
    }

    impl ServedModel for Paused {
        fn name(&self) -> &str {
            "P"
        }
        fn check(&self, _: &GenerateRequest) -> Result<u32, EngineError> {
            Ok(1)
        }
        fn generate(
            &self,
            _: &GenerateRequest,
            _: &dyn Fn() -> bool,
            on_piece: &mut dyn FnMut(&[u32], &str),
        ) -> Result<GenerateResult, EngineError> {
            on_piece(&[1], "a");
            let _ = self.go.lock().expect("go").recv();
            for t in 2..=8 {
                on_piece(&[t], "b");
            }
            let _ = self.done.lock().expect("done").send(());
            Ok(GenerateResult {
                tokens: (1..=8).collect(),
                text: "abbbbbbb".into(),
                finish: tabnode_core::infer::FinishReason::Length,
                prompt_tokens: 1,
                prefill_ms: 0.0,
                decode_ms: 0.0,
                device: "test".into(),
            })
        }
    }

    /// What a generation produced while a chunk was in flight goes out in
    /// the next chunk whole, with the end: not a token at a time.
    #[tokio::test]
    async fn tokens_ready_when_a_chunk_is_acknowledged_go_out_together() {
        let (go, go_rx) = std::sync::mpsc::channel();
        let (done_tx, done) = std::sync::mpsc::channel();
        let done = Arc::new(Mutex::new(done));
        let model = Paused {
            go: Mutex::new(go_rx),
            done: Mutex::new(done_tx),
        };
        let server = Arc::new(InferServer::new(Arc::new(model), 1));
        let req = request("P", 7);
        assert!(matches!(
            server.accept(&req),
            Response::InferAccepted { .. }
        ));
        let (tx, mut commands) = mpsc::channel::<Command>(4);
        let run = tokio::spawn(server.clone().run(req, tx));
        let mut chunks = Vec::new();
        while let Some(command) = commands.next().await {
            let (chunk, reply) = match command {
                Command::Request {
                    request: Request::InferChunk(chunk),
                    reply,
                    ..
                } => (chunk, Some(reply)),
                // The last chunk, unacknowledged.
                Command::Notify(Request::InferChunk(chunk)) => (chunk, None),
                other => panic!("only chunks are sent: {other:?}"),
            };
            if chunks.is_empty() {
                // The first token is out; the other seven are generated
                // before its acknowledgement.
                go.send(()).expect("the model waits");
                let done = done.clone();
                tokio::task::spawn_blocking(move || {
                    done.lock()
                        .expect("done")
                        .recv_timeout(std::time::Duration::from_secs(30))
                })
                .await
                .expect("a thread")
                .expect("the model produced its tokens");
            }
            let last = chunk.end.is_some();
            assert_eq!(reply.is_none(), last, "only the last chunk is a notice");
            chunks.push(*chunk);
            if let Some(reply) = reply {
                let _ = reply.send(Ok(Response::Ack));
            }
            if last {
                break;
            }
        }
        run.await.expect("run ends");
        // The end may come with them or just after (it is sent once the
        // model returns), never a token at a time.
        let sizes: Vec<usize> = chunks.iter().map(|c| c.tokens.len()).collect();
        assert!(sizes == [1, 7] || sizes == [1, 7, 0], "{sizes:?}");
        assert_eq!(chunks[1].offset, 1);
        assert!(matches!(
            chunks.last().and_then(|c| c.end.as_ref()),
            Some(InferEnd::Done(_))
        ));
    }

    #[test]
    fn no_model_or_the_same_model_twice_is_an_error() {
        assert_eq!(
            InferServer::serving(Vec::new(), 1).err(),
            Some(ServeError::NoModel)
        );
        assert_eq!(
            InferServer::serving(vec![Arc::new(Named("X 1")), Arc::new(Named("x-1"))], 1).err(),
            Some(ServeError::Duplicate("x-1".into()))
        );
    }
}
