// The per-browser device secret. The server binds an invitation to the first device that
// uses it; the same link opened on another device must be admitted by the host again. The
// secret never leaves this origin except in the join message.

const STORAGE_KEY = 'wardlink.device';
const SECRET_BYTES = 32;
// 32 bytes in base64url without padding are exactly 43 characters.
const VALID = /^[A-Za-z0-9_-]{43}$/;

let memoryFallback = null;

function base64Url(bytes) {
  let binary = '';
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function generate() {
  const bytes = new Uint8Array(SECRET_BYTES);
  crypto.getRandomValues(bytes);
  return base64Url(bytes);
}

/**
 * This browser's device secret, created on first use. When storage is blocked the secret
 * lives for this page only: the host then sees a "second device" on every visit, which is
 * the safe direction to fail in.
 */
export function deviceSecret() {
  try {
    const saved = localStorage.getItem(STORAGE_KEY);
    if (saved && VALID.test(saved)) return saved;
    const fresh = generate();
    localStorage.setItem(STORAGE_KEY, fresh);
    return fresh;
  } catch {
    memoryFallback ??= generate();
    return memoryFallback;
  }
}
