// The flow editor (issue #15): Drawflow draws the boxes and wires; this
// module keeps each box's type and parameters, turns the drawing into the
// flow format (crates/tabnode-flows/FORMAT.md) and back, and runs it with
// POST /v1/flows/run, showing each box's status, timing, serving node and
// output as the events come. Python steps run in this tab's sandbox
// (python.js). Everything from the network or a file is shown as text
// (textContent), never as HTML.

import { PythonSandbox } from "/python.js";
import { serverEvents } from "/client.js";

const $ = (id) => document.getElementById(id);
const list = (s) => String(s ?? "").split(",").map((x) => x.trim()).filter(Boolean);
const placeholders = (text) => {
  const out = [];
  for (const m of String(text ?? "").matchAll(/\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}/g)) {
    if (!out.includes(m[1])) out.push(m[1]);
  }
  return out;
};

// Each type: its fields (`param: false` for the editor's own, such as the
// names of a python node's variables), its inputs and its outputs.
const TYPES = {
  input: {
    fields: [{ name: "names", kind: "list", value: "question", title: "the run's inputs, comma-separated" }],
    ins: () => [],
    outs: (f) => list(f.names),
  },
  output: {
    fields: [{ name: "ports", label: "outputs", kind: "list", value: "answer", param: false, title: "the run's outputs, comma-separated" }],
    ins: (f) => list(f.ports),
    outs: () => [],
  },
  llm: {
    fields: [
      { name: "model", kind: "model" },
      { name: "mode", kind: "select", options: ["chat", "completion"], value: "chat" },
      { name: "max_tokens", kind: "number", value: "64" },
      { name: "temperature", kind: "number", value: "" },
      { name: "system", kind: "textarea", value: "" },
    ],
    ins: () => ["prompt"],
    outs: () => ["text"],
  },
  embed: { fields: [{ name: "model", kind: "text", value: "" }], ins: () => ["text"], outs: () => ["vector"] },
  retrieve: {
    fields: [{ name: "collection", kind: "text", value: "" }, { name: "limit", kind: "number", value: "5" }],
    ins: () => ["query"],
    outs: () => ["text", "points"],
  },
  scrape: { fields: [{ name: "max_bytes", kind: "number", value: "" }], ins: () => ["url"], outs: () => ["text", "title", "links"] },
  python: {
    fields: [
      { name: "code", kind: "textarea", value: "print(x)" },
      { name: "timeout_ms", kind: "number", value: "5000" },
      { name: "ports", label: "variables", kind: "list", value: "x", param: false, title: "the inputs' variable names, comma-separated" },
    ],
    ins: (f) => list(f.ports),
    outs: () => ["text"],
  },
  template: {
    fields: [{ name: "text", kind: "textarea", value: "Answer in one sentence: {{question}}" }],
    ins: (f) => placeholders(f.text),
    outs: () => ["text"],
  },
  split: {
    fields: [{ name: "chunk_chars", kind: "number", value: "2000" }, { name: "overlap", kind: "number", value: "" }],
    ins: () => ["text"],
    outs: () => ["chunks"],
  },
  map: {
    fields: [
      { name: "step", kind: "json", value: '{"type": "template", "params": {"text": "- {{item}}"}}' },
      { name: "port", kind: "text", value: "" },
      { name: "max_parallel", kind: "number", value: "" },
    ],
    ins: () => ["items"],
    outs: () => ["texts", "text"],
  },
  merge: {
    fields: [
      { name: "separator", kind: "text", value: "" },
      { name: "ports", label: "inputs", kind: "list", value: "a, b", param: false, title: "the inputs' names, comma-separated (joined in name order)" },
    ],
    ins: (f) => list(f.ports),
    outs: () => ["text"],
  },
};

const container = $("canvas");
// eslint-disable-next-line no-undef
const editor = new Drawflow(container);
editor.reroute = false;
editor.start();

/** Drawflow id → {id, type, form}: what each box is. */
const boxes = new Map();
let models = [];
const sandbox = new PythonSandbox();

const boxOf = (flowId) => [...boxes.entries()].find(([, b]) => b.id === flowId);
const contentOf = (dfId) => document.querySelector(`#node-${dfId} .drawflow_content_node`);

function freshId(type) {
  for (let i = 1; ; i++) if (!boxOf(`${type}${i}`)) return `${type}${i}`;
}

function showError(message) {
  $("editor-error").textContent = message || "";
}

