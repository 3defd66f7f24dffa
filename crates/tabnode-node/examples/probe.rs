//! Sends one request to a peer through the relay, as any peer could, and
//! prints the answer as one JSON line. The e2e tests use it to check what a
//! tab refuses (commands from anyone but its relay).
//!
//! `cargo run -p tabnode-node --example probe -- BOOTSTRAP_FILE PEER REQUEST`
//! with REQUEST one of `echo`, `pof-challenge:N`, `pof-open`, `infer`,
//! `infer-cancel`.

use std::sync::Arc;
use std::time::Duration;

use tabnode_core::infer::{GenerateRequest, InferRequest, Prompt};
use tabnode_core::{Capabilities, ErrorCode, NodeKind, PofChallenge, Request, Response};
use tabnode_node::prover::{Backend, PofProver};
use tabnode_node::{spawn, NodeConfig};

fn request(spec: &str) -> Result<Request, String> {
    let (name, arg) = spec.split_once(':').unwrap_or((spec, ""));
    Ok(match name {
        "echo" => Request::Echo(b"probe".to_vec()),
        "pof-challenge" => Request::PofChallenge(PofChallenge {
            round: 1,
            n: arg.parse().map_err(|e| format!("pof-challenge:N: {e}"))?,
            seed: [7; 32],
            deadline_ms: 60_000,
        }),
        "pof-open" => Request::PofOpen {
            round: 1,
            query: tabnode_pof::Query {
                nonce: [1; 32],
                k: 64,
            },
        },
        "infer" => Request::Infer(Box::new(InferRequest {
            request_id: 1,
            attempt: 0,
            model: "smollm2-135m-instruct".into(),
            request: GenerateRequest::new(Prompt::Text("hi".into())),
        })),
        "infer-cancel" => Request::InferCancel { request_id: 1 },
        other => return Err(format!("unknown request {other:?}")),
    })
}

fn code_name(code: ErrorCode) -> String {
    format!("{code:?}")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bootstrap, peer, spec] = args.as_slice() else {
        return Err("usage: probe BOOTSTRAP_FILE PEER REQUEST".into());
    };
    let boot: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(bootstrap)?)?;
    let relay = boot["tcp"][0]
        .as_str()
        .ok_or("the bootstrap file has no tcp address")?
        .parse()?;
    let request = request(spec)?;
    let node = spawn(NodeConfig {
        relay,
        key: None,
        capabilities: Capabilities::new(NodeKind::Native, "tabnode-probe"),
        max_backoff: Duration::from_millis(500),
        handler: Arc::new(PofProver::new(Backend::Cpu)),
        server: None,
        embedder: None,
    })?;
    node.wait_for("the relay", Duration::from_secs(30), |s| s.relay_connected)
        .await?;
    let answer = tokio::time::timeout(
        Duration::from_secs(60),
        node.request(Some(peer.parse()?), request),
    )
    .await??;
    let line = match answer {
        Response::Error { code, message } => {
            serde_json::json!({ "kind": "error", "code": code_name(code), "message": message })
        }
        Response::Echo(data) => serde_json::json!({ "kind": "echo", "bytes": data.len() }),
        other => serde_json::json!({ "kind": "other", "debug": format!("{other:?}") }),
    };
    println!("{line}");
    Ok(())
}
