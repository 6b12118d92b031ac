// The History tab: skeleton and draft revisions, newest first, each labelled
// with where it came from (a run's revision, a rollback, an edit), rollback and
// "fork from here" buttons, the diff between any two revisions, and a notice
// when a skeleton rollback left a draft that was written for another skeleton.
// The diff is the server's (GET .../diff, services/diff.py), so every client
// reads the same answer; only a revision no event names (a draft_history written
// whole by a PATCH) falls back to comparing its text here, side by side.
// (container, data, callbacks) -> DOM, like console-panels.js.

import { diffLines, draftLines, skeletonLines } from './console-diff.js';
import { el, formatTime, highlight, mount } from './console-dom.js';
import { draftMismatch } from './console-model.js';

/** Skeleton revisions, oldest first: {key, version, label, skeleton, at, origin}. */
export function skeletonVersions(row, revisions) {
  const history = Array.isArray(row.skeleton_history) ? row.skeleton_history : [];
  const list = history.map((entry, index) => ({
    key: `h${index}`, version: entry.framework_version, label: `v${entry.framework_version}`,
    skeleton: entry.skeleton || {}, replacedAt: entry.replaced_at,
    origin: revisions.skeletons.get(entry.framework_version) || null,
  }));
  if (row.skeleton) {
    list.push({
      key: 'current', version: row.framework_version, label: `v${row.framework_version}`,
      skeleton: row.skeleton, replacedAt: null,
      origin: revisions.skeletons.get(row.framework_version) || null, current: true,
    });
  }
  return list;
}

/** Draft revisions, oldest first: {key, index, label, subject, body, origin}. */
export function draftVersions(row, revisions) {
  const history = Array.isArray(row.draft_history) ? row.draft_history : [];
  const list = history.map((entry, index) => ({
    key: `h${index}`, index, label: `#${index}`, subject: entry.draft_subject, body: entry.draft_body,
    replacedAt: entry.replaced_at, origin: revisions.drafts[index] || null,
  }));
  if (row.draft_subject || row.draft_body) {
    list.push({
      key: 'current', index: null, label: `#${history.length}`, subject: row.draft_subject, body: row.draft_body,
      replacedAt: null, origin: revisions.draft, current: true,
    });
  }
  return list;
}

function originText(origin, kind) {
  if (!origin) return null;
  if (origin.origin === 'rollback') {
    return kind === 'skeleton' ? `rollback to v${origin.to}` : `restored draft #${origin.to}`;
  }
  if (origin.origin === 'edited') return 'edited (PATCH)';
  return 'written by the assistant';
}

function originLabel(origin, kind) {
  const text = originText(origin, kind);
  if (!text) return null;
  return el('span', {
    class: `origin origin-${origin.origin}`, testid: origin.origin === 'rollback' ? 'rollback-label' : 'origin-label',
    title: origin.at ? formatTime(origin.at) : '',
  }, text);
}

/** One side-by-side table; changed words inside a changed line are marked. */
export function renderDiff(rows, testid) {
  const cell = (side, cls) => {
    if (!side) return [el('td', { class: 'ln' }), el('td', { class: `dt ${cls} empty` })];
    const text = side.parts
      ? side.parts.map((part) => (part.changed ? el(cls === 'dl' ? 'del' : 'ins', {}, part.text) : part.text))
      : side.text;
    return [el('td', { class: 'ln' }, String(side.n)), el('td', { class: `dt ${cls}` }, text)];
  };
  const changed = rows.filter((row) => row.kind !== 'same').length;
  return el('div', { class: 'diff-wrap' },
    el('p', { class: 'muted small', testid: `${testid}-summary` },
      changed ? `${changed} line${changed === 1 ? '' : 's'} differ` : 'No differences.'),
    el('table', { class: 'diff', testid },
      el('colgroup', {}, el('col', { class: 'c-ln' }), el('col', { class: 'c-text' }),
        el('col', { class: 'c-ln' }), el('col', { class: 'c-text' })),
      el('tbody', {}, rows.map((row) => el('tr', { class: `d-${row.kind}`, testid: 'diff-row', dataset: { kind: row.kind } },
        cell(row.left, 'dl'), cell(row.right, 'dr'))))));
}

function picker(testid, versions, selected, onchange) {
  return el('select', { testid, onchange: (event) => onchange(event.target.value) },
    versions.map((v) => el('option', { value: v.key, selected: v.key === selected }, v.current ? `${v.label} (current)` : v.label)));
}

