// The selected session's events as GET .../events returns them (with hash,
// actor and recorded_at), which the runs list, the chat's failure notes, the
// history labels and the audit view are folded from (console-model.js).
//
// Loaded whole when a session opens, then topped up after live frames: the
// websocket says *that* something committed, one request fetches it with the
// fields only the API has. Top-ups are debounced and never overlap; a request
// for more while one is in flight runs once more when it ends.

const PAGE = 1000; // the events API's largest page

export class SessionLog {
  constructor(api, sessionId, onChange) {
    this.api = api;
    this.sessionId = sessionId;
    this.onChange = onChange;
    this.events = [];
    this.loaded = false;
    this.closed = false;
    this.pending = null;
    this.again = false;
    this.timer = null;
  }

  get last() {
    return this.events.length ? this.events[this.events.length - 1].position : 0;
  }

  /** Everything committed after the last event held; concurrent calls share one pass. */
  sync() {
    if (this.pending) {
      this.again = true;
      return this.pending;
    }
    this.pending = this.pass().finally(() => { this.pending = null; });
    return this.pending;
  }

  async pass() {
    do {
      this.again = false;
      let after = this.last;
      for (;;) {
        const page = await this.api.events(this.sessionId, after, PAGE);
        if (this.closed) return;
        const fresh = page.events.filter((event) => event.position > this.last);
        this.events.push(...fresh);
        if (page.next === null || page.next === undefined) break;
        after = page.next;
        if (fresh.length) this.onChange(this); // a long history shows up page by page
      }
      this.loaded = true;
      this.onChange(this);
    } while (this.again && !this.closed);
  }

  /** Sync soon (frames come in bursts); `run` wraps the call (console.js reports its errors). */
  schedule(run, delay = 300) {
    if (this.timer || this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      if (!this.closed) run(() => this.sync());
    }, delay);
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
  }
}
