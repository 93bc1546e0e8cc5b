// All user-visible strings. Japanese is the default because the people at the bedside and
// in care offices read Japanese; English is a switch, remembered per browser.

const STORAGE_KEY = 'wardlink.lang';

const STRINGS = {
  ja: {
    app_name: 'wardlink',
    lang_toggle: 'English',
    lang_toggle_aria: 'Switch to English / 英語に切り替える',
    noscript: 'このページを使うには JavaScript を有効にしてください。',

    join_heading: '会議に参加',
    join_title_label: '会議名',
    join_role_label: '参加区分',
    join_name_label: '表示名',
    join_name_hint: '他の参加者に表示される名前です。',
    join_name_empty: '表示名を入力してください。',
    join_name_too_long: '表示名は64文字以内で入力してください。',
    join_button: '参加する',
    join_connecting: '接続しています…',
    join_token_unreadable: '参加用リンクの内容を読み取れませんでした。そのまま参加を試せます。',
    join_token_expired: 'この参加用リンクは有効期限が切れている可能性があります。',
    preview_aria: '自分のカメラ映像のプレビュー',
    preview_no_video: 'カメラ映像なし',

    device_mic: 'マイク',
    device_camera: 'カメラ',
    device_checking: '確認中…',
    device_ok: '使用できます',
    device_denied: '使用が許可されていません',
    device_notfound: '見つかりません',
    device_busy: '他のアプリで使用中です',
    device_insecure: '使用できません（安全な接続ではありません）',
    device_error: '使用できません',
    device_help_denied:
      'ブラウザのアドレスバーにあるカメラ・マイクのアイコンから使用を許可して、「もう一度試す」を押してください。' +
      '許可しなくても参加できますが、あなたの映像や音声は他の参加者に届きません。',
    device_help_notfound: '見つからない機器は使わずに参加します。機器をつないだら「もう一度試す」を押してください。',
    device_help_busy: '他のアプリ（ビデオ通話など）を閉じてから「もう一度試す」を押してください。',
    device_help_none: 'カメラもマイクも使えないため、見る・聞くだけの参加になります。',
    device_help_insecure: '安全な接続（https）で開かれていないため、カメラとマイクを使えません。',
    device_retry: 'もう一度試す',

    no_token: '参加用リンクが必要です。メールやメッセージで届いた参加用リンクを開いてください。',

    participants_count: '参加者 {n}人',
    you: '（あなた）',
    mic: 'マイク',
    mic_on: 'マイク オン',
    mic_off: 'マイク オフ',
    mic_none: 'マイク なし',
    mic_on_aria: 'マイク オン。押すとミュートします',
    mic_off_aria: 'マイク オフ。押すとミュートを解除します',
    camera: 'カメラ',
    camera_on: 'カメラ オン',
    camera_off: 'カメラ オフ',
    camera_none: 'カメラ なし',
    camera_on_aria: 'カメラ オン。押すと映像を止めます',
    camera_off_aria: 'カメラ オフ。押すと映像を再開します',
    camera_switch: '前/後 切替',
    camera_switch_aria: '前/後 切替。前面カメラと背面カメラを切り替えます',
    camera_switch_none: 'カメラを切り替えられませんでした。切り替え先のカメラが見つかりません。',
    camera_switch_failed: 'カメラを切り替えられませんでした。',
    leave: '退出',
    controls_aria: '会議の操作',
    leave_aria: '退出。会議から退出します',
    muted_mic_aria: 'マイク オフ',
    muted_camera_aria: 'カメラ オフ',
    no_device_publish: 'カメラ・マイクが使えないため、見る・聞くだけで参加しています。',
    audio_blocked: '音声を再生するには、ここをタップしてください',

    state_connecting: '接続中',
    state_connected: '接続済み',
    state_reconnecting: '再接続中',
    state_disconnected: '切断',
    link_signaling: 'サーバー',
    link_publish: '送信',
    link_subscribe: '受信',
    link_none: '—',
    quality: '通信品質',
    quality_good: '良好',
    quality_fair: 'やや不安定',
    quality_poor: '不安定',
    quality_unknown: '計測中',
    quality_detail: '遅延 {rtt} / 損失 {loss}',

    left_heading: '退出しました',
    left_body: 'もう一度参加するときは、下のボタンを押してください。',
    rejoin_button: 'もう一度参加する',

    error_heading: '参加できませんでした',
    error_back: '参加画面に戻る',
    error_detail: 'サーバーからのメッセージ: {msg}',
    error_unknown: 'エラーが発生しました。',

    err_malformed_json: '通信内容を読み取れませんでした。',
    err_unknown_type: 'サーバーが理解できない操作が送られました。ページを再読み込みしてください。',
    err_message_too_large: '送信データが大きすぎます。',
    err_unsupported_protocol: 'このページが古い可能性があります。ページを再読み込みしてください。',
    err_invalid_token: '参加用リンクが無効です。届いたリンクをもう一度確認してください。',
    err_token_expired: '参加用リンクの有効期限が切れています。主催者に新しいリンクを依頼してください。',
    err_room_not_found: '会議が見つからないか、すでに終了しています。',
    err_room_full: '会議の参加人数が上限に達しています。',
    err_invalid_sdp: '映像・音声の接続設定に失敗しました。',
    err_out_of_order: '操作の順番が正しくありません。',
    err_invalid_field: '入力内容に誤りがあります（表示名など）。',
    err_forbidden: 'この操作は許可されていません。',
    err_rate_limited: '操作が多すぎます。少し待ってからお試しください。',
    err_internal: 'サーバーで問題が発生しました。',

    role_host: '病棟看護師(ホスト)',
    role_staff: 'スタッフ',
    role_care_manager: 'ケアマネジャー',
    role_surveyor: '認定調査員',
    role_family: 'ご家族・ご本人',
  },
  en: {
    app_name: 'wardlink',
    lang_toggle: '日本語',
    lang_toggle_aria: 'Switch to Japanese / 日本語に切り替える',
    noscript: 'Please enable JavaScript to use this page.',

    join_heading: 'Join the conference',
    join_title_label: 'Conference',
    join_role_label: 'Your role',
    join_name_label: 'Display name',
    join_name_hint: 'Other participants will see this name.',
    join_name_empty: 'Please enter a display name.',
    join_name_too_long: 'The display name must be 64 characters or fewer.',
    join_button: 'Join',
    join_connecting: 'Connecting…',
    join_token_unreadable: 'The join link could not be read. You can still try to join.',
    join_token_expired: 'This join link may have expired.',
    preview_aria: 'Preview of your camera',
    preview_no_video: 'No camera picture',

    device_mic: 'Microphone',
    device_camera: 'Camera',
    device_checking: 'Checking…',
    device_ok: 'Ready',
    device_denied: 'Permission denied',
    device_notfound: 'Not found',
    device_busy: 'In use by another app',
    device_insecure: 'Unavailable (connection is not secure)',
    device_error: 'Unavailable',
    device_help_denied:
      'Allow the camera and microphone from the icon in the browser address bar, then press "Try again". ' +
      'You can join without them, but others will not see or hear you.',
    device_help_notfound: 'You will join without the missing device. Connect it and press "Try again" to use it.',
    device_help_busy: 'Close other apps that use the device (e.g. video calls), then press "Try again".',
    device_help_none: 'No camera or microphone can be used: you will only watch and listen.',
    device_help_insecure: 'The page is not opened over a secure (https) connection, so camera and microphone are unavailable.',
    device_retry: 'Try again',

    no_token: 'A join link is required. Please open the join link you received by e-mail or message.',

    participants_count: '{n} participants',
    you: '(you)',
    mic: 'Mic',
    mic_on: 'Mic on',
    mic_off: 'Mic off',
    mic_none: 'No mic',
    mic_on_aria: 'Mic on. Press to mute',
    mic_off_aria: 'Mic off. Press to unmute',
    camera: 'Camera',
    camera_on: 'Camera on',
    camera_off: 'Camera off',
    camera_none: 'No camera',
    camera_on_aria: 'Camera on. Press to stop your video',
    camera_off_aria: 'Camera off. Press to start your video',
    camera_switch: 'Flip camera',
    camera_switch_aria: 'Flip camera. Switch between the front and rear camera',
    camera_switch_none: 'Could not switch the camera: no other camera was found.',
    camera_switch_failed: 'Could not switch the camera.',
    leave: 'Leave',
    controls_aria: 'Conference controls',
    leave_aria: 'Leave. Leave the conference',
    muted_mic_aria: 'Microphone off',
    muted_camera_aria: 'Camera off',
    no_device_publish: 'No camera or microphone: you are watching and listening only.',
    audio_blocked: 'Tap here to play the audio',

    state_connecting: 'Connecting',
    state_connected: 'Connected',
    state_reconnecting: 'Reconnecting',
    state_disconnected: 'Disconnected',
    link_signaling: 'Server',
    link_publish: 'Send',
    link_subscribe: 'Receive',
    link_none: '—',
    quality: 'Quality',
    quality_good: 'Good',
    quality_fair: 'Unstable',
    quality_poor: 'Poor',
    quality_unknown: 'Measuring',
    quality_detail: 'Delay {rtt} / Loss {loss}',

    left_heading: 'You have left the conference',
    left_body: 'Press the button below to join again.',
    rejoin_button: 'Rejoin',

    error_heading: 'Could not join',
    error_back: 'Back to the join page',
    error_detail: 'Server message: {msg}',
    error_unknown: 'An error occurred.',

    err_malformed_json: 'The message could not be read.',
    err_unknown_type: 'The server did not understand a request. Please reload the page.',
    err_message_too_large: 'The message was too large.',
    err_unsupported_protocol: 'This page may be out of date. Please reload it.',
    err_invalid_token: 'The join link is not valid. Please check the link you received.',
    err_token_expired: 'The join link has expired. Please ask the organiser for a new link.',
    err_room_not_found: 'The conference was not found or has already ended.',
    err_room_full: 'The conference is full.',
    err_invalid_sdp: 'Setting up audio and video failed.',
    err_out_of_order: 'A request arrived in the wrong order.',
    err_invalid_field: 'Some input is not valid (for example the display name).',
    err_forbidden: 'This action is not allowed.',
    err_rate_limited: 'Too many requests. Please wait a moment and try again.',
    err_internal: 'The server had a problem.',

    role_host: 'Ward nurse (host)',
    role_staff: 'Staff',
    role_care_manager: 'Care manager',
    role_surveyor: 'Care-needs surveyor',
    role_family: 'Family / patient',
  },
};

