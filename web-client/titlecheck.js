// A heuristic for conference titles that seem to name a patient. The title is shown to every
// participant and on every join page, so it should not identify the patient; this catches
// the usual way a name is written (with an honorific) and says so while the nurse types.

// An honorific right after a letter: 山田様, 山田さま, 山田さん, 山田氏, 山田殿, 太郎君, 花子ちゃん.
// Common words that merely contain the characters are excluded (様子 "condition", 様式
// "form", 様々, さまざま "various"). A false alarm costs a glance; a missed name is a leak.
const HONORIFIC = /[\p{L}\p{N}]\s*(?:様(?![子式々相態])|さま(?!ざま)|さん|氏|殿|君|ちゃん)/u;
const PATIENT_WORD = /患者|patient/i;

/** True when `title` looks like it contains a patient's name. */
export function titleLooksLikePatientName(title) {
  const text = String(title ?? '').normalize('NFKC');
  return PATIENT_WORD.test(text) || HONORIFIC.test(text);
}
