// Chat served by another person's tab: tab B loads the model (on its CPU
// kernels: WebGPU here is SwiftShader, a software adapter) and serves
// requests through the relay. The
// zero-install chat page (tab A, no node) and a page on another origin that
// embeds the chat widget get their answers from B's worker; then the chat
// page asks again, B's tab is closed mid-stream, and the answer completes on
// another node with nothing lost or repeated. B's points rise by exactly
// the tokens it served.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import {
  useNetwork, startNode, openTab, waitFor, localAnswer,
} from './harness.mjs';

// Generous bounds for a loaded CI machine; the tab decodes several tokens
// a second.
const SLOW = 10 * 60_000;

let tabB;
let peerB;
let host;
let native;

async function ledgerTokens(peer) {
  const r = await fetch(`${net.relay.url}/api/ledger/${peer}`);
  assert.equal(r.status, 200);
  return (await r.json()).tokens;
}

/** A third-party page on its own origin that embeds the widget. */
function startHost() {
  const html = `<!doctype html><html><head><style>
      li { color: rgb(255, 0, 0); } p { color: rgb(0, 128, 0); }
    </style></head><body>
    <p id="own">The host page's own text.</p>
    <div id="chat"></div>
    <script src="${net.relay.url}/embed.js" data-target="#chat" data-max-tokens="3" data-contribute async></script>
    </body></html>`;
  const server = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(html);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => {
    resolve({ server, url: `http://127.0.0.1:${server.address().port}` });
  }));
}

// A stall is much longer than a token takes anywhere; a request waits long
// enough for a node that is still starting (and proving).
const net = useNetwork({
  relay: { args: ['--stall-timeout', '45', '--queue-timeout', '120'] },
  setUp: async (net) => {
    ({ page: tabB } = await openTab(net.browser, net.relay.url, null, { model: true }));
    peerB = await tabB.evaluate(() => window.tabnode.peerId);
    await tabB.waitForFunction(() => ['ready', 'failed'].includes(window.tabnode?.model?.status), null, { timeout: SLOW });
    assert.equal(await tabB.evaluate(() => window.tabnode.model.status), 'ready');
    await waitFor('tab B to serve the model', async () => {
      const body = await (await fetch(`${net.relay.url}/v1/models`)).json();
      return body.data?.[0]?.tabnode?.nodes === 1;
    }, 60_000, 200);
    host = await startHost();
    net.own(host.server);
  },
});

test('the zero-install chat page (tab A, no node) gets its answer from tab B\'s worker', { timeout: SLOW }, async () => {
  const prompt = 'Name a colour.';
  const want = localAnswer(prompt, 3);
  const before = await ledgerTokens(peerB);
  const page = await (await net.browser.newContext()).newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${net.relay.url}/chat.html?max_tokens=3`);
  await page.waitForFunction(() => window.tabnodeChat?.models?.length > 0, null, { timeout: 30_000 });
  await page.fill('#prompt', prompt);
  await page.click('#send');
  // Streamed: the answer shows up piece by piece before it is complete.
  await page.waitForFunction(() => window.tabnodeChat.last?.text?.length > 0 && !window.tabnodeChat.last.done, null, { timeout: SLOW });
  await page.waitForFunction(() => window.tabnodeChat.last?.done || window.tabnodeChat.error, null, { timeout: SLOW });
  const s = await page.evaluate(() => window.tabnodeChat);
  assert.equal(s.error, null);
  assert.deepEqual(s.last.nodes, [peerB], 'served by tab B');
  assert.equal(s.last.text, want.text, 'WebGPU in tab B answers what the native engine answers');
  assert.equal(s.last.tokens, want.tokens.length);
  const stats = await page.textContent('#stats');
  assert.ok(stats.includes(peerB.slice(-8)), stats);
  assert.deepEqual(errors, []);
  assert.equal(await ledgerTokens(peerB) - before, want.tokens.length, 'B earned a point per token it served');
  await page.context().close();
});

test('a widget embedded on another origin gets its answer from tab B\'s worker', { timeout: SLOW }, async () => {
  const prompt = 'What is the capital of France?';
  const want = localAnswer(prompt, 3);
  const before = await ledgerTokens(peerB);
  const page = await (await net.browser.newContext()).newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${host.url}/`);
  await page.waitForFunction(() => customElements.get('tabnode-chat') && document.querySelector('#chat tabnode-chat'));
  await page.fill('tabnode-chat textarea', prompt);
  await page.click('tabnode-chat button');
  await page.waitForFunction(() => {
    const s = document.querySelector('tabnode-chat').state;
    return s.last?.done || s.error;
  }, null, { timeout: SLOW });
  const s = await page.evaluate(() => document.querySelector('tabnode-chat').state);
  assert.equal(s.error, null);
  assert.deepEqual(s.last.nodes, [peerB], 'served by tab B');
  assert.equal(s.last.text, want.text, 'WebGPU in tab B answers what the native engine answers');
  assert.equal(s.last.tokens, want.tokens.length);
  // Shadow DOM: the host's styles do not reach the widget, and the widget
  // adds nothing to the host's document.
  const styles = await page.evaluate(() => {
    const el = document.querySelector('tabnode-chat');
    const li = el.shadowRoot.querySelector('li.assistant');
    return {
      widgetLi: getComputedStyle(li).color,
      hostP: getComputedStyle(document.getElementById('own')).color,
      lightLis: document.querySelectorAll('li').length,
      answer: li.textContent,
    };
  });
  assert.notEqual(styles.widgetLi, 'rgb(255, 0, 0)');
  assert.equal(styles.hostP, 'rgb(0, 128, 0)');
  assert.equal(styles.lightLis, 0);
  assert.equal(styles.answer, want.text);
  // "Contribute" runs the node in the relay's origin: the host cannot
  // reach into it, but hears its status.
  await page.check('tabnode-chat input[type=checkbox]');
  const frame = await waitFor('the node iframe', () => page.frames().find((f) => f.url().startsWith(net.relay.url)), 30_000);
  assert.equal(new URL(frame.url()).origin, new URL(net.relay.url).origin);
  const crossOrigin = await page.evaluate(() => {
    try {
      return String(document.querySelector('tabnode-chat').shadowRoot.querySelector('iframe').contentWindow.localStorage);
    } catch (e) {
      return e.name;
    }
  });
  assert.equal(crossOrigin, 'SecurityError');
  await page.waitForFunction(() => document.querySelector('tabnode-chat').state.node?.status, null, { timeout: 60_000 });
  assert.deepEqual(errors, []);
  assert.equal(await ledgerTokens(peerB) - before, want.tokens.length, 'B earned a point per token it served');
  await page.context().close();
});

