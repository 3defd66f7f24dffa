// The model in a real tab: download with progress into the browser's cache,
// the backend choice (the CPU kernels in wasm SIMD128, since WebGPU here is
// SwiftShader, a software adapter), greedy tokens equal to the native
// engine's bit for bit, cancellation and bad requests, a reload that loads
// from the cache without downloading, and WebGPU when asked for.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import {
  useNetwork, openTab, waitFor, BIN, MODELS_DIR, MODEL_FILE,
} from './harness.mjs';

const MODEL = join(MODELS_DIR, MODEL_FILE);
const PROMPT = 'The three primary colors are';
const TOKENS = 8;
// Forced onto WebGPU, SwiftShader runs the f32 model on the CPU: loading
// and each token take seconds.
const LOAD_TIMEOUT = 10 * 60_000;

let context;
let page;
const modelRequests = [];

async function waitForModel(p) {
  try {
    await p.waitForFunction(() => ['ready', 'failed'].includes(window.tabnode?.model?.status), null, { timeout: LOAD_TIMEOUT });
  } catch (e) {
    throw new Error(`the model never loaded: ${e.message}\n${p.logs.slice(-30).join('\n')}`);
  }
  const m = await p.evaluate(() => window.tabnode.model);
  assert.equal(m.status, 'ready', `model failed: ${m.error}\n${p.logs.slice(-30).join('\n')}`);
  return m.ready;
}

/** Runs a generation in the tab; resolves to { result, streamed } or { error }. */
function generateInTab(p, request, cancelAfterTokens = null) {
  return p.evaluate(async ({ request, cancelAfterTokens }) => {
    let streamed = '';
    let pieces = 0;
    try {
      const g = window.tabnode.node.generate(request, (t) => {
        streamed += t;
        pieces += 1;
        if (cancelAfterTokens !== null && pieces === cancelAfterTokens) g.cancel();
      });
      const result = await g.done;
      return { result, streamed };
    } catch (e) {
      return { error: String(e.message ?? e) };
    }
  }, { request, cancelAfterTokens });
}

const net = useNetwork({
  setUp: async (net) => {
    context = await net.browser.newContext();
    context.on('request', (r) => {
      if (r.url().includes('/models/')) modelRequests.push(r.url());
    });
    ({ page } = await openTab(net.browser, net.relay.url, context, { model: true }));
  },
});

test('the worker downloads the model with progress, caches it and runs it on the CPU kernels', async () => {
  const ready = await waitForModel(page);
  const size = statSync(MODEL).size;
  assert.equal(ready.from_cache, false);
  assert.equal(ready.downloaded_bytes, size);
  // The worker timed both engines (SwiftShader is a software adapter: the
  // WebGPU one runs its barrier-free kernels there) and kept the CPU one,
  // with the SIMD128 kernels (checked against the scalar ones on load).
  const engine = ready.engine;
  console.log(`tab engine: ${JSON.stringify(engine)}`);
  assert.equal(engine.backend, 'cpu');
  assert.equal(engine.device, 'cpu-quantized-simd128');
  assert.match(engine.reason, /faster on this machine: cpu [\d.]+ ms\/token, webgpu [\d.]+ ms\/token \(.*, a software adapter\)/);
  assert.deepEqual(engine.timings.map((t) => t.backend).sort(), ['cpu', 'webgpu']);
  const ms = Object.fromEntries(engine.timings.map((t) => [t.backend, t.ms_per_token]));
  assert.ok(ms.cpu > 0 && ms.cpu < ms.webgpu, JSON.stringify(ms));
  // The relay serves the site cross-origin isolated, so the worker splits
  // the model's rows over one worker per core (up to 8).
  const { isolated, cores } = await page.evaluate(() => ({ isolated: crossOriginIsolated, cores: navigator.hardwareConcurrency }));
  assert.equal(isolated, true);
  assert.equal(engine.threads, Math.min(cores, 8));
  if (cores > 1) assert.match(engine.reason, new RegExp(`rows split over ${engine.threads} workers`));
  assert.equal(ready.model.file_bytes, size);
  assert.equal(ready.model.architecture, 'llama');
  assert.equal(ready.model.quantization, 'Q4_1');
  assert.equal(ready.model.layers, 30);
  assert.equal(ready.model.context, 8192);
  assert.ok(ready.model.parameters > 130e6 && ready.model.parameters < 140e6, String(ready.model.parameters));
  assert.equal(modelRequests.length, 1, modelRequests.join('\n'));
  const progress = await page.evaluate(() => window.tabnode.events.filter((e) => e.type === 'model_progress'));
  const downloads = progress.filter((e) => e.phase === 'download');
  assert.ok(downloads.length >= 10, `download progress events: ${downloads.length}`);
  for (let i = 1; i < downloads.length; i++) assert.ok(downloads[i].done >= downloads[i - 1].done);
  assert.equal(downloads.at(-1).done, size);
  assert.ok(progress.some((e) => e.phase === 'load' && e.done === e.total), 'load progress reaches the end');
  // The node advertises the model, and where it runs it, to the network.
  const name = ready.model.name;
  const peerId = await page.evaluate(() => window.tabnode.peerId);
  await waitFor('the relay to list the model', async () => {
    const listing = await net.relay.network();
    return listing.nodes.find((n) => n.peer_id === peerId)?.capabilities?.models?.includes(name);
  });
  const listing = await net.relay.network();
  assert.deepEqual(listing.nodes.find((n) => n.peer_id === peerId).capabilities.engine, engine);
});

