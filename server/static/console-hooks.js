// Test and debugging hooks, loaded before the realtime client opens any socket.
//
// `window.__sessionstream.dropConnection()` closes every open websocket the
// page holds, the way a network blip would, without telling the realtime
// client it was on purpose: the client must notice, reconnect and resume by
// itself. Browser tests use it to prove a reply survives a drop with no lost
// or repeated words; a person can use it from devtools to watch recovery.

const sockets = new Set();
const Native = globalThis.WebSocket;

class TrackedWebSocket extends Native {
  constructor(...args) {
    super(...args);
    sockets.add(this);
    this.addEventListener('close', () => sockets.delete(this));
  }
}

globalThis.WebSocket = TrackedWebSocket;

export const hooks = Object.assign(globalThis.__sessionstream || {}, {
  /** Close every open socket as an unexpected drop; returns how many were open. */
  dropConnection() {
    let dropped = 0;
    for (const socket of [...sockets]) {
      if (socket.readyState === Native.OPEN || socket.readyState === Native.CONNECTING) {
        dropped += 1;
        // 4000-4999 are application codes; 4999 says "dropped by a test", not a server verdict
        socket.close(4999, 'dropped by dropConnection()');
      }
    }
    return dropped;
  },
  /** Open sockets and their URLs (tokens are in the subprotocol, never in these URLs). */
  openSockets() {
    return [...sockets].filter((s) => s.readyState === Native.OPEN).map((s) => s.url);
  },
});

globalThis.__sessionstream = hooks;
