// Shared by the browser tests and the benchmark: start a real aikore on a
// temp data dir, and launch Debian's headless Chromium through playwright-core.
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, existsSync, rmSync, copyFileSync, writeFileSync, chmodSync } from "node:fs";
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

// `units`: unit files to run (name -> text); `files`: files to put in the
// data dir before the start (relative path -> text). With `nginx: true` the
// stock units/nginx.service runs too (Debian's /usr/sbin/nginx; the test
// fails when it is missing) and `publicUrl` is NGINX's port, the one a user
// opens. `blueprints` ({ id: script }) are written as custom blueprints.
// `env.PUID`/`env.PGID` run the instances as that user (the container's way).
export async function startAikore({
  password = "correct horse battery", env = {}, units = {}, files = {}, nginx = false, blueprints = {},
} = {}) {
  const dir = mkdtempSync(join(tmpdir(), "aikore-e2e-"));
  // With PUID the instance user must reach its dir under <dir>/data: mkdtemp
  // makes <dir> root's 0700 (a container's /config has no such parent). And
  // a PATH through /root (pyenv, cargo) is unreachable for that user.
  const puidEnv = env.PUID ? { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" } : {};
  if (env.PUID) chmodSync(dir, 0o755);
  mkdirSync(join(dir, "units"));
  for (const [name, text] of Object.entries(units)) writeFileSync(join(dir, "units", name), text);
  for (const [rel, text] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, "data", rel)), { recursive: true });
    writeFileSync(join(dir, "data", rel), text, { mode: 0o755 });
  }
  if (nginx) {
    if (!existsSync("/usr/sbin/nginx")) throw new Error("this test needs NGINX: apt-get install -y nginx");
    copyFileSync(join(REPO, "units/nginx.service"), join(dir, "units/nginx.service"));
  }
  if (Object.keys(blueprints).length) {
    mkdirSync(join(dir, "data/blueprints"), { recursive: true });
    for (const [id, script] of Object.entries(blueprints)) {
      writeFileSync(join(dir, "data/blueprints", id + ".sh"), script);
      chmodSync(join(dir, "data/blueprints", id + ".sh"), 0o755);
    }
  }
  const port = await freePort();
  const publicPort = await freePort();
  const appsPort = await freePort();
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
      // NGINX's ports (used when nginx.service is among the units).
      AIKORE_PORT: String(publicPort),
      AIKORE_APPS_PORT: String(appsPort),
      ...puidEnv,
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
  const api = async (method, path, body) => {
    const res = await fetch(url + path, {
      method,
      headers: { Authorization: `Bearer ${token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    let json = null;
    try { json = JSON.parse(text); } catch (_) { json = text; }
    return { status: res.status, body: json };
  };
  const publicUrl = `http://127.0.0.1:${publicPort}`;
  if (nginx) {
    // NGINX started (not skipped by its ConditionPathExists) and proxying.
    for (;;) {
      const u = await api("GET", "/api/v1/units/nginx");
      let through = false;
      try { through = (await fetch(publicUrl + "/healthz")).ok; } catch (_) { /* not listening yet */ }
      if (u.status === 200 && u.body.status === "started" && through) break;
      if (child.exitCode !== null || Date.now() > deadline) {
        throw new Error(`NGINX did not come up (unit: ${JSON.stringify(u.body)}):\n` + log);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return {
    url, token, password, dir, publicUrl, dataDir: join(dir, "data"),
    log: () => log,
    api,
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

// Logs in through `base` (the API port by default, NGINX's with publicUrl).
export async function login(page, aikore, base = aikore.url) {
  await page.goto(base + "/");
  await page.waitForURL(/\/login$/);
  await page.fill('input[name="password"]', aikore.password);
  await Promise.all([page.waitForURL(base + "/"), page.click('button[type="submit"]')]);
}
