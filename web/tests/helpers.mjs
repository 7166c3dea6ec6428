// Shared by the browser tests and the benchmark: start a real aikore on a
// temp data dir, and launch Debian's headless Chromium through playwright-core.
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, existsSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createServer } from "node:net";
import { randomBytes } from "node:crypto";

export const WEB_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const REPO = resolve(WEB_DIR, "..");

export function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => { const { port } = srv.address(); srv.close(() => ok(port)); });
    srv.on("error", fail);
  });
}

function findBinary() {
  const candidates = [
    process.env.AIKORE_BIN,
    process.env.CARGO_TARGET_DIR && join(process.env.CARGO_TARGET_DIR, "debug/aikore"),
    join(REPO, "target/debug/aikore"),
    join(REPO, "target/release/aikore"),
  ].filter(Boolean);
  const bin = candidates.find((p) => existsSync(p));
  if (!bin) throw new Error("no aikore binary: build it (cargo build) or set AIKORE_BIN");
  return bin;
}

// `units`: stock unit files to run (name -> text); `files`: files to put in
// the data dir before the start (relative path -> text), e.g. blueprints.
export async function startAikore({ password = "correct horse battery", env = {}, units = {}, files = {} } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "aikore-e2e-"));
  mkdirSync(join(dir, "units"));
  for (const [name, text] of Object.entries(units)) writeFileSync(join(dir, "units", name), text);
  for (const [rel, text] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, "data", rel)), { recursive: true });
    writeFileSync(join(dir, "data", rel), text, { mode: 0o755 });
  }
  const port = await freePort();
  const rangeStart = (await freePort()) % 40000 + 20000;
  const token = randomBytes(16).toString("hex");
  const url = `http://127.0.0.1:${port}`;
  const child = spawn(findBinary(), ["serve", "--data-dir", join(dir, "data"), "--units-dir", join(dir, "units"), "--listen", `127.0.0.1:${port}`], {
    env: {
      ...process.env,
      AIKORE_PASSWORD: password,
      AIKORE_API_TOKEN: token,
      AIKORE_WEB_DIR: WEB_DIR,
      AIKORE_BLUEPRINTS_DIR: process.env.AIKORE_BLUEPRINTS_DIR || join(REPO, "blueprints"),
      AIKORE_PORT_RANGE: `${rangeStart}-${rangeStart + 200}`,
      AIKORE_SHUTDOWN_TIMEOUT: "10s",
      AIKORE_LOG: "info",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  child.stdout.on("data", (d) => { log += d; });
  child.stderr.on("data", (d) => { log += d; });
  const deadline = Date.now() + 20000;
  for (;;) {
    try { const r = await fetch(url + "/healthz"); if (r.ok) break; } catch (_) { /* not up yet */ }
    if (child.exitCode !== null || Date.now() > deadline) throw new Error("aikore did not come up:\n" + log);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url, token, password, dir,
    log: () => log,
    api: async (method, path, body) => {
      const res = await fetch(url + path, {
        method,
        headers: { Authorization: `Bearer ${token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
        body: body ? JSON.stringify(body) : undefined,
      });
      const text = await res.text();
      let json = null;
      try { json = JSON.parse(text); } catch (_) { json = text; }
      return { status: res.status, body: json };
    },
    async stop() {
      child.kill("SIGTERM");
      await new Promise((r) => { if (child.exitCode !== null) r(); else { child.on("exit", r); setTimeout(() => { child.kill("SIGKILL"); r(); }, 15000); } });
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

// A browser context on a fresh profile dir (Playwright takes the
// --user-data-dir through launchPersistentContext).
export async function launchBrowser({ viewport = { width: 1440, height: 900 } } = {}) {
  const { chromium } = await import("playwright-core");
  const profile = mkdtempSync(join(tmpdir(), "aikore-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  const close = context.close.bind(context);
  context.close = async () => { await close(); rmSync(profile, { recursive: true, force: true }); };
  return context;
}

export async function login(page, aikore) {
  await page.goto(aikore.url + "/");
  await page.waitForURL(/\/login$/);
  await page.fill('input[name="password"]', aikore.password);
  await Promise.all([page.waitForURL(aikore.url + "/"), page.click('button[type="submit"]')]);
}
