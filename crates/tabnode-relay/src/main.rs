//! `tabnode-relay`: the relay and web server of a tabnode network.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;
use tabnode_relay::{start, InferConfig, Limits, PofConfig, RelayConfig};

fn secs(s: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(s.clamp(0.001, 86_400.0))
}

/// Runs a tabnode relay and serves the site.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// HTTP listen address (site, API, metrics).
    #[arg(long, env = "TABNODE_HTTP", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// IP address for the libp2p listeners.
    #[arg(long, env = "TABNODE_LISTEN_IP", default_value = "127.0.0.1")]
    listen_ip: IpAddr,
    /// TCP port for native nodes.
    #[arg(long, env = "TABNODE_TCP_PORT", default_value_t = 4001)]
    tcp_port: u16,
    /// UDP port for QUIC.
    #[arg(long, env = "TABNODE_QUIC_PORT", default_value_t = 4001)]
    quic_port: u16,
    /// UDP port for webrtc-direct (browsers).
    #[arg(long, env = "TABNODE_WEBRTC_PORT", default_value_t = 4002)]
    webrtc_port: u16,
    /// Directory for the identity key and WebRTC certificate.
    #[arg(long, env = "TABNODE_DATA_DIR", default_value = ".data/relay")]
    data_dir: PathBuf,
    /// Directory holding `www/`, `pkg/` and `worker/`.
    #[arg(long, env = "TABNODE_SITE_ROOT", default_value = ".")]
    site_root: PathBuf,
    /// Directory of model files served under `/models/`.
    #[arg(long, env = "TABNODE_MODELS_DIR")]
    models_dir: Option<PathBuf>,
    /// Mean seconds between two Proof-of-FLOPS challenges of a node (the
    /// gaps are random, exponential with this mean).
    #[arg(long, env = "TABNODE_POF_INTERVAL", default_value_t = 3600.0)]
    pof_interval: f64,
    /// Largest Proof-of-FLOPS matrix size.
    #[arg(long, env = "TABNODE_POF_MAX_N", default_value_t = 2048)]
    pof_max_n: u32,
    /// Smallest Proof-of-FLOPS matrix size.
    #[arg(long, env = "TABNODE_POF_MIN_N", default_value_t = 256)]
    pof_min_n: u32,
    /// Seconds a node may go without sending tokens before its request
    /// moves to another node.
    #[arg(long, env = "TABNODE_STALL_TIMEOUT", default_value_t = 60.0)]
    stall_timeout: f64,
    /// Seconds a node may take to its first token.
    #[arg(long, env = "TABNODE_FIRST_TOKEN_TIMEOUT", default_value_t = 300.0)]
    first_token_timeout: f64,
    /// Seconds a request waits for a free node.
    #[arg(long, env = "TABNODE_QUEUE_TIMEOUT", default_value_t = 30.0)]
    queue_timeout: f64,
    /// Chat requests per minute per client address (0: no limit).
    #[arg(long, env = "TABNODE_RATE_LIMIT", default_value_t = 600)]
    rate_limit: u32,
    /// Generation, embedding and flow requests an hour per client address
    /// without an API key (0: no limit); past it a 429 says how to get a key.
    #[arg(long, env = "TABNODE_ANONYMOUS_PER_HOUR", default_value_t = 100)]
    anonymous_per_hour: u32,
    /// Node identities connected at once from one IP address (raise it for
    /// networks where many tabs share an address).
    #[arg(long, env = "TABNODE_MAX_PEERS_PER_IP", default_value_t = 64)]
    max_peers_per_ip: usize,
    /// The model catalog (JSON; the built-in one lists SmolLM2): the only
    /// models requests may name and nodes are credited for.
    #[arg(long, env = "TABNODE_CATALOG")]
    catalog: Option<PathBuf>,
    /// Points a vector collection holds before an HNSW graph indexes it
    /// (below, queries scan every point).
    #[arg(long, env = "TABNODE_HNSW_THRESHOLD", default_value_t = 20_000)]
    hnsw_threshold: usize,
    /// Points one vector collection may hold.
    #[arg(long, env = "TABNODE_MAX_VECTOR_POINTS", default_value_t = 2_000_000)]
    max_vector_points: usize,
    /// Write the bootstrap addresses (JSON) to this file once listening.
    #[arg(long)]
    bootstrap_file: Option<PathBuf>,
    /// A reverse proxy (address or network, e.g. 10.0.0.0/8) whose
    /// `Forwarded`/`X-Forwarded-For` names the client; repeat for several.
    /// From any other address those headers are ignored.
    #[arg(long, env = "TABNODE_TRUSTED_PROXIES", value_delimiter = ',', value_parser = proxy)]
    trusted_proxy: Vec<String>,
    /// The share of an established node's requests spot-checked (0 to 1).
    #[arg(long, env = "TABNODE_CHECK_RATE", default_value_t = 0.03, value_parser = share)]
    check_rate: f64,
    /// The share checked of a new node's requests (its first
    /// --check-new-node-requests).
    #[arg(long, env = "TABNODE_CHECK_NEW_NODE_RATE", default_value_t = 0.25, value_parser = share)]
    check_new_node_rate: f64,
    /// Requests after which a node is established.
    #[arg(long, env = "TABNODE_CHECK_NEW_NODE_REQUESTS", default_value_t = 20)]
    check_new_node_requests: u64,
    /// Failed spot checks after which a node is excluded from work and
    /// points (at least 1).
    #[arg(long, env = "TABNODE_STRIKES_TO_EXCLUDE", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    strikes_to_exclude: u32,
    /// Let a node at the served node's IP address check it (one-machine
    /// test networks only: otherwise one person's nodes vouch for each
    /// other).
    #[arg(long)]
    check_same_address: bool,
}

