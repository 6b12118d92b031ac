// The History tab: skeleton and draft revisions, newest first, each labelled
// with where it came from (a run's revision, a rollback, an edit), rollback
// buttons, side-by-side diffs between any two revisions, and a notice when a
// skeleton rollback left a draft that was written for another skeleton.
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

/** The compare box: two pickers and the diff of the two revisions they name. */
function compareBox(kind, versions, pick, toLines, onCompare) {
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
    renderDiff(diffLines(toLines(left), toLines(right)), `${kind}-diff`));
}

function timelineItem(kind, version, previous, { busy, onRollback, onCompare }) {
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
    el('span', { class: 'tl-actions' }, compare, rollback)),
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

/** The whole History tab. `compare` is {skeleton: {from, to}, draft: {from, to}}. */
export function renderHistory(container, row, revisions, { busy, compare, onRollbackSkeleton, onRollbackDraft, onCompare }) {
  const skeletons = skeletonVersions(row, revisions);
  const drafts = draftVersions(row, revisions);
  const items = (kind, versions, onRollback) => versions.map((version, index) => timelineItem(
    kind, version, versions[index - 1], { busy, onRollback, onCompare },
  )).reverse();
  mount(
    container,
    mismatchNotice(row, revisions),
    el('h3', {}, 'Skeleton versions'),
    skeletons.length
      ? el('ol', { class: 'timeline', testid: 'skeleton-history' }, items('skeleton', skeletons, onRollbackSkeleton))
      : el('p', { class: 'muted' }, 'No skeleton yet.'),
    skeletons.length ? compareBox('skeleton', skeletons, compare.skeleton, (v) => skeletonLines(v.skeleton), onCompare) : null,
    el('h3', {}, 'Draft versions'),
    drafts.length
      ? el('ol', { class: 'timeline', testid: 'draft-history' }, items('draft', drafts, onRollbackDraft))
      : el('p', { class: 'muted' }, 'No draft yet.'),
    drafts.length ? compareBox('draft', drafts, compare.draft, (v) => draftLines(v.subject, v.body), onCompare) : null,
  );
}
