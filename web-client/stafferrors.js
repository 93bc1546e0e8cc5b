// Staff API error codes as sentences. Codes shared with the conference (forbidden,
// rate_limited, too_many_conferences...) have staff wording of their own where it helps.

import { t, has } from './i18n.js';

/** Localized text for an ApiError (or anything with a `code`), with lockout timing if known. */
export function staffErrorText(error) {
  const code = error?.code;
  let text;
  if (code && has(`staff_err_${code}`)) text = t(`staff_err_${code}`);
  else if (code && has(`err_${code}`)) text = t(`err_${code}`);
  else text = error?.serverMessage || t('staff_err_unknown');
  const wait = error?.retryAfterSecs;
  const known = Number.isFinite(wait) && wait > 0;
  if (code === 'account_locked' || code === 'ip_blocked') {
    // How long the lockout lasts; the server's own (English) sentence only when it did not say.
    if (known) text += `\n${t('staff_err_locked_retry', { min: Math.max(1, Math.ceil(wait / 60)) })}`;
    else if (error.serverMessage) text += `\n${error.serverMessage}`;
  } else if (code === 'rate_limited' && known) {
    text += `\n${t('staff_err_rate_limited_retry', { sec: wait })}`;
  }
  return text;
}
