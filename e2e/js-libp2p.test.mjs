// Interop: a standard js-libp2p browser peer (libp2p 3.3, @libp2p/webrtc
// 6.0) on the relay's /webrtc-direct address. Before the vendored patches
// (third_party/libp2p-webrtc-utils, libp2p-ping, libp2p-webrtc) its pings
// took 4-10 s each or failed with TooManyOutboundProtocolStreamsError, every
// stream close waited for a FIN_ACK that never came, and in about one
// connection in ten its first streams were lost.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { useNetwork } from './harness.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const ORIGIN = 'http://js-peer.test';
const SECONDS = 60;

let bundle;

const net = useNetwork({
  setUp: async () => {
    const out = join(mkdtempSync(join(tmpdir(), 'tabnode-js-peer-')), 'peer.js');
    await build({
      entryPoints: [join(HERE, 'js-libp2p', 'peer.js')],
      bundle: true,
      format: 'esm',
      platform: 'browser',
      target: 'es2022',
      outfile: out,
      logLevel: 'warning',
    });
    bundle = readFileSync(out);
  },
});

test('a js-libp2p browser peer keeps one WebRTC connection busy for a minute: every ping, identify and close succeeds promptly', { timeout: (SECONDS + 60) * 1000 }, async (t) => {
  const page = await net.browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.route(`${ORIGIN}/**`, (route) => {
    const path = new URL(route.request().url()).pathname;
    if (path === '/peer.js') return route.fulfill({ body: bundle, contentType: 'text/javascript' });
    return route.fulfill({ body: '<!doctype html><script type="module" src="/peer.js"></script>', contentType: 'text/html' });
  });
  await page.goto(`${ORIGIN}/`);
  await page.waitForFunction(() => window.peerReady === true, null, { timeout: 30_000 });
  const addr = net.relay.bootstrap.webrtc_direct[0];
  const r = await page.evaluate(([a, s]) => window.runPeer(a, s), [addr, SECONDS]);
  const summary = JSON.stringify(r);
  const max = (xs) => Math.round(Math.max(...xs));
  t.diagnostic(`dial ${Math.round(r.dialMs)} ms, ${r.pings.length} rounds; max ms: ping ${max(r.pings.map((p) => p.ms))}, identify ${max(r.identifies.map((p) => p.ms))}, close ${max(r.closes.map((c) => c.closeMs ?? Infinity))}; failed: ping ${r.pings.filter((p) => !p.ok).length}, identify ${r.identifies.filter((p) => !p.ok).length}, close ${r.closes.filter((c) => c.error).length}`);
  // About one round a second on one connection, from the first stream on.
  assert.ok(r.pings.length >= SECONDS * 0.8, `rounds: ${r.pings.length}: ${summary}`);
  assert.equal(r.sameConnection, true, summary);
  assert.equal(r.status, 'open', summary);
  for (const [i, p] of r.pings.entries()) {
    assert.ok(p.ok, `ping ${i}: ${p.error}`);
    assert.ok(p.ms < 2000, `ping ${i} took ${p.ms} ms`);
  }
  for (const [i, p] of r.identifies.entries()) {
    assert.ok(p.ok, `identify ${i}: ${p.error}`);
    assert.ok(p.ms < 2000, `identify ${i} took ${p.ms} ms`);
  }
  // Our FIN is acknowledged with FIN_ACK: the close resolves at once and
  // the stream ends closed, not reset.
  for (const [i, c] of r.closes.entries()) {
    assert.equal(c.error, null, `close ${i}: ${JSON.stringify(c)}`);
    assert.ok(c.closeMs < 2000, `close ${i} took ${c.closeMs} ms`);
    assert.notEqual(c.status, 'reset', `close ${i}: ${JSON.stringify(c)}`);
    assert.notEqual(c.status, 'aborted', `close ${i}: ${JSON.stringify(c)}`);
  }
  assert.deepEqual(errors, []);
  assert.equal(net.relay.proc.exitCode, null, 'the relay is still running');
  await page.close();
});
