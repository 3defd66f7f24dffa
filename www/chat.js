// The zero-install chat: the OpenAI-compatible API of the relay, streamed
// with server-sent events; shows which node answered, time to first token
// and tokens/s. Answers render as sanitised Markdown with highlighted code
// (markdown.js); Enter sends, Shift+Enter adds a line. "Contribute this
// tab" runs the node page in a frame.
import { streamChat, listModels, describe } from '/client.js';
import { render } from '/markdown.js';

const $ = (id) => document.getElementById(id);

const state = {
  models: [],
  messages: [],
  busy: false,
  last: null, // { node, nodes, ttft_ms, client_ttft_ms, tokens_per_s, failovers, tokens, text }
  error: null,
};
window.tabnodeChat = state;
// The renderer, for the e2e test's hostile inputs.
window.tabnodeMarkdown = render;

// "Qwen2.5-Coder 0.5B Instruct (Q5_0/Q8_0) · 491 MB · 2 nodes".
function modelLabel(m) {
  const t = m.tabnode ?? {};
  const parts = [t.title ?? t.name ?? m.id];
  if (t.bytes) parts.push(`${Math.round(t.bytes / 1e6)} MB`);
  const n = t.nodes ?? 0;
  parts.push(`${n} node${n === 1 ? '' : 's'}`);
  return parts.join(' · ');
}

async function loadModels() {
  try {
    state.models = await listModels();
  } catch (e) {
    state.models = [];
  }
  const select = $('model');
  const current = select.value;
  select.replaceChildren(...state.models.map((m) => {
    const o = document.createElement('option');
    o.value = m.id;
    o.textContent = modelLabel(m);
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
  // The visitor's words as typed; the network's as Markdown.
  const body = document.createElement('div');
  body.className = role === 'user' ? 'text' : 'text markdown';
  if (role === 'user') body.textContent = text;
  else render(body, text);
  li.append(who, body);
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
  state.last = { text: '', done: false };
  $('send').disabled = true;
  $('stop').disabled = false;
  controller = new AbortController();
  try {
    const answer = await streamChat({
      model,
      messages: state.messages,
      maxTokens: Number(new URLSearchParams(location.search).get('max_tokens') ?? 128),
      signal: controller.signal,
      onText: (piece, node) => {
        state.last.text += piece;
        state.last.node = node;
        render(out, state.last.text);
      },
    });
    state.messages.push({ role: 'assistant', content: answer.text });
    state.last = { ...answer, done: true };
    $('stats').textContent = describe(answer);
  } catch (e) {
    state.error = e.name === 'AbortError' ? 'stopped' : e.message;
    $('error').textContent = state.error;
    if (state.last.text) state.messages.push({ role: 'assistant', content: state.last.text });
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
$('prompt').addEventListener('keydown', (e) => {
  // Enter sends; Shift+Enter (or Enter while an input method composes)
  // goes into the text.
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $('ask').requestSubmit();
  }
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
