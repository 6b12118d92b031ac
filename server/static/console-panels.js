// Pure-ish renderers for the console's panels: (container, data, callbacks) -> DOM.
// They hold no state; console.js decides what to show and calls them again
// whenever it changes. All server text goes through el()/highlight() (text nodes).

import { el, highlight, mount, pretty } from './console-dom.js';

// chat -----------------------------------------------------------------------------

const NOTE_TITLES = {
  'failed:turn': 'The reply failed',
  'failed:examples': 'Generating examples failed',
  'canceled:turn': 'The reply was canceled',
  'canceled:examples': 'Generating examples was canceled',
};

/**
 * A run that ended badly, as a message in the chat where its reply would have
 * been: what failed and the reason its run.failed (or run.canceled) event gives.
 */
export function runNote(run) {
  const title = NOTE_TITLES[`${run.status}:${run.kind}`] || `The run ${run.status}`;
  return el('article', {
    class: `msg msg-assistant msg-note note-${run.status}`, testid: 'run-failure', role: 'status',
    dataset: { runId: run.id, status: run.status },
  },
  el('header', { class: 'msg-role' }, title),
  el('div', { class: 'msg-text', testid: 'run-failure-reason' }, run.error || 'no reason recorded'));
}

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
