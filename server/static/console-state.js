// The console's one state object, its error banner, and guard(): how every
// user action runs. Modules share these instead of passing them around; the
// state changes only in response to HTTP answers, websocket frames and clicks.

import { byTestId } from './console-dom.js';
import { Errors, causeOf } from './console-errors.js';

export const $ = (id) => byTestId(id);
export const BASE = window.location.origin;

export const state = {
  api: null,
  campaigns: [], campaignId: null,
  nodes: [], nodeId: null,
  sessions: [], sessionId: null,
  row: null,
  runs: new Map(), // runId -> live run view, from frames (console-session.js)
  activeRunId: null,
  sub: null, // the session channel
  fills: new Map(), // runId -> run channel catching up a run joined mid-way
  lastPosition: 0,
  conn: 'idle',
  tab: 'framework',
  log: null, // SessionLog: the session's events from the API
  view: { runs: [], revisions: { skeletons: new Map(), drafts: [], draft: null } }, // folded from the log
  compare: { skeleton: { from: null, to: null }, draft: { from: null, to: null } },
  diffs: new Map(), // 'from-to' -> the server's diff of two versions of the open session
  replay: null, // {runId, text, done, handle}
  generation: 0, // bumped on every session switch; late async results of older ones are dropped
  // Sample leads are off by default (the checkbox in the composer): a made-up lead
  // table must not steer a chat about someone else's audience. They fill the
  // examples form, where leads are the point.
  leads: [
    { id: 'lead-1', first_name: 'Dana', last_name: 'Kim', company: 'Northwind', position: 'VP of Sales' },
    { id: 'lead-2', first_name: 'Luis', last_name: 'Ortega', company: 'Globex', position: 'Head of Revenue' },
    { id: 'lead-3', first_name: 'Priya', last_name: 'Shah', company: 'Initech', position: 'CRO' },
  ],
};

export const errors = new Errors($('error-banner'));

const causeHandlers = new Map();
const afterActions = [];

/** What to do beyond showing it when an error has this cause (probe, refresh, sign out). */
export function onCause(cause, handler) {
  causeHandlers.set(cause, handler);
}

/** Called after every guarded action, whatever its outcome (e.g. to redraw the busy state). */
export function afterAction(handler) {
  afterActions.push(handler);
}

/** Show an error under its cause; `action` names what was attempted, `scope` what it belongs to. */
export function report(error, action = 'page', scope = 'page') {
  const cause = causeOf(error, action);
  const handler = causeHandlers.get(cause);
  const options = (handler && handler(error)) || {};
  errors.show(cause, error, { scope, ...options });
}

/**
 * Run a user action: disable `button` meanwhile, file a failure under its
 * cause, and on success clear only this action's own earlier error, so one
 * thing going right never hides something else still wrong.
 */
export async function guard(action, { key = 'page', button = null, scope = 'page' } = {}) {
  if (button) button.disabled = true;
  try {
    const result = await action();
    errors.clear(key);
    return result;
  } catch (error) {
    report(error, key, scope);
    return undefined;
  } finally {
    if (button) button.disabled = false;
    for (const handler of afterActions) handler();
  }
}
