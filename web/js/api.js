// The HTTP side: the signed-in state, JSON calls with problem+json errors,
// and keeping the session alive.
//
// HTTP calls carry `Authorization: Bearer <access_token>`; the token lives in
// sessionStorage (this tab only). When the server offers a refresh token (an
// HttpOnly cookie, `POST /auth/refresh`), an expired access token is renewed
// and the call retried once, and the token is renewed ahead of its expiry, so
// nobody is signed out mid-chat.

const TOKEN_KEY = 'roomcast.token';

export const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  me: null, // {id, username, role, avatar_url, email}
  rooms: [],
  session: null, // the open room's RoomSession
  refreshable: null, // null: not known yet; false: the server has no refresh endpoint
};

export class ApiError extends Error {
  constructor(message, status, problem, retryAfter = null) {
    super(message);
    this.status = status;
    this.problem = problem || null;
    this.code = problem && problem.code;
    this.fieldErrors = (problem && Array.isArray(problem.errors) && problem.errors) || [];
    this.retryAfter = retryAfter; // seconds, from Retry-After (429, 503)
  }
}

let onSignedOut = () => {};
/** What happens when the session can no longer be used (set by the app). */
export function whenSignedOut(handler) {
  onSignedOut = handler;
}

let refreshTimer = null;
let refreshing = null;

export function setToken(token, expiresIn) {
  state.token = token;
  clearTimeout(refreshTimer);
  refreshTimer = null;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  if (token && expiresIn && state.refreshable !== false) {
    // Renew at four fifths of the lifetime: a socket never sees the token lapse.
    const ms = Math.max(5000, expiresIn * 800);
    refreshTimer = setTimeout(() => refreshSession(), Math.min(ms, 2 ** 31 - 1));
  }
}

/**
 * Asks for a new access token with the refresh cookie. Resolves true when one
 * came; false when the server has no refresh endpoint or refuses the cookie.
 * Concurrent callers share one request (the cookie rotates on use).
 */
export function refreshSession() {
  if (state.refreshable === false) return Promise.resolve(false);
  if (!refreshing) {
    refreshing = (async () => {
      try {
        const res = await fetch('/auth/refresh', {
          method: 'POST',
          headers: { Accept: 'application/json, application/problem+json' },
          credentials: 'same-origin',
        });
        if (res.status === 404 || res.status === 405) {
          state.refreshable = false;
          return false;
        }
        if (!res.ok) return false;
        state.refreshable = true;
        const body = await res.json();
        if (!body || !body.access_token) return false;
        setToken(body.access_token, body.expires_in);
        return true;
      } catch {
        return false;
      } finally {
        refreshing = null;
      }
    })();
  }
  return refreshing;
}

/** Builds a problem+json answer into an ApiError carrying its `detail`. */
async function toError(res) {
  const type = res.headers.get('content-type') || '';
  const problem = type.includes('json') ? await res.json().catch(() => null) : null;
  let message = (problem && (problem.detail || problem.title)) || `${res.status} ${res.statusText}`;
  const retry = res.headers.get('retry-after');
  if (retry) message += ` (try again in ${retry} s)`;
  const seconds = Number.parseInt(retry, 10);
  return new ApiError(message, res.status, problem, Number.isFinite(seconds) ? seconds : null);
}

/**
 * One HTTP call. `body` is sent as JSON, or as it is when it is FormData.
 * A problem+json answer becomes an ApiError carrying its `detail`.
 */
export async function api(method, path, body, { retried = false } = {}) {
  const headers = { Accept: 'application/json, application/problem+json' };
  // The token this call carries: a 401 signs out only while it is still the
  // session's (not after a logout or an account deletion replied meanwhile).
  const used = state.token;
  if (used) headers.Authorization = `Bearer ${used}`;
  const init = { method, headers, credentials: 'same-origin' };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError('Cannot reach the server. Check your connection and try again.', 0);
  }
  if (!res.ok) {
    const err = await toError(res);
    const authCall = path.startsWith('/auth/');
    if (res.status === 401 && used && state.token === used && !authCall) {
      if (!retried && (await refreshSession())) return api(method, path, body, { retried: true });
      if (state.token === used) onSignedOut(err.message);
    }
    throw err;
  }
  if (res.status === 204) return null;
  const type = res.headers.get('content-type') || '';
  return type.includes('json') ? res.json() : res.text();
}

/** `GET` a path; null when the server does not have it (404/405): for features that may not be there yet. */
export async function optional(method, path, body) {
  try {
    return await api(method, path, body);
  } catch (err) {
    if ((err.status === 404 && (!err.code || err.code === 'not_found') && /route/i.test(err.message)) || err.status === 405) {
      return null;
    }
    throw err;
  }
}

export const isAdmin = () => Boolean(state.me && state.me.role === 'admin');
export const isGuest = () => Boolean(state.me && state.me.role === 'guest');
