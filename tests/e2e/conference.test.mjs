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
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync, createWriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';
import dgram from 'node:dgram';
import https from 'node:https';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const artifacts = path.join(here, 'artifacts');
const BIN = process.env.WARDLINK_BIN ?? path.join(root, 'target', 'debug', 'wardlink');
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

const CHROMIUM_ARGS = [
  '--headless=new',
  '--no-sandbox',
  '--disable-gpu',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
  '--ignore-certificate-errors',
  '--allow-loopback-in-peer-connection',
  '--autoplay-policy=no-user-gesture-required',
];

const TILE = '[data-testid="participant-tile"]';

// ------------------------------------------------------------------ helpers

function freeTcpPort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function freeUdpPort() {
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket('udp4');
    sock.once('error', reject);
    sock.bind(0, '127.0.0.1', () => {
      const { port } = sock.address();
      sock.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` (async, returns a truthy value when done) until `timeoutMs`; fails with `what`
 *  and the last observed value. */
async function eventually(what, timeoutMs, check, intervalMs = 250) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last && last.ok !== false) return last;
    } catch (err) {
      last = `error: ${err?.message ?? err}`;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last observed: ${JSON.stringify(last)}`);
    }
    await sleep(intervalMs);
  }
}

function healthz(port) {
  return new Promise((resolve) => {
    const req = https.get(
      { host: '127.0.0.1', port, path: '/healthz', rejectUnauthorized: false, timeout: 2000 },
      (res) => {
        res.resume();
        resolve(res.statusCode === 200);
      },
    );
    req.on('error', () => resolve(false));
    req.on('timeout', () => {
      req.destroy();
      resolve(false);
    });
  });
}

/** Starts `wardlink serve` and keeps the last lines of its log for failure messages. */
function startServer(configPath, logPath) {
  const child = spawn(BIN, ['serve', '--config', configPath], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NO_COLOR: '1' },
  });
  const logFile = createWriteStream(logPath);
  const tail = [];
  const keep = (chunk) => {
    logFile.write(chunk);
    for (const line of chunk.toString().split('\n')) {
      if (!line) continue;
      tail.push(line);
      if (tail.length > 80) tail.shift();
    }
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  let exitInfo = null;
  // Never leave a server behind, even if the test runner itself is interrupted.
  process.once('exit', () => {
    if (!exitInfo) child.kill('SIGKILL');
  });
  exited.then((info) => {
    exitInfo = info;
  });
  return {
    child,
    exited,
    tail: () => tail.join('\n'),
    exitInfo: () => exitInfo,
    async stop() {
      if (exitInfo) return;
      child.kill('SIGTERM');
      const done = await Promise.race([exited, sleep(5000).then(() => null)]);
      if (!done) {
        child.kill('SIGKILL');
        await exited;
      }
      logFile.end();
    },
  };
}

/** inbound-rtp entries of the page's current subscribe connection. */
async function inboundStats(page) {
  return page.evaluate(async () => {
    const pc = window.wardlink?.pcs?.subscribe;
    if (!pc) return { pc: false, entries: [] };
    const report = await pc.getStats();
    const entries = [];
    report.forEach((r) => {
      if (r.type !== 'inbound-rtp') return;
      entries.push({
        key: `${r.kind}:${r.ssrc}:${r.mid ?? ''}`,
        kind: r.kind,
        framesDecoded: r.framesDecoded ?? 0,
        totalSamplesReceived: r.totalSamplesReceived ?? 0,
        packetsReceived: r.packetsReceived ?? 0,
      });
    });
    return { pc: true, state: pc.connectionState, entries };
  });
}

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

async function clickJoin(page) {
  const button = page.locator('[data-testid="join-button"]');
  await button.waitFor({ state: 'visible', timeout: 20_000 });
  await eventually('join button enabled', 20_000, () => button.isEnabled());
  await button.click();
}

/** The guest on `guestPage` waits in the waiting room; the host admits exactly that
 *  participant (by id) from the lobby; the guest reaches the conference view. */
async function admit(hostPage, guestName, guestPage) {
  const waiting = await eventually(`${guestName} in the waiting room`, 20_000, async () => {
    const v = await guestPage.evaluate(() => ({ view: window.wardlink?.view, id: window.wardlink?.participantId }));
    return { ok: v.view === 'waiting' && Boolean(v.id), ...v };
  });
  const entry = hostPage.locator(`[data-testid="lobby-entry"][data-participant-id="${waiting.id}"]`);
  await entry.locator('[data-testid="admit-button"]').click({ timeout: 20_000 });
  await eventually(`${guestName} admitted into the conference`, 20_000, async () => {
    const view = await guestPage.evaluate(() => window.wardlink?.view);
    return { ok: view === 'conference', view };
  });
}

async function screenshotAll(pages, label) {
  mkdirSync(artifacts, { recursive: true });
  for (const [name, page] of Object.entries(pages)) {
    try {
      await page.screenshot({ path: path.join(artifacts, `${label}-${name}.png`), fullPage: true });
    } catch {
      // A crashed page cannot be photographed; the failure itself is reported elsewhere.
    }
  }
}

// ------------------------------------------------------------------ the test

test('three people confer in Chromium; the surveyor leaves and rejoins', { timeout: 240_000 }, async (t) => {
  assert.ok(existsSync(BIN), `${BIN} does not exist: run \`cargo build -p wardlink\` first (tests/run-all.sh does)`);
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} does not exist: apt-get install chromium (tests/run-all.sh does)`);
  mkdirSync(artifacts, { recursive: true });

  const work = mkdtempSync(path.join(tmpdir(), 'wardlink-e2e-'));
  const port = await freeTcpPort();
  const mediaPort = await freeUdpPort();
  const configPath = path.join(work, 'wardlink.toml');
  writeFileSync(
    configPath,
    [
      `listen = "127.0.0.1:${port}"`,
      `media_port = ${mediaPort}`,
      `media_bind = "127.0.0.1"`,
      `data_dir = ${JSON.stringify(path.join(work, 'data'))}`,
      `log_level = "info,wardlink=debug"`,
      '',
    ].join('\n'),
  );

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
    await eventually('the server to answer /healthz', 20_000, async () => {
      if (server.exitInfo()) throw new Error(`server exited: ${JSON.stringify(server.exitInfo())}`);
      return healthz(port);
    });

    const out = execFileSync(BIN, ['--config', configPath, 'room', 'create', '--title', 'E2E', '--json'], {
      encoding: 'utf8',
    });
    const room = JSON.parse(out);
    const linkFor = (role) => {
      const link = room.links?.find((l) => l.role === role);
      assert.ok(link, `room create --json has no ${role} link: ${out}`);
      return link.url;
    };

    // A plain launch runs on a fresh temporary profile (user-data-dir) that Playwright deletes
    // on close; each context below is isolated like a separate browser.
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });

    for (const [name, role] of [
      ['nurse', 'host'],
      ['caremanager', 'care_manager'],
      ['surveyor', 'surveyor'],
    ]) {
      const context = await browser.newContext({
        ignoreHTTPSErrors: true,
        permissions: ['camera', 'microphone'],
        viewport: { width: 1024, height: 720 },
        locale: 'ja-JP',
      });
      const page = await context.newPage();
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
