// The sessionstream console: campaigns, nodes and sessions over HTTP; one live
// session channel over a websocket (sessionstream.js) that carries every event
// of the selected session, its runs' text deltas included.
//
// State flows one way: HTTP reads and websocket frames update `state`, then
// the render functions redraw the affected region from it. The session row
// from GET is the truth; frames of a running turn overlay it (streamed text,
// live skeleton and draft, example progress) until a refetch after the run's
// terminal event shows the durable result.

import { hooks } from './console-hooks.js';
import { Api } from './console-api.js';
import { byTestId, el, formatTime, highlight, mount, shortId, stickToBottom } from './console-dom.js';
import {
  messageBubble, renderAudit, renderDraft, renderExamples, renderHistory, renderProgress,
  renderSkeleton,
} from './console-panels.js';

const TOKEN_KEY = 'sessionstream.apiToken'; // sessionStorage only: gone when the tab closes
const BASE = window.location.origin;
const TERMINAL = new Set(['run.completed', 'run.failed', 'run.canceled']);
const CONN_LABELS = {
  idle: 'no session', connecting: 'connecting…', live: 'live', reconnecting: 'reconnecting…',
  closed: 'disconnected', error: 'connection error',
};
const STATUS_LABELS = {
  chat_processing: 'assistant is writing…', generating_examples: 'generating examples…',
};
const LEAD_FIELDS = ['id', 'first_name', 'last_name', 'company', 'position'];
const $ = (id) => byTestId(id);

// The realtime client is loaded on its own so that, if it fails, the console still works
// over HTTP and says why live updates are off instead of showing a blank page.
let realtime = null;
const realtimeReady = import('/static/sessionstream.js')
  .then((module) => { realtime = module; })
  .catch((error) => showError({
    code: 'realtime_unavailable',
    message: `The realtime client /static/sessionstream.js did not load (${error.message}); live updates are off.`,
  }));

const state = {
  api: null,
  campaigns: [], campaignId: null,
  nodes: [], nodeId: null,
  sessions: [], sessionId: null,
  row: null,
  runs: new Map(), // runId -> run view (see newRun)
  activeRunId: null,
  sub: null, // the session channel
  fills: new Map(), // runId -> run channel catching up a run joined mid-way
  lastPosition: 0,
  conn: 'idle',
  tab: 'framework',
  audit: { events: [], next: null, loading: false, loaded: false },
  generation: 0, // bumped on every session switch; late async results of older ones are dropped
  leads: [
    { id: 'lead-1', first_name: 'Dana', last_name: 'Kim', company: 'Northwind', position: 'VP of Sales' },
    { id: 'lead-2', first_name: 'Luis', last_name: 'Ortega', company: 'Globex', position: 'Head of Revenue' },
    { id: 'lead-3', first_name: 'Priya', last_name: 'Shah', company: 'Initech', position: 'CRO' },
  ],
};

// errors: always a sentence on screen -------------------------------------------------

function showError(error) {
  const code = error && error.code ? `${error.code}: ` : '';
  let message = (error && error.message) || String(error);
  if (error && error.status === 401) message += '. Check the token: `sessionstream users create NAME` prints one.';
  $('error-text').textContent = code + message;
  $('error-banner').dataset.code = (error && error.code) || 'error';
  $('error-banner').hidden = false;
}

function clearError() {
  $('error-banner').hidden = true;
}

/** Run an action, showing any error; disables `button` while it is in flight. */
async function guard(action, button) {
  if (button) button.disabled = true;
  try {
    clearError();
    return await action();
  } catch (error) {
    showError(error);
    if (error && error.status === 401) setSignedIn(false);
    return undefined;
  } finally {
    if (button) button.disabled = false;
    renderBusy();
  }
}

window.addEventListener('error', (event) => showError({ code: 'script_error', message: event.message }));
window.addEventListener('unhandledrejection', (event) => showError(event.reason || 'unexpected error'));

// token ----------------------------------------------------------------------------------