/** The native engine's greedy answer on `device` (cpu: the quantized one). */
function nativeGenerate(device, tokens, extra = []) {
  return JSON.parse(execFileSync(join(BIN, 'tabnode-node'), [
    'generate', '--model', MODEL, '--prompt', PROMPT, '--max-tokens', String(tokens), '--json', '--device', device, ...extra,
  ], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }));
}

test(`greedy tokens on the tab's CPU kernels equal the native ones bit for bit (${TOKENS} tokens)`, async () => {
  const native = nativeGenerate('cpu', TOKENS);
  assert.equal(native.tokens.length, TOKENS);
  assert.match(native.device, /^cpu-quantized-/);
  const web = await generateInTab(page, { prompt: { text: PROMPT }, max_tokens: TOKENS });
  assert.ok(!web.error, web.error);
  console.log(`tab ${web.result.device}: prefill ${web.result.prompt_tokens} tokens ${web.result.prefill_ms.toFixed(0)} ms, ` +
    `decode ${((TOKENS - 1) / (web.result.decode_ms / 1000)).toFixed(2)} tokens/s; ` +
    `native ${native.device}: ${((TOKENS - 1) / (native.decode_ms / 1000)).toFixed(1)} tokens/s`);
  assert.equal(web.result.device, 'cpu-quantized-simd128');
  assert.equal(web.result.prompt_tokens, native.prompt_tokens);
  assert.deepEqual(web.result.tokens, native.tokens, `webgpu ${JSON.stringify(web.result.text)} vs native ${JSON.stringify(native.text)}`);
  assert.equal(web.result.text, native.text);
  assert.equal(web.streamed, web.result.text, 'the streamed text is the result');
  assert.equal(web.result.finish, 'length');
});

// One worker (no split), and three (two shard workers: more than the cores
// here, so rounds wait on each other), with the same tokens.
for (const threads of [1, 3]) {
  test(`?threads=${threads} computes in ${threads} worker(s), with the same tokens`, async () => {
    const native = nativeGenerate('cpu', TOKENS);
    const { page: tab } = await openTab(net.browser, net.relay.url, context, { model: true, threads });
    try {
      const ready = await waitForModel(tab);
      assert.equal(ready.engine.threads, threads, `engine: ${JSON.stringify(ready.engine)}`);
      if (threads === 1) assert.doesNotMatch(ready.engine.reason, /split/);
      else assert.match(ready.engine.reason, new RegExp(`rows split over ${threads} workers`));
      const web = await generateInTab(tab, { prompt: { text: PROMPT }, max_tokens: TOKENS });
      assert.ok(!web.error, web.error);
      assert.deepEqual(web.result.tokens, native.tokens);
    } finally {
      await tab.close();
    }
  });
}

test('cancellation and bad requests are clear, and the worker stays usable', async () => {
  const cancelled = await generateInTab(page, { prompt: { text: PROMPT }, max_tokens: 64 }, 1);
  assert.ok(!cancelled.error, cancelled.error);
  assert.equal(cancelled.result.finish, 'cancelled');
  assert.ok(cancelled.result.tokens.length < 8, `stopped after ${cancelled.result.tokens.length} tokens`);

  const empty = await generateInTab(page, { prompt: { text: '' } });
  assert.match(empty.error ?? '', /prompt is empty/);
  const long = await generateInTab(page, { prompt: { text: 'hello '.repeat(9000) } });
  assert.match(long.error ?? '', /context holds 8192/);
  const bad = await generateInTab(page, { max_tokens: 4 });
  assert.match(bad.error ?? '', /generate request/);
  const badTemp = await generateInTab(page, { prompt: { text: 'hi' }, temperature: -1 });
  assert.match(badTemp.error ?? '', /temperature/);

  const after = await generateInTab(page, { prompt: { chat: [{ role: 'user', content: 'Hi' }] }, max_tokens: 2 });
  assert.ok(!after.error, after.error);
  assert.equal(after.result.tokens.length, 2);
});

