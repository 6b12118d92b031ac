// The Audit tab: the session's events newest first, filtered by type, actor
// and stream, each row opening onto its data and hash. Types are never
// truncated: the type cell wraps instead (an auditor reading
// "skeleton.rolled_…" cannot tell it from "skeleton.revised").

import { el, formatClock, mount, pretty } from './console-dom.js';
import { actorLabel, auditFacets, auditRows, streamLabel } from './console-model.js';

/** Refill a filter's options, keeping the current choice (even if no event has it any more). */
function fill(select, values, anyLabel) {
  const current = select.value;
  const options = [el('option', { value: '' }, anyLabel)];
  const seen = new Set();
  for (const { value, label } of values) {
    seen.add(value);
    options.push(el('option', { value }, label));
  }
  if (current && !seen.has(current)) options.push(el('option', { value: current }, current));
  mount(select, options);
  select.value = current;
}

export function renderAuditFilters({ type, actor, stream }, events) {
  const facets = auditFacets(events);
  fill(type, facets.types.map((t) => ({ value: t, label: t })), 'every type');
  fill(actor, facets.actors.map((a) => ({ value: a, label: a })), 'every actor');
  fill(stream, facets.streams.map((s) => ({ value: s.id, label: s.label })), 'every stream');
}

/** "skeleton.rolled_back" with a line-break opportunity after each dot. */
function breakable(type) {
  return type.split('.').flatMap((part, index, parts) => (index < parts.length - 1 ? [`${part}.`, el('wbr')] : [part]));
}

function detailRow(event) {
  return el('tr', { class: 'audit-detail', testid: 'audit-detail', hidden: true },
    el('td', { colspan: 6 },
      el('div', { class: 'mono small muted' }, `stream ${event.stream_id} v${event.version}`),
      el('div', { class: 'mono small muted' }, `hash ${event.hash || '-'}`),
      event.event_id ? el('div', { class: 'mono small muted' }, `event ${event.event_id}`) : null,
      el('pre', { class: 'json' }, pretty(event.data))));
}

/** Render the rows; returns how many are shown. */
export function renderAudit(tbody, events, filters) {
  const shown = auditRows(events, filters);
  const rows = [];
  for (const event of shown) {
    const detail = detailRow(event);
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
    const actor = actorLabel(event.actor);
    rows.push(el('tr', {
      testid: 'audit-row',
      dataset: { type: event.type, position: String(event.position), actor, stream: event.stream_id },
    },
    el('td', { class: 'mono', testid: 'audit-position' }, String(event.position)),
    el('td', { class: 'mono small', testid: 'audit-stream' }, `${streamLabel(event.stream_id)} v${event.version}`),
    el('td', { class: 'audit-type' }, el('span', { class: `etype t-${event.type.split('.')[0]}`, testid: 'audit-type' }, breakable(event.type))),
    el('td', { class: 'small', testid: 'audit-actor', title: event.actor ? pretty(event.actor) : '' }, actor),
    el('td', { class: 'small', title: event.recorded_at || '' }, formatClock(event.recorded_at)),
    el('td', {}, toggle)), detail);
  }
  mount(tbody, rows);
  return shown.length;
}
