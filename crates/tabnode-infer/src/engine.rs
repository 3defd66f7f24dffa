//! The engine a node runs: a loaded model with its tokenizer, taking the
//! network's [`GenerateRequest`]s. Synchronous natively; asynchronous (every
//! read back awaited) for WebGPU.

use burn::tensor::Device;
use futures::future::LocalBoxFuture;
use tabnode_core::infer::{FinishReason, GenerateRequest, GenerateResult, ModelCard, Prompt};
use web_time::Instant;

use crate::cpu::CpuModel;
use crate::generate::{Finish, GenerateError, GenerateOptions, Generation, Sampling, Undecided};
use crate::gguf::{Gguf, GgufError};
use crate::info::ModelInfo;
use crate::model::{LlamaModel, WeightFormat};
use crate::tokenizer::{Message, Tokenizer, TokenizerError};

/// Why the engine could not load or generate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The model file.
    #[error("model file: {0}")]
    Gguf(#[from] GgufError),
    /// The tokenizer in the model file.
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] TokenizerError),
    /// The request.
    #[error("{0}")]
    Generate(#[from] GenerateError),
}

/// Where a model's weights live and which code runs them.
#[derive(Debug)]
pub enum Runner {
    /// burn's llama model on a burn device (weights expanded to f32 or
    /// burn's Q8): WebGPU in the tab, `flex` or wgpu natively.
    Burn(Box<LlamaModel>),
    /// The file's quantized blocks on the CPU with integer kernels
    /// ([`crate::cpu`]).
    Cpu(Box<CpuModel>),
    /// The file's quantized blocks on a wgpu device with WGSL kernels
    /// ([`crate::gpu`]).
    #[cfg(feature = "gpu")]
    Gpu(Box<crate::gpu::GpuModel>),
}

impl Runner {
    fn context(&self) -> usize {
        match self {
            Runner::Burn(m) => m.config.context,
            Runner::Cpu(m) => m.config.context,
            // The KV cache is allocated at load, for this many positions.
            #[cfg(feature = "gpu")]
            Runner::Gpu(m) => m.positions(),
        }
    }
}

/// A model ready to generate.
pub struct Engine {
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The weights and the code that runs them.
    pub runner: Runner,
    /// What it is.
    pub info: ModelInfo,
    device: String,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("info", &self.info)
            .field("device", &self.device)
            .finish()
    }
}

fn finish_reason(f: Finish) -> FinishReason {
    match f {
        Finish::Length => FinishReason::Length,
        Finish::Eos => FinishReason::Eos,
        Finish::Stop => FinishReason::Stop,
        Finish::Cancelled => FinishReason::Cancelled,
    }
}

