// Browser end-to-end: the real `wardlink` binary, the real web client, real Chromium with fake
// camera/microphone. Three people (ward nurse, care manager, surveyor) join from their links,
// the nurse admits the two guests from the waiting room, everyone sees and hears the others
// (decoded frames and audio samples grow in getStats), the surveyor leaves and comes back
// (and is admitted again).
//
// The runner (tests/run-all.sh) builds target/debug/wardlink first. Override the binary with
// WARDLINK_BIN and the browser with CHROMIUM_PATH. Screenshots go to tests/e2e/artifacts/.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

import {
  BIN,
  admit,
  CHROMIUM,
  CHROMIUM_ARGS,
  artifacts,
  clickJoin,
  createRoom,
  eventually,
  prepareServer,
  waitHealthy,
  inboundStats,
  newPage,
  senderReportStats,
  screenshotAll,
  startServer,
} from './harness.mjs';

const TILE = '[data-testid="participant-tile"]';

// ------------------------------------------------------------------ helpers








/** Waits until, on `page`, decoded video frames grow on ≥2 distinct inbound streams and received
 *  audio samples grow on ≥2 — i.e. both other participants are actually seen and heard. */
async function assertMediaFlowing(name, page, timeoutMs = 30_000) {
  const first = await inboundStats(page);
  const base = new Map(first.entries.map((e) => [e.key, e]));
  return eventually(`${name}: frames decoded and audio samples growing from 2 remote participants`, timeoutMs, async () => {
    const now = await inboundStats(page);
    const grew = (kind, field, min) =>
      now.entries.filter((e) => e.kind === kind && e[field] - (base.get(e.key)?.[field] ?? 0) >= min).length;
    const video = grew('video', 'framesDecoded', 10);
    const audio = grew('audio', 'totalSamplesReceived', 4800);
    return { ok: video >= 2 && audio >= 2, video, audio, state: now.state, entries: now.entries };
  });
}

async function tileIds(page) {
  return page.$$eval(TILE, (els) => els.map((e) => e.dataset.participantId ?? ''));
}

async function waitTiles(name, page, count, timeoutMs = 30_000) {
  return eventually(`${name}: ${count} participant tiles`, timeoutMs, async () => {
    const ids = await tileIds(page);
    return { ok: ids.length === count, ids };
  });
}


// ------------------------------------------------------------------ the test

