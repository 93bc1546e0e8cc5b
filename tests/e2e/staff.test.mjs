// Browser end-to-end for the staff side and the waiting room: the real `wardlink` binary and
// real Chromium. A ward nurse account is created with `wardlink user add`; in the browser the
// nurse signs in with her password, enrols TOTP (the code is computed here, RFC 6238), and
// schedules a conference with a care manager and a family invitation from the dashboard.
// She opens her host link; both guests open theirs and wait; she admits the care manager and
// denies the family member. The two admitted sides must decode each other's video and audio;
// the denied page must never have received a byte of media. Finally `wardlink audit export`
// must tell that story in order and `wardlink audit verify` must pass.
//
// WARDLINK_BIN and CHROMIUM_PATH override the binary and browser, as for conference.test.mjs.
// Screenshots and the server log go to tests/e2e/artifacts/ (prefixed `staff-`).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import https from 'node:https';
import { chromium } from 'playwright-core';

import {
  BIN,
  CHROMIUM,
  CHROMIUM_ARGS,
  artifacts,
  clickJoin,
  eventually,
  prepareServer,
  waitHealthy,
  inboundStats,
  newPage,
  screenshotAll,
  sleep,
  startServer,
} from './harness.mjs';

const USERNAME = 'sato.hanako';
const PASSWORD = 'e2e correct horse battery';
const TITLE = '退院前カンファレンス 3階東病棟';

// ------------------------------------------------------------------ helpers






/** RFC 4648 base32 (no padding needed) to bytes. */
function base32Decode(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0;
  let value = 0;
  const out = [];
  for (const c of text.replace(/=+$/, '').toUpperCase()) {
    const i = alphabet.indexOf(c);
    if (i < 0) throw new Error(`not base32: ${c}`);
    value = ((value << 5) | i) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

/** RFC 6238 TOTP: HMAC-SHA1, 30-second steps, 6 digits. */
function totp(secret, unixMs = Date.now()) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(unixMs / 1000 / 30)));
  const mac = createHmac('sha1', base32Decode(secret)).update(counter).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  return String((mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000).padStart(6, '0');
}


/** The one other participant's video decodes and audio plays on `page` (counters grow). */
async function assertReceivingOne(name, page, timeoutMs = 30_000) {
  const first = await inboundStats(page);
  const base = new Map(first.entries.map((e) => [e.key, e]));
  return eventually(`${name}: decoding the other side's video and audio`, timeoutMs, async () => {
    const now = await inboundStats(page);
    const grew = (kind, field, min) =>
      now.entries.filter((e) => e.kind === kind && e[field] - (base.get(e.key)?.[field] ?? 0) >= min).length;
    const video = grew('video', 'framesDecoded', 10);
    const audio = grew('audio', 'totalSamplesReceived', 4800);
    return { ok: video >= 1 && audio >= 1, video, audio, state: now.state, entries: now.entries };
  });
}

/** Everything the page ever received as media: must be nothing for someone never admitted. */
async function mediaReceived(page) {
  return page.evaluate(async () => {
    const pcs = window.wardlink?.pcs ?? {};
    const out = { subscribe: Boolean(pcs.subscribe), publish: Boolean(pcs.publish), inboundBytes: 0, inbound: 0 };
    for (const pc of [pcs.subscribe, pcs.publish]) {
      if (!pc) continue;
      const report = await pc.getStats();
      report.forEach((r) => {
        if (r.type === 'inbound-rtp') {
          out.inbound += 1;
          out.inboundBytes += r.bytesReceived ?? 0;
        }
      });
    }
    return out;
  });
}

async function view(page) {
  return page.evaluate(() => window.wardlink?.view ?? null);
}



/** Whether `needles` occur in `haystack` in this order (other entries may come between). */
function inOrder(haystack, needles) {
  let i = 0;
  for (const item of haystack) {
    if (i < needles.length && item === needles[i]) i += 1;
  }
  return i === needles.length;
}

// ------------------------------------------------------------------ the test

