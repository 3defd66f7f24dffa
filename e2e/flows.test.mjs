// The flow editor (/flows.html, issue #15) in a real browser: a flow built
// with the editor's own UI (nodes dragged from the palette, wires drawn
// between their ports, a parameter set) runs on the network and every box
// reaches `done` with its output; Python runs in the tab's opaque-origin
// sandbox: `python-calc` computes 2**100 exactly, the code cannot open the
// tab's IndexedDB, and code past its time limit is stopped; and a node tab
// whose visitor opted in runs an API client's Python step.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  useNetwork, startNode, waitFor, localAnswer, openTab,
} from './harness.mjs';

let node;

const net = useNetwork({
  setUp: async (net) => {
    node = net.own(await startNode(net.relay, { serve: true }));
    await waitFor('a model on the network', async () => {
      const body = await (await fetch(`${net.relay.url}/v1/models`)).json();
      return body.data?.length > 0;
    }, 60_000, 200);
  },
});

async function openEditor() {
  const page = await net.browser.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  await page.goto(`${net.relay.url}/flows.html`);
  await page.waitForSelector('body[data-ready="true"]');
  return page;
}

/** The centre of `selector`'s element. */
async function centre(page, selector) {
  const b = await page.locator(selector).boundingBox();
  assert.ok(b, `${selector} is on the page`);
  return { x: b.x + b.width / 2, y: b.y + b.height / 2 };
}

/** A box's Drawflow element, by its flow id. */
const box = (id) => `.drawflow-node:has(.fnode[data-flow-id="${id}"])`;

/** Draws a wire from `from`'s output `out` to `to`'s input `input` (1-based). */
async function connect(page, from, out, to, input) {
  const a = await centre(page, `${box(from)} .outputs .output_${out}`);
  const b = await centre(page, `${box(to)} .inputs .input_${input}`);
  await page.mouse.move(a.x, a.y);
  await page.mouse.down();
  await page.mouse.move((a.x + b.x) / 2, (a.y + b.y) / 2, { steps: 4 });
  await page.mouse.move(b.x, b.y, { steps: 4 });
  await page.mouse.up();
}

/** Runs the flow on the page and waits for its end: the run's id. */
async function runAndWait(page) {
  await page.click('#run');
  await page.waitForFunction(() => /: (done|failed|cancelled) in/.test(document.querySelector('#run-status').textContent)
    || document.querySelector('#run-error').textContent, null, { timeout: 240_000 });
  const status = await page.textContent('#run-status');
  return status.match(/run (run-[0-9a-f]+)/)?.[1];
}

/** Opens `flow` with the page's "Open JSON" and waits until it is drawn. */
async function openFlow(page, flow, name = 'flow.json') {
  const loads = await page.evaluate(() => Number(document.body.dataset.loads ?? 0));
  await page.setInputFiles('#open', { name, mimeType: 'application/json', buffer: Buffer.from(JSON.stringify(flow)) });
  await page.waitForFunction((n) => Number(document.body.dataset.loads) > n, loads);
  assert.deepEqual(Object.keys(await statuses(page)).sort(), Object.keys(flow.nodes).sort());
}

const statuses = (page) => page.$$eval('.fnode', (nodes) => Object.fromEntries(nodes.map((n) => [n.dataset.flowId, n.dataset.status])));

