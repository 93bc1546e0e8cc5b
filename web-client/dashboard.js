// The staff dashboard: create a conference (title, start time, invitations), show the host
// link and one link per invitation (copy / revoke), and list upcoming conferences.

import { t, roleName, has, applyI18n, onLangChange } from './i18n.js';
import { api, isSignedOut } from './staffapi.js';
import { toast } from './ui.js';
import { titleLooksLikePatientName } from './titlecheck.js';
import { toRfc3339Local, parseDateTimeLocal, toDateTimeLocalValue, formatDateTime } from './datetime.js';
import { staffErrorText } from './stafferrors.js';

const $ = (id) => document.getElementById(id);

/** Roles an invitation may carry (the host link is made by the server itself). */
export const INVITE_ROLES = ['care_manager', 'surveyor', 'staff', 'family'];
// The default start: the next quarter hour at least 15 minutes ahead.
const DEFAULT_LEAD_MS = 15 * 60_000;
const QUARTER_MS = 15 * 60_000;

let created = null;
let list = null;
let listError = null;
let createError = null;

/** Wires the dashboard's controls; call once after the staff markup is in the document. */
export function initDashboard() {
  $('conference-title').addEventListener('input', renderTitleWarning);
  $('invite-add').addEventListener('click', () => addInviteRow());
  $('create-form').addEventListener('submit', (event) => {
    event.preventDefault();
    createConference();
  });
  $('host-copy').addEventListener('click', () => copyText($('host-link').href));
  $('created-another').addEventListener('click', () => {
    resetCreateForm();
    $('conference-title').focus();
  });
  $('list-refresh').addEventListener('click', loadConferences);
  onLangChange(() => {
    renderTitleWarning();
    renderCreateError();
    renderCreated();
    renderList();
  });
}

/** Clears everything shown (sign-out, lock, expiry): nothing of a conference stays on screen. */
export function clearDashboard() {
  resetCreateForm();
  list = null;
  listError = null;
  renderList();
}

/** A fresh, empty creation form with a sensible default start time. */
export function resetCreateForm() {
  created = null;
  createError = null;
  $('create-form').reset();
  $('conference-title').value = '';
  const start = new Date(Math.ceil((Date.now() + DEFAULT_LEAD_MS) / QUARTER_MS) * QUARTER_MS);
  $('conference-scheduled').value = toDateTimeLocalValue(start);
  $('invite-rows').replaceChildren();
  renderInviteRows();
  renderTitleWarning();
  renderCreateError();
  renderCreated();
  setCreateBusy(false);
}

// ---------------------------------------------------------------- creation form

function renderTitleWarning() {
  const warning = $('title-warning');
  const show = titleLooksLikePatientName($('conference-title').value);
  warning.hidden = !show;
  warning.textContent = show ? t('conf_title_warning') : '';
}

function addInviteRow(role = 'care_manager') {
  const li = $('invite-row-template').content.firstElementChild.cloneNode(true);
  applyI18n(li);
  const select = li.querySelector('.invite-role');
  select.value = role;
  select.addEventListener('change', renderInviteRows);
  li.querySelector('.invite-row-remove').addEventListener('click', () => {
    li.remove();
    renderInviteRows();
    $('invite-add').focus();
  });
  $('invite-rows').append(li);
  renderInviteRows();
  select.focus();
}

function renderInviteRows() {
  const rows = $('invite-rows').children;
  $('invites-empty').hidden = rows.length > 0;
  for (const li of rows) {
    applyI18n(li);
    li.querySelector('.invite-name').placeholder = t(`invite_default_${li.querySelector('.invite-role').value}`);
  }
}

function readInvitations() {
  return [...$('invite-rows').children].map((li) => {
    const role = li.querySelector('.invite-role').value;
    // An empty name becomes the role's name, as the default room links are labelled.
    const name = li.querySelector('.invite-name').value.trim() || t(`invite_default_${role}`);
    return { role, display_name: name };
  });
}

function setCreateBusy(busy) {
  for (const el of $('create-form').querySelectorAll('input, select, button')) el.disabled = busy;
  $('conference-create').textContent = busy ? t('staff_busy') : t('conf_create');
}

function setCreateError(error, field) {
  createError = error;
  renderCreateError();
  if (field) $(field).focus();
}

function renderCreateError() {
  const el = $('create-error');
  el.hidden = !createError;
  el.textContent = !createError ? '' : createError.key ? t(createError.key) : staffErrorText(createError);
}