impl Engine {
    /// Parses a GGUF file and loads it onto `device` (named `device_name`
    /// in results), calling `progress(done, total)` per layer.
    ///
    /// # Errors
    /// A corrupt or unsupported file.
    pub fn load(
        bytes: &[u8],
        device: &Device,
        device_name: &str,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, EngineError> {
        Self::load_as(bytes, device, device_name, WeightFormat::F32, progress)
    }

    /// [`Engine::load`] with the matmul weights held as `format`.
    ///
    /// # Errors
    /// A corrupt or unsupported file.
    pub fn load_as(
        bytes: &[u8],
        device: &Device,
        device_name: &str,
        format: WeightFormat,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, EngineError> {
        let g = Gguf::parse(bytes)?;
        let info = ModelInfo::from_gguf(&g, bytes.len() as u64)?;
        let tokenizer = Tokenizer::from_gguf(&g)?;
        let model = LlamaModel::from_gguf_as(&g, device, format, progress)?;
        Ok(Self {
            tokenizer,
            runner: Runner::Burn(Box::new(model)),
            info,
            device: device_name.into(),
        })
    }

    /// Takes a GGUF file's bytes and runs it on the CPU with its quantized
    /// blocks as they are (memory: the file, plus the KV cache). The device
    /// is named `cpu-quantized-<kernels>` (`avx2`, `simd128`, `scalar`) in
    /// results.
    ///
    /// # Errors
    /// A corrupt file, or a weight format without a kernel.
    pub fn load_quantized(bytes: Vec<u8>) -> Result<Self, EngineError> {
        let (info, tokenizer) = {
            let g = Gguf::parse(&bytes)?;
            (
                ModelInfo::from_gguf(&g, bytes.len() as u64)?,
                Tokenizer::from_gguf(&g)?,
            )
        };
        let model = CpuModel::from_bytes(bytes)?;
        Ok(Self {
            tokenizer,
            runner: Runner::Cpu(Box::new(model)),
            info,
            device: format!("cpu-quantized-{}", crate::quant::simd::best().name),
        })
    }

    /// Takes a GGUF file's bytes and runs it on `gpu` with its quantized
    /// blocks as they are (GPU memory: the file, plus a KV cache for
    /// `positions` tokens), the matvecs of `variant`; results carry
    /// `device_name`.
    ///
    /// # Errors
    /// A corrupt file, a weight format without a kernel, a failing device.
    #[cfg(feature = "gpu")]
    pub async fn load_gpu(
        bytes: &[u8],
        gpu: crate::gpu::Gpu,
        variant: crate::gpu::Variant,
        positions: usize,
        device_name: &str,
    ) -> Result<Self, EngineError> {
        let g = Gguf::parse(bytes)?;
        let info = ModelInfo::from_gguf(&g, bytes.len() as u64)?;
        let tokenizer = Tokenizer::from_gguf(&g)?;
        let model =
            crate::gpu::GpuModel::load(gpu, bytes, positions, variant).map_err(|e| match e {
                crate::gpu::GpuModelError::Gguf(e) => EngineError::Gguf(e),
                crate::gpu::GpuModelError::Gpu(e) => gpu_error(e),
            })?;
        Ok(Self {
            tokenizer,
            runner: Runner::Gpu(Box::new(model)),
            info,
            device: device_name.into(),
        })
    }

    /// The device name results carry.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The card the network advertises.
    pub fn card(&self) -> ModelCard {
        let i = &self.info;
        let u32_of = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        ModelCard {
            name: i.name.clone(),
            architecture: i.architecture.clone(),
            parameters: i.parameters,
            quantization: i.quantization.clone(),
            context: u32_of(i.context),
            vocab: u32_of(i.vocab),
            layers: u32_of(i.layers),
            file_bytes: i.file_bytes,
        }
    }

    /// The prompt's token ids. Chat messages go through the model's
    /// template; only the template's own control tokens are special, so a
    /// message that spells `<|im_start|>` cannot forge a turn.
    ///
    /// # Errors
    /// A model whose chat template is not supported.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        let tok = &self.tokenizer;
        match prompt {
            Prompt::Text(text) => {
                // A model that expects BOS (Gemma) gets it first, as
                // llama.cpp's tools tokenize a prompt.
                let mut ids = Vec::new();
                if tok.add_bos {
                    ids.push(tok.bos);
                }
                ids.extend(tok.encode(text, false));
                Ok(ids)
            }
            Prompt::Chat(messages) => {
                let msgs: Vec<Message> = messages
                    .iter()
                    .map(|m| Message {
                        role: m.role.clone(),
                        content: m.content.clone(),
                    })
                    .collect();
                Ok(tok.encode_chat(&msgs)?)
            }
        }
    }

    fn options(request: &GenerateRequest) -> GenerateOptions {
        GenerateOptions {
            max_tokens: request.max_tokens as usize,
            stop: request.stop.clone(),
            sampling: Sampling {
                temperature: request.temperature,
                top_k: request.top_k as usize,
                top_p: request.top_p,
                seed: request.seed,
            },
        }
    }

    /// Generates synchronously (native devices). `on_piece` receives each
    /// generated token with the text that became final with it (possibly
    /// empty), and at the end any held-back text with no token.
    ///
    /// # Errors
    /// A bad request (empty or too long prompt, bad sampling values, bad
    /// resume tokens) or a failing device.
    pub fn generate(
        &self,
        request: &GenerateRequest,
        cancelled: &dyn Fn() -> bool,
        on_piece: &mut dyn FnMut(&[u32], &str),
    ) -> Result<GenerateResult, EngineError> {
        // Native reads complete as soon as they are polled: the async
        // path, driven here, is the one implementation.
        futures::executor::block_on(self.generate_async(request, cancelled, on_piece, &no_pause))
    }

    /// Scores `tokens`, a completion delivered for `request` (by another
    /// node), in one teacher-forced pass over the prompt and the tokens: a
    /// spot check's reading ([`tabnode_core::check`]). Runs on the quantized
    /// CPU engine (where an honest completion of the same engine scores
    /// every greedy token first).
    ///
    /// # Errors
    /// Another runner, a prompt and completion past the context, a bad
    /// chat template.
    pub fn score(
        &self,
        request: &GenerateRequest,
        tokens: &[u32],
    ) -> Result<Vec<tabnode_core::check::TokenScore>, EngineError> {
        let Some((_, head)) = tokens.split_last() else {
            return Ok(Vec::new());
        };
        let mut context = self.prompt_ids(&request.prompt)?;
        if context.len() + tokens.len() > self.runner.context() {
            return Err(GenerateError::Device(format!(
                "{} prompt and {} completion tokens exceed the context of {}",
                context.len(),
                tokens.len(),
                self.runner.context()
            ))
            .into());
        }
        context.extend_from_slice(head);
        match &self.runner {
            Runner::Cpu(model) => Ok(model.session().score(
                &context,
                tokens,
                tabnode_core::check::Sampling::of(request),
            )?),
            _ => Err(
                GenerateError::Device("spot checks run on the quantized CPU engine".into()).into(),
            ),
        }
    }

    /// Checks `request` without running the model: the prompt's token
    /// count, or why it cannot run (what a node answers before accepting).
    ///
    /// # Errors
    /// What [`Engine::generate`] would fail with before touching the model.
    pub fn check(&self, request: &GenerateRequest) -> Result<u32, EngineError> {
        let (prompt, _) = self.start(request)?;
        Ok(u32::try_from(prompt.len()).unwrap_or(u32::MAX))
    }

    /// The prompt's ids and a checked generation for `request`, resumed
    /// after its `resume` tokens.
    fn start(&self, request: &GenerateRequest) -> Result<(Vec<u32>, Generation<'_>), EngineError> {
        let prompt = self.prompt_ids(&request.prompt)?;
        let mut g = Generation::new(
            &self.tokenizer,
            prompt.len(),
            self.runner.context(),
            &Self::options(request),
        )?;
        g.resume(&request.resume)?;
        Ok((prompt, g))
    }

    fn result(
        &self,
        prompt: usize,
        started: Instant,
        first: Instant,
        out: crate::generate::Generated,
    ) -> GenerateResult {
        GenerateResult {
            prompt_tokens: u32::try_from(prompt).unwrap_or(u32::MAX),
            prefill_ms: (first - started).as_secs_f64() * 1e3,
            decode_ms: first.elapsed().as_secs_f64() * 1e3,
            tokens: out.tokens,
            text: out.text,
            finish: finish_reason(out.finish),
            device: self.device.clone(),
        }
    }

    /// Generates with asynchronous read backs (WebGPU); `cancelled` is
    /// polled before every token, so a cancel message handled while a read
    /// back is awaited stops generation after the token in flight. The CPU
    /// runner awaits `pause()` after every token instead (a browser worker
    /// passes a task yield, so its message loop can deliver a cancel).
    /// Resumed tokens are read with the prompt and never passed to
    /// `on_piece`; the result's `tokens` and `text` include them.
    ///
    /// # Errors
    /// A bad request or a failing device.
    pub async fn generate_async(
        &self,
        request: &GenerateRequest,
        cancelled: &dyn Fn() -> bool,
        on_piece: &mut dyn FnMut(&[u32], &str),
        pause: &dyn Fn() -> LocalBoxFuture<'static, ()>,
    ) -> Result<GenerateResult, EngineError> {
        let (prompt, mut g) = self.start(request)?;
        let started = Instant::now();
        let mut first = started;
        if !g.ended() {
            let mut input = prompt.clone();
            input.extend_from_slice(g.tokens());
            match &self.runner {
                Runner::Burn(model) => {
                    let mut session = model.session();
                    let mut logits = session.forward_async(&input).await.map_err(device)?;
                    first = Instant::now();
                    while let Some(token) = Self::emit(&mut g, &logits, cancelled, on_piece) {
                        logits = session.forward_async(&[token]).await.map_err(device)?;
                    }
                }
                Runner::Cpu(model) => {
                    let mut session = model.session();
                    let mut logits = session.prefill(&input)?;
                    first = Instant::now();
                    pause().await;
                    while let Some(token) = Self::emit(&mut g, &logits, cancelled, on_piece) {
                        logits = session.step(token)?;
                        pause().await;
                    }
                }
                #[cfg(feature = "gpu")]
                Runner::Gpu(model) => {
                    let mut session = model.session().map_err(gpu_error)?;
                    if g.is_greedy() {
                        // The device picks the token: 4 bytes read back.
                        let mut best = session.prefill_greedy(&input).await.map_err(gpu_error)?;
                        first = Instant::now();
                        while let Some(token) = Self::emit_greedy(&mut g, best, cancelled, on_piece)
                        {
                            best = session.step_greedy(token).await.map_err(gpu_error)?;
                        }
                    } else {
                        // The device ranks the candidates (9 KB read back);
                        // a draw in the tail reads the logits.
                        let t = g.sampler().temperature();
                        let mut top = session.prefill_top(&input, t).await.map_err(gpu_error)?;
                        first = Instant::now();
                        loop {
                            let next =
                                match Self::emit_pick(&mut g, Pick::Top(&top), cancelled, on_piece)
                                {
                                    Ok(next) => next,
                                    Err(Undecided) => {
                                        let logits = session.logits().await.map_err(gpu_error)?;
                                        Self::emit(&mut g, &logits, cancelled, on_piece)
                                    }
                                };
                            let Some(token) = next else { break };
                            top = session.step_top(token, t).await.map_err(gpu_error)?;
                        }
                    }
                }
            }
        }
        let out = g.finish(&mut |t| on_piece(&[], t));
        Ok(self.result(prompt.len(), started, first, out))
    }
}

impl Engine {
    /// Milliseconds per decode step on this engine's backend: a short
    /// prompt and one warm-up step (WebGPU compiles its pipelines then),
    /// then `steps` timed steps. What a tab measures to choose a backend.
    ///
    /// # Errors
    /// A failing device.
    pub async fn decode_ms(&self, steps: usize) -> Result<f64, EngineError> {
        let prompt = self.tokenizer.encode("The quick brown fox", false);
        let token = prompt.last().copied().unwrap_or(0);
        let steps = steps.max(1);
        match &self.runner {
            Runner::Burn(model) => {
                let mut session = model.session();
                session.forward_async(&prompt).await.map_err(device)?;
                session.forward_async(&[token]).await.map_err(device)?;
                let started = Instant::now();
                for _ in 0..steps {
                    session.forward_async(&[token]).await.map_err(device)?;
                }
                Ok(started.elapsed().as_secs_f64() * 1e3 / steps as f64)
            }
            Runner::Cpu(model) => {
                let mut session = model.session();
                session.prefill(&prompt)?;
                session.step(token)?;
                let started = Instant::now();
                for _ in 0..steps {
                    session.step(token)?;
                }
                Ok(started.elapsed().as_secs_f64() * 1e3 / steps as f64)
            }
            #[cfg(feature = "gpu")]
            Runner::Gpu(model) => {
                // Greedy steps: the token picked on the device, as a greedy
                // generation runs.
                let mut session = model.session().map_err(gpu_error)?;
                session.prefill_greedy(&prompt).await.map_err(gpu_error)?;
                session.step_greedy(token).await.map_err(gpu_error)?;
                let started = Instant::now();
                for _ in 0..steps {
                    session.step_greedy(token).await.map_err(gpu_error)?;
                }
                Ok(started.elapsed().as_secs_f64() * 1e3 / steps as f64)
            }
        }
    }