function setSignedIn(signedIn) {
  $('token-forget').hidden = !signedIn;
  $('token-input').placeholder = signedIn ? 'Token saved for this tab' : 'Paste an API token';
  document.body.dataset.signedIn = String(signedIn);
}

async function connect(token) {
  const api = new Api(BASE, token);
  state.api = api;
  setSignedIn(true);
  try {
    clearError();
    await loadCampaigns(readHash());
  } catch (error) {
    if (state.api !== api) return; // a newer token took over meanwhile
    showError(error);
    if (error.status === 401) {
      // a rejected token is not kept, not even for this tab
      sessionStorage.removeItem(TOKEN_KEY);
      state.api = null;
      setSignedIn(false);
      renderLists();
    }
  }
}

function forget() {
  sessionStorage.removeItem(TOKEN_KEY);
  closeSession();
  Object.assign(state, { api: null, campaigns: [], campaignId: null, nodes: [], nodeId: null, sessions: [] });
  setSignedIn(false);
  renderLists();
  writeHash();
}

// selection in the URL fragment (never the token) -----------------------------------------

function readHash() {
  const params = new URLSearchParams(window.location.hash.slice(1));
  return { campaign: params.get('campaign'), node: params.get('node'), session: params.get('session') };
}

function writeHash() {
  const params = new URLSearchParams();
  if (state.campaignId) params.set('campaign', state.campaignId);
  if (state.nodeId) params.set('node', state.nodeId);
  if (state.sessionId) params.set('session', state.sessionId);
  const hash = params.toString();
  window.history.replaceState(null, '', hash ? `#${hash}` : window.location.pathname);
}

// campaigns, nodes, sessions ----------------------------------------------------------------

async function loadCampaigns(wanted = {}) {
  const { campaigns } = await state.api.campaigns();
  state.campaigns = campaigns;
  const pick = campaigns.find((c) => c.id === (wanted.campaign || state.campaignId)) || campaigns[0];
  renderLists();
  if (pick) await selectCampaign(pick.id, wanted);
}

async function selectCampaign(id, wanted = {}) {
  if (state.campaignId !== id) closeSession();
  state.campaignId = id;
  const [{ nodes }, { sessions }] = await Promise.all([state.api.nodes(id), state.api.sessions(id)]);
  state.nodes = nodes;
  state.sessions = sessions;
  const node = nodes.find((n) => n.id === (wanted.node || state.nodeId)) || nodes[0];
  state.nodeId = node ? node.id : null;
  renderLists();
  writeHash();
  const session = sessions.find((s) => s.id === wanted.session);
  if (session) await openSession(session.id);
}

async function reloadSessions() {
  const { sessions } = await state.api.sessions(state.campaignId);
  state.sessions = sessions;
  renderLists();
}

function pickItem(testid, { id, selected, title, meta, onpick }) {
  return el('li', {}, el('button', {
    type: 'button', class: 'pick', testid, dataset: { id }, 'aria-current': selected ? 'true' : 'false',
    onclick: () => guard(onpick),
  }, el('span', { class: 'pick-title' }, title), meta ? el('span', { class: 'pick-meta' }, meta) : null));
}

function sessionLabel(session) {
  return session.title || `Session ${shortId(session.id)}`;
}

function nodeName(nodeId) {
  const node = state.nodes.find((n) => n.id === nodeId);
  return node ? `${node.position}. ${node.name || 'node'}` : `node ${shortId(nodeId)}`;
}

