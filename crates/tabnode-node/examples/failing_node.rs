//! A native node that serves the real model but reports a device failure
//! after a few tokens of every request: the e2e tests use three of them to
//! check that a request whose every attempt fails ends in an error that the
//! page's client and the official OpenAI client raise, and one that fails
//! inside a multi-byte character to check that a tab continues the answer
//! without losing a byte.
//!
//! `cargo run -p tabnode-node --example failing_node -- BOOTSTRAP_FILE MODEL AFTER`
//!
//! `AFTER` is a number of tokens, or `inside-char`: the first token after
//! which the answer so far ends inside a UTF-8 character.

use std::sync::Arc;
use std::time::Duration;

use tabnode_core::infer::{GenerateRequest, GenerateResult};
use tabnode_core::{Capabilities, NodeKind};
use tabnode_infer::generate::GenerateError;
use tabnode_infer::{Engine, EngineError};
use tabnode_node::prover::{Backend, PofProver};
use tabnode_node::serve::{InferServer, ServedModel};
use tabnode_node::{spawn, NodeConfig};

/// Where a generation stops.
#[derive(Clone, Copy)]
enum Cut {
    /// After this many tokens.
    Tokens(usize),
    /// After the first token that ends inside a character.
    InsideChar,
}

/// The real engine up to the cut, then a failure.
struct FailsAfter {
    engine: Engine,
    cut: Cut,
}

impl ServedModel for FailsAfter {
    fn name(&self) -> &str {
        &self.engine.info.name
    }

    fn check(&self, request: &GenerateRequest) -> Result<u32, EngineError> {
        self.engine.check(request)
    }

    fn generate(
        &self,
        request: &GenerateRequest,
        cancelled: &dyn Fn() -> bool,
        on_piece: &mut dyn FnMut(&[u32], &str),
    ) -> Result<GenerateResult, EngineError> {
        let sent = std::cell::RefCell::new(Vec::<u32>::new());
        let done = std::cell::Cell::new(false);
        self.engine
            .generate(request, &|| cancelled() || done.get(), &mut |t, s| {
                if done.get() {
                    return;
                }
                on_piece(t, s);
                let mut sent = sent.borrow_mut();
                sent.extend_from_slice(t);
                done.set(match self.cut {
                    Cut::Tokens(n) => sent.len() >= n,
                    Cut::InsideChar => {
                        let bytes = self.engine.tokenizer.decode(&sent);
                        std::str::from_utf8(&bytes).is_err_and(|e| e.error_len().is_none())
                    }
                });
            })?;
        let sent = sent.borrow().len();
        Err(EngineError::Generate(GenerateError::Device(format!(
            "scripted failure after {sent} tokens"
        ))))
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bootstrap, model, after] = args.as_slice() else {
        return Err("usage: failing_node BOOTSTRAP_FILE MODEL AFTER".into());
    };
    let boot: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(bootstrap)?)?;
    let relay = boot["tcp"][0]
        .as_str()
        .ok_or("the bootstrap file has no tcp address")?
        .parse()?;
    let bytes = std::fs::read(model).map_err(|e| format!("cannot read {model}: {e}"))?;
    // The engine tabs and native nodes serve with by default.
    let engine = Engine::load_quantized(bytes)?;
    let cut = match after.as_str() {
        "inside-char" => Cut::InsideChar,
        n => Cut::Tokens(
            n.parse()
                .map_err(|e| format!("AFTER: a number or inside-char: {e}"))?,
        ),
    };
    let served = FailsAfter { engine, cut };
    let node = spawn(NodeConfig {
        relay,
        key: None,
        capabilities: Capabilities::new(NodeKind::Native, "tabnode-failing-node"),
        max_backoff: Duration::from_millis(500),
        handler: Arc::new(PofProver::new(Backend::Cpu)),
        server: Some(Arc::new(InferServer::new(Arc::new(served), 1))),
        embedder: None,
    })?;
    println!("tabnode node {} joining the relay", node.peer_id);
    node.join().await;
    Ok(())
}
