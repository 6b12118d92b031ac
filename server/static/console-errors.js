// What went wrong, kept on screen until its cause clears.
//
// The console used to have one banner that any successful action (and every
// background refresh, ~40 ms after a run's last frame) cleared, so a failure
// flashed and vanished. Here each error has a key naming its cause, and only
// that cause going away removes it:
//   network   no answer from the server; cleared by the next answer of any kind
//             (console.js probes /healthz until one comes)
//   busy      409 session_busy; cleared by a session read, made after the
//             refusal, that shows the session idle
//   <action>  a refused command (turn, examples, rollback...); cleared when the
//             same action next succeeds
// and every one can be dismissed by hand. Run failures are not errors of the
// page: they are messages in the chat, rebuilt from the run's events.

import { el, mount } from './console-dom.js';

/** The key an error is filed under: its cause when the server names one, else the action. */
export function causeOf(error, action) {
  if (error && error.code === 'network_error') return 'network';
  if (error && error.code === 'session_busy') return 'busy';
  if (error && error.status === 401) return 'auth';
  return action || 'page';
}

function sentence(error) {
  const code = error && error.code ? `${error.code}: ` : '';
  let message = (error && error.message) || String(error);
  if (error && error.status === 401) {
    message += '. Check the token: `.venv/bin/sessionstream users create NAME` prints one.';
  }
  return code + message;
}

export class Errors {
  /** `banner` is the [data-testid=error-banner] region; entries render inside it. */
  constructor(banner) {
    this.banner = banner;
    this.entries = new Map(); // key -> {error, text, scope, since}
  }

  /**
   * File an error under `key`, replacing an older one with the same cause.
   * scope 'session': cleared when another session is opened. `since` is
   * whatever the clearing rule compares against (busy: the refresh ticket).
   */
  show(key, error, { scope = 'page', since = 0 } = {}) {
    this.entries.set(key, { error, text: sentence(error), scope, since });
    this.render();
  }

  clear(key) {
    if (this.entries.delete(key)) this.render();
  }

  /** Clear `key` if `test(entry)` says its cause is gone. */
  clearIf(key, test) {
    const entry = this.entries.get(key);
    if (entry && test(entry)) this.clear(key);
  }

  clearScope(scope) {
    let changed = false;
    for (const [key, entry] of this.entries) {
      if (entry.scope === scope) {
        this.entries.delete(key);
        changed = true;
      }
    }
    if (changed) this.render();
  }

  has(key) {
    return this.entries.has(key);
  }

  render() {
    const items = [...this.entries].map(([key, entry]) => el(
      'div',
      { class: 'banner-item', testid: 'error-item', dataset: { key, code: entry.error.code || 'error' } },
      el('span', { class: 'banner-text', testid: 'error-text' }, entry.text),
      el('button', {
        type: 'button', class: 'banner-close', testid: 'error-close', 'aria-label': 'Dismiss',
        onclick: () => this.clear(key),
      }, '×'),
    ));
    mount(this.banner, items);
    this.banner.hidden = items.length === 0;
    const first = items.length ? [...this.entries.values()][0].error : null;
    this.banner.dataset.code = first ? first.code || 'error' : '';
  }
}
