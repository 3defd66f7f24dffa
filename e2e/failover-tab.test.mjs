// Failover from a native node to a tab with the split inside a multi-byte
// character: a native node serves the first tokens of a Japanese answer and
// reports a failure right after a token that ends inside a character; the
// request waits in the relay's queue until a tab has loaded the model, and
// the tab's worker continues from the delivered tokens. The requester gets
// the same text as one uninterrupted generation (a lost or doubled byte
// would show as U+FFFD or garble), and the failed attempt earns nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  useNetwork, startFailingNode, openTab, waitFor, localAnswer,
} from './harness.mjs';

// Generous bounds for a loaded CI machine (the tab loads the model while
// the request waits).
const SLOW = 12 * 60_000;
const PROMPT = 'Translate hello to Japanese.';
const MAX_TOKENS = 8;

let failing;

// The request waits for the tab to load the model; a stall is much longer
// than a token takes anywhere.
const net = useNetwork({ relay: { args: ['--queue-timeout', '600', '--stall-timeout', '45'] } });

/** Reads an SSE chat completion: the text, usage, the nodes and failovers. */
async function readStream(response) {
  assert.equal(response.status, 200);
  const body = await response.text();
  let text = '';
  let usage = null;
  let tabnode = null;
  let error = null;
  for (const line of body.split('\n')) {
    if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
    const event = JSON.parse(line.slice(6));
    if (event.error) error = event.error;
    text += event.choices?.[0]?.delta?.content ?? '';
    if (event.usage) usage = event.usage;
    if (event.tabnode?.nodes) tabnode = event.tabnode;
  }
  return { text, usage, tabnode, error };
}

test('native node fails inside a character, a tab continues: no byte lost or repeated', { timeout: SLOW }, async () => {
  const want = localAnswer(PROMPT, MAX_TOKENS);
  assert.ok(!/^[\x00-\x7f]*$/.test(want.text), `the answer is not multi-byte: ${JSON.stringify(want.text)}`);
  failing = net.own(await startFailingNode(net.relay, 'inside-char'));
  const model = await waitFor('the failing node to serve the model', async () => {
    const m = (await (await fetch(`${net.relay.url}/v1/models`)).json()).data?.[0];
    return m?.tabnode?.nodes === 1 ? m.id : null;
  }, 120_000, 200);
  const request = fetch(`${net.relay.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      model,
      messages: [{ role: 'user', content: PROMPT }],
      max_tokens: MAX_TOKENS,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  // The failing node has failed: the request waits for another node.
  await waitFor('the failing node\'s attempt to fail', async () => {
    const metrics = await (await fetch(`${net.relay.url}/metrics`)).text();
    return /tabnode_inference_failovers_total [1-9]/.test(metrics);
  }, 120_000, 200);
  const { page: tab } = await openTab(net.browser, net.relay.url, null, { model: true });
  const peer = await tab.evaluate(() => window.tabnode.peerId);
  const answer = await readStream(await request);
  assert.equal(answer.error, null, JSON.stringify(answer.error));
  assert.equal(answer.text, want.text, 'one answer, nothing lost or repeated');
  assert.equal(answer.usage.completion_tokens, want.tokens.length);
  assert.deepEqual(answer.tabnode?.nodes, [failing.peerId, peer]);
  assert.equal(answer.tabnode?.failovers, 1);
  const ledger = await (await fetch(`${net.relay.url}/api/ledger/${failing.peerId}`)).json();
  assert.equal(ledger.tokens ?? 0, 0, 'the failed attempt earned nothing');
});
