// The Python sandbox's page script (see python-sandbox.html). Runs in an
// opaque origin: it takes jobs from the page that embeds it, runs each in
// a Pyodide worker with the job's time limit (the worker is terminated
// when it passes, and made again for the next job) and output cap, and
// answers what the code printed or why it failed.
"use strict";

/** The most a job's answer carries of what the code printed. */
const MAX_OUTPUT_BYTES = 64 * 1024;
/** How long Pyodide may take to load. */
const LOAD_MS = 120000;

const pyodideBase = new URL("/node_modules/pyodide/", location.href).href;
// Answers go to the embedding page's origin only.
const parentOrigin = (location.ancestorOrigins && location.ancestorOrigins[0]) || "*";

// The worker's code (stringified into a blob: a worker of an opaque origin
// cannot be loaded from this site's URLs).
function workerMain(base, maxBytes) {
  let pyodide = null;
  const loading = import(base + "pyodide.mjs")
    .then(({ loadPyodide }) => loadPyodide({ indexURL: base }))
    .then((py) => {
      pyodide = py;
      // No network beyond what the flow passes in: the CSP allows only
      // Pyodide's files, and the APIs are gone too.
      for (const name of ["fetch", "XMLHttpRequest", "WebSocket", "EventSource", "importScripts"]) {
        try {
          Object.defineProperty(self, name, { value: undefined, configurable: false, writable: false });
        } catch {
          // Not defined in this worker: nothing to take away.
        }
      }
      postMessage({ ready: true });
    })
    .catch((e) => postMessage({ failed: String(e && e.message ? e.message : e) }));
  onmessage = async ({ data }) => {
    await loading;
    if (!pyodide) return;
    const lines = [];
    let bytes = 0;
    let cut = false;
    const write = (line) => {
      if (cut) return;
      bytes += line.length + 1;
      if (bytes > maxBytes) {
        cut = true;
        lines.push(line.slice(0, Math.max(0, maxBytes - (bytes - line.length - 1))));
        return;
      }
      lines.push(line);
    };
    pyodide.setStdout({ batched: write });
    pyodide.setStderr({ batched: write });
    const globals = pyodide.globals.get("dict")();
    try {
      for (const [name, value] of Object.entries(data.inputs || {})) {
        globals.set(name, typeof value === "string" ? value : pyodide.toPy(value));
      }
      await pyodide.runPythonAsync(data.code, { globals });
      pyodide.runPython("import sys\nsys.stdout.flush()\nsys.stderr.flush()");
      let text = lines.join("\n");
      if (cut) text += `\n[output cut at ${maxBytes} bytes]`;
      postMessage({ job: data.job, text });
    } catch (e) {
      // A Python error's message is its traceback: its last line says what.
      const message = String(e && e.message ? e.message : e).trim().split("\n");
      postMessage({ job: data.job, error: message[message.length - 1] });
    } finally {
      globals.destroy();
    }
  };
}

let worker = null;
let ready = null;
const queue = [];
let busy = false;

function startWorker() {
  const source = `(${workerMain.toString()})(${JSON.stringify(pyodideBase)}, ${MAX_OUTPUT_BYTES});`;
  const url = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
  // A classic worker: a module worker from an opaque origin's blob does
  // not start in Chromium; `import()` of Pyodide works in either.
  worker = new Worker(url);
  URL.revokeObjectURL(url);
  ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`Pyodide did not load in ${LOAD_MS / 1000} s`)), LOAD_MS);
    worker.onmessage = ({ data }) => {
      if (data.ready) {
        clearTimeout(timer);
        resolve();
      } else if (data.failed) {
        clearTimeout(timer);
        reject(new Error(`Pyodide did not load: ${data.failed}`));
      }
    };
    worker.onerror = (e) => {
      clearTimeout(timer);
      reject(new Error(`the Python worker failed: ${e.message || "an error"}`));
    };
  });
}

function stopWorker() {
  if (worker) worker.terminate();
  worker = null;
  ready = null;
}

async function runOne(job) {
  if (!worker) startWorker();
  try {
    await ready;
  } catch (e) {
    stopWorker();
    return { error: e.message };
  }
  return new Promise((resolve) => {
    const limit = Number(job.timeout_ms) || 10000;
    const timer = setTimeout(() => {
      // The only way to stop running Python: end its worker.
      stopWorker();
      resolve({ error: `the code ran past its time limit (${limit} ms)` });
    }, limit);
    worker.onmessage = ({ data }) => {
      if (data.job !== job.job) return;
      clearTimeout(timer);
      resolve(data.error !== undefined ? { error: data.error } : { text: data.text });
    };
    worker.postMessage({ job: job.job, code: String(job.code), inputs: job.inputs || {} });
  });
}

async function drain() {
  if (busy) return;
  busy = true;
  while (queue.length) {
    const job = queue.shift();
    const answer = await runOne(job);
    parent.postMessage({ job: job.job, ...answer }, parentOrigin);
  }
  busy = false;
}

addEventListener("message", (event) => {
  if (event.source !== parent) return;
  const job = event.data;
  if (!job || typeof job.job !== "string" || typeof job.code !== "string") return;
  queue.push(job);
  drain();
});

parent.postMessage({ sandbox: "ready" }, parentOrigin);
