// Spot checks of a tab's WebGPU tokens (issue #16): a relay that checks
// every request (`--check-rate 1`), two native nodes on the CPU engine (the
// checkers) and a tab serving the model on WebGPU (Chromium's SwiftShader
// here). Rounds of three requests at once, greedy and sampled, give the tab
// its share; every check of the tab's completions is run by a native node
// and passes, and no node is struck.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  useNetwork, startNode, openTab, waitFor,
} from './harness.mjs';

const MODEL = 'smollm2-135m-instruct';
/** Tab completions checked before the test ends. */
const TAB_CHECKS = 16;

const nodes = [];

const net = useNetwork({
  relay: { args: ['--check-rate', '1', '--check-new-node-rate', '1', '--check-same-address'] },
});

async function checks() {
  return (await fetch(`${net.relay.url}/api/checks?limit=1000`)).json();
}

async function complete(i) {
  const sampled = Math.floor(i / 3) % 2 === 1;
  const body = {
    model: MODEL,
    prompt: ['The capital of France is', 'Once upon a time', 'Water boils at', 'Three colours:'][i % 4],
    max_tokens: 4,
    temperature: sampled ? 0.8 : 0,
    ...(sampled ? { top_p: 0.95, seed: i } : {}),
  };
  const r = await fetch(`${net.relay.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  assert.equal(r.status, 200, await r.text());
}

test('a tab\'s WebGPU completions pass the CPU checkers, and nobody is struck', { timeout: 600_000 }, async () => {
  nodes.push(net.own(await startNode(net.relay, { serve: true })), net.own(await startNode(net.relay, { serve: true })));
  const { page, context } = await openTab(net.browser, net.relay.url, null, { model: true, backend: 'webgpu' });
  const tab = await page.evaluate(() => window.tabnode.peerId);
  await waitFor('three nodes serving the model', async () => {
    const body = await (await fetch(`${net.relay.url}/v1/models`)).json();
    return body.data?.find((m) => m.id === MODEL)?.tabnode?.nodes === 3;
  }, 300_000, 500);
  const listing = await net.relay.network();
  assert.equal(listing.nodes.find((n) => n.peer_id === tab)?.capabilities?.engine?.backend, 'webgpu', JSON.stringify(listing));

  let sent = 0;
  const onTab = (c) => c.checks.filter((r) => r.served_by === tab);
  for (;;) {
    assert.ok(sent < 90, `the tab served too few checked requests: ${JSON.stringify(await checks())}`);
    await Promise.all([0, 1, 2].map((k) => complete(sent + k)));
    sent += 3;
    // Every request of the round checked before the next.
    const c = await waitFor(`checks of ${sent} requests`, async () => {
      const c = await checks();
      return c.checks.length >= sent ? c : null;
    }, 120_000, 100);
    if (onTab(c).length >= TAB_CHECKS) break;
  }
  const c = await checks();
  const natives = nodes.map((n) => n.peerId);
  const bad = c.checks.filter((r) => r.outcome !== 'passed');
  assert.deepEqual(bad, [], 'every honest completion passes');
  for (const r of onTab(c)) assert.ok(natives.includes(r.checker), JSON.stringify(r));
  for (const peer of [tab, ...natives]) {
    assert.equal(c.nodes[peer]?.failed ?? 0, 0, `${peer} struck: ${JSON.stringify(c.nodes[peer])}`);
  }
  // The tab's margins on live traffic, as the relay recorded them.
  const tabGreedy = onTab(c).filter((r) => typeof r.closeness?.greedy_gap === 'number');
  const tabSampled = onTab(c).filter((r) => typeof r.closeness?.smallest_tail === 'number');
  assert.ok(tabGreedy.length > 0 && tabSampled.length > 0, JSON.stringify(onTab(c)));
  const gap = Math.max(...tabGreedy.map((r) => r.closeness.greedy_gap));
  const notFirst = tabGreedy.reduce((n, r) => n + r.closeness.not_first, 0);
  const tail = Math.min(...tabSampled.map((r) => r.closeness.smallest_tail));
  assert.ok(gap <= 1, String(gap));
  console.log(`${c.checks.length} checked requests, ${onTab(c).length} served by the WebGPU tab, all passed; ` +
    `tab greedy tokens not the CPU checker's first choice: ${notFirst} of ${tabGreedy.reduce((n, r) => n + r.tokens, 0)}, largest gap ${gap.toFixed(4)} logits; ` +
    `smallest tail of a tab's sampled token ${tail.toExponential(3)}`);
  await context.close();
});
