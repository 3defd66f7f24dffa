//! The relay binary's settings: flags, environment variables and a TOML
//! file (`--config`), in that order of precedence, over the defaults.
//!
//! The file takes every flag by its long name without the dashes
//! (`pof-interval = 3600`, `trusted-proxy = ["10.0.0.0/8"]`, `check-same-address
//! = true`). It is read as flags placed before the command line's (clap
//! lets a later flag override an earlier one), leaving out the keys whose
//! environment variable is set, so a flag beats the environment and the
//! environment beats the file; a repeatable flag adds to the file's list.
//! An unknown key, a value of the wrong shape or a value a flag would
//! refuse is an error naming the file. `--print-config` prints the
//! effective settings as such a file.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser};
use serde::Serialize;

use crate::addresses::ExternalAddress;
use crate::{InferConfig, Limits, PofConfig, RelayConfig};

/// How the relay logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// Runs a tabnode relay and serves the site.
#[derive(Debug, Clone, Parser, Serialize)]
#[command(name = "tabnode-relay", version, about, args_override_self = true)]
#[serde(rename_all = "kebab-case")]
pub struct Args {
    /// A TOML file of settings (every flag by its long name); flags and
    /// environment variables override it.
    #[arg(long, env = "TABNODE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print the effective settings (as a `--config` file) and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
    /// HTTP listen address (site, API, metrics).
    #[arg(long, env = "TABNODE_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// IP address for the libp2p listeners; repeat for several (`0.0.0.0`
    /// and `::` for every interface).
    #[arg(
        long,
        env = "TABNODE_LISTEN_IP",
        value_delimiter = ',',
        default_value = "127.0.0.1"
    )]
    pub listen_ip: Vec<IpAddr>,
    /// The address browsers and nodes reach the relay at, announced instead
    /// of the listen addresses: an IP (every transport on its listen port)
    /// or one transport's multiaddr (`/ip4/…/udp/443/webrtc-direct`);
    /// repeat for several.
    #[arg(long, env = "TABNODE_EXTERNAL_ADDRESSES", value_delimiter = ',')]
    pub external_address: Vec<ExternalAddress>,
    /// TCP port for native nodes.
    #[arg(long, env = "TABNODE_TCP_PORT", default_value_t = 4001)]
    pub tcp_port: u16,
    /// UDP port for QUIC.
    #[arg(long, env = "TABNODE_QUIC_PORT", default_value_t = 4001)]
    pub quic_port: u16,
    /// UDP port for webrtc-direct (browsers).
    #[arg(long, env = "TABNODE_WEBRTC_PORT", default_value_t = 4002)]
    pub webrtc_port: u16,
    /// Directory of the relay's state: identity key, WebRTC certificate,
    /// ledger, API keys, vectors, flow runs.
    #[arg(long, env = "TABNODE_DATA_DIR", default_value = ".data/relay")]
    pub data_dir: PathBuf,
    /// Directory holding `www/`, `pkg/` and `worker/` (default: where
    /// `scripts/install.sh` puts them, `../share/tabnode` beside the
    /// binary, when it holds the site; else the current directory).
    #[arg(long, env = "TABNODE_SITE_ROOT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site_root: Option<PathBuf>,
    /// Directory of model files served under `/models/` (default: `models/`
    /// under the site root).
    #[arg(long, env = "TABNODE_MODELS_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models_dir: Option<PathBuf>,
    /// Mean seconds between two Proof-of-FLOPS challenges of a node (the
    /// gaps are random, exponential with this mean).
    #[arg(long, env = "TABNODE_POF_INTERVAL", default_value_t = 3600.0, value_parser = seconds)]
    pub pof_interval: f64,
    /// Largest Proof-of-FLOPS matrix size.
    #[arg(long, env = "TABNODE_POF_MAX_N", default_value_t = 2048)]
    pub pof_max_n: u32,
    /// Smallest Proof-of-FLOPS matrix size.
    #[arg(long, env = "TABNODE_POF_MIN_N", default_value_t = 256)]
    pub pof_min_n: u32,
    /// Seconds a node may go without sending tokens before its request
    /// moves to another node.
    #[arg(long, env = "TABNODE_STALL_TIMEOUT", default_value_t = 60.0, value_parser = seconds)]
    pub stall_timeout: f64,
    /// Seconds a node may take to its first token.
    #[arg(long, env = "TABNODE_FIRST_TOKEN_TIMEOUT", default_value_t = 300.0, value_parser = seconds)]
    pub first_token_timeout: f64,
    /// Seconds a request waits for a free node.
    #[arg(long, env = "TABNODE_QUEUE_TIMEOUT", default_value_t = 30.0, value_parser = seconds)]
    pub queue_timeout: f64,
    /// Chat requests per minute per client address (0: no limit).
    #[arg(long, env = "TABNODE_RATE_LIMIT", default_value_t = 600)]
    pub rate_limit: u32,
    /// Generation, embedding and flow requests an hour per client address
    /// without an API key (0: no limit); past it a 429 says how to get a key.
    #[arg(long, env = "TABNODE_ANONYMOUS_PER_HOUR", default_value_t = 100)]
    pub anonymous_per_hour: u32,
    /// Node identities connected at once from one IP address (raise it for
    /// networks where many tabs share an address).
    #[arg(long, env = "TABNODE_MAX_PEERS_PER_IP", default_value_t = 64)]
    pub max_peers_per_ip: usize,
    /// The model catalog (JSON; the built-in one lists SmolLM2): the only
    /// models requests may name and nodes are credited for.
    #[arg(long, env = "TABNODE_CATALOG")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalog: Option<PathBuf>,
    /// Points a vector collection holds before an HNSW graph indexes it
    /// (below, queries scan every point).
    #[arg(long, env = "TABNODE_HNSW_THRESHOLD", default_value_t = 20_000)]
    pub hnsw_threshold: usize,
    /// Points one vector collection may hold.
    #[arg(long, env = "TABNODE_MAX_VECTOR_POINTS", default_value_t = 2_000_000)]
    pub max_vector_points: usize,
    /// Write the bootstrap addresses (JSON) to this file once listening.
    #[arg(long, env = "TABNODE_BOOTSTRAP_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap_file: Option<PathBuf>,
    /// A reverse proxy (address or network, e.g. 10.0.0.0/8) whose
    /// `Forwarded`/`X-Forwarded-For` names the client; repeat for several.
    /// From any other address those headers are ignored.
    #[arg(long, env = "TABNODE_TRUSTED_PROXIES", value_delimiter = ',', value_parser = proxy)]
    pub trusted_proxy: Vec<String>,
    /// The share of an established node's requests spot-checked (0 to 1).
    #[arg(long, env = "TABNODE_CHECK_RATE", default_value_t = 0.03, value_parser = share)]
    pub check_rate: f64,
    /// The share checked of a new node's requests (its first
    /// --check-new-node-requests).
    #[arg(long, env = "TABNODE_CHECK_NEW_NODE_RATE", default_value_t = 0.25, value_parser = share)]
    pub check_new_node_rate: f64,
    /// Requests after which a node is established.
    #[arg(long, env = "TABNODE_CHECK_NEW_NODE_REQUESTS", default_value_t = 20)]
    pub check_new_node_requests: u64,
    /// Failed spot checks after which a node is excluded from work and
    /// points (at least 1).
    #[arg(long, env = "TABNODE_STRIKES_TO_EXCLUDE", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub strikes_to_exclude: u32,
    /// Let a node at the served node's IP address check it (one-machine
    /// test networks only: otherwise one person's nodes vouch for each
    /// other).
    #[arg(long, env = "TABNODE_CHECK_SAME_ADDRESS")]
    pub check_same_address: bool,
    /// Seconds the relay gives requests in progress to finish when told to
    /// stop (SIGTERM, Ctrl-C) before it closes.
    #[arg(long, env = "TABNODE_SHUTDOWN_GRACE", default_value_t = 30.0, value_parser = seconds)]
    pub shutdown_grace: f64,
    /// Serve HTTPS on --http with this certificate chain (PEM, the
    /// server's certificate first; with --tls-key).
    #[arg(long, env = "TABNODE_TLS_CERT", requires = "tls_key")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "TABNODE_TLS_KEY", requires = "tls_cert")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// With --tls-cert: also listen for plain HTTP here and redirect every
    /// request to HTTPS (e.g. `0.0.0.0:80`).
    #[arg(long, env = "TABNODE_HTTP_REDIRECT", requires = "tls_cert")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_redirect: Option<SocketAddr>,
    /// Log lines for people (`text`) or one JSON object a line (`json`);
    /// `RUST_LOG` sets what is logged.
    #[arg(long, env = "TABNODE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The command line (or the environment) is wrong; clap's message.
    #[error(transparent)]
    Args(#[from] clap::Error),
    /// The config file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not TOML.
    #[error("{path}: not TOML: {message}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's message (line and column).
        message: String,
    },
    /// A key names no flag.
    #[error("{path}: unknown setting `{key}` (settings are the flags' long names: see --help)")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A value of the wrong shape (a table, a list for a single value).
    #[error("{path}: `{key}` {problem}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// A value the flag refuses.
    #[error("{path}: {message}")]
    Value {
        /// The file.
        path: PathBuf,
        /// clap's message for the flag.
        message: String,
    },
    /// A setting that parses but cannot be used (the catalog, a proxy).
    #[error("{0}")]
    Unusable(String),
}

