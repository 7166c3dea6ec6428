// The deployed path, as a user meets it (issue 11): the real daemon with the
// stock units/nginx.service (Debian's /usr/sbin/nginx), and everything —
// login, live status, View, Open, logs, the terminal, the script editor,
// settings, trash and purge — driven through NGINX's port, never the API's.
// App links are followed as the dashboard and API give them, never built here.
// The whole suite runs twice: as a checkout runs (no PUID), and as the
// container runs (PUID=PGID=65534: every instance and its terminal as that user).
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { startAikore, launchBrowser, login, REPO } from "./helpers.mjs";

const SHOTS = process.env.AIKORE_SCREENSHOTS || join(REPO, "target", "screenshots");
const NAME = "deployed1";
const FAILING = "quickfail";
// A custom blueprint that exits 1 within milliseconds of its start.
const FAIL_FAST = `#!/usr/bin/env bash
### AIKORE-METADATA-START ###
# aikore.name = Fail fast
# aikore.category = Testing
# aikore.description = Exits 1 at once (the dashboard must show the error live).
# aikore.venv_type = none
# aikore.proxy = subpath
### AIKORE-METADATA-END ###
echo "fail-fast: giving up at once"
exit 1
`;
let aikore, context, page, base, mode;
let dialogs = [];
const marker = () => randomBytes(4).toString("hex");

async function shot(name) {
  await page.screenshot({ path: join(SHOTS, name.replace("deployed-", "deployed-" + mode.shots) + ".png") });
}

const row = (name) => `tr[data-name="${name}"]`;
const badge = (name, status) => `${row(name)} .badge.st-${status}`;

async function menuAction(name, act) {
  await page.click(`${row(name)} details.menu summary`);
  await page.click(`${row(name)} .menu-items [data-act="${act}"]`);
}

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

const MODES = [
  { name: "as a checkout runs it (no PUID)", env: {}, uid: process.getuid(), shots: "" },
  {
    name: "as the container runs it (PUID=PGID=65534)",
    env: { PUID: "65534", PGID: "65534" },
    uid: 65534,
    shots: "puid-",
  },
];

