//! `tabnode-node`: a native tabnode node.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use libp2p::Multiaddr;
use std::sync::Arc;
use tabnode_core::{Capabilities, NodeKind};

use tabnode_node::prover::{Backend, PofProver};
use tabnode_node::serve::InferServer;
use tabnode_node::{load_or_create_key, spawn, NodeConfig};

/// mimalloc instead of glibc's malloc (BENCHMARKS, "A deployed relay").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Joins a tabnode relay and serves the network; or, with `generate`, runs
/// the model locally.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Relay multiaddr (TCP or QUIC, ending in /p2p/<id>).
    #[arg(
        long,
        env = "TABNODE_RELAY",
        conflicts_with = "bootstrap_file",
        global = true
    )]
    relay: Option<Multiaddr>,
    /// Read the relay address from the relay's --bootstrap-file JSON.
    #[arg(long, global = true)]
    bootstrap_file: Option<PathBuf>,
    /// Prefer QUIC over TCP when reading the bootstrap file.
    #[arg(long, global = true)]
    quic: bool,
    /// Identity key file (created if missing), so the peer id is stable.
    #[arg(
        long,
        env = "TABNODE_NODE_KEY",
        default_value = ".data/node/identity.key",
        global = true
    )]
    key_file: PathBuf,
    /// VRAM pledged to the network, in MiB.
    #[arg(long, default_value_t = 0)]
    pledge_mib: u64,
    /// Where Proof-of-FLOPS runs: auto (a hardware GPU, else the CPU), gpu
    /// (any wgpu adapter, software ones included) or cpu.
    #[arg(long, default_value = "auto", value_parser = ["auto", "gpu", "cpu"])]
    prover: String,
    /// Serve this GGUF model to the network; repeat to serve several (they
    /// share the slots). Omit to serve none.
    #[arg(long, env = "TABNODE_SERVE_MODEL")]
    model: Vec<PathBuf>,
    /// Serve embeddings with the sentence-embedding model in this directory
    /// (`scripts/fetch-model.py all-minilm-l6-v2` puts it in
    /// `<models dir>/all-minilm-l6-v2/`; the directory's name is the
    /// catalog id it registers).
    #[arg(long, env = "TABNODE_SERVE_EMBED")]
    embed: Option<PathBuf>,
    /// Where the served models run: cpu (the quantized engine), gpu (the
    /// same blocks with the WGSL kernels on the first GPU adapter; its KV
    /// cache serves one generation at a time) or wgpu (burn's f32 model).
    /// (`flex`, burn's f32 CPU model, is `generate`'s reference for tests
    /// and is not served.)
    #[arg(long, value_enum, default_value_t = generate::DeviceArg::Cpu)]
    device: generate::DeviceArg,
    /// Generations served at once.
    #[arg(long, default_value_t = 1)]
    slots: usize,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Generate text from a prompt with a GGUF model, streaming to stdout.
    Generate(generate::GenerateArgs),
    /// The API keys of this node's account (its identity, `--key-file`),
    /// made, listed and revoked over its connection to the relay; prints
    /// the account's keys as JSON (a new key's secret once, as `created`).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Debug, clap::Subcommand)]
enum KeysAction {
    /// Make a key (its secret is printed once).
    Create {
        /// What the key is for (shown in the list).
        #[arg(long, default_value = "cli")]
        label: String,
    },
    /// List the account's keys.
    List,
    /// Revoke a key by its id (from `list`): refused at once.
    Revoke {
        /// The key's id.
        id: String,
    },
}

mod generate;

fn relay_from_bootstrap(
    path: &PathBuf,
    quic: bool,
) -> Result<Multiaddr, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path)?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let key = if quic { "quic" } else { "tcp" };
    let addr = v
        .get(key)
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str())
        .ok_or_else(|| format!("{} has no {key} address", path.display()))?;
    Ok(addr.parse()?)
}

