// The console's only way to the gateway: fetch to this origin's public REST routes with the
// signed-in secret as a Bearer token. Failures become ApiError carrying the product's own
// error message (the OpenAI-shaped `error.message`), which the views show as is.

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `The gateway answered HTTP ${status}`);
    this.status = status;
    this.code = error.code || null;
    this.param = error.param || null;
  }
}

export class Api {
  #secret;

  constructor(secret) {
    this.#secret = secret;
  }

  /// Goes on with `secret` (the key holder's regenerated key).
  useSecret(secret) {
    this.#secret = secret;
  }

  async call(method, path, body) {
    const headers = { authorization: `Bearer ${this.#secret}` };
    const init = { method, headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, { error: { message: `The gateway could not be reached (${err.message})` } });
    }
    let json = null;
    try {
      json = await response.json();
    } catch {
      json = null;
    }
    if (!response.ok) throw new ApiError(response.status, json);
    return json;
  }

  get(path) { return this.call('GET', path); }
  post(path, body) { return this.call('POST', path, body ?? {}); }
  patch(path, body) { return this.call('PATCH', path, body); }
}

/// A query string from the defined, non-empty values of `params`.
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}
