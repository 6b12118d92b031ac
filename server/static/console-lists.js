// The sidebar: campaigns, sequence nodes and sessions, and the selection kept
// in the URL fragment (never the token), so a reload or a shared link reopens
// the same session.

import { el, formatTime, mount, shortId } from './console-dom.js';
import { closeSession, openSession } from './console-session.js';
import { $, guard, state } from './console-state.js';

const STATUS_LABELS = {
  chat_processing: 'assistant is writing…', generating_examples: 'generating examples…',
};

export function readHash() {
  const params = new URLSearchParams(window.location.hash.slice(1));
  return { campaign: params.get('campaign'), node: params.get('node'), session: params.get('session') };
}

export function writeHash() {
  const params = new URLSearchParams();
  if (state.campaignId) params.set('campaign', state.campaignId);
  if (state.nodeId) params.set('node', state.nodeId);
  if (state.sessionId) params.set('session', state.sessionId);
  const hash = params.toString();
  window.history.replaceState(null, '', hash ? `#${hash}` : window.location.pathname);
}

export async function loadCampaigns(wanted = {}) {
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

export async function reloadSessions() {
  const { sessions } = await state.api.sessions(state.campaignId);
  state.sessions = sessions;
  renderLists();
}

function pickItem(testid, { id, selected, title, meta, onpick }) {
  return el('li', {}, el('button', {
    type: 'button', class: 'pick', testid, dataset: { id }, 'aria-current': selected ? 'true' : 'false',
    onclick: () => guard(onpick, { key: 'select' }),
  }, el('span', { class: 'pick-title' }, title), meta ? el('span', { class: 'pick-meta' }, meta) : null));
}

export function sessionLabel(session) {
  return session.title || `Session ${shortId(session.id)}`;
}

export function nodeName(nodeId) {
  const node = state.nodes.find((n) => n.id === nodeId);
  return node ? `${node.position}. ${node.name || 'node'}` : `node ${shortId(nodeId)}`;
}

export function statusLabel(taskStatus) {
  return STATUS_LABELS[taskStatus] || 'idle';
}

/**
 * Keep the selected item in view inside its own scrolling list (a new campaign
 * may land below the fold), without scrolling the page the way scrollIntoView would.
 */
function revealSelected(list) {
  const selected = list.querySelector('[aria-current="true"]');
  if (!selected) return;
  const box = list.getBoundingClientRect();
  const item = selected.getBoundingClientRect();
  if (item.top < box.top) list.scrollTop -= box.top - item.top;
  else if (item.bottom > box.bottom) list.scrollTop += item.bottom - box.bottom;
}

export function renderLists() {
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
  for (const id of ['campaign-list', 'node-list', 'session-list']) revealSelected($(id));
}
