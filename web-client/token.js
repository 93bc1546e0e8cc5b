// Reading the join token. The token travels in the URL fragment (#t=...) so it never reaches
// server logs or Referer headers. We decode its claims only to prefill the join form; the
// server verifies the signature, so nothing here is trusted for access decisions.

/** The raw token from a location hash like "#t=<token>", or null when absent/empty. */
export function tokenFromHash(hash) {
  const params = new URLSearchParams(String(hash || '').replace(/^#/, ''));
  const token = (params.get('t') || '').trim();
  return token || null;
}

/** Decodes base64url without padding into a UTF-8 string (titles and names are Japanese). */
function base64UrlToText(part) {
  const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
  const padded = b64 + '='.repeat((4 - (b64.length % 4)) % 4);
  const binary = atob(padded);
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
}

/**
 * The token's claims object ({v, room, title, role, name, iat, exp, jti}), or null when the
 * token is not shaped as expected. Never throws: a garbled link should still reach the server,
 * whose error message is more useful than ours.
 */
export function decodeClaims(token) {
  if (typeof token !== 'string') return null;
  const dot = token.indexOf('.');
  if (dot <= 0) return null;
  try {
    const claims = JSON.parse(base64UrlToText(token.slice(0, dot)));
    return claims && typeof claims === 'object' && !Array.isArray(claims) ? claims : null;
  } catch {
    return null;
  }
}

/** True when the claims carry an expiry in the past (advisory only: the device clock may be off). */
export function looksExpired(claims, nowMs = Date.now()) {
  return Boolean(claims && Number.isFinite(claims.exp) && claims.exp * 1000 < nowMs);
}
