// Entry of the tabnode compute worker (a module Web Worker).
// All logic is in Rust (crates/tabnode-worker); this only loads the wasm.
// Its start function installs the message handler and posts `loaded`.
import init, { serveShard } from '../pkg/tabnode_worker.js';

if (self.name === 'tabnode-shard') {
  // A shard of the CPU engine (crates/tabnode-worker/src/shards.rs): it
  // says it started, then shard 0 sends its compiled module (shared code,
  // already tiered up, nothing to compile here) with this shard's rows.
  const msg = await new Promise((resolve) => {
    self.onmessage = (e) => resolve(e.data);
    self.postMessage('started');
  });
  self.onmessage = null;
  const wasm = await init({ module_or_path: msg.module });
  wasm.__wasm_call_ctors();
  serveShard(msg);
} else {
  // Static constructors once (crates/tabnode-worker/build.rs), before any
  // message can reach the model.
  const wasm = await init();
  wasm.__wasm_call_ctors();
}
