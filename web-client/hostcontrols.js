// Controls over other participants: mute, pass host rights, remove (on each remote tile),
// stop a screen share (on screen tiles) and end the conference (with a confirmation). Only
// what our current role allows is shown; the server checks every request again.

import { t } from './i18n.js';
import { allowed, Action, canTransferHost } from './permissions.js';

let send = () => {};
let getRole = () => null;
let getSelfId = () => null;

const $ = (id) => document.getElementById(id);

/**
 * @param {{send: (msg: object) => void, getRole: () => (string|null), getSelfId: () => (string|null)}} deps
 */
export function initHostControls(deps) {
  ({ send, getRole, getSelfId } = deps);
  $('confirm-ok').addEventListener('click', () => closeDialog('ok'));
  $('confirm-cancel').addEventListener('click', () => closeDialog('cancel'));
}

function closeDialog(value) {
  const dialog = $('confirm-dialog');
  if (typeof dialog.close === 'function') {
    dialog.close(value);
    return;
  }
  // Browsers without <dialog> support: emulate close() closely enough for confirmDialog.
  dialog.returnValue = value;
  dialog.removeAttribute('open');
  dialog.dispatchEvent(new Event('close'));
}

/** Which tile buttons apply to `entry` for our role, in display order. */
function tileActions(entry) {
  const role = getRole();
  const actions = [];
  if (allowed(role, Action.MuteOthers)) actions.push('mute');
  if (canTransferHost(role, entry.role)) actions.push('transfer');
  if (allowed(role, Action.Remove)) actions.push('remove');
  return actions;
}

const TILE_BUTTONS = {
  mute: { testid: 'mute-participant-button', icon: 'i-mic-off', label: 'mute_participant', aria: 'mute_participant_aria' },
  transfer: { testid: 'transfer-host-button', icon: 'i-crown', label: 'transfer_host', aria: 'transfer_host_aria' },
  remove: { testid: 'remove-button', icon: 'i-person-off', label: 'remove', aria: 'remove_aria' },
};

function iconSvg(id) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('class', 'icon');
  svg.setAttribute('aria-hidden', 'true');
  const use = document.createElementNS(ns, 'use');
  use.setAttribute('href', `#${id}`);
  svg.append(use);
  return svg;
}

function makeButton(spec, participantId, onClick) {
  const button = document.createElement('button');
  button.type = 'button';
  button.className = 'btn tile-action';
  button.dataset.testid = spec.testid;
  button.dataset.participantId = participantId;
  const text = document.createElement('span');
  text.className = 'btn-text';
  button.append(iconSvg(spec.icon), text);
  button.addEventListener('click', onClick);
  return button;
}

function runTileAction(action, participantId) {
  switch (action) {
    case 'mute':
      send({ type: 'mute_participant', participant_id: participantId, kind: 'audio' });
      return;
    case 'transfer':
      send({ type: 'transfer_host', participant_id: participantId });
      return;
    case 'remove':
      send({ type: 'remove', participant_id: participantId });
      return;
    default:
  }
}

/**
 * Tile decorator (see ui.setTileDecorator): keeps the action buttons of a remote tile in step
 * with our role and the participant's state. Buttons that do not apply are not in the DOM.
 */
export function decorateTile(el, entry, local) {
  let box = el.querySelector('.tile-actions');
  const actions = !local && entry?.id ? tileActions(entry) : [];
  if (actions.length === 0) {
    box?.remove();
    return;
  }
  if (!box || box.dataset.actions !== actions.join(',') || box.dataset.participantId !== entry.id) {
    box?.remove();
    box = document.createElement('div');
    box.className = 'tile-actions';
    box.setAttribute('role', 'group');
    box.dataset.actions = actions.join(',');
    box.dataset.participantId = entry.id;
    for (const action of actions) {
      const button = makeButton(TILE_BUTTONS[action], entry.id, () => runTileAction(action, entry.id));
      button.dataset.action = action;
      box.append(button);
    }
    el.append(box);
  }
  const name = entry.display_name || '';
  box.setAttribute('aria-label', t('tile_actions_aria', { name }));
  for (const button of box.querySelectorAll('button')) {
    const spec = TILE_BUTTONS[button.dataset.action];
    button.querySelector('.btn-text').textContent = t(spec.label);
    button.setAttribute('aria-label', t(spec.aria, { name }));
    // Muting someone already muted would do nothing; say so rather than hide the button.
    if (button.dataset.action === 'mute') button.disabled = Boolean(entry.audio_muted);
  }
}

/** Screen-tile decorator: those who may mute others may also stop someone's screen share. */
export function decorateScreen(el, participantId, name) {
  let button = el.querySelector('.screen-stop');
  const show = participantId !== getSelfId() && allowed(getRole(), Action.MuteOthers);
  if (!show) {
    button?.remove();
    return;
  }
  if (!button) {
    button = makeButton({ testid: 'stop-screen-button', icon: 'i-screen-off' }, participantId, () =>
      send({ type: 'mute_participant', participant_id: participantId, kind: 'screen' }),
    );
    button.classList.add('screen-stop');
    el.append(button);
  }
  button.querySelector('.btn-text').textContent = t('screen_stop_remote');
  button.setAttribute('aria-label', t('screen_stop_remote_aria', { name: name || t('screen_of_unknown') }));
}

/**
 * Asks a yes/no question in the page's own dialog (never window.confirm, which blocks the
 * page and which automated browsers dismiss). Resolves true only for the OK button.
 */
export function confirmDialog({ titleKey, bodyKey, okKey }) {
  const dialog = $('confirm-dialog');
  $('confirm-title').textContent = t(titleKey);
  $('confirm-body').textContent = t(bodyKey);
  $('confirm-ok').textContent = t(okKey);
  return new Promise((resolve) => {
    dialog.returnValue = '';
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    if (typeof dialog.showModal === 'function') dialog.showModal();
    else dialog.setAttribute('open', '');
    $('confirm-cancel').focus();
  });
}

/** The end-conference button: confirm, then ask the server to end it for everyone. */
export async function requestEndConference() {
  if (!allowed(getRole(), Action.EndConference)) return;
  const ok = await confirmDialog({ titleKey: 'confirm_end_title', bodyKey: 'confirm_end_body', okKey: 'confirm_end_ok' });
  if (ok && allowed(getRole(), Action.EndConference)) send({ type: 'end_conference' });
}
