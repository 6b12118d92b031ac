// Pure-ish renderers for the console's panels: (container, data, callbacks) -> DOM.
// They hold no state; console.js decides what to show and calls them again
// whenever it changes. All server text goes through el()/highlight() (text nodes).

import { el, formatClock, formatTime, highlight, mount, pretty, shortId } from './console-dom.js';

// chat -----------------------------------------------------------------------------

/** One chat bubble; `streaming` adds the live caret and the run id. */
export function messageBubble(role, content, { streaming = false, runId = null, state = null } = {}) {
  return el(
    'article',
    {
      class: `msg msg-${role === 'user' ? 'user' : 'assistant'}${streaming ? ' streaming' : ''}`,
      testid: streaming ? 'streaming-message' : 'message',
      dataset: { role, ...(runId ? { runId } : {}), ...(state ? { state } : {}) },
    },
    el('header', { class: 'msg-role' }, role === 'user' ? 'You' : 'Assistant',
      streaming && state === 'streaming' ? el('span', { class: 'live-dot', title: 'streaming' }) : null),
    el('div', { class: 'msg-text', testid: 'message-text' }, highlight(content)),
  );
}

// framework: draft and skeleton ------------------------------------------------------------

function cardHead(title, ...extra) {
  return el('div', { class: 'card-head' }, el('h3', {}, title), ...extra);
}

export function renderDraft(container, row, { live = false } = {}) {
  const head = cardHead('Draft', live ? el('span', { class: 'live-note', testid: 'draft-live' }, 'live') : null);
  if (!row.draft_subject && !row.draft_body) {
    mount(container, head, el('p', { class: 'muted', testid: 'draft-empty' },
      'No draft yet. The assistant writes one once the framework is agreed (usually turn 2 or 3).'));
    return;
  }
  mount(
    container,
    head,
    el('div', { class: 'field' },
      el('div', { class: 'label' }, 'Subject'),
      el('div', { class: 'subject', testid: 'draft-subject' }, highlight(row.draft_subject || ''))),
    el('div', { class: 'field' },
      el('div', { class: 'label' }, 'Body'),
      el('div', { class: 'template', testid: 'draft-body' }, highlight(row.draft_body || ''))),
  );
}

const SKELETON_FIELDS = [
  ['hook', 'Hook'],
  ['value_proposition', 'Value proposition'],
  ['call_to_action', 'Call to action'],
  ['tone', 'Tone'],
  ['length', 'Length'],
];

export function renderSkeleton(container, skeleton, version) {
  if (!skeleton || typeof skeleton !== 'object') {
    mount(container, cardHead('Skeleton'), el('p', { class: 'muted', testid: 'skeleton-empty' },
      'No framework yet. On the first turn the assistant asks clarifying questions.'));
    return;
  }
  const rows = [];
  for (const [key, label] of SKELETON_FIELDS) {
    if (skeleton[key] === undefined || skeleton[key] === null || skeleton[key] === '') continue;
    rows.push(el('div', { class: 'kv', dataset: { field: key } },
      el('dt', {}, label), el('dd', {}, highlight(textOf(skeleton[key])))));
  }
  const blocks = Array.isArray(skeleton.blocks) ? skeleton.blocks : [];
  const known = new Set([...SKELETON_FIELDS.map(([k]) => k), 'subject', 'body', 'blocks',
    'exampleSubject', 'exampleBody']);
  const extra = Object.fromEntries(Object.entries(skeleton).filter(([k]) => !known.has(k)));
  mount(
    container,
    cardHead('Skeleton', el('span', { class: 'badge', testid: 'framework-version' }, `v${version ?? '?'}`)),
    skeleton.subject !== undefined
      ? el('div', { class: 'field' }, el('div', { class: 'label' }, 'Subject template'),
        el('div', { class: 'subject', testid: 'skeleton-subject' }, highlight(textOf(skeleton.subject))))
      : null,
    skeleton.body !== undefined
      ? el('div', { class: 'field' }, el('div', { class: 'label' }, 'Body template'),
        el('div', { class: 'template', testid: 'skeleton-body' }, highlight(textOf(skeleton.body))))
      : null,
    rows.length ? el('dl', { class: 'kvs', testid: 'skeleton-fields' }, rows) : null,
    blocks.length
      ? el('div', { class: 'field' }, el('div', { class: 'label' }, 'Personalised blocks'),
        el('ul', { class: 'blocks' }, blocks.map((block) => el('li', { testid: 'skeleton-block' },
          el('strong', {}, textOf(block.name || 'block')),
          block.instruction ? el('div', {}, highlight(textOf(block.instruction))) : null,
          block.fallback ? el('div', { class: 'muted small' }, 'Fallback: ', highlight(textOf(block.fallback))) : null,
        ))))
      : null,
    skeleton.exampleBody
      ? el('details', { class: 'field' }, el('summary', {}, 'Example rendering'),
        el('div', { class: 'subject' }, textOf(skeleton.exampleSubject || '')),
        el('div', { class: 'template' }, textOf(skeleton.exampleBody)))
      : null,
    Object.keys(extra).length
      ? el('details', { class: 'field' }, el('summary', {}, 'All fields (JSON)'),
        el('pre', { class: 'json' }, pretty(extra)))
      : null,
  );
}