async function createConference() {
  const title = $('conference-title').value.trim();
  if (!title) return setCreateError({ key: 'conf_title_required' }, 'conference-title');
  const when = parseDateTimeLocal($('conference-scheduled').value);
  if (!when) return setCreateError({ key: 'conf_scheduled_required' }, 'conference-scheduled');
  setCreateError(null);
  setCreateBusy(true);
  try {
    const result = await api('/api/conferences', {
      method: 'POST',
      body: { title, scheduled_at: toRfc3339Local(when), invitations: readInvitations() },
    });
    created = { ...result, title, scheduled: when };
    renderCreated();
    $('created').querySelector('h2').focus?.();
    loadConferences();
  } catch (err) {
    // A lapsed session is handled (sign-in form) by the API layer; nothing to add here.
    if (!isSignedOut(err)) setCreateError(err);
  } finally {
    setCreateBusy(false);
  }
}

// ---------------------------------------------------------------- creation result

function renderCreated() {
  const box = $('created');
  $('create-form').hidden = Boolean(created);
  box.hidden = !created;
  if (!created) {
    $('host-link').removeAttribute('href');
    $('created-invites').replaceChildren();
    return;
  }
  $('created-title').textContent = `${created.title} — ${formatDateTime(created.scheduled)}`;
  const windowEl = $('created-window');
  windowEl.hidden = !(created.valid_from && created.expires_at);
  windowEl.textContent = windowEl.hidden
    ? ''
    : t('created_window', { from: formatDateTime(created.valid_from), to: formatDateTime(created.expires_at) });
  const host = $('host-link');
  if (created.host_link) host.href = created.host_link;
  else host.removeAttribute('href');
  host.hidden = !created.host_link;
  $('host-copy').hidden = !created.host_link;

  const warnings = (Array.isArray(created.warnings) ? created.warnings : []).map(warningText).filter(Boolean);
  $('created-warnings-box').hidden = warnings.length === 0;
  $('created-warnings').replaceChildren(
    ...warnings.map((text) => {
      const li = document.createElement('li');
      li.textContent = text;
      return li;
    }),
  );

  const invitations = Array.isArray(created.invitations) ? created.invitations : [];
  $('created-invites').replaceChildren(...invitations.map(renderInvitation));
}

/** Server warnings may be plain text or {code, message}; known codes are shown localized. */
function warningText(warning) {
  if (typeof warning === 'string') return has(`warn_${warning}`) ? t(`warn_${warning}`) : warning;
  if (warning && typeof warning === 'object') {
    if (warning.code && has(`warn_${warning.code}`)) return t(`warn_${warning.code}`);
    return warning.message || warning.code || '';
  }
  return '';
}

function renderInvitation(invite) {
  const li = $('created-invite-template').content.firstElementChild.cloneNode(true);
  const revoked = Boolean(invite.revoked);
  li.dataset.invitationId = invite.id ?? '';
  li.dataset.role = invite.role ?? '';
  li.classList.toggle('is-revoked', revoked);
  li.querySelector('.created-invite-name').textContent = invite.display_name ?? '';
  li.querySelector('.created-invite-role').textContent = roleName(invite.role);
  const badge = li.querySelector('.created-invite-revoked');
  badge.hidden = !revoked;
  badge.textContent = t('revoked');
  const url = li.querySelector('.invite-url');
  // Plain text, not a link: a click here would bind the invitation to this PC.
  url.textContent = invite.url ?? '';
  url.dataset.role = invite.role ?? '';
  url.dataset.url = invite.url ?? '';
  url.dataset.invitationId = invite.id ?? '';
  const copy = li.querySelector('.invite-copy');
  copy.textContent = t('copy');
  copy.setAttribute('aria-label', t('copy_aria', { role: invite.display_name || roleName(invite.role) }));
  copy.dataset.invitationId = invite.id ?? '';
  copy.disabled = revoked;
  copy.addEventListener('click', () => copyText(invite.url ?? ''));
  const revoke = li.querySelector('.invite-revoke');
  revoke.textContent = t('revoke');
  revoke.setAttribute('aria-label', t('revoke_aria', { name: invite.display_name ?? '' }));
  revoke.dataset.invitationId = invite.id ?? '';
  revoke.disabled = revoked || invite.revoking || !invite.id;
  revoke.addEventListener('click', () => revokeInvitation(invite));
  return li;
}

async function revokeInvitation(invite) {
  if (invite.revoked || invite.revoking || !invite.id) return;
  invite.revoking = true;
  renderCreated();
  try {
    await api(`/api/invitations/${encodeURIComponent(invite.id)}/revoke`, { method: 'POST' });
    invite.revoked = true;
    toast(t('revoke_done'));
  } catch (err) {
    if (!isSignedOut(err)) toast(staffErrorText(err));
  } finally {
    invite.revoking = false;
    if (created?.invitations?.includes(invite)) renderCreated();
  }
  // The list shows the same invitation; keep it in step.
  if (invite.revoked) loadConferences();
}

