// A tab serving another model than the default: the visitor's ?model=
// picks Qwen2.5-Coder-0.5B-Instruct (qwen2: q/k/v biases, NEOX RoPE, its
// own Jinja chat template; Q5_0/Q8_0/Q4_K/Q6_K blocks) from the relay's
// models directory; the tab loads it on its CPU workers, registers it, and
// answers a chat request the relay routes to it by model id, with the
// native engine's tokens exactly. A ?model= the relay does not serve fails
// with a clear error. A native node serves SmolLM2 and Qwen at once, and
// the official OpenAI Python client streams Qwen's answer from it. A tab
// picks Gemma 3 270M (gemma3, SentencePiece, a base model), times both
// engines, and continues a /v1/completions prompt with the native engine's
// tokens.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import {
  useNetwork, startNode, openTab, waitFor, localAnswer, MODEL_FILE, ROOT,
} from './harness.mjs';

// The official OpenAI Python client (scripts/setup.sh --test installs it).
const PYTHON = join(process.env.TABNODE_CACHE || join(homedir(), '.cache/tabnode'), 'venv-openai/bin/python');

const QWEN = 'Qwen2.5-Coder-0.5B-Instruct.gguf';
// The network's id of the model (the relay's catalog).
const ID = 'qwen2.5-coder-0.5b-instruct';
const PROMPT = 'What is the capital of France? Answer in one word.';
const MAX_TOKENS = 6;
// A 491 MB file into the browser cache and two workers, then the timing.
const SLOW = 10 * 60_000;

const net = useNetwork();

test('a tab with ?model= serves Qwen2.5-Coder to a chat request, with the native tokens', { timeout: SLOW }, async () => {
  const want = localAnswer(PROMPT, MAX_TOKENS, QWEN);
  assert.match(want.text, /Paris/, `the native answer: ${JSON.stringify(want.text)}`);
  const { page } = await openTab(net.browser, net.relay.url, null, { model: QWEN });
  await page.waitForFunction(() => ['ready', 'failed'].includes(window.tabnode?.model?.status), null, { timeout: SLOW });
  const model = await page.evaluate(() => window.tabnode.model);
  assert.equal(model.status, 'ready', `${model.error}\n${page.logs.slice(-20).join('\n')}`);
  assert.equal(model.ready.model.architecture, 'qwen2');
  assert.equal(model.ready.engine.device, 'cpu-quantized-simd128');
  console.log(`tab: ${JSON.stringify(model.ready.engine)}, load ${(model.ready.load_ms / 1000).toFixed(1)} s`);
  const peer = await page.evaluate(() => window.tabnode.peerId);
  await waitFor('the relay to list the tab\'s model', async () => {
    const list = await (await fetch(`${net.relay.url}/v1/models`)).json();
    return list.data?.some((m) => m.id === ID && m.tabnode?.nodes === 1);
  }, 120_000, 200);
  const res = await fetch(`${net.relay.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: ID, messages: [{ role: 'user', content: PROMPT }], max_tokens: MAX_TOKENS, temperature: 0 }),
  });
  const body = await res.json();
  assert.equal(res.status, 200, JSON.stringify(body));
  assert.equal(body.choices[0].message.content, want.text);
  assert.equal(body.usage.completion_tokens, want.tokens.length);
  assert.deepEqual(body.tabnode.nodes, [peer]);
  console.log(`answer ${JSON.stringify(body.choices[0].message.content)} (${body.usage.completion_tokens} tokens)`);
  await page.close();
});

test('one native node serves SmolLM2 and Qwen; the OpenAI Python client streams Qwen\'s answer', { timeout: SLOW }, async () => {
  const node = await startNode(net.relay, { serve: [MODEL_FILE, QWEN] });
  try {
    const prompt = 'What is the capital of France?';
    const want = localAnswer(prompt, 16, QWEN);
    await waitFor('the relay to list both models of the node', async () => {
      const list = await (await fetch(`${net.relay.url}/v1/models`)).json();
      const nodes = (id) => list.data?.find((m) => m.id === id)?.tabnode?.nodes ?? 0;
      return nodes(ID) >= 1 && nodes('smollm2-135m-instruct') >= 1;
    }, 120_000, 200);
    const { stdout } = await promisify(execFile)(PYTHON, [
      join(ROOT, 'e2e', 'openai_client.py'), `${net.relay.url}/v1`, ID, prompt, '16',
    ], { encoding: 'utf8' });
    const got = JSON.parse(stdout);
    assert.ok(got.models.includes(ID) && got.models.includes('smollm2-135m-instruct'), stdout);
    assert.match(got.text, /Paris/, stdout);
    assert.equal(got.text, want.text);
    assert.ok(got.chunks >= 2, `streamed in pieces: ${stdout}`);
    assert.ok(['stop', 'length'].includes(got.finish), stdout);
    console.log(`python client: ${JSON.stringify(got.text)} in ${got.chunks} chunks`);
  } finally {
    await node.kill();
  }
});

test('a tab serves Gemma 3 270M, a base model, to /v1/completions on its CPU engine, with the native tokens', { timeout: SLOW }, async () => {
  const GEMMA = 'gemma-3-270m-q4_k_m.gguf';
  const prompt = 'The three primary colors are';
  const want = localAnswer(prompt, MAX_TOKENS, GEMMA, { chat: false });
  assert.match(want.text, /red/, `the native answer: ${JSON.stringify(want.text)}`);
  const { page } = await openTab(net.browser, net.relay.url, null, { model: GEMMA });
  await page.waitForFunction(() => ['ready', 'failed'].includes(window.tabnode?.model?.status), null, { timeout: SLOW });
  const model = await page.evaluate(() => window.tabnode.model);
  assert.equal(model.status, 'ready', `${model.error}\n${page.logs.slice(-20).join('\n')}`);
  assert.equal(model.ready.model.architecture, 'gemma3');
  assert.equal(model.ready.engine.device, 'cpu-quantized-simd128');
  // Both engines timed (the WebGPU one runs gemma3 too); the CPU is the
  // faster where WebGPU is a software adapter.
  assert.match(model.ready.engine.reason, /faster on this machine: cpu [\d.]+ ms\/token, webgpu [\d.]+ ms\/token/);
  console.log(`tab: ${JSON.stringify(model.ready.engine)}, load ${(model.ready.load_ms / 1000).toFixed(1)} s`);
  const peer = await page.evaluate(() => window.tabnode.peerId);
  await waitFor('the relay to list the tab\'s Gemma', async () => {
    const list = await (await fetch(`${net.relay.url}/v1/models`)).json();
    return list.data?.some((m) => m.id === 'gemma-3-270m' && m.tabnode?.nodes === 1 && m.tabnode?.chat === false);
  }, 120_000, 200);
  const res = await fetch(`${net.relay.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gemma-3-270m', prompt, max_tokens: MAX_TOKENS, temperature: 0 }),
  });
  const body = await res.json();
  assert.equal(res.status, 200, JSON.stringify(body));
  assert.equal(body.choices[0].text, want.text);
  assert.deepEqual(body.tabnode.nodes, [peer]);
  console.log(`gemma in the tab: ${JSON.stringify(body.choices[0].text)}`);
  await page.close();
});

