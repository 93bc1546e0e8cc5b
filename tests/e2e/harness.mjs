// Shared pieces of the browser end-to-end tests: the binary and browser to use, free ports,
// starting and stopping `wardlink serve`, polling, and reading getStats from a page.

import { createWriteStream, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execFileSync, spawn } from 'node:child_process';
import net from 'node:net';
import dgram from 'node:dgram';
import https from 'node:https';

export const here = path.dirname(fileURLToPath(import.meta.url));
export const root = path.resolve(here, '..', '..');
export const artifacts = path.join(here, 'artifacts');
export const BIN = process.env.WARDLINK_BIN ?? path.join(root, 'target', 'debug', 'wardlink');
export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

export const CHROMIUM_ARGS = [
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

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A free 127.0.0.1 port, `kind` 'tcp' or 'udp' (the server binds it right after). */
export function freePort(kind) {
  return new Promise((resolve, reject) => {
    if (kind === 'udp') {
      const sock = dgram.createSocket('udp4');
      sock.once('error', reject);
      sock.bind(0, '127.0.0.1', () => {
        const { port } = sock.address();
        sock.close(() => resolve(port));
      });
    } else {
      const srv = net.createServer();
      srv.once('error', reject);
      srv.listen(0, '127.0.0.1', () => {
        const { port } = srv.address();
        srv.close(() => resolve(port));
      });
    }
  });
}

/** Polls `check` (async, returns a truthy value when done) until `timeoutMs`; fails with `what`
 *  and the last observed value. */
export async function eventually(what, timeoutMs, check, intervalMs = 250) {
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

/** Whether the server answers /healthz over HTTPS (its certificate is self-signed). */
export function healthz(port) {
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

/** A fresh work directory (named `prefix`…) holding `wardlink.toml` for a server on free
 *  127.0.0.1 ports, its data directory inside; `extra` config lines are appended. */
export async function prepareServer(prefix, extra = [], logLevel = 'info,wardlink=debug') {
  const work = mkdtempSync(path.join(tmpdir(), prefix));
  const port = await freePort('tcp');
  const mediaPort = await freePort('udp');
  const configPath = path.join(work, 'wardlink.toml');
  writeFileSync(
    configPath,
    [
      `listen = "127.0.0.1:${port}"`,
      `media_port = ${mediaPort}`,
      `media_bind = "127.0.0.1"`,
      `data_dir = ${JSON.stringify(path.join(work, 'data'))}`,
      `log_level = "${logLevel}"`,
      ...extra,
      '',
    ].join('\n'),
  );
  return { work, port, mediaPort, configPath };
}

/** Waits until `server` (from `startServer`) answers /healthz on `port`; fails at once if
 *  it exited. */
export async function waitHealthy(server, port) {
  await eventually('the server to answer /healthz', 20_000, async () => {
    if (server.exitInfo()) throw new Error(`server exited: ${JSON.stringify(server.exitInfo())}`);
    return healthz(port);
  });
}

/** Creates a conference with `wardlink room create --json` on the server configured by
 *  `configPath`, and returns a function giving the join link of a role. */
export function createRoom(configPath, title) {
  const out = execFileSync(BIN, ['--config', configPath, 'room', 'create', '--title', title, '--json'], {
    encoding: 'utf8',
  });
  const room = JSON.parse(out);
  return (role) => {
    const link = room.links?.find((l) => l.role === role);
    if (!link) throw new Error(`room create --json has no ${role} link: ${out}`);
    return link.url;
  };
}

/** Starts `wardlink serve` and keeps the last lines of its log for failure messages. */
export function startServer(configPath, logPath) {
  const child = spawn(BIN, ['serve', '--config', configPath], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NO_COLOR: '1' },
  });
  const logFile = createWriteStream(logPath);
  const tail = [];
  const all = [];
  const keep = (chunk) => {
    logFile.write(chunk);
    for (const line of chunk.toString().split('\n')) {
      if (!line) continue;
      all.push(line);
      tail.push(line);
      if (tail.length > 80) tail.shift();
    }
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  let exitInfo = null;
  process.once('exit', () => {
    if (!exitInfo) child.kill('SIGKILL');
  });
  exited.then((info) => {
    exitInfo = info;
  });
  return {
    tail: () => tail.join('\n'),
    /** How many log lines so far contain `text`. */
    count: (text) => all.filter((line) => line.includes(text)).length,
    /** The log lines so far that contain `text`. */
    lines: (text) => all.filter((line) => line.includes(text)),
    exitInfo: () => exitInfo,
    async stop() {
      if (!exitInfo) {
        child.kill('SIGTERM');
        const done = await Promise.race([exited, sleep(5000).then(() => null)]);
        if (!done) {
          child.kill('SIGKILL');
          await exited;
        }
      }
      logFile.end();
    },
  };
}

/** inbound-rtp entries of the page's subscribe connection (none when it has none). */
export async function inboundStats(page) {
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
        bytesReceived: r.bytesReceived ?? 0,
        packetsReceived: r.packetsReceived ?? 0,
        framesDecoded: r.framesDecoded ?? 0,
        totalSamplesReceived: r.totalSamplesReceived ?? 0,
      });
    });
    return { pc: true, state: pc.connectionState, entries };
  });
}

