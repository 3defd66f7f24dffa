//! The tabnode relay.
//!
//! One process that browser tabs and native nodes join:
//!
//! * libp2p on `/webrtc-direct` (browsers; certificate persisted so the
//!   certhash survives restarts), TCP and QUIC (native nodes), with a circuit
//!   relay v2 server sized for inference traffic, identify, ping and the
//!   `/tabnode/1.0.0` protocol (node registry);
//! * an HTTP server (default `127.0.0.1:8080`) with the site (`www/`, `pkg/`,
//!   `worker/`), the model files, `/api/bootstrap`, `/api/network` and
//!   `/metrics`.
//!
//! [`start`] brings it all up and returns a [`RelayHandle`]; the binary is a
//! thin wrapper around it, and integration tests start relays the same way.

pub mod accounts;
pub mod addresses;
pub mod catalog;
pub mod checks;
mod client;
mod embeddings;
pub mod flows;
mod goodbye;
mod http;
pub mod inference;
mod jobs;
pub mod ledger;
mod limiter;
mod links;
pub mod metrics;
mod openai;
mod pof;
pub mod proxies;
pub mod registry;
pub mod roster;
pub mod scrape;
pub mod sessions;
pub mod settings;
mod state;
pub mod stats;
mod swarm;
pub mod tls;
mod vectors;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use tokio::task::JoinHandle;

pub use inference::InferConfig;
pub use pof::{PofConfig, PofConfigError};
pub use registry::{NodeEntry, PofHistory};
pub use state::{NetworkModel, NetworkView, RelayState};

/// Now, in milliseconds since the Unix epoch (0 before it).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Errors of the relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading or writing the data directory failed.
    #[error("{what} at {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The stored identity key cannot be decoded.
    #[error("identity key at {0} is corrupt: {1}")]
    BadKey(PathBuf, String),
    /// The stored WebRTC certificate cannot be used.
    #[error("WebRTC certificate: {0}")]
    Certificate(String),
    /// The ledger database cannot be opened.
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    /// libp2p refused to build or listen.
    #[error("libp2p: {0}")]
    Libp2p(String),
    /// The HTTP server could not bind.
    #[error("HTTP server on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The vector store cannot be opened.
    #[error(transparent)]
    Vectors(#[from] tabnode_vectors::VectorError),
    /// The scraper's HTTP client cannot be built.
    #[error(transparent)]
    Scraper(#[from] scrape::ScrapeError),
    /// The flow runs' database cannot be opened.
    #[error(transparent)]
    FlowRuns(#[from] flows::RunStoreError),
    /// The API keys' database cannot be opened.
    #[error(transparent)]
    Accounts(#[from] accounts::AccountError),
    /// The model catalog cannot be used.
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    /// A Proof-of-FLOPS setting is unsafe.
    #[error(transparent)]
    PofConfig(#[from] pof::PofConfigError),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A listener did not come up in time.
    #[error("timed out waiting for the {0} listener")]
    ListenTimeout(&'static str),
}

/// Circuit relay limits. Defaults are sized for inference: circuits last
/// hours and carry hundreds of MiB, and thousands of tabs hold reservations.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Reservations held at once.
    pub max_reservations: usize,
    /// How long a reservation lasts before the holder must renew.
    pub reservation_duration: Duration,
    /// Circuits open at once.
    pub max_circuits: usize,
    /// Circuits per peer.
    pub max_circuits_per_peer: usize,
    /// Longest life of one circuit.
    pub max_circuit_duration: Duration,
    /// Most bytes one circuit may carry.
    pub max_circuit_bytes: u64,
    /// Node identities connected at once from one IP address: identities
    /// are free to make, so one machine must not pose as a crowd. Set for
    /// NAT (many tabs behind one address); further connections are closed.
    pub max_peers_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_reservations: 8192,
            reservation_duration: Duration::from_secs(3600),
            max_circuits: 8192,
            max_circuits_per_peer: 256,
            max_circuit_duration: Duration::from_secs(12 * 3600),
            max_circuit_bytes: 1 << 30,
            max_peers_per_ip: 64,
        }
    }
}

/// How to run a relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Where the identity key and WebRTC certificate live.
    pub data_dir: PathBuf,
    /// The IPs the libp2p listeners bind to (`0.0.0.0` and `::` for every
    /// interface); announced as they are unless `external_addresses` says
    /// otherwise.
    pub listen_ips: Vec<IpAddr>,
    /// The addresses announced to browsers and nodes instead of the listen
    /// addresses (a public IP, a NAT's forwarded ports).
    pub external_addresses: Vec<addresses::ExternalAddress>,
    /// TCP port (0 = any).
    pub tcp_port: u16,
    /// QUIC port, UDP (0 = any).
    pub quic_port: u16,
    /// webrtc-direct port, UDP (0 = any).
    pub webrtc_port: u16,
    /// HTTP listen address.
    pub http: SocketAddr,
    /// Root of the static site (`www/`, `pkg/`, `worker/` and `models/`
    /// are looked up under it).
    pub site_root: PathBuf,
    /// Where the model files are served from (`/models/...`).
    pub models_dir: PathBuf,
    /// Relay limits.
    pub limits: Limits,
    /// Proof-of-FLOPS settings.
    pub pof: PofConfig,
    /// Network inference settings.
    pub infer: InferConfig,
    /// The models requests may name and nodes are credited for.
    pub catalog: catalog::Catalog,
    /// The vector store's limits and index settings.
    pub vectors: tabnode_vectors::StoreConfig,
    /// How flows' `scrape` nodes fetch pages.
    pub scrape: scrape::ScrapeConfig,
    /// Reverse proxies whose `Forwarded`/`X-Forwarded-For` the relay
    /// believes (none by default: the connection's address is the client).
    pub trusted_proxies: proxies::TrustedProxies,
    /// How often `/api/stats` closes a sample ([`stats::INTERVAL`]).
    pub stats_interval: Duration,
    /// Serve HTTPS on `http` with this certificate chain and key (PEM);
    /// plain HTTP when `None`.
    pub tls: Option<TlsFiles>,
    /// With TLS: a plain-HTTP address that redirects to HTTPS.
    pub http_redirect: Option<SocketAddr>,
}

/// A certificate chain and its private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The chain, the server's certificate first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl RelayConfig {
    /// Loopback, ephemeral ports, for tests.
    pub fn ephemeral(data_dir: PathBuf, site_root: PathBuf) -> Self {
        Self {
            models_dir: site_root.join("models"),
            data_dir,
            listen_ips: vec![IpAddr::from([127, 0, 0, 1])],
            external_addresses: Vec::new(),
            tcp_port: 0,
            quic_port: 0,
            webrtc_port: 0,
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            site_root,
            limits: Limits::default(),
            pof: PofConfig::default(),
            // Tests send many requests from one address; the anonymous
            // allowance has tests of its own.
            infer: InferConfig {
                anonymous_per_hour: 0,
                ..InferConfig::default()
            },
            catalog: catalog::Catalog::builtin(),
            vectors: tabnode_vectors::StoreConfig::default(),
            scrape: scrape::ScrapeConfig::default(),
            trusted_proxies: proxies::TrustedProxies::default(),
            stats_interval: stats::INTERVAL,
            tls: None,
            http_redirect: None,
        }
    }
}

