// End-to-end: a real aikore, headless Chromium, the dashboard as a user
// drives it. Run with `node --test tests/` from web/ (tests/e2e.sh does).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { startAikore, launchBrowser, login, REPO } from "./helpers.mjs";

const SHOTS = process.env.AIKORE_SCREENSHOTS || join(REPO, "target", "screenshots");
const NAME = "web1";
let aikore, context, page;
const dialogs = [];

async function shot(name) {
  const path = join(SHOTS, name + ".png");
  await page.screenshot({ path });
  return path;
}

const badge = (name, status) => `tr[data-name="${name}"] .badge.st-${status}`;

async function termText() {
  return page.evaluate(() => {
    const t = window.__aikoreTerm;
    if (!t) return "";
    const buf = t.buffer.active;
    const lines = [];
    for (let i = 0; i < buf.length; i++) lines.push(buf.getLine(i).translateToString(true));
    return lines.join("\n");
  });
}

async function waitTerm(predicate, what) {
  const deadline = Date.now() + 15000;
  let text = "";
  while (Date.now() < deadline) {
    text = await termText();
    if (predicate(text)) return text;
    await page.waitForTimeout(100);
  }
  assert.fail(`terminal never showed ${what}; it shows:\n${text}`);
}

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  console.log(`# screenshots: ${SHOTS}`);
  aikore = await startAikore();
  context = await launchBrowser();
  page = await context.newPage();
  page.on("dialog", (d) => { dialogs.push(d.message()); d.accept(); });
});

after(async () => {
  if (context) await context.close();
  if (aikore) await aikore.stop();
});

test("the dashboard requires login", async () => {
  const res = await fetch(aikore.url + "/", { redirect: "manual" });
  assert.equal(res.status, 303);
  assert.equal(res.headers.get("location"), "/login");
  assert.match(res.headers.get("content-security-policy"), /script-src 'self';/);
  await page.goto(aikore.url + "/login");
  await page.fill('input[name="password"]', "wrong");
  await page.click('button[type="submit"]');
  await page.waitForSelector(".flash.error");
  await shot("login");
  await login(page, aikore);
  await page.waitForSelector("#instances");
  await page.waitForSelector("#live.on");
});

test("a hostile instance name is refused and never rendered as HTML", async () => {
  const hostile = "<img src=x onerror=alert(1)>";
  const out = await page.evaluate(async (name) => {
    const csrf = document.querySelector('meta[name="csrf-token"]').content;
    const r = await fetch("/api/v1/instances", {
      method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({ name, blueprint: "test-http" }),
    });
    return r.status;
  }, hostile);
  assert.equal(out, 400);
  // Through the plain form too (browser validation off): refused, error shown as text.
  await page.fill('[form="create-form"][name="name"]', hostile);
  await page.evaluate(() => { document.getElementById("create-form").noValidate = true; });
  await page.click('button[form="create-form"]');
  await page.waitForSelector("#js-error:not([hidden])");
  assert.match(await page.textContent("#js-error"), /invalid|name/i);
  assert.equal(await page.locator('img[src="x"]').count(), 0);
  assert.equal(dialogs.length, 0);
  await page.fill('[form="create-form"][name="name"]', "");
});

test("state-changing requests need a session and a CSRF token", async () => {
  // No session at all.
  let r = await fetch(aikore.url + "/api/v1/instances", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
  assert.equal(r.status, 401);
  r = await fetch(aikore.url + "/instances", { method: "POST", redirect: "manual", headers: { "Content-Type": "application/x-www-form-urlencoded" }, body: "name=x&blueprint=test-http" });
  assert.equal(r.status, 303);
  assert.equal(r.headers.get("location"), "/login");
  // With the session cookie but no token: header-less fetch and a form without the field.
  const statuses = await page.evaluate(async () => {
    const a = await fetch("/api/v1/instances", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name: "nocsrf", blueprint: "test-http" }) });
    const b = await fetch("/instances", { method: "POST", headers: { "Content-Type": "application/x-www-form-urlencoded" }, body: "name=nocsrf&blueprint=test-http", redirect: "manual" });
    const c = await fetch("/api/v1/instances", { method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": "forged" }, body: JSON.stringify({ name: "nocsrf", blueprint: "test-http" }) });
    return [a.status, b.status, c.status];
  });
  assert.deepEqual(statuses, [403, 403, 403]);
  // A bearer token needs neither.
  const ok = await aikore.api("GET", "/api/v1/instances");
  assert.equal(ok.status, 200);
  assert.ok(!ok.body.some((i) => i.name === "nocsrf"));
});

test("create an instance from the test blueprint and watch it start live", async () => {
  await page.fill('[form="create-form"][name="name"]', NAME);
  await page.selectOption('[form="create-form"][name="blueprint"]', "test-http");
  await page.check('[form="create-form"][name="start"]');
  const navigations = [];
  page.on("framenavigated", (f) => { if (f === page.mainFrame()) navigations.push(f.url()); });
  await page.click('button[form="create-form"]');
  await page.waitForSelector(`tr[data-name="${NAME}"]`);
  await page.waitForSelector(badge(NAME, "started"), { timeout: 20000 });
  assert.deepEqual(navigations, [], "the badge changed without a page load");
});