/** The flow's params of a box: numbers as numbers, lists as lists, empty fields left to the format's defaults. */
function paramsOf(box) {
  const params = {};
  for (const f of TYPES[box.type].fields) {
    if (f.param === false) continue;
    const v = box.form[f.name];
    if (v === undefined || v === "") continue;
    if (f.kind === "number") params[f.name] = Number(v);
    else if (f.kind === "list") params[f.name] = list(v);
    else if (f.kind === "json") {
      try {
        params[f.name] = JSON.parse(v);
      } catch (e) {
        throw new Error(`${box.id}.${f.name}: not JSON (${e.message})`);
      }
    } else params[f.name] = v;
  }
  return params;
}

/** Labels the box's connection points with their names, adding or removing points as the names change. */
function syncPorts(dfId) {
  const box = boxes.get(dfId);
  const spec = TYPES[box.type];
  const want = { input: spec.ins(box.form), output: spec.outs(box.form) };
  for (const side of ["input", "output"]) {
    const node = editor.getNodeFromId(dfId);
    let have = Object.keys(node[`${side}s`]).length;
    for (; have < want[side].length; have++) {
      if (side === "input") editor.addNodeInput(dfId);
      else editor.addNodeOutput(dfId);
    }
    for (; have > want[side].length; have--) {
      if (side === "input") editor.removeNodeInput(dfId, `input_${have}`);
      else editor.removeNodeOutput(dfId, `output_${have}`);
    }
    want[side].forEach((name, i) => {
      const el = document.querySelector(`#node-${dfId} .${side}s .${side}_${i + 1}`);
      if (el) {
        el.dataset.port = name;
        el.title = name;
      }
    });
  }
  editor.updateConnectionNodes(`node-${dfId}`);
}

function field(box, dfId, f) {
  const label = document.createElement("label");
  label.append(f.label ?? f.name);
  let input;
  if (f.kind === "textarea" || f.kind === "json") {
    input = document.createElement("textarea");
    input.rows = f.kind === "json" ? 3 : 2;
  } else if (f.kind === "select" || f.kind === "model") {
    input = document.createElement("select");
    const options = f.kind === "model" ? models : f.options;
    for (const o of options) input.append(new Option(o, o));
    if (f.kind === "model" && box.form[f.name] && !models.includes(box.form[f.name])) {
      input.append(new Option(box.form[f.name], box.form[f.name]));
    }
  } else {
    input = document.createElement("input");
    input.type = f.kind === "number" ? "number" : "text";
    if (f.kind === "number") input.step = "any";
  }
  if (f.title) input.title = f.title;
  input.dataset.field = f.name;
  input.value = box.form[f.name] ?? "";
  if (f.kind === "model" && !input.value && models.length) input.value = box.form[f.name] = models[0];
  input.addEventListener("input", () => {
    box.form[f.name] = input.value;
    syncPorts(dfId);
    refreshRunInputs();
  });
  label.append(input);
  return label;
}

function render(dfId) {
  const box = boxes.get(dfId);
  const root = document.createElement("div");
  root.className = "fnode";
  root.dataset.flowId = box.id;
  root.dataset.type = box.type;
  root.dataset.status = "idle";
  const head = document.createElement("div");
  head.className = "fnode-head";
  const title = document.createElement("strong");
  title.textContent = box.type;
  const id = document.createElement("code");
  id.textContent = box.id;
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "×";
  remove.title = `remove ${box.id}`;
  remove.addEventListener("click", () => editor.removeNodeId(`node-${dfId}`));
  head.append(title, id, remove);
  root.append(head);
  for (const f of TYPES[box.type].fields) root.append(field(box, dfId, f));
  const status = document.createElement("div");
  status.className = "fnode-status";
  status.textContent = "idle";
  const out = document.createElement("pre");
  out.className = "fnode-out";
  root.append(status, out);
  const content = contentOf(dfId);
  content.replaceChildren(root);
}

/** Adds a box of `type` at canvas position (x, y). */
function addBox(type, x, y, flowId = freshId(type), form = null) {
  const spec = TYPES[type];
  const values = form ?? Object.fromEntries(spec.fields.map((f) => [f.name, f.value ?? ""]));
  const dfId = editor.addNode(type, spec.ins(values).length, spec.outs(values).length, x, y, `type-${type}`, {}, "", false);
  boxes.set(dfId, { id: flowId, type, form: values });
  render(dfId);
  syncPorts(dfId);
  refreshRunInputs();
  return dfId;
}

editor.on("nodeRemoved", (dfId) => {
  boxes.delete(Number(dfId));
  boxes.delete(String(dfId));
  refreshRunInputs();
});

