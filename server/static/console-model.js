// Read models the console folds from a session's events (GET .../events: the
// session stream plus its runs' streams, in log order). Pure functions, the
// browser's counterpart of projections/: (events) -> view data, no DOM, no
// clock, so what a reload shows is exactly what the log says.
//
// Why fold in the browser: the session row keeps no run list, no failure
// reasons and no record of which revision was a rollback; the events do, and
// the console already reads them for the audit view.

const RUN_STREAM = 'run-';
/** A run ends with exactly one of these (core/vocabulary.py TERMINAL); the console's one copy. */
export const TERMINAL = new Set(['run.completed', 'run.failed', 'run.canceled']);
const ms = (stamp) => {
  const t = Date.parse(stamp);
  return Number.isNaN(t) ? null : t;
};

/** Where a run says which engine and model served it, if its events carry that. */
function engineFacts(run, data) {
  const sources = [data, data && data.output, data && data.engine_info];
  for (const source of sources) {
    if (!source || typeof source !== 'object') continue;
    if (typeof source.engine === 'string' && !run.engine) run.engine = source.engine;
    if (typeof source.model === 'string' && !run.model) run.model = source.model;
    const usage = source.usage;
    if (usage && typeof usage === 'object') {
      const tokens = usage.output_tokens ?? usage.completion_tokens ?? usage.total_tokens;
      if (typeof tokens === 'number') run.tokens = tokens;
    }
    if (typeof source.tokens === 'number') run.tokens = source.tokens;
  }
}

function newRun(id, position) {
  return {
    id, position, kind: null, status: 'queued', engine: null, model: null,
    createdAt: null, startedAt: null, finishedAt: null, durationMs: null,
    deltas: [], text: '', words: 0, tokens: null, reply: null, examples: 0, progress: null,
    error: null, outcome: null, userText: null, afterMessage: null, chatEpoch: 0,
  };
}

/**
 * Every run of the session, oldest first, with what its events say:
 * status, kind, engine/model when recorded, times, the text deltas with their
 * recorded_at (for replay), word and token counts, the failure reason, and
 * `afterMessage`: how many chat messages there were when it ended, so a
 * failure can be shown right after the message that asked for it.
 */
export function runsOf(events) {
  const runs = new Map();
  const runOf = (id, position) => {
    let run = runs.get(id);
    if (!run) {
      run = newRun(id, position);
      runs.set(id, run);
    }
    return run;
  };
  let messages = 0;
  let chatEpoch = 0; // a PATCH that replaces the messages leaves older notes nowhere to sit
  for (const event of events) {
    const data = event.data || {};
    const runId = event.stream_id.startsWith(RUN_STREAM) ? event.stream_id.slice(RUN_STREAM.length) : null;
    if (!runId) {
      if (event.type === 'session.patched' && data.fields && 'messages' in data.fields) {
        messages = Array.isArray(data.fields.messages) ? data.fields.messages.length : 0;
        chatEpoch += 1;
      } else if (event.type === 'message.appended') {
        messages += 1;
        const run = event.actor && event.actor.type === 'run' ? runs.get(event.actor.id) : null;
        if (run && data.role === 'user') run.userText = data.content;
      } else if (event.type === 'run.claimed') {
        runOf(data.run_id, event.position).kind = data.kind || null;
      } else if (event.type === 'run.released') {
        const run = runOf(data.run_id, event.position);
        run.outcome = data.outcome || null;
        if (!TERMINAL.has(`run.${run.status}`) && data.outcome) run.status = String(data.outcome).slice(4);
      }
      continue;
    }
    const run = runOf(runId, event.position);
    engineFacts(run, data);
    switch (event.type) {
      case 'run.created':
        run.kind = run.kind || data.kind || null;
        run.createdAt = event.recorded_at;
        break;
      case 'run.started':
        run.status = 'running';
        run.kind = run.kind || data.kind || null;
        run.startedAt = event.recorded_at;
        break;
      case 'message.delta':
        run.deltas.push({ at: event.recorded_at, text: data.text || '' });
        run.text += data.text || '';
        break;
      case 'message.completed':
        run.reply = data.message && typeof data.message.content === 'string' ? data.message.content : null;
        break;
      case 'examples.progress':
        run.progress = { done: data.done, total: data.total };
        break;
      case 'example.generated':
        run.examples += 1;
        break;
      default:
        if (TERMINAL.has(event.type)) {
          run.status = event.type.slice(4);
          run.finishedAt = event.recorded_at;
          run.error = event.type === 'run.failed' ? String(data.error || 'unknown error')
            : event.type === 'run.canceled' ? String(data.reason || 'canceled') : null;
          run.afterMessage = messages;
          run.chatEpoch = chatEpoch;
        }
    }
  }
  const list = [...runs.values()].sort((a, b) => a.position - b.position);
  for (const run of list) {
    const from = ms(run.startedAt || run.createdAt);
    const to = ms(run.finishedAt);
    run.durationMs = from !== null && to !== null ? Math.max(0, to - from) : null;
    run.words = run.text.trim() ? run.text.trim().split(/\s+/).length : 0;
    run.currentEpoch = chatEpoch;
  }
  return list;
}

/** Runs that ended badly and still have a place in the chat, for the chat's notes. */
export function endedBadly(runs) {
  return runs.filter((run) => (run.status === 'failed' || run.status === 'canceled')
    && run.afterMessage !== null && run.chatEpoch === run.currentEpoch);
}

