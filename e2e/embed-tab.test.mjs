// A tab serves embeddings: the page loads all-MiniLM-L6-v2 beside (here:
// without) a chat model, checked against the catalog's pins, registers it,
// and the relay sends it POST /v1/embeddings' batches (no native node
// serves the model). Its vectors equal sentence-transformers' own (the
// fixtures of scripts/fixtures/minilm_reference.py, cosine >= 0.9999 on
// every text), its token counts are the reference tokenizer's, token-array
// inputs (the fixture's ids) give the same vectors as the texts, the page
// shows what it embedded, the tab earns points for it, and the next visit
// loads the model from the browser's cache.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { useNetwork, openTab, waitFor, ROOT } from './harness.mjs';

const ID = 'all-minilm-l6-v2';
const FIXTURES = JSON.parse(readFileSync(join(ROOT, 'crates/tabnode-infer/tests/fixtures/minilm.json'), 'utf8'));
const CLS = 101;
const SEP = 102;

const net = useNetwork();

const cosine = (a, b) => a.reduce((s, x, i) => s + x * b[i], 0) / Math.sqrt(a.reduce((s, x) => s + x * x, 0) * b.reduce((s, x) => s + x * x, 0));

async function embeddings(input) {
  const res = await fetch(`${net.relay.url}/v1/embeddings`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: ID, input }),
  });
  const body = await res.json();
  assert.equal(res.status, 200, JSON.stringify(body));
  return body;
}

test('a tab embeds for the network with the reference\'s vectors and tokens', { timeout: 300_000 }, async () => {
  const listed = await (await fetch(`${net.relay.url}/api/embedding-models`)).json();
  assert.deepEqual(listed.map((m) => [m.id, m.url, m.dimensions, m.files.length]), [[ID, `/models/${ID}/`, 384, 4]]);
  const { page } = await openTab(net.browser, net.relay.url, null, { embed: 'cpu' });
  try {
    await page.waitForFunction(() => ['ready', 'failed'].includes(window.tabnode.embedder.status), null, { timeout: 180_000 });
    const loaded = await page.evaluate(() => window.tabnode.embedder);
    assert.equal(loaded.status, 'ready', loaded.error ?? '');
    assert.deepEqual([loaded.ready.id, loaded.ready.dimensions, loaded.ready.backend], [ID, 384, 'cpu']);
    await waitFor('the relay to list the tab as serving the embedding model', async () => {
      const list = await (await fetch(`${net.relay.url}/v1/models`)).json();
      return (list.data?.find((m) => m.id === ID)?.tabnode?.nodes ?? 0) >= 1;
    }, 60_000, 200);
    const peer = await page.evaluate(() => window.tabnode.peerId);

    const texts = FIXTURES.cases.map((c) => c.text);
    const byText = await embeddings(texts);
    assert.deepEqual(byText.tabnode.nodes, [peer], 'the tab served every batch');
    assert.equal(byText.data.length, texts.length);
    assert.deepEqual(byText.tabnode.tokens, FIXTURES.cases.map((c) => c.ids.length), 'tokens per text: the reference\'s ids');
    let worst = 1;
    FIXTURES.cases.forEach((c, i) => {
      const got = byText.data[i].embedding;
      assert.equal(got.length, 384);
      const cos = cosine(got, c.embedding);
      worst = Math.min(worst, cos);
      assert.ok(cos >= 0.9999, `text ${i} (${JSON.stringify(c.text.slice(0, 40))}): cosine ${cos}`);
    });
    process.stderr.write(`tab embeddings: worst cosine against sentence-transformers ${worst.toFixed(7)} over ${texts.length} texts\n`);

    // The fixture's ids as token arrays (without [CLS]/[SEP], which the
    // node adds): the same vectors, so the tab's tokenizer made those ids.
    const pieces = FIXTURES.cases.map((c) => c.ids.filter((id, j) => !(j === 0 && id === CLS) && !(j === c.ids.length - 1 && id === SEP)));
    const byIds = await embeddings(pieces.filter((p) => p.length > 0));
    const nonEmpty = FIXTURES.cases.map((c, i) => i).filter((i) => pieces[i].length > 0);
    nonEmpty.forEach((i, k) => assert.deepEqual(byIds.data[k].embedding, byText.data[i].embedding, `text ${i}: ids and text agree`));

    // The page shows what it did; the ledger credits the tab (at most the
    // tokens it embedded: the credit follows its proven rate).
    const shown = await page.evaluate(() => ({ texts: window.tabnode.embedder.texts, line: document.getElementById('embed-status').textContent }));
    assert.equal(shown.texts, texts.length + nonEmpty.length);
    assert.match(shown.line, new RegExp(`${shown.texts} texts embedded for the network`));
    const usage = byText.usage.prompt_tokens + byIds.usage.prompt_tokens;
    const credited = await waitFor('the tab to be credited', async () => {
      const r = await fetch(`${net.relay.url}/api/ledger/${peer}`);
      const b = r.ok ? await r.json() : null;
      return b?.tokens > 0 ? b.tokens : null;
    }, 30_000, 200);
    assert.ok(credited <= usage, `${credited} credited for ${usage} tokens embedded`);

    // The next visit loads every file from the browser's cache, each one
    // under its own name (checked against its pin), downloading nothing.
    assert.equal(loaded.ready.from_cache, false);
    await page.reload();
    await page.waitForFunction(() => ['ready', 'failed'].includes(window.tabnode.embedder.status), null, { timeout: 120_000 });
    const again = await page.evaluate(() => window.tabnode.embedder);
    assert.equal(again.status, 'ready', again.error ?? '');
    assert.deepEqual([again.ready.from_cache, again.ready.downloaded_bytes], [true, 0]);
  } finally {
    await page.context().close();
  }
});

