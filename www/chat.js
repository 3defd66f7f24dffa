// The zero-install chat: the OpenAI-compatible API of the relay, streamed
// with server-sent events; shows which node answered, time to first token
// and tokens/s. "Contribute this tab" runs the node page in a frame.
const $ = (id) => document.getElementById(id);

const state = {
  models: [],
  messages: [],
  busy: false,
  last: null, // { node, nodes, ttft_ms, client_ttft_ms, tokens_per_s, failovers, tokens, text }
  error: null,
};
window.tabnodeChat = state;

async function loadModels() {
  try {
    const r = await fetch('/v1/models');
    const body = await r.json();
    state.models = body.data ?? [];
  } catch (e) {
    state.models = [];
  }
  const select = $('model');
  const current = select.value;
  select.replaceChildren(...state.models.map((m) => {
    const o = document.createElement('option');
    o.value = m.id;
    o.textContent = `${m.tabnode?.name ?? m.id} (${m.tabnode?.nodes ?? '?'} nodes)`;
    return o;
  }));
  if (state.models.length === 0) {
    const o = document.createElement('option');
    o.value = '';
    o.textContent = 'no model online';
    select.append(o);
  } else if (state.models.some((m) => m.id === current)) {
    select.value = current;
  }
  $('network').textContent = state.models.length
    ? ''
    : 'No node serves a model right now: contribute this tab below, or wait for one.';
}

function bubble(role, text) {
  const li = document.createElement('li');
  li.className = `msg ${role}`;
  const who = document.createElement('strong');
  who.textContent = role === 'user' ? 'You' : 'Network';
  const body = document.createElement('span');
  body.className = 'text';
  body.textContent = text;
  li.append(who, ' ', body);
  $('messages').append(li);
  return body;
}

let controller = null;

/** Sends the conversation; streams the answer into a new bubble. */
async function send(text) {
  const model = $('model').value;
  state.error = null;
  $('error').textContent = '';
  if (!model) {
    state.error = 'no model is online';
    $('error').textContent = state.error;
    return;
  }
  state.messages.push({ role: 'user', content: text });
  bubble('user', text);
  const out = bubble('assistant', '');
  state.busy = true;
  $('send').disabled = true;
  $('stop').disabled = false;
  controller = new AbortController();
  const t0 = performance.now();
  const last = { node: null, nodes: [], tokens: 0, text: '', client_ttft_ms: null };
  state.last = last;
  try {
    const r = await fetch('/v1/chat/completions', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model,
        messages: state.messages,
        stream: true,
        stream_options: { include_usage: true },
        max_tokens: Number(new URLSearchParams(location.search).get('max_tokens') ?? 128),
        temperature: 0,
      }),
      signal: controller.signal,
    });
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      throw new Error(body.error?.message ?? `HTTP ${r.status}`);
    }
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let cut;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const event = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        const data = event.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
        if (!data || data === '[DONE]') continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.tabnode?.node) last.node = chunk.tabnode.node;
        const choice = chunk.choices?.[0];
        const piece = choice?.delta?.content;
        if (piece) {
          if (last.client_ttft_ms === null) last.client_ttft_ms = performance.now() - t0;
          last.text += piece;
          out.textContent = last.text;
        }
        if (choice?.finish_reason && chunk.tabnode) Object.assign(last, chunk.tabnode, { finish: choice.finish_reason });
        if (chunk.usage) last.tokens = chunk.usage.completion_tokens;
      }
    }
    state.messages.push({ role: 'assistant', content: last.text });
    const nodes = (last.nodes?.length ? last.nodes : [last.node]).filter(Boolean).map((n) => `…${n.slice(-8)}`);
    $('stats').textContent =
      `served by ${nodes.join(' → ')}` +
      (last.failovers ? ` (${last.failovers} failover)` : '') +
      ` · first token ${Math.round(last.client_ttft_ms ?? last.ttft_ms ?? 0)} ms` +
      ` · ${(last.tokens_per_s ?? 0).toFixed(1)} tokens/s · ${last.tokens} tokens`;
    last.done = true;
  } catch (e) {
    state.error = e.name === 'AbortError' ? 'stopped' : e.message;
    $('error').textContent = state.error;
    if (last.text) state.messages.push({ role: 'assistant', content: last.text });
    else state.messages.pop();
  } finally {
    state.busy = false;
    controller = null;
    $('send').disabled = false;
    $('stop').disabled = true;
  }
}

function contribute(on) {
  const host = $('node-frame');
  host.replaceChildren();
  if (!on) return;
  const frame = document.createElement('iframe');
  frame.src = '/';
  frame.title = 'this tab\'s node';
  frame.className = 'node-frame';
  host.append(frame);
}

$('ask').addEventListener('submit', (e) => {
  e.preventDefault();
  const text = $('prompt').value.trim();
  if (!text || state.busy) return;
  $('prompt').value = '';
  send(text);
});
$('stop').addEventListener('click', () => controller?.abort());
$('clear').addEventListener('click', () => {
  state.messages = [];
  $('messages').replaceChildren();
  $('stats').textContent = '';
});
$('contribute').addEventListener('change', (e) => contribute(e.target.checked));
loadModels();
setInterval(loadModels, 5000);
