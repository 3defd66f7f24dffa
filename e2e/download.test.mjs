// A tab's model download: resumed where a broken connection left it (in
// the same visit, and from the parts saved by an earlier one), checked
// against the catalog's size and SHA-256 (a file that differs is refused
// and nothing of it is kept), and the page's picker of what the tab serves.
// The breaks are real: a proxy between the tab and the relay cuts the TCP
// connection in the middle of the file's body.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { useNetwork, openTab, MODEL_FILE, MODELS_DIR } from './harness.mjs';

// The worker's saved part size (tabnode_core::download::PART).
const PART = 16 << 20;

const net = useNetwork();

/**
 * An HTTP proxy to the relay that logs every model request and, while
 * `cuts` is above zero, breaks a model body after `cutAfter` bytes (the
 * connection closed mid-body); with `refuse` (set at the cut by
 * `refuseAfterCut`), model requests get a 404.
 */
async function startProxy(target, { cutAfter }) {
  const proxy = { log: [], cuts: 0, refuse: false, refuseAfterCut: false };
  const server = http.createServer((req, res) => {
    const model = req.url.startsWith('/models/');
    const entry = { url: req.url, range: req.headers.range ?? null };
    if (model) proxy.log.push(entry);
    if (model && proxy.refuse) {
      entry.status = 404;
      res.writeHead(404).end('refused by the test');
      return;
    }
    const up = http.request(
      { host: '127.0.0.1', port: new URL(target).port, method: req.method, path: req.url, headers: req.headers },
      (ur) => {
        entry.status = ur.statusCode;
        res.writeHead(ur.statusCode, ur.headers);
        if (!(model && proxy.cuts > 0 && ur.statusCode < 300)) {
          ur.pipe(res);
          return;
        }
        proxy.cuts -= 1;
        let sent = 0;
        ur.on('data', (chunk) => {
          if (sent >= cutAfter) return;
          const part = chunk.subarray(0, cutAfter - sent);
          sent += part.length;
          if (sent < cutAfter) {
            res.write(part);
            return;
          }
          entry.cutAt = sent;
          if (proxy.refuseAfterCut) proxy.refuse = true;
          res.write(part, () => {
            ur.destroy();
            res.socket.destroy();
          });
        });
      },
    );
    up.on('error', () => res.socket?.destroy());
    req.pipe(up);
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  proxy.url = `http://127.0.0.1:${server.address().port}`;
  proxy.close = () => new Promise((ok) => { server.closeAllConnections(); server.close(ok); });
  return proxy;
}

async function modelState(page, timeout = 120_000) {
  await page.waitForFunction(() => ['ready', 'failed'].includes(window.tabnode?.model?.status), null, { timeout });
  return page.evaluate(() => ({ ...window.tabnode.model, ready: window.tabnode.model.ready ?? null }));
}

/** The model's cache entry and saved parts, as the tab's storage holds them. */
function stored(page, file) {
  return page.evaluate(async (file) => {
    const url = new URL(`/models/${file}`, location.href).href;
    const whole = await (await caches.open('tabnode-models-v1')).match(url);
    const parts = await (await caches.open('tabnode-partial-v1')).keys();
    return { whole: whole ? (await whole.arrayBuffer()).byteLength : null, parts: parts.map((r) => r.url) };
  }, file);
}

test('a broken model download resumes where it stopped, in the same visit', { timeout: 300_000 }, async () => {
  const listed = (await (await fetch(`${net.relay.url}/api/models`)).json()).find((m) => m.file === MODEL_FILE);
  const size = listed.bytes;
  // The page learns the catalog's pin of the file here.
  const file = readFileSync(join(MODELS_DIR, MODEL_FILE));
  assert.deepEqual([listed.catalog.bytes, listed.catalog.sha256], [file.length, createHash('sha256').update(file).digest('hex')]);
  const proxy = await startProxy(net.relay.url, { cutAfter: 40 << 20 });
  try {
    proxy.cuts = 1;
    const { page, context } = await openTab(net.browser, proxy.url, null, { model: true });
    const model = await modelState(page);
    assert.equal(model.status, 'ready', `${model.error}\n${page.logs.slice(-20).join('\n')}`);
    assert.equal(model.resumes, 1, 'one resume');
    const [first, second, ...rest] = proxy.log;
    assert.deepEqual(rest, [], JSON.stringify(proxy.log));
    assert.equal(first.range, null);
    assert.equal(first.cutAt, 40 << 20);
    // Taken up from the bytes held (all that arrived before the break),
    // not from the start.
    const from = Number(/^bytes=(\d+)-$/.exec(second.range)?.[1]);
    assert.ok(from > 0 && from <= 40 << 20, JSON.stringify(second));
    assert.equal(second.status, 206);
    assert.equal(model.ready.downloaded_bytes, size);
    // The whole (verified) file is cached; the parts are gone.
    assert.deepEqual(await stored(page, MODEL_FILE), { whole: size, parts: [] });
    await context.close();
  } finally {
    await proxy.close();
  }
});

test('the next visit takes up the parts a broken download saved', { timeout: 300_000 }, async () => {
  const proxy = await startProxy(net.relay.url, { cutAfter: 40 << 20 });
  try {
    // The break, then the relay out of reach: the load fails, and the
    // whole parts that arrived before the break stay saved (the browser
    // drops what it buffered but the worker had not read when the
    // connection broke: at least the first part of the 40 MiB).
    proxy.cuts = 1;
    proxy.refuseAfterCut = true;
    const { page, context } = await openTab(net.browser, proxy.url, null, { model: true });
    const failed = await modelState(page);
    assert.equal(failed.status, 'failed');
    assert.match(failed.error, /HTTP 404/);
    const saved = await stored(page, MODEL_FILE);
    assert.equal(saved.whole, null);
    const parts = saved.parts.length;
    assert.ok(parts >= 1 && parts <= 2, JSON.stringify([saved, proxy.log]));
    // The next visit asks for the rest only.
    proxy.refuse = false;
    proxy.refuseAfterCut = false;
    proxy.log.length = 0;
    await page.reload();
    const model = await modelState(page);
    assert.equal(model.status, 'ready', model.error);
    assert.deepEqual(proxy.log.map((e) => [e.range, e.status]), [[`bytes=${parts * PART}-`, 206]]);
    assert.deepEqual((await stored(page, MODEL_FILE)).parts, []);
    await context.close();
  } finally {
    await proxy.close();
  }
});

test('a download that is not the catalog\'s file is refused with a clear error, and nothing of it kept', { timeout: 300_000 }, async () => {
  const context = await net.browser.newContext();
  // The page learns the pin from /api/models: give it another hash.
  const wrong = 'ab'.repeat(32);
  await context.route('**/api/models', async (route) => {
    const res = await route.fetch();
    const models = await res.json();
    for (const m of models) if (m.catalog) m.catalog.sha256 = wrong;
    await route.fulfill({ response: res, json: models });
  });
  const { page } = await openTab(net.browser, net.relay.url, context, { model: true });
  const model = await modelState(page);
  assert.equal(model.status, 'failed');
  assert.match(model.error, new RegExp(`sha256 [0-9a-f]{64}, the catalog pins ${wrong}; the file is not used`));
  assert.deepEqual(await stored(page, MODEL_FILE), { whole: null, parts: [] });
  // A malformed pin is refused before anything is fetched.
  const bad = await page.evaluate(() => window.tabnode.node.loadModel('/models/x.gguf', undefined, undefined, undefined, { bytes: 1, sha256: 'xyz' }).then(() => null, (e) => e.message));
  assert.match(bad, /check: not a sha256 \(64 hex digits\): "xyz"/);
  await context.close();
});

test('the page\'s picker lists what the relay serves and reloads with the visitor\'s choice', { timeout: 120_000 }, async () => {
  const models = await (await fetch(`${net.relay.url}/api/models`)).json();
  const { page, context } = await openTab(net.browser, net.relay.url, null, { model: false });
  await page.waitForFunction((n) => document.querySelectorAll('#model-pick option').length === n + 2, models.length);
  const options = await page.$$eval('#model-pick option', (os) => os.map((o) => [o.value, o.textContent]));
  assert.equal(options[0][0], '');
  assert.match(options[0][1], /^automatic \(.+\)$/);
  assert.deepEqual(options[1], ['off', 'none: relay traffic and proofs only']);
  for (const m of models) {
    const o = options.find(([v]) => v === m.file);
    assert.ok(o, m.file);
    if (m.catalog) assert.ok(o[1].startsWith(`${m.catalog.title} · `), o[1]);
  }
  assert.equal(await page.$eval('#model-pick', (s) => s.value), 'off');
  const peer = await page.evaluate(() => window.tabnode.peerId);
  await Promise.all([page.waitForURL(/model=SmolLM2/), page.selectOption('#model-pick', MODEL_FILE)]);
  assert.equal(new URL(page.url()).searchParams.get('model'), MODEL_FILE);
  await page.waitForFunction(() => window.tabnode?.model?.choice, null, { timeout: 60_000 });
  assert.equal(await page.evaluate(() => window.tabnode.model.choice.file), MODEL_FILE);
  assert.equal(await page.$eval('#model-pick', (s) => s.value), MODEL_FILE);
  await page.waitForFunction(() => window.tabnode?.peerId);
  assert.equal(await page.evaluate(() => window.tabnode.peerId), peer, 'the tab keeps its identity');
  await context.close();
});