test('a tab without ?model picks the largest chat model that fits its memory', async () => {
  const models = await (await fetch(`${net.relay.url}/api/models`)).json();
  const chat = models.filter((m) => m.catalog?.chat);
  assert.ok(chat.length >= 2, JSON.stringify(models));
  const choice = async (memory) => {
    const { page } = await openTab(net.browser, net.relay.url, null, { model: 'auto', memory });
    await page.waitForFunction(() => window.tabnode?.model?.choice, null, { timeout: 60_000 });
    const c = await page.evaluate(() => window.tabnode.model.choice);
    await page.close();
    return c;
  };
  // 300 MiB: SmolLM2 (234 MiB on the CPU) and nothing larger.
  const small = await choice(300);
  assert.equal(small.file, MODEL_FILE, JSON.stringify(small));
  assert.match(small.reason, /largest chat model that fits 300 MiB \(\?memory=300\)/);
  // The browser's own budget (a quarter of navigator.deviceMemory, at
  // most 2 GiB): the largest chat model of the catalog within it.
  const budget = await (async () => {
    const { page } = await openTab(net.browser, net.relay.url, null, { model: false });
    const gib = await page.evaluate(() => navigator.deviceMemory ?? 4);
    await page.close();
    return Math.min(gib * 1024 / 4, 2048) * 2 ** 20;
  })();
  const want = chat.filter((m) => m.catalog.memory.cpu <= budget).sort((a, b) => b.catalog.params - a.catalog.params)[0];
  const auto = await choice(null);
  assert.equal(auto.file, want.file, JSON.stringify(auto));
  if (budget >= 1024 * 2 ** 20) assert.notEqual(auto.file, MODEL_FILE, 'a larger model than SmolLM2 fits this machine');
  // No chat model fits: the smallest, said so.
  const tiny = await choice(10);
  assert.equal(tiny.file, MODEL_FILE);
  assert.match(tiny.reason, /no chat model fits 10 MiB/);
});

test('a ?model= the relay does not serve fails with a clear error', async () => {
  const { page } = await openTab(net.browser, net.relay.url, null, { model: 'no-such-model' });
  await page.waitForFunction(() => ['ready', 'failed'].includes(window.tabnode?.model?.status), null, { timeout: 60_000 });
  const model = await page.evaluate(() => window.tabnode.model);
  assert.equal(model.status, 'failed');
  assert.match(model.error, /serves no model matching "no-such-model" \(it serves: .*SmolLM2-135M-Instruct\.Q4_1\.gguf/);
  await page.close();
});