// One wire per input: a new one replaces the old.
editor.on("connectionCreated", ({ output_id, input_id, output_class, input_class }) => {
  const node = editor.getNodeFromId(input_id);
  for (const c of node.inputs[input_class].connections) {
    if (String(c.node) !== String(output_id) || c.input !== output_class) {
      editor.removeSingleConnection(c.node, input_id, c.input, input_class);
    }
  }
});

/** The drawing as a flow. */
function toFlow() {
  const data = editor.export().drawflow.Home.data;
  const nodes = {};
  const ui = {};
  for (const [dfId, box] of boxes) {
    const df = data[dfId];
    const spec = TYPES[box.type];
    const inputs = {};
    spec.ins(box.form).forEach((name, i) => {
      const c = df.inputs[`input_${i + 1}`]?.connections?.[0];
      if (!c) return;
      const src = boxes.get(Number(c.node)) ?? boxes.get(String(c.node));
      const out = TYPES[src.type].outs(src.form)[Number(c.input.split("_")[1]) - 1];
      inputs[name] = [src.id, out];
    });
    const node = { type: box.type };
    const params = paramsOf(box);
    if (Object.keys(params).length) node.params = params;
    if (Object.keys(inputs).length) node.inputs = inputs;
    nodes[box.id] = node;
    ui[box.id] = { x: Math.round(df.pos_x), y: Math.round(df.pos_y) };
  }
  return { version: 1, nodes, ui };
}

/** The form of a flow node's box. */
function formOf(type, node, consumers) {
  const params = node.params ?? {};
  const form = {};
  for (const f of TYPES[type].fields) {
    const v = params[f.name];
    if (f.param === false) form[f.name] = Object.keys(node.inputs ?? {}).join(", ");
    else if (v === undefined) form[f.name] = type === "input" && f.name === "names" ? consumers.join(", ") : "";
    else if (f.kind === "list") form[f.name] = v.join(", ");
    else if (f.kind === "json") form[f.name] = JSON.stringify(v);
    else form[f.name] = String(v);
  }
  return form;
}

/** Replaces the drawing with `flow`. */
function load(flow) {
  if (!flow || typeof flow !== "object" || typeof flow.nodes !== "object") throw new Error("not a flow: no \"nodes\"");
  for (const [id, n] of Object.entries(flow.nodes)) {
    if (!TYPES[n?.type]) throw new Error(`node ${id}: unknown type ${JSON.stringify(n?.type)}`);
  }
  editor.clear();
  boxes.clear();
  const entries = Object.entries(flow.nodes);
  // Where a box goes: its saved place, else a column per depth.
  const depth = {};
  const depthOf = (id, seen = new Set()) => {
    if (depth[id] !== undefined) return depth[id];
    if (seen.has(id)) return 0;
    seen.add(id);
    const srcs = Object.values(flow.nodes[id]?.inputs ?? {}).map((s) => s[0]).filter((s) => flow.nodes[s]);
    depth[id] = srcs.length ? 1 + Math.max(...srcs.map((s) => depthOf(s, seen))) : 0;
    return depth[id];
  };
  const rows = {};
  const dfIds = {};
  for (const [id, n] of entries) {
    const d = depthOf(id);
    const row = (rows[d] = (rows[d] ?? -1) + 1);
    const at = flow.ui?.[id];
    const x = Number.isFinite(at?.x) ? at.x : 30 + d * 290;
    const y = Number.isFinite(at?.y) ? at.y : 30 + row * 260;
    const consumers = [];
    for (const other of Object.values(flow.nodes)) {
      for (const [src, out] of Object.values(other.inputs ?? {})) if (src === id && !consumers.includes(out)) consumers.push(out);
    }
    dfIds[id] = addBox(n.type, x, y, id, formOf(n.type, n, consumers));
  }
  for (const [id, n] of entries) {
    const box = boxes.get(dfIds[id]);
    for (const [name, [src, out]] of Object.entries(n.inputs ?? {})) {
      const from = boxes.get(dfIds[src]);
      if (!from) continue;
      const i = TYPES[box.type].ins(box.form).indexOf(name);
      const o = TYPES[from.type].outs(from.form).indexOf(out);
      if (i >= 0 && o >= 0) editor.addConnection(dfIds[src], dfIds[id], `output_${o + 1}`, `input_${i + 1}`);
    }
  }
  refreshRunInputs();
  // Flows drawn so far (tests wait for the next).
  document.body.dataset.loads = String(Number(document.body.dataset.loads ?? 0) + 1);
}

