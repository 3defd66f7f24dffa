// The model in headless Chromium (burn on WebGPU, SwiftShader here) against
// the native engine (burn flex) on the same machine, in one run: load time,
// prefill and decode tokens/s, and whether the greedy tokens agree.
// Run by scripts/bench.sh: node e2e/bench/model.mjs [DECODE_TOKENS]
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { startRelay, launchBrowser, openTab, BIN, MODELS_DIR, MODEL_FILE } from '../harness.mjs';

const tokens = Number(process.argv[2] ?? 8);
const prompt = 'The three primary colors are';
const model = join(MODELS_DIR, MODEL_FILE);

const relay = await startRelay();
const browser = await launchBrowser();
try {
  const { page } = await openTab(browser, relay.url, undefined, { model: true });
  await page.waitForFunction(() => ['ready', 'failed'].includes(window.tabnode.model.status), null, { timeout: 600_000 });
  const ready = await page.evaluate(() => window.tabnode.model.ready);
  if (!ready) throw new Error(await page.evaluate(() => window.tabnode.model.error));
  const gen = () => page.evaluate(async ({ prompt, tokens }) => window.tabnode.node.generate({ prompt: { text: prompt }, max_tokens: tokens }).done, { prompt, tokens });
  const first = await gen(); // compiles the shaders
  const web = await gen();
  const t0 = Date.now();
  const native = JSON.parse(execFileSync(join(BIN, 'tabnode-node'), ['generate', '--model', model, '--prompt', prompt, '--max-tokens', String(tokens), '--json'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }));
  const nativeWall = (Date.now() - t0) / 1000;
  const rate = (r) => ({ prefill: r.prompt_tokens / (r.prefill_ms / 1000), decode: (r.tokens.length - 1) / (r.decode_ms / 1000) });
  const w = rate(web);
  const n = rate(native);
  console.log(`chromium ${browser.version()} headless (SwiftShader); prompt ${web.prompt_tokens} tokens, ${tokens} generated`);
  console.log(`load in the tab (download + dequantize + upload): ${(ready.load_ms / 1000).toFixed(1)} s; native CLI wall time incl. load: ${nativeWall.toFixed(1)} s`);
  console.log(`first generation in the tab (shader compilation included): prefill ${(first.prefill_ms / 1000).toFixed(1)} s, decode ${(first.decode_ms / 1000).toFixed(1)} s`);
  console.log('| | Chromium WebGPU (SwiftShader) | native flex | ratio |');
  console.log('|---|---|---|---|');
  console.log(`| prefill tokens/s | ${w.prefill.toFixed(3)} | ${n.prefill.toFixed(1)} | ${(w.prefill / n.prefill).toFixed(4)} |`);
  console.log(`| decode tokens/s | ${w.decode.toFixed(3)} | ${n.decode.toFixed(1)} | ${(w.decode / n.decode).toFixed(4)} |`);
  console.log(`greedy tokens identical: ${JSON.stringify(web.tokens) === JSON.stringify(native.tokens)} (${JSON.stringify(web.text)})`);
} finally {
  await browser.close();
  await relay.kill();
}
