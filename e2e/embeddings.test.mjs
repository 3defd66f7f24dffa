// POST /v1/embeddings served by the network: a native node runs
// all-MiniLM-L6-v2 (`tabnode-node --embed`), the relay routes the batches to
// it, and the official OpenAI clients (Python, with its default base64
// vectors, and JavaScript) get the same vectors as a plain float request,
// unit length, related sentences closer than unrelated ones; /v1/models
// lists the model as an embedding model. In a page, the site's JS client
// (`embed()`, `vectors()`) drives the relay's vector store.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import OpenAI from 'openai';
import { useNetwork, startNode, waitFor, ROOT } from './harness.mjs';

const PYTHON = join(process.env.TABNODE_CACHE || join(homedir(), '.cache/tabnode'), 'venv-openai/bin/python');
const ID = 'all-minilm-l6-v2';
const TEXTS = [
  'The capital of France is Paris.',
  'Paris is the capital and most populous city of France.',
  'A cat sat on the mat.',
];

let node;

const net = useNetwork({
  setUp: async (net) => {
    node = net.own(await startNode(net.relay, { embed: true }));
    await waitFor('the relay to list the embedding model', async () => {
      const list = await (await fetch(`${net.relay.url}/v1/models`)).json();
      return (list.data?.find((m) => m.id === ID)?.tabnode?.nodes ?? 0) >= 1;
    }, 120_000, 200);
  },
});

const cosine = (a, b) => a.reduce((s, x, i) => s + x * b[i], 0) / Math.sqrt(a.reduce((s, x) => s + x * x, 0) * b.reduce((s, x) => s + x * x, 0));

test('the official OpenAI clients get the network\'s embeddings', { timeout: 120_000 }, async () => {
  const plain = await (await fetch(`${net.relay.url}/v1/embeddings`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: ID, input: TEXTS }),
  })).json();
  const want = plain.data.map((d) => d.embedding);
  assert.equal(want.length, 3);
  for (const v of want) {
    assert.equal(v.length, 384);
    assert.ok(Math.abs(Math.hypot(...v) - 1) < 1e-4, 'unit length');
  }
  assert.ok(cosine(want[0], want[1]) > 0.6 && cosine(want[0], want[2]) < 0.3, 'Paris with Paris, not with the cat');
  const list = (await (await fetch(`${net.relay.url}/v1/models`)).json()).data.find((m) => m.id === ID);
  assert.deepEqual([list.tabnode.kind, list.tabnode.dimensions], ['embedding', 384]);

  // Python: base64 on the wire, decoded by the client; the same floats.
  const { stdout } = await promisify(execFile)(PYTHON, [join(ROOT, 'e2e', 'openai_embed.py'), `${net.relay.url}/v1`, ID, ...TEXTS], { encoding: 'utf8' });
  const py = JSON.parse(stdout);
  assert.ok(py.models.includes(ID), stdout);
  assert.equal(py.model, ID);
  assert.equal(py.prompt_tokens, plain.usage.prompt_tokens);
  assert.deepEqual(py.vectors, want);

  // JavaScript: the same.
  const client = new OpenAI({ baseURL: `${net.relay.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const js = await client.embeddings.create({ model: ID, input: TEXTS });
  assert.deepEqual(js.data.map((d) => d.embedding), want);
  assert.equal(js.usage.prompt_tokens, plain.usage.prompt_tokens);
  // A size the model does not have is refused, as OpenAI's API refuses it.
  await assert.rejects(
    client.embeddings.create({ model: ID, input: 'x', dimensions: 64 }),
    (e) => e.status === 400 && /has 384 and no other size/.test(e.message),
  );
});

test('in a page, the JS client embeds and drives the vector store', { timeout: 120_000 }, async () => {
  const page = await net.browser.newPage();
  await page.goto(`${net.relay.url}/chat.html`);
  const out = await page.evaluate(async (texts) => {
    const { embed, vectors } = await import('/client.js');
    const caught = async (p) => p.then(() => null, (e) => ({ status: e.status, code: e.code, message: e.message }));
    const e = await embed(texts);
    const col = vectors().collection('e2e-docs');
    const created = await col.create();
    const up = await col.upsert([
      { id: 1, text: texts[0], payload: { lang: 'en' } },
      { id: 'cat', text: texts[2], payload: { lang: 'en' } },
      { id: 3, vector: e.vectors[1], payload: { lang: 'fr' } },
    ]);
    const near = await col.query({ text: 'Which city is the capital of France?', limit: 3 });
    const fr = await col.query({ vector: e.vectors[0], filter: { must: { key: 'lang', match: { value: 'fr' } } } });
    const badDims = await caught(col.upsert([{ id: 9, vector: [1, 2, 3] }]));
    const removed = await col.remove([1, 'missing']);
    const info = await col.info();
    const got = await col.get('cat');
    const list = await vectors().list();
    await col.drop();
    const gone = await caught(col.query({ text: 'x' }));
    return { e, created, up, near, fr, badDims, removed, info, got, list, gone };
  }, TEXTS);
  assert.equal(out.e.vectors.length, 3);
  assert.ok(out.e.vectors.every((v) => v.length === 384));
  assert.ok(out.e.tokens > 10 && out.e.nodes.length === 1, JSON.stringify(out.e.nodes));
  assert.deepEqual([out.created.model, out.created.dimensions, out.created.points], [ID, 384, 0]);
  assert.equal(out.up.upserted, 3);
  assert.ok(out.up.usage.prompt_tokens > 0, 'the two texts were embedded');
  assert.deepEqual(out.near.map((p) => p.id).slice(0, 2).sort(), [1, 3].sort(), JSON.stringify(out.near));
  assert.equal(out.near[2].id, 'cat');
  assert.equal(out.near[0].payload.lang !== undefined, true);
  // Point 3's vector is the second text's, as embedded here: the score of
  // a query by the first text's vector is the cosine of the two.
  assert.deepEqual(out.fr.map((p) => p.id), [3]);
  assert.ok(Math.abs(out.fr[0].score - cosine(out.e.vectors[0], out.e.vectors[1])) < 1e-5);
  assert.equal(out.badDims.status, 400);
  assert.match(out.badDims.message, /a vector of 3 dimensions; the collection's model makes 384/);
  assert.equal(out.removed, 1);
  assert.equal(out.info.points, 2);
  assert.equal(out.got.text, TEXTS[2]);
  assert.ok(out.list.some((c) => c.name === 'e2e-docs'));
  assert.deepEqual([out.gone.status, out.gone.code], [404, 'collection_not_found']);
});
