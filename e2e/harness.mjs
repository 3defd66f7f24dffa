// Test harness: starts the real relay and native node binaries and drives
// Debian's Chromium (with WebGPU on SwiftShader) through playwright-core.
import { spawn, execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir, homedir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { before, after, beforeEach, afterEach } from 'node:test';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const TARGET = process.env.CARGO_TARGET_DIR || join(homedir(), '.cache/tabnode/target');
export const BIN = join(TARGET, 'debug');
export const MODELS_DIR = process.env.TABNODE_MODELS_DIR || join(homedir(), '.cache/tabnode/models');
export const MODEL_FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf';

/** Polls `fn` until it returns a truthy value; fails after `timeoutMs`. */
export async function waitFor(what, fn, timeoutMs = 30_000, everyMs = 50) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

// The processes the harness started and the pages openTab opened: a
// failing test prints the end of their logs (see `useNetwork`).
const spawned = new Set();
const pages = new Set();

function spawnLogged(name, cmd, args, env = {}) {
  if (!existsSync(cmd)) throw new Error(`${cmd} is missing: run scripts/build.sh`);
  const proc = spawn(cmd, args, {
    cwd: ROOT,
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info,webrtc=warn,webrtc_ice=error,webrtc_sctp=error,webrtc_dtls=error', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  proc.output = '';
  const keep = (d) => {
    proc.output += d.toString();
    if (proc.output.length > 200_000) proc.output = proc.output.slice(-100_000);
    if (process.env.TABNODE_E2E_VERBOSE) process.stderr.write(`[${name}] ${d}`);
  };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  proc.exited = new Promise((r) => proc.on('exit', (code, signal) => {
    proc.exitedAt = Date.now();
    r({ code, signal });
  }));
  proc.logName = name;
  spawned.add(proc);
  return proc;
}

/**
 * Starts the relay. `ports` = { http, tcp, quic, webrtc } (0 = any);
 * `dataDir` keeps identity and certificate across restarts; `args` adds
 * flags.
 */
export async function startRelay({ dataDir, ports = {}, args = [] } = {}) {
  dataDir ??= mkdtempSync(join(tmpdir(), 'tabnode-e2e-'));
  const bootFile = join(dataDir, `bootstrap-${Date.now()}.json`);
  const proc = spawnLogged('relay', join(BIN, 'tabnode-relay'), [
    '--http', `127.0.0.1:${ports.http ?? 0}`,
    '--tcp-port', String(ports.tcp ?? 0),
    '--quic-port', String(ports.quic ?? 0),
    '--webrtc-port', String(ports.webrtc ?? 0),
    '--data-dir', join(dataDir, 'relay'),
    '--site-root', ROOT,
    '--models-dir', MODELS_DIR,
    '--bootstrap-file', bootFile,
    // Small proofs: SwiftShader would spend seconds of each test on n = 2048.
    '--pof-max-n', '256',
    // Every request of the tests comes from 127.0.0.1: no hourly
    // allowance for anonymous requests (tests/accounts.rs covers it).
    '--anonymous-per-hour', '0',
    ...args,
  ]);
  const url = await waitFor('the relay to be ready', () => {
    if (proc.exitCode !== null) throw new Error(`relay exited: ${proc.output}`);
    const m = proc.output.match(/tabnode relay ready: open (https?:\/\/[^\s]+)\//);
    return m && existsSync(bootFile) ? m[1] : null;
  });
  const bootstrap = JSON.parse(readFileSync(bootFile, 'utf8'));
  const port = (addr, proto) => Number(addr.split('/')[addr.split('/').indexOf(proto) + 1]);
  return {
    proc,
    url,
    dataDir,
    bootFile,
    bootstrap,
    peerId: bootstrap.peer_id,
    ports: {
      http: Number(new URL(url).port),
      tcp: port(bootstrap.tcp[0], 'tcp'),
      quic: port(bootstrap.quic[0], 'udp'),
      webrtc: port(bootstrap.webrtc_direct[0], 'udp'),
    },
    async network() {
      const res = await fetch(`${url}/api/network`);
      if (!res.ok) throw new Error(`/api/network: HTTP ${res.status}`);
      return res.json();
    },
    async kill() {
      proc.kill('SIGKILL');
      await proc.exited;
    },
  };
}

/** Starts a native node that joins `relay` over TCP; with `serve`, it
 * serves the model (on the CPU). */
export async function startNode(relay, { serve = false, embed = false } = {}) {
  // serve: false (no model), true (the default model) or a list of files;
  // embed: also serve embeddings with all-MiniLM-L6-v2.
  const dir = mkdtempSync(join(tmpdir(), 'tabnode-node-'));
  const files = serve === true ? [MODEL_FILE] : (serve || []);
  const proc = spawnLogged('node', join(BIN, 'tabnode-node'), [
    '--bootstrap-file', relay.bootFile,
    '--key-file', join(dir, 'identity.key'),
    '--prover', 'cpu',
    ...files.flatMap((f) => ['--model', join(MODELS_DIR, f)]),
    ...(embed ? ['--embed', join(MODELS_DIR, 'all-minilm-l6-v2')] : []),
  ]);
  const peerId = await waitFor('the node peer id', () => {
    if (proc.exitCode !== null) throw new Error(`node exited: ${proc.output}`);
    return proc.output.match(/tabnode node (\S+) joining/)?.[1];
  });
  return {
    proc,
    peerId,
    async kill() {
      proc.kill('SIGKILL');
      await proc.exited;
    },
  };
}

/** Starts a native node (`examples/failing_node.rs`) that serves the real
 * model but reports a failure after `after` tokens of every request. */
export async function startFailingNode(relay, after) {
  const proc = spawnLogged('failing-node', join(BIN, 'examples', 'failing_node'), [
    relay.bootFile, join(MODELS_DIR, MODEL_FILE), String(after),
  ]);
  const peerId = await waitFor('the failing node peer id', () => {
    if (proc.exitCode !== null) throw new Error(`failing node exited: ${proc.output}`);
    return proc.output.match(/tabnode node (\S+) joining/)?.[1];
  }, 60_000);
  return {
    proc,
    peerId,
    async kill() {
      proc.kill('SIGKILL');
      await proc.exited;
    },
  };
}

/**
 * Sends one request to `peer` through the relay from a fresh native peer
 * (not the relay), as any peer could: `spec` is `echo`, `pof-challenge:N`,
 * `pof-open`, `infer` or `infer-cancel`. Returns the answer as JSON
 * (`{kind: 'error', code, message}`, `{kind: 'echo', bytes}`, or
 * `{kind: 'other', debug}`).
 */
export function probe(relay, peer, spec) {
  const bin = join(BIN, 'examples', 'probe');
  if (!existsSync(bin)) throw new Error(`${bin} is missing: run cargo test (it builds the examples)`);
  return new Promise((resolvePromise, reject) => {
    execFile(bin, [relay.bootFile, peer, spec], { encoding: 'utf8', timeout: 90_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`probe ${spec}: ${err.message}\n${stderr.slice(-2000)}`));
      else resolvePromise(JSON.parse(stdout.trim().split('\n').pop()));
    });
  });
}

/** What the model answers locally to a chat `prompt` (greedy), with the
 * native engine: the reference for answers that come over the network. */
export function localAnswer(prompt, maxTokens, file = MODEL_FILE, { chat = true } = {}) {
  // chat: the prompt as a user message in the model's template; false: the
  // text continued as it is (what /v1/completions does).
  const out = execFileSync(join(BIN, 'tabnode-node'), [
    'generate', '--model', join(MODELS_DIR, file), ...(chat ? ['--chat'] : []),
    '--prompt', prompt, '--max-tokens', String(maxTokens), '--json',
  ], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  return JSON.parse(out);
}

/** Launches Debian's Chromium (`args`: more command-line flags). */
export async function launchBrowser(args = []) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--enable-unsafe-webgpu',
      '--no-sandbox',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      ...args,
    ],
  });
}

