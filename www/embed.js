// Embed the tabnode chat in any page:
//
//   <script src="https://RELAY/embed.js" async></script>
//
// adds a floating chat widget; `data-target="#id"` mounts it inside that
// element instead, `data-contribute` offers "contribute compute",
// `data-model` picks the model. Or place <tabnode-chat> elements yourself
// (see widget.js for their attributes). A classic script, so it works from
// any page; it loads the widget module from the relay.
(() => {
  const script = document.currentScript;
  if (!script) return;
  const base = new URL(script.src, location.href);
  import(new URL('widget.js', base).href).then(({ defineTabnodeChat }) => {
    defineTabnodeChat({ relay: base.origin });
    const d = script.dataset;
    if (d.target === 'none') return;
    const target = d.target ? document.querySelector(d.target) : null;
    if (!target && document.querySelector('tabnode-chat')) return;
    const el = document.createElement('tabnode-chat');
    if (d.contribute !== undefined) el.setAttribute('contribute', '');
    if (d.model) el.setAttribute('model', d.model);
    if (d.maxTokens) el.setAttribute('max-tokens', d.maxTokens);
    if (target) target.append(el);
    else {
      el.setAttribute('floating', '');
      document.body.append(el);
    }
  }).catch((e) => console.error('tabnode: could not load the chat widget', e));
})();
