// The embeddable chat widget: a custom element, <tabnode-chat>, whose UI
// lives in a Shadow DOM (no styles leak in or out). It chats through the
// relay's OpenAI-compatible API and can offer "contribute compute", which
// runs the node in an iframe of the relay's origin: the host page never
// touches the node's keys or storage, it only hears status messages.
//
// Attributes: relay (origin of the relay; default: where this module came
// from), model (default: the first online), max-tokens (default 128),
// contribute (present: show the switch), heading.
import { streamChat, listModels, describe } from './client.js';

const MODULE_ORIGIN = new URL(import.meta.url).origin;

const STYLE = `
:host { all: initial; display: block; font: 14px/1.45 system-ui, sans-serif; color: #1b1f24;
  background: #fff; border: 1px solid #d0d7de; border-radius: 10px; padding: 0.75rem;
  box-shadow: 0 2px 8px rgb(0 0 0 / 0.15); max-width: 26rem; }
:host([floating]) { position: fixed; right: 1rem; bottom: 1rem; width: 24rem; z-index: 2147483000; }
h2 { margin: 0 0 0.4rem; font-size: 1rem; }
ol { list-style: none; margin: 0 0 0.5rem; padding: 0; max-height: 16rem; overflow: auto; display: grid; gap: 0.3rem; }
li { white-space: pre-wrap; padding: 0.3rem 0.5rem; border-radius: 8px; background: #f0f1f3; }
li.user { background: #ddeafc; }
form { display: flex; gap: 0.4rem; }
textarea { flex: 1; font: inherit; padding: 0.3rem; border-radius: 6px; border: 1px solid #aab; resize: vertical; }
button { font: inherit; }
.stats, .status { margin: 0.3rem 0 0; color: #57606a; font-size: 0.8em; }
.error { color: #cf222e; }
iframe { width: 100%; height: 16rem; border: 1px solid #d0d7de; border-radius: 8px; margin-top: 0.4rem; }
`;

export class TabnodeChat extends HTMLElement {
  static defaultRelay = MODULE_ORIGIN;

  constructor() {
    super();
    this.state = { messages: [], busy: false, last: null, error: null, node: null };
    const root = this.attachShadow({ mode: 'open' });
    root.innerHTML = `<style>${STYLE}</style>
      <h2 part="heading"></h2>
      <ol class="messages" aria-live="polite"></ol>
      <form><textarea rows="2" aria-label="Message" required></textarea><button type="submit">Send</button></form>
      <p class="stats"></p><p class="error" role="alert"></p>
      <label class="contribute" hidden><input type="checkbox"> Contribute this tab's compute</label>
      <p class="status" hidden></p><div class="frame"></div>`;
    this.$ = (sel) => root.querySelector(sel);
    this.$('form').addEventListener('submit', (e) => {
      e.preventDefault();
      const text = this.$('textarea').value.trim();
      if (text && !this.state.busy) {
        this.$('textarea').value = '';
        this.send(text);
      }
    });
    this.$('.contribute input').addEventListener('change', (e) => this.contribute(e.target.checked));
    this.onMessage = (e) => {
      if (e.origin !== this.relay || e.data?.source !== 'tabnode') return;
      this.state.node = e.data;
      const p = this.$('.status');
      p.hidden = false;
      p.textContent = `node ${e.data.status}` + (e.data.points != null ? ` · ${e.data.points} flops points` : '');
    };
  }

  get relay() {
    return (this.getAttribute('relay') || TabnodeChat.defaultRelay).replace(/\/$/, '');
  }

  connectedCallback() {
    this.$('h2').textContent = this.getAttribute('heading') || 'Ask the tabnode network';
    this.$('.contribute').hidden = !this.hasAttribute('contribute');
    window.addEventListener('message', this.onMessage);
  }

  disconnectedCallback() {
    window.removeEventListener('message', this.onMessage);
  }

  bubble(role, text) {
    const li = document.createElement('li');
    li.className = role;
    li.textContent = text;
    this.$('ol').append(li);
    return li;
  }

  /** Sends `text` in the conversation; resolves when the answer is complete. */
  async send(text) {
    const s = this.state;
    s.error = null;
    this.$('.error').textContent = '';
    s.busy = true;
    s.messages.push({ role: 'user', content: text });
    this.bubble('user', text);
    const out = this.bubble('assistant', '');
    s.last = { text: '', done: false };
    try {
      let model = this.getAttribute('model');
      if (!model) {
        const models = await listModels(this.relay);
        if (!models.length) throw new Error('no model is online on the network right now');
        model = models[0].id;
      }
      const answer = await streamChat({
        relay: this.relay,
        model,
        messages: s.messages,
        maxTokens: Number(this.getAttribute('max-tokens') || 128),
        onText: (piece) => {
          s.last.text += piece;
          out.textContent = s.last.text;
        },
      });
      s.messages.push({ role: 'assistant', content: answer.text });
      s.last = { ...answer, done: true };
      this.$('.stats').textContent = describe(answer);
    } catch (e) {
      s.error = e.message;
      this.$('.error').textContent = e.message;
      s.messages.pop();
    } finally {
      s.busy = false;
    }
  }

  /** Runs (or stops) a node in an iframe of the relay's origin. */
  contribute(on) {
    const host = this.$('.frame');
    host.replaceChildren();
    if (!on) {
      this.state.node = null;
      this.$('.status').hidden = true;
      return;
    }
    const frame = document.createElement('iframe');
    frame.src = `${this.relay}/?embedded=1`;
    frame.title = 'tabnode node';
    host.append(frame);
  }
}

/** Registers <tabnode-chat> (once), with `relay` as the default relay. */
export function defineTabnodeChat({ relay } = {}) {
  if (relay) TabnodeChat.defaultRelay = relay.replace(/\/$/, '');
  if (!customElements.get('tabnode-chat')) customElements.define('tabnode-chat', TabnodeChat);
  return TabnodeChat;
}
