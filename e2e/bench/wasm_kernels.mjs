// The quantized kernels compiled to wasm (SIMD128) and timed in V8, the
// engine of Chromium, without a browser: scalar table against the SIMD128
// table per weight format, at SmolLM2-135M's shapes; then the tab's whole
// CPU engine on the model file ($TABNODE_MODEL, as scripts/env.sh sets it):
// a PROMPT-token prompt (default 5) and DECODE_STEPS greedy steps. Builds
// the module itself (examples/wasm_kernels.rs). Profile with `node
// --cpu-prof`.
// node --no-liftoff e2e/bench/wasm_kernels.mjs [MILLISECONDS] [DECODE_STEPS] [PROMPT]
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from '../harness.mjs';

const ms = Number(process.argv[2] ?? 300);
const target = process.env.CARGO_TARGET_DIR ?? join(process.env.HOME, '.cache/tabnode/target');
execFileSync('cargo', ['build', '-q', '--release', '--target', 'wasm32-unknown-unknown', '-p', 'tabnode-infer', '--example', 'wasm_kernels'], { cwd: ROOT, stdio: 'inherit' });
const bytes = readFileSync(join(target, 'wasm32-unknown-unknown/release/examples/wasm_kernels.wasm'));
const module = await WebAssembly.compile(bytes);
// wasm-bindgen's imports (random numbers for dependencies) are never
// called by the kernels: each one throws if it is.
const imports = {};
for (const { module: m, name, kind } of WebAssembly.Module.imports(module)) {
  imports[m] ??= {};
  imports[m][name] = kind === 'function' ? () => { throw new Error(`${m}.${name} called`); } : undefined;
}
const { exports } = await WebAssembly.instantiate(module, imports);
// The raw module (no wasm-bindgen CLI pass) exports `setup_<hash>`, `run_<hash>`.
const k = Object.fromEntries(['setup', 'run', 'check', 'model_buffer', 'model_load', 'model_steps'].map((name) => [name, Object.entries(exports).find(([n]) => n.startsWith(`${name}_`))?.[1]]));
const formats = ['Q4_0', 'Q4_1', 'Q5_0', 'Q8_0', 'Q4_K', 'Q5_K', 'Q6_K'];
const time = (table) => {
  k.run(table, 1);
  let best = Infinity;
  const start = performance.now();
  while (performance.now() - start < ms) {
    const t = performance.now();
    k.run(table, 4);
    best = Math.min(best, (performance.now() - t) / 4);
  }
  return best;
};
const compared = k.check();
if (!compared) throw new Error('the SIMD128 kernels differ from the scalar ones');
console.log(`V8 ${process.versions.v8}; SIMD128 equal to scalar on ${compared} random results; one thread, best of ${ms} ms per case`);
console.log('| format | rows x cols | scalar ns/block | simd128 ns/block | ratio |');
console.log('|---|---|---|---|---|');
for (const [i, f] of formats.entries()) {
  for (const [rows, cols] of [[1536, 576], [576, 1536], [49152, 576]]) {
    const block = f.endsWith('_K') ? 256 : 32;
    if (cols % block) continue;
    if (k.setup(i, rows, cols) !== 0) throw new Error(`setup ${f}`);
    const blocks = rows * cols / block;
    const [s, b] = [time(0), time(1)];
    console.log(`| ${f} | ${rows}x${cols} | ${(s * 1e6 / blocks).toFixed(1)} | ${(b * 1e6 / blocks).toFixed(1)} | ${(s / b).toFixed(2)} |`);
  }
}

const model = process.env.TABNODE_MODEL;
if (model) {
  const steps = Number(process.argv[3] ?? 32);
  const prompt = Number(process.argv[4] ?? 5);
  const file = readFileSync(model);
  const at = k.model_buffer(file.length);
  new Uint8Array(exports.memory.buffer, at, file.length).set(file);
  if (k.model_load() !== 0) throw new Error(`cannot load ${model}`);
  k.model_steps(5, 2); // warm-up
  const timed = (n) => {
    const t = performance.now();
    if (k.model_steps(prompt, n) === 0xffffffff) throw new Error('model step failed');
    return performance.now() - t;
  };
  const prefill = timed(0);
  const decode = (timed(steps) - prefill) / steps;
  console.log(`the tab's CPU engine in V8: prefill ${prompt} tokens ${prefill.toFixed(1)} ms = ${(prompt * 1000 / prefill).toFixed(1)} tokens/s, decode ${decode.toFixed(2)} ms/token = ${(1000 / decode).toFixed(1)} tokens/s (${steps} steps)`);
}
