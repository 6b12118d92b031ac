// The sessionstream console: campaigns, nodes and sessions over HTTP; one live
// session channel over a websocket (sessionstream.js) that carries every event
// of the selected session, its runs' text deltas included.
//
// This module boots the page: the token, the user's commands, the leads
// table, tabs, wiring, and the hooks tests and devtools read. The sidebar is
// console-lists.js, the selected session console-session.js (state) and
// console-views.js (drawing), errors console-errors.js.

import { Api } from './console-api.js';
import { el, mount } from './console-dom.js';
import { hooks } from './console-hooks.js';
import { loadCampaigns, readHash, reloadSessions, renderLists, writeHash } from './console-lists.js';
import {
  applyRow, closeSession, connHistory, onConnection, openSession, runView, scheduleRefresh, setConn, subscribe,
} from './console-session.js';
import { $, BASE, afterAction, errors, guard, onCause, report, state } from './console-state.js';
import { renderAuditPanel, renderBusy, renderSession } from './console-views.js';

const TOKEN_KEY = 'sessionstream.apiToken'; // sessionStorage only: gone when the tab closes
const LEAD_FIELDS = ['id', 'first_name', 'last_name', 'company', 'position'];

window.addEventListener('error', (event) => report({ code: 'script_error', message: event.message }, 'script'));
window.addEventListener('unhandledrejection', (event) => report(event.reason || 'unexpected error', 'script'));
afterAction(renderBusy);

// the server unreachable: probe until it answers, then say so ------------------------------

let probe = null;

function probeSoon(delay) {
  if (probe) return;
  probe = setTimeout(async () => {
    probe = null;
    try {
      await fetch(`${BASE}/healthz`, { cache: 'no-store', credentials: 'omit' });
    } catch {
      probeSoon(Math.min(delay * 2, 5000));
      return;
    }
    reachable();
  }, delay);
}

/** Any answer from the server ends a network error; the session catches up on what it missed. */
function reachable() {
  if (!errors.has('network')) return;
  errors.clear('network');
  if (state.sessionId) scheduleRefresh();
}

onCause('network', () => { probeSoon(1000); });
onCause('auth', () => { setSignedIn(false); });
onConnection((conn) => { if (conn === 'live' && errors.has('network')) probeSoon(0); });

// token ----------------------------------------------------------------------------------

function setSignedIn(signedIn) {
  $('token-forget').hidden = !signedIn;
  $('token-input').placeholder = signedIn ? 'Token saved for this tab' : 'Paste an API token';
  document.body.dataset.signedIn = String(signedIn);
}

async function connect(token) {
  const api = new Api(BASE, token, { onAnswer: reachable });
  state.api = api;
  setSignedIn(true);
  errors.clear('auth');
  try {
    await loadCampaigns(readHash());
    errors.clear('connect');
  } catch (error) {
    if (state.api !== api) return; // a newer token took over meanwhile
    report(error, 'connect');
    if (error.status === 401) {
      // a rejected token is not kept, not even for this tab
      sessionStorage.removeItem(TOKEN_KEY);
      state.api = null;
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

// tabs ----------------------------------------------------------------------------------------------

function selectTab(tab) {
  state.tab = tab;
  for (const button of document.querySelectorAll('.tab')) {
    button.setAttribute('aria-selected', String(button.dataset.tab === tab));
  }
  for (const panel of document.querySelectorAll('.tabpanel')) panel.hidden = panel.dataset.panel !== tab;
  if (tab === 'audit') renderAuditPanel();
}

// commands ----------------------------------------------------------------------------------------------

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
  let finished = false; // replacing the input blurs it: Enter must not finish twice
  const finish = async (save) => {
    if (finished) return;
    finished = true;
    input.replaceWith(title);
    if (!save) return;
    await guard(async () => {
      const { session } = await state.api.patchSession(state.sessionId, { title: input.value.trim() || null });
      applyRow(session);
    }, { key: 'rename', scope: 'session' });
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

function onSubmit(testid, handler) {
  on(testid, 'submit', (event) => {
    event.preventDefault();
    handler();
  });
}

function wire() {
  onSubmit('token-form', () => {
    const token = $('token-input').value.trim();
    if (!token) {
      report({ code: 'no_token', message: 'Paste an API token first (.venv/bin/sessionstream users create NAME prints one).' }, 'connect');
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $('token-input').value = '';
    connect(token);
  });
  on('token-forget', 'click', forget);
  onSubmit('campaign-form', () => {
    const input = $('campaign-name');
    const name = input.value.trim();
    if (!name) return;
    guard(async () => {
      const { campaign } = await state.api.createCampaign(name);
      input.value = '';
      await loadCampaigns({ campaign: campaign.id });
    }, { key: 'campaign', button: $('campaign-create') });
  });
  onSubmit('node-form', () => guard(async () => {
    const { node } = await state.api.createNode(state.campaignId, $('node-name').value.trim());
    $('node-name').value = '';
    state.nodeId = node.id;
    await loadCampaigns({ campaign: state.campaignId, node: node.id, session: state.sessionId });
  }, { key: 'node', button: $('node-create') }));
  on('session-create', 'click', () => guard(async () => {
    const { session } = await state.api.createSession(state.campaignId, state.nodeId);
    await reloadSessions();
    await openSession(session.id);
  }, { key: 'session', button: $('session-create') }));
  // Ctrl+Enter submits even while the page believes the session busy: the server decides,
  // and its 409 stays on screen until a fresh read shows the session idle.
  onSubmit('turn-form', () => guard(sendTurn, { key: 'turn', button: $('turn-send'), scope: 'session' }));
  on('turn-input', 'keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      $('turn-form').requestSubmit();
    }
  });
  onSubmit('examples-form', () => guard(generateExamples, { key: 'examples', button: $('examples-generate'), scope: 'session' }));
  on('lead-add', 'click', () => {
    state.leads.push({ id: `lead-${state.leads.length + 1}`, first_name: '', last_name: '', company: '', position: '' });
    renderLeads();
  });
  on('cancel-run', 'click', () => guard(() => state.api.cancelRun(state.activeRunId), { key: 'cancel', button: $('cancel-run') }));
  on('session-delete', 'click', (event) => guard(() => deleteSession(event.currentTarget), { key: 'delete' }));
  on('session-rename', 'click', startRename);
  on('audit-refresh', 'click', () => guard(() => state.log && state.log.sync(), { key: 'log', button: $('audit-refresh') }));
  for (const id of ['audit-hide-deltas', 'audit-filter-type', 'audit-filter-actor', 'audit-filter-stream']) {
    on(id, 'change', renderAuditPanel);
  }
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
  /** The session's event log as loaded: {loaded, count, last}. */
  log: () => (state.log ? { loaded: state.log.loaded, count: state.log.events.length, last: state.log.last } : null),
  /** The replay in progress or last played: {runId, text, done, trace: [{offset, shownAt}]}. */
  replay: () => (state.replay ? {
    runId: state.replay.runId, text: state.replay.text, done: state.replay.done, trace: [...state.replay.handle.trace],
  } : null),
  errorKeys: () => [...errors.entries.keys()],
});

wire();
renderLeads();
renderLists();
selectTab('framework');
setConn('idle');
const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) connect(saved);
else setSignedIn(false);
