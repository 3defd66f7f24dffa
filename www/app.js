// The tabnode page: thin glue around the Rust node (pkg/tabnode_web.js).
// It keeps the identity, finds the relay, starts the node and its compute
// worker, and shows what happens. `window.tabnode` exposes the live state
// (used by the end-to-end tests and handy in the console).
import init, { TabNode } from '/pkg/tabnode_web.js';
import { loadIdentity } from '/identity.js';
import { PythonSandbox } from '/python.js';

const $ = (id) => document.getElementById(id);
const state = {
  peerId: null,
  status: 'starting',
  transport: null,
  circuitAddr: null,
  connects: 0,
  gpu: null,
  gpuError: null,
  peers: [],
  events: [],
  node: null,
  // The model in the worker: status is off | loading | ready | failed.
  model: { status: 'off', phase: null, done: 0, total: 0, ready: null, error: null },
  // The sentence-embedding model beside it (status as the model's) and the
  // texts it embedded for the network.
  embedder: { status: 'off', id: null, ready: null, error: null, batches: 0, texts: 0, ms: 0, device: null },
  // Network generations this tab serves: the last `serving` event.
  serving: null,
  // This tab's account in the relay's ledger.
  points: null,
  // Flows' Python steps this tab runs for others (opted in): on, and the
  // jobs done and failed.
  python: { on: false, done: 0, failed: 0 },
  // This account's API keys (never their secrets, but for the one just
  // made: `createdKey`).
  keys: [],
  createdKey: null,
};
window.tabnode = state;

/** In an iframe (the embed widget's "contribute"), tell the host page how
 * the node does: status and points only, never keys. */
function tellParent() {
  if (window.parent === window) return;
  window.parent.postMessage({
    source: 'tabnode',
    status: state.status,
    model: state.model.status,
    points: state.points?.points ?? null,
    tokens: state.points?.tokens ?? null,
  }, '*');
}
setInterval(tellParent, 2000);

function log(text) {
  const li = document.createElement('li');
  li.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  $('log').prepend(li);
  while ($('log').children.length > 200) $('log').lastChild.remove();
}

function setStatus(status, detail) {
  state.status = status;
  const el = $('status');
  el.dataset.state = status;
  el.textContent = detail ? `${status} (${detail})` : status;
}