/** Languages offered by the toggle, in toggle order. */
export const LANGS = ['ja', 'en'];

function loadLang() {
  try {
    const saved = localStorage.getItem(STORAGE_KEY);
    if (saved && STRINGS[saved]) return saved;
  } catch {
    // Storage can be blocked (private mode, strict settings); the default is fine then.
  }
  return 'ja';
}

let lang = loadLang();
const listeners = new Set();

/** The current language code ("ja" or "en"). */
export function getLang() {
  return lang;
}

/** Looks up `key` and fills `{name}` placeholders; unknown keys fall back to Japanese, then the key. */
export function t(key, params = {}) {
  const template = STRINGS[lang][key] ?? STRINGS.ja[key] ?? key;
  return template.replace(/\{(\w+)\}/g, (m, name) => (name in params ? String(params[name]) : m));
}

/** True when `key` exists, so callers can fall back for codes added to the server later. */
export function has(key) {
  return key in STRINGS.ja;
}

/** Localized role name; unknown roles are shown as sent rather than hidden. */
export function roleName(role) {
  return has(`role_${role}`) ? t(`role_${role}`) : String(role ?? '');
}

/** Localized text for a server error code; falls back to the server's own (English) message. */
export function errorText(code, serverMessage) {
  if (code && has(`err_${code}`)) return t(`err_${code}`);
  return serverMessage || t('error_unknown');
}

/** Switches language, remembers it, re-renders static text and tells dynamic parts to redraw. */
export function setLang(next) {
  if (!STRINGS[next]) return;
  lang = next;
  try {
    localStorage.setItem(STORAGE_KEY, next);
  } catch {
    // Not remembered, but still switched for this page.
  }
  applyI18n();
  for (const fn of listeners) fn(lang);
}

/** Moves to the next language in LANGS. */
export function toggleLang() {
  setLang(LANGS[(LANGS.indexOf(lang) + 1) % LANGS.length]);
}

/** Registers a redraw callback for text that is built in JS rather than marked in HTML. */
export function onLangChange(fn) {
  listeners.add(fn);
}

/**
 * Fills static markup: `data-i18n` (text), `data-i18n-aria` (aria-label),
 * `data-i18n-title` (title). Keeping keys in the HTML lets index.html stay free of script.
 */
export function applyI18n(root = document) {
  document.documentElement.lang = lang;
  document.title = t('app_name');
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll('[data-i18n-aria]')) el.setAttribute('aria-label', t(el.dataset.i18nAria));
  for (const el of root.querySelectorAll('[data-i18n-title]')) el.title = t(el.dataset.i18nTitle);
}
