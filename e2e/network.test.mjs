// The foundation end to end: real relay, real native node, real Chromium
// tabs with WebGPU, libp2p over WebRTC.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  useNetwork, startRelay, startNode, openTab, waitFor, waitForReachable, echoFromTab, probe,
} from './harness.mjs';

const MIB = 1 << 20;
let node;
let tabA;
let tabB;
let idA;
let idB;

const net = useNetwork({
  setUp: async (net) => {
    node = net.own(await startNode(net.relay));
    tabA = await openTab(net.browser, net.relay.url);
    tabB = await openTab(net.browser, net.relay.url);
    idA = await tabA.page.evaluate(() => window.tabnode.peerId);
    idB = await tabB.page.evaluate(() => window.tabnode.peerId);
  },
});

test('two tabs and the native node appear in /api/network with the tabs\' WebGPU adapters', async () => {
  assert.notEqual(idA, idB, 'each tab has its own identity');
  const listing = await waitFor('both tabs to register their GPU', async () => {
    const n = await net.relay.network();
    const tabs = n.nodes.filter((p) => p.kind === 'browser' && p.capabilities?.gpu);
    return tabs.length === 2 ? n : null;
  });
  const byId = Object.fromEntries(listing.nodes.map((p) => [p.peer_id, p]));
  for (const id of [idA, idB]) {
    const tab = byId[id];
    assert.ok(tab, `tab ${id} is listed`);
    assert.equal(tab.kind, 'browser');
    assert.equal(tab.transport, 'webrtc-direct');
    assert.equal(tab.reachable, true);
    const gpu = tab.capabilities.gpu;
    assert.equal(gpu.backend, 'BrowserWebGpu');
    assert.ok(gpu.limits.max_storage_buffer_binding_size >= 128 * MIB, JSON.stringify(gpu.limits));
    assert.ok(gpu.limits.max_compute_invocations_per_workgroup >= 256);
    assert.match(tab.capabilities.agent, /^tabnode-web\//);
  }
  const native = byId[node.peerId];
  assert.ok(native, 'the native node is listed');
  assert.equal(native.kind, 'native');
  assert.equal(native.transport, 'tcp');
});

test('the worker reports a WebGPU adapter to the page', async () => {
  const gpu = await tabA.page.evaluate(() => window.tabnode.gpu);
  assert.ok(gpu, 'gpu_ready arrived from the worker');
  assert.equal(gpu.backend, 'BrowserWebGpu');
  // SwiftShader here: a software adapter without shader-f16.
  assert.equal(typeof gpu.is_fallback, 'boolean');
  assert.ok(Array.isArray(gpu.features));
  assert.equal(await tabA.page.locator('#gpu-status').textContent().then((t) => t.startsWith('ready')), true);
});

test('a tab proves a Proof-of-FLOPS challenge on WebGPU and the relay records a pass', async () => {
  // The relay challenges every node when it registers.
  const listing = await waitFor('both tabs to pass a proof', async () => {
    const n = await net.relay.network();
    const tabs = n.nodes.filter((p) => [idA, idB].includes(p.peer_id) && p.pof.passed >= 1);
    return tabs.length === 2 ? n : null;
  }, 90_000);
  for (const id of [idA, idB]) {
    const { pof } = listing.nodes.find((p) => p.peer_id === id);
    assert.equal(pof.last.passed, true, JSON.stringify(pof.last));
    assert.equal(pof.failed, 0);
    assert.ok(pof.matmul_gflops > 0, JSON.stringify(pof));
    assert.equal(pof.valid, true);
    assert.ok(['cpu', 'software_gpu', 'gpu'].includes(pof.last.device_class), JSON.stringify(pof.last));
    assert.ok(pof.last.rtt_ms >= 0 && pof.last.deadline_ms > 0, JSON.stringify(pof.last));
    assert.ok(pof.last.n >= 256);
  }
  const history = await (await fetch(`${net.relay.url}/api/pof/${idA}`)).json();
  assert.equal(history.records[0].passed, true);
  assert.equal((await fetch(`${net.relay.url}/api/pof/not-a-peer`)).status, 400);
  // The worker did the work (on WebGPU), and the page shows the result.
  const handled = await tabA.page.evaluate(() => window.tabnode.events.filter((e) => e.type === 'handled'));
  assert.deepEqual(handled.slice(0, 2).map((e) => e.answer), ['pof_commit', 'pof_opening']);
  assert.equal(handled[0].device, 'webgpu', 'the matmul ran on WebGPU');
  await tabA.page.waitForFunction(() => /GFLOP\/s proven exact matmul/.test(document.getElementById('pof').textContent), null, { timeout: 10_000 });
});

test('a tab obeys commands only from its relay: challenges, openings and generations from another peer are refused', async () => {
  // 65536 is the size whose n*n wraps to 0 on wasm32.
  for (const spec of ['pof-challenge:8', 'pof-challenge:65536', 'pof-open', 'infer', 'infer-cancel']) {
    const answer = await probe(net.relay, idB, spec);
    assert.equal(answer.kind, 'error', `${spec}: ${JSON.stringify(answer)}`);
    assert.equal(answer.code, 'Forbidden', `${spec}: ${JSON.stringify(answer)}`);
    assert.match(answer.message, /only from this node's relay/);
  }
  // Messages meant for peers still work.
  assert.deepEqual(await probe(net.relay, idB, 'echo'), { kind: 'echo', bytes: 5 });
  // Nothing reached the worker or the serving code: every command the page
  // handed over came from the relay, and the worker did not panic.
  const requests = await tabB.page.evaluate(() => window.tabnode.events.filter((e) => e.type === 'request'));
  assert.ok(requests.length >= 2, 'the relay\'s own challenge was handled');
  assert.deepEqual([...new Set(requests.map((e) => e.peer))], [net.relay.peerId]);
  assert.deepEqual(tabB.page.logs.filter((l) => l.startsWith('pageerror') || /panicked/.test(l)), []);
  const { pof } = (await net.relay.network()).nodes.find((p) => p.peer_id === idB);
  assert.equal(pof.failed, 0);
});

test('tab to tab through the relay circuit, small and 1 MiB', async () => {
  const small = await echoFromTab(tabA.page, idB, 100);
  assert.deepEqual([small.same, small.length], [true, 100]);
  const big = await echoFromTab(tabA.page, idB, MIB);
  assert.deepEqual([big.same, big.length], [true, MIB]);
  const back = await echoFromTab(tabB.page, idA, MIB);
  assert.deepEqual([back.same, back.length], [true, MIB]);
});

test('1 MiB round trip tab -> native node -> tab, byte-exact', async () => {
  const r = await echoFromTab(tabA.page, node.peerId, MIB);
  assert.equal(r.length, MIB);
  assert.equal(r.same, true);
});

test('bad input to the node API gets a clear error', async () => {
  const err = await tabA.page.evaluate(async () => {
    const { TabNode } = await import('/pkg/tabnode_web.js');
    const errors = [];
    for (const opts of [{ relay: 'not a multiaddr' }, { relay: '/ip4/127.0.0.1/tcp/1', identity: new Uint8Array([1, 2, 3]) }, {}]) {
      try { TabNode.start(opts, () => {}); errors.push(null); } catch (e) { errors.push(e.message); }
    }
    let echo;
    try { await window.tabnode.node.echo('not-a-peer-id', new Uint8Array(1)); } catch (e) { echo = e.message; }
    return { errors, echo };
  });
  assert.match(err.errors[0], /invalid options: relay address/);
  assert.match(err.errors[1], /stored identity is corrupt/);
  assert.match(err.errors[2], /invalid options/);
  assert.match(err.echo, /peer id not-a-peer-id/);
  // The node is still fine afterwards.
  const ok = await echoFromTab(tabA.page, null, 10);
  assert.equal(ok.same, true);
});

test('the identity survives a reload', async () => {
  await tabB.page.reload();
  const again = await waitForReachable(tabB.page);
  assert.equal(again, idB);
});

test('relay killed and restarted: tabs reconnect on their own with the same peer ids', async () => {
  const { ports, dataDir, peerId } = net.relay;
  const oldWebrtc = net.relay.bootstrap.webrtc_direct[0];
  const before = await Promise.all([tabA, tabB].map((t) => t.page.evaluate(() => window.tabnode.connects)));
  await net.relay.kill();
  for (const tab of [tabA, tabB]) {
    await waitFor('the tab to notice the relay is gone', () => tab.page.evaluate(() => window.tabnode.status !== 'reachable'));
  }
  net.relay = await startRelay({ dataDir, ports });
  assert.equal(net.relay.peerId, peerId, 'relay identity persisted');
  assert.equal(net.relay.bootstrap.webrtc_direct[0], oldWebrtc, 'same certhash and port after the restart');
  for (const [i, [tab, id]] of [[tabA, idA], [tabB, idB]].entries()) {
    await waitFor('the tab to reconnect on its own', () => tab.page.evaluate(
      (n) => window.tabnode.status === 'reachable' && window.tabnode.connects > n, before[i]));
    assert.equal(await tab.page.evaluate(() => window.tabnode.peerId), id, 'same peer id');
  }
  await waitFor('both tabs listed again', async () => {
    const n = await net.relay.network();
    const ids = new Set(n.nodes.map((p) => p.peer_id));
    return ids.has(idA) && ids.has(idB);
  });
  const r = await echoFromTab(tabA.page, idB, 4096);
  assert.equal(r.same, true, 'echo through the new relay');
});
