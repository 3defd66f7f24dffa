// Persistent node identity for this browser profile.
//
// Each open tab is its own node, so it needs its own key: a tab takes the
// first free "slot" (a Web Lock held for the tab's lifetime) and keeps that
// slot's key in IndexedDB. Reloading a tab gets slot 0 back, so the peer id
// survives reloads; a second tab open at the same time gets slot 1.

const DB = 'tabnode';
const STORE = 'identity';

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function tx(db, mode, fn) {
  return new Promise((resolve, reject) => {
    const t = db.transaction(STORE, mode);
    const req = fn(t.objectStore(STORE));
    t.oncomplete = () => resolve(req.result);
    t.onerror = () => reject(t.error);
    t.onabort = () => reject(t.error);
  });
}

// Resolves to the slot number once this tab holds its lock. The lock is held
// until the tab closes (the promise passed to request never settles).
async function acquireSlot() {
  if (!navigator.locks) return 0;
  for (let slot = 0; slot < 64; slot++) {
    const got = await new Promise((resolve) => {
      navigator.locks.request(`tabnode-identity-${slot}`, { ifAvailable: true }, (lock) => {
        if (!lock) { resolve(false); return undefined; }
        resolve(true);
        return new Promise(() => {});
      });
    });
    if (got) return slot;
  }
  throw new Error('more than 64 tabnode tabs open in this browser');
}

export async function loadIdentity() {
  const slot = await acquireSlot();
  const db = await openDb();
  const key = `slot-${slot}`;
  const stored = await tx(db, 'readonly', (s) => s.get(key));
  return {
    slot,
    bytes: stored instanceof Uint8Array ? stored : undefined,
    save: (bytes) => tx(db, 'readwrite', (s) => s.put(new Uint8Array(bytes), key)),
    forget: () => tx(db, 'readwrite', (s) => s.delete(key)),
  };
}