/**
 * Where each skeleton version and each draft came from, folded exactly as the
 * session projection folds them (projections/session.py): a revision or a
 * rollback bumps framework_version; a draft revision pushes the old draft onto
 * draft_history when there was one. `skeletons` maps version -> origin;
 * `drafts` is aligned with row.draft_history; `draft` is the current draft's.
 * An origin is {origin: 'revised'|'rollback'|'edited', to, at, position, streamVersion, forVersion}:
 * `position` is the event's place in the log (where a fork starts), `streamVersion` its
 * place in the session's stream (what the diff endpoint compares).
 */
export function revisionsOf(events) {
  let version = 0;
  let hasDraft = false;
  let draft = null;
  let drafts = [];
  const skeletons = new Map();
  for (const event of events) {
    if (event.stream_id.startsWith(RUN_STREAM)) continue;
    const data = event.data || {};
    const at = event.recorded_at;
    const position = event.position;
    const stamp = { at, position, streamVersion: event.version };
    if (event.type === 'session.patched') {
      const fields = data.fields || {};
      if ('framework_version' in fields) version = Number(fields.framework_version) || 0;
      if ('skeleton' in fields) skeletons.set(version, { origin: 'edited', ...stamp });
      if ('draft_history' in fields) {
        drafts = (Array.isArray(fields.draft_history) ? fields.draft_history : []).map(() => ({ origin: 'edited' }));
      }
      if ('draft_subject' in fields || 'draft_body' in fields) {
        draft = { origin: 'edited', ...stamp, forVersion: version };
        hasDraft = fields.draft_subject != null || fields.draft_body != null;
      }
    } else if (event.type === 'skeleton.revised' || event.type === 'skeleton.rolled_back') {
      version += 1;
      const rollback = event.type === 'skeleton.rolled_back';
      skeletons.set(version, { origin: rollback ? 'rollback' : 'revised', to: rollback ? data.to_version : null, ...stamp });
    } else if (event.type === 'draft.revised' || event.type === 'draft.rolled_back') {
      if (hasDraft) drafts.push(draft || { origin: 'edited' });
      const rollback = event.type === 'draft.rolled_back';
      draft = { origin: rollback ? 'rollback' : 'revised', to: rollback ? data.index : null, ...stamp, forVersion: version };
      hasDraft = data.draft_subject != null || data.draft_body != null;
    }
  }
  return { skeletons, drafts, draft };
}

/** The skeleton a version held: the current one, or its newest skeleton_history entry. */
export function skeletonAt(row, version) {
  if (row.skeleton && row.framework_version === version) return row.skeleton;
  const history = Array.isArray(row.skeleton_history) ? row.skeleton_history : [];
  for (let i = history.length - 1; i >= 0; i -= 1) {
    if (history[i] && history[i].framework_version === version) return history[i].skeleton;
  }
  return undefined;
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

/**
 * Why the current draft no longer fits the skeleton, or null when it does:
 * the skeleton was rolled back after the draft was written, and the skeleton
 * the draft was written from is not the one now current.
 */
export function draftMismatch(row, revisions) {
  if (!row || !row.skeleton || (!row.draft_subject && !row.draft_body)) return null;
  const current = revisions.skeletons.get(row.framework_version);
  if (!current || current.origin !== 'rollback') return null;
  const draft = revisions.draft;
  if (draft && draft.position > current.position) return null; // drafted after the rollback
  const writtenFor = draft ? draft.forVersion : null;
  if (writtenFor !== null && same(skeletonAt(row, writtenFor), row.skeleton)) return null;
  return { version: row.framework_version, to: current.to, writtenFor };
}

/** Who did something, as one short string (also the actor filter's value). */
export function actorLabel(actor) {
  if (!actor) return 'unknown';
  if (typeof actor === 'string') return actor;
  const id = String(actor.id || '').replace(/^run_/, '').slice(0, 8);
  return `${actor.type || '?'} ${id}`.trim();
}

/** A stream as one short string: "session" or "run 1a2b3c4d". */
export function streamLabel(streamId) {
  if (streamId.startsWith(RUN_STREAM)) return `run ${streamId.slice(RUN_STREAM.length).replace(/^run_/, '').slice(0, 8)}`;
  return streamId.split('-')[0];
}

/** The values each audit filter can take, from the events loaded. */
export function auditFacets(events) {
  const types = new Set();
  const actors = new Set();
  const streams = new Map();
  for (const event of events) {
    types.add(event.type);
    actors.add(actorLabel(event.actor));
    streams.set(event.stream_id, streamLabel(event.stream_id));
  }
  return {
    types: [...types].sort(),
    actors: [...actors].sort(),
    streams: [...streams].map(([id, label]) => ({ id, label })),
  };
}

/** The audit rows to show, newest first. */
export function auditRows(events, { hideDeltas = false, type = '', actor = '', stream = '' } = {}) {
  const rows = [];
  for (let i = events.length - 1; i >= 0; i -= 1) {
    const event = events[i];
    if (hideDeltas && !type && event.type === 'message.delta') continue;
    if (type && event.type !== type) continue;
    if (actor && actorLabel(event.actor) !== actor) continue;
    if (stream && event.stream_id !== stream) continue;
    rows.push(event);
  }
  return rows;
}
