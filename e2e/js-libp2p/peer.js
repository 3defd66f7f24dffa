// A standard js-libp2p browser peer, configured as a new user of the
// libraries would: it dials the relay's /webrtc-direct address and keeps
// one connection busy with pings, identify and explicitly closed protocol
// streams. Bundled by esbuild in js-libp2p.test.mjs (no CDN).
import { createLibp2p } from 'libp2p';
import { webRTCDirect } from '@libp2p/webrtc';
import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { identify } from '@libp2p/identify';
import { ping } from '@libp2p/ping';
import { multiaddr } from '@multiformats/multiaddr';

const PING = '/ipfs/ping/1.0.0';

/** One ping on a stream of our own, closed by us: how the close ended. */
async function closedStream(conn) {
  const stream = await conn.newStream(PING);
  const data = crypto.getRandomValues(new Uint8Array(32));
  const echoed = new Promise((resolve) => {
    let got = 0;
    stream.addEventListener('message', (evt) => {
      got += evt.data.byteLength;
      if (got >= 32) resolve(got);
    });
  });
  stream.send(data);
  await echoed;
  const start = performance.now();
  let error = null;
  try {
    // Sends FIN and waits (at most 10 s) for the remote's FIN_ACK.
    await stream.close();
  } catch (e) {
    error = `${e.name}: ${e.message}`;
  }
  return { closeMs: performance.now() - start, error, status: stream.status, writeStatus: stream.writeStatus };
}

/**
 * Dials `relayAddr` and for `seconds` does, once a second, a ping (the
 * service's own), an identify, and a ping on a stream it closes itself.
 * Returns what happened to each.
 */
window.runPeer = async (relayAddr, seconds) => {
  const node = await createLibp2p({
    transports: [webRTCDirect()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    // The browser default refuses loopback addresses.
    connectionGater: { denyDialMultiaddr: async () => false },
    services: { identify: identify(), ping: ping() },
  });
  const addr = multiaddr(relayAddr);
  const dialStart = performance.now();
  const conn = await node.dial(addr);
  const out = { dialMs: performance.now() - dialStart, pings: [], identifies: [], closes: [], connections: [] };
  const deadline = performance.now() + seconds * 1000;
  while (performance.now() < deadline) {
    const tick = performance.now();
    const timed = async (f) => {
      const start = performance.now();
      try {
        await f();
        return { ok: true, ms: performance.now() - start };
      } catch (e) {
        return { ok: false, ms: performance.now() - start, error: `${e.name}: ${e.message}` };
      }
    };
    out.pings.push(await timed(() => node.services.ping.ping(addr)));
    out.identifies.push(await timed(() => node.services.identify.identify(conn)));
    out.closes.push(await closedStream(conn).catch((e) => ({ error: `${e.name}: ${e.message}`, failed: true })));
    out.connections.push(node.getConnections().map((c) => `${c.id}:${c.status}`).join(','));
    const rest = 1000 - (performance.now() - tick);
    if (rest > 0) await new Promise((r) => setTimeout(r, rest));
  }
  out.sameConnection = node.getConnections().length === 1 && node.getConnections()[0].id === conn.id;
  out.status = conn.status;
  await node.stop();
  return out;
};
window.peerReady = true;