/// A trusted proxy as `TrustedProxies` reads it (checked here, so a bad
/// one is clap's clear error).
fn proxy(s: &str) -> Result<String, String> {
    tabnode_relay::proxies::TrustedProxies::parse(&[s])
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

/// A share: a number from 0 to 1.
fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("{s:?} is not a share from 0 to 1")),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,webrtc=warn,webrtc_ice=error,webrtc_sctp=warn".into()),
        )
        .init();
    let args = Args::parse();
    let catalog = match &args.catalog {
        Some(path) => tabnode_relay::catalog::Catalog::load(path)?,
        None => tabnode_relay::catalog::Catalog::builtin(),
    };
    let trusted_proxies = tabnode_relay::proxies::TrustedProxies::parse(&args.trusted_proxy)?;
    let config = RelayConfig {
        trusted_proxies,
        stats_interval: tabnode_relay::stats::INTERVAL,
        models_dir: args
            .models_dir
            .unwrap_or_else(|| args.site_root.join("models")),
        data_dir: args.data_dir,
        listen_ip: args.listen_ip,
        tcp_port: args.tcp_port,
        quic_port: args.quic_port,
        webrtc_port: args.webrtc_port,
        http: args.http,
        site_root: args.site_root,
        limits: Limits {
            max_peers_per_ip: args.max_peers_per_ip,
            ..Limits::default()
        },
        pof: PofConfig {
            interval: std::time::Duration::from_secs_f64(args.pof_interval.max(0.001)),
            max_n: args.pof_max_n,
            min_n: args.pof_min_n.min(args.pof_max_n),
            ..PofConfig::default()
        },
        infer: InferConfig {
            stall_timeout: secs(args.stall_timeout),
            first_token_timeout: secs(args.first_token_timeout),
            queue_timeout: secs(args.queue_timeout),
            rate_limit_per_minute: args.rate_limit,
            anonymous_per_hour: args.anonymous_per_hour,
            checks: tabnode_relay::checks::CheckConfig {
                rate: args.check_rate,
                new_node_rate: args.check_new_node_rate,
                new_node_requests: args.check_new_node_requests,
                strikes_to_exclude: args.strikes_to_exclude,
                same_address: args.check_same_address,
                ..Default::default()
            },
            ..InferConfig::default()
        },
        catalog,
        vectors: tabnode_vectors::StoreConfig {
            hnsw_threshold: args.hnsw_threshold,
            max_points: args.max_vector_points,
            ..tabnode_vectors::StoreConfig::default()
        },
        scrape: tabnode_relay::scrape::ScrapeConfig::default(),
    };
    let relay = start(config).await?;
    let json = serde_json::to_string_pretty(&relay.bootstrap)?;
    if let Some(path) = &args.bootstrap_file {
        std::fs::write(path, &json)?;
    }
    tracing::info!(
        "relay {} ready; HTTP on http://{}",
        relay.peer_id,
        relay.http_addr
    );
    println!("tabnode relay ready: open http://{}/", relay.http_addr);
    tokio::select! {
        _ = relay.join() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
