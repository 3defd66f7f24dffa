// Entry of the tabnode compute worker (a module Web Worker).
// All logic is in Rust (crates/tabnode-worker); this only loads the wasm.
// Its start function installs the message handler and posts `loaded`.
import init from '../pkg/tabnode_worker.js';

// Static constructors once (crates/tabnode-worker/build.rs), before any
// message can reach the model.
const wasm = await init();
wasm.__wasm_call_ctors();
