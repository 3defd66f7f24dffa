//! The relay as a process of its own (`target/…/tabnode-relay`), for tests
//! that kill it with SIGKILL.
#![allow(dead_code)] // each includer uses part of it

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// The relay binary next to this test's binary (built by `cargo build`,
/// which `scripts/test.sh` runs first), or `TABNODE_RELAY_BIN` (a
/// benchmark of the release build).
pub fn relay_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("TABNODE_RELAY_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("test binary");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("tabnode-relay");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p tabnode-relay` first",
        bin.display()
    );
    bin
}

pub struct RelayProcess {
    pub child: tokio::process::Child,
    pub http: std::net::SocketAddr,
    pub tcp: libp2p::Multiaddr,
}

/// Starts `tabnode-relay` on ephemeral loopback ports with `data` as its
/// data directory and `extra` flags; returns once it prints its address.
pub async fn start_relay_process(data: &std::path::Path, extra: &[&str]) -> RelayProcess {
    use tokio::io::AsyncBufReadExt;
    let boot = data.join("bootstrap.json");
    let _ = std::fs::remove_file(&boot);
    let mut child = tokio::process::Command::new(relay_binary())
        .args([
            "--http",
            "127.0.0.1:0",
            "--tcp-port",
            "0",
            "--quic-port",
            "0",
            "--webrtc-port",
            "0",
        ])
        .arg("--data-dir")
        .arg(data)
        .arg("--bootstrap-file")
        .arg(&boot)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("relay process");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let http = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.split("http://").nth(1) {
                return rest.trim_end_matches('/').parse().expect("HTTP address");
            }
        }
        panic!("the relay exited before it was ready");
    })
    .await
    .expect("relay ready in time");
    // Keep reading its output (a closed pipe would break its logging), in
    // large reads, not a line at a time: under load it logs a line per API
    // request, and the benchmarks read it on the cores the relay uses.
    let mut rest = lines.into_inner();
    tokio::spawn(async move { tokio::io::copy_buf(&mut rest, &mut tokio::io::sink()).await });
    let b: Value = serde_json::from_str(&std::fs::read_to_string(&boot).expect("bootstrap file"))
        .expect("json");
    let tcp = b["tcp"][0]
        .as_str()
        .expect("tcp address")
        .parse()
        .expect("multiaddr");
    RelayProcess { child, http, tcp }
}