/// The dialable addresses of a running relay (each ends in `/p2p/<id>`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Bootstrap {
    /// The relay's peer id.
    pub peer_id: String,
    /// For browsers: `/ip4/…/udp/…/webrtc-direct/certhash/…/p2p/…`.
    pub webrtc_direct: Vec<String>,
    /// For native nodes over TCP.
    pub tcp: Vec<String>,
    /// For native nodes over QUIC.
    pub quic: Vec<String>,
}

/// A running relay. Dropping it stops the relay.
#[derive(Debug)]
pub struct RelayHandle {
    /// The relay's peer id.
    pub peer_id: PeerId,
    /// Its dialable addresses.
    pub bootstrap: Bootstrap,
    /// The bound HTTP address.
    pub http_addr: SocketAddr,
    /// Whether it serves HTTPS.
    pub https: bool,
    /// The bound address of the redirect to HTTPS, if any.
    pub redirect_addr: Option<SocketAddr>,
    /// Registry and counters.
    pub state: Arc<RelayState>,
    tasks: Vec<JoinHandle<()>>,
    /// The vector store (`vectors.redb`).
    pub vectors: Arc<tabnode_vectors::VectorStore>,
    /// Dropped last: closing it releases the database for a restart.
    _ledger: Arc<ledger::Ledger>,
}

impl RelayHandle {
    /// The TCP address as a multiaddr.
    pub fn tcp_addr(&self) -> Option<Multiaddr> {
        self.bootstrap.tcp.first().and_then(|a| a.parse().ok())
    }

    /// The QUIC address as a multiaddr.
    pub fn quic_addr(&self) -> Option<Multiaddr> {
        self.bootstrap.quic.first().and_then(|a| a.parse().ok())
    }

    /// Resolves when one of the relay's tasks has ended (a failure: they
    /// run until the relay stops).
    pub async fn failed(&mut self) {
        if !self.tasks.is_empty() {
            let _ = futures::future::select_all(self.tasks.iter_mut()).await;
        }
    }

