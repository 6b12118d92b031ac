// sessionstream realtime client: run and session channels that resume by themselves.
//
//   import { subscribeRun, subscribeSession, streamRun } from '/static/sessionstream.js';
//
//   const sub = subscribeRun({
//     baseUrl: location.origin, runId, token: publicAccessToken,
//     onEvent: (frame) => { if (frame.type === 'message.delta') out.textContent += frame.data.text; },
//     onState: (state, detail) => console.log(state, detail),
//   });
//   sub.close();
//
// Every frame is a ChatStreamEvent {type, runId, sessionId, seq, position, at, data}.
// A dropped connection is reopened with jittered exponential backoff and resumed with
// `after=<last seq>` (run) or `after=<last position>` (session); frames already
// delivered are skipped, so onEvent sees each event exactly once and in order.
// A run subscription ends after the run's terminal event (the end of a run is an
// event, never inferred from a socket closing). Tokens travel in the
// `bearer.<token>` subprotocol, never in the URL.
//
// onState(state, detail) receives 'connecting' | 'live' | 'reconnecting' | 'closed' |
// 'error'. 'error' is final and carries {code, reason} (and `head` for a resync):
// 4400, 4401, 4403, 4404 and 4409 are not retried. 4408 (too slow), 4429 (too many
// connections), 1001 (shutdown), 1011 (server error) and network drops are.
//
// Heartbeats tell a quiet channel from a node that stopped delivering. The server sends
// {type: 'heartbeat', delivered, head, stalled, at} every few seconds (no seq or
// position: it is not an event). onHeartbeat(frame) sees each one. A heartbeat with
// `stalled: true`, or silence longer than `stallMs` once heartbeats have been seen, makes
// the client reconnect (through the load balancer, to a node that delivers) and resume
// from its cursor; onState reports it as 'reconnecting' with reason 'stalled'.

export const SUBPROTOCOL = 'sessionstream.v1';
export const TERMINAL = Object.freeze(['run.completed', 'run.failed', 'run.canceled']);
export const FATAL_CODES = Object.freeze([4400, 4401, 4403, 4404, 4409]);
const RUN_FINISHED = 'run finished';

/** A refusal retrying cannot fix; `code` is the close code, `head` set on a resync. */
export class StreamError extends Error {
  constructor(code, reason, head = null) {
    super(`the server refused the channel (${code}): ${reason}`);
    this.name = 'StreamError';
    this.code = code;
    this.reason = reason;
    this.head = head;
  }
}

function channelUrl(baseUrl, path, params) {
  const base = new URL(baseUrl || globalThis.location.origin);
  const scheme = { 'http:': 'ws:', 'https:': 'wss:' }[base.protocol] || base.protocol;
  const url = new URL(base.href);
  url.protocol = scheme;
  url.pathname = base.pathname.replace(/\/+$/, '') + path;
  url.search = '';
  for (const [key, value] of Object.entries(params)) url.searchParams.set(key, String(value));
  return url.href;
}

function backoffDelay(attempt, baseMs, capMs) {
  const ceiling = Math.min(capMs, baseMs * 2 ** (attempt - 1));
  return baseMs / 2 + Math.random() * Math.max(0, ceiling - baseMs / 2);
}

function safely(callback, ...args) {
  if (!callback) return;
  try {
    callback(...args);
  } catch (error) {
    // a throwing handler must not break the subscription
    setTimeout(() => { throw error; });
  }
}