for (const m of MODES) {
  describe(m.name, () => {
    before(async () => {
      mode = m;
      dialogs = [];
      mkdirSync(SHOTS, { recursive: true });
      aikore = await startAikore({ nginx: true, blueprints: { "fail-fast": FAIL_FAST }, env: m.env });
      base = aikore.publicUrl;
      context = await launchBrowser();
      page = await context.newPage();
      page.on("dialog", (d) => { dialogs.push(d.message()); d.accept(); });
    });

    after(async () => {
      if (context) await context.close();
      if (aikore) await aikore.stop();
    });

    test("NGINX's port asks for a login, then serves the live dashboard", async () => {
      const res = await fetch(base + "/", { redirect: "manual" });
      assert.equal(res.status, 303, "the dashboard behind NGINX requires a session");
      assert.equal(res.headers.get("location"), "/login");
      await login(page, aikore, base);
      await page.waitForSelector("#live.on");
      assert.equal(new URL(page.url()).port, new URL(base).port, "still on NGINX's port");
      // Nothing selected yet: the panes say what to do instead of being blank.
      assert.match(await page.textContent("#tab-logs .empty-pane"), /Pick an instance/);
      assert.ok(await page.isVisible("#tab-logs .empty-pane"));
      await shot("deployed-empty");
    });

    test("create and start an instance; its status and port arrive live", async () => {
      const navigations = [];
      const onNav = (f) => { if (f === page.mainFrame()) navigations.push(f.url()); };
      page.on("framenavigated", onNav);
      await page.fill('[form="create-form"][name="name"]', NAME);
      await page.selectOption('[form="create-form"][name="blueprint"]', "test-http");
      await page.check('[form="create-form"][name="start"]');
      await page.click('button[form="create-form"]');
      await page.waitForSelector(badge(NAME, "started"), { timeout: 30000 });
      page.off("framenavigated", onNav);
      assert.deepEqual(navigations, [], "no page load");
      const api = await aikore.api("GET", `/api/v1/instances/${NAME}`);
      assert.ok(api.body.current_port > 0);
      await page.waitForFunction(([n, p]) => document.querySelector(`tr[data-name="${n}"] [data-role="port"]`).textContent === ":" + p,
        [NAME, api.body.current_port]);
      await shot("deployed-dashboard");
    });

    test("View shows the app inside the dashboard", async () => {
      await page.click(`${row(NAME)} [data-act="view"]`);
      const frame = page.frameLocator("#view");
      await frame.locator("body").getByText("Directory listing", { exact: false }).waitFor({ timeout: 20000 });
      const src = await page.getAttribute("#view", "src");
      const api = await aikore.api("GET", `/api/v1/instances/${NAME}`);
      assert.equal(src, api.body.url, "the frame shows the URL the API gives");
      await shot("deployed-view");
    });

    test("Open follows the link the dashboard gives, through NGINX and the login", async () => {
      const href = await page.getAttribute(`${row(NAME)} a[data-act="open"]`, "href");
      const api = await aikore.api("GET", `/api/v1/instances/${NAME}`);
      assert.equal(href, api.body.url, "the link is the API's url field");
      const [tab] = await Promise.all([context.waitForEvent("page"), page.click(`${row(NAME)} a[data-act="open"]`)]);
      await tab.waitForLoadState();
      assert.match(await tab.textContent("body"), /Directory listing/);
      assert.equal(tab.url(), new URL(href, base).href);
      // The login gate's fast path: each pass through aikore's gate hands the
      // browser a signed cookie for this app alone (2 s); a reload within its
      // life reaches the app with no new one, NGINX having checked it alone.
      let fast = false;
      for (let i = 0; i < 10 && !fast; i++) {
        const resp = await tab.reload();
        assert.match(await tab.textContent("body"), /Directory listing/);
        const setCookie = (resp && (await resp.headerValue("set-cookie"))) || "";
        if (setCookie.includes("aikore_gate=")) {
          assert.match(setCookie, new RegExp(`aikore_gate=[0-9]+\\.[A-Za-z0-9_-]{22}; Path=/app/${NAME}/; HttpOnly`));
        } else {
          fast = resp !== null;
        }
      }
      assert.ok(fast, "no reload within the gate cookie's life took the fast path");
      await tab.close();
      // Without the session cookie the same URL is refused.
      const anon = await fetch(new URL(href, base), { redirect: "manual", headers: { Accept: "text/html" } });
      assert.ok([302, 303, 401].includes(anon.status), `an anonymous request got ${anon.status}`);
    });

    test("the log pane follows what the instance prints", async () => {
      await menuAction(NAME, "logs");
      await page.waitForFunction((n) => document.getElementById("log").textContent.includes("INSTANCE_NAME=" + n), NAME, { timeout: 20000 });
      await shot("deployed-logs");
    });

    test("the terminal through NGINX runs a typed command and shows its output", async () => {
      await menuAction(NAME, "terminal");
      await page.waitForFunction(() => window.__aikoreTerm);
      const m = marker();
      // The shell computes part of the line, so the output differs from the echo
      // of what was typed; `id -u` says whose shell it is (the instance user's).
      const expected = `hello-${m}-42 uid=${mode.uid}`;
      await page.click("#term");
      let text = "";
      const deadline = Date.now() + 20000;
      let typed = false;
      while (Date.now() < deadline) {
        text = await termText();
        // The first output (the prompt) means the socket is open and keys reach the shell.
        if (!typed && text.trim()) { await page.keyboard.type(`echo hello-${m}-$((6*7)) uid=$(id -u)\n`); typed = true; }
        if (text.split("\n").some((l) => l.trim() === expected)) break;
        assert.ok(!text.includes("session closed"), `the terminal session closed:\n${text}`);
        await page.waitForTimeout(100);
      }
      assert.ok(text.split("\n").some((l) => l.trim() === expected), `no line "${expected}" in the terminal:\n${text}`);
      await shot("deployed-terminal");
    });

    test("the script editor saves, and a reload shows the saved script", async () => {
      await menuAction(NAME, "script");
      await page.waitForFunction(() => document.getElementById("script").value.includes("http.server"));
      const m = marker();
      const script = await page.inputValue("#script");
      await page.fill("#script", script.replace("set -euo pipefail\n", `set -euo pipefail\n# edited-${m}\n`));
      await page.waitForSelector("#script-state:has-text('unsaved')");
      await page.click("#script-save");
      await page.waitForSelector("#script-state:text-is('saved'), #script-state:has-text('restart to apply')");
      await page.reload();
      await page.waitForSelector("#live.on");
      await page.waitForFunction((mk) => document.getElementById("script").value.includes("# edited-" + mk), m);
      const api = await aikore.api("GET", `/api/v1/instances/${NAME}/script`);
      assert.ok(api.body.content.includes(`# edited-${m}`));
      await shot("deployed-script");
    });

    test("settings: environment, persistent mode and rename, with a green notice", async () => {
      await menuAction(NAME, "settings");
      await page.waitForSelector("#settings[open]");
      assert.equal(await page.inputValue('#settings-form [name="name"]'), NAME);
      await page.fill("#env-rows .env-row:last-child .env-key", "EXTRA_ARGS");
      await page.fill("#env-rows .env-row:last-child .env-value", "--listen --port 1");
      await page.click("#env-add");
      await page.fill("#env-rows .env-row:last-child .env-key", "COMFYUI_REF");
      await page.fill("#env-rows .env-row:last-child .env-value", "v0.3.43");
      await page.check('#settings-form [name="persistent_mode"]');
      await shot("deployed-settings");
      await page.click('#settings-form button[value="save"]');
      await page.waitForSelector("#settings", { state: "hidden" });
      await page.waitForSelector("#js-notice:not([hidden])");
      assert.match(await page.textContent("#js-notice"), new RegExp(`Saved ${NAME}: restart it to apply`));
      assert.ok(await page.isHidden("#js-error"), "a success is not shown as an error");
      let api = await aikore.api("GET", `/api/v1/instances/${NAME}`);
      assert.deepEqual(api.body.environment, { COMFYUI_REF: "v0.3.43", EXTRA_ARGS: "--listen --port 1" });
      assert.equal(api.body.persistent_mode, true);
      await shot("deployed-notice");

      // Back to a plain app, one variable removed, and a new name (Save & restart: it runs).
      await menuAction(NAME, "settings");
      await page.waitForSelector("#settings[open]");
      assert.equal(await page.isChecked('#settings-form [name="persistent_mode"]'), true);
      await page.uncheck('#settings-form [name="persistent_mode"]');
      const keys = await page.$$eval("#env-rows .env-key", (els) => els.map((e) => e.value));
      assert.deepEqual([...keys].sort(), ["COMFYUI_REF", "EXTRA_ARGS"]);
      const drop = keys.indexOf("COMFYUI_REF") + 1;
      await page.click(`#env-rows .env-row:nth-child(${drop}) button`);
      await page.fill('#settings-form [name="name"]', NAME + "b");
      await page.click('#settings-form button[value="restart"]');
      await page.waitForSelector("#settings", { state: "hidden" });
      await page.waitForSelector(badge(NAME + "b", "started"), { timeout: 30000 });
      assert.equal(await page.locator(row(NAME)).count(), 0);
      api = await aikore.api("GET", `/api/v1/instances/${NAME}b`);
      assert.deepEqual(api.body.environment, { EXTRA_ARGS: "--listen --port 1" });
      assert.equal(api.body.persistent_mode, false);
      assert.equal(await page.textContent("#selected"), NAME + "b", "the selection follows the rename");
      // Back to the original name for the tests below.
      await menuAction(NAME + "b", "settings");
      await page.fill('#settings-form [name="name"]', NAME);
      await page.click('#settings-form button[value="restart"]');
      await page.waitForSelector(badge(NAME, "started"), { timeout: 30000 });
    });

    test("an instance failing within milliseconds of its start shows error and why, without a reload", async () => {
      const navigations = [];
      const onNav = (f) => { if (f === page.mainFrame()) navigations.push(f.url()); };
      page.on("framenavigated", onNav);
      // The row fetch answers late, as on a busy link: its snapshot (still
      // `starting`) arrives after the `error` event. The page must keep the newer.
      const slow = async (route) => {
        const response = await route.fetch();
        await new Promise((r) => setTimeout(r, 600));
        await route.fulfill({ response });
      };
      await page.route("**/partials/instances", slow);
      await page.fill('[form="create-form"][name="name"]', FAILING);
      await page.selectOption('[form="create-form"][name="blueprint"]', "fail-fast");
      await page.check('[form="create-form"][name="start"]');
      await page.click('button[form="create-form"]');
      await page.waitForSelector(badge(FAILING, "error"), { timeout: 20000 });
      page.off("framenavigated", onNav);
      assert.match(await page.textContent(`${row(FAILING)} [data-role="detail"]`), /exited with code 1/);
      await page.unroute("**/partials/instances", slow);
      assert.deepEqual(navigations, [], "no page load");
      // And it stays there: no stale `starting` from a fetch that was in flight.
      await page.waitForTimeout(1500);
      assert.equal(await page.getAttribute(row(FAILING), "data-status"), "error");
      const api = await aikore.api("GET", `/api/v1/instances/${FAILING}`);
      assert.equal(api.body.status, "error");
      assert.equal(Number(await page.getAttribute(row(FAILING), "data-seq")), api.body.seq, "the row shows the latest state");
      await shot("deployed-error");
    });

    test("stop, delete to the trash can, then purge for good", async () => {
      await page.click(`${row(NAME)} [data-act="stop"]`);
      await page.waitForSelector(badge(NAME, "stopped"), { timeout: 20000 });
      await menuAction(NAME, "delete");
      await page.waitForSelector(row(NAME), { state: "detached" });
      await page.click("#trash summary");
      const entry = `#trash-body li:has-text("${NAME}")`;
      await page.waitForSelector(entry);
      await shot("deployed-trash");
      let trash = await aikore.api("GET", "/api/v1/trashcan");
      assert.ok(trash.body.some((e) => e.name === NAME));
      await page.click(`${entry} [data-act="purge"]`);
      await page.waitForSelector(entry, { state: "detached" });
      await page.waitForSelector("#js-notice:not([hidden])");
      trash = await aikore.api("GET", "/api/v1/trashcan");
      assert.ok(!trash.body.some((e) => e.name === NAME), "purged from the trash can");
      assert.ok(dialogs.some((d) => d.startsWith(`Delete ${NAME} for good?`)), dialogs.join("\n"));
    });
  });
}