fn relay_of(args: &Args) -> Result<Multiaddr, Box<dyn std::error::Error>> {
    match (&args.relay, &args.bootstrap_file) {
        (Some(r), _) => Ok(r.clone()),
        (None, Some(f)) => relay_from_bootstrap(f, args.quic),
        (None, None) => Err("give --relay or --bootstrap-file".into()),
    }
}

/// `tabnode-node keys …`: joins the relay as this identity (serving
/// nothing), asks, prints the answer, leaves.
async fn keys(args: &Args, action: KeysAction) -> Result<(), Box<dyn std::error::Error>> {
    use tabnode_core::{ApiKeyCommand, Request, Response};
    let command = match action {
        KeysAction::Create { label } => ApiKeyCommand::Create { label },
        KeysAction::List => ApiKeyCommand::List,
        KeysAction::Revoke { id } => ApiKeyCommand::Revoke { id },
    };
    let node = spawn(NodeConfig {
        relay: relay_of(args)?,
        key: Some(load_or_create_key(&args.key_file)?),
        capabilities: Capabilities::new(
            NodeKind::Native,
            format!("tabnode-node/{} keys", env!("CARGO_PKG_VERSION")),
        ),
        max_backoff: Duration::from_secs(2),
        handler: Arc::new(PofProver::new(Backend::Cpu)),
        server: None,
        embedder: None,
    })?;
    node.wait_reachable(Duration::from_secs(30)).await?;
    match node.request(None, Request::ApiKeys(command)).await? {
        Response::ApiKeys(list) => {
            println!("{}", serde_json::to_string_pretty(&list)?);
            Ok(())
        }
        Response::Error { code, message } => {
            Err(format!("the relay refused ({code:?}): {message}").into())
        }
        other => Err(format!("the relay answered out of protocol: {other:?}").into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Logs go to stderr: stdout is the answer of `generate`.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = Args::parse();
    match args.command.take() {
        Some(Command::Generate(g)) => return generate::run(g),
        Some(Command::Keys { action }) => return keys(&args, action).await,
        None => {}
    }
    if !args.model.is_empty() && args.device == generate::DeviceArg::Flex {
        return Err(
            "--device flex (burn's f32 CPU model) is the reference `tabnode-node \
                    generate` checks other engines against; serve with --device cpu (the \
                    quantized engine, several times faster) or wgpu"
                .into(),
        );
    }
    if !args.model.is_empty() && args.device == generate::DeviceArg::Gpu && args.slots > 1 {
        return Err(format!(
            "--device gpu serves one generation at a time (its KV cache is allocated \
             on the device at load): --slots {} is more than it has",
            args.slots
        )
        .into());
    }
    let relay = relay_of(&args)?;
    let key = load_or_create_key(&args.key_file)?;
    let mut caps = Capabilities::new(
        NodeKind::Native,
        format!("tabnode-node/{}", env!("CARGO_PKG_VERSION")),
    );
    caps.pledged_vram_mib = args.pledge_mib;
    let backend = match args.prover.as_str() {
        "cpu" => Backend::Cpu,
        "gpu" => Backend::detect(true),
        _ => Backend::detect(false),
    };
    let server = if args.model.is_empty() {
        None
    } else {
        let mut engines: Vec<Arc<dyn tabnode_node::serve::ServedModel>> = Vec::new();
        for path in &args.model {
            let engine = generate::load_engine(path, args.device)?;
            println!("serving {} ({})", engine.info.name, path.display());
            engines.push(Arc::new(engine));
        }
        Some(Arc::new(InferServer::serving(engines, args.slots)?))
    };
    let embedder = match &args.embed {
        None => None,
        Some(dir) => {
            let e = tabnode_node::embed::load(dir)?;
            println!("serving embeddings with {} ({})", e.id(), dir.display());
            Some(Arc::new(e))
        }
    };
    let node = spawn(NodeConfig {
        relay,
        key: Some(key),
        capabilities: caps,
        max_backoff: Duration::from_secs(10),
        handler: Arc::new(PofProver::new(backend)),
        server,
        embedder,
    })?;
    println!("tabnode node {} joining the relay", node.peer_id);
    tokio::select! {
        _ = node.join() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