/// The site's directory of an installed relay (`<bin>/../share/tabnode`,
/// see `scripts/install.sh`) when it holds the site, else the current
/// directory (a checkout).
fn installed_site() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("share").join("tabnode")))
        .filter(|dir| dir.join("www").join("index.html").is_file())
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A number of seconds: finite, above zero, at most a day.
fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 && x <= 86_400.0 => Ok(x),
        _ => Err(format!(
            "{s:?} is not a number of seconds above 0, at most 86400"
        )),
    }
}

/// A trusted proxy as `TrustedProxies` reads it (checked here, so a bad
/// one is clap's clear error).
fn proxy(s: &str) -> Result<String, String> {
    crate::proxies::TrustedProxies::parse(&[s])
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

impl Serialize for ExternalAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The flags a config file may not set.
const NOT_IN_FILE: [&str; 4] = ["config", "print-config", "help", "version"];

/// `value` of `key` as command-line tokens (`--key=value`, repeated for a
/// list, `--key` alone for a true switch).
fn tokens(
    path: &std::path::Path,
    key: &str,
    arg: &clap::Arg,
    value: &toml::Value,
) -> Result<Vec<OsString>, SettingsError> {
    let shape = |problem| SettingsError::Shape {
        path: path.to_owned(),
        key: key.to_owned(),
        problem,
    };
    let scalar = |v: &toml::Value| -> Result<String, SettingsError> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            _ => Err(shape("must be a string, a number or a boolean")),
        }
    };
    let switch = matches!(arg.get_action(), clap::ArgAction::SetTrue);
    let many = matches!(arg.get_action(), clap::ArgAction::Append);
    Ok(match value {
        toml::Value::Boolean(b) if switch => {
            if *b {
                vec![format!("--{key}").into()]
            } else {
                Vec::new()
            }
        }
        _ if switch => return Err(shape("is a switch: true or false")),
        toml::Value::Array(items) if many => items
            .iter()
            .map(|v| scalar(v).map(|s| format!("--{key}={s}").into()))
            .collect::<Result<_, _>>()?,
        toml::Value::Array(_) => return Err(shape("takes one value, not a list")),
        v => vec![format!("--{key}={}", scalar(v)?).into()],
    })
}

