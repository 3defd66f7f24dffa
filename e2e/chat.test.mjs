// The zero-install chat page in a real browser: the relay's
// OpenAI-compatible API streams an answer from a node through the relay,
// the page shows who served it, and the same API works for an OpenAI client
// library, unmodified.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import {
  useNetwork, startNode, waitFor, localAnswer,
} from './harness.mjs';

let node;

async function modelId() {
  return waitFor('a model on the network', async () => {
    const r = await fetch(`${net.relay.url}/v1/models`);
    const body = await r.json();
    return body.data?.[0]?.id;
  }, 60_000, 200);
}

const net = useNetwork({
  setUp: async (net) => {
    node = net.own(await startNode(net.relay, { serve: true }));
  },
});

test('the chat page streams an answer served by a node, and says which', async () => {
  const model = await modelId();
  const prompt = 'What is the capital of France?';
  const want = localAnswer(prompt, 12);
  const page = await net.browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${net.relay.url}/chat.html?max_tokens=12`);
  await page.waitForFunction((m) => window.tabnodeChat?.models?.some((x) => x.id === m), model, { timeout: 30_000 });
  await page.fill('#prompt', prompt);
  await page.click('#send');
  await page.waitForFunction(() => window.tabnodeChat.last?.done || window.tabnodeChat.error, null, { timeout: 120_000 });
  const s = await page.evaluate(() => window.tabnodeChat);
  assert.equal(s.error, null);
  assert.equal(s.last.text, want.text, 'the network answer equals the local greedy answer');
  assert.equal(s.last.tokens, want.tokens.length);
  assert.deepEqual(s.last.nodes, [node.peerId]);
  assert.ok(s.last.client_ttft_ms > 0);
  const shown = await page.textContent('#messages');
  assert.ok(shown.includes(want.text.trim()), shown);
  const stats = await page.textContent('#stats');
  assert.ok(stats.includes(node.peerId.slice(-8)) && stats.includes('tokens/s'), stats);
  assert.deepEqual(errors, []);
  // The node's points rose by exactly the tokens it served.
  const bal = await (await fetch(`${net.relay.url}/api/ledger/${node.peerId}`)).json();
  assert.equal(bal.tokens, want.tokens.length);
  await page.close();
});

test('answers render as sanitised Markdown with highlighted code; Enter sends, Shift+Enter adds a line', async () => {
  const model = await modelId();
  const page = await net.browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${net.relay.url}/chat.html?max_tokens=8`);
  await page.waitForFunction((m) => window.tabnodeChat?.models?.some((x) => x.id === m), model, { timeout: 30_000 });
  // The renderer on hostile and on ordinary Markdown, in the page itself.
  const r = await page.evaluate(() => {
    const el = document.createElement('div');
    document.body.append(el);
    window.tabnodeMarkdown(el, [
      '# Title', '', 'Some **bold** and a [link](https://example.org/) and [bad](javascript:window.pwned=3).', '',
      '<img src="x" onerror="window.pwned=1"><script>window.pwned=2</script>', '',
      '```python', 'def add(a, b):', '    return a + b', '```', '',
      '```nosuchlang', 'plain', '```',
    ].join('\n'));
    const code = el.querySelector('pre code.language-python');
    return {
      h1: el.querySelector('h1')?.textContent,
      bold: el.querySelector('strong')?.textContent,
      link: el.querySelector('a[href="https://example.org/"]')?.rel,
      hrefs: [...el.querySelectorAll('a')].map((a) => a.getAttribute('href')),
      handlers: [...el.querySelectorAll('*')].flatMap((n) => [...n.attributes].map((a) => a.name)).filter((n) => n.startsWith('on')),
      scripts: el.querySelectorAll('script').length,
      highlighted: code?.classList.contains('hljs') && code.querySelector('.hljs-keyword')?.textContent,
      codeText: code?.textContent,
      plain: el.querySelector('pre code.language-nosuchlang')?.classList.contains('hljs'),
    };
  });
  assert.equal(r.h1, 'Title');
  assert.equal(r.bold, 'bold');
  assert.equal(r.link, 'noopener noreferrer');
  assert.ok(!r.hrefs.some((h) => h?.startsWith('javascript:')), JSON.stringify(r.hrefs));
  assert.deepEqual(r.handlers, []);
  assert.equal(r.scripts, 0);
  assert.equal(r.highlighted, 'def');
  assert.equal(r.codeText, 'def add(a, b):\n    return a + b\n');
  assert.equal(r.plain, false);
  assert.equal(await page.evaluate(() => window.pwned), undefined);
  // Shift+Enter adds a line and sends nothing; Enter sends.
  await page.fill('#prompt', 'Name a colour.');
  await page.press('#prompt', 'Shift+Enter');
  assert.equal(await page.inputValue('#prompt'), 'Name a colour.\n');
  assert.equal(await page.evaluate(() => window.tabnodeChat.last), null);
  await page.fill('#prompt', 'Name a colour.');
  const want = localAnswer('Name a colour.', 8);
  await page.press('#prompt', 'Enter');
  await page.waitForFunction(() => window.tabnodeChat.last?.done || window.tabnodeChat.error, null, { timeout: 120_000 });
  const s = await page.evaluate(() => window.tabnodeChat);
  assert.equal(s.error, null);
  assert.equal(s.last.text, want.text);
  assert.equal(await page.inputValue('#prompt'), '');
  assert.deepEqual(errors, []);
  await page.close();
});

test('the official OpenAI client library works against the relay unmodified', async () => {
  const model = await modelId();
  const client = new OpenAI({ baseURL: `${net.relay.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const list = await client.models.list();
  assert.ok(list.data.some((m) => m.id === model));
  const prompt = 'Name a colour.';
  const want = localAnswer(prompt, 8);
  const whole = await client.chat.completions.create({
    model, messages: [{ role: 'user', content: prompt }], max_tokens: 8, temperature: 0,
  });
  assert.equal(whole.choices[0].message.content, want.text);
  assert.equal(whole.usage.completion_tokens, want.tokens.length);
  const stream = await client.chat.completions.create({
    model, messages: [{ role: 'user', content: prompt }], max_tokens: 8, temperature: 0,
    stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let usage = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? '';
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, want.text);
  assert.equal(usage.completion_tokens, want.tokens.length);
  // The legacy text completion: the prompt continued as it is.
  const start = 'One, two, three,';
  const cont = localAnswer(start, 6, undefined, { chat: false });
  const done = await client.completions.create({ model, prompt: start, max_tokens: 6, temperature: 0 });
  assert.equal(done.choices[0].text, cont.text);
  assert.equal(done.usage.completion_tokens, cont.tokens.length);
  let streamed = '';
  for await (const chunk of await client.completions.create({
    model, prompt: start, max_tokens: 6, temperature: 0, stream: true,
  })) {
    streamed += chunk.choices[0]?.text ?? '';
  }
  assert.equal(streamed, cont.text);
  await assert.rejects(
    client.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }),
    (e) => e.status === 404 && e.code === 'model_not_found',
  );
});