/** Copies to the clipboard; falls back to selecting text for older browsers. */
async function copyText(text) {
  if (!text) return;
  try {
    await navigator.clipboard.writeText(text);
    toast(t('copied'));
    return;
  } catch {
    // Clipboard API missing or refused (no permission, not focused): try the old way.
  }
  const area = document.createElement('textarea');
  area.value = text;
  area.setAttribute('readonly', '');
  area.className = 'offscreen';
  document.body.append(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand('copy');
  } catch {
    ok = false;
  }
  area.remove();
  toast(t(ok ? 'copied' : 'copy_failed'));
}

// ---------------------------------------------------------------- upcoming conferences

/** Loads the list of the user's conferences (called after sign-in and after creating one). */
export async function loadConferences() {
  $('list-status').textContent = t('staff_loading');
  try {
    const data = await api('/api/conferences');
    list = Array.isArray(data) ? data : Array.isArray(data?.conferences) ? data.conferences : [];
    listError = null;
  } catch (err) {
    if (isSignedOut(err)) return;
    listError = err;
  }
  renderList();
}

const isObject = (x) => Boolean(x) && typeof x === 'object';

/** One invitation in the list: who, role, used/revoked, and a revoke button. */
function renderListInvite(invite) {
  const li = $('list-invite-template').content.firstElementChild.cloneNode(true);
  const revoked = invite.revoked_ms != null || Boolean(invite.revoked);
  const used = invite.first_used_ms != null;
  li.dataset.invitationId = invite.id ?? '';
  li.dataset.role = invite.role ?? '';
  li.classList.toggle('is-revoked', revoked);
  li.querySelector('.list-invite-name').textContent = invite.display_name ?? '';
  li.querySelector('.list-invite-role').textContent = roleName(invite.role);
  const status = li.querySelector('.list-invite-status');
  status.hidden = !revoked && !used;
  status.textContent = revoked ? t('revoked') : used ? t('list_invite_used') : '';
  status.classList.toggle('badge-bad', revoked);
  const button = li.querySelector('.list-invite-revoke');
  button.textContent = t('revoke');
  button.setAttribute('aria-label', t('list_invite_revoke_aria', { name: invite.display_name ?? '', role: roleName(invite.role) }));
  button.dataset.invitationId = invite.id ?? '';
  button.hidden = revoked || !invite.id;
  button.addEventListener('click', async () => {
    button.disabled = true;
    try {
      await api(`/api/invitations/${encodeURIComponent(invite.id)}/revoke`, { method: 'POST' });
      toast(t('revoke_done'));
      const shown = created?.invitations?.find((i) => i.id === invite.id);
      if (shown) {
        shown.revoked = true;
        renderCreated();
      }
    } catch (err) {
      if (!isSignedOut(err)) toast(staffErrorText(err));
    }
    loadConferences();
  });
  return li;
}

function scheduledOf(item) {
  const at = Date.parse(item?.scheduled_at ?? '');
  return Number.isNaN(at) ? Infinity : at;
}

function renderList() {
  const status = $('list-status');
  const ul = $('conference-list');
  if (listError) {
    status.textContent = `${t('list_error')} ${staffErrorText(listError)}`;
  } else if (!list) {
    status.textContent = '';
  } else {
    status.textContent = list.length ? '' : t('list_empty');
  }
  const items = [...(list ?? [])].filter((c) => c && typeof c === 'object').sort((a, b) => scheduledOf(a) - scheduledOf(b));
  ul.replaceChildren(
    ...items.map((conf) => {
      const li = $('conference-item-template').content.firstElementChild.cloneNode(true);
      applyI18n(li);
      li.dataset.conferenceId = conf.conference_id ?? conf.id ?? '';
      li.querySelector('.conference-item-title').textContent = conf.title ?? '';
      const meta = [];
      if (conf.scheduled_at) meta.push(formatDateTime(conf.scheduled_at));
      const invites = Array.isArray(conf.invitations) ? conf.invitations : [];
      if (invites.length) meta.push(t('list_invitations', { n: invites.length }));
      li.querySelector('.conference-item-meta').textContent = meta.join(' · ');
      // Links are shown only once, at creation; revoking must stay possible from here.
      li.querySelector('.conference-item-invites').replaceChildren(...invites.filter(isObject).map(renderListInvite));
      const host = li.querySelector('.conference-item-host');
      if (typeof conf.host_link === 'string' && conf.host_link) {
        host.href = conf.host_link;
        host.hidden = false;
      }
      return li;
    }),
  );
}
