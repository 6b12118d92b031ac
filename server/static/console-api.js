// The HTTP API as the console uses it. Every failure becomes an ApiError with
// the server's {error: {code, message, details}} (or a network/parse error
// dressed the same way), so the page can always show a sentence, never a
// blank screen. `onAnswer` hears of every answer, error statuses included:
// an answer of any kind proves the server reachable again.

const SESSIONS = '/api/campaigns/ai-chat-sessions';

export class ApiError extends Error {
  constructor(status, code, message, details = null) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

export class Api {
  constructor(baseUrl, token, { onAnswer = () => {} } = {}) {
    this.baseUrl = baseUrl;
    this.token = token;
    this.onAnswer = onAnswer;
  }

  async request(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(this.baseUrl + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: 'omit',
        cache: 'no-store',
      });
    } catch (exc) {
      throw new ApiError(0, 'network_error', `Could not reach the server (${exc.message}).`);
    }
    this.onAnswer();
    let payload = null;
    const text = await response.text();
    if (text) {
      try {
        payload = JSON.parse(text);
      } catch {
        payload = null;
      }
    }
    if (!response.ok) {
      const error = payload && payload.error;
      if (error && typeof error.message === 'string') {
        throw new ApiError(response.status, error.code || 'error', error.message, error.details);
      }
      throw new ApiError(
        response.status, 'http_error', `${method} ${path} failed with HTTP ${response.status}.`,
      );
    }
    if (payload === null) {
      throw new ApiError(response.status, 'bad_response', `${method} ${path}: the reply was not JSON.`);
    }
    return payload;
  }

  // queries
  health() { return this.request('GET', '/healthz'); }
  campaigns() { return this.request('GET', '/api/campaigns'); }
  nodes(campaignId) { return this.request('GET', `/api/campaigns/${enc(campaignId)}/nodes`); }
  sessions(campaignId) { return this.request('GET', `${SESSIONS}?campaign_id=${enc(campaignId)}`); }
  session(id) { return this.request('GET', `${SESSIONS}/${enc(id)}`); }
  run(runId) { return this.request('GET', `/api/runs/${enc(runId)}`); }
  diff(id, from, to) {
    return this.request('GET', `${SESSIONS}/${enc(id)}/diff?from=${from}&to=${to}`);
  }
  events(id, after = 0, limit = 200) {
    return this.request('GET', `${SESSIONS}/${enc(id)}/events?after=${after}&limit=${limit}`);
  }

  // commands
  createCampaign(name) { return this.request('POST', '/api/campaigns', { name }); }
  createNode(campaignId, name) {
    return this.request('POST', `/api/campaigns/${enc(campaignId)}/nodes`, name ? { name } : {});
  }
  createSession(campaignId, nodeId) {
    return this.request('POST', SESSIONS, { campaign_id: campaignId, node_id: nodeId });
  }
  patchSession(id, fields) { return this.request('PATCH', `${SESSIONS}/${enc(id)}`, fields); }
  deleteSession(id) { return this.request('DELETE', `${SESSIONS}/${enc(id)}`); }
  turn(id, body) { return this.request('POST', `${SESSIONS}/${enc(id)}/turn`, body); }
  generateExamples(id, body) {
    return this.request('POST', `${SESSIONS}/${enc(id)}/generate-examples`, body);
  }
  rollbackSkeleton(id, frameworkVersion) {
    return this.request('POST', `${SESSIONS}/${enc(id)}/skeleton/rollback`, {
      framework_version: frameworkVersion,
    });
  }
  rollbackDraft(id, index) {
    return this.request('POST', `${SESSIONS}/${enc(id)}/draft/rollback`, { index });
  }
  fork(id, position) { return this.request('POST', `${SESSIONS}/${enc(id)}/fork`, { position }); }
  cancelRun(runId) { return this.request('POST', `/api/runs/${enc(runId)}/cancel`); }
}

const enc = encodeURIComponent;
