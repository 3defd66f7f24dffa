// Answers on the chat page as Markdown: `marked` parses, DOMPurify
// sanitises (a model's text is untrusted input: no scripts, no event
// handlers, no javascript: links survive), highlight.js colours code
// blocks (a coder model answers in code). All three are served from
// /node_modules/ as ES modules (www/package.json; scripts/setup.sh installs
// them), no bundler.
import { marked } from '/node_modules/marked/lib/marked.esm.js';
import DOMPurify from '/node_modules/dompurify/dist/purify.es.mjs';
import hljs from '/node_modules/@highlightjs/cdn-assets/es/core.min.js';
import bash from '/node_modules/@highlightjs/cdn-assets/es/languages/bash.min.js';
import c from '/node_modules/@highlightjs/cdn-assets/es/languages/c.min.js';
import cpp from '/node_modules/@highlightjs/cdn-assets/es/languages/cpp.min.js';
import javascript from '/node_modules/@highlightjs/cdn-assets/es/languages/javascript.min.js';
import json from '/node_modules/@highlightjs/cdn-assets/es/languages/json.min.js';
import python from '/node_modules/@highlightjs/cdn-assets/es/languages/python.min.js';
import rust from '/node_modules/@highlightjs/cdn-assets/es/languages/rust.min.js';
import typescript from '/node_modules/@highlightjs/cdn-assets/es/languages/typescript.min.js';

for (const [name, lang] of Object.entries({ bash, c, cpp, javascript, json, python, rust, typescript })) {
  hljs.registerLanguage(name, lang);
}

/** Renders `text` (Markdown) into `el`, replacing what it held. */
export function render(el, text) {
  el.innerHTML = DOMPurify.sanitize(marked.parse(text, { gfm: true }));
  for (const code of el.querySelectorAll('pre code')) {
    const lang = [...code.classList].find((k) => k.startsWith('language-'))?.slice(9);
    // Unknown languages stay plain (no guessing, no console warning).
    if (lang && hljs.getLanguage(lang)) hljs.highlightElement(code);
  }
  for (const a of el.querySelectorAll('a[href]')) {
    a.target = '_blank';
    a.rel = 'noopener noreferrer';
  }
}
