// Python for flows in this tab (issue #15): each job runs in Pyodide inside
// a sandboxed iframe of an opaque origin (python-sandbox.html), so the code
// cannot touch this tab's keys, storage or pages; the iframe runs it in a
// worker it ends when the job's time limit passes.

/** Runs Python jobs in a sandbox made on first use. */
export class PythonSandbox {
  #frame = null;
  #ready = null;
  #waiting = new Map();

  #open() {
    if (this.#ready) return this.#ready;
    const frame = document.createElement("iframe");
    // allow-scripts without allow-same-origin: an opaque origin.
    frame.setAttribute("sandbox", "allow-scripts");
    frame.src = "/python-sandbox.html";
    frame.title = "Python sandbox";
    frame.hidden = true;
    this.#frame = frame;
    this.#ready = new Promise((resolve) => {
      addEventListener("message", (event) => {
        if (event.source !== frame.contentWindow || event.origin !== "null") return;
        const data = event.data || {};
        if (data.sandbox === "ready") {
          resolve();
          return;
        }
        const answer = this.#waiting.get(data.job);
        if (!answer) return;
        this.#waiting.delete(data.job);
        answer(typeof data.error === "string" ? { error: data.error } : { text: String(data.text ?? "") });
      });
    });
    document.body.append(frame);
    return this.#ready;
  }

  /**
   * Runs `code` with `inputs` as its variables: `{text}` (what it printed)
   * or `{error}`.
   */
  async run({ job, code, inputs, timeout_ms }) {
    await this.#open();
    return new Promise((resolve) => {
      this.#waiting.set(job, resolve);
      this.#frame.contentWindow.postMessage({ job, code, inputs, timeout_ms }, "*");
    });
  }
}
