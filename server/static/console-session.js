// The selected session: one live session channel (sessionstream.js) carrying
// every event of the session and its runs, the row from GET as the truth, and
// the session's event log (console-log.js) for what the row does not keep.
//
// Frames of a running turn overlay the row (streamed text, live skeleton and
// draft, example progress) until a refetch after the run's terminal event
// shows the durable result. A refetch never clears an error: errors clear
// when their cause does (console-errors.js).

import { renderLists, reloadSessions, writeHash } from './console-lists.js';
import { SessionLog } from './console-log.js';
import { TERMINAL, endedBadly, revisionsOf, runsOf } from './console-model.js';
import { $, BASE, errors, guard, onCause, report, state } from './console-state.js';
import { renderLog, renderSession, updateStreamingBubble } from './console-views.js';

const CONN_LABELS = {
  idle: 'no session', connecting: 'connecting…', live: 'live', reconnecting: 'reconnecting…',
  closed: 'disconnected', error: 'connection error',
};

// The realtime client is loaded on its own so that, if it fails, the console still works
// over HTTP and says why live updates are off instead of showing a blank page.
let realtime = null;
const realtimeReady = import('/static/sessionstream.js')
  .then((module) => { realtime = module; })
  .catch((error) => report({
    code: 'realtime_unavailable',
    message: `The realtime client /static/sessionstream.js did not load (${error.message}); live updates are off.`,
  }, 'realtime'));

export const connHistory = [];
const connListeners = [];

export function onConnection(listener) {
  connListeners.push(listener);
}

export function setConn(conn) {
  state.conn = conn;
  connHistory.push(conn);
  if (connHistory.length > 200) connHistory.shift();
  const node = $('conn-state');
  node.dataset.state = conn;
  $('conn-label').textContent = CONN_LABELS[conn] || conn;
  node.title = conn === 'closed' || conn === 'error'
    ? 'Realtime connection lost; click to reconnect' : 'Realtime connection to the selected session';
  for (const listener of connListeners) listener(conn);
}

export function closeSession() {
  state.generation += 1;
  if (state.sub) state.sub.close();
  if (state.log) state.log.close();
  if (state.replay) state.replay.handle.stop();
  for (const fill of state.fills.values()) fill.close();
  Object.assign(state, {
    sub: null, sessionId: null, row: null, activeRunId: null, lastPosition: 0, log: null, replay: null,
    view: { runs: [], revisions: revisionsOf([]) },
    compare: { skeleton: { from: null, to: null }, draft: { from: null, to: null } },
  });
  state.fills.clear();
  state.runs.clear();
  state.diffs.clear();
  errors.clearScope('session');
  setConn('idle');
  $('session-view').hidden = true;
  $('empty-state').hidden = false;
}

export async function openSession(id) {
  closeSession();
  errors.clear('deleted');
  const generation = state.generation;
  state.sessionId = id;
  renderLists();
  writeHash();
  // The head position before the read: the channel replays whatever commits after it, so
  // nothing between the read and the subscription is missed (repeats are harmless refetches).
  const { head_position: head } = await state.api.health();
  const { session } = await state.api.session(id);
  if (generation !== state.generation) return;
  state.row = session;
  state.lastPosition = head;
  state.log = new SessionLog(state.api, id, (log) => {
    if (generation !== state.generation) return;
    state.view = { runs: runsOf(log.events), revisions: revisionsOf(log.events) };
    renderLog();
  });
  $('empty-state').hidden = true;
  $('session-view').hidden = false;
  renderSession();
  subscribe(head);
  guard(() => state.log.sync(), { key: 'log', scope: 'session' });
}

export async function subscribe(after) {
  const generation = state.generation;
  await realtimeReady;
  if (generation !== state.generation) return;
  if (!realtime) {
    setConn('error');
    return;
  }
  const live = (fn) => (arg) => { if (generation === state.generation) fn(arg); };
  state.sub = realtime.subscribeSession({
    baseUrl: BASE, sessionId: state.sessionId, apiToken: state.api.token, after,
    onEvent: live((frame) => onFrame(frame, false)),
    onState: live(setConn),
  });
}

function newRun(id) {
  return {
    id, kind: null, status: 'queued', lastSeq: 0, text: '', final: null, error: null,
    userText: null, baseCount: null, skeleton: null, draft: null,
    done: 0, total: 0, progress: [], examples: [], leadIds: [], replace: true,
    terminal: false, settled: false, joined: false,
  };
}

export function runView(id) {
  let run = state.runs.get(id);
  if (!run) {
    run = newRun(id);
    state.runs.set(id, run);
  }
  return run;
}

// frames -------------------------------------------------------------------------------------

function onFrame(frame, fromFill) {
  if (typeof frame.position === 'number' && !fromFill) {
    state.lastPosition = Math.max(state.lastPosition, frame.position);
  }
  if (frame.runId) onRunFrame(frame, fromFill);
  else onSessionFrame(frame);
  if (!fromFill && state.log) state.log.schedule((sync) => guard(sync, { key: 'log', scope: 'session' }));
}

function onSessionFrame(frame) {
  const data = frame.data || {};
  if (frame.type === 'run.claimed' && state.row) {
    state.activeRunId = data.run_id;
    const run = runView(data.run_id);
    run.kind = run.kind || data.kind || null;
    state.row = { ...state.row, task_status: data.task_status };
    renderSession();
  }
  if (frame.type === 'session.deleted') {
    closeSession();
    report({ code: 'deleted', message: 'This session was deleted.' }, 'deleted');
    guard(reloadSessions, { key: 'sessions' });
    return;
  }
  scheduleRefresh();
}

