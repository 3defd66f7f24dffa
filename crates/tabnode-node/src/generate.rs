//! `tabnode-node generate`: the inference engine from the command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tabnode_core::infer::{ChatMessage, GenerateRequest, Prompt};
use tabnode_infer::{Device, Engine};

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// The CPU with the file's quantized blocks and integer kernels (AVX2
    /// when the CPU has it): the file's size in memory, several times
    /// faster than `flex`, and the same bits as a tab's CPU backend (wasm
    /// SIMD128), so a request that fails over between them continues with
    /// the tokens either would have produced.
    #[value(alias = "quantized")]
    Cpu,
    /// burn's CPU backend (`flex`), weights expanded to f32: the reference
    /// the tab's WebGPU path matches token for token.
    Flex,
    /// burn's wgpu backend on the first GPU adapter wgpu finds (Vulkan,
    /// Metal, DX12; a software rasterizer such as lavapipe counts).
    Wgpu,
    /// The file's quantized blocks on the first GPU adapter wgpu finds,
    /// with the WGSL kernels a tab's WebGPU backend runs (the barrier-free
    /// ones on a software adapter).
    Gpu,
}

/// Arguments of `generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// The GGUF model file.
    #[arg(long, env = "TABNODE_MODEL")]
    model: PathBuf,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Treat the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_tokens: u32,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    /// Nucleus sampling threshold (1: off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// Print the result (token ids, text, timings) as one JSON object
    /// instead of streaming the text.
    #[arg(long)]
    json: bool,
}

/// Loads the model with a progress line on stderr, then streams the answer.
///
/// # Errors
/// Unreadable or invalid model files, no such device, bad prompts or
/// sampling values.
pub fn run(a: GenerateArgs) -> Result<(), Box<dyn std::error::Error>> {
    let engine = load_engine(&a.model, a.device)?;
    let request = GenerateRequest {
        prompt: if a.chat {
            Prompt::Chat(vec![ChatMessage {
                role: "user".into(),
                content: a.prompt.clone(),
            }])
        } else {
            Prompt::Text(a.prompt.clone())
        },
        max_tokens: a.max_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        stop: a.stop.clone(),
        resume: Vec::new(),
    };
    let mut out = std::io::stdout();
    let json = a.json;
    let result = engine.generate(&request, &|| false, &mut |_, s| {
        if !json {
            let _ = out.write_all(s.as_bytes());
            let _ = out.flush();
        }
    })?;
    if json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!();
    }
    let decoded = result.tokens.len().saturating_sub(1) as f64;
    eprintln!(
        "{} prompt tokens in {:.0} ms ({:.1} tokens/s), {} generated ({:.1} tokens/s decode), finish: {:?}",
        result.prompt_tokens,
        result.prefill_ms,
        f64::from(result.prompt_tokens) / (result.prefill_ms / 1e3).max(1e-9),
        result.tokens.len(),
        decoded / (result.decode_ms / 1e3).max(1e-9),
        result.finish
    );
    Ok(())
}

/// Loads `path` onto `device` with a progress line on stderr.
///
/// # Errors
/// Unreadable or invalid model files, no such device.
pub fn load_engine(path: &Path, device: DeviceArg) -> Result<Engine, Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read the model {}: {e}", path.display()))?;
    if device == DeviceArg::Cpu {
        let engine =
            Engine::load_quantized(bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!(
            "loaded model ({:.1} s on {})",
            t0.elapsed().as_secs_f64(),
            engine.device()
        );
        return Ok(engine);
    }
    if device == DeviceArg::Gpu {
        let engine = load_gpu(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!(
            "loaded model ({:.1} s on {})",
            t0.elapsed().as_secs_f64(),
            engine.device()
        );
        return Ok(engine);
    }
    let (device, name) = open_device(device)?;
    let mut err = std::io::stderr();
    let engine = Engine::load(&bytes, &device, name, &mut |done, total| {
        let _ = write!(
            err,
            "\rloading model [{:<30}] {done}/{total}",
            "#".repeat(30 * done / total.max(1))
        );
        let _ = err.flush();
    })
    .map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!(" ({:.1} s on {name})", t0.elapsed().as_secs_f64());
    Ok(engine)
}

/// The quantized GPU engine on the first adapter (`gpu-quantized-rows` on
/// a software one, `gpu-quantized-lanes` on a GPU).
#[cfg(feature = "wgpu")]
fn load_gpu(bytes: &[u8]) -> Result<Engine, Box<dyn std::error::Error>> {
    use tabnode_infer::gpu::{self, Gpu, Variant};
    let adapter = futures::executor::block_on(gpu::adapter(wgpu::Backends::all()))?;
    let variant = Variant::for_adapter(adapter.get_info().device_type == wgpu::DeviceType::Cpu);
    let device = futures::executor::block_on(Gpu::new(&adapter))?;
    let name = format!("gpu-quantized-{}", variant.name());
    let load = Engine::load_gpu(bytes, device, variant, gpu::POSITIONS, &name);
    Ok(futures::executor::block_on(load)?)
}

#[cfg(not(feature = "wgpu"))]
fn load_gpu(_: &[u8]) -> Result<Engine, Box<dyn std::error::Error>> {
    Err("this build has no GPU support (feature `wgpu`)".into())
}

fn open_device(d: DeviceArg) -> Result<(Device, &'static str), String> {
    match d {
        DeviceArg::Cpu | DeviceArg::Flex | DeviceArg::Gpu => Ok((Device::flex(), "flex")),
        #[cfg(feature = "wgpu")]
        DeviceArg::Wgpu => Device::wgpu_options()
            .init()
            .map(|d| (d, "wgpu"))
            .map_err(|e| format!("no wgpu device: {e}")),
        #[cfg(not(feature = "wgpu"))]
        DeviceArg::Wgpu => Err("this build has no wgpu support (feature `wgpu`)".into()),
    }
}