test('a reload loads the model from the browser cache without downloading', async () => {
  modelRequests.length = 0;
  await page.reload();
  const ready = await waitForModel(page);
  assert.equal(ready.from_cache, true);
  assert.equal(ready.downloaded_bytes, 0);
  assert.equal(modelRequests.length, 0, `model requests after reload: ${modelRequests.join('\n')}`);
  const progress = await page.evaluate(() => window.tabnode.events.filter((e) => e.type === 'model_progress'));
  assert.ok(!progress.some((e) => e.phase === 'download'), 'no download phase');
  assert.ok(progress.some((e) => e.phase === 'cache'), 'read from the cache');
});

test('a backend other than cpu or webgpu is refused with a clear error', async () => {
  const message = await page.evaluate(() => window.tabnode.node.loadModel('/models/none.gguf', 'tpu').then(() => null, (e) => e.message));
  assert.match(message ?? '', /unknown backend "tpu": expected cpu or webgpu/);
  const kernels = await page.evaluate(() => window.tabnode.node.loadModel('/models/none.gguf', 'webgpu', undefined, 'sideways').then(() => null, (e) => e.message));
  assert.match(kernels ?? '', /unknown WebGPU kernels "sideways": expected rows or lanes/);
  // The loaded model is untouched.
  const after = await generateInTab(page, { prompt: { text: PROMPT }, max_tokens: 1 });
  assert.ok(!after.error, after.error);
  assert.equal(after.result.device, 'cpu-quantized-simd128');
});

test('?backend=webgpu runs the quantized WebGPU kernels, with the f32 reference engine\'s tokens', async () => {
  const few = 16;
  const { page: gpuPage } = await openTab(net.browser, net.relay.url, context, { model: true, backend: 'webgpu' });
  try {
    const ready = await waitForModel(gpuPage);
    console.log(`webgpu engine: ${JSON.stringify(ready.engine)}`);
    assert.equal(ready.from_cache, true);
    assert.equal(ready.engine.backend, 'webgpu');
    assert.equal(ready.engine.device, 'webgpu-quantized-rows');
    assert.match(ready.engine.reason, /asked for \(backend=webgpu\)/);
    assert.equal(ready.engine.timings[0].backend, 'webgpu');
    const web = await generateInTab(gpuPage, { prompt: { text: PROMPT }, max_tokens: few });
    assert.ok(!web.error, web.error);
    assert.equal(web.result.device, 'webgpu-quantized-rows');
    console.log(`tab webgpu-quantized-rows: prefill ${web.result.prompt_tokens} tokens ${web.result.prefill_ms.toFixed(0)} ms, ` +
      `decode ${((few - 1) / (web.result.decode_ms / 1000)).toFixed(2)} tokens/s`);
    // The f32 reference (burn on the CPU) and the same kernels natively
    // (lavapipe): the same tokens.
    const flex = nativeGenerate('flex', few);
    assert.deepEqual(web.result.tokens, flex.tokens, `webgpu ${JSON.stringify(web.result.text)} vs flex ${JSON.stringify(flex.text)}`);
    const native = nativeGenerate('gpu', few);
    assert.equal(native.device, 'gpu-quantized-rows');
    assert.deepEqual(web.result.tokens, native.tokens);
    // Sampled: the tab's GPU ranks the candidates (a few KB read back, the
    // tail from the logits); the same seed draws the reference's tokens.
    const sampling = { temperature: 0.9, top_p: 0.95, seed: 5 };
    const drawn = await generateInTab(gpuPage, { prompt: { text: PROMPT }, max_tokens: 6, ...sampling });
    assert.ok(!drawn.error, drawn.error);
    const want = nativeGenerate('flex', 6, ['--temperature', '0.9', '--top-p', '0.95', '--seed', '5']);
    assert.deepEqual(drawn.result.tokens, want.tokens, `${JSON.stringify(drawn.result.text)} vs ${JSON.stringify(want.text)}`);
  } finally {
    await gpuPage.close();
  }
});