    /// Picks the next token from `logits` and hands it with its text to
    /// `on_piece`; `None` when the generation has ended.
    fn emit(
        g: &mut Generation<'_>,
        logits: &[f32],
        cancelled: &dyn Fn() -> bool,
        on_piece: &mut dyn FnMut(&[u32], &str),
    ) -> Option<u32> {
        Self::emit_pick(g, Pick::Logits(logits), cancelled, on_piece).unwrap_or_default()
    }

    /// [`Engine::emit`] for a greedy generation given the device's pick.
    #[cfg(feature = "gpu")]
    fn emit_greedy(
        g: &mut Generation<'_>,
        best: u32,
        cancelled: &dyn Fn() -> bool,
        on_piece: &mut dyn FnMut(&[u32], &str),
    ) -> Option<u32> {
        Self::emit_pick(g, Pick::Best(best), cancelled, on_piece).unwrap_or_default()
    }

    /// [`Undecided`]: nothing happened; the logits are needed.
    fn emit_pick(
        g: &mut Generation<'_>,
        pick: Pick<'_>,
        cancelled: &dyn Fn() -> bool,
        on_piece: &mut dyn FnMut(&[u32], &str),
    ) -> Result<Option<u32>, Undecided> {
        let before = g.tokens().len();
        let mut piece = String::new();
        let next = match pick {
            Pick::Logits(logits) => g.next(logits, cancelled(), &mut |t| piece.push_str(t)),
            #[cfg(feature = "gpu")]
            Pick::Best(best) => g.next_greedy(best, cancelled(), &mut |t| piece.push_str(t)),
            #[cfg(feature = "gpu")]
            Pick::Top(top) => g.next_top(top, cancelled(), &mut |t| piece.push_str(t))?,
        };
        let new = &g.tokens()[before..];
        if !new.is_empty() || !piece.is_empty() {
            on_piece(new, &piece);
        }
        Ok(next)
    }
}

/// Where the next token comes from: the logits, a greedy pick made on the
/// device, or the candidates it ranked.
enum Pick<'a> {
    Logits(&'a [f32]),
    #[cfg(feature = "gpu")]
    Best(u32),
    #[cfg(feature = "gpu")]
    Top(&'a crate::sample::Top),
}

/// The `pause` of a caller that need not yield between tokens.
pub fn no_pause() -> LocalBoxFuture<'static, ()> {
    Box::pin(futures::future::ready(()))
}

#[cfg(feature = "gpu")]
fn gpu_error(e: crate::gpu::GpuError) -> EngineError {
    EngineError::Generate(GenerateError::Device(format!("GPU: {e}")))
}

fn device(e: crate::model::ReadError) -> EngineError {
    EngineError::Generate(GenerateError::Device(e.0))
}
