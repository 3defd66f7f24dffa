// Round-trip latency from a tab, on loopback: tab -> relay (direct, the
// reference), tab -> relay circuit -> tab, tab -> relay circuit -> native
// node. Also 1 MiB round trips. Run by scripts/bench.sh.
import { startRelay, startNode, launchBrowser, openTab, echoFromTab } from '../harness.mjs';

const rounds = Number(process.argv[2] ?? 300);
const size = Number(process.argv[3] ?? 64);

async function series(page, peer, n, bytes) {
  for (let i = 0; i < 10; i++) await echoFromTab(page, peer, bytes); // warm-up
  return page.evaluate(async ({ peer, n, bytes }) => {
    const data = new Uint8Array(bytes).fill(0xa5);
    const ms = [];
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      const back = await window.tabnode.node.echo(peer, data);
      ms.push(performance.now() - t0);
      if (back.length !== bytes) throw new Error('short echo');
    }
    return ms.sort((a, b) => a - b);
  }, { peer, n, bytes });
}

const pct = (s, p) => s[Math.min(s.length - 1, Math.round((s.length - 1) * p))];
const fmt = (s) => `p50 ${pct(s, 0.5).toFixed(2)} ms  p99 ${pct(s, 0.99).toFixed(2)} ms`;

const relay = await startRelay();
const node = await startNode(relay);
const browser = await launchBrowser();
try {
  const a = await openTab(browser, relay.url);
  const b = await openTab(browser, relay.url);
  const idB = await b.page.evaluate(() => window.tabnode.peerId);
  const direct = await series(a.page, null, rounds, size);
  const tabTab = await series(a.page, idB, rounds, size);
  const tabNative = await series(a.page, node.peerId, rounds, size);
  const big = await series(a.page, idB, 10, 1 << 20);
  console.log(`rounds=${rounds} payload=${size}B (chromium ${browser.version()}, headless)`);
  console.log(`reference tab->relay (direct webrtc-direct)  ${fmt(direct)}`);
  console.log(`tab->relay->tab (circuit)                    ${fmt(tabTab)}  ratio p50 ${(pct(tabTab, 0.5) / pct(direct, 0.5)).toFixed(2)}x`);
  console.log(`tab->relay->native node (circuit)            ${fmt(tabNative)}  ratio p50 ${(pct(tabNative, 0.5) / pct(direct, 0.5)).toFixed(2)}x`);
  console.log(`1 MiB tab->relay->tab round trip (10 runs)   ${fmt(big)}  = ${(2 / (pct(big, 0.5) / 1000)).toFixed(1)} MiB/s both ways`);
} finally {
  await browser.close();
  await node.kill();
  await relay.kill();
}