/**
 * Opens the site in a new browser context (its own storage, so its own
 * identity, like a separate browser) and waits until the tab's node holds a
 * circuit reservation. With `{ model: true }` the page also loads the model.
 */
export async function openTab(browser, url, context, { model = false, embed = false, backend = null, threads = null, kernels = null, memory = null, python = false } = {}) {
  // model: false (none), true (the default model, SmolLM2), 'auto' (the
  // page's own choice by memory, `memory` MiB if given), or a file name;
  // embed: also the relay's sentence-embedding model (true: where the page
  // chooses; 'cpu' or 'webgpu': there).
  context ??= await browser.newContext();
  const page = await context.newPage();
  page.logs = [];
  page.on('console', (m) => {
    page.logs.push(`${m.type()}: ${m.text()}`);
    if (process.env.TABNODE_E2E_VERBOSE) process.stderr.write(`[tab] ${m.text()}\n`);
  });
  page.on('pageerror', (e) => page.logs.push(`pageerror: ${e.message}${process.env.TABNODE_E2E_VERBOSE ? `\n${e.stack}` : ''}`));
  pages.add(page);
  page.on('close', () => pages.delete(page));
  const query = new URLSearchParams();
  // A tab loads the model only when the test asks.
  if (!model) query.set('model', 'off');
  else if (model === true) query.set('model', MODEL_FILE);
  else if (model !== 'auto') query.set('model', model);
  // The embedding model too only when the test asks (`embed: true`).
  query.set('embed', embed ? 'on' : 'off');
  if (typeof embed === 'string') query.set('embed_backend', embed);
  if (memory) query.set('memory', String(memory));
  if (backend) query.set('backend', backend);
  if (threads) query.set('threads', String(threads));
  if (kernels) query.set('kernels', kernels);
  // python: the tab runs other people's flows' Python steps.
  query.set('python', python ? 'on' : 'off');
  if (process.env.TABNODE_E2E_LOG) query.set('log', process.env.TABNODE_E2E_LOG);
  await page.goto(`${url}/?${query}`);
  await waitForReachable(page);
  return { page, context };
}