const SNAPSHOT = (run, data) => {
  run.joined = true;
  run.text = data.text || '';
  run.status = data.status || run.status;
  if (data.message && typeof data.message.content === 'string') run.final = data.message.content;
  if (data.skeleton) run.skeleton = { skeleton: data.skeleton.skeleton, framework_version: data.skeleton.framework_version };
  if (data.draft) run.draft = { draft_subject: data.draft.draft_subject, draft_body: data.draft.draft_body };
  if (data.progress) Object.assign(run, { done: data.progress.done, total: data.progress.total });
  run.examples = Array.isArray(data.examples) ? [...data.examples] : [];
  run.kind = run.examples.length || data.progress ? 'examples' : run.kind || 'turn';
};

function onRunFrame(frame, fromFill) {
  const run = runView(frame.runId);
  if (frame.seq <= run.lastSeq) return; // already applied (a resume or the other channel)
  if (!fromFill && frame.seq !== run.lastSeq + 1) {
    fillRun(run); // joined this run after it started: its run channel replays it from the start
    return;
  }
  run.lastSeq = frame.seq;
  if (!TERMINAL.has(frame.type) && !state.activeRunId) state.activeRunId = run.id; // joined mid-run
  const data = frame.data || {};
  switch (frame.type) {
    case 'run.created':
      run.kind = run.kind || data.kind || null;
      break;
    case 'run.started':
      run.status = 'running';
      run.kind = run.kind || data.kind || null;
      break;
    case 'message.snapshot': // a compact start: everything the run did before we joined
      SNAPSHOT(run, data);
      break;
    case 'message.delta':
      run.kind = run.kind || 'turn';
      run.status = 'running';
      run.text += data.text || '';
      updateStreamingBubble(run);
      return;
    case 'message.completed':
      run.final = data.message && typeof data.message.content === 'string' ? data.message.content : run.text;
      break;
    case 'skeleton.updated':
      run.skeleton = { skeleton: data.skeleton, framework_version: data.framework_version };
      break;
    case 'draft.updated':
      run.draft = { draft_subject: data.draft_subject, draft_body: data.draft_body };
      break;
    case 'examples.progress':
      run.kind = 'examples';
      run.done = data.done ?? run.done;
      run.total = data.total ?? run.total;
      run.progress.push([run.done, run.total]);
      break;
    case 'example.generated':
      run.kind = 'examples';
      run.examples.push({ lead_id: data.lead_id, subject: data.subject, body: data.body });
      break;
    default:
      if (TERMINAL.has(frame.type)) {
        run.terminal = true;
        run.status = frame.type.slice(4);
        if (frame.type === 'run.failed') run.error = String(data.error || 'unknown error');
        if (frame.type === 'run.canceled') run.error = String(data.reason || 'canceled');
        const fill = state.fills.get(run.id);
        if (fill) {
          fill.close();
          state.fills.delete(run.id);
        }
        scheduleRefresh();
      }
  }
  renderSession();
}

function fillRun(run) {
  if (state.fills.has(run.id) || !realtime) return;
  const generation = state.generation;
  state.fills.set(run.id, realtime.subscribeRun({
    baseUrl: BASE, runId: run.id, token: state.api.token, after: run.lastSeq, compact: true,
    onEvent: (frame) => { if (generation === state.generation) onFrame(frame, true); },
    onState: () => {},
  }));
}

/** Runs that ended badly: from the log, plus live ones the log has not caught up with. */
export function badEndings() {
  const logged = endedBadly(state.view.runs);
  const known = new Set(state.view.runs.map((run) => run.id));
  const live = [...state.runs.values()]
    .filter((run) => run.terminal && (run.status === 'failed' || run.status === 'canceled') && !known.has(run.id))
    .map((run) => ({ ...run, afterMessage: Infinity }));
  return [...logged, ...live];
}

// refetching the row ---------------------------------------------------------------------------

let refreshTimer = null;
let refreshStarted = 0;
let refreshApplied = 0;

export function scheduleRefresh() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => {
    refreshTimer = null;
    guard(refresh, { key: 'refresh', scope: 'session' });
  }, 40);
}

// A 409 "session busy" stays until a row read *after* the refusal shows the session idle.
onCause('busy', () => {
  scheduleRefresh();
  return { scope: 'session', since: refreshStarted };
});

async function refresh() {
  if (!state.sessionId) return;
  const generation = state.generation;
  const ticket = ++refreshStarted;
  // runs whose terminal event is already in: this read includes their durable results
  const settling = [...state.runs.values()].filter((r) => r.terminal && !r.settled);
  let session;
  try {
    ({ session } = await state.api.session(state.sessionId));
  } catch (error) {
    if (error.status === 404 && generation === state.generation) {
      closeSession();
      await reloadSessions();
    }
    throw error;
  }
  if (generation !== state.generation || ticket < refreshApplied) return;
  refreshApplied = ticket;
  state.row = session;
  for (const run of settling) run.settled = true;
  if (!session.task_status) {
    state.activeRunId = null;
    errors.clearIf('busy', (entry) => ticket > entry.since);
  }
  const index = state.sessions.findIndex((s) => s.id === session.id);
  if (index >= 0) state.sessions[index] = session;
  renderLists();
  renderSession();
}

/** After a command answered with the new row (rollback, rename). */
export function applyRow(session) {
  state.row = session;
  const index = state.sessions.findIndex((s) => s.id === session.id);
  if (index >= 0) state.sessions[index] = session;
  renderLists();
  renderSession();
}
