// The Runs tab: every run of the session with its status, engine and model
// (when its events record them), duration, size, failure reason, and a replay
// of its token stream at the pace it was recorded.
//
// Replay plays the run's message.delta events back with the gaps between
// their recorded_at stamps (measured from run.started, so the wait for the
// first token is replayed too). A timer chain aims each delta at its own
// offset from the start rather than at "previous + gap", so timer lateness
// never accumulates over a long reply.

import { el, formatTime, mount } from './console-dom.js';

export function formatDuration(msValue) {
  if (msValue === null || msValue === undefined) return '–';
  if (msValue < 1000) return `${Math.round(msValue)} ms`;
  if (msValue < 60_000) return `${(msValue / 1000).toFixed(1)} s`;
  const minutes = Math.floor(msValue / 60_000);
  return `${minutes} min ${Math.round((msValue % 60_000) / 1000)} s`;
}

function sizeText(run) {
  if (run.kind === 'examples') {
    const done = run.progress ? `${run.progress.done}/${run.progress.total} leads` : `${run.examples} examples`;
    return done;
  }
  const parts = [];
  if (typeof run.tokens === 'number') parts.push(`${run.tokens} tokens`);
  parts.push(`${run.words} word${run.words === 1 ? '' : 's'} in ${run.deltas.length} chunk${run.deltas.length === 1 ? '' : 's'}`);
  return parts.join(' · ');
}

function engineText(run) {
  if (run.engine || run.model) return [run.engine, run.model].filter(Boolean).join(' · ');
  return 'not recorded'; // the run's events do not say; kind and times come from them
}

/** Play `run`'s deltas back at their recorded pace; returns {stop(), trace}. */
export function startReplay(run, { onText, onDone, now = () => performance.now() }) {
  const first = run.deltas.length ? Date.parse(run.deltas[0].at) : 0;
  const origin = Date.parse(run.startedAt || '') || Date.parse(run.createdAt || '') || first;
  const steps = run.deltas.map((delta) => ({
    offset: Math.max(0, Date.parse(delta.at) - origin), text: delta.text,
  }));
  const trace = []; // {offset: recorded, shownAt: replayed}, in ms from the start
  const started = now();
  let index = 0;
  let text = '';
  let timer = null;
  let stopped = false;
  const tick = () => {
    timer = null;
    if (stopped) return;
    const elapsed = now() - started;
    while (index < steps.length && steps[index].offset <= elapsed) {
      text += steps[index].text;
      trace.push({ offset: steps[index].offset, shownAt: elapsed });
      index += 1;
    }
    onText(text, index, steps.length);
    if (index >= steps.length) {
      stopped = true;
      onDone(text);
      return;
    }
    timer = setTimeout(tick, steps[index].offset - elapsed);
  };
  tick();
  return {
    trace,
    get done() { return stopped; },
    stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
    },
  };
}

function runCard(run, replay, { onReplay, onStop }) {
  const replaying = replay && replay.runId === run.id;
  const title = run.kind === 'examples' ? 'examples' : run.kind === 'turn' ? 'chat turn' : (run.kind || 'run');
  return el('li', { class: 'run-card', testid: 'run-row', dataset: { runId: run.id, status: run.status } },
    el('div', { class: 'run-head' },
      el('span', { class: 'status run-status', testid: 'run-status', dataset: { status: run.status } }, run.status),
      el('strong', {}, title),
      el('span', { class: 'muted small mono', title: run.id }, run.id.replace(/^run_/, '').slice(0, 8)),
      el('span', { class: 'muted small' }, formatTime(run.startedAt || run.createdAt))),
    el('dl', { class: 'run-facts' },
      el('div', {}, el('dt', {}, 'engine'), el('dd', { testid: 'run-engine' }, engineText(run))),
      el('div', {}, el('dt', {}, 'duration'), el('dd', { testid: 'run-duration', dataset: { ms: String(run.durationMs ?? '') } },
        formatDuration(run.durationMs))),
      el('div', {}, el('dt', {}, 'size'), el('dd', { testid: 'run-size', dataset: { chunks: String(run.deltas.length), words: String(run.words) } },
        sizeText(run)))),
    run.error && run.status !== 'completed'
      ? el('p', { class: `run-error ${run.status}`, testid: 'run-error' }, run.error) : null,
    run.deltas.length ? el('div', { class: 'run-actions' },
      replaying && !replay.done
        ? el('button', { type: 'button', class: 'small', testid: 'run-replay-stop', onclick: onStop }, 'Stop')
        : el('button', {
          type: 'button', class: 'small', testid: 'run-replay', title: 'Play the reply back at the pace it streamed',
          onclick: () => onReplay(run.id),
        }, replaying ? 'Replay again' : 'Replay')) : null,
    replaying ? el('pre', { class: 'replay', testid: 'run-replay-text', dataset: { done: String(Boolean(replay.done)) } }, replay.text) : null);
}

/** The Runs tab, newest first. `replay` is {runId, text, done} or null. */
export function renderRuns(container, runs, replay, callbacks) {
  if (!runs.length) {
    mount(container, el('p', { class: 'muted', testid: 'runs-empty' }, 'No runs yet: send a message or generate examples.'));
    return;
  }
  mount(container, el('ol', { class: 'runs', testid: 'runs-list' },
    [...runs].reverse().map((run) => runCard(run, replay, callbacks))));
}
