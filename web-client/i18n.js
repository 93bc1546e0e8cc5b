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

    waiting_heading: 'ホストの入室許可をお待ちください',
    waiting_body: 'ホストが入室を許可すると、自動的に会議に参加します。このままお待ちください。',
    waiting_title_label: '会議名',
    waiting_name_label: 'お名前',
    waiting_role_label: '参加区分',
    waiting_cancel: '参加をやめる',

    lobby_heading: '待合室',
    lobby_count: '{n}人が入室を待っています',
    lobby_invitation: '招待ID: {id}',
    lobby_second_device: '別の端末から',
    lobby_second_device_hint: 'この招待リンクは以前、別の端末で使われています。ご本人か確かめてから許可してください。',
    lobby_arrived: '{name}さん（{role}）が待合室に入りました',
    admit: '入室を許可',
    deny: '拒否',
    admit_aria: '{name}さんの入室を許可する',
    deny_aria: '{name}さんの入室を拒否する',

    tile_actions_aria: '{name}さんへの操作',
    remove: '退出させる',
    remove_aria: '{name}さんを会議から退出させる',
    mute_participant: 'ミュート',
    mute_participant_aria: '{name}さんのマイクをミュートする',
    transfer_host: 'ホストを渡す',
    transfer_host_aria: '{name}さんにホスト権限を渡す',
    host_received: 'ホスト権限を受け取りました。',
    host_passed: 'ホスト権限を{name}さんに渡しました。',
    end_conference: '会議を終了',
    end_conference_aria: '会議を終了。全員の接続を終了します',
    confirm_end_title: '会議を終了しますか？',
    confirm_end_body: '全員の接続が切れ、この会議の参加用リンクは使えなくなります。',
    confirm_end_ok: '会議を終了する',
    confirm_cancel: 'キャンセル',
    muted_by_audio: 'ホストによりミュートされました',
    muted_by_video: 'ホストによりカメラが停止されました',
    muted_by_screen: 'ホストにより画面共有が停止されました',

    screen_share: '画面共有',
    screen_share_aria: '画面共有。自分の画面を参加者に見せます',
    screen_share_stop: '共有を停止',
    screen_share_stop_aria: '共有を停止。画面共有を終わります',
    screen_share_failed: '画面共有を開始できませんでした。',
    screen_sharing_notice: 'あなたの画面を共有しています',
    screen_of: '{name}さんの画面',
    screen_of_unknown: '共有画面',
    screen_stop_remote: '共有を止める',
    screen_stop_remote_aria: '{name}さんの画面共有を止める',

    denied_heading: '入室が許可されませんでした',
    denied_body: 'ホストが入室を許可しませんでした。必要なときは会議の主催者にご連絡ください。',
    removed_heading: '退出させられました',
    removed_body: 'ホストの操作により、会議から退出しました。',
    ended_heading: '会議は終了しました',
    ended_body: 'ご参加ありがとうございました。このページは閉じてかまいません。',
    replaced_heading: '別の画面で参加しました',
    replaced_body: '同じ参加用リンクで別のタブまたは端末から参加したため、この画面の接続を終了しました。',
    replaced_rejoin: 'この画面で参加し直す',

    err_conference_ended: 'この会議はすでに終了しています。',
    err_invitation_revoked: 'この参加用リンクは取り消されました。主催者に確認してください。',
    err_not_yet_valid: 'この参加用リンクはまだ使えません。会議の予定時刻が近づいてから開いてください。',
    err_not_yet_valid_window: '参加できる時間: {from} 〜 {to}',
    err_not_yet_valid_from: '{from} から参加できます。',
    err_too_many_conferences: '現在、同時に開催できる会議の数が上限に達しています。しばらくしてからお試しください。',
    err_idle_timeout: '通信が長く途絶えたため、接続が切れました。',
    err_unknown_participant: '対象の参加者が見つかりません（すでに退出した可能性があります）。',

    staff_loading: '読み込み中…',
    staff_login_heading: 'スタッフ ログイン',
    staff_username: 'ユーザー名',
    staff_password: 'パスワード',
    staff_login_submit: 'ログイン',
    staff_login_missing: 'ユーザー名とパスワードを入力してください。',
    staff_busy: '処理しています…',
    staff_totp_heading: '確認コードの入力',
    staff_totp_body: '認証アプリに表示されている6桁の確認コードを入力してください。',
    staff_totp_label: '確認コード（6桁）',
    staff_totp_submit: '確認',
    staff_totp_format: '6桁の数字を入力してください。',
    staff_back_to_login: 'ログイン画面に戻る',
    staff_enroll_heading: '2段階認証の設定',
    staff_enroll_body:
      '初回のみ設定が必要です。スマートフォンの認証アプリ（Google Authenticator、Microsoft Authenticator など）で' +
      '下のQRコードを読み取り、表示された6桁の確認コードを入力してください。',
    staff_enroll_qr_alt: '認証アプリに登録するためのQRコード',
    staff_enroll_manual: 'QRコードを読み取れないとき',
    staff_enroll_manual_body: '認証アプリに次の内容を手入力してください。他の人に見せないでください。',
    staff_enroll_submit: '設定を完了してログイン',
    staff_enroll_secret: 'シークレットキー:',

    staff_err_invalid_credentials: 'ユーザー名またはパスワードが正しくありません。',
    staff_err_account_locked: 'ログインの失敗が続いたため、このアカウントは一時的にロックされています。',
    staff_err_locked_retry: '{min}分ほど待ってからお試しください。お急ぎのときは管理者に連絡してください。',
    staff_err_not_authenticated: 'ログインしてください。',
    staff_err_account_disabled: 'このアカウントは無効になっています。管理者に連絡してください。',
    staff_err_bad_origin: 'このページからの操作は受け付けられませんでした。ページを開き直してください。',
    staff_err_ip_blocked: 'この接続元からのログインは一時的に制限されています。しばらく待つか、管理者に連絡してください。',
    staff_err_rate_limited: '操作の回数が多すぎます。少し待ってからお試しください。',
    staff_err_rate_limited_retry: '{sec}秒ほど待ってからお試しください。',
    staff_err_totp_required: '確認コードの入力が必要です。',
    staff_err_invalid_totp: '確認コードが正しくありません。認証アプリに表示されている最新のコードを入力してください。',
    staff_err_session_expired: 'ログインの有効期限が切れました。もう一度ログインしてください。',
    staff_err_forbidden: 'この操作を行う権限がありません。',
    staff_err_too_many_conferences: '作成できる会議の数が上限に達しています。',
    staff_err_invalid_field: '入力内容に誤りがあります。',
    staff_err_not_found: '対象が見つかりません。',
    staff_err_network: 'サーバーに接続できませんでした。ネットワークを確認してください。',
    staff_err_unknown: 'エラーが発生しました。',

    staff_logout: 'ログアウト',
    staff_user: '{name}',
    staff_user_profession: '{name}（{profession}）',
    dashboard_create_heading: '会議を作成',
    conf_title_label: '会議名',
    conf_title_hint: '参加者全員と招待リンクの画面に表示されます。',
    conf_title_warning:
      '会議名に患者さんのお名前が含まれているようです。会議名は参加者全員に表示されるため、' +
      '患者さんを特定できる情報は入れないでください（例:「退院前カンファレンス」）。',
    conf_title_required: '会議名を入力してください。',
    conf_scheduled_label: '開始日時',
    conf_scheduled_required: '開始日時を入力してください。',
    conf_invites_label: '招待する参加者',
    conf_invites_empty: '「参加者を追加」を押して、招待する人を追加してください。',
    invite_add: '参加者を追加',
    invite_role_label: '参加区分',
    invite_name_label: '表示名',
    invite_name_hint: '空欄のときは参加区分の名前になります。',
    invite_row_remove: '削除',
    invite_row_remove_aria: 'この参加者を招待から外す',
    invite_default_staff: '病院スタッフ',
    invite_default_care_manager: 'ケアマネジャー',
    invite_default_surveyor: '認定調査員',
    invite_default_family: 'ご家族',
    conf_create: '会議を作成',
    created_heading: '会議を作成しました',
    created_host_label: 'ホスト用リンク（病棟看護師）',
    created_host_hint: 'ホスト用リンクは病棟看護師（ホスト）専用です。ベッドサイドのタブレットで開いてください。',
    open_as_host: 'ホストとして開く',
    copy: 'コピー',
    copy_aria: '{role}用のリンクをコピー',
    copied: 'コピーしました',
    copy_failed: 'コピーできませんでした。リンクを選択してコピーしてください。',
    created_invites_label: '招待リンク',
    created_invites_hint: '各リンクは本人だけに、安全な方法で送ってください。',
    revoke: '取り消す',
    revoke_aria: '{name}さんの招待リンクを取り消す',
    revoked: '取り消し済み',
    revoke_done: '招待リンクを取り消しました。',
    created_warnings_label: '注意',
    created_window: '招待リンクを使える期間: {from} 〜 {to}',
    warn_title_may_contain_name: '会議名に患者さんのお名前が含まれている可能性があります。必要なら会議を作り直してください。',
    list_invite_used: '使用済み',
    list_invite_revoke_aria: '{name}さん（{role}）の招待を取り消す',
    created_another: '別の会議を作成',
    list_heading: '予定されている会議',
    list_empty: '予定されている会議はありません。',
    list_refresh: '一覧を更新',
    list_invitations: '招待 {n}件',
    list_error: '会議の一覧を読み込めませんでした。',
    lock_heading: '画面をロックしました',
    lock_body: '一定時間操作がなかったため、情報を守るために画面をロックしました。',
    lock_signin: 'もう一度ログイン',

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

    waiting_heading: 'Please wait for the host to let you in',
    waiting_body: 'You will join the conference automatically as soon as the host admits you.',
    waiting_title_label: 'Conference',
    waiting_name_label: 'Your name',
    waiting_role_label: 'Your role',
    waiting_cancel: 'Stop waiting',

    lobby_heading: 'Waiting room',
    lobby_count: '{n} waiting to be admitted',
    lobby_invitation: 'Invitation: {id}',
    lobby_second_device: 'Another device',
    lobby_second_device_hint: 'This invitation link was used before on another device. Check who this is before admitting.',
    lobby_arrived: '{name} ({role}) is in the waiting room',
    admit: 'Admit',
    deny: 'Deny',
    admit_aria: 'Admit {name}',
    deny_aria: 'Deny {name}',

    tile_actions_aria: 'Actions for {name}',
    remove: 'Remove',
    remove_aria: 'Remove {name} from the conference',
    mute_participant: 'Mute',
    mute_participant_aria: "Mute {name}'s microphone",
    transfer_host: 'Make host',
    transfer_host_aria: 'Pass host rights to {name}',
    host_received: 'You are now the host.',
    host_passed: '{name} is now the host.',
    end_conference: 'End',
    end_conference_aria: 'End the conference for everyone',
    confirm_end_title: 'End the conference?',
    confirm_end_body: 'Everyone will be disconnected and the join links of this conference will stop working.',
    confirm_end_ok: 'End the conference',
    confirm_cancel: 'Cancel',
    muted_by_audio: 'The host muted your microphone',
    muted_by_video: 'The host turned off your camera',
    muted_by_screen: 'The host stopped your screen share',

    screen_share: 'Share screen',
    screen_share_aria: 'Share screen. Show your screen to the participants',
    screen_share_stop: 'Stop sharing',
    screen_share_stop_aria: 'Stop sharing your screen',
    screen_share_failed: 'Screen sharing could not be started.',
    screen_sharing_notice: 'You are sharing your screen',
    screen_of: "{name}'s screen",
    screen_of_unknown: 'Shared screen',
    screen_stop_remote: 'Stop share',
    screen_stop_remote_aria: "Stop {name}'s screen share",

    denied_heading: 'You were not admitted',
    denied_body: 'The host did not admit you to the conference. Please contact the organiser if needed.',
    removed_heading: 'You were removed',
    removed_body: 'The host removed you from the conference.',
    ended_heading: 'The conference has ended',
    ended_body: 'Thank you for taking part. You may close this page.',
    replaced_heading: 'Joined from another screen',
    replaced_body: 'You joined with the same link from another tab or device, so this screen was disconnected.',
    replaced_rejoin: 'Join again on this screen',

    err_conference_ended: 'This conference has already ended.',
    err_invitation_revoked: 'This join link has been revoked. Please check with the organiser.',
    err_not_yet_valid: 'This join link cannot be used yet. Please open it closer to the scheduled time.',
    err_not_yet_valid_window: 'You can join from {from} to {to}',
    err_not_yet_valid_from: 'You can join from {from}.',
    err_too_many_conferences: 'The server is hosting as many conferences as it can. Please try again later.',
    err_idle_timeout: 'The connection was closed after a long silence.',
    err_unknown_participant: 'That participant was not found (they may have left).',

    staff_loading: 'Loading…',
    staff_login_heading: 'Staff sign-in',
    staff_username: 'User name',
    staff_password: 'Password',
    staff_login_submit: 'Sign in',
    staff_login_missing: 'Please enter your user name and password.',
    staff_busy: 'Working…',
    staff_totp_heading: 'Verification code',
    staff_totp_body: 'Enter the 6-digit code shown in your authenticator app.',
    staff_totp_label: 'Verification code (6 digits)',
    staff_totp_submit: 'Verify',
    staff_totp_format: 'Please enter 6 digits.',
    staff_back_to_login: 'Back to sign-in',
    staff_enroll_heading: 'Set up two-step verification',
    staff_enroll_body:
      'This is needed once. Scan the QR code below with an authenticator app on your phone ' +
      '(Google Authenticator, Microsoft Authenticator, …) and enter the 6-digit code it shows.',
    staff_enroll_qr_alt: 'QR code for your authenticator app',
    staff_enroll_manual: 'Cannot scan the QR code?',
    staff_enroll_manual_body: 'Enter the following into your authenticator app. Do not show it to anyone.',
    staff_enroll_submit: 'Finish setup and sign in',
    staff_enroll_secret: 'Secret key:',

    staff_err_invalid_credentials: 'The user name or password is not correct.',
    staff_err_account_locked: 'This account is temporarily locked after repeated failed sign-ins.',
    staff_err_locked_retry: 'Please try again in about {min} minutes, or contact your administrator.',
    staff_err_not_authenticated: 'Please sign in.',
    staff_err_account_disabled: 'This account is disabled. Please contact your administrator.',
    staff_err_bad_origin: 'The request was refused. Please reopen the page.',
    staff_err_ip_blocked: 'Sign-ins from this network are temporarily blocked. Please wait or contact your administrator.',
    staff_err_rate_limited: 'Too many attempts. Please wait a moment and try again.',
    staff_err_rate_limited_retry: 'Please wait about {sec} seconds.',
    staff_err_totp_required: 'A verification code is required.',
    staff_err_invalid_totp: 'The verification code is not correct. Enter the newest code from your authenticator app.',
    staff_err_session_expired: 'Your session has expired. Please sign in again.',
    staff_err_forbidden: 'You are not allowed to do this.',
    staff_err_too_many_conferences: 'The limit on conferences has been reached.',
    staff_err_invalid_field: 'Some input is not valid.',
    staff_err_not_found: 'Not found.',
    staff_err_network: 'Could not reach the server. Please check the network.',
    staff_err_unknown: 'An error occurred.',

    staff_logout: 'Sign out',
    staff_user: '{name}',
    staff_user_profession: '{name} ({profession})',
    dashboard_create_heading: 'New conference',
    conf_title_label: 'Title',
    conf_title_hint: 'Shown to every participant and on the join page.',
    conf_title_warning:
      "The title seems to contain a patient's name. Every participant sees the title, so leave out " +
      'anything that identifies the patient (e.g. "Discharge conference").',
    conf_title_required: 'Please enter a title.',
    conf_scheduled_label: 'Starts at',
    conf_scheduled_required: 'Please enter the start date and time.',
    conf_invites_label: 'Invite',
    conf_invites_empty: 'Press "Add participant" for each person to invite.',
    invite_add: 'Add participant',
    invite_role_label: 'Role',
    invite_name_label: 'Display name',
    invite_name_hint: 'Left empty, the role name is used.',
    invite_row_remove: 'Remove',
    invite_row_remove_aria: 'Remove this person from the invitations',
    invite_default_staff: 'Hospital staff',
    invite_default_care_manager: 'Care manager',
    invite_default_surveyor: 'Care-needs surveyor',
    invite_default_family: 'Family',
    conf_create: 'Create conference',
    created_heading: 'Conference created',
    created_host_label: 'Host link (ward nurse)',
    created_host_hint: 'The host link is for the ward nurse (host) only. Open it on the bedside tablet.',
    open_as_host: 'Open as host',
    copy: 'Copy',
    copy_aria: 'Copy the link for {role}',
    copied: 'Copied',
    copy_failed: 'Could not copy. Please select the link and copy it.',
    created_invites_label: 'Invitation links',
    created_invites_hint: 'Send each link only to its person, by a secure channel.',
    revoke: 'Revoke',
    revoke_aria: "Revoke {name}'s invitation link",
    revoked: 'Revoked',
    revoke_done: 'The invitation link was revoked.',
    created_warnings_label: 'Please note',
    created_window: 'The invitation links work from {from} to {to}',
    warn_title_may_contain_name: "The title may contain a patient's name. Create the conference again if needed.",
    list_invite_used: 'Used',
    list_invite_revoke_aria: "Revoke {name}'s ({role}) invitation",
    created_another: 'Create another conference',
    list_heading: 'Upcoming conferences',
    list_empty: 'No upcoming conferences.',
    list_refresh: 'Refresh',
    list_invitations: '{n} invitations',
    list_error: 'The conference list could not be loaded.',
    lock_heading: 'Screen locked',
    lock_body: 'The screen was locked to protect information after a period without activity.',
    lock_signin: 'Sign in again',

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