function renderLists() {
  mount($('campaign-list'), state.campaigns.map((c) => pickItem('campaign-item', {
    id: c.id, selected: c.id === state.campaignId, title: c.name,
    meta: `${c.node_count ?? 0} node${c.node_count === 1 ? '' : 's'}`,
    onpick: () => selectCampaign(c.id),
  })));
  mount($('node-list'), state.nodes.map((n) => pickItem('node-item', {
    id: n.id, selected: n.id === state.nodeId, title: nodeName(n.id),
    meta: `${state.sessions.filter((s) => s.node_id === n.id).length} session(s)`,
    onpick: async () => { state.nodeId = n.id; renderLists(); writeHash(); },
  })));
  mount($('session-list'), state.sessions.map((s) => pickItem('session-item', {
    id: s.id, selected: s.id === state.sessionId, title: sessionLabel(s),
    meta: [nodeName(s.node_id), STATUS_LABELS[s.task_status] || formatTime(s.created_at)].join(' · '),
    onpick: () => openSession(s.id),
  })));
  const signedIn = Boolean(state.api);
  $('campaign-form').hidden = !signedIn;
  $('node-form').hidden = !state.campaignId;
  $('session-create').hidden = !state.campaignId;
  $('session-create').disabled = !state.nodeId;
  $('session-create').textContent = state.nodeId ? `New session for ${nodeName(state.nodeId)}` : 'Add a node first';
  if (!state.campaigns.length) {
    $('campaign-list').append(el('li', { class: 'muted small' }, signedIn ? 'No campaigns yet.' : 'Connect with a token first.'));
  }
  if (!state.campaignId) {
    $('node-list').append(el('li', { class: 'muted small' }, 'Pick or add a campaign first.'));
    $('session-list').append(el('li', { class: 'muted small' }, 'Sessions belong to a campaign node.'));
  }
  if (state.campaignId && !state.nodes.length) $('node-list').append(el('li', { class: 'muted small' }, 'No nodes yet.'));
  if (state.campaignId && !state.sessions.length) $('session-list').append(el('li', { class: 'muted small' }, 'No sessions yet.'));
}

// the selected session -----------------------------------------------------------------------

function closeSession() {
  state.generation += 1;
  if (state.sub) state.sub.close();
  for (const fill of state.fills.values()) fill.close();
  Object.assign(state, {
    sub: null, sessionId: null, row: null, activeRunId: null, lastPosition: 0,
    audit: { events: [], next: null, loading: false, loaded: false },
  });
  state.fills.clear();
  state.runs.clear();
  setConn('idle');
  $('session-view').hidden = true;
  $('empty-state').hidden = false;
}

async function openSession(id) {
  closeSession();
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
  $('empty-state').hidden = true;
  $('session-view').hidden = false;
  renderSession();
  subscribe(head);
}

async function subscribe(after) {
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

const connHistory = [];

function setConn(conn) {
  state.conn = conn;
  connHistory.push(conn);
  if (connHistory.length > 200) connHistory.shift();
  const node = $('conn-state');
  node.dataset.state = conn;
  $('conn-label').textContent = CONN_LABELS[conn] || conn;
  node.title = conn === 'closed' || conn === 'error'
    ? 'Realtime connection lost; click to reconnect' : 'Realtime connection to the selected session';
}

function newRun(id) {
  return {
    id, kind: null, status: 'queued', lastSeq: 0, text: '', final: null, error: null,
    userText: null, baseCount: null, skeleton: null, draft: null,
    done: 0, total: 0, progress: [], examples: [], leadIds: [], replace: true,
    terminal: false, settled: false, joined: false,
  };
}

function runView(id) {
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
  if (state.tab === 'audit' && !fromFill) scheduleAudit();
}

function onSessionFrame(frame) {
  const data = frame.data || {};
  if (frame.type === 'run.claimed' && state.row) {
    state.activeRunId = data.run_id;
    const run = runView(data.run_id);
    run.kind = run.kind || data.kind || null;
    state.row = { ...state.row, task_status: data.task_status };
    renderBusy();
  }
  if (frame.type === 'session.deleted') {
    showError({ code: 'deleted', message: 'This session was deleted.' });
    closeSession();
    guard(reloadSessions);
    return;
  }
  scheduleRefresh();
}

function onRunFrame(frame, fromFill) {
  const run = runView(frame.runId);
  if (frame.seq <= run.lastSeq) return; // already applied (a resume or the other channel)
  if (!fromFill && frame.seq !== run.lastSeq + 1) {
    // Joined this run after it started: its run channel replays it from the start.
    fillRun(run);
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
      run.joined = true;
      run.text = data.text || '';
      run.status = data.status || run.status;
      if (data.message && typeof data.message.content === 'string') run.final = data.message.content;
      if (data.skeleton) run.skeleton = { skeleton: data.skeleton.skeleton, framework_version: data.skeleton.framework_version };
      if (data.draft) run.draft = { draft_subject: data.draft.draft_subject, draft_body: data.draft.draft_body };
      if (data.progress) Object.assign(run, { done: data.progress.done, total: data.progress.total });
      run.examples = Array.isArray(data.examples) ? [...data.examples] : [];
      if (run.examples.length || data.progress) run.kind = 'examples';
      else run.kind = run.kind || 'turn';
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
        if (frame.type === 'run.failed') {
          run.error = data.error || 'unknown error';
          showError({ code: 'run_failed', message: `The run failed: ${run.error}` });
        }
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

// refetching the row ---------------------------------------------------------------------------

let refreshTimer = null;
let refreshStarted = 0;
let refreshApplied = 0;

function scheduleRefresh() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => {
    refreshTimer = null;
    guard(refresh);
  }, 40);
}

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
  if (!session.task_status) state.activeRunId = null;
  const index = state.sessions.findIndex((s) => s.id === session.id);
  if (index >= 0) state.sessions[index] = session;
  renderLists();
  renderSession();
}