test('a tab embeds on WebGPU with the reference\'s vectors, and chooses its backend by a probe', { timeout: 300_000 }, async () => {
  // The WGSL encoder on the tab's WebGPU device (SwiftShader here: no
  // shader-f16), a batch in one submission.
  const { page } = await openTab(net.browser, net.relay.url, null, { embed: 'webgpu' });
  try {
    await page.waitForFunction(() => ['ready', 'failed'].includes(window.tabnode.embedder.status), null, { timeout: 180_000 });
    const loaded = await page.evaluate(() => window.tabnode.embedder);
    assert.equal(loaded.status, 'ready', loaded.error ?? '');
    assert.deepEqual([loaded.ready.backend, loaded.ready.reason], ['webgpu', 'asked for (embed_backend=webgpu)']);
    const peer = await page.evaluate(() => window.tabnode.peerId);
    await waitFor('the relay to list the tab as serving the embedding model', async () => {
      const list = await (await fetch(`${net.relay.url}/v1/models`)).json();
      return (list.data?.find((m) => m.id === ID)?.tabnode?.nodes ?? 0) >= 1;
    }, 60_000, 200);
    const texts = FIXTURES.cases.map((c) => c.text);
    const got = await embeddings(texts);
    assert.ok(got.tabnode.nodes.every((n) => n === peer), `only the tab serves: ${got.tabnode.nodes}`);
    assert.deepEqual(got.tabnode.tokens, FIXTURES.cases.map((c) => c.ids.length));
    let worst = 1;
    FIXTURES.cases.forEach((c, i) => {
      const cos = cosine(got.data[i].embedding, c.embedding);
      worst = Math.min(worst, cos);
      assert.ok(cos >= 0.9999, `text ${i} (${JSON.stringify(c.text.slice(0, 40))}): cosine ${cos}`);
    });
    process.stderr.write(`tab embeddings on WebGPU: worst cosine against sentence-transformers ${worst.toFixed(7)} over ${texts.length} texts\n`);
    const shown = await page.evaluate(() => ({ device: window.tabnode.embedder.device, line: document.getElementById('embed-status').textContent }));
    assert.equal(shown.device, 'webgpu', 'the worker computed on WebGPU');
    assert.match(shown.line, /on WebGPU/);
    // Bad token ids are the caller's fault, answered as such (not sent to
    // another node as if the tab had failed).
    const res = await fetch(`${net.relay.url}/v1/embeddings`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: ID, input: [[7592, 40000]] }),
    });
    const err = await res.json();
    assert.equal(res.status, 400, JSON.stringify(err));
    assert.match(err.error.message, /outside the vocabulary/);

    // Without a preference the page times both on a probe batch and says
    // so (which wins depends on the machine).
    await page.goto(page.url().replace('embed_backend=webgpu', 'embed_backend='));
    await page.waitForFunction(() => ['ready', 'failed'].includes(window.tabnode.embedder.status), null, { timeout: 180_000 });
    const auto = await page.evaluate(() => window.tabnode.embedder);
    assert.equal(auto.status, 'ready', auto.error ?? '');
    assert.match(auto.ready.reason, /^faster on this machine: webgpu \d+\.\d ms\/text, cpu \d+\.\d ms\/text$/);
    process.stderr.write(`tab embedder placement: ${auto.ready.backend}, ${auto.ready.reason}\n`);
  } finally {
    await page.context().close();
  }
});

test('a tab whose embedding files fail their pins does not serve them', { timeout: 120_000 }, async () => {
  // The page loads with a wrong hash for one file: the load fails with
  // the catalog's reason and the tab does not register the model.
  const { page } = await openTab(net.browser, net.relay.url, null);
  try {
    const listed = await (await fetch(`${net.relay.url}/api/embedding-models`)).json();
    const files = listed[0].files.map((f) => ({ ...f }));
    files[0].sha256 = '0'.repeat(64);
    const err = await page.evaluate(async ({ id, url, files }) => {
      try {
        await window.tabnode.node.loadEmbedder(id, url, files);
        return null;
      } catch (e) {
        return e.message;
      }
    }, { id: ID, url: listed[0].url, files });
    assert.match(err ?? 'loaded', /\/config\.json: sha256 [0-9a-f]{64}, the catalog pins 0{64}; the file is not used/);
    const bad = await page.evaluate(async ({ id, url }) => window.tabnode.node.loadEmbedder(id, url, [{ file: 'x', bytes: 1, sha256: 'nothex' }]).then(() => null, (e) => e.message), { id: ID, url: listed[0].url });
    assert.match(bad ?? 'loaded', /files: x: not a sha256/);
    const peer = await page.evaluate(() => window.tabnode.peerId);
    const network = await (await fetch(`${net.relay.url}/api/network`)).json();
    const me = network.nodes.find((n) => n.peer_id === peer);
    assert.ok(me, `the tab is registered: ${JSON.stringify(network)}`);
    assert.ok(!(me.capabilities?.models ?? []).includes(ID), JSON.stringify(me));
    assert.equal(await page.evaluate(() => window.tabnode.embedder.status), 'failed');
  } finally {
    await page.context().close();
  }
});