/// The config file at `path` as command-line tokens, leaving out the
/// settings whose environment variable is set.
fn file_tokens(path: &std::path::Path) -> Result<Vec<OsString>, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| SettingsError::Toml {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    let command = Args::command();
    let mut out = Vec::new();
    for (key, value) in &table {
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && !NOT_IN_FILE.contains(&key.as_str()))
            .ok_or_else(|| SettingsError::UnknownKey {
                path: path.to_owned(),
                key: key.clone(),
            })?;
        if arg
            .get_env()
            .is_some_and(|name| std::env::var_os(name).is_some())
        {
            continue;
        }
        out.extend(tokens(path, key, arg, value)?);
    }
    Ok(out)
}

impl Args {
    /// The settings from `argv` (the program's name first), the
    /// environment and the config file they name.
    ///
    /// # Errors
    /// [`SettingsError`]: clap's (also for `--help` and `--version`, which
    /// it prints on `exit()`), or the file's.
    pub fn load<I, T>(argv: I) -> Result<Self, SettingsError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
        let program = argv
            .first()
            .cloned()
            .unwrap_or_else(|| "tabnode-relay".into());
        // Where the file is: the command line or the environment.
        let first = Args::command()
            .ignore_errors(true)
            .try_get_matches_from(&argv)?;
        let Some(path) = first.get_one::<PathBuf>("config").cloned() else {
            return Ok(Self::try_parse_from(&argv)?.resolved());
        };
        let from_file = file_tokens(&path)?;
        // The file's values alone first, so that a bad one is named as the
        // file's.
        Args::command()
            .try_get_matches_from(std::iter::once(program.clone()).chain(from_file.iter().cloned()))
            .map_err(|e| SettingsError::Value {
                path: path.clone(),
                // clap's first line, without its `error: ` and the pointer
                // to --help.
                message: e
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("error: ")
                    .to_owned(),
            })?;
        let merged: Vec<OsString> = std::iter::once(program)
            .chain(from_file)
            .chain(argv.into_iter().skip(1))
            .collect();
        let matches = Args::command().try_get_matches_from(merged)?;
        Ok(Self::from_arg_matches(&matches)?.resolved())
    }

    /// These settings with the defaults that depend on where the binary is
    /// filled in.
    fn resolved(mut self) -> Self {
        self.site_root.get_or_insert_with(installed_site);
        self
    }

    /// The effective settings as a config file.
    ///
    /// # Errors
    /// A value TOML cannot write (none of the relay's).
    pub fn to_toml(&self) -> Result<String, SettingsError> {
        toml::to_string(self).map_err(|e| SettingsError::Unusable(e.to_string()))
    }

    /// The relay's configuration.
    ///
    /// # Errors
    /// The catalog file cannot be used.
    pub fn relay_config(&self) -> Result<RelayConfig, SettingsError> {
        let secs = std::time::Duration::from_secs_f64;
        let catalog = match &self.catalog {
            Some(path) => crate::catalog::Catalog::load(path)
                .map_err(|e| SettingsError::Unusable(e.to_string()))?,
            None => crate::catalog::Catalog::builtin(),
        };
        let trusted_proxies = crate::proxies::TrustedProxies::parse(&self.trusted_proxy)
            .map_err(|e| SettingsError::Unusable(e.to_string()))?;
        let site_root = self.site_root.clone().unwrap_or_else(installed_site);
        Ok(RelayConfig {
            trusted_proxies,
            stats_interval: crate::stats::INTERVAL,
            models_dir: self
                .models_dir
                .clone()
                .unwrap_or_else(|| site_root.join("models")),
            data_dir: self.data_dir.clone(),
            listen_ips: self.listen_ip.clone(),
            external_addresses: self.external_address.clone(),
            tcp_port: self.tcp_port,
            quic_port: self.quic_port,
            webrtc_port: self.webrtc_port,
            http: self.http,
            site_root,
            limits: Limits {
                max_peers_per_ip: self.max_peers_per_ip,
                ..Limits::default()
            },
            pof: PofConfig {
                interval: secs(self.pof_interval),
                max_n: self.pof_max_n,
                min_n: self.pof_min_n.min(self.pof_max_n),
                ..PofConfig::default()
            },
            infer: InferConfig {
                stall_timeout: secs(self.stall_timeout),
                first_token_timeout: secs(self.first_token_timeout),
                queue_timeout: secs(self.queue_timeout),
                rate_limit_per_minute: self.rate_limit,
                anonymous_per_hour: self.anonymous_per_hour,
                checks: crate::checks::CheckConfig {
                    rate: self.check_rate,
                    new_node_rate: self.check_new_node_rate,
                    new_node_requests: self.check_new_node_requests,
                    strikes_to_exclude: self.strikes_to_exclude,
                    same_address: self.check_same_address,
                    ..Default::default()
                },
                ..InferConfig::default()
            },
            catalog,
            vectors: tabnode_vectors::StoreConfig {
                hnsw_threshold: self.hnsw_threshold,
                max_points: self.max_vector_points,
                ..tabnode_vectors::StoreConfig::default()
            },
            scrape: crate::scrape::ScrapeConfig::default(),
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(crate::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            http_redirect: self.http_redirect,
        })
    }
}
