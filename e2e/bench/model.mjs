// The model in headless Chromium against the native engine on the same
// machine, in one run: the backend the tab's worker chose (and why, and
// over how many workers), its prefill and decode tokens/s against the
// native quantized engine (all cores), the tab on one worker against
// native on one thread, WebGPU forced with each kernel variant (SwiftShader
// here: a few tokens; the time to the first token of a first visit, shaders
// compiled, and of a second visit, the model and whatever the browser
// cached kept), whether the greedy tokens agree, and the worker's wasm size
// raw and gzipped.
// Run by scripts/bench.sh: node e2e/bench/model.mjs [DECODE_TOKENS] [WEBGPU_TOKENS] [MODEL_FILE]
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { startRelay, launchBrowser, openTab, BIN, MODELS_DIR, MODEL_FILE, ROOT } from '../harness.mjs';

const tokens = Number(process.argv[2] ?? 32);
const webgpuTokens = Number(process.argv[3] ?? 3);
const prompt = 'The three primary colors are';
// A file of the models directory (the tab picks it with ?model=).
const file = process.argv[4] ?? MODEL_FILE;
const model = join(MODELS_DIR, file);

const rate = (r) => ({ prefill: r.prompt_tokens / (r.prefill_ms / 1000), decode: (r.tokens.length - 1) / (r.decode_ms / 1000) });

function native(device, n, env = {}) {
  return JSON.parse(execFileSync(join(BIN, 'tabnode-node'), ['generate', '--model', model, '--prompt', prompt, '--max-tokens', String(n), '--json', '--device', device], {
    encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env },
  }));
}

async function tab(browser, relay, backend, n, threads = null, kernels = null, context = undefined) {
  const { page } = await openTab(browser, relay.url, context, { model: file, backend, threads, kernels });
  await page.waitForFunction(() => ['ready', 'failed'].includes(window.tabnode.model.status), null, { timeout: 900_000 });
  const ready = await page.evaluate(() => window.tabnode.model.ready);
  const cores = await page.evaluate(() => navigator.hardwareConcurrency);
  if (!ready) throw new Error(await page.evaluate(() => window.tabnode.model.error));
  const gen = () => page.evaluate(async ({ prompt, n }) => window.tabnode.node.generate({ prompt: { text: prompt }, max_tokens: n }).done, { prompt, n });
  const first = await gen(); // warm-up (WebGPU compiles its shaders)
  const result = n > 1 ? await gen() : first;
  await page.close();
  return { ready, cores, first, result, context: page.context() };
}

const wasm = readFileSync(join(ROOT, 'pkg', 'tabnode_worker_bg.wasm'));
const relay = await startRelay();
const browser = await launchBrowser();
try {
  const chosen = await tab(browser, relay, null, tokens);
  const single = await tab(browser, relay, null, tokens, 1);
  const nAll = native('cpu', tokens);
  const nOne = native('cpu', tokens, { RAYON_NUM_THREADS: '1' });
  // WEBGPU_TOKENS=0 leaves the forced-WebGPU tabs out (minutes on
  // SwiftShader). Each variant: a first visit (a new browser profile), then
  // a second one in the same profile.
  const webgpu = {};
  for (const kernels of webgpuTokens > 0 ? ['rows', 'lanes'] : []) {
    const first = await tab(browser, relay, 'webgpu', webgpuTokens, null, kernels);
    const again = await tab(browser, relay, 'webgpu', webgpuTokens, null, kernels, first.context);
    webgpu[kernels] = { first, again };
  }
  const gpu = webgpu.rows?.first ?? null;
  const c = rate(chosen.result);
  const s1 = rate(single.result);
  const g = gpu ? rate(gpu.result) : { prefill: NaN, decode: NaN };
  const a = rate(nAll);
  const o = rate(nOne);
  console.log(`${file}; chromium ${browser.version()} headless; prompt ${chosen.result.prompt_tokens} tokens, ${tokens} generated (${webgpuTokens} on WebGPU)`);
  console.log(`worker wasm: ${wasm.length} bytes, ${gzipSync(wasm, { level: 9 }).length} gzipped`);
  const workers = chosen.ready.engine.threads;
  console.log(`the worker chose ${chosen.ready.engine.device} on ${workers} worker(s) (navigator.hardwareConcurrency ${chosen.cores}): ${chosen.ready.engine.reason}; load ${(chosen.ready.load_ms / 1000).toFixed(1)} s (timing included)`);
  for (const [kernels, { first, again }] of Object.entries(webgpu)) {
    // To the first token: the model loaded (from the relay, or the cache on
    // a second visit; uploaded; every pipeline compiled and one step run to
    // check the device; two steps timed for the report), then the first
    // generation's prompt.
    const ttft = (t) => ((t.ready.load_ms + t.first.prefill_ms) / 1000).toFixed(2);
    const r = rate(first.result);
    console.log(`WebGPU ${first.result.device}: prefill ${r.prefill.toFixed(2)} tokens/s, decode ${r.decode.toFixed(2)} tokens/s; first token ${ttft(first)} s on a first visit (load ${(first.ready.load_ms / 1000).toFixed(2)} s, downloaded ${first.ready.downloaded_bytes} bytes), ${ttft(again)} s on a second (load ${(again.ready.load_ms / 1000).toFixed(2)} s, from cache ${again.ready.from_cache}); tokens equal native: ${JSON.stringify(first.result.tokens) === JSON.stringify(nAll.tokens.slice(0, first.result.tokens.length))}`);
  }
  console.log(`| | tab ${chosen.result.device} (${workers} workers) | tab, 1 worker (threads=1) | tab webgpu (forced) | native ${nAll.device} (all cores) | native, 1 thread | tab chosen / native all | tab 1 worker / native 1 thread |`);
  console.log('|---|---|---|---|---|---|---|---|');
  const row = (k) => `| ${k} tokens/s | ${c[k].toFixed(2)} | ${s1[k].toFixed(2)} | ${g[k].toFixed(3)} | ${a[k].toFixed(1)} | ${o[k].toFixed(1)} | ${(c[k] / a[k]).toFixed(2)} | ${(s1[k] / o[k]).toFixed(2)} |`;
  console.log(row('prefill'));
  console.log(row('decode'));
  const same = (r) => JSON.stringify(r.tokens) === JSON.stringify(nAll.tokens);
  console.log(`greedy tokens of the tab's CPU engine identical to the native engine's: ${same(chosen.result)} (${workers} workers), ${same(single.result)} (1 worker) (${JSON.stringify(chosen.result.text)})`);
} finally {
  await browser.close();
  await relay.kill();
}