    /// Stops the relay gracefully: `/readyz` says 503 and new API requests
    /// are refused at once, the HTTP server takes no new connections, the
    /// requests in progress get up to `grace` to finish (their nodes keep
    /// serving them: the swarm runs until the end), then everything stops
    /// and the ledger's queued credits are written before this returns.
    pub async fn shutdown(mut self, grace: Duration) {
        self.state.stop();
        // The HTTP server's task is the last; it ends once its connections
        // have.
        if let Some(http) = self.tasks.pop() {
            let abort = http.abort_handle();
            if tokio::time::timeout(grace, http).await.is_err() {
                tracing::warn!("requests still running after {grace:?}: closing them");
                abort.abort();
            }
        }
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        // Dropping the last handle of the ledger joins its writer.
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the relay: libp2p listeners, then the HTTP server.
///
/// # Errors
/// Data directory, identity or certificate problems, and listeners that fail
/// to bind.
pub async fn start(mut config: RelayConfig) -> Result<RelayHandle, RelayError> {
    config.pof = config.pof.validated()?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| RelayError::Io {
        what: "creating the data directory",
        path: config.data_dir.clone(),
        source,
    })?;
    let ledger = Arc::new(ledger::Ledger::open(&config.data_dir.join("ledger.redb"))?);
    let keys = Arc::new(accounts::KeyStore::open(
        &config.data_dir.join("keys.redb"),
    )?);
    let state = Arc::new(RelayState::new(&ledger, config.catalog.clone()).with_accounts(keys));
    // Strikes a previous run recorded (as clawbacks) still count.
    let k = config.infer.checks.strikes_to_exclude;
    for b in ledger.balances()?.0 {
        let Ok(peer) = b.peer_id.parse::<libp2p::PeerId>() else {
            continue;
        };
        let strikes = u32::try_from(b.clawed_back_requests).unwrap_or(u32::MAX);
        if strikes > 0 {
            state.checks.restore(peer, strikes, k);
            if strikes >= k {
                state.registry.exclude(peer);
            }
        }
    }
    let vectors = Arc::new(tabnode_vectors::VectorStore::open(
        &config.data_dir.join("vectors.redb"),
        config.vectors.clone(),
    )?);
    let runs = Arc::new(flows::RunStore::open(&config.data_dir.join("flows.redb"))?);
    let scraper = Arc::new(scrape::Scraper::new(
        config.scrape.clone(),
        Arc::new(scrape::SystemResolver),
    )?);
    let codec =
        tabnode_core::TabnodeCodec::new(tabnode_core::MAX_MESSAGE, state.metrics.codec.clone());
    let (swarm, bootstrap) = swarm::build(&config, codec).await?;
    let peer_id = *swarm.local_peer_id();
    let links = Arc::new(links::Links::new(&state.metrics));
    let (client, command_rx) = client::SwarmClient::channel(256, links.clone());
    let (joined_tx, joined_rx) = tokio::sync::mpsc::channel(1024);
    let swarm_task = tokio::spawn(swarm::run(
        swarm,
        state.clone(),
        command_rx,
        joined_tx,
        config.limits.max_peers_per_ip,
        links,
    ));
    let pof_task = tokio::spawn(pof::run(
        config.pof.clone(),
        state.clone(),
        client.clone(),
        joined_rx,
    ));
    let uptime_task = tokio::spawn(uptime(state.clone()));
    let stats_task = tokio::spawn(stats::run(state.clone(), config.stats_interval));
    let infer = inference::InferContext {
        state: state.clone(),
        client,
        config: config.infer.clone(),
    };
    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .map_err(|source| RelayError::Http {
            addr: config.http,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| RelayError::Http {
        addr: config.http,
        source,
    })?;
    let app = http::router(
        &config,
        state.clone(),
        bootstrap.clone(),
        infer,
        vectors.clone(),
        runs,
        scraper,
    );
    // TLS set up before anything listens: a bad certificate stops the
    // start with its error.
    let tls = config
        .tls
        .as_ref()
        .map(|f| tls::server_config(&f.cert, &f.key))
        .transpose()?;
    let mut tasks = vec![swarm_task, pof_task, uptime_task, stats_task];
    let mut redirect_addr = None;
    if let (Some(_), Some(addr)) = (&tls, config.http_redirect) {
        let plain = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| RelayError::Http { addr, source })?;
        redirect_addr = plain.local_addr().ok();
        tasks.push(tokio::spawn(tls::redirect(
            plain,
            http_addr.port(),
            state.stopped(),
        )));
    }
    let https = tls.is_some();
    let stopped = state.stopped();
    // Once stopping: no new connections, idle ones closed, requests in
    // progress (streams included) finish.
    let http_task = match tls {
        Some(tls) => tokio::spawn(tls::serve(listener, tls, app, stopped)),
        None => tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::error!("HTTP server stopped: {e}");
            }
        }),
    };
    // The HTTP server's task goes last (see `shutdown`).
    tasks.push(http_task);
    Ok(RelayHandle {
        peer_id,
        bootstrap,
        http_addr,
        https,
        redirect_addr,
        state,
        tasks,
        vectors,
        _ledger: ledger,
    })
}

/// Credits uptime once a minute.
async fn uptime(state: Arc<RelayState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The first tick is immediate: nobody has been up a minute yet.
    tick.tick().await;
    loop {
        tick.tick().await;
        let minute = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 60);
        state.credit_uptime(minute);
    }
}