const shown = (value) => (typeof value === 'string' ? value : JSON.stringify(value, null, 1));

/** A unified diff's lines, each with its kind: a hunk header, a removal, an addition, context. */
function unifiedLines(text) {
  return (text || '').split('\n').filter((line) => line !== '').map((line) => {
    if (line.startsWith('---') || line.startsWith('+++')) return { kind: 'file', line };
    if (line.startsWith('@@')) return { kind: 'hunk', line };
    if (line.startsWith('-')) return { kind: 'del', line };
    if (line.startsWith('+')) return { kind: 'add', line };
    return { kind: 'same', line };
  });
}

/** The server's diff of two revisions: changed skeleton fields, or the draft's unified diffs. */
function serverDiff(kind, answer) {
  if (answer.state === 'loading') {
    return el('p', { class: 'muted small', testid: `${kind}-diff-loading` }, 'Comparing…');
  }
  if (answer.state === 'error') {
    return el('p', { class: 'run-error', testid: `${kind}-diff-error` }, answer.message);
  }
  const { diff } = answer;
  const summary = (count, noun) => el('p', { class: 'muted small', testid: `${kind}-diff-summary` },
    count ? `${count} ${noun}${count === 1 ? '' : 's'} differ` : 'No differences.');
  if (kind === 'skeleton') {
    return el('div', { class: 'diff-wrap', testid: 'skeleton-diff', dataset: { from: diff.from, to: diff.to } },
      summary(diff.skeleton.length, 'field'),
      diff.skeleton.length ? el('table', { class: 'fields' },
        el('thead', {}, el('tr', {}, el('th', {}, 'field'), el('th', {}, 'before'), el('th', {}, 'after'))),
        el('tbody', {}, diff.skeleton.map((change) => el('tr', { testid: 'field-change', dataset: { field: change.field } },
          el('td', { class: 'fc-name' }, change.field),
          el('td', { class: 'dt dl' }, shown(change.before)),
          el('td', { class: 'dt dr' }, shown(change.after)))))) : null);
  }
  const lines = [...unifiedLines(diff.draft_subject), ...unifiedLines(diff.draft_body)];
  const changed = lines.filter((l) => l.kind === 'add' || l.kind === 'del').length;
  return el('div', { class: 'diff-wrap', testid: 'draft-diff', dataset: { from: diff.from, to: diff.to } },
    summary(changed, 'line'),
    lines.length ? el('pre', { class: 'unified', testid: 'draft-unified' },
      lines.map(({ kind: k, line }) => el('span', { class: `u-${k}`, testid: 'unified-line', dataset: { kind: k } }, `${line}\n`))) : null);
}

/**
 * The compare box: two pickers and the diff of the two revisions they name.
 * `diffOf(left, right)` answers {state: 'loading'|'error'|'ok', ...} for two revisions
 * events name, or null when one has no event (then the text is compared here).
 */
function compareBox(kind, versions, pick, toLines, onCompare, diffOf) {
  if (versions.length < 2) {
    return el('p', { class: 'muted small', testid: `${kind}-compare-empty` }, 'One revision so far: nothing to compare.');
  }
  const keys = versions.map((v) => v.key);
  const to = keys.includes(pick.to) ? pick.to : keys[keys.length - 1];
  const from = keys.includes(pick.from) ? pick.from : keys[Math.max(0, keys.indexOf(to) - 1)];
  const left = versions.find((v) => v.key === from);
  const right = versions.find((v) => v.key === to);
  return el('div', { class: 'compare', testid: `${kind}-compare`, dataset: { from, to } },
    el('div', { class: 'compare-pick' },
      el('label', {}, 'from ', picker(`${kind}-compare-from`, versions, from, (key) => onCompare(kind, key, to))),
      el('label', {}, 'to ', picker(`${kind}-compare-to`, versions, to, (key) => onCompare(kind, from, key)))),
    (() => {
      const answer = diffOf(left, right);
      return answer ? serverDiff(kind, answer) : renderDiff(diffLines(toLines(left), toLines(right)), `${kind}-diff`);
    })());
}