test('staff sign in with TOTP, schedule, admit one guest and deny another; the audit log tells it', { timeout: 240_000 }, async (t) => {
  assert.ok(existsSync(BIN), `${BIN} does not exist: run \`cargo build -p wardlink\` first (tests/run-all.sh does)`);
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} does not exist: apt-get install chromium (tests/run-all.sh does)`);
  mkdirSync(artifacts, { recursive: true });

  const { work, port, configPath } = await prepareServer('wardlink-e2e-staff-');
  const cli = (args, env = {}) =>
    execFileSync(BIN, ['--config', configPath, ...args], {
      encoding: 'utf8',
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });

  // The account exists before the server starts (the CLI works either way).
  const created = cli(['user', 'add', '--username', USERNAME, '--name', '佐藤 花子', '--profession', 'nurse'], {
    WARDLINK_NEW_PASSWORD: PASSWORD,
  });
  assert.match(created, /created sato\.hanako/);

  const server = startServer(configPath, path.join(artifacts, 'staff-server.log'));
  let browser = null;
  const consoleErrors = [];
  t.after(async () => {
    await browser?.close().catch(() => {});
    await server.stop();
    if (!process.env.WARDLINK_KEEP_TEST_DIRS) rmSync(work, { recursive: true, force: true });
  });

  const pages = {};
  const openPage = async (name, options = {}) => {
    const page = await newPage(browser, options);
    page.on('console', (msg) => {
      if (msg.type() === 'error') consoleErrors.push(`${name}: ${msg.text()}`);
    });
    page.on('pageerror', (err) => consoleErrors.push(`${name}: uncaught ${err.message}`));
    pages[name] = page;
    return page;
  };

  try {
    await waitHealthy(server, port);
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });

    // ---- Sign in: password, then TOTP enrolment with a code computed here.
    const staff = await openPage('staff');
    await staff.goto(`https://127.0.0.1:${port}/staff`);
    await staff.locator('[data-testid="login-username"]').fill(USERNAME);
    await staff.locator('[data-testid="login-password"]').fill(PASSWORD);
    await staff.locator('[data-testid="login-submit"]').click();
    await eventually('the enrolment step', 20_000, async () => {
      const stage = await staff.evaluate(() => window.wardlinkStaff?.stage);
      return { ok: stage === 'enroll', stage };
    });
    const uri = await eventually('the otpauth URI', 10_000, async () => {
      const text = (await staff.locator('[data-testid="enroll-uri"]').textContent()) ?? '';
      return text.startsWith('otpauth://') ? text : null;
    });
    const secret = new URL(uri).searchParams.get('secret');
    assert.ok(secret && /^[A-Z2-7]+=*$/.test(secret), `no base32 secret in ${uri}`);
    const shown = (await staff.locator('[data-testid="enroll-secret"]').textContent())?.replace(/\s/g, '');
    if (shown) assert.equal(shown, secret, 'the secret shown for manual entry differs from the URI');
    await screenshotAll({ staff }, 'staff-1-enrol');
    // A wrong code first: refused, still on the enrolment step.
    const right = totp(secret);
    const wrong = String((Number(right) + 500_000) % 1_000_000).padStart(6, '0');
    await staff.locator('[data-testid="totp-code"]').fill(wrong);
    await staff.locator('[data-testid="totp-submit"]').click();
    await eventually('the wrong code refused', 10_000, async () => {
      const error = staff.locator('[data-testid="login-error"]');
      const visible = await error.isVisible();
      const stage = await staff.evaluate(() => window.wardlinkStaff?.stage);
      return { ok: visible && stage === 'enroll', visible, stage, code: await error.getAttribute('data-code') };
    });
    // Near a step boundary the code may roll over; the server accepts a neighbouring step.
    await staff.locator('[data-testid="totp-code"]').fill(totp(secret));
    await staff.locator('[data-testid="totp-submit"]').click();
    await eventually('the dashboard', 20_000, async () => {
      const v = await staff.evaluate(() => window.wardlinkStaff?.view);
      return { ok: v === 'dashboard', view: v };
    });

    // ---- Schedule a conference with two invitations.
    await staff.locator('input[data-testid="conference-title"]').fill(TITLE);
    const scheduled = await staff.locator('[data-testid="conference-scheduled"]').inputValue();
    assert.ok(scheduled, 'the start time has a default');
    for (const [role, name] of [
      ['care_manager', 'ケアマネジャー 山本'],
      ['family', 'ご家族 田中'],
    ]) {
      await staff.locator('[data-testid="invite-add"]').click();
      const row = staff.locator('[data-testid="invite-row"]').last();
      await row.locator('[data-testid="invite-role"]').selectOption(role);
      await row.locator('[data-testid="invite-name"]').fill(name);
    }
    await staff.locator('[data-testid="conference-create"]').click();
    await staff.locator('[data-testid="created"]').waitFor({ state: 'visible', timeout: 20_000 });
    const hostLink = await staff.locator('[data-testid="host-link"]').getAttribute('href');
    assert.match(hostLink ?? '', /\/join#t=/, `host link: ${hostLink}`);
    const invites = await staff.$$eval('[data-testid="invite-link"]', (els) =>
      els.map((e) => ({ role: e.dataset.role, url: e.dataset.url })),
    );
    const linkOf = (role) => {
      const found = invites.find((i) => i.role === role);
      assert.ok(found?.url?.includes('/join#t='), `no ${role} link among ${JSON.stringify(invites)}`);
      return found.url;
    };
    const caremanagerLink = linkOf('care_manager');
    const familyLink = linkOf('family');
    assert.equal(invites.length, 2);
    await screenshotAll({ staff }, 'staff-2-created');

    // ---- The nurse opens her host link; the guests open theirs and wait.
    const nurse = await openPage('nurse');
    await nurse.goto(hostLink);
    await clickJoin(nurse);
    await eventually('the nurse in the conference', 20_000, async () => {
      const v = await view(nurse);
      return { ok: v === 'conference', view: v };
    });

    const guests = {};
    for (const [name, url] of [
      ['caremanager', caremanagerLink],
      ['family', familyLink],
    ]) {
      const page = await openPage(name);
      await page.goto(url);
      await clickJoin(page);
      guests[name] = await eventually(`${name} in the waiting room`, 20_000, async () => {
        const v = await page.evaluate(() => ({ view: window.wardlink?.view, id: window.wardlink?.participantId }));
        const notice = await page.locator('[data-testid="waiting-notice"]').isVisible();
        return { ok: v.view === 'waiting' && Boolean(v.id) && notice, ...v, notice };
      });
      // Waiting: no peer connection receives anything.
      const media = await mediaReceived(page);
      assert.equal(media.inboundBytes, 0, `${name} received media while waiting: ${JSON.stringify(media)}`);
    }
    const entries = await eventually('two lobby entries at the nurse', 20_000, async () => {
      const ids = await nurse.$$eval('[data-testid="lobby-entry"]', (els) => els.map((e) => e.dataset.participantId));
      return { ok: ids.length === 2, ids };
    });
    assert.deepEqual(new Set(entries.ids), new Set([guests.caremanager.id, guests.family.id]));
    await screenshotAll(pages, 'staff-3-waiting');

    // ---- Admit the care manager, deny the family member.
    const entry = (id) => nurse.locator(`[data-testid="lobby-entry"][data-participant-id="${id}"]`);
    await entry(guests.caremanager.id).locator('[data-testid="admit-button"]').click({ timeout: 20_000 });
    await eventually('the care manager admitted', 20_000, async () => {
      const v = await view(pages.caremanager);
      return { ok: v === 'conference', view: v };
    });
    await entry(guests.family.id).locator('[data-testid="deny-button"]').click({ timeout: 20_000 });
    await eventually('the family member denied', 20_000, async () => {
      const v = await view(pages.family);
      const notice = await pages.family.locator('[data-testid="denied-notice"]').isVisible();
      return { ok: v === 'denied' && notice, view: v, notice };
    });

    // ---- The two admitted sides see and hear each other.
    await assertReceivingOne('care manager (from the nurse)', pages.caremanager);
    await assertReceivingOne('nurse (from the care manager)', nurse);
    const tiles = await nurse.$$eval('[data-testid="participant-tile"]', (els) => els.map((e) => e.dataset.participantId));
    assert.ok(!tiles.includes(guests.family.id), `the denied family member has a tile at the nurse: ${tiles}`);
    await screenshotAll(pages, 'staff-4-admitted-and-denied');

    // The denied page never had any media, and stays without.
    await sleep(2000);
    const denied = await mediaReceived(pages.family);
    assert.equal(denied.inboundBytes, 0, `the denied page received media: ${JSON.stringify(denied)}`);
    assert.equal(denied.inbound, 0, `the denied page has inbound streams: ${JSON.stringify(denied)}`);
    assert.equal(await view(pages.family), 'denied');

    // ---- The audit trail, read by the operator's tool while the server runs.
    const lines = cli(['audit', 'export', '--format', 'jsonl'])
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l));
    const actions = lines.map((l) => l.action);
    const story = [
      'user_created',
      'login_succeeded',
      'conference_created',
      'invitation_issued',
      'invitation_issued',
      'invitation_issued',
      'invitation_used',
      'join',
      'waiting',
      'waiting',
      'admit',
      'deny',
    ];
    assert.ok(inOrder(actions, story), `audit actions out of order or missing:\n${actions.join('\n')}`);
    assert.equal(actions.filter((a) => a === 'invitation_issued').length, 3, 'host + 2 invitations issued');
    assert.ok(actions.includes('totp_enrolled'), 'TOTP enrolment is audited');
    const conference = lines.find((l) => l.action === 'conference_created');
    assert.equal(conference.actor, `user:${USERNAME}`);
    const admit = lines.find((l) => l.action === 'admit');
    const deny = lines.find((l) => l.action === 'deny');
    assert.equal(admit.detail.subject, guests.caremanager.id);
    assert.equal(admit.detail.subject_role, 'care_manager');
    assert.equal(deny.detail.subject, guests.family.id);
    assert.equal(deny.detail.subject_role, 'family');
    assert.equal(admit.conference, conference.conference);
    const everything = JSON.stringify(lines);
    for (const [what, text] of [
      ['password', PASSWORD],
      ['TOTP secret', secret],
      ['host token', hostLink.split('#t=')[1]],
      ['family token', familyLink.split('#t=')[1]],
      ['title', TITLE],
    ]) {
      assert.ok(!everything.includes(text), `the audit log contains the ${what}`);
    }
    const verify = spawnSync(BIN, ['--config', configPath, 'audit', 'verify'], { encoding: 'utf8' });
    assert.equal(verify.status, 0, `audit verify: ${verify.stdout}${verify.stderr}`);
    assert.match(verify.stdout, /^audit log OK: \d+ entries/);

    const uncaught = consoleErrors.filter((e) => e.includes('uncaught'));
    assert.deepEqual(uncaught, [], 'no uncaught exceptions in the pages');
  } catch (err) {
    await screenshotAll(pages, 'staff-failure');
    err.message +=
      `\n\n--- browser console errors ---\n${consoleErrors.join('\n') || '(none)'}` +
      `\n\n--- server log (tail; full log in tests/e2e/artifacts/staff-server.log) ---\n${server.tail()}`;
    throw err;
  }
});