/** The row with the live overlays of runs whose results are not in it yet. */
function displayRow() {
  let row = state.row;
  for (const run of state.runs.values()) {
    if (run.settled) continue;
    if (run.skeleton) row = { ...row, ...run.skeleton };
    if (run.draft) row = { ...row, ...run.draft };
  }
  return row;
}

// rendering the session ------------------------------------------------------------------------

function renderSession() {
  if (!state.row) return;
  const row = displayRow();
  const live = [...state.runs.values()].some((r) => !r.settled && (r.skeleton || r.draft));
  $('session-title').textContent = sessionLabel(row);
  $('session-id').textContent = `${nodeName(row.node_id)} · ${row.id}`;
  renderChat();
  renderDraft($('draft-panel'), row, { live });
  renderSkeleton($('skeleton-panel'), row.skeleton, row.framework_version);
  renderHistory($('history-panel'), row, {
    busy: Boolean(row.task_status),
    onRollbackSkeleton: (version) => guard(async () => {
      const { session } = await state.api.rollbackSkeleton(state.sessionId, version);
      state.row = session;
      renderSession();
    }),
    onRollbackDraft: (index) => guard(async () => {
      const { session } = await state.api.rollbackDraft(state.sessionId, index);
      state.row = session;
      renderSession();
    }),
  });
  renderExamplesPanel(row);
  renderBusy();
}

function renderChat() {
  const container = $('messages');
  const messages = Array.isArray(state.row.messages) ? state.row.messages : [];
  const items = messages.map((m) => messageBubble(m.role, m.content));
  for (const run of state.runs.values()) {
    if (run.settled || run.kind === 'examples') continue;
    if (run.userText !== null && messages.length <= run.baseCount) {
      items.push(messageBubble('user', run.userText));
    }
    if (run.kind === 'turn' || run.text) items.push(streamingBubble(run));
  }
  if (!items.length) {
    items.push(el('p', { class: 'muted chat-empty', testid: 'chat-empty' },
      'Say what the email should do: audience, offer, proof, call to action, tone.'));
  }
  stickToBottom(container, () => mount(container, items));
}

function streamingBubble(run) {
  const text = run.terminal && run.final !== null ? run.final : run.text;
  const bubble = messageBubble('assistant', text || '', {
    streaming: true, runId: run.id, state: run.terminal ? run.status : 'streaming',
  });
  if (!text && !run.terminal) {
    bubble.querySelector('.msg-text').append(el('span', { class: 'muted' }, 'thinking…'));
  }
  return bubble;
}

