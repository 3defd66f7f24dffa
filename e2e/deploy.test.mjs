// Operating a relay (issue #18): it serves the site over HTTPS itself (a
// tab on a name that is not localhost is a secure context there, gets
// WebGPU and joins), it announces the external addresses it is given
// instead of its listen addresses, and SIGTERM stops it gracefully: a
// streamed chat in progress completes, new requests are refused, and the
// node's credit for the tokens is in the ledger when the relay comes back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  useNetwork, startRelay, startNode, waitFor, launchBrowser, openTab,
} from './harness.mjs';

const net = useNetwork({ browser: false });

/** A self-signed certificate for `tabnode.test` and 127.0.0.1 (openssl),
 * and its public key's SHA-256 as Chromium's SPKI list takes it. */
function testCertificate() {
  const dir = mkdtempSync(join(tmpdir(), 'tabnode-tls-'));
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=tabnode.test',
    '-addext', 'subjectAltName=DNS:tabnode.test,IP:127.0.0.1',
  ], { stdio: 'ignore' });
  const pub = execFileSync('openssl', ['x509', '-in', cert, '-pubkey', '-noout']);
  const der = execFileSync('openssl', ['pkey', '-pubin', '-outform', 'der'], { input: pub });
  const spki = execFileSync('openssl', ['dgst', '-sha256', '-binary'], { input: der }).toString('base64');
  return { cert, key, spki };
}

test('over HTTPS (its own certificate) a tab on a non-local name is a secure context, gets WebGPU and joins; plain HTTP redirects', { timeout: 300_000 }, async () => {
  const { cert, key, spki } = testCertificate();
  const relay = await startRelay({
    args: ['--tls-cert', cert, '--tls-key', key, '--http-redirect', '127.0.0.1:0'],
  });
  // Chromium trusts this certificate alone and finds tabnode.test here.
  const browser = await launchBrowser([
    `--ignore-certificate-errors-spki-list=${spki}`,
    '--host-resolver-rules=MAP tabnode.test 127.0.0.1',
  ]);
  try {
    assert.match(relay.url, /^https:\/\/127\.0\.0\.1:\d+$/);
    const origin = `https://tabnode.test:${relay.ports.http}`;
    const { page } = await openTab(browser, origin);
    const seen = await page.evaluate(async () => ({
      secure: window.isSecureContext,
      adapter: !!(await navigator.gpu?.requestAdapter()),
      status: window.tabnode.status,
      protocol: location.protocol,
    }));
    assert.deepEqual(seen, { secure: true, adapter: true, status: 'reachable', protocol: 'https:' });
    // The relay lists the tab that joined over the HTTPS origin.
    const peer = await page.evaluate(() => window.tabnode.peerId);
    const listed = await page.evaluate(async () => (await (await fetch('/api/network')).json()).nodes.map((n) => n.peer_id));
    assert.ok(listed.includes(peer), JSON.stringify(listed));
    // HSTS and the site's content security policy.
    const res = await page.goto(`${origin}/chat.html`);
    const headers = res.headers();
    assert.equal(headers['strict-transport-security'], 'max-age=31536000');
    assert.match(headers['content-security-policy'], /script-src 'self' 'wasm-unsafe-eval'/);
    // The API answers programs: HSTS and CORS, none of the documents' headers.
    const api = (await page.goto(`${origin}/v1/models`)).headers();
    assert.equal(api['strict-transport-security'], 'max-age=31536000');
    assert.equal(api['access-control-allow-origin'], '*');
    for (const name of ['content-security-policy', 'cross-origin-opener-policy', 'cross-origin-embedder-policy']) {
      assert.equal(api[name], undefined, name);
    }
    // Plain HTTP on the redirect address: a permanent redirect to HTTPS.
    const redirect = relay.proc.output.match(/plain HTTP on (\S+) redirects to HTTPS/)?.[1];
    assert.ok(redirect, relay.proc.output.slice(-2000));
    const r = await fetch(`http://${redirect}/chat.html?x=1`, { redirect: 'manual' });
    assert.equal(r.status, 308);
    assert.equal(r.headers.get('location'), `https://127.0.0.1:${relay.ports.http}/chat.html?x=1`);
  } finally {
    await browser.close();
    await relay.kill();
  }
});