export async function waitForReachable(page, timeoutMs = 60_000) {
  try {
    await page.waitForFunction(() => window.tabnode?.status === 'reachable', null, { timeout: timeoutMs });
  } catch (e) {
    throw new Error(`tab never became reachable: ${e.message}\n${page.logs.slice(-30).join('\n')}`);
  }
  return page.evaluate(() => window.tabnode.peerId);
}

/** Asks the tab to echo `size` pseudo-random bytes off `peer` and checks them. */
export async function echoFromTab(page, peer, size) {
  return page.evaluate(async ({ peer, size }) => {
    const data = new Uint8Array(size);
    let x = 0x9e3779b9;
    for (let i = 0; i < size; i++) {
      x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
      data[i] = x & 0xff;
    }
    const t0 = performance.now();
    const back = await window.tabnode.node.echo(peer, data);
    const ms = performance.now() - t0;
    let same = back.length === data.length;
    for (let i = 0; same && i < size; i++) same = back[i] === data[i];
    return { same, length: back.length, ms };
  }, { peer, size });
}

/**
 * Registers the file's `before`/`after` hooks for a relay (started with
 * `relay` = startRelay's options) and, with `browser`, a headless Chromium.
 * Returns the live handles as `net.relay` and `net.browser` (a test that
 * restarts the relay assigns `net.relay`); `net.own(x)` makes `after` kill
 * or close `x` (a node, a server: anything with `kill()` or `close()`), and
 * `setUp(net)` runs after the relay and browser are up.
 */
export function useNetwork({ relay = {}, browser = true, setUp = null } = {}) {
  const owned = [];
  const net = {
    relay: null,
    browser: null,
    own(x) {
      owned.push(x);
      return x;
    },
  };
  before(async () => {
    net.relay = await startRelay(relay);
    if (browser) net.browser = await launchBrowser();
    if (setUp) await setUp(net);
  });
  // A failing test prints what the processes and tabs it ran logged last
  // (CI keeps only the test output): the relay's view of who registered,
  // proved and served is what explains a request that found no node.
  let started = 0;
  beforeEach(() => {
    started = Date.now();
  });
  afterEach((t) => {
    if (t.passed) return;
    const tail = (text, lines) => text.split('\n').slice(-lines).join('\n');
    const out = [`--- logs of the processes and tabs of the failed test "${t.name}"`];
    for (const proc of spawned) {
      if (proc.exitedAt && proc.exitedAt < started) continue;
      out.push(`--- ${proc.logName} (pid ${proc.pid}${proc.exitedAt ? ', exited' : ''}), last lines:`, tail(proc.output, 80));
    }
    for (const page of pages) {
      out.push(`--- tab ${page.url()}, last lines:`, page.logs.slice(-40).join('\n'));
    }
    process.stderr.write(`${out.join('\n')}\n`);
  });
  after(async () => {
    await net.browser?.close();
    for (const x of owned.reverse()) await (x.kill ? x.kill() : x.close());
    await net.relay?.kill();
  });
  return net;
}
