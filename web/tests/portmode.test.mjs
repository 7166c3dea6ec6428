// Issue 12: a `port`-mode instance (`# aikore.proxy = port`) is reached at the
// root of its own pool port, where NGINX listens with the apps origin's gate.
// In headless Chromium with no cookies: the instance's link leads through the
// dashboard's login and the handshake back to that port, and the app answers.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { startAikore, launchBrowser, REPO } from "./helpers.mjs";

const SHOTS = process.env.AIKORE_SCREENSHOTS || join(REPO, "target", "screenshots");
// Serves its instance dir at the root of its port: it needs no prefix.
const ROOT_APP = `#!/usr/bin/env bash
### AIKORE-METADATA-START ###
# aikore.name = Root app
# aikore.category = Testing
# aikore.description = Serves its dir at / (port mode).
# aikore.venv_type = none
# aikore.proxy = port
### AIKORE-METADATA-END ###
echo "port-mode-marker" > marker.txt
exec python3 -m http.server "$WEBUI_PORT" --bind "$WEBUI_HOST"
`;
let aikore, context, page;

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  aikore = await startAikore({ nginx: true, blueprints: { "root-app": ROOT_APP } });
  context = await launchBrowser();
  page = await context.newPage();
});

after(async () => {
  if (context) await context.close();
  if (aikore) await aikore.stop();
});

test("a port-mode instance opens on its own port through the login and the handshake", async () => {
  const created = await aikore.api("POST", "/api/v1/instances", { name: "rooted", blueprint: "root-app", start: true });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  let view;
  for (const deadline = Date.now() + 30000; Date.now() < deadline;) {
    view = (await aikore.api("GET", "/api/v1/instances/rooted")).body;
    if (view.status === "started") break;
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.equal(view.status, "started", JSON.stringify(view));
  const own = `http://127.0.0.1:${view.direct_port}`;
  assert.equal(view.url, own + "/", "the API links to the instance's own port");
  // Without credentials NGINX's server there refuses: no app behind a bare port.
  const anon = await fetch(own + "/marker.txt");
  assert.equal(anon.status, 401);

  await page.goto(view.url + "marker.txt");
  await page.waitForURL(/\/login\?next=/);
  assert.ok(page.url().startsWith(aikore.publicUrl + "/login"), page.url());
  await page.fill('input[name="password"]', aikore.password);
  await Promise.all([
    page.waitForURL(own + "/marker.txt"),
    page.click('button[type="submit"]'),
  ]);
  assert.match(await page.textContent("body"), /port-mode-marker/);
  const names = (await context.cookies()).map((c) => c.name).filter((n) => n.startsWith("aikore_")).sort();
  assert.deepEqual(names, ["aikore_app", "aikore_session"]);
  // The same cookie opens the root too (one login for every port of the host).
  await page.goto(view.url);
  await page.waitForSelector("text=Directory listing");
  await page.screenshot({ path: join(SHOTS, "portmode-app.png") });

  // The dashboard's View frames it there (its CSP names the instance's origin).
  await page.goto(aikore.publicUrl + "/");
  await page.click('tr[data-name="rooted"] [data-act="view"]');
  assert.equal(await page.getAttribute("#view", "src"), view.url);
  for (const deadline = Date.now() + 20000; ;) {
    const f = page.frames().find((fr) => fr.url().startsWith(own + "/"));
    if (f && (await f.content()).includes("Directory listing")) break;
    assert.ok(Date.now() < deadline, "the View frame never showed the app");
    await new Promise((r) => setTimeout(r, 200));
  }
  await page.screenshot({ path: join(SHOTS, "portmode-view.png") });
});