test('--external-address is announced first in /api/bootstrap, with the relay\'s certhash', async () => {
  const relay = await startRelay({
    args: ['--external-address', '203.0.113.7', '--external-address', '/ip4/198.51.100.9/udp/443/webrtc-direct'],
  });
  try {
    const boot = await (await fetch(`${relay.url}/api/bootstrap`)).json();
    const id = boot.peer_id;
    const local = boot.webrtc_direct.find((a) => a.startsWith('/ip4/127.0.0.1/'));
    assert.ok(local, JSON.stringify(boot));
    const certhash = local.split('/certhash/')[1].split('/')[0];
    const port = (addr, proto) => addr.split('/')[addr.split('/').indexOf(proto) + 1];
    assert.equal(boot.tcp[0], `/ip4/203.0.113.7/tcp/${port(boot.tcp.at(-1), 'tcp')}/p2p/${id}`);
    assert.equal(boot.quic[0], `/ip4/203.0.113.7/udp/${port(boot.quic.at(-1), 'udp')}/quic-v1/p2p/${id}`);
    assert.equal(boot.webrtc_direct[0], `/ip4/203.0.113.7/udp/${port(local, 'udp')}/webrtc-direct/certhash/${certhash}/p2p/${id}`);
    assert.equal(boot.webrtc_direct[1], `/ip4/198.51.100.9/udp/443/webrtc-direct/certhash/${certhash}/p2p/${id}`);
    // The listen addresses follow, for nodes on the relay's own network.
    assert.ok(boot.tcp.some((a) => a.startsWith('/ip4/127.0.0.1/tcp/')), JSON.stringify(boot));
  } finally {
    await relay.kill();
  }
});

test('SIGTERM: the streamed chat in progress completes, new requests are refused, no credit is lost', { timeout: 300_000 }, async () => {
  const node = net.own(await startNode(net.relay, { serve: true }));
  const model = await waitFor('the model on the network', async () => {
    const body = await (await fetch(`${net.relay.url}/v1/models`)).json();
    return body.data?.[0]?.tabnode?.nodes >= 1 ? body.data[0].id : null;
  }, 120_000, 200);
  // Only a node with a valid proof earns: wait for its proof.
  await waitFor('the node\'s proof', async () => {
    const n = (await net.relay.network()).nodes.find((x) => x.peer_id === node.peerId);
    return n?.pof?.valid;
  }, 120_000, 200);
  const ready = await fetch(`${net.relay.url}/readyz`);
  assert.equal(ready.status, 200);
  assert.equal((await ready.json()).ready, true);
  assert.equal(await (await fetch(`${net.relay.url}/healthz`)).text(), 'ok');

  const res = await fetch(`${net.relay.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      model, stream: true, stream_options: { include_usage: true }, max_tokens: 120, temperature: 0,
      messages: [{ role: 'user', content: 'Tell me about the sea.' }],
    }),
  });
  assert.equal(res.status, 200);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let text = '';
  let signalled = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    text += decoder.decode(value, { stream: true });
    // The first piece of the answer is here: stop the relay.
    if (!signalled && /"content":"[^"]/.test(text)) {
      net.relay.proc.kill('SIGTERM');
      signalled = Date.now();
      await waitFor('the relay to say it stops', () => net.relay.proc.output.includes('stopping: requests in progress get'), 10_000, 20);
      // A new request (a new connection) is no longer taken.
      const refused = await fetch(`${net.relay.url}/v1/models`).then((r) => r.status, () => 'refused');
      assert.ok(refused === 'refused' || refused === 503, `a request while stopping: ${refused}`);
    }
  }
  assert.ok(signalled, 'the stream started');
  assert.ok(text.trim().endsWith('data: [DONE]'), `the stream completed: ${text.slice(-300)}`);
  const chunks = text.split('\n').filter((l) => l.startsWith('data: {')).map((l) => JSON.parse(l.slice(6)));
  const usage = chunks.findLast((c) => c.usage)?.usage;
  assert.ok(usage?.completion_tokens > 0, JSON.stringify(chunks.at(-1)));
  // The relay exits by itself once the stream is done.
  const exit = await net.relay.proc.exited;
  assert.equal(exit.code, 0, `relay exit: ${JSON.stringify(exit)}\n${net.relay.proc.output.slice(-2000)}`);
  console.log(`the relay stopped ${Date.now() - signalled} ms after SIGTERM, its stream of ${usage.completion_tokens} tokens complete`);

  // The same data directory: the node's credit for every token is there.
  const { dataDir, ports } = net.relay;
  net.relay = await startRelay({ dataDir, ports });
  const balance = await (await fetch(`${net.relay.url}/api/ledger/${node.peerId}`)).json();
  assert.equal(balance.tokens, usage.completion_tokens, JSON.stringify(balance));
});