test('a flow built in the editor runs on the network and every box reaches done', async () => {
  const page = await openEditor();
  await page.click('#clear');
  // Four nodes dragged from the palette onto the canvas.
  const canvas = await page.locator('#canvas').boundingBox();
  const at = (x, y) => ({ targetPosition: { x, y } });
  await page.dragAndDrop('#palette [data-type="input"]', '#canvas', at(20, 40));
  await page.dragAndDrop('#palette [data-type="template"]', '#canvas', at(300, 40));
  await page.dragAndDrop('#palette [data-type="llm"]', '#canvas', at(580, 40));
  await page.dragAndDrop('#palette [data-type="output"]', '#canvas', at(860, 40));
  assert.deepEqual(Object.keys(await statuses(page)).sort(), ['input1', 'llm1', 'output1', 'template1']);
  // A box moved by dragging its header: it lands where it was dropped.
  const before = await page.locator(box('output1')).boundingBox();
  const head = await centre(page, `${box('output1')} .fnode-head strong`);
  await page.mouse.move(head.x, head.y);
  await page.mouse.down();
  await page.mouse.move(head.x - 60, head.y + 220, { steps: 6 });
  await page.mouse.up();
  const moved = await page.locator(box('output1')).boundingBox();
  assert.ok(Math.abs(moved.y - before.y - 220) < 4 && Math.abs(moved.x - before.x + 60) < 4, `${JSON.stringify(before)} → ${JSON.stringify(moved)}`);
  assert.ok(moved.y < canvas.y + canvas.height, 'still on the canvas');
  // Wires: input.question → template.question → llm.prompt → output.answer.
  await connect(page, 'input1', 1, 'template1', 1);
  await connect(page, 'template1', 1, 'llm1', 1);
  await connect(page, 'llm1', 1, 'output1', 1);
  // Parameters: a short answer, and the template's text.
  await page.fill(`${box('llm1')} [data-field="max_tokens"]`, '8');
  await page.fill(`${box('template1')} [data-field="text"]`, 'Answer in one word: {{question}}');
  const question = 'What is the capital of France?';
  await page.fill('#run-inputs [data-input="question"]', question);
  const runId = await runAndWait(page);
  assert.equal(await page.textContent('#run-error'), '');
  assert.match(await page.textContent('#run-status'), /: done in \d+ ms/);
  assert.deepEqual(await statuses(page), { input1: 'done', template1: 'done', llm1: 'done', output1: 'done' });
  // The llm box shows the model's own answer, the node that served it and
  // its time; the run's output is the same text.
  const want = localAnswer(`Answer in one word: ${question}`, 8).text;
  const llmOut = await page.textContent(`${box('llm1')} .fnode-out`);
  assert.equal(llmOut, `text: ${want}`);
  const llmStatus = await page.textContent(`${box('llm1')} .fnode-status`);
  assert.match(llmStatus, /^done · \d+ ms · on /);
  assert.ok(llmStatus.includes(node.peerId.slice(-4)), llmStatus);
  assert.equal(await page.textContent('#outputs [data-output="answer"]'), want);
  // The relay kept the same run.
  const record = await (await fetch(`${net.relay.url}/v1/flows/runs/${runId}`)).json();
  assert.equal(record.status, 'done');
  assert.deepEqual(record.nodes.llm1.peers, [node.peerId]);
  assert.deepEqual(record.flow.nodes.llm1.inputs, { prompt: ['template1', 'text'] });
  assert.equal(record.flow.nodes.llm1.params.max_tokens, 8);
  // Saved and opened again, the flow is the same.
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#save')]);
  const saved = JSON.parse(await (await download.createReadStream()).toArray().then((c) => Buffer.concat(c).toString()));
  assert.deepEqual(saved.nodes, record.flow.nodes);
  await page.click('#clear');
  await openFlow(page, saved);
  assert.equal(await page.locator('#canvas svg.connection').count(), 3, 'the three wires are drawn again');
  // Model output is text, never HTML.
  assert.equal(await page.$$eval('.fnode-out *', (e) => e.length), 0);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('python runs in the opaque-origin sandbox: exact, walled off from the tab, and stopped at its limit', async () => {
  const page = await openEditor();
  // The tab's own IndexedDB holds a secret.
  await page.evaluate(() => new Promise((resolve, reject) => {
    const open = indexedDB.open('tabnode-secret', 1);
    open.onupgradeneeded = () => open.result.createObjectStore('keys');
    open.onsuccess = () => {
      const tx = open.result.transaction('keys', 'readwrite');
      tx.objectStore('keys').put('s3cret', 'key');
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
    };
    open.onerror = () => reject(open.error);
  }));
  // python-calc, from the template list: 2**100, exactly.
  await page.selectOption('#template', 'python-calc');
  await page.click('#load-template');
  await page.fill('#run-inputs [data-input="expression"]', '2**100');
  await runAndWait(page);
  assert.equal(await page.textContent('#run-error'), '');
  assert.equal(await page.textContent('#outputs [data-output="result"]'), '1267650600228229401496703205376');
  assert.deepEqual(await statuses(page), { in: 'done', calc: 'done', out: 'done' });

  // Code that tries the tab's IndexedDB and the network, and tells where
  // it runs.
  const code = [
    'import js',
    'print("origin", js.self.origin)',
    'try:',
    '    js.indexedDB.open("tabnode-secret")',
    '    print("indexedDB opened")',
    'except Exception as e:',
    '    print("indexedDB refused:", e)',
    'print("fetch", js.self.fetch)',
    'print(x.upper())',
  ].join('\n');
  const flow = {
    version: 1,
    nodes: {
      in: { type: 'input', params: { names: ['x'] } },
      py: { type: 'python', params: { code, timeout_ms: 20000 }, inputs: { x: ['in', 'x'] } },
      out: { type: 'output', inputs: { said: ['py', 'text'] } },
    },
  };
  await openFlow(page, flow, 'probe.json');
  await page.fill('#run-inputs [data-input="x"]', 'passed in');
  await runAndWait(page);
  const said = await page.textContent('#outputs [data-output="said"]');
  const lines = said.split('\n');
  assert.equal(lines[0], 'origin null', said);
  assert.match(lines[1], /^indexedDB refused: .*SecurityError/, said);
  assert.equal(lines[2], 'fetch None', said);
  assert.equal(lines[3], 'PASSED IN');
  // The secret is still there for the tab itself.
  const secret = await page.evaluate(() => new Promise((resolve) => {
    const open = indexedDB.open('tabnode-secret', 1);
    open.onsuccess = () => {
      const get = open.result.transaction('keys').objectStore('keys').get('key');
      get.onsuccess = () => resolve(get.result);
    };
  }));
  assert.equal(secret, 's3cret');

  // Past its limit, the code is stopped and its node fails; the next job
  // runs in a fresh worker.
  flow.nodes.py.params = { code: 'while True:\n    pass', timeout_ms: 1500 };
  await openFlow(page, flow, 'loop.json');
  await page.fill('#run-inputs [data-input="x"]', 'x');
  await runAndWait(page);
  assert.match(await page.textContent('#run-status'), /: failed in/);
  assert.match(await page.textContent(`${box('py')} .fnode-status`), /^failed · \d+ ms · python: the code ran past its time limit \(1500 ms\)/);
  assert.equal((await statuses(page)).out, 'skipped');
  await page.selectOption('#template', 'python-calc');
  await page.click('#load-template');
  await page.fill('#run-inputs [data-input="expression"]', '7*6');
  await runAndWait(page);
  assert.equal(await page.textContent('#outputs [data-output="result"]'), '42');
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('a tab that opted in runs the Python step of an API request', async () => {
  const { page, context } = await openTab(net.browser, net.relay.url, null, { python: true });
  const peer = await page.evaluate(() => window.tabnode.peerId);
  await waitFor('the tab registered as a Python runner', async () => {
    const listing = await net.relay.network();
    return listing.nodes.some((n) => n.peer_id === peer && n.capabilities?.python === true);
  }, 30_000, 100);
  // An API client (this test), no tab of its own: python-calc on the network.
  const r = await fetch(`${net.relay.url}/v1/flows/run`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ template: 'python-calc', inputs: { expression: '2**100' }, stream: false }),
  });
  const record = await r.json();
  assert.equal(r.status, 200, JSON.stringify(record));
  assert.equal(record.status, 'done', JSON.stringify(record));
  assert.equal(record.outputs.result, '1267650600228229401496703205376');
  assert.deepEqual(record.nodes.calc.peers, [peer]);
  await page.waitForFunction(() => window.tabnode.python.done === 1);
  assert.match(await page.textContent('#python-status'), /^on · 1 steps run/);
  // Unticked, the tab registers without it and gets no more Python.
  await page.uncheck('#python-optin');
  await waitFor('the tab registered without Python', async () => {
    const listing = await net.relay.network();
    return listing.nodes.some((n) => n.peer_id === peer && n.capabilities?.python === false);
  }, 30_000, 100);
  const again = await (await fetch(`${net.relay.url}/v1/flows/run`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ template: 'python-calc', inputs: { expression: '1+1' }, stream: false }),
  })).json();
  assert.equal(again.status, 'failed');
  assert.match(again.nodes.calc.error, /^no tab runs Python for others now/);
  await context.close();
});
