// Dates for people and for the API: the API speaks RFC 3339 with an explicit offset, people
// read local wall-clock time in their language.

import { getLang } from './i18n.js';

const pad = (n) => String(n).padStart(2, '0');

/**
 * RFC 3339 for a local Date, with the browser's current UTC offset (e.g.
 * "2025-05-10T14:00:00+09:00"), so the server stores the moment the nurse meant.
 */
export function toRfc3339Local(date) {
  const offsetMin = -date.getTimezoneOffset();
  const sign = offsetMin >= 0 ? '+' : '-';
  const abs = Math.abs(offsetMin);
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}` +
    `T${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}` +
    `${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`
  );
}

/**
 * Parses a datetime-local value ("YYYY-MM-DDTHH:MM[:SS]") as local time. Returns null for
 * anything else; `new Date(string)` is avoided because older Safari reads it as UTC.
 */
export function parseDateTimeLocal(value) {
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?/.exec(String(value ?? ''));
  if (!m) return null;
  const [, y, mo, d, h, mi, s] = m.map((x) => (x === undefined ? 0 : Number(x)));
  const date = new Date(y, mo - 1, d, h, mi, s);
  return Number.isNaN(date.getTime()) || date.getMonth() !== mo - 1 ? null : date;
}

/** The value a datetime-local input needs for `date` (local time, minutes precision). */
export function toDateTimeLocalValue(date) {
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

/** A Date, unix seconds or an RFC 3339 string as local date and time in the UI language. */
export function formatDateTime(value) {
  const date = value instanceof Date ? value : typeof value === 'number' ? new Date(value * 1000) : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value ?? '');
  return new Intl.DateTimeFormat(getLang() === 'ja' ? 'ja-JP' : 'en-GB', {
    year: 'numeric',
    month: 'short',
    day: 'numeric',
    weekday: 'short',
    hour: '2-digit',
    minute: '2-digit',
  }).format(date);
}
