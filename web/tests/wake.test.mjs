// Issue 16: idle stop and wake in a real browser. An instance with
// IdleStopSec=2 behind the real NGINX goes `idle-stopped` (the dashboard
// shows it live), and the next visit to its app URL shows the waking page,
// which turns into the app by itself: the test never reloads.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { startAikore, launchBrowser, freePort, REPO } from "./helpers.mjs";

let aikore, context, dash, apps;

async function until(what, fn, ms = 60000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try { last = await fn(); if (last) return last; } catch (e) { last = e; }
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.fail(`${what} did not happen: ${last}\n${aikore ? aikore.log().slice(-3000) : ""}`);
}

before(async () => {
  assert.ok(existsSync("/usr/sbin/nginx"), "NGINX is needed for this test: apt-get install nginx");
  const port = await freePort();
  const appsPort = await freePort();
  dash = `http://127.0.0.1:${port}`;
  apps = `http://127.0.0.1:${appsPort}`;
  const blueprint = [
    "#!/usr/bin/env bash",
    "### AIKORE-METADATA-START ###",
    "# aikore.name = Queue",
    "# aikore.drain = comfyui",
    "### AIKORE-METADATA-END ###",
    `exec python3 ${join(REPO, "tests/fixtures/queue_app.py")} "$WEBUI_PORT"`,
    "",
  ].join("\n");
  aikore = await startAikore({
    env: { AIKORE_PORT: String(port), AIKORE_APPS_PORT: String(appsPort) },
    units: { "nginx.service": readFileSync(join(REPO, "units/nginx.service"), "utf8") },
    files: { "blueprints/queue.sh": blueprint },
  });
  await until("NGINX serving the dashboard", async () => (await fetch(dash + "/healthz")).ok);
  const created = await aikore.api("POST", "/api/v1/instances", { name: "w", blueprint: "queue" });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  // IdleStopSec= is a hand edit of the unit file (docs/operations.md).
  const unitFile = join(aikore.dataDir, "units/w.instance");
  writeFileSync(unitFile, readFileSync(unitFile, "utf8").replace("[Instance]\n", "[Instance]\nIdleStopSec=2\n"));
  assert.equal((await aikore.api("POST", "/api/v1/reload")).status, 200);
  assert.equal((await aikore.api("POST", "/api/v1/instances/w/start")).status, 200);
  await until("w started", async () => (await aikore.api("GET", "/api/v1/instances/w")).body.status === "started");
  context = await launchBrowser();
});

after(async () => {
  if (context) await context.close();
  if (aikore) await aikore.stop();
});

test("an idle instance is shown idle-stopped and the next visit wakes it without a reload", async () => {
  const app = await context.newPage();
  await app.goto(`${apps}/app/w/`);
  await app.waitForURL(/\/login\?next=/);
  await app.fill('input[name="password"]', aikore.password);
  await Promise.all([
    app.waitForURL((u) => u.toString().startsWith(apps + "/app/w/"), { waitUntil: "commit" }),
    app.click('button[type="submit"]'),
  ]);
  await until("the app page", async () => (await app.title()) === "queue app");

  // The dashboard, left open, follows the instance live (SSE and its overlay events).
  const board = await context.newPage();
  await board.goto(dash + "/");
  const badge = board.locator('tr[data-name="w"] [data-role="badge"]');
  await until("the dashboard's idle-stopped badge", async () => (await badge.textContent()) === "idle-stopped");
  const api = (await aikore.api("GET", "/api/v1/instances/w")).body;
  assert.equal(api.status, "idle-stopped", JSON.stringify(api));

  // The next visit: the waking page first, then the app by itself.
  const response = await app.goto(`${apps}/app/w/`);
  assert.equal(response.status(), 503);
  assert.match(await app.title(), /^Waking w/);
  await until("the waking page turning into the app", async () => (await app.title()) === "queue app");
  assert.match(await app.textContent("h1"), /queue app ready/);
  await until("the dashboard's started badge", async () => (await badge.textContent()) === "started");
});