function follow({ baseUrl, path, token, cursorField, isRun, after, compact, onEvent, onState,
  onHeartbeat, stallMs = 35_000, backoff = {} }) {
  const baseMs = backoff.baseMs ?? 100;
  const capMs = backoff.capMs ?? 10_000;
  let cursor = Number(after) || 0;
  let socket = null;
  let timer = null;
  let watchdog = null;
  let failures = 0;
  let stopped = false;
  let state = null;

  const setState = (next, detail) => {
    if (state === next && next !== 'reconnecting') return;
    state = next;
    safely(onState, next, detail);
  };

  const stop = (next, detail) => {
    stopped = true;
    clearTimeout(timer);
    clearTimeout(watchdog);
    const open = socket;
    socket = null;
    if (open && open.readyState <= 1) open.close(1000, 'client closed');
    setState(next, detail);
  };

  const retry = (detail) => {
    failures += 1;
    setState('reconnecting', { ...detail, attempt: failures });
    timer = setTimeout(open, backoffDelay(failures, baseMs, capMs));
  };

  // the node stopped delivering: leave it, as if the socket had dropped
  const stalled = (ws, why) => {
    if (socket !== ws || stopped) return;
    socket = null;
    clearTimeout(watchdog);
    watchdog = null;
    ws.close(1000, 'stalled');
    retry({ code: 0, reason: 'stalled', detail: why });
  };

  // armed by the first heartbeat: a server that sends none is never judged by them
  const watch = (ws) => {
    clearTimeout(watchdog);
    watchdog = setTimeout(() => stalled(ws, 'no heartbeat'), stallMs);
  };

  const open = () => {
    if (stopped) return;
    const params = { after: cursor };
    if (compact && cursor === 0) params.compact = 1;
    let ws;
    try {
      ws = new WebSocket(channelUrl(baseUrl, path, params), [SUBPROTOCOL, `bearer.${token}`]);
    } catch (error) {
      stop('error', { code: 0, reason: String(error && error.message || error) });
      return;
    }
    socket = ws;
    let resync = null;
    ws.onopen = () => { if (socket === ws) setState('live'); };
    ws.onmessage = (message) => {
      if (socket !== ws) return;
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch {
        return;
      }
      if (frame.type === 'resync') {
        resync = frame;
        return;
      }
      if (frame.type === 'heartbeat') {
        safely(onHeartbeat, frame);
        if (frame.stalled) stalled(ws, 'the node reported a stalled delivery');
        else watch(ws);
        return;
      }
      if (watchdog !== null) watch(ws); // an event proves delivery as well as a heartbeat
      const position = frame[cursorField];
      if (typeof position !== 'number' || position <= cursor) return; // seen before a resume
      cursor = position;
      failures = 0;
      safely(onEvent, frame);
      if (isRun && TERMINAL.includes(frame.type) && !stopped) stop('closed');
    };
    ws.onclose = (event) => {
      if (socket !== ws || stopped) return;
      socket = null;
      clearTimeout(watchdog);
      watchdog = null;
      if (resync || FATAL_CODES.includes(event.code)) {
        const reason = resync ? resync.reason : event.reason;
        stop('error', { code: event.code || 4409, reason, head: resync ? resync.head : null });
        return;
      }
      if (isRun && event.code === 1000 && event.reason === RUN_FINISHED) {
        stop('closed'); // nothing after the cursor: the client already had the terminal event
        return;
      }
      retry({ code: event.code, reason: event.reason });
    };
  };

  setState('connecting');
  open();
  return {
    close() {
      if (!stopped) stop('closed');
    },
    /** The cursor to resume from: the last seq (run) or position (session) delivered. */
    get cursor() { return cursor; },
  };
}

/**
 * Subscribe to a run: `token` is its publicAccessToken or the owner's API token.
 * `compact: true` (with after 0) starts with one message.snapshot frame holding the
 * text so far. Returns {close()}.
 */
export function subscribeRun({ baseUrl, runId, token, after = 0, compact = false, onEvent,
  onState, onHeartbeat, stallMs, backoff }) {
  return follow({
    baseUrl, token, after, compact, onEvent, onState, onHeartbeat, stallMs, backoff,
    path: `/api/realtime/runs/${encodeURIComponent(runId)}`,
    cursorField: 'seq',
    isRun: true,
  });
}

/** Subscribe to every event of a session and its runs (owner's API token). Returns {close()}. */
export function subscribeSession({ baseUrl, sessionId, apiToken, after = 0, onEvent, onState,
  onHeartbeat, stallMs, backoff }) {
  return follow({
    baseUrl, token: apiToken, after, compact: false, onEvent, onState, onHeartbeat, stallMs,
    backoff,
    path: `/api/realtime/sessions/${encodeURIComponent(sessionId)}`,
    cursorField: 'position',
    isRun: false,
  });
}

/**
 * The run's frames as an async iterator, ending after the terminal event:
 *   for await (const frame of streamRun({ baseUrl, runId, token })) { ... }
 * Throws StreamError on a refusal; breaking out of the loop closes the socket.
 */
export async function* streamRun(opts) {
  const queue = [];
  let wake = null;
  let end = null;
  const sub = subscribeRun({
    ...opts,
    onEvent: (frame) => {
      queue.push(frame);
      if (wake) wake();
    },
    onState: (state, detail) => {
      safely(opts.onState, state, detail);
      if (state === 'closed') end = { error: null };
      if (state === 'error') {
        end = { error: new StreamError(detail.code, detail.reason, detail.head ?? null) };
      }
      if (end && wake) wake();
    },
  });
  try {
    for (;;) {
      if (queue.length) {
        yield queue.shift();
        continue;
      }
      if (end) {
        if (end.error) throw end.error;
        return;
      }
      await new Promise((resolve) => { wake = resolve; });
      wake = null;
    }
  } finally {
    sub.close();
  }
}