test('tab B closed mid-stream: the answer completes on another node, nothing lost or repeated', { timeout: SLOW }, async () => {
  // Long enough that B, decoding tens of tokens a second, is still
  // generating when it is closed right after its first piece arrives.
  const prompt = 'Write a story about a dragon who learns to bake bread.';
  const maxTokens = 64;
  const want = localAnswer(prompt, maxTokens);
  assert.equal(want.tokens.length, maxTokens, 'the answer runs to max_tokens');
  const before = await ledgerTokens(peerB);
  const page = await (await net.browser.newContext()).newPage();
  await page.goto(`${net.relay.url}/chat.html?max_tokens=${maxTokens}`);
  await page.waitForFunction(() => window.tabnodeChat?.models?.length > 0, null, { timeout: 30_000 });
  await page.fill('#prompt', prompt);
  await page.click('#send');
  // B has produced the first piece of the answer: now it goes away, and
  // only then does another node join (the request waits for it).
  await page.waitForFunction(() => window.tabnodeChat.last?.text?.length > 0, null, { timeout: SLOW, polling: 20 });
  await tabB.context().close();
  native = net.own(await startNode(net.relay, { serve: true }));
  await page.waitForFunction(() => window.tabnodeChat.last?.done || window.tabnodeChat.error, null, { timeout: SLOW });
  const s = await page.evaluate(() => window.tabnodeChat);
  assert.equal(s.error, null);
  assert.deepEqual(s.last.nodes, [peerB, native.peerId]);
  assert.equal(s.last.failovers, 1);
  assert.equal(s.last.text, want.text, 'one answer, nothing lost or repeated');
  assert.equal(s.last.tokens, want.tokens.length);
  const servedB = (await ledgerTokens(peerB)) - before;
  const servedNative = await ledgerTokens(native.peerId);
  // B's departure reaches the relay either as a closed connection (then B
  // is credited what it delivered) or, when the WebRTC close arrives after
  // the stall timeout, as a stall: an attempt that went silent earns
  // nothing, since the relay cannot tell it from a node that stopped
  // sending on purpose. Each node is credited at most what its proof makes
  // plausible in the time it took (the native node, proven on a small
  // challenge, may deliver faster than that and be credited less), and
  // never more than it delivered.
  assert.ok(servedNative > 0 && servedNative < want.tokens.length, `native ${servedNative}`);
  assert.ok(servedB >= 0 && servedB + servedNative <= want.tokens.length, `B ${servedB}, native ${servedNative}`);
});
