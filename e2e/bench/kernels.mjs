// WGSL matmul kernels in headless Chromium (WebGPU on SwiftShader): the
// prover's register-blocked kernel (4x8; 4x4 shown too) against two plain
// WGSL references, in one
// run. Rates include upload and readback, as a prover pays them.
// Run by scripts/bench.sh: node e2e/bench/kernels.mjs [SIZES] [REPS]
import { startRelay, launchBrowser, openTab, waitFor } from '../harness.mjs';

const sizes = (process.argv[2] ?? '128,256,512').split(',').map(Number);
const reps = Number(process.argv[3] ?? 3);

const relay = await startRelay();
const browser = await launchBrowser();
try {
  const { page } = await openTab(browser, relay.url);
  await page.waitForFunction(() => window.tabnode.gpu, null, { timeout: 30_000 });
  console.log(`chromium ${browser.version()} headless, adapter ${JSON.stringify(await page.evaluate(() => [window.tabnode.gpu.vendor, window.tabnode.gpu.architecture]))}`);
  console.log('| n | blocked-4x4 GFLOP/s | blocked-4x8 GFLOP/s | naive GFLOP/s | tiled-16 GFLOP/s | ratio best blocked / best reference |');
  console.log('|---|---|---|---|---|---|');
  for (const n of sizes) {
    await page.evaluate(({ n, reps }) => window.tabnode.node.benchKernels(n, reps), { n, reps });
    const ev = await waitFor(`bench n=${n}`, () => page.evaluate(
      (n) => window.tabnode.events.find((e) => e.type === 'bench' && e.n === n), n), 600_000, 200);
    const by = Object.fromEntries(ev.results.map((r) => [r.kernel, r]));
    if (!ev.results.every((r) => r.exact)) throw new Error(`inexact kernel at n=${n}: ${JSON.stringify(ev.results)}`);
    const best = Math.max(by.naive.gflops, by['tiled-16'].gflops);
    const blocked = Math.max(by['blocked-4x4'].gflops, by['blocked-4x8'].gflops);
    console.log(`| ${n} | ${by['blocked-4x4'].gflops.toFixed(3)} | ${by['blocked-4x8'].gflops.toFixed(3)} | ${by.naive.gflops.toFixed(3)} | ${by['tiled-16'].gflops.toFixed(3)} | ${(blocked / best).toFixed(2)} |`);
  }
} finally {
  await browser.close();
  await relay.kill();
}
