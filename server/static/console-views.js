// Drawing the selected session from `state`: the chat (with notes for runs
// that failed), the framework, history, examples, runs and audit panels, and
// the busy state. console-session.js decides what changed and calls these.

import { renderAudit, renderAuditFilters } from './console-audit.js';
import { el, highlight, mount, stickToBottom } from './console-dom.js';
import { mismatchNotice, renderHistory } from './console-history.js';
import { nodeName, reloadSessions, sessionLabel, statusLabel } from './console-lists.js';
import {
  messageBubble, renderDraft, renderExamples, renderProgress, renderSkeleton, runNote,
} from './console-panels.js';
import { renderRuns, startReplay } from './console-runs.js';
import { badEndings, applyRow, openSession } from './console-session.js';
import { $, guard, state } from './console-state.js';

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

export function renderSession() {
  if (!state.row) return;
  const row = displayRow();
  const live = [...state.runs.values()].some((r) => !r.settled && (r.skeleton || r.draft));
  $('session-title').textContent = sessionLabel(row);
  const forked = row.forked_from
    ? ` · forked from ${row.forked_from.session_id} at log position ${row.forked_from.position}` : '';
  $('session-id').textContent = `${nodeName(row.node_id)} · ${row.id}${forked}`;
  renderChat();
  renderDraft($('draft-panel'), row, { live });
  const notice = mismatchNotice(row, state.view.revisions);
  if (notice) $('draft-panel').prepend(notice);
  renderSkeleton($('skeleton-panel'), row.skeleton, row.framework_version);
  renderHistoryPanel(row);
  renderExamplesPanel(row);
  renderRunsPanel();
  renderBusy();
}

/** What the event log changed: failure notes, history labels, runs and audit. */
export function renderLog() {
  renderSession();
  if (state.tab === 'audit') renderAuditPanel();
}

function renderChat() {
  const container = $('messages');
  const messages = Array.isArray(state.row.messages) ? state.row.messages : [];
  const notes = badEndings();
  const notesAt = (index) => notes.filter((run) => Math.min(run.afterMessage, messages.length) === index).map(runNote);
  const items = [];
  messages.forEach((m, index) => {
    items.push(...notesAt(index), messageBubble(m.role, m.content));
  });
  items.push(...notesAt(messages.length));
  for (const run of state.runs.values()) {
    if (run.settled || run.kind === 'examples') continue;
    if (run.userText !== null && messages.length <= run.baseCount) {
      items.push(messageBubble('user', run.userText));
    }
    const ended = run.terminal && run.status !== 'completed'; // shown as a note instead
    if (!ended && (run.kind === 'turn' || run.text)) items.push(streamingBubble(run));
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

export function updateStreamingBubble(run) {
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
    if (run.terminal && run.error) $('examples-progress-label').textContent += ` · ${run.error}`;
  } else {
    renderProgress($('examples-progress'), $('examples-progress-label'), 0, 0, 'idle');
  }
}

export function renderBusy() {
  const row = state.row;
  const status = row ? row.task_status : null;
  const badge = $('task-status');
  badge.dataset.status = status || 'idle';
  badge.textContent = statusLabel(status);
  const busy = Boolean(status);
  $('turn-send').disabled = busy || !row;
  $('examples-generate').disabled = busy || !row || !row.skeleton;
  $('examples-generate').title = row && !row.skeleton ? 'Chat first: examples need a framework' : '';
  $('cancel-run').hidden = !(busy && state.activeRunId);
}

// history -------------------------------------------------------------------------------

function renderHistoryPanel(row) {
  const rollback = (call) => (target) => guard(async () => applyRow((await call(state.sessionId, target)).session),
    { key: 'rollback', scope: 'session' });
  renderHistory($('history-panel'), row, state.view.revisions, {
    busy: Boolean(row.task_status),
    compare: state.compare,
    onRollbackSkeleton: rollback((id, version) => state.api.rollbackSkeleton(id, version)),
    onRollbackDraft: rollback((id, index) => state.api.rollbackDraft(id, index)),
    onCompare: (kind, from, to) => {
      state.compare = { ...state.compare, [kind]: { from, to } };
      renderHistoryPanel(displayRow());
    },
    onFork: (position) => guard(async () => {
      const { session } = await state.api.fork(state.sessionId, position);
      await reloadSessions();
      await openSession(session.id);
    }, { key: 'fork', scope: 'session' }),
    diffOf: (from, to) => serverDiff(from, to),
  });
}

/**
 * The server's diff of two versions of the open session, fetched once per pair (versions
 * never change what they hold) and redrawn when it arrives; a session switch drops it.
 */
function serverDiff(from, to) {
  const key = `${from}-${to}`;
  const known = state.diffs.get(key);
  if (known) return known;
  const loading = { state: 'loading' };
  state.diffs.set(key, loading);
  const { generation, sessionId } = state;
  state.api.diff(sessionId, from, to).then(
    (diff) => ({ state: 'ok', diff }),
    (error) => ({ state: 'error', message: error.message }),
  ).then((answer) => {
    if (generation !== state.generation) return;
    state.diffs.set(key, answer);
    if (state.row) renderHistoryPanel(displayRow());
  });
  return loading;
}

// runs and replay --------------------------------------------------------------------------

function renderRunsPanel() {
  renderRuns($('runs-panel'), state.view.runs, state.replay, {
    onReplay: replayRun,
    onStop: () => {
      if (state.replay) state.replay.handle.stop();
      state.replay = null;
      renderRunsPanel();
    },
  });
}

function replayRun(runId) {
  const run = state.view.runs.find((r) => r.id === runId);
  if (!run) return;
  if (state.replay) state.replay.handle.stop();
  const replay = { runId, text: '', done: false, handle: null };
  state.replay = replay;
  replay.handle = startReplay(run, {
    onText: (text) => {
      replay.text = text;
      const out = $('runs-panel').querySelector('[data-testid="run-replay-text"]');
      if (out) out.textContent = text;
    },
    onDone: () => {
      replay.done = true;
      if (state.replay === replay) renderRunsPanel();
    },
  });
  renderRunsPanel();
}

// audit ------------------------------------------------------------------------------------

function auditFilters() {
  return {
    hideDeltas: $('audit-hide-deltas').checked,
    type: $('audit-filter-type').value,
    actor: $('audit-filter-actor').value,
    stream: $('audit-filter-stream').value,
  };
}

export function renderAuditPanel() {
  const events = state.log ? state.log.events : [];
  renderAuditFilters({
    type: $('audit-filter-type'), actor: $('audit-filter-actor'), stream: $('audit-filter-stream'),
  }, events);
  const shown = renderAudit($('audit-table').querySelector('tbody'), events, auditFilters());
  const total = events.length;
  const loading = state.log && !state.log.loaded ? ' (loading…)' : '';
  $('audit-summary').textContent = `${total} event${total === 1 ? '' : 's'} loaded, ${shown} shown, newest first${loading}`;
}