function updateStreamingBubble(run) {
  const container = $('messages');
  const bubble = container.querySelector(`[data-testid="streaming-message"][data-run-id="${run.id}"]`);
  if (!bubble) {
    renderChat();
    return;
  }
  stickToBottom(container, () => mount(bubble.querySelector('.msg-text'), highlight(run.text)));
}

function latestExamplesRun() {
  let latest = null;
  for (const run of state.runs.values()) if (run.kind === 'examples') latest = run;
  return latest;
}

function renderExamplesPanel(row) {
  const run = latestExamplesRun();
  if (run && !run.settled) {
    const base = run.replace ? [] : (row.generated_examples || []);
    const written = new Set(run.examples.map((e) => String(e.lead_id)));
    const pending = run.terminal ? [] : run.leadIds.filter((id) => !written.has(String(id)));
    renderExamples($('examples-panel'), [...base, ...run.examples], pending);
  } else {
    renderExamples($('examples-panel'), row.generated_examples);
  }
  if (run) {
    const done = run.terminal && run.status === 'completed' ? Math.max(run.done, run.total) : run.done;
    renderProgress($('examples-progress'), $('examples-progress-label'), done, run.total,
      run.terminal ? (run.status === 'completed' ? 'done' : run.status) : 'running');
  } else {
    renderProgress($('examples-progress'), $('examples-progress-label'), 0, 0, 'idle');
  }
}

function renderBusy() {
  const row = state.row;
  const status = row ? row.task_status : null;
  const badge = $('task-status');
  badge.dataset.status = status || 'idle';
  badge.textContent = STATUS_LABELS[status] || 'idle';
  const busy = Boolean(status);
  $('turn-send').disabled = busy || !row;
  $('examples-generate').disabled = busy || !row || !row.skeleton;
  $('examples-generate').title = row && !row.skeleton ? 'Chat first: examples need a framework' : '';
  $('cancel-run').hidden = !(busy && state.activeRunId);
}

// leads table -------------------------------------------------------------------------------------

function renderLeads() {
  const tbody = $('leads-table').querySelector('tbody');
  mount(tbody, state.leads.map((lead, index) => el('tr', { testid: 'lead-row' },
    LEAD_FIELDS.map((field) => el('td', {}, el('input', {
      value: lead[field] || '', testid: `lead-${field}`, 'aria-label': `lead ${index + 1} ${field}`,
      dataset: { row: String(index) },
      oninput: (event) => { state.leads[index][field] = event.target.value; },
    }))),
    el('td', {}, el('button', {
      type: 'button', class: 'small ghost', testid: 'lead-remove', 'aria-label': `remove lead ${index + 1}`,
      onclick: () => { state.leads.splice(index, 1); renderLeads(); },
    }, '×')))));
}

function leadsForRequest() {
  return state.leads
    .map((lead) => Object.fromEntries(Object.entries(lead).map(([k, v]) => [k, String(v).trim()]).filter(([, v]) => v)))
    .filter((lead) => lead.id);
}

// audit ---------------------------------------------------------------------------------------------

let auditTimer = null;

function scheduleAudit() {
  if (auditTimer) return;
  auditTimer = setTimeout(() => {
    auditTimer = null;
    if (state.audit.loaded && state.audit.next === null) guard(() => loadAudit(false));
  }, 400);
}

const AUDIT_PAGE = 1000; // the events API's largest page
const AUDIT_BATCH = 10_000; // events fetched per click before asking for "Load more"

