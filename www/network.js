// The live network dashboard (issue #17), all from `/api/stats/stream`: the
// history and every node's row first, then a sample every interval, the
// rows that changed (`nodes`) and a minute's sample each minute;
// EventSource reconnects by itself when the relay restarts. The
// leaderboard is `/api/ledger?limit=10` every few samples, a node's detail
// `/api/nodes/{peer}` with its proofs and spot checks. Charts are uPlot's
// (vendored from npm); the graph is a canvas of our own: the relay in the
// middle, the nodes on rings around it. Everything shown is text set with
// textContent.
import uPlot from '/node_modules/uplot/dist/uPlot.esm.js';

const $ = (id) => document.getElementById(id);
/** Samples kept for the charts: an hour at 2 s; a day of minutes. */
const KEEP = 1800;
const KEEP_MINUTES = 1440;

const state = {
  samples: [],
  minutes: [],
  /** What the charts show: `hour` (the samples) or `day` (the minutes). */
  range: 'hour',
  /** Peer id → its row; `nodes` the rows sorted by peer id. */
  rows: new Map(),
  nodes: [],
  /** Peer id → the time until which its link glows (it earned). */
  glow: new Map(),
  selected: null,
  frameTimes: [],
};
// For tests and the curious: what the page holds.
window.tabnodeNetwork = state;

const short = (peer) => `…${String(peer).slice(-8)}`;
const num = (x, digits = 1) => (x == null || Number.isNaN(x) ? '–' : Number(x).toFixed(digits));
const ms = (p) => (p?.p50 == null ? '–' : `${num(p.p50, 0)} / ${num(p.p95, 0)} ms`);

function cell(tr, text) {
  const td = document.createElement('td');
  td.textContent = text;
  tr.append(td);
  return td;
}

// ---- charts ----

const charts = {};
state.charts = charts;

function chart(id, series) {
  const el = $(id);
  const opts = {
    width: Math.max(200, el.clientWidth),
    height: 160,
    legend: { live: false },
    scales: { x: { time: true } },
    axes: [{}, { size: 50 }],
    series: [{}, ...series.map(([label, stroke]) => ({ label, stroke, width: 1.5, points: { show: false } }))],
  };
  charts[id] = { plot: new uPlot(opts, [[], ...series.map(() => [])], el), pick: series.map((s) => s[2]) };
}

function drawCharts() {
  const samples = state.range === 'day' ? state.minutes : state.samples;
  const t = samples.map((s) => s.at_ms / 1000);
  for (const { plot, pick } of Object.values(charts)) {
    plot.setData([t, ...pick.map((f) => samples.map(f))]);
  }
}

function setRange(range) {
  state.range = range;
  $('range-hour').setAttribute('aria-pressed', String(range === 'hour'));
  $('range-day').setAttribute('aria-pressed', String(range === 'day'));
  drawCharts();
}

function sizeCharts() {
  for (const [id, { plot }] of Object.entries(charts)) {
    plot.setSize({ width: Math.max(200, $(id).clientWidth), height: 160 });
  }
}

// ---- tiles and tables ----

function showTiles() {
  const s = state.samples.at(-1);
  if (!s) return;
  const kinds = Object.entries(s.nodes.by_kind).map(([k, n]) => `${n} ${k}`).join(', ');
  $('t-online').textContent = `${s.nodes.online}${kinds ? ` (${kinds})` : ''}`;
  $('t-unique').textContent = String(s.nodes.unique_24h);
  $('t-requests').textContent = `${num(s.requests_per_s, 2)}${s.failed_per_s > 0 ? ` (${num(s.failed_per_s, 2)} failed)` : ''}`;
  $('t-tokens').textContent = num(s.tokens_per_s);
  $('t-embeddings').textContent = num(s.embeddings_per_s);
  // Percentiles of the last minute's samples that saw requests.
  const recent = state.samples.slice(-30).filter((x) => x.latency_ms.n > 0);
  const last = recent.at(-1);
  $('t-ttft').textContent = ms(last?.ttft_ms);
  $('t-latency').textContent = ms(last?.latency_ms);
  const sum = (f) => state.samples.reduce((n, x) => n + f(x), 0);
  $('t-pof').textContent = `${sum((x) => x.pof.passed)} passed, ${sum((x) => x.pof.failed)} failed`;
  $('t-checks').textContent = `${sum((x) => x.checks.passed)} passed, ${sum((x) => x.checks.failed)} failed, ${sum((x) => x.checks.inconclusive)} inconclusive`;
  const body = $('models').tBodies[0];
  body.replaceChildren(...s.models.map((m) => {
    const tr = document.createElement('tr');
    cell(tr, m.id);
    cell(tr, String(m.nodes));
    cell(tr, num(m.requests_per_s, 2));
    cell(tr, num(m.tokens_per_s));
    return tr;
  }));
}

