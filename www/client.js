// A streaming client for the relay's OpenAI-compatible API, shared by the
// chat page and the embeddable widget (and shipped in the npm package).

/**
 * The `data` of each server-sent event of the response `r`, as the stream
 * delivers them (several `data:` lines of an event joined by newlines).
 */
export async function* serverEvents(r) {
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = event.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
      if (data) yield data;
    }
  }
}

/**
 * Streams a chat completion from `relay` (an origin, '' for this one).
 * `onText(piece, node)` receives the answer as it arrives. Resolves to
 * `{ text, tokens, nodes, node, failovers, ttft_ms, client_ttft_ms,
 * tokens_per_s, finish }`; rejects with the API's error message.
 */
export async function streamChat({ relay = '', model, messages, maxTokens = 128, temperature = 0, signal, onText = () => {} }) {
  const t0 = performance.now();
  const r = await fetch(`${relay}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      model,
      messages,
      stream: true,
      stream_options: { include_usage: true },
      max_tokens: maxTokens,
      temperature,
    }),
    signal,
  });
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    throw new Error(body.error?.message ?? `HTTP ${r.status}`);
  }
  const out = { text: '', tokens: 0, nodes: [], node: null, failovers: 0, client_ttft_ms: null };
  for await (const data of serverEvents(r)) {
    if (data === '[DONE]') continue;
    const chunk = JSON.parse(data);
    if (chunk.error) throw new Error(chunk.error.message);
    if (chunk.tabnode?.node) out.node = chunk.tabnode.node;
    const choice = chunk.choices?.[0];
    const piece = choice?.delta?.content;
    if (piece) {
      if (out.client_ttft_ms === null) out.client_ttft_ms = performance.now() - t0;
      out.text += piece;
      onText(piece, out.node);
    }
    if (choice?.finish_reason) {
      Object.assign(out, chunk.tabnode ?? {});
      out.finish = choice.finish_reason;
    }
    if (chunk.usage) out.tokens = chunk.usage.completion_tokens;
  }
  if (!out.finish) throw new Error('the stream ended before the answer was complete');
  return out;
}

/**
 * The models nodes serve now on `relay` that generate text (chat or
 * completion); with `{ kind: 'embedding' }`, the embedding models instead.
 */
export async function listModels(relay = '', { kind = 'text' } = {}) {
  const r = await fetch(`${relay}/v1/models`);
  if (!r.ok) throw new Error(`HTTP ${r.status}`);
  const all = (await r.json()).data ?? [];
  return all.filter((m) => (m.tabnode?.kind === 'embedding') === (kind === 'embedding'));
}

async function call(relay, method, path, body) {
  const r = await fetch(`${relay}${path}`, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const out = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = new Error(out.error?.message ?? `HTTP ${r.status}`);
    e.status = r.status;
    e.code = out.error?.code ?? null;
    throw e;
  }
  return out;
}

/**
 * Embeds `input` (a string or an array of strings) on the network's nodes
 * (`/v1/embeddings`). Resolves to `{ vectors, tokens, truncated, nodes }`:
 * one unit vector per input in order, the tokens used, per input the pieces
 * cut past the model's length, and the nodes that served. Rejects with the
 * API's message (`.status`, `.code`).
 */
export async function embed(input, { relay = '', model = 'all-minilm-l6-v2' } = {}) {
  const r = await call(relay, 'POST', '/v1/embeddings', { model, input });
  return {
    vectors: r.data.map((d) => d.embedding),
    tokens: r.usage?.prompt_tokens ?? 0,
    truncated: r.tabnode?.truncated ?? [],
    nodes: r.tabnode?.nodes ?? [],
  };
}

/**
 * The relay's vector store (`/v1/vectors`): `vectors(relay).collection(name)`
 * gives `create(model?)`, `info()`, `drop()`, `upsert(points)` (points
 * `{ id, text?, vector?, payload? }`; texts without vectors are embedded by
 * the network), `remove(ids)`, `get(id)` and `query({ text | vector, limit,
 * filter, exact })` resolving to `[{ id, score, payload, text }]`, nearest
 * first; `list()` gives every collection. Errors reject as `embed`'s do.
 */
export function vectors(relay = '') {
  const base = (name) => `/v1/vectors/${encodeURIComponent(name)}`;
  return {
    list: async () => (await call(relay, 'GET', '/v1/vectors')).collections,
    collection: (name) => ({
      create: (model) => call(relay, 'PUT', base(name), model ? { model } : {}),
      info: () => call(relay, 'GET', base(name)),
      drop: () => call(relay, 'DELETE', base(name)),
      upsert: (points) => call(relay, 'POST', `${base(name)}/points`, { points }),
      remove: async (ids) => (await call(relay, 'POST', `${base(name)}/points/delete`, { points: ids })).deleted,
      get: (id) => call(relay, 'GET', `${base(name)}/points/${encodeURIComponent(String(id))}`),
      query: async ({ text, vector, limit = 10, filter, exact } = {}) => (await call(relay, 'POST', `${base(name)}/query`, {
        text, vector, limit, filter, params: exact ? { exact: true } : undefined,
      })).points,
    }),
  };
}

/** One line about who answered and how fast. */
export function describe(answer) {
  const nodes = (answer.nodes?.length ? answer.nodes : [answer.node]).filter(Boolean).map((n) => `…${n.slice(-8)}`);
  return `served by ${nodes.join(' → ')}` +
    (answer.failovers ? ` (${answer.failovers} failover)` : '') +
    ` · first token ${Math.round(answer.client_ttft_ms ?? answer.ttft_ms ?? 0)} ms` +
    ` · ${(answer.tokens_per_s ?? 0).toFixed(1)} tokens/s · ${answer.tokens} tokens`;
}