function textOf(value) {
  if (value === null || value === undefined) return '';
  return typeof value === 'string' ? value : pretty(value);
}

// history ----------------------------------------------------------------------------

/** What tells one skeleton version from another: subject, tone, length, call to action. */
function skeletonSummary(skeleton) {
  const facts = [skeleton.tone, skeleton.length, skeleton.cta_type].filter((v) => typeof v === 'string' && v);
  return [
    el('div', { class: 'tl-body subject' }, highlight(textOf(skeleton.subject || skeleton.hook || ''))),
    facts.length ? el('div', { class: 'muted small' }, facts.join(' · ')) : null,
    skeleton.call_to_action ? el('div', { class: 'small' }, highlight(textOf(skeleton.call_to_action))) : null,
    skeleton.body ? el('details', {}, el('summary', {}, 'Body template'),
      el('div', { class: 'template small' }, highlight(textOf(skeleton.body)))) : null,
  ];
}

/** Skeleton versions newest first, each with a rollback button; then draft versions. */
export function renderHistory(container, row, { busy, onRollbackSkeleton, onRollbackDraft }) {
  const skeletonItems = [];
  if (row.skeleton) {
    skeletonItems.push(el('li', { class: 'tl-item current', testid: 'skeleton-version',
      dataset: { version: String(row.framework_version ?? '') } },
    el('div', { class: 'tl-head' }, el('span', { class: 'badge' }, `v${row.framework_version}`),
      el('span', { class: 'tl-title' }, 'current'),
      el('span', { class: 'muted small' }, formatTime(row.updated_at))),
    skeletonSummary(row.skeleton)));
  }
  const history = Array.isArray(row.skeleton_history) ? row.skeleton_history : [];
  for (const entry of [...history].reverse()) {
    const version = entry.framework_version;
    const skeleton = entry.skeleton || {};
    skeletonItems.push(el('li', { class: 'tl-item', testid: 'skeleton-version',
      dataset: { version: String(version) } },
    el('div', { class: 'tl-head' }, el('span', { class: 'badge' }, `v${version}`),
      el('span', { class: 'muted small' }, `replaced ${formatTime(entry.replaced_at)}`),
      el('button', {
        type: 'button', class: 'small', testid: 'skeleton-rollback',
        dataset: { version: String(version) }, disabled: busy,
        title: `Make version ${version} current again (as a new revision)`,
        onclick: () => onRollbackSkeleton(version),
      }, `Roll back to v${version}`)),
    skeletonSummary(skeleton)));
  }
  const draftItems = [];
  if (row.draft_subject || row.draft_body) {
    draftItems.push(el('li', { class: 'tl-item current', testid: 'draft-version', dataset: { index: 'current' } },
      el('div', { class: 'tl-head' }, el('span', { class: 'tl-title' }, 'current')),
      el('div', { class: 'tl-body subject' }, highlight(row.draft_subject || '')),
      el('details', {}, el('summary', {}, 'Body'),
        el('div', { class: 'template small' }, highlight(row.draft_body || '')))));
  }
  const drafts = Array.isArray(row.draft_history) ? row.draft_history : [];
  for (let index = drafts.length - 1; index >= 0; index -= 1) {
    const entry = drafts[index];
    draftItems.push(el('li', { class: 'tl-item', testid: 'draft-version', dataset: { index: String(index) } },
      el('div', { class: 'tl-head' }, el('span', { class: 'badge' }, `#${index}`),
        el('span', { class: 'muted small' }, `replaced ${formatTime(entry.replaced_at)}`),
        el('button', {
          type: 'button', class: 'small', testid: 'draft-rollback', dataset: { index: String(index) },
          disabled: busy, title: 'Make this draft current again (as a new revision)',
          onclick: () => onRollbackDraft(index),
        }, 'Restore')),
      el('div', { class: 'tl-body subject' }, highlight(entry.draft_subject || '')),
      el('details', {}, el('summary', {}, 'Body'),
        el('div', { class: 'template small' }, highlight(entry.draft_body || '')))));
  }
  mount(
    container,
    el('h3', {}, 'Skeleton versions'),
    skeletonItems.length
      ? el('ol', { class: 'timeline', testid: 'skeleton-history' }, skeletonItems)
      : el('p', { class: 'muted' }, 'No skeleton yet.'),
    el('h3', {}, 'Draft versions'),
    draftItems.length
      ? el('ol', { class: 'timeline', testid: 'draft-history' }, draftItems)
      : el('p', { class: 'muted' }, 'No draft yet.'),
  );
}

