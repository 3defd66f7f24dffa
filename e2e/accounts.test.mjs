// Accounts in a real browser (issue #16): a tab that serves the model earns
// points; on its node page it creates an API key, which works with the
// official OpenAI Python client and is charged to the tab's account, token
// for token; revoked on the page, the key stops working at once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { homedir } from 'node:os';
import { join } from 'node:path';
import {
  useNetwork, ROOT, openTab, waitFor,
} from './harness.mjs';

const PYTHON = join(process.env.TABNODE_CACHE || join(homedir(), '.cache/tabnode'), 'venv-openai/bin/python');
const MODEL = 'smollm2-135m-instruct';

const net = useNetwork();

async function ledger(peer) {
  return (await fetch(`${net.relay.url}/api/ledger/${peer}`)).json();
}

async function python(key) {
  const { stdout } = await promisify(execFile)(PYTHON, [
    join(ROOT, 'e2e', 'openai_client.py'), `${net.relay.url}/v1`, MODEL, 'Say hello.', '8', key,
  ], { encoding: 'utf8' });
  return JSON.parse(stdout);
}

test('a key made on the node page pays with the tab\'s points, and stops when revoked', { timeout: 600_000 }, async () => {
  const { page, context } = await openTab(net.browser, net.relay.url, null, { model: true, backend: 'cpu' });
  const peer = await page.evaluate(() => window.tabnode.peerId);
  await waitFor('the tab serving the model', async () => {
    const body = await (await fetch(`${net.relay.url}/v1/models`)).json();
    return body.data?.some((m) => m.id === MODEL);
  }, 300_000, 500);
  // The tab earns by serving an anonymous request.
  const r = await fetch(`${net.relay.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'Count to five.' }], max_tokens: 16, temperature: 0 }),
  });
  assert.equal(r.status, 200, await r.text());
  await waitFor('points for the tab', async () => (await ledger(peer)).points > 0, 60_000, 200);

  // A key from the page's own UI.
  await page.fill('#key-label', 'e2e');
  await page.click('#key-create');
  await page.waitForSelector('#key-new:not([hidden])');
  const key = await page.textContent('#key-secret');
  assert.match(key, /^tn-[0-9a-f]{64}$/);
  assert.equal(await page.locator('#keys tbody tr').count(), 1);

  // The official OpenAI client with it: answered, and charged to the tab.
  const before = await ledger(peer);
  const got = await python(key);
  assert.ok(!got.error, JSON.stringify(got));
  assert.ok(got.text.length > 0 && got.models.includes(MODEL), JSON.stringify(got));
  const after = await waitFor('the charge', async () => {
    const b = await ledger(peer);
    return b.spent_requests === before.spent_requests + 1 ? b : null;
  }, 30_000, 100);
  const tokens = after.spent_tokens - before.spent_tokens;
  assert.ok(tokens > 8, `prompt and completion tokens charged: ${tokens}`);
  assert.equal(after.spent_points - before.spent_points, tokens, 'one point a token');
  // The node page's account line shows the same charge (and no strikes).
  const line = `spent ${after.spent_points} on ${after.spent_requests} requests`;
  await page.waitForFunction((want) => document.querySelector('#account').textContent.includes(want), line, { timeout: 30_000 });
  const account = await page.textContent('#account');
  assert.match(account, /earned \d+ for \d+ tokens served/);
  assert.match(account, /strikes 0/);
  assert.equal(await page.locator('#strikes').isHidden(), true);

  // Revoked on the page: the next request is refused at once.
  await page.click('#keys [data-revoke]');
  await page.waitForFunction(() => document.querySelector('#keys tbody').textContent.includes('revoked'));
  const refused = await python(key);
  assert.equal(refused.error?.status, 401, JSON.stringify(refused));
  assert.equal(refused.error?.code, 'invalid_api_key');
  // Still on record, never its secret.
  const listed = await page.evaluate(() => window.tabnode.keys);
  assert.equal(listed.length, 1);
  assert.ok(!JSON.stringify(listed).includes(key.slice(3)));
  await context.close();
});
