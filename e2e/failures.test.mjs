// A request whose every attempt fails (three nodes, each reporting a
// failure after two tokens) ends in an error that every client raises: the
// page's own client (chat page), and the official OpenAI client, streaming
// and not. Nothing is credited for the failed attempts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { useNetwork, startFailingNode, waitFor } from './harness.mjs';

let nodes = [];
let model;

const net = useNetwork({
  setUp: async (net) => {
    nodes = await Promise.all([0, 1, 2].map(async () => net.own(await startFailingNode(net.relay, 2))));
    // Every node serves the model and has passed a proof.
    model = await waitFor('three proven nodes serving the model', async () => {
      const models = await (await fetch(`${net.relay.url}/v1/models`)).json();
      const m = models.data?.[0];
      const network = await net.relay.network();
      const proven = network.nodes.filter((n) => nodes.some((f) => f.peerId === n.peer_id) && n.pof?.last?.passed);
      return m?.tabnode?.nodes === 3 && proven.length === 3 ? m.id : null;
    }, 120_000, 200);
  },
});

const failedAfterAttempts = (message) => /failed after \d+ tokens: .*scripted failure/.test(message);

test('three failed attempts: the official OpenAI client raises, streaming and not', async () => {
  const client = new OpenAI({ baseURL: `${net.relay.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const messages = [{ role: 'user', content: 'Name three colours.' }];
  const stream = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0, stream: true });
  let text = '';
  await assert.rejects(async () => {
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
  }, (e) => {
    assert.ok(e instanceof OpenAI.APIError, `${e?.constructor?.name}: ${e?.message}`);
    assert.ok(failedAfterAttempts(e.message), e.message);
    return true;
  });
  // The first node's two tokens were streamed before the failure.
  assert.ok(text.length > 0, 'some text arrived before the error');
  await assert.rejects(
    client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0 }),
    (e) => {
      assert.equal(e.status, 503, e.message);
      assert.equal(e.code, 'no_node_available');
      assert.ok(failedAfterAttempts(e.message), e.message);
      return true;
    },
  );
});

test('three failed attempts: the chat page shows the error, and no node is credited', async () => {
  const page = await net.browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${net.relay.url}/chat.html?max_tokens=12`);
  await page.waitForFunction((m) => window.tabnodeChat?.models?.some((x) => x.id === m), model, { timeout: 30_000 });
  await page.fill('#prompt', 'Name a fruit.');
  await page.click('#send');
  await page.waitForFunction(() => window.tabnodeChat.error || window.tabnodeChat.last?.done, null, { timeout: 120_000 });
  const s = await page.evaluate(() => window.tabnodeChat);
  assert.ok(failedAfterAttempts(s.error ?? ''), JSON.stringify(s.error));
  assert.equal(await page.textContent('#error'), s.error);
  assert.deepEqual(errors, []);
  await page.close();
  const ledger = await (await fetch(`${net.relay.url}/api/ledger`)).json();
  assert.equal(ledger.totals.tokens ?? 0, 0, JSON.stringify(ledger));
});