test("its logs show what the instance printed", async () => {
  await page.click(`tr[data-name="${NAME}"] td.blueprint`);
  await page.click('.tab[data-tab="logs"]');
  await page.waitForFunction((n) => document.getElementById("log").textContent.includes("INSTANCE_NAME=" + n), NAME);
  await shot("dashboard-logs");
});

test("the script editor saves and restarts; HTML in a log line stays text, colours render", async () => {
  await page.click('.tab[data-tab="script"]');
  await page.waitForFunction(() => document.getElementById("script").value.includes("http.server"));
  const script = await page.inputValue("#script");
  const marker = `echo '<b id="pwned">bold</b>' ; printf '\\033[31mred-text\\033[0m plain\\n'\n`;
  await page.fill("#script", script.replace("set -euo pipefail\n", "set -euo pipefail\n" + marker));
  await page.waitForSelector("#script-state:has-text('unsaved')");
  await shot("script-editor");
  await page.click("#script-save-restart");
  await page.waitForSelector("#script-state:has-text('saved')");
  await page.click('.tab[data-tab="logs"]');
  await page.waitForFunction(() => document.getElementById("log").textContent.includes('<b id="pwned">bold</b>'), null, { timeout: 20000 });
  assert.equal(await page.locator("#pwned").count(), 0, "a log line was inserted as HTML");
  const red = await page.locator("#log span.a-f1", { hasText: "red-text" }).count();
  assert.ok(red > 0, "ANSI red was not rendered as a coloured span");
  await page.waitForSelector(badge(NAME, "started"), { timeout: 20000 });
});

test("the terminal runs a shell with the instance's environment and follows resizes", async () => {
  await page.click('.tab[data-tab="terminal"]');
  await page.waitForFunction(() => window.__aikoreTerm);
  await page.waitForTimeout(500);
  await page.click("#term");
  await page.keyboard.type("echo $INSTANCE_NAME\n");
  await waitTerm((t) => t.split("\n").some((l) => l.trim() === NAME), `a line "${NAME}"`);
  await shot("terminal");
  const before = await page.evaluate(() => [window.__aikoreTerm.cols, window.__aikoreTerm.rows]);
  await page.setViewportSize({ width: 1100, height: 760 });
  await page.waitForFunction((b) => window.__aikoreTerm.cols !== b[0] || window.__aikoreTerm.rows !== b[1], before);
  await page.waitForTimeout(300);
  const [cols, rows] = await page.evaluate(() => [window.__aikoreTerm.cols, window.__aikoreTerm.rows]);
  await page.keyboard.type("clear; stty size\n");
  await waitTerm((t) => t.includes(`${rows} ${cols}`), `"${rows} ${cols}" from stty size`);
  await page.setViewportSize({ width: 1440, height: 900 });
});

test("stop it, then delete it to the trash can", async () => {
  await page.click(`tr[data-name="${NAME}"] [data-act="stop"]`);
  await page.waitForSelector(badge(NAME, "stopped"), { timeout: 20000 });
  await page.click(`tr[data-name="${NAME}"] details.menu summary`);
  await shot("tools-menu");
  await page.click(`tr[data-name="${NAME}"] [data-act="delete"]`);
  await page.waitForSelector(`tr[data-name="${NAME}"]`, { state: "detached" });
  await page.click("#trash summary");
  await page.waitForSelector(`#trash-body li:has-text("${NAME}")`);
  await shot("trash");
  const listed = await aikore.api("GET", "/api/v1/trashcan");
  assert.ok(listed.body.some((e) => e.name === NAME));
  assert.deepEqual(dialogs, [`Move ${NAME} to the trash can? A running instance is stopped first.`]);
});

test("a failed instance's badge says why in its tooltip, live and after a reload", async () => {
  const net = await import("node:net");
  const holder = net.createServer();
  await new Promise((resolve) => holder.listen(0, "127.0.0.1", resolve));
  const port = holder.address().port;
  try {
    const created = await aikore.api("POST", "/api/v1/instances", { name: "clash", blueprint: "test-http", port });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    await page.reload();
    await page.waitForSelector(badge("clash", "stopped"));
    // Live: the SSE state carries the failure, and app.js puts it on the badge.
    await aikore.api("POST", "/api/v1/instances/clash/start");
    await page.waitForSelector(`${badge("clash", "failed")}[data-failure="port-in-use"]`, { timeout: 20000 });
    const live = await page.getAttribute(badge("clash", "failed"), "title");
    assert.match(live, /^failure: port-in-use\n/);
    assert.ok(live.includes(`port ${port} is held by `) && live.includes(`(pid ${process.pid})`), live);
    await shot("failure-tooltip");
    // Rendered by the server the same way.
    await page.reload();
    const rendered = await page.getAttribute(badge("clash", "failed"), "title");
    assert.equal(rendered, live);
  } finally {
    holder.close();
  }
});
