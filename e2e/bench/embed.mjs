// Embeddings in a tab against the native encoder on the same machine, in
// one run: a tab serving all-MiniLM-L6-v2 on its CPU (its worker: one
// thread, wasm SIMD128), then one on WebGPU (the WGSL encoder; SwiftShader
// in headless Chromium without a GPU), each alone on a relay, answers POST
// /v1/embeddings for the same texts as scripts/bench/embed.py's (6 to 60
// words); their rates (texts/s, the worker's compute time: the sum of its
// batches' `handled` times) against the native encoder (embed_bench: the
// same code, AVX2) on one thread and on all cores, and the rate a
// requester sees through the relay.
// Run by scripts/bench.sh: node e2e/bench/embed.mjs [TEXTS] [ROUNDS]
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRelay, launchBrowser, openTab, BIN, MODELS_DIR } from '../harness.mjs';

const count = Number(process.argv[2] ?? 256);
const rounds = Number(process.argv[3] ?? 2);
const ID = 'all-minilm-l6-v2';
const WORDS = ('network browser tab node model vector query relay token proof compute volunteer '
  + 'peer inference embedding search document answer question fast private open '
  + 'the a of to in and is on for with that by from').split(' ');

/** scripts/bench/embed.py's texts: deterministic sentences of 6 to 60 words. */
function texts(n) {
  const out = [];
  let x = 12345n;
  for (let i = 0; i < n; i++) {
    const words = [];
    for (let k = 0; k < 6 + ((i * 7) % 55); k++) {
      x = (x * 1103515245n + 12345n) % 2n ** 31n;
      words.push(WORDS[Number(x % BigInt(WORDS.length))]);
    }
    const s = words.join(' ');
    out.push(`${s[0].toUpperCase()}${s.slice(1)}.`);
  }
  return out;
}

function native(file, threads) {
  const env = { ...process.env, ...(threads ? { RAYON_NUM_THREADS: String(threads) } : {}) };
  return JSON.parse(execFileSync(join(BIN, 'examples', 'embed_bench'), [join(MODELS_DIR, ID), file, String(rounds)], { encoding: 'utf8', env }).trim().split('\n').pop());
}

const items = texts(count);
const file = join(mkdtempSync(join(tmpdir(), 'tabnode-embed-')), 'texts.json');
writeFileSync(file, JSON.stringify(items));
/** The best of `rounds` (after a warm-up) of a tab embedding on `backend`, alone on its own relay. */
async function tab(browser, backend) {
  const relay = await startRelay();
  try {
    const { page } = await openTab(browser, relay.url, null, { embed: backend });
    await page.waitForFunction(() => ['ready', 'failed'].includes(window.tabnode.embedder.status), null, { timeout: 600_000 });
    const loaded = await page.evaluate(() => window.tabnode.embedder);
    if (loaded.status !== 'ready') throw new Error(loaded.error);
    if (loaded.ready.backend !== backend) throw new Error(`on ${loaded.ready.backend}, not ${backend}`);
    const peer = await page.evaluate(() => window.tabnode.peerId);
    for (;;) {
      const list = await (await fetch(`${relay.url}/v1/models`)).json();
      if ((list.data?.find((m) => m.id === ID)?.tabnode?.nodes ?? 0) >= 1) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    let best = null;
    let tokens = 0;
    // A warm-up round (V8 tiers the kernels up, the GPU compiles its
    // pipelines), then the best of `rounds`.
    for (let round = 0; round <= rounds; round++) {
      const before = await page.evaluate(() => window.tabnode.embedder.ms);
      const t0 = performance.now();
      const res = await fetch(`${relay.url}/v1/embeddings`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: ID, input: items }),
      });
      const body = await res.json();
      const wall = performance.now() - t0;
      if (res.status !== 200) throw new Error(JSON.stringify(body));
      if (body.tabnode.nodes.join() !== peer) throw new Error(`served by ${body.tabnode.nodes}`);
      tokens = body.usage.prompt_tokens;
      const worker = (await page.evaluate(() => window.tabnode.embedder.ms)) - before;
      if (round > 0 && (!best || worker < best.worker)) best = { worker, wall };
    }
    const gpu = await page.evaluate(() => window.tabnode.gpu);
    await page.context().close();
    return {
      texts_per_s: count / (best.worker / 1000),
      tokens_per_s: tokens / (best.worker / 1000),
      tokens,
      load_ms: loaded.ready.load_ms,
      through_relay_texts_per_s: count / (best.wall / 1000),
      ...(backend === 'webgpu' ? { adapter: [gpu?.vendor, gpu?.architecture, gpu?.description].filter(Boolean).join(' / ') } : {}),
    };
  } finally {
    await relay.kill();
  }
}

const browser = await launchBrowser();
try {
  const cpu = await tab(browser, 'cpu');
  const webgpu = await tab(browser, 'webgpu');
  const one = native(file, 1);
  const all = native(file, null);
  console.log(JSON.stringify({
    texts: count,
    tokens: cpu.tokens,
    tab_cpu: cpu,
    tab_webgpu: { ...webgpu, ratio_to_tab_cpu: webgpu.texts_per_s / cpu.texts_per_s },
    native_one_thread: { texts_per_s: one.texts_per_s, ratio: cpu.texts_per_s / one.texts_per_s },
    native_all_cores: { texts_per_s: all.texts_per_s, threads: all.threads, ratio: cpu.texts_per_s / all.texts_per_s },
  }, null, 1));
} finally {
  await browser.close();
}