async function loadAudit(reset) {
  const audit = state.audit;
  if (audit.loading || !state.sessionId) return;
  const generation = state.generation;
  if (reset) Object.assign(audit, { events: [], next: null, loaded: false });
  audit.loading = true;
  try {
    let fetched = 0;
    do {
      const last = audit.events.length ? audit.events[audit.events.length - 1].position : 0;
      const page = await state.api.events(state.sessionId, audit.next ?? last, AUDIT_PAGE);
      if (generation !== state.generation) return;
      const seen = new Set(audit.events.slice(-AUDIT_PAGE).map((e) => e.position));
      audit.events.push(...page.events.filter((e) => !seen.has(e.position)));
      audit.next = page.next ?? null;
      fetched += page.events.length;
    } while (audit.next !== null && fetched < AUDIT_BATCH);
    audit.loaded = true;
  } finally {
    audit.loading = false;
  }
  renderAuditPanel();
}

function renderAuditPanel() {
  const shown = renderAudit($('audit-table').querySelector('tbody'), state.audit.events, {
    hideDeltas: $('audit-hide-deltas').checked,
  });
  const total = state.audit.events.length;
  $('audit-summary').textContent = `${total} event${total === 1 ? '' : 's'} loaded, ${shown} shown`
    + (state.audit.next !== null ? '; more available' : '');
  $('audit-more').hidden = state.audit.next === null;
}

// tabs ----------------------------------------------------------------------------------------------

function selectTab(tab) {
  state.tab = tab;
  for (const button of document.querySelectorAll('.tab')) {
    button.setAttribute('aria-selected', String(button.dataset.tab === tab));
  }
  for (const panel of document.querySelectorAll('.tabpanel')) panel.hidden = panel.dataset.panel !== tab;
  if (tab === 'audit' && state.sessionId && !state.audit.loaded) guard(() => loadAudit(true));
}

// actions ----------------------------------------------------------------------------------------------

function splitNames(text) {
  return text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
}

async function sendTurn() {
  const input = $('turn-input');
  const message = input.value.trim();
  if (!message || !state.row) return;
  const body = { message };
  const vars = splitNames($('turn-vars').value);
  if (vars.length) body.availableVarNames = vars;
  if ($('turn-sample-leads').checked) {
    const sample = leadsForRequest().map(({ id, ...rest }) => rest);
    if (sample.length) body.sampleLeads = sample;
  }
  const baseCount = (state.row.messages || []).length;
  const { runId } = await state.api.turn(state.sessionId, body);
  input.value = '';
  const run = runView(runId);
  Object.assign(run, { kind: 'turn', userText: message, baseCount });
  state.activeRunId = runId;
  state.row = { ...state.row, task_status: state.row.task_status || 'chat_processing' };
  renderSession();
}

async function generateExamples() {
  const leads = leadsForRequest();
  if (!leads.length) throw { code: 'no_leads', message: 'Add at least one lead with an id.' };
  const replace = $('examples-replace').checked;
  const { runId } = await state.api.generateExamples(state.sessionId, { leads, isFirstBatch: replace });
  const run = runView(runId);
  Object.assign(run, { kind: 'examples', replace, total: run.total || leads.length, leadIds: leads.map((l) => l.id) });
  state.activeRunId = runId;
  state.row = { ...state.row, task_status: state.row.task_status || 'generating_examples' };
  renderSession();
}

function startRename() {
  const title = $('session-title');
  const input = el('input', { class: 'rename', testid: 'rename-input', value: state.row.title || '', maxlength: 200 });
  const finish = async (save) => {
    input.replaceWith(title);
    if (!save) return;
    await guard(async () => {
      const { session } = await state.api.patchSession(state.sessionId, { title: input.value.trim() || null });
      state.row = session;
      const index = state.sessions.findIndex((s) => s.id === session.id);
      if (index >= 0) state.sessions[index] = session;
      renderLists();
      renderSession();
    });
  };
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter') finish(true);
    if (event.key === 'Escape') finish(false);
  });
  input.addEventListener('blur', () => { if (input.isConnected) finish(true); });
  title.replaceWith(input);
  input.focus();
}

let deleteArmed = null;