// examples ---------------------------------------------------------------------------

export function renderProgress(bar, label, done, total, state) {
  const pct = total > 0 ? Math.round((100 * done) / total) : 0;
  bar.style.setProperty('--pct', `${pct}%`);
  bar.setAttribute('aria-valuenow', String(pct));
  bar.dataset.done = String(done);
  bar.dataset.total = String(total);
  bar.dataset.state = state;
  label.textContent = total > 0 ? `${done} / ${total} leads${state === 'done' ? ' · done' : ''}` : '';
}

export function renderExamples(container, examples, pendingIds = []) {
  const list = Array.isArray(examples) ? examples : [];
  if (!list.length && !pendingIds.length) {
    mount(container, el('p', { class: 'muted', testid: 'examples-empty' }, 'No examples yet.'));
    return;
  }
  const rows = list.map((example) => el('tr', { testid: 'example-row', dataset: { leadId: String(example.lead_id) } },
    el('td', { class: 'mono' }, String(example.lead_id)),
    el('td', {}, el('div', { class: 'subject' }, example.subject || ''),
      el('div', { class: 'template small' }, example.body || ''))));
  for (const id of pendingIds) {
    rows.push(el('tr', { class: 'pending', testid: 'example-pending', dataset: { leadId: String(id) } },
      el('td', { class: 'mono' }, String(id)), el('td', { class: 'muted' }, 'writing…')));
  }
  mount(container, el('table', { class: 'examples', testid: 'examples-table' },
    el('thead', {}, el('tr', {}, el('th', {}, 'Lead'), el('th', {}, 'Example'))),
    el('tbody', {}, rows)));
}

// audit ------------------------------------------------------------------------------

function actorText(actor) {
  if (!actor) return '';
  if (typeof actor === 'string') return actor;
  return `${actor.type || '?'} ${shortId(String(actor.id || '').replace(/^run_/, ''))}`;
}

export function renderAudit(tbody, events, { hideDeltas }) {
  const shown = hideDeltas ? events.filter((e) => e.type !== 'message.delta') : events;
  const rows = [];
  for (const event of shown) {
    const detail = el('tr', { class: 'audit-detail', testid: 'audit-detail', hidden: true },
      el('td', { colspan: 6 },
        el('div', { class: 'mono small muted' }, `hash ${event.hash || '-'}`),
        event.event_id ? el('div', { class: 'mono small muted' }, `event ${event.event_id}`) : null,
        el('pre', { class: 'json' }, pretty(event.data))));
    const toggle = el('button', {
      type: 'button', class: 'small ghost', testid: 'audit-toggle', 'aria-expanded': 'false',
      title: 'data and hash',
      onclick: () => {
        detail.hidden = !detail.hidden;
        toggle.setAttribute('aria-expanded', String(!detail.hidden));
        toggle.textContent = detail.hidden ? '▸' : '▾';
        if (!detail.hidden) detail.scrollIntoView({ block: 'nearest' });
      },
    }, '▸');
    rows.push(el('tr', { testid: 'audit-row', dataset: { type: event.type, position: String(event.position) } },
      el('td', { class: 'mono' }, String(event.position)),
      el('td', { class: 'mono small' }, `${event.stream_id.split('-')[0]} v${event.version}`),
      el('td', {}, el('span', { class: `etype t-${event.type.split('.')[0]}` }, event.type)),
      el('td', { class: 'small', title: event.actor ? pretty(event.actor) : '' }, actorText(event.actor)),
      el('td', { class: 'small', title: event.recorded_at || '' }, formatClock(event.recorded_at)),
      el('td', {}, toggle)), detail);
  }
  mount(tbody, rows);
  return shown.length;
}