// The run's inputs: a field per name of the input boxes, values kept.
function refreshRunInputs() {
  const holder = $("run-inputs");
  const kept = Object.fromEntries([...holder.querySelectorAll("textarea")].map((t) => [t.name, t.value]));
  const names = [];
  for (const box of boxes.values()) {
    if (box.type === "input") for (const n of TYPES.input.outs(box.form)) if (!names.includes(n)) names.push(n);
  }
  holder.replaceChildren(
    ...names.map((name) => {
      const label = document.createElement("label");
      label.append(`input ${name}`);
      const t = document.createElement("textarea");
      t.name = name;
      t.rows = 2;
      t.value = kept[name] ?? "";
      t.dataset.input = name;
      label.append(t);
      return label;
    }),
  );
}

function setInputs(values) {
  for (const t of $("run-inputs").querySelectorAll("textarea")) if (values[t.name] !== undefined) t.value = values[t.name];
}

// The palette: drag a type onto the canvas, or click to add it.
for (const type of Object.keys(TYPES)) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = type;
  b.draggable = true;
  b.dataset.type = type;
  b.title = `drag onto the canvas to add a ${type} node`;
  b.addEventListener("dragstart", (e) => e.dataTransfer.setData("text/plain", type));
  b.addEventListener("click", () => {
    const n = boxes.size;
    addBox(type, 40 + (n % 4) * 290 - editor.canvas_x, 40 + Math.floor(n / 4) * 260 - editor.canvas_y);
  });
  $("palette").append(b);
}
container.addEventListener("dragover", (e) => e.preventDefault());
container.addEventListener("drop", (e) => {
  e.preventDefault();
  const type = e.dataTransfer.getData("text/plain");
  if (!TYPES[type]) return;
  const rect = editor.precanvas.getBoundingClientRect();
  const scale = 1 / editor.zoom;
  addBox(type, (e.clientX - rect.x) * scale, (e.clientY - rect.y) * scale);
});

// Templates, planning, files.
let templates = [];
async function loadTemplates() {
  const r = await fetch("/v1/flows/templates");
  templates = (await r.json()).templates ?? [];
  $("template").replaceChildren(...templates.map((t) => new Option(`${t.name} — ${t.about}`, t.name)));
}

function guarded(action) {
  return async (...args) => {
    showError("");
    try {
      await action(...args);
    } catch (e) {
      showError(e.message);
    }
  };
}

/** A template's flow with this page's model in its llm nodes. */
function withModel(flow) {
  const model = models[0];
  if (!model) return flow;
  for (const n of Object.values(flow.nodes)) {
    if (n.type === "llm") n.params = { ...n.params, model };
    if (n.type === "map" && n.params?.step?.type === "llm") n.params.step.params = { ...n.params.step.params, model };
  }
  return flow;
}

$("load-template").addEventListener("click", guarded(() => {
  const t = templates.find((x) => x.name === $("template").value);
  if (t?.flow) load(withModel(structuredClone(t.flow)));
}));
$("plan").addEventListener("click", guarded(async () => {
  const query = $("query").value.trim();
  if (!query) throw new Error("write a query to plan");
  const body = { query, planner: $("planner").value };
  if (models[0]) body.model = models[0];
  const r = await fetch("/v1/flows/plan", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  const p = await r.json();
  if (!r.ok) throw new Error(p.error?.message ?? `planning failed (${r.status})`);
  load(p.flow);
  setInputs(p.inputs ?? {});
  $("run-status").textContent = `planned ${p.template ? `with the template ${p.template}` : "freely"}: ${p.why}`;
}));
$("save").addEventListener("click", guarded(() => {
  const blob = new Blob([JSON.stringify(toFlow(), null, 2)], { type: "application/json" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "flow.json";
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}));
$("open").addEventListener("change", guarded(async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  let flow;
  try {
    flow = JSON.parse(await file.text());
  } catch (err) {
    throw new Error(`${file.name}: not JSON (${err.message})`);
  }
  load(flow);
  e.target.value = "";
}));
$("clear").addEventListener("click", () => {
  editor.clear();
  boxes.clear();
  refreshRunInputs();
});

// Running.
let runId = null;
let abort = null;

function boxStatus(flowId, status, detail = "") {
  const entry = boxOf(flowId);
  if (!entry) return null;
  const root = contentOf(entry[0])?.querySelector(".fnode");
  if (!root) return null;
  root.dataset.status = status;
  root.querySelector(".fnode-status").textContent = detail ? `${status} · ${detail}` : status;
  return root.querySelector(".fnode-out");
}

function shown(value) {
  if (typeof value === "string") return value;
  if (Array.isArray(value) && value.every((v) => typeof v === "number")) return `[${value.length} numbers]`;
  if (Array.isArray(value) && value.every((v) => typeof v === "string")) return value.map((v) => `• ${v}`).join("\n");
  return JSON.stringify(value, null, 1);
}

const short = (peer) => (peer ? `${peer.slice(0, 6)}…${peer.slice(-4)}` : "");
const peersOf = {};

async function answerPython(event) {
  const answer = $("python-here").checked
    ? await sandbox.run(event)
    : { error: "this tab was asked not to run Python" };
  await fetch(`/v1/flows/runs/${encodeURIComponent(runId)}/python`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ job: event.job, ...answer }),
  });
}