async function deleteSession(button) {
  if (!deleteArmed) {
    button.textContent = 'Click again to delete';
    deleteArmed = setTimeout(() => { deleteArmed = null; button.textContent = 'Delete'; }, 4000);
    return;
  }
  clearTimeout(deleteArmed);
  deleteArmed = null;
  button.textContent = 'Delete';
  await state.api.deleteSession(state.sessionId);
  closeSession();
  writeHash();
  await reloadSessions();
}

// wiring -------------------------------------------------------------------------------------------------

function on(testid, type, handler) {
  $(testid).addEventListener(type, handler);
}

function wire() {
  on('token-form', 'submit', (event) => {
    event.preventDefault();
    const token = $('token-input').value.trim();
    if (!token) {
      showError({ code: 'no_token', message: 'Paste an API token first (sessionstream users create NAME prints one).' });
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $('token-input').value = '';
    connect(token);
  });
  on('token-forget', 'click', forget);
  on('error-close', 'click', clearError);
  on('campaign-form', 'submit', (event) => {
    event.preventDefault();
    const input = $('campaign-name');
    const name = input.value.trim();
    if (!name) return;
    guard(async () => {
      const { campaign } = await state.api.createCampaign(name);
      input.value = '';
      await loadCampaigns({ campaign: campaign.id });
    }, $('campaign-create'));
  });
  on('node-form', 'submit', (event) => {
    event.preventDefault();
    const input = $('node-name');
    guard(async () => {
      const { node } = await state.api.createNode(state.campaignId, input.value.trim());
      input.value = '';
      state.nodeId = node.id;
      await loadCampaigns({ campaign: state.campaignId, node: node.id, session: state.sessionId });
    }, $('node-create'));
  });
  on('session-create', 'click', () => guard(async () => {
    const { session } = await state.api.createSession(state.campaignId, state.nodeId);
    await reloadSessions();
    await openSession(session.id);
  }, $('session-create')));
  on('turn-form', 'submit', (event) => {
    event.preventDefault();
    guard(sendTurn, $('turn-send'));
  });
  on('turn-input', 'keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      $('turn-form').requestSubmit();
    }
  });
  on('examples-form', 'submit', (event) => {
    event.preventDefault();
    guard(generateExamples, $('examples-generate'));
  });
  on('lead-add', 'click', () => {
    state.leads.push({ id: `lead-${state.leads.length + 1}`, first_name: '', last_name: '', company: '', position: '' });
    renderLeads();
  });
  on('cancel-run', 'click', () => guard(() => state.api.cancelRun(state.activeRunId), $('cancel-run')));
  on('session-delete', 'click', (event) => guard(() => deleteSession(event.currentTarget)));
  on('session-rename', 'click', startRename);
  on('audit-refresh', 'click', () => guard(() => loadAudit(true), $('audit-refresh')));
  on('audit-more', 'click', () => guard(() => loadAudit(false), $('audit-more')));
  on('audit-hide-deltas', 'change', renderAuditPanel);
  on('conn-state', 'click', () => {
    if ((state.conn === 'closed' || state.conn === 'error') && state.sessionId) {
      if (state.sub) state.sub.close();
      subscribe(state.lastPosition);
    }
  });
  for (const button of document.querySelectorAll('.tab')) {
    button.addEventListener('click', () => selectTab(button.dataset.tab));
  }
}

Object.assign(hooks, {
  /** The text a run streamed, exactly as its deltas arrived (no final-message substitution). */
  streamedText: (runId) => (state.runs.get(runId) || { text: null }).text,
  run: (runId) => {
    const run = state.runs.get(runId);
    return run ? {
      status: run.status, kind: run.kind, lastSeq: run.lastSeq, text: run.text,
      progress: run.progress, examples: run.examples.length, settled: run.settled,
      joined: run.joined,
    } : null;
  },
  runIds: () => [...state.runs.keys()],
  connection: () => state.conn,
  connectionHistory: () => [...connHistory],
  sessionId: () => state.sessionId,
});

wire();
renderLeads();
renderLists();
selectTab('framework');
setConn('idle');
const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) connect(saved);
else setSignedIn(false);
