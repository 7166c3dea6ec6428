// Issue 12: a hostile app page, served at the apps origin through the real
// NGINX (stock units/nginx.service), opened by a logged-in admin in headless
// Chromium, attacks the dashboard's origin: reads `/` and the API, posts
// JSON and forms, opens the terminal's WebSocket, frames the dashboard. All
// must fail, and the app must never receive aikore's cookies (it logs the
// headers of every request it gets).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { startAikore, launchBrowser, freePort, REPO, WEB_DIR } from "./helpers.mjs";

let aikore, context, page, dash, apps, requestLog;

async function until(what, fn, ms = 30000) {
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
  const app = join(WEB_DIR, "tests/fixtures/hostile_app.py");
  const blueprint = [
    "#!/usr/bin/env bash",
    "### AIKORE-METADATA-START ###",
    "# aikore.name = Hostile app",
    "# aikore.category = Testing",
    "### AIKORE-METADATA-END ###",
    `exec python3 ${app} --port "$WEBUI_PORT" --log "$PWD/requests.jsonl"`,
    "",
  ].join("\n");
  aikore = await startAikore({
    env: { AIKORE_PORT: String(port), AIKORE_APPS_PORT: String(appsPort) },
    units: { "nginx.service": readFileSync(join(REPO, "units/nginx.service"), "utf8") },
    files: { "blueprints/hostile.sh": blueprint },
  });
  await until("NGINX serving the dashboard", async () => (await fetch(dash + "/healthz")).ok);
  const created = await aikore.api("POST", "/api/v1/instances", { name: "t2", blueprint: "hostile", start: true });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  assert.equal(created.body.url, `${apps}/app/t2/`, "the API links to the apps origin");
  requestLog = join(aikore.dir, "data/instances/t2/requests.jsonl");
  await until("the app served through NGINX", async () => {
    const r = await fetch(apps + "/app/t2/", { headers: { Authorization: `Bearer ${aikore.token}` } });
    return r.status === 200;
  });
  context = await launchBrowser();
  page = await context.newPage();
});

after(async () => {
  if (context) await context.close();
  if (aikore) await aikore.stop();
});

test("an admin opening an app goes through the login and the handshake to the apps origin", async () => {
  const target = `${apps}/app/t2/evil.html?dash=${encodeURIComponent(dash)}`;
  await page.goto(target);
  await page.waitForURL(/\/login\?next=/);
  assert.ok(page.url().startsWith(dash + "/login"), page.url());
  await page.fill('input[name="password"]', aikore.password);
  // "commit": the page's own frames (one is refused by the dashboard) must not hold up the wait.
  await Promise.all([
    page.waitForURL((u) => u.toString().startsWith(apps + "/app/t2/evil.html"), { waitUntil: "commit" }),
    page.click('button[type="submit"]'),
  ]);
  const cookies = await context.cookies();
  const names = cookies.map((c) => c.name).sort();
  // (and maybe the gate's fast-path cookie, aikore_gate: it lives 2 s, on the app's path only)
  assert.deepEqual(names.filter((n) => n.startsWith("aikore_") && n !== "aikore_gate"), ["aikore_app", "aikore_session"]);
  for (const c of cookies.filter((c) => c.name.startsWith("aikore_"))) assert.equal(c.httpOnly, true, c.name);
  for (const c of cookies.filter((c) => c.name === "aikore_gate")) assert.equal(c.path, "/app/t2/", JSON.stringify(c));
});

test("the hostile page can neither read the dashboard nor act as the admin", async () => {
  await page.waitForFunction(() => window.__results, null, { timeout: 30000 });
  const r = await page.evaluate(() => window.__results);
  for (const [k, v] of Object.entries(r)) console.log(`# ${k}: ${JSON.stringify(v).slice(0, 160)}`);
  for (const key of ["readDashboard", "readInstances", "readSystem"]) {
    assert.equal(r[key].ok, false, `${key} must fail: ${JSON.stringify(r[key]).slice(0, 300)}`);
  }
  assert.equal(r.websocket.ok, false, `the terminal must not open: ${JSON.stringify(r.websocket)}`);
  assert.equal(r.frameDashboard.ok, false, `the dashboard must not be readable in a frame: ${JSON.stringify(r.frameDashboard).slice(0, 300)}`);
  // The blind writes were sent; the server refused them: nothing was created.
  const list = await aikore.api("GET", "/api/v1/instances");
  assert.deepEqual(list.body.map((i) => i.name), ["t2"]);
  assert.equal(r.cookieSeenByScript.includes("aikore_"), false, r.cookieSeenByScript);
  assert.equal(r.echo.ok, true, JSON.stringify(r.echo));
  assert.equal(String(r.echo.value.cookie || "").includes("aikore_"), false, JSON.stringify(r.echo.value));
});

test("the app never received aikore's cookies or bearer", async () => {
  const lines = readFileSync(requestLog, "utf8").trim().split("\n").map((l) => JSON.parse(l));
  assert.ok(lines.some((l) => l.path.startsWith("/evil.html")), "the page itself was served by the app");
  assert.ok(lines.some((l) => l.path.startsWith("/echo")));
  for (const l of lines) {
    assert.equal(String(l.headers.cookie || "").includes("aikore_"), false, JSON.stringify(l));
    assert.equal(l.headers.authorization, undefined, JSON.stringify(l));
  }
});

test("the dashboard's View frame shows the app from the apps origin, sandboxed", async () => {
  await page.goto(dash + "/");
  await page.waitForSelector('tr[data-name="t2"]');
  const frame = page.locator("#view");
  const sandbox = await frame.getAttribute("sandbox");
  for (const token of ["allow-scripts", "allow-forms", "allow-same-origin"]) assert.ok(sandbox.includes(token), sandbox);
  assert.equal(sandbox.includes("allow-top-navigation"), false, sandbox);
  await page.click('tr[data-name="t2"] [data-act="view"]');
  await until("the View frame on the app", async () => (await frame.getAttribute("src")) === `${apps}/app/t2/`);
  await until("the app answering inside the frame", async () => {
    const f = page.frames().find((f) => f.url().startsWith(apps + "/app/t2/"));
    return f && (await f.content()).includes("ok");
  });
  // The dashboard, framed by a page of the apps origin, refuses to render.
  await page.goto(`${apps}/app/t2/evil.html?dash=${encodeURIComponent(dash)}`);
  await page.waitForFunction(() => window.__results, null, { timeout: 30000 });
  const r = await page.evaluate(() => window.__results);
  assert.equal(r.frameDashboard.ok, false);
});
