// The staff pages at /staff: sign-in (password, then a TOTP code, or TOTP enrolment on
// first sign-in), the dashboard, the idle lock and the reaction to an expired session.

import { t, applyI18n, toggleLang, onLangChange } from './i18n.js';
import { api, onSessionExpired, isSignedOut } from './staffapi.js';
import { staffErrorText } from './stafferrors.js';
import { IdleWatcher, ActivityPinger } from './idle.js';
import { initDashboard, clearDashboard, loadConferences } from './dashboard.js';

const $ = (id) => document.getElementById(id);

const STAFF_VIEWS = ['loading', 'auth', 'dashboard'];
// The guest pages' sections; removed on /staff so their ids and test ids cannot clash.
const GUEST_VIEWS = ['join', 'waiting', 'conference', 'left', 'denied', 'removed', 'ended', 'replaced', 'error'];
const PING_INTERVAL_MS = 60_000;
// Used when /api/me does not say: the lock must never be disabled by a missing field.
const DEFAULT_IDLE_SECS = 15 * 60;
const TOTP_FORMAT = /^\d{6}$/;

const st = {
  /** login | totp | enroll: which step the sign-in card shows. */
  stage: 'login',
  me: null,
  /** The error shown on the sign-in card (ApiError, or {key}). */
  authError: null,
  busy: false,
  locked: false,
  idle: null,
  pinger: new ActivityPinger({ intervalMs: PING_INTERVAL_MS, ping: () => ping() }),
};

/** Test hook, like window.wardlink on the conference page. */
const staffHook = { view: null, stage: null, locked: false };

function showStaffView(name) {
  for (const view of STAFF_VIEWS) $(`view-staff-${view}`).hidden = view !== name;
  document.body.dataset.view = `staff-${name}`;
  staffHook.view = name;
  const heading = $(`view-staff-${name}`).querySelector('h1');
  if (heading) {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
}

/** Replaces the guest pages with the staff pages and starts at the session check. */
export async function startStaff() {
  window.wardlinkStaff = staffHook;
  for (const view of GUEST_VIEWS) $(`view-${view}`)?.remove();
  const main = $('main');
  main.append($('staff-template').content.cloneNode(true));
  // The lock covers the whole page, header included, so it lives outside <main>.
  document.body.append($('lock-screen'));
  applyI18n();
  wire();
  initDashboard();
  onSessionExpired(sessionExpired);
  onLangChange(renderAuth);

  showStaffView('loading');
  try {
    const me = await api('/api/me', { expectAnonymous: true });
    enterDashboard(me);
  } catch (err) {
    // Not signed in is the normal start; only a network failure deserves a message.
    showLogin(err?.code === 'network' ? err : null);
  }
}

function wire() {
  $('language-toggle').addEventListener('click', toggleLang);
  $('login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    submitLogin();
  });
  $('totp-form').addEventListener('submit', (event) => {
    event.preventDefault();
    submitTotp();
  });
  $('totp-code').addEventListener('input', () => {
    // Authenticator apps show "123 456"; people type the space too.
    const digits = $('totp-code').value.replace(/\D/g, '').slice(0, 6);
    if (digits !== $('totp-code').value) $('totp-code').value = digits;
  });
  $('totp-back').addEventListener('click', () => showLogin(null));
  $('logout-button').addEventListener('click', logout);
  $('lock-signin').addEventListener('click', () => {
    st.locked = false;
    staffHook.locked = false;
    $('lock-screen').hidden = true;
    $('main').hidden = false;
    showLogin(null);
  });
}

// ---------------------------------------------------------------- sign-in

function showLogin(error) {
  st.stage = 'login';
  st.me = null;
  st.authError = error;
  $('login-password').value = '';
  $('totp-code').value = '';
  clearEnrolment();
  renderAuth();
  showStaffView('auth');
  ($('login-username').value ? $('login-password') : $('login-username')).focus();
}

/** The TOTP secret must not stay in the DOM once enrolment is over or abandoned. */
function clearEnrolment() {
  $('enroll-qr').replaceChildren();
  $('enroll-secret').textContent = '';
  $('enroll-uri').textContent = '';
}

function renderAuth() {
  const stage = st.stage;
  staffHook.stage = stage;
  $('auth-heading').textContent = t(
    stage === 'enroll' ? 'staff_enroll_heading' : stage === 'totp' ? 'staff_totp_heading' : 'staff_login_heading',
  );
  $('login-form').hidden = stage !== 'login';
  $('totp-form').hidden = stage === 'login';
  $('enroll-panel').hidden = stage !== 'enroll';
  $('totp-body').hidden = stage !== 'totp';
  $('totp-submit').textContent = t(stage === 'enroll' ? 'staff_enroll_submit' : 'staff_totp_submit');
  const error = $('login-error');
  error.hidden = !st.authError;
  error.dataset.code = st.authError?.code ?? st.authError?.key ?? '';
  error.textContent = !st.authError ? '' : st.authError.key ? t(st.authError.key) : staffErrorText(st.authError);
  for (const id of ['login-submit', 'totp-submit', 'totp-back', 'login-username', 'login-password', 'totp-code']) {
    $(id).disabled = st.busy;
  }
  const busy = $('auth-busy');
  busy.hidden = !st.busy;
  busy.textContent = st.busy ? t('staff_busy') : '';
}

function setAuthError(error) {
  st.authError = error;
  renderAuth();
}

async function withBusy(fn) {
  if (st.busy) return;
  st.busy = true;
  renderAuth();
  try {
    await fn();
  } finally {
    st.busy = false;
    if (st.stage !== 'done') renderAuth();
  }
}