/** What the subscribe connection learned from the server's RTCP sender reports
 *  (`remote-outbound-rtp`), per stream, with the page's wall clock for comparison. */
export async function senderReportStats(page) {
  return page.evaluate(async () => {
    const pc = window.wardlink?.pcs?.subscribe;
    if (!pc) return { entries: [], now: Date.now() };
    const report = await pc.getStats();
    const entries = [];
    report.forEach((r) => {
      if (r.type !== 'remote-outbound-rtp') return;
      entries.push({
        kind: r.kind,
        ssrc: r.ssrc,
        packetsSent: r.packetsSent ?? 0,
        reportsSent: r.reportsSent ?? 0,
        remoteTimestamp: r.remoteTimestamp ?? 0,
      });
    });
    return { entries, now: Date.now() };
  });
}

export async function clickJoin(page) {
  const button = page.locator('[data-testid="join-button"]');
  await button.waitFor({ state: 'visible', timeout: 20_000 });
  await eventually('join button enabled', 20_000, () => button.isEnabled());
  await button.click();
}

/** Saves a full-page screenshot of each page as `<label>-<name>.png` in the artifacts folder. */
export async function screenshotAll(pages, label) {
  mkdirSync(artifacts, { recursive: true });
  for (const [name, page] of Object.entries(pages)) {
    try {
      await page.screenshot({ path: path.join(artifacts, `${label}-${name}.png`), fullPage: true });
    } catch {
      // A crashed page cannot be photographed; the failure itself is reported elsewhere.
    }
  }
}

/** A NAT on loopback in front of the server's media port (the Rust tests have the same in
 *  `tests/src/nat.rs`). The server advertises `outsideIp` (its `public_ip`), so browsers send
 *  there; each browser address gets a mapping of its own, a socket on a fresh 127.0.0.1 port
 *  toward the server. `rebind()` gives every mapping a new port and closes the old one, as a
 *  pocket Wi-Fi router does when its mobile link reconnects. */
export async function startNat(outsideIp, port) {
  const server = { address: '127.0.0.1', port };
  const outside = dgram.createSocket('udp4');
  const mappings = new Map(); // "ip:port" of the browser -> inside socket
  const open = (client) =>
    new Promise((resolve, reject) => {
      const inside = dgram.createSocket('udp4');
      inside.once('error', reject);
      inside.on('message', (msg, from) => {
        if (from.address === server.address && from.port === server.port) {
          outside.send(msg, client.port, client.address);
        }
      });
      inside.bind(0, '127.0.0.1', () => resolve(inside));
    });
  outside.on('message', async (msg, from) => {
    const key = `${from.address}:${from.port}`;
    let entry = mappings.get(key);
    if (!entry) {
      entry = { client: { address: from.address, port: from.port }, socket: open(from) };
      mappings.set(key, entry);
    }
    const inside = await entry.socket;
    inside.send(msg, server.port, server.address);
  });
  await new Promise((resolve, reject) => {
    outside.once('error', reject);
    outside.bind(port, outsideIp, resolve);
  });
  return {
    clientCount: () => mappings.size,
    clients: () => [...mappings.keys()],
    async rebind() {
      for (const entry of mappings.values()) {
        const old = await entry.socket;
        entry.socket = open(entry.client);
        await entry.socket;
        old.close();
      }
    },
    close() {
      for (const entry of mappings.values()) entry.socket.then((s) => s.close()).catch(() => {});
      outside.close();
    },
  };
}

/** The guest on `guestPage` waits in the waiting room; the host admits exactly that
 *  participant (by id) from the lobby; the guest reaches the conference view. */
export async function admit(hostPage, guestName, guestPage) {
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

/** A page in a context of its own (isolated like a separate browser): a Japanese tablet-sized
 *  window with camera and microphone allowed and the self-signed certificate accepted;
 *  `options` override those. */
export async function newPage(browser, options = {}) {
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    permissions: ['camera', 'microphone'],
    viewport: { width: 1024, height: 720 },
    locale: 'ja-JP',
    ...options,
  });
  return context.newPage();
}
