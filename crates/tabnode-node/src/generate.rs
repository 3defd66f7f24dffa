//! `tabnode-node generate`: the inference engine from the command line.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::Device;
use tabnode_infer::generate::{generate, GenerateOptions, Sampling};
use tabnode_infer::gguf::Gguf;
use tabnode_infer::model::LlamaModel;
use tabnode_infer::tokenizer::{Message, Tokenizer};

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
    max_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling threshold (1: off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
}

/// Loads the model with a progress line on stderr, then streams the answer.
///
/// # Errors
/// Unreadable or invalid model files, bad prompts or sampling values.
pub fn run(a: GenerateArgs) -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let bytes = std::fs::read(&a.model)
        .map_err(|e| format!("cannot read the model {}: {e}", a.model.display()))?;
    let g = Gguf::parse(&bytes).map_err(|e| format!("{}: {e}", a.model.display()))?;
    let tok = Tokenizer::from_gguf(&g)?;
    let device = Device::flex();
    let mut err = std::io::stderr();
    let model = LlamaModel::from_gguf_with_progress(&g, &device, &mut |done, total| {
        let _ = write!(
            err,
            "\rloading model [{:<30}] {done}/{total}",
            "#".repeat(30 * done / total.max(1))
        );
        let _ = err.flush();
    })?;
    eprintln!(" ({:.1} s)", t0.elapsed().as_secs_f64());
    let text = if a.chat {
        tok.chat_prompt(
            &[Message {
                role: "user".into(),
                content: a.prompt.clone(),
            }],
            true,
        )?
    } else {
        a.prompt.clone()
    };
    let prompt = tok.encode(&text, a.chat);
    let options = GenerateOptions {
        max_tokens: a.max_tokens,
        stop: a.stop.clone(),
        sampling: Sampling {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        },
    };
    let mut out = std::io::stdout();
    let t1 = Instant::now();
    let result = generate(
        &mut model.session(),
        &tok,
        &prompt,
        &options,
        &|| false,
        &mut |s| {
            let _ = out.write_all(s.as_bytes());
            let _ = out.flush();
        },
    )?;
    let secs = t1.elapsed().as_secs_f64();
    println!();
    eprintln!(
        "{} prompt tokens, {} generated in {:.2} s ({:.1} tokens/s overall), finish: {:?}",
        prompt.len(),
        result.tokens.len(),
        secs,
        (prompt.len() + result.tokens.len()) as f64 / secs.max(1e-9),
        result.finish
    );
    Ok(())
}