function submitLogin() {
  const username = $('login-username').value.trim();
  const password = $('login-password').value;
  if (!username || !password) {
    setAuthError({ key: 'staff_login_missing' });
    (username ? $('login-password') : $('login-username')).focus();
    return;
  }
  return withBusy(async () => {
    try {
      const result = await api('/api/login', { method: 'POST', body: { username, password }, expectAnonymous: true });
      $('login-password').value = '';
      st.authError = null;
      if (result?.stage === 'enroll') await startEnroll();
      else if (result?.stage === 'totp') showTotp();
      else await finishSignIn();
    } catch (err) {
      $('login-password').value = '';
      setAuthError(err);
      $('login-password').focus();
    }
  });
}

function showTotp() {
  st.stage = 'totp';
  $('totp-code').value = '';
  renderAuth();
  $('totp-code').focus();
}

async function startEnroll() {
  const enrolment = await api('/api/totp/enroll', { method: 'POST', expectAnonymous: true });
  st.stage = 'enroll';
  showQr(enrolment?.qr_svg ?? '');
  $('enroll-secret').textContent = enrolment?.secret ?? '';
  $('enroll-secret-row').hidden = !enrolment?.secret;
  $('enroll-uri').textContent = enrolment?.otpauth_uri ?? '';
  $('totp-code').value = '';
  renderAuth();
  $('totp-code').focus();
}

/**
 * Shows the server's QR code SVG as an image. An <img> with a data: URL cannot run script or
 * reach the page's DOM whatever the SVG holds, and CSP allows data: images.
 */
function showQr(svgText) {
  const box = $('enroll-qr');
  box.replaceChildren();
  if (!svgText) return;
  const bytes = new TextEncoder().encode(svgText);
  let binary = '';
  for (const b of bytes) binary += String.fromCharCode(b);
  const img = document.createElement('img');
  img.className = 'enroll-qr-img';
  img.alt = t('staff_enroll_qr_alt');
  img.src = `data:image/svg+xml;base64,${btoa(binary)}`;
  box.append(img);
}

function submitTotp() {
  const code = $('totp-code').value.replace(/\D/g, '');
  if (!TOTP_FORMAT.test(code)) {
    setAuthError({ key: 'staff_totp_format' });
    $('totp-code').focus();
    return;
  }
  const enrolling = st.stage === 'enroll';
  return withBusy(async () => {
    try {
      await api(enrolling ? '/api/totp/confirm' : '/api/login/totp', {
        method: 'POST',
        body: { code },
        expectAnonymous: true,
      });
      st.authError = null;
      await finishSignIn();
    } catch (err) {
      $('totp-code').value = '';
      if (isSignedOut(err)) {
        // The half-finished sign-in lapsed: start over from the password.
        showLogin(err);
        return;
      }
      setAuthError(err);
      $('totp-code').focus();
    }
  });
}

async function finishSignIn() {
  const me = await api('/api/me');
  enterDashboard(me);
}

// ---------------------------------------------------------------- dashboard, lock, expiry

function enterDashboard(me) {
  st.me = me ?? {};
  st.stage = 'done';
  st.authError = null;
  $('login-password').value = '';
  $('totp-code').value = '';
  clearEnrolment();
  renderUser();
  clearDashboard();
  showStaffView('dashboard');
  loadConferences();
  startIdleWatch();
}

function renderUser() {
  const me = st.me;
  if (!me) return;
  const name = me.display_name || me.username || '';
  $('staff-user').textContent = me.profession
    ? t('staff_user_profession', { name, profession: me.profession })
    : t('staff_user', { name });
}
onLangChange(renderUser);

function startIdleWatch() {
  stopIdleWatch();
  const secs = Number(st.me?.idle_timeout_secs);
  const timeoutMs = (Number.isFinite(secs) && secs > 0 ? secs : DEFAULT_IDLE_SECS) * 1000;
  st.pinger.reset();
  st.idle = new IdleWatcher({ timeoutMs, onIdle: lock, onActivity: () => st.pinger.activity() });
  st.idle.start();
}

function stopIdleWatch() {
  st.idle?.stop();
  st.idle = null;
  st.pinger.reset();
}

async function ping() {
  if (st.locked || !st.me) return;
  try {
    await api('/api/session/ping', { method: 'POST' });
  } catch (err) {
    // A lapsed session is handled by the API layer; anything else is retried with the next input.
    if (!isSignedOut(err)) console.warn('session ping failed', err);
  }
}

/** Leaves the signed-in state on this page: no conference detail stays in the DOM. */
function dropSession() {
  stopIdleWatch();
  st.me = null;
  clearDashboard();
  $('staff-user').textContent = '';
}

/** Idle for too long: wipe the screen and end the server session. */
function lock() {
  if (st.locked) return;
  st.locked = true;
  staffHook.locked = true;
  dropSession();
  // Best effort; the server's own idle timeout ends the session anyway.
  api('/api/logout', { method: 'POST', expectAnonymous: true }).catch(() => {});
  $('toasts').replaceChildren();
  $('main').hidden = true;
  $('lock-screen').hidden = false;
  document.body.dataset.view = 'staff-locked';
  staffHook.view = 'locked';
  $('lock-signin').focus();
}

function sessionExpired(error) {
  if (st.locked || !st.me) return;
  dropSession();
  showLogin(error);
}

async function logout() {
  dropSession();
  try {
    await api('/api/logout', { method: 'POST', expectAnonymous: true });
  } catch {
    // Signed out locally either way; the server session then simply expires.
  }
  showLogin(null);
}