function showLeaders(balances) {
  $('leaders').tBodies[0].replaceChildren(...balances.slice(0, 10).map((b, i) => {
    const tr = document.createElement('tr');
    cell(tr, String(i + 1));
    cell(tr, short(b.peer_id)).title = b.peer_id;
    cell(tr, String(b.points));
    cell(tr, String(b.tokens));
    cell(tr, String(b.proofs));
    return tr;
  }));
}

function uptime(sinceMs) {
  const s = Math.max(0, (Date.now() - sinceMs) / 1000);
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

/** The table row of node `n`. */
function nodeRow(n) {
  const tr = document.createElement('tr');
  tr.dataset.peer = n.peer_id;
  tr.tabIndex = 0;
  tr.className = 'pick';
  cell(tr, short(n.peer_id)).title = n.peer_id;
  cell(tr, n.kind);
  cell(tr, n.backend ?? '–');
  cell(tr, n.models.join(', ') || '–');
  cell(tr, n.tok_s == null ? '–' : num(n.tok_s));
  cell(tr, num(n.gflops));
  cell(tr, `${n.standing}${n.valid ? '' : ' (no valid proof)'}`);
  cell(tr, uptime(n.since_ms));
  cell(tr, String(n.points));
  const open = () => showDetail(n.peer_id);
  tr.addEventListener('click', open);
  tr.addEventListener('keydown', (e) => { if (e.key === 'Enter') open(); });
  return tr;
}

/** The whole table (nodes came or went). */
function showNodes() {
  const rows = state.nodes.map(nodeRow);
  state.rowEls = new Map(rows.map((tr) => [tr.dataset.peer, tr]));
  $('nodes').tBodies[0].replaceChildren(...rows);
}

/** Only the rows of `changed` (the same nodes, new figures). */
function updateNodes(changed) {
  for (const n of changed) {
    const old = state.rowEls?.get(n.peer_id);
    if (!old) continue;
    const tr = nodeRow(n);
    old.replaceWith(tr);
    state.rowEls.set(n.peer_id, tr);
  }
}

/** A `nodes` event: every row (`full`), or those that changed and who left. */
function applyNodes(d) {
  const until = performance.now() + 2500;
  if (d.full) state.rows.clear();
  let reordered = d.full || d.gone.length > 0;
  for (const r of d.rows) {
    const before = state.rows.get(r.peer_id);
    if (!before) reordered = true;
    // A node serving now, or credited since: its link glows.
    if (r.active > 0 || (before && r.tokens > before.tokens)) state.glow.set(r.peer_id, until);
    state.rows.set(r.peer_id, r);
  }
  for (const id of d.gone) {
    state.rows.delete(id);
    state.glow.delete(id);
  }
  state.nodes = [...state.rows.values()].sort((a, b) => (a.peer_id < b.peer_id ? -1 : 1));
  if (reordered) showNodes();
  else updateNodes(d.rows);
  if (state.selected && d.rows.some((r) => r.peer_id === state.selected)) showFacts(state.selected);
  queueDraw();
}
state.applyNodes = applyNodes;

function showFacts(peer, extra = state.extra) {
  const n = state.rows.get(peer);
  const facts = [
    ['Kind', n?.kind ?? 'gone'],
    ['Agent', extra?.agent ?? '–'],
    ['Engine', extra?.device ?? '–'],
    ['Models', n?.models.join(', ') || '–'],
    ['Measured speed', n?.tok_s == null ? '–' : `${num(n.tok_s)} tokens/s`],
    ['Serving now', String(n?.active ?? 0)],
    ['Proof', n ? `${num(n.gflops)} GFLOP/s, standing ${n.standing}${n.valid ? '' : ' (no valid proof)'}` : '–'],
    ['Up', n ? uptime(n.since_ms) : '–'],
    ['Tokens served', String(n?.tokens ?? 0)],
    ['Points', String(n?.points ?? 0)],
  ];
  $('detail-facts').replaceChildren(...facts.flatMap(([k, v]) => {
    const dt = document.createElement('dt');
    dt.textContent = k;
    const dd = document.createElement('dd');
    dd.textContent = v;
    return [dt, dd];
  }));
}

async function showDetail(peer) {
  state.selected = peer;
  $('detail').hidden = false;
  $('detail-h').textContent = `Node ${peer}`;
  showFacts(peer, null);
  const [detail, pof, checks] = await Promise.all([
    fetch(`/api/nodes/${peer}`).then((r) => (r.ok ? r.json() : { recent: [] })),
    fetch(`/api/pof/${peer}`).then((r) => (r.ok ? r.json() : { records: [] })),
    fetch('/api/checks?limit=1000').then((r) => r.json()),
  ]);
  if (state.selected !== peer) return;
  state.extra = detail;
  showFacts(peer, detail);
  $('detail-requests').tBodies[0].replaceChildren(...(detail.recent ?? []).map((q) => {
    const tr = document.createElement('tr');
    cell(tr, new Date(q.at_ms).toLocaleTimeString());
    cell(tr, String(q.request_id));
    cell(tr, q.model);
    cell(tr, String(q.tokens));
    cell(tr, q.seconds > 0 ? num(q.tokens / q.seconds) : '–');
    cell(tr, q.outcome);
    return tr;
  }));
  $('detail-proofs').tBodies[0].replaceChildren(...(pof.records ?? []).slice(-20).reverse().map((p) => {
    const tr = document.createElement('tr');
    cell(tr, new Date(p.at_ms).toLocaleTimeString());
    cell(tr, String(p.n));
    cell(tr, num(p.matmul_gflops));
    cell(tr, p.passed === false ? 'no' : 'yes');
    return tr;
  }));
  $('detail-checks').tBodies[0].replaceChildren(...checks.checks.filter((c) => c.nodes?.includes(peer) || c.served_by === peer).slice(0, 20).map((c) => {
    const tr = document.createElement('tr');
    cell(tr, new Date(c.at_ms).toLocaleTimeString());
    cell(tr, String(c.request_id));
    cell(tr, String(c.tokens));
    cell(tr, c.outcome);
    return tr;
  }));
}

// ---- the graph ----

const canvas = $('graph');
const ctx = canvas.getContext('2d');
let frameQueued = false;

/** A stable angle for a peer id (its hash), so nodes keep their places. */
function angleOf(peer) {
  let h = 2166136261;
  for (const c of peer) h = Math.imul(h ^ c.charCodeAt(0), 16777619);
  return ((h >>> 0) / 2 ** 32) * Math.PI * 2;
}

function colourOf(n) {
  if (n.proof_failed) return '#cf222e';
  if (!n.reachable) return '#8d96a0';
  return n.kind === 'browser' ? '#0969da' : '#1a7f37';
}

function draw() {
  frameQueued = false;
  const t0 = performance.now();
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const cx = w / 2;
  const cy = h / 2;
  const r = Math.min(w, h) / 2 - 16;
  const now = performance.now();
  let glowing = false;
  const placed = state.nodes.map((n) => {
    // Native nodes on the inner ring, tabs on the outer; many nodes
    // spread over several rings by their hash.
    const a = angleOf(n.peer_id);
    const band = n.kind === 'native' ? 0.45 : 0.8;
    const jitter = state.nodes.length > 60 ? ((a * 997) % 1) * 0.18 - 0.09 : 0;
    const rr = r * (band + jitter);
    const size = 3 + 2.2 * Math.log2(1 + (n.gflops ?? 0));
    return { n, x: cx + Math.cos(a) * rr, y: cy + Math.sin(a) * rr, size: Math.min(size, 18) };
  });
  // Links: faint, or bright while the node earns.
  ctx.lineWidth = 1;
  for (const p of placed) {
    // Lit while it serves, and a moment after it was credited.
    const on = p.n.active > 0 || (state.glow.get(p.n.peer_id) ?? 0) > now;
    glowing ||= on;
    ctx.strokeStyle = on ? `rgba(250, 160, 20, ${0.4 + 0.6 * Math.abs(Math.sin(now / 180))})` : 'rgba(127, 127, 127, 0.25)';
    ctx.lineWidth = on ? 2.5 : 1;
    ctx.beginPath();
    ctx.moveTo(cx, cy);
    ctx.lineTo(p.x, p.y);
    ctx.stroke();
  }
  for (const p of placed) {
    ctx.fillStyle = colourOf(p.n);
    ctx.beginPath();
    ctx.arc(p.x, p.y, p.size, 0, Math.PI * 2);
    ctx.fill();
  }
  ctx.fillStyle = '#9a6700';
  ctx.beginPath();
  ctx.arc(cx, cy, 14, 0, Math.PI * 2);
  ctx.fill();
  ctx.fillStyle = getComputedStyle(document.body).color;
  ctx.font = '12px system-ui, sans-serif';
  ctx.textAlign = 'center';
  ctx.fillText('relay', cx, cy + 28);
  state.drawn = placed.length;
  state.frameTimes.push(performance.now() - t0);
  if (state.frameTimes.length > 600) state.frameTimes.splice(0, 300);
  if (glowing) queueDraw();
}

function queueDraw() {
  if (frameQueued) return;
  frameQueued = true;
  requestAnimationFrame(draw);
}
state.redraw = queueDraw;

// ---- data ----

let samplesSeen = 0;

/** The leaderboard: at the start and every fifth sample. */
async function refreshLeaders() {
  samplesSeen += 1;
  if (samplesSeen % 5 !== 1) return;
  try {
    const ledger = await fetch('/api/ledger?limit=10').then((r) => (r.ok ? r.json() : { balances: [] }));
    showLeaders(ledger.balances ?? []);
  } catch (e) {
    // The relay is restarting: the stream's reconnection brings us back.
  }
}

function connect() {
  const es = new EventSource('/api/stats/stream');
  const pill = $('stream-state');
  const set = (s) => { pill.dataset.state = s; pill.textContent = s; };
  es.addEventListener('open', () => set('connected'));
  es.addEventListener('error', () => set(es.readyState === EventSource.CLOSED ? 'disconnected' : 'connecting'));
  es.addEventListener('history', (e) => {
    const h = JSON.parse(e.data);
    state.samples = h.fine.slice(-KEEP);
    state.minutes = h.coarse.slice(-KEEP_MINUTES);
    samplesSeen = 0;
    drawCharts();
    showTiles();
    refreshLeaders();
  });
  es.addEventListener('sample', (e) => {
    state.samples.push(JSON.parse(e.data));
    if (state.samples.length > KEEP) state.samples.splice(0, state.samples.length - KEEP);
    if (state.range === 'hour') drawCharts();
    showTiles();
    refreshLeaders();
  });
  es.addEventListener('minute', (e) => {
    state.minutes.push(JSON.parse(e.data));
    if (state.minutes.length > KEEP_MINUTES) state.minutes.splice(0, state.minutes.length - KEEP_MINUTES);
    if (state.range === 'day') drawCharts();
  });
  es.addEventListener('nodes', (e) => applyNodes(JSON.parse(e.data)));
  state.stream = es;
}

chart('c-nodes', [
  ['online', '#0969da', (s) => s.nodes.online],
  ['tabs', '#54aeff', (s) => s.nodes.by_kind.browser ?? 0],
  ['native', '#1a7f37', (s) => s.nodes.by_kind.native ?? 0],
]);
chart('c-requests', [
  ['completed', '#1a7f37', (s) => s.requests_per_s],
  ['failed', '#cf222e', (s) => s.failed_per_s],
]);
chart('c-tokens', [
  ['tokens', '#8250df', (s) => s.tokens_per_s],
  ['embeddings', '#bf8700', (s) => s.embeddings_per_s],
]);
chart('c-latency', [
  ['first token p50', '#0969da', (s) => s.ttft_ms.p50],
  ['first token p95', '#54aeff', (s) => s.ttft_ms.p95],
  ['request p50', '#8250df', (s) => s.latency_ms.p50],
  ['request p95', '#c297ff', (s) => s.latency_ms.p95],
]);
$('range-hour').addEventListener('click', () => setRange('hour'));
$('range-day').addEventListener('click', () => setRange('day'));
window.addEventListener('resize', () => { sizeCharts(); queueDraw(); });
connect();
queueDraw();
