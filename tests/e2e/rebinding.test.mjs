// Browser end-to-end: a NAT between Chromium and the server gives every browser a new port
// mid-call, as a pocket Wi-Fi router does when its mobile link reconnects. The nurse and the
// care manager must keep seeing and hearing each other (decoded frames and audio samples
// grow in getStats) without being asked to reconnect: the server follows each connection to
// its new address (server/src/media/remote_path.rs).
//
// The runner (tests/run-all.sh) builds target/debug/wardlink first. Override the binary with
// WARDLINK_BIN and the browser with CHROMIUM_PATH.

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
  screenshotAll,
  startNat,
  startServer,
} from './harness.mjs';

/** The NAT's outside address, advertised by the server (any 127/8 address is loopback). */
const OUTSIDE_IP = '127.0.0.2';

/** Waits until decoded video frames (10) and received audio packets (50, one second) grow on
 *  `page`. */
async function mediaGrowing(name, page, timeoutMs) {
  const first = await inboundStats(page);
  const base = new Map(first.entries.map((e) => [e.key, e]));
  return eventually(`${name}: frames decoded and audio packets growing`, timeoutMs, async () => {
    const now = await inboundStats(page);
    const grew = (kind, field, min) =>
      now.entries.filter((e) => e.kind === kind && e[field] - (base.get(e.key)?.[field] ?? 0) >= min).length;
    const video = grew('video', 'framesDecoded', 10);
    // Packets, not samples: a starved jitter buffer keeps producing concealment samples.
    const audio = grew('audio', 'packetsReceived', 50);
    return { ok: video >= 1 && audio >= 1, video, audio, state: now.state };
  }, 100);
}

test('Chromium keeps its call when the NAT gives it new ports', { timeout: 180_000 }, async (t) => {
  assert.ok(existsSync(BIN), `${BIN} does not exist: run \`cargo build -p wardlink\` first (tests/run-all.sh does)`);
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} does not exist: apt-get install chromium (tests/run-all.sh does)`);
  mkdirSync(artifacts, { recursive: true });

  const { work, port, mediaPort, configPath } = await prepareServer('wardlink-e2e-nat-', [`public_ip = "${OUTSIDE_IP}"`], 'info');

  const server = startServer(configPath, path.join(artifacts, 'server-rebinding.log'));
  const nat = await startNat(OUTSIDE_IP, mediaPort);
  let browser = null;
  t.after(async () => {
    await browser?.close().catch(() => {});
    nat.close();
    await server.stop();
    if (!process.env.WARDLINK_KEEP_TEST_DIRS) rmSync(work, { recursive: true, force: true });
  });

  const pages = {};
  try {
    await waitHealthy(server, port);
    const linkFor = createRoom(configPath, 'NAT');

    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
    for (const [name, role] of [
      ['nurse', 'host'],
      ['caremanager', 'care_manager'],
    ]) {
      const page = await newPage(browser);
      await page.goto(linkFor(role));
      await clickJoin(page);
      pages[name] = page;
    }
    await admit(pages.nurse, 'the care manager', pages.caremanager);
    for (const [name, page] of Object.entries(pages)) await mediaGrowing(name, page, 30_000);
    // Chromium may check a connection from more than one local candidate; each address it
    // used has a mapping of its own.
    const clients = nat.clients();
    assert.ok(clients.length >= 4, `both connections of both browsers go through the NAT: ${clients}`);

    const MOVED = "the client's address moved; media follows";
    const movedBefore = server.lines(MOVED).length;
    await nat.rebind();
    const rebound = Date.now();
    // Frames that keep decoding prove the media reached the new ports: the old ones are closed.
    const recovered = await Promise.all(
      Object.entries(pages).map(([name, page]) => mediaGrowing(name, page, 15_000).then(() => Date.now() - rebound)),
    );
    const recoveredMs = Math.max(...recovered);
    await screenshotAll(pages, 'nat-rebound');

    const moves = server.lines(MOVED).slice(movedBefore);
    const connections = new Set(moves.map((l) => `${l.match(/participant=(\S+)/)?.[1]} ${l.match(/pc=(\S+)/)?.[1]}`));
    const byNomination = moves.filter((l) => l.includes('by="nomination"')).length;
    console.log(`media decoded again ${recoveredMs} ms after the NAT moved both browsers (${clients.length} ` +
      `mappings); ${moves.length} moves of ${connections.size} connections, ${byNomination} on Chromium's nomination`);
    assert.equal(connections.size, 4, `each of the four connections followed its browser: ${moves.join('\n')}`);
    assert.equal(server.count('peer connection torn down'), 0, 'no connection was torn down');
    for (const [name, page] of Object.entries(pages)) {
      const state = await page.evaluate(() => window.wardlink?.pcs?.subscribe?.connectionState);
      assert.equal(state, 'connected', `${name}: the subscribe connection stayed up`);
    }
  } catch (err) {
    await screenshotAll(pages, 'nat-failure');
    err.message += `\n\n--- server log (tail; full log in tests/e2e/artifacts/server-rebinding.log) ---\n${server.tail()}`;
    throw err;
  }
});
