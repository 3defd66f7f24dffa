//! `tabnode-relay`: the relay and web server of a tabnode network.
//! Settings: `tabnode_relay::settings` (flags, environment, `--config`).

use tabnode_relay::settings::{Args, LogFormat, SettingsError};

/// mimalloc instead of glibc's malloc (BENCHMARKS, "A deployed relay").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Resolves on SIGTERM (what service managers and containers send) or
/// Ctrl-C.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Logs to stdout from a thread of its own: the lines queued while it
/// writes go out together (one write for many requests' access-log lines
/// under load, at once when idle). Keep the guard: dropping it writes what
/// is left.
fn init_logs(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        "info,webrtc=warn,webrtc_ice=error,webrtc_sctp=warn,webrtc_dtls=error".into()
    });
    // Colours only on a terminal: a journal, a container's log or a file
    // gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    // Never dropped: a full queue (128k lines) makes the logger wait.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("logs")
        .finish(std::io::BufWriter::with_capacity(
            1 << 16,
            std::io::stdout(),
        ));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    guard
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = match Args::load(std::env::args_os()) {
        Ok(a) => a,
        // --help and --version too: clap prints them and exits.
        Err(SettingsError::Args(e)) => e.exit(),
        Err(e) => {
            eprintln!("tabnode-relay: {e}");
            std::process::exit(2);
        }
    };
    if args.print_config {
        print!("{}", args.to_toml()?);
        return Ok(());
    }
    let _logs = init_logs(args.log_format);
    let config = match args.relay_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tabnode-relay: {e}");
            std::process::exit(2);
        }
    };
    let mut relay = tabnode_relay::start(config).await?;
    let json = serde_json::to_string_pretty(&relay.bootstrap)?;
    if let Some(path) = &args.bootstrap_file {
        std::fs::write(path, &json)?;
    }
    let scheme = if relay.https { "https" } else { "http" };
    tracing::info!(
        "relay {} ready; HTTP on {scheme}://{}",
        relay.peer_id,
        relay.http_addr
    );
    if let Some(addr) = relay.redirect_addr {
        tracing::info!("plain HTTP on {addr} redirects to HTTPS");
    }
    println!("tabnode relay ready: open {scheme}://{}/", relay.http_addr);
    tokio::select! {
        () = relay.failed() => {
            tracing::error!("a relay task ended; stopping");
        }
        () = terminated() => {
            tracing::info!("stopping: requests in progress get {} s", args.shutdown_grace);
        }
    }
    relay
        .shutdown(std::time::Duration::from_secs_f64(args.shutdown_grace))
        .await;
    tracing::info!("stopped");
    Ok(())
}