function onEvent(e) {
  switch (e.type) {
    case "run":
      runId = e.id;
      $("run-status").textContent = `run ${e.id}: running`;
      $("cancel").disabled = false;
      break;
    case "node": {
      if (e.peer) (peersOf[e.id] ??= new Set()).add(e.peer);
      const peers = [...(peersOf[e.id] ?? [])].map(short).join(", ");
      const detail = [e.ms !== undefined ? `${e.ms} ms` : "", peers ? `on ${peers}` : "", e.error ?? ""].filter(Boolean).join(" · ");
      const out = boxStatus(e.id, e.status, detail);
      if (out && e.status === "done" && e.output) {
        out.textContent = Object.entries(e.output).map(([k, v]) => `${k}: ${shown(v)}`).join("\n");
      }
      break;
    }
    case "token": {
      const entry = boxOf(e.id);
      const out = entry && contentOf(entry[0])?.querySelector(".fnode-out");
      if (out) out.textContent += e.text;
      break;
    }
    case "python":
      answerPython(e).catch((err) => ($("run-error").textContent = `python: ${err.message}`));
      break;
    case "error":
      $("run-error").textContent = e.message;
      break;
    case "done": {
      $("run-status").textContent = `run ${e.run}: ${e.status} in ${e.ms} ms`;
      const dl = $("outputs");
      dl.replaceChildren();
      for (const [k, v] of Object.entries(e.outputs ?? {})) {
        const dt = document.createElement("dt");
        dt.textContent = k;
        const dd = document.createElement("dd");
        dd.textContent = shown(v);
        dd.dataset.output = k;
        dl.append(dt, dd);
      }
      break;
    }
    default:
  }
}

$("run-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("run-error").textContent = "";
  $("outputs").replaceChildren();
  let flow;
  try {
    flow = toFlow();
  } catch (e) {
    $("run-error").textContent = e.message;
    return;
  }
  for (const [dfId, box] of boxes) {
    boxStatus(box.id, "queued");
    const out = contentOf(dfId)?.querySelector(".fnode-out");
    if (out) out.textContent = "";
  }
  for (const k of Object.keys(peersOf)) delete peersOf[k];
  const inputs = Object.fromEntries([...$("run-inputs").querySelectorAll("textarea")].map((t) => [t.name, t.value]));
  abort = new AbortController();
  $("run").disabled = true;
  $("run-status").textContent = "starting…";
  try {
    const r = await fetch("/v1/flows/run", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ flow, inputs, python: "requester" }),
      signal: abort.signal,
    });
    if (!r.ok) {
      const body = await r.json().catch(() => null);
      throw new Error(body?.error?.message ?? `the run was refused (${r.status})`);
    }
    for await (const data of serverEvents(r)) onEvent(JSON.parse(data));
  } catch (e) {
    if (e.name !== "AbortError") $("run-error").textContent = e.message;
    $("run-status").textContent = "";
  } finally {
    $("run").disabled = false;
    $("cancel").disabled = true;
    abort = null;
  }
});

$("cancel").addEventListener("click", async () => {
  if (runId) await fetch(`/v1/flows/runs/${encodeURIComponent(runId)}`, { method: "DELETE" });
});

async function start() {
  try {
    const r = await fetch("/v1/models");
    // Generative models only: an llm node cannot use an embedding model.
    models = ((await r.json()).data ?? []).filter((m) => m.tabnode?.kind !== "embedding").map((m) => m.id);
  } catch {
    models = [];
  }
  await loadTemplates().catch((e) => showError(`templates: ${e.message}`));
  // Start from the simplest template, so there is something to run.
  const first = templates.find((t) => t.name === "answer");
  if (first?.flow) load(withModel(structuredClone(first.flow)));
  document.body.dataset.ready = "true";
}

start();