test('three people confer in Chromium; the surveyor leaves and rejoins', { timeout: 240_000 }, async (t) => {
  assert.ok(existsSync(BIN), `${BIN} does not exist: run \`cargo build -p wardlink\` first (tests/run-all.sh does)`);
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} does not exist: apt-get install chromium (tests/run-all.sh does)`);
  mkdirSync(artifacts, { recursive: true });

  const { work, port, configPath } = await prepareServer('wardlink-e2e-');

  const server = startServer(configPath, path.join(artifacts, 'server.log'));
  let browser = null;
  const consoleErrors = [];
  t.after(async () => {
    await browser?.close().catch(() => {});
    await server.stop();
    if (!process.env.WARDLINK_KEEP_TEST_DIRS) rmSync(work, { recursive: true, force: true });
  });

  const pages = {};
  try {
    await waitHealthy(server, port);

    const linkFor = createRoom(configPath, 'E2E');

    // A plain launch runs on a fresh temporary profile (user-data-dir) that Playwright deletes
    // on close; each context below is isolated like a separate browser.
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });

    for (const [name, role] of [
      ['nurse', 'host'],
      ['caremanager', 'care_manager'],
      ['surveyor', 'surveyor'],
    ]) {
      const page = await newPage(browser);
      page.on('console', (msg) => {
        if (msg.type() === 'error') consoleErrors.push(`${name}: ${msg.text()}`);
      });
      page.on('pageerror', (err) => consoleErrors.push(`${name}: uncaught ${err.message}`));
      await page.goto(linkFor(role));
      await clickJoin(page);
      pages[name] = page;
      if (role === 'host') {
        await eventually('the nurse (host) in the conference', 20_000, async () => {
          const view = await page.evaluate(() => window.wardlink?.view);
          return { ok: view === 'conference', view };
        });
      } else {
        // Guests wait until the nurse admits them.
        await admit(pages.nurse, name, page);
      }
    }

    for (const [name, page] of Object.entries(pages)) await waitTiles(name, page, 3);
    for (const [name, page] of Object.entries(pages)) await assertMediaFlowing(name, page);
    await screenshotAll(pages, '1-three-party');
    // What Chromium just decoded was encrypted by the SFU itself (server/src/media/direct_srtp.rs),
    // not by rtc's pipeline: each of the three subscriber connections switched over.
    assert.ok(
      server.count('forwarded RTP is encrypted by the SFU') >= 3,
      'every subscriber connection is on the direct SRTP path',
    );
    assert.equal(server.count("stays on rtc's SRTP path"), 0, 'no connection fell back to rtc');
    // And it was read outside rtc too (server/src/media/direct_rx.rs): each of the three
    // publish connections proved Chromium's SRTP key on a real packet.
    assert.ok(
      server.count('received RTP is decrypted outside rtc') >= 3,
      'every publish connection is on the direct read path',
    );
    assert.equal(server.count('received RTP stays on rtc'), 0, 'no publish connection fell back to rtc');
    // The sender reports are the SFU's own too (rtc's interceptor never sees direct-path
    // packets): Chromium accepted them for every stream, with counts and a wall-clock time
    // that make sense (same machine, so within a few seconds of the page's clock).
    for (const [name, page] of Object.entries(pages)) {
      await eventually(`${name}: sender reports for 2 audio and 2 video streams`, 10_000, async () => {
        const sr = await senderReportStats(page);
        const good = sr.entries.filter(
          (e) => e.packetsSent > 0 && e.reportsSent > 0 && Math.abs(e.remoteTimestamp - sr.now) < 5_000,
        );
        const count = (kind) => good.filter((e) => e.kind === kind).length;
        return { ok: count('audio') >= 2 && count('video') >= 2, ...sr };
      });
    }

    // The surveyor leaves: the others lose exactly that tile.
    const surveyorId = await pages.surveyor.evaluate(() => window.wardlink.participantId);
    assert.ok(surveyorId, 'the surveyor page exposes its participant id');
    await pages.surveyor.locator('[data-testid="leave-button"]').click();
    for (const name of ['nurse', 'caremanager']) {
      const ids = await eventually(`${name}: the surveyor's tile to disappear`, 20_000, async () => {
        const ids = await tileIds(pages[name]);
        return { ok: !ids.includes(surveyorId) && ids.length === 2, ids };
      });
      assert.equal(ids.ids.length, 2);
    }
    await pages.surveyor.locator('[data-testid="rejoin-button"]').waitFor({ state: 'visible', timeout: 10_000 });
    await screenshotAll(pages, '2-surveyor-left');

    // And comes back with the same link.
    await pages.surveyor.locator('[data-testid="rejoin-button"]').click();
    await clickJoin(pages.surveyor);
    await admit(pages.nurse, 'surveyor (rejoining)', pages.surveyor);
    for (const [name, page] of Object.entries(pages)) await waitTiles(name, page, 3);
    const rejoinedId = await pages.surveyor.evaluate(() => window.wardlink.participantId);
    assert.ok(rejoinedId, 'the rejoined surveyor has a participant id');
    for (const name of ['nurse', 'caremanager']) {
      const ids = await tileIds(pages[name]);
      assert.ok(ids.includes(rejoinedId), `${name} shows the rejoined surveyor ${rejoinedId}: ${ids}`);
    }
    for (const [name, page] of Object.entries(pages)) await assertMediaFlowing(name, page);
    await screenshotAll(pages, '3-surveyor-rejoined');

    const uncaught = consoleErrors.filter((e) => e.includes('uncaught'));
    assert.deepEqual(uncaught, [], 'no uncaught exceptions in the pages');
  } catch (err) {
    await screenshotAll(pages, 'failure');
    err.message += `\n\n--- browser console errors ---\n${consoleErrors.join('\n') || '(none)'}` +
      `\n\n--- server log (tail; full log in tests/e2e/artifacts/server.log) ---\n${server.tail()}`;
    throw err;
  }
});