function timelineItem(kind, version, previous, { busy, onRollback, onCompare, onFork }) {
  const rollback = version.current ? null : el('button', {
    type: 'button', class: 'small', testid: `${kind}-rollback`, disabled: busy,
    dataset: kind === 'skeleton' ? { version: String(version.version) } : { index: String(version.index) },
    title: 'Make this revision current again (as a new revision)',
    onclick: () => onRollback(kind === 'skeleton' ? version.version : version.index),
  }, kind === 'skeleton' ? `Roll back to v${version.version}` : 'Restore');
  const compare = previous ? el('button', {
    type: 'button', class: 'small ghost', testid: `${kind}-diff-previous`, dataset: { key: version.key },
    title: `Compare with ${previous.label}`, onclick: () => onCompare(kind, previous.key, version.key),
  }, `diff ${previous.label}`) : null;
  const fork = version.origin && version.origin.position ? el('button', {
    type: 'button', class: 'small ghost', testid: `${kind}-fork`, dataset: { position: String(version.origin.position) },
    title: 'A new session of yours, as this one was when this revision was made; this one is untouched',
    onclick: () => onFork(version.origin.position),
  }, 'Fork from here') : null;
  const summary = kind === 'skeleton'
    ? el('div', { class: 'tl-body subject' }, highlight(String(version.skeleton.subject || version.skeleton.hook || '')))
    : el('div', { class: 'tl-body subject' }, highlight(version.subject || ''));
  return el('li', {
    class: `tl-item${version.current ? ' current' : ''}`, testid: `${kind}-version`,
    dataset: kind === 'skeleton' ? { version: String(version.version ?? '') } : { index: version.current ? 'current' : String(version.index) },
  },
  el('div', { class: 'tl-head' },
    el('span', { class: 'badge' }, version.label),
    version.current ? el('span', { class: 'tl-title' }, 'current') : null,
    originLabel(version.origin, kind),
    version.replacedAt ? el('span', { class: 'muted small' }, `replaced ${formatTime(version.replacedAt)}`) : null,
    el('span', { class: 'tl-actions' }, compare, fork, rollback)),
  summary);
}

/** The notice shown (here and above the draft) when a rollback left a draft that does not fit. */
export function mismatchNotice(row, revisions) {
  const mismatch = draftMismatch(row, revisions);
  if (!mismatch) return null;
  const written = mismatch.writtenFor ? ` (it was written for v${mismatch.writtenFor})` : '';
  return el('div', { class: 'notice', testid: 'draft-mismatch', role: 'status' },
    `The skeleton was rolled back to v${mismatch.to} (now v${mismatch.version}); the draft no longer matches it${written}. `
    + 'Send a turn to redraft it, or restore a draft written for that skeleton.');
}

/**
 * The whole History tab. `compare` is {skeleton: {from, to}, draft: {from, to}};
 * `diffOf(fromVersion, toVersion)` is the server's diff of two session versions (or its
 * loading/error state); `onFork(position)` forks the session at a log position.
 */
export function renderHistory(container, row, revisions, {
  busy, compare, onRollbackSkeleton, onRollbackDraft, onCompare, onFork, diffOf,
}) {
  const skeletons = skeletonVersions(row, revisions);
  const drafts = draftVersions(row, revisions);
  const items = (kind, versions, onRollback) => versions.map((version, index) => timelineItem(
    kind, version, versions[index - 1], { busy, onRollback, onCompare, onFork },
  )).reverse();
  // two revisions events name: the server compares the session at their stream versions,
  // earlier first (the endpoint wants from <= to; the pickers may name them either way)
  const versionsOf = (left, right) => {
    const a = left.origin && left.origin.streamVersion;
    const b = right.origin && right.origin.streamVersion;
    return a && b ? diffOf(Math.min(a, b), Math.max(a, b)) : null;
  };
  mount(
    container,
    mismatchNotice(row, revisions),
    el('h3', {}, 'Skeleton versions'),
    skeletons.length
      ? el('ol', { class: 'timeline', testid: 'skeleton-history' }, items('skeleton', skeletons, onRollbackSkeleton))
      : el('p', { class: 'muted' }, 'No skeleton yet.'),
    skeletons.length ? compareBox('skeleton', skeletons, compare.skeleton, (v) => skeletonLines(v.skeleton), onCompare, versionsOf) : null,
    el('h3', {}, 'Draft versions'),
    drafts.length
      ? el('ol', { class: 'timeline', testid: 'draft-history' }, items('draft', drafts, onRollbackDraft))
      : el('p', { class: 'muted' }, 'No draft yet.'),
    drafts.length ? compareBox('draft', drafts, compare.draft, (v) => draftLines(v.subject, v.body), onCompare, versionsOf) : null,
  );
}