function fmtBytes(n) {
  if (!n) return '?';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(n < 10 && i ? 1 : 0)} ${units[i]}`;
}

function onEvent(ev) {
  state.events.push(ev);
  if (state.events.length > 500) state.events.shift();
  switch (ev.type) {
    case 'relay_connected':
      state.transport = ev.transport;
      state.connects += 1;
      setStatus('connected', ev.transport);
      log(`connected to the relay over ${ev.transport}`);
      break;
    case 'reachable':
      state.circuitAddr = ev.addr;
      setStatus('reachable');
      log('circuit reserved: other peers can reach this tab');
      refreshPeers();
      break;
    case 'relay_disconnected':
      state.circuitAddr = null;
      setStatus('disconnected', `retry in ${(ev.retry_in_ms / 1000).toFixed(1)} s`);
      log(`relay lost (${ev.reason}); retrying in ${ev.retry_in_ms} ms`);
      break;
    case 'served':
      log(`served ${ev.bytes} bytes to ${ev.peer.slice(-8)}`);
      break;
    case 'protocol_error':
      log(`closed a bad stream from ${ev.peer.slice(-8)}: ${ev.error}`);
      break;
    case 'loaded':
      $('gpu-status').textContent = 'opening WebGPU…';
      break;
    case 'gpu_ready': {
      const g = ev.gpu;
      state.gpu = g;
      $('gpu-status').textContent = `ready (${g.backend}${g.is_fallback ? ', software fallback' : ''})`;
      $('gpu-adapter').textContent = [g.vendor, g.architecture, g.description].filter(Boolean).join(' / ') || '(not disclosed by the browser)';
      $('gpu-buffer').textContent = fmtBytes(g.limits.max_storage_buffer_binding_size);
      const has = (f) => (g.features.includes(f) ? `${f} ✓` : `${f} ✗`);
      $('gpu-features').textContent = `${has('shader-f16')}, ${has('subgroups')} · ${g.features.length} in all`;
      $('gpu-features').title = g.features.join('\n');
      log('WebGPU adapter open in the worker');
      break;
    }
    case 'gpu_unavailable':
      state.gpuError = ev.reason;
      $('gpu-status').textContent = `unavailable: ${ev.reason}`;
      log(`no WebGPU: ${ev.reason}`);
      break;
    case 'request': {
      const c = ev.request.PofChallenge;
      if (c) log(`Proof-of-FLOPS challenge: ${c.n}×${c.n} matmul, round ${c.round}`);
      break;
    }
    case 'handled': {
      log(`worker answered request ${ev.id} in ${ev.elapsed_ms.toFixed(0)} ms on ${ev.device} (${ev.answer})`);
      const embedded = /^embedded (\d+)$/.exec(ev.answer);
      if (embedded) {
        state.embedder.batches += 1;
        state.embedder.texts += Number(embedded[1]);
        state.embedder.ms += ev.elapsed_ms;
        state.embedder.device = ev.device;
        showEmbedder();
        refreshPoints();
      }
      break;
    }
    case 'embedder_progress':
      Object.assign(state.embedder, { status: 'loading' });
      $('embed-status').textContent = `loading ${state.embedder.id}: ${fmtBytes(ev.done)} of ${fmtBytes(ev.total)}`;
      $('embed-bar').value = ev.total ? ev.done / ev.total : 0;
      break;
    case 'embedder_ready':
      Object.assign(state.embedder, { status: 'ready', ready: ev });
      $('embed-bar').value = 1;
      showEmbedder();
      log(`embedding model ${ev.id} ready (${ev.from_cache ? 'cache' : 'download'})`);
      break;
    case 'embedder_failed':
      Object.assign(state.embedder, { status: 'failed', error: ev.message });
      $('embed-status').textContent = `failed: ${ev.message}`;
      log(`embedding model failed: ${ev.message}`);
      break;
    case 'model_progress': {
      Object.assign(state.model, { status: 'loading', phase: ev.phase, done: ev.done, total: ev.total });
      const pct = ev.total ? ` ${Math.floor((100 * ev.done) / ev.total)}%` : '';
      if (ev.phase === 'resume') state.model.resumes = (state.model.resumes ?? 0) + 1;
      const what = {
        download: `downloading ${fmtBytes(ev.done)} of ${fmtBytes(ev.total)}`,
        resume: `the download broke at ${fmtBytes(ev.done)}; resuming`,
        cache: 'reading from the browser cache',
        load: `loading (${ev.done}/${ev.total})`,
      }[ev.phase] ?? ev.phase;
      $('model-status').textContent = `${what}${ev.phase === 'cache' ? '' : pct}`;
      $('model-bar').value = ev.total ? ev.done / ev.total : 0;
      break;
    }
    case 'model_ready': {
      state.model.status = 'ready';
      state.model.ready = ev;
      const m = ev.model;
      const speed = ev.engine.timings.map((t) => `${t.backend} ${(1000 / t.ms_per_token).toFixed(1)} tokens/s`).join(', ');
      $('model-status').textContent = `ready on ${ev.engine.device} in ${(ev.load_ms / 1000).toFixed(1)} s ${ev.from_cache ? '(from the browser cache)' : `(downloaded ${fmtBytes(ev.downloaded_bytes)})`} · ${ev.engine.reason}${speed ? ` · measured ${speed}` : ''}`;
      $('model-bar').value = 1;
      $('model-name').textContent = `${m.name} · ${m.architecture} · ${(m.parameters / 1e6).toFixed(0)}M parameters · ${m.quantization} · ${fmtBytes(m.file_bytes)} · context ${m.context}`;
      $('try-go').disabled = false;
      log(`model ${m.name} ready (${ev.from_cache ? 'cache' : 'download'})`);
      break;
    }
    case 'model_failed':
      state.model.status = 'failed';
      state.model.error = ev.message;
      $('model-status').textContent = `failed: ${ev.message}`;
      log(`model failed: ${ev.message}`);
      break;
    case 'error':
      log(`worker error: ${ev.message}`);
      break;
    case 'python':
      if (ev.state === 'done') state.python.done += 1;
      else if (ev.state !== 'started') state.python.failed += 1;
      showPython(ev.state === 'started' ? 'running a Python step…' : '');
      break;
    case 'serving':
      state.serving = ev;
      $('serving').textContent = ev.state === 'started'
        ? `generating for request ${ev.request_id}…`
        : `request ${ev.request_id}: ${ev.tokens} tokens (${ev.state})`;
      log(`serving request ${ev.request_id}: ${ev.state} (${ev.tokens} tokens)`);
      if (ev.state !== 'started') refreshPoints();
      break;
    default:
      log(JSON.stringify(ev));
  }
}

/** The tab's balance in the relay's ledger. */
async function refreshPoints() {
  if (!state.peerId) return;
  try {
    const r = await fetch(`/api/ledger/${state.peerId}`);
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const b = await r.json();
    state.points = b;
    $('points').textContent = String(b.points);
    const e = b.earned || {};
    const parts = [
      `earned ${e.tokens ?? 0} for ${b.tokens} tokens served in ${b.requests} requests`,
      `${e.proofs ?? 0} for ${b.proofs} proofs`,
      `${e.uptime ?? 0} for ${b.uptime_minutes} min uptime`,
      `${e.checks ?? 0} for ${b.checks} spot checks run`,
      `spent ${b.spent_points} on ${b.spent_requests} requests (${b.spent_tokens} tokens)`,
      `clawed back ${b.clawed_back_points} for ${b.clawed_back_requests} failed checks`,
    ];
    const s = b.standing;
    const strikes = s ? `strikes ${s.failed}${s.excluded ? ' (excluded from work and points)' : ''}, ${s.passed} checks passed` : 'strikes 0';
    $('account').textContent = `${parts.join(' · ')} · ${strikes}`;
    const list = $('strikes');
    list.replaceChildren(...(b.strikes || []).map((r) => {
      const li = document.createElement('li');
      li.textContent = `${new Date(r.at_ms).toLocaleString()}: request ${r.request_id} (${r.model}, ${r.tokens} tokens), checker ${String(r.checker).slice(-8)}${r.confirmed_by ? ` confirmed by ${String(r.confirmed_by).slice(-8)}` : ''}: ${r.reason ?? 'failed'}`;
      return li;
    }));
    list.hidden = list.children.length === 0;
  } catch (e) {
    $('points').textContent = `unavailable (${e.message})`;
    $('account').textContent = '';
  }
}

async function refreshPeers() {
  if (!state.node || state.status !== 'reachable') return;
  try {
    const peers = await state.node.listPeers();
    state.peers = peers;
    $('peers-online').textContent = String(peers.length);
    const me = peers.find((p) => p.peer_id === state.peerId);
    if (me?.pof?.last) {
      state.pof = me.pof;
      const last = me.pof.last;
      const tally = `${me.pof.passed} passed, ${me.pof.failed} failed, standing ${me.pof.standing}`;
      $('pof').textContent = last.passed
        ? `${last.matmul_gflops.toFixed(2)} GFLOP/s proven exact matmul (n = ${last.n}, sized by ${last.sized_by}; ${tally})`
        : `failed: ${last.reason} (${tally})`;
    }
    const body = $('peers').querySelector('tbody');
    body.replaceChildren(...peers.map((p) => {
      const tr = document.createElement('tr');
      const gpu = p.capabilities?.gpu;
      const cells = [
        p.peer_id === state.peerId ? `${p.peer_id.slice(-12)} (this tab)` : p.peer_id.slice(-12),
        p.kind,
        p.transport,
        gpu ? ([gpu.vendor, gpu.architecture].filter(Boolean).join('/') || gpu.description || gpu.backend) : (p.capabilities?.gpu_error ? 'none' : '—'),
        p.pof?.matmul_gflops != null
          ? `${p.pof.matmul_gflops.toFixed(2)} GFLOP/s (${p.pof.last?.device_class ?? '?'}, standing ${p.pof.standing}${p.pof.valid ? '' : ', not valid'})`
          : '—',
        new Date(p.connected_since_ms).toLocaleTimeString(),
      ];
      for (const c of cells) {
        const td = document.createElement('td');
        td.textContent = c;
        tr.append(td);
      }
      return tr;
    }));
  } catch (e) {
    // The relay may be restarting; the next tick tries again.
  }
}

const MIB = 1 << 20;

/**
 * The memory this tab gives a model: a quarter of the device's
 * (`navigator.deviceMemory`, which Chromium rounds and caps at 8 GiB; 4 GiB
 * where the browser does not say), at most 2 GiB (the workers' wasm memory
 * is 32-bit and holds the file next to its shards). `?memory=MiB` sets it.
 */
function memoryBudget(params) {
  const asked = Number(params.get('memory'));
  if (asked > 0) return { bytes: asked * MIB, why: `?memory=${asked}` };
  const gib = navigator.deviceMemory ?? 4;
  const bytes = Math.min((gib * 1024 * MIB) / 4, 2048 * MIB);
  return { bytes, why: `a quarter of ${gib} GiB${navigator.deviceMemory ? '' : ' (assumed)'}, at most 2 GiB` };
}

/**
 * The model a tab serves when the page does not name one: the largest chat
 * model of the relay's catalog whose memory (the CPU engine's figure, the
 * larger) fits the tab's budget; else the smallest one.
 */
function chooseModel(models, params) {
  const budget = memoryBudget(params);
  const chat = models.filter((m) => m.catalog?.chat).sort((a, b) => a.catalog.params - b.catalog.params);
  const fits = chat.filter((m) => m.catalog.memory.cpu <= budget.bytes);
  const mib = (b) => `${Math.round(b / MIB)} MiB`;
  if (fits.length) {
    const m = fits[fits.length - 1];
    return { pick: m, reason: `the largest chat model that fits ${mib(budget.bytes)} (${budget.why}): ${m.catalog.title} needs ${mib(m.catalog.memory.cpu)}` };
  }
  const m = chat[0] ?? models[0];
  return { pick: m, reason: m ? `no chat model fits ${mib(budget.bytes)} (${budget.why}); the smallest` : null };
}

/** A model of `/api/models` for the picker: its name, size and needs. */
function modelLabel(m) {
  const c = m.catalog;
  if (!c) return `${m.file} · ${fmtBytes(m.bytes)}`;
  return `${c.title} · ${fmtBytes(m.bytes)} · needs ${fmtBytes(c.memory.cpu)}${c.chat ? '' : ' · completion only'}`;
}

/**
 * The visitor's choice of what this tab serves: automatic (the largest
 * chat model that fits), none, or any model the relay serves. Choosing
 * reloads the page with `?model=` (the tab keeps its identity).
 */
function fillPicker(models, params, picked) {
  const sel = $('model-pick');
  const auto = chooseModel(models, params).pick;
  const options = [
    ['', `automatic${auto ? ` (${auto.catalog?.title ?? auto.file})` : ''}`],
    ['off', 'none: relay traffic and proofs only'],
    ...models.map((m) => [m.file, modelLabel(m)]),
  ];
  sel.replaceChildren(...options.map(([value, text]) => {
    const o = document.createElement('option');
    o.value = value;
    o.textContent = text;
    return o;
  }));
  const want = params.get('model');
  sel.value = want === null ? '' : want === 'off' ? 'off' : (picked?.file ?? '');
  sel.onchange = () => {
    const p = new URLSearchParams(location.search);
    if (sel.value) p.set('model', sel.value);
    else p.delete('model');
    location.search = p.toString();
  };
}

/**
 * Picks a model the relay serves and loads it in the worker: the page's
 * `?model=` (a file name, or part of one: `?model=qwen`), else the largest
 * chat model that fits the tab's memory ([`chooseModel`]).
 */
async function loadModel(node) {
  state.model.status = 'loading';
  $('model-status').textContent = 'looking for a model…';
  const res = await fetch('/api/models', { cache: 'no-store' });
  const models = res.ok ? await res.json() : [];
  const params = new URLSearchParams(location.search);
  const want = params.get('model');
  const chosen = want
    ? { pick: models.find((m) => m.file === want) ?? models.find((m) => m.file.toLowerCase().includes(want.toLowerCase())), reason: `?model=${want}` }
    : chooseModel(models, params);
  const pick = chosen.pick;
  fillPicker(models, params, pick);
  state.model.choice = pick ? { file: pick.file, reason: chosen.reason } : null;
  if (!pick) {
    const error = want
      ? `the relay serves no model matching ${JSON.stringify(want)} (it serves: ${models.map((m) => m.file).join(', ') || 'none'})`
      : 'the relay serves no model';
    state.model.status = 'failed';
    state.model.error = error;
    $('model-status').textContent = error;
    return;
  }
  $('model-name').textContent = pick.file;
  $('model-name').title = chosen.reason ?? '';
  try {
    // ?backend=cpu|webgpu forces where the model runs; by default the
    // worker picks the faster. ?threads=N caps the workers the CPU engine
    // splits the model over (default: one per core where the page is
    // cross-origin isolated). ?kernels=rows|lanes forces the WebGPU
    // kernels (default: rows on a software adapter, lanes on a GPU).
    const params = new URLSearchParams(location.search);
    const threads = Number(params.get('threads')) || undefined;
    // The catalog's pin of the file: the worker refuses a download of
    // another size or hash.
    const check = pick.catalog ? { bytes: pick.catalog.bytes, sha256: pick.catalog.sha256 } : undefined;
    await node.loadModel(pick.url, params.get('backend') ?? undefined, threads, params.get('kernels') ?? undefined, check);
  } catch (e) {
    // Reported through the model_failed event as well.
    state.model.error = e.message;
  }
}

/** The embedding model's line: what it is and what it did. */
function showEmbedder() {
  const e = state.embedder;
  if (e.status !== 'ready') return;
  const r = e.ready;
  $('embed-status').title = r.reason;
  $('embed-status').textContent = `${r.id} · ${r.dimensions} dimensions · on ${r.backend === 'webgpu' ? 'WebGPU' : 'the CPU'} · ready in ${(r.load_ms / 1000).toFixed(1)} s ${r.from_cache ? '(from the browser cache)' : `(downloaded ${fmtBytes(r.downloaded_bytes)})`} · ${e.texts} texts embedded for the network in ${e.batches} batches`;
}

/**
 * Loads the relay's sentence-embedding model beside the chat model, so
 * the tab also answers the network's embedding batches: unless the page
 * says `?embed=off` (or `?model=off`, which serves nothing, without
 * `?embed=on`). `?embed_backend=cpu|webgpu` says where it embeds (else the
 * faster on a probe batch).
 */
async function loadEmbedder(node) {
  const params = new URLSearchParams(location.search);
  const want = params.get('embed');
  if (want === 'off' || (want !== 'on' && params.get('model') === 'off')) {
    $('embed-status').textContent = `off (?${want === 'off' ? 'embed' : 'model'}=off)`;
    return;
  }
  const res = await fetch('/api/embedding-models', { cache: 'no-store' }).catch(() => null);
  const models = res?.ok ? await res.json() : [];
  const m = models[0];
  if (!m) {
    $('embed-status').textContent = 'the relay serves no embedding model';
    return;
  }
  Object.assign(state.embedder, { status: 'loading', id: m.id });
  $('embed-status').textContent = `loading ${m.title} (${fmtBytes(m.bytes)})…`;
  try {
    await node.loadEmbedder(m.id, m.url, m.files, params.get('embed_backend') ?? undefined);
  } catch (e) {
    // Reported through the embedder_failed event as well.
    state.embedder.error = e.message;
  }
}

/** The "try it" box: one prompt, streamed answer, stop button. */
function wireTry(node) {
  let running = null;
  $('try-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const text = $('try-prompt').value.trim();
    if (!text || running) return;
    $('try-out').textContent = '';
    $('try-stats').textContent = '';
    $('try-go').disabled = true;
    $('try-stop').disabled = false;
    try {
      running = node.generate({ prompt: { chat: [{ role: 'user', content: text }] }, max_tokens: 256 }, (t) => {
        $('try-out').textContent += t;
      });
      const r = await running.done;
      const tps = r.tokens.length > 1 ? ((r.tokens.length - 1) / (r.decode_ms / 1000)).toFixed(1) : '–';
      $('try-stats').textContent = `${r.prompt_tokens} prompt tokens in ${r.prefill_ms.toFixed(0)} ms · ${r.tokens.length} generated · ${tps} tokens/s · ${r.finish} · ${r.device}`;
    } catch (e) {
      $('try-stats').textContent = `error: ${e.message}`;
    } finally {
      running = null;
      $('try-go').disabled = false;
      $('try-stop').disabled = true;
    }
  });
  $('try-stop').addEventListener('click', () => running?.cancel());
}

/** The account's API keys: made, listed and revoked over the tab's own
 * connection to the relay (its identity is the account). Shown as text. */
function showKeys(list) {
  state.keys = list.keys;
  const rows = list.keys.map((k) => {
    const tr = document.createElement('tr');
    const cells = [k.id, k.label || '—', new Date(k.created_ms).toLocaleString(), k.revoked ? 'revoked' : 'active'];
    for (const text of cells) {
      const td = document.createElement('td');
      td.textContent = text;
      tr.append(td);
    }
    const td = document.createElement('td');
    if (!k.revoked) {
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = 'Revoke';
      b.dataset.revoke = k.id;
      b.addEventListener('click', () => keyAction(null, k.id));
      td.append(b);
    }
    tr.append(td);
    return tr;
  });
  $('keys').querySelector('tbody').replaceChildren(...rows);
}

async function keyAction(create, revoke) {
  $('key-error').textContent = '';
  try {
    const list = await state.node.apiKeys(create ?? undefined, revoke ?? undefined);
    if (list.created) {
      $('key-secret').textContent = list.created;
      $('key-new').hidden = false;
      state.createdKey = list.created;
    }
    showKeys(list);
  } catch (e) {
    $('key-error').textContent = e.message;
  }
}

function wireKeys() {
  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    keyAction($('key-label').value.trim(), null);
  });
}

/** The Python opt-in's line. */
function showPython(now = '') {
  const p = state.python;
  $('python-status').textContent = p.on
    ? now || `on · ${p.done} steps run${p.failed ? `, ${p.failed} failed` : ''}`
    : 'off';
}

/**
 * The opt-in to run other people's flows' Python steps in this tab: a
 * stored choice, `?python=on|off` over it. The code runs in Pyodide inside
 * an opaque-origin sandbox (python.js), never with this page's storage,
 * keys or network.
 */
function wirePython(node) {
  const box = $('python-optin');
  const asked = new URLSearchParams(location.search).get('python');
  let sandbox = null;
  const set = (on) => {
    state.python.on = on;
    box.checked = on;
    if (on) sandbox ??= new PythonSandbox();
    node.setPythonRunner(on ? (job) => sandbox.run(job) : null);
    showPython();
  };
  box.addEventListener('change', () => {
    localStorage.setItem('tabnode-python', box.checked ? 'on' : 'off');
    set(box.checked);
  });
  set((asked ?? localStorage.getItem('tabnode-python')) === 'on');
}

async function bootstrap() {
  for (let attempt = 0; ; attempt++) {
    try {
      const res = await fetch('/api/bootstrap', { cache: 'no-store' });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const boot = await res.json();
      if (!boot.webrtc_direct?.length) throw new Error('the relay offers no webrtc-direct address');
      return boot.webrtc_direct[0];
    } catch (e) {
      const delay = Math.min(500 * 2 ** attempt, 5000);
      setStatus('connecting', `relay unreachable, retry in ${delay / 1000} s`);
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

async function main() {
  await init();
  const identity = await loadIdentity();
  const relay = await bootstrap();
  const parts = relay.split('/');
  $('relay').textContent = `${parts.slice(0, 6).join('/')}/… (${relay.split('/p2p/')[1].slice(-8)})`;
  $('relay').title = relay;
  setStatus('connecting');
  let node;
  try {
    node = TabNode.start({
      relay,
      identity: identity.bytes,
      workerUrl: '/worker/worker.js',
      pledgeMib: 0,
      maxBackoffMs: 4000,
      logLevel: new URLSearchParams(location.search).get('log') ?? undefined,
    }, onEvent);
  } catch (e) {
    // A corrupt stored key is reported and replaced, not silently reused.
    log(`could not start with the stored identity (${e.message}); starting with a new one`);
    await identity.forget();
    node = TabNode.start({ relay, workerUrl: '/worker/worker.js', maxBackoffMs: 4000 }, onEvent);
  }
  await identity.save(node.identity);
  // Closing (or leaving) the page: a signed goodbye makes the relay drop
  // this node at once, instead of when its pings fail on the dead
  // connection. A beacon is the one request a page may still send then.
  addEventListener('pagehide', () => {
    const goodbye = node.goodbye();
    if (goodbye) navigator.sendBeacon('/api/goodbye', JSON.stringify(goodbye));
  });
  state.node = node;
  state.peerId = node.peerId;
  state.slot = identity.slot;
  $('peer-id').textContent = node.peerId;
  setInterval(refreshPeers, 3000);
  refreshPoints();
  setInterval(refreshPoints, 5000);
  wireTry(node);
  wirePython(node);
  wireKeys();
  if (new URLSearchParams(location.search).get('model') === 'off') {
    $('model-status').textContent = 'off (?model=off)';
    fetch('/api/models', { cache: 'no-store' })
      .then((r) => (r.ok ? r.json() : []))
      .then((models) => fillPicker(models, new URLSearchParams(location.search), null))
      .catch(() => {});
    loadEmbedder(node);
  } else {
    // The chat model first: the worker loads one model at a time.
    loadModel(node).finally(() => loadEmbedder(node));
  }
}

main().catch((e) => {
  setStatus('error', e.message);
  log(`fatal: ${e.stack || e}`);
});
