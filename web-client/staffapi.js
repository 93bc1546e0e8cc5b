// The staff HTTP API client. The session cookie is HttpOnly, so this code never sees it:
// every request simply goes same-origin with credentials. Errors arrive as {code, message}.

/** An API failure: `code` is the server's stable code, or "network" / "unknown". */
export class ApiError extends Error {
  constructor(status, code, message, { retryAfterSecs = null, body = null } = {}) {
    super(message || code);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.serverMessage = message || '';
    this.retryAfterSecs = retryAfterSecs;
    this.body = body;
  }
}

let sessionExpiredHandler = null;

/** Codes meaning "no valid session": the sign-in form is the only way on. */
const SIGNED_OUT_CODES = ['session_expired', 'not_authenticated'];

/** True when `error` means the session is gone (expired, or the cookie is missing). */
export function isSignedOut(error) {
  return SIGNED_OUT_CODES.includes(error?.code);
}

/**
 * Registers the handler for a signed-out answer (`session_expired`, `not_authenticated`) to
 * any request; the staff page then shows the sign-in form. Requests made with
 * `{expectAnonymous: true}` do not trigger it.
 */
export function onSessionExpired(fn) {
  sessionExpiredHandler = fn;
}

/** Seconds from a Retry-After header (delta-seconds or HTTP date), or null. */
function parseRetryAfter(value) {
  if (!value) return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, Math.round((at - Date.now()) / 1000));
}

/** Seconds until the lockout or rate limit ends, from whichever hint the server gave. */
function retryAfterFrom(res, body) {
  for (const key of ['retry_after_secs', 'retry_after', 'locked_for_secs']) {
    if (Number.isFinite(body?.[key])) return body[key];
  }
  for (const key of ['locked_until', 'retry_at']) {
    const at = typeof body?.[key] === 'string' ? Date.parse(body[key]) : NaN;
    if (!Number.isNaN(at)) return Math.max(0, Math.round((at - Date.now()) / 1000));
  }
  return parseRetryAfter(res.headers.get('Retry-After'));
}

function fallbackCode(status) {
  switch (status) {
    case 401:
      return 'session_expired';
    case 403:
      return 'forbidden';
    case 404:
      return 'not_found';
    case 429:
      return 'rate_limited';
    default:
      return 'unknown';
  }
}

/**
 * Calls the API. `body` is sent as JSON for anything but GET (an empty object when absent,
 * so every POST has the same JSON content type). Resolves to the parsed JSON (or null for an
 * empty body); rejects with ApiError.
 */
export async function api(path, { method = 'GET', body, expectAnonymous = false } = {}) {
  const init = {
    method,
    credentials: 'same-origin',
    cache: 'no-store',
    headers: { Accept: 'application/json' },
  };
  if (method !== 'GET') {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body ?? {});
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, 'network', String(err?.message ?? err));
  }
  let data = null;
  const text = await res.text().catch(() => '');
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (res.ok) return data;
  const code = typeof data?.code === 'string' && data.code ? data.code : fallbackCode(res.status);
  const message = typeof data?.message === 'string' ? data.message : '';
  const error = new ApiError(res.status, code, message, { retryAfterSecs: retryAfterFrom(res, data), body: data });
  if (SIGNED_OUT_CODES.includes(code) && !expectAnonymous) sessionExpiredHandler?.(error);
  throw error;
}
