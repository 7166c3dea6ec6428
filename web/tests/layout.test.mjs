// Layout and first-run details (issue 11): the setup page on a fresh data dir,
// the dashboard at 1280×800 with every action and the whole ⋯ menu inside
// the viewport, and sparklines drawn from the daemon's history at once.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { startAikore, launchBrowser, REPO } from "./helpers.mjs";

const SHOTS = process.env.AIKORE_SCREENSHOTS || join(REPO, "target", "screenshots");
const VIEWPORT = { width: 1280, height: 800 };
const PASSWORD = "first-run password";
let aikore, context, page;

async function shot(name) {
  await page.screenshot({ path: join(SHOTS, name + ".png") });
}

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  // No AIKORE_PASSWORD: the first visit sets one.
  aikore = await startAikore({ password: "" });
  aikore.password = PASSWORD;
  // Enough rows to fill the table: long names, a description, every kind of status.
  const make = [
    { name: "a-rather-long-instance-name-for-layout", blueprint: "test-http", description: "A description long enough to need an ellipsis in the row", start: true },
    { name: "web2", blueprint: "test-http", start: true, environment: { TEST_EXIT_CODE: "3" } },
    { name: "web3", blueprint: "test-http", gpus: "0,1", active_slot: "comfyui" },
    { name: "web4", blueprint: "test-http", port: 65000 },
  ];
  for (const body of make) {
    const r = await aikore.api("POST", "/api/v1/instances", body);
    assert.equal(r.status, 201, JSON.stringify(r.body));
  }
  context = await launchBrowser({ viewport: VIEWPORT });
  page = await context.newPage();
});

after(async () => {
  if (context) await context.close();
  if (aikore) await aikore.stop();
});

const DANGER = "rgb(240, 93, 94)";

test("first run: the setup page, with no field red before it is typed in", async () => {
  await page.goto(aikore.url + "/");
  await page.waitForURL(/\/setup$/);
  const borders = await page.$$eval("input[type=password]", (els) => els.map((e) => getComputedStyle(e).borderTopColor));
  assert.equal(borders.length, 2);
  assert.ok(borders.every((c) => c !== DANGER), `a pristine field is red: ${borders}`);
  await shot("setup");
  await page.fill('input[name="password"]', PASSWORD);
  await page.fill('input[name="confirm"]', PASSWORD);
  await Promise.all([page.waitForURL(aikore.url + "/"), page.click('button[type="submit"]')]);
  await page.waitForSelector("#live.on");
});

// Is `box` wholly inside the viewport and not covered at its centre?
async function reachable(handle, what) {
  const box = await handle.boundingBox();
  assert.ok(box, `${what} is not rendered`);
  assert.ok(box.x >= 0 && box.y >= 0 && box.x + box.width <= VIEWPORT.width && box.y + box.height <= VIEWPORT.height,
    `${what} is outside the ${VIEWPORT.width}×${VIEWPORT.height} viewport: ${JSON.stringify(box)}`);
  const onTop = await handle.evaluate((el) => {
    const r = el.getBoundingClientRect();
    const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
    return !!hit && (hit === el || el.contains(hit));
  });
  assert.ok(onTop, `${what} is covered by something else (or clipped by the table)`);
}

test("at 1280×800 the table fits and every action button is in view", async () => {
  await page.waitForSelector('tr[data-name="web2"] .badge.st-error', { timeout: 20000 });
  await page.waitForSelector('tr[data-name="a-rather-long-instance-name-for-layout"] .badge.st-started', { timeout: 20000 });
  const [scroll, client] = await page.$eval(".table-wrap", (w) => [w.scrollWidth, w.clientWidth]);
  assert.ok(scroll <= client, `the table scrolls sideways at 1280 px (${scroll} > ${client})`);
  const rows = await page.$$("#instance-rows tr[data-name]");
  assert.equal(rows.length, 4);
  for (const tr of rows) {
    const name = await tr.getAttribute("data-name");
    const actions = await tr.$$("td.actions > button:not([hidden]):not(.save), td.actions > a, td.actions > details > summary");
    assert.ok(actions.length >= 5, `${name}: only ${actions.length} actions`);
    for (const a of actions) await reachable(a, `${name}'s ${(await a.textContent()).trim()} button`);
  }
  await shot("layout-1280");
});

test("at 1280×800 the whole ⋯ menu of every row opens inside the viewport, never clipped", async () => {
  const names = await page.$$eval("#instance-rows tr[data-name]", (trs) => trs.map((tr) => tr.dataset.name));
  const open = async (name) => {
    await page.click(`tr[data-name="${name}"] details.menu summary`);
    await page.waitForSelector(`tr[data-name="${name}"].menu-open`);
    return page.$(`tr[data-name="${name}"] .menu-items`);
  };
  const close = async (name) => {
    await page.keyboard.press("Escape");
    await page.waitForSelector(`tr[data-name="${name}"] details.menu:not([open])`, { state: "attached" });
  };
  for (const name of names) {
    const menu = await open(name);
    assert.equal(await menu.evaluate((el) => getComputedStyle(el).position), "fixed");
    await reachable(menu, `${name}'s menu`);
    for (const item of await menu.$$("button, label")) await reachable(item, `${name}'s menu item ${(await item.textContent()).trim()}`);
    if (name === "web2") await shot("layout-menu-1280");
    await close(name);
  }
  // Near the bottom of the window the menu opens upwards, still whole.
  await page.setViewportSize({ width: VIEWPORT.width, height: 420 });
  const last = names[names.length - 1];
  const menu = await open(last);
  await shot("layout-menu-short-window");
  const box = await menu.boundingBox();
  assert.ok(box.y >= 0 && box.y + box.height <= 420, `menu outside a 420 px high window: ${JSON.stringify(box)}`);
  await close(last);
  await page.setViewportSize(VIEWPORT);
});

test("the Slot column explains itself", async () => {
  const title = await page.getAttribute("#instances thead th:has-text('Slot')", "title");
  assert.match(title, /comfyui/i);
  assert.match(title, /\/comfyui\//);
});

test("a dirty row's Save button is reachable too", async () => {
  const tr = page.locator('tr[data-name="web4"]');
  await tr.locator('[name="port"]').fill("65001");
  const save = await tr.locator('[data-act="save"]').elementHandle();
  await reachable(save, "web4's Save button");
  await tr.locator('[data-act="save"]').click();
  await page.waitForSelector("#js-notice:not([hidden])");
  assert.match(await page.textContent("#js-notice"), /Saved web4/);
  assert.ok(await page.isHidden("#js-error"));
});

test("starting shows the run's port from the live events alone", async () => {
  const tr = 'tr[data-name="web4"]';
  assert.equal(await page.textContent(`${tr} [data-role="port"]`), "", "web4 never ran: no current port");
  let fetches = 0;
  const count = (req) => { if (req.url().includes("/partials/instances")) fetches += 1; };
  page.on("request", count);
  await page.click(`${tr} [data-act="start"]`);
  await page.waitForSelector(`${tr} .badge.st-started`, { timeout: 20000 });
  await page.waitForFunction((sel) => document.querySelector(sel).textContent === ":65001", `${tr} [data-role="port"]`);
  page.off("request", count);
  assert.equal(fetches, 0, "the port came with the state events, not a re-read of the rows");
  await page.click(`${tr} [data-act="stop"]`);
  await page.waitForSelector(`${tr} .badge.st-stopped`, { timeout: 20000 });
});

test("with nothing selected the panes explain themselves; a stopped instance's View says why it is empty", async () => {
  for (const tab of ["logs", "terminal", "script", "view"]) {
    await page.click(`.tab[data-tab="${tab}"]`);
    const pane = page.locator(`#tab-${tab} .empty-pane`);
    assert.ok(await pane.isVisible(), `the ${tab} tab shows no hint`);
    assert.match(await pane.textContent(), /Pick an instance/);
  }
  await shot("empty-view");
  await page.click('tr[data-name="web3"] td.blueprint');
  assert.ok(await page.isHidden("#tab-view .empty-pane"));
  assert.match(await page.textContent("#view-msg"), /web3 is stopped: start it/);
  assert.ok(await page.isHidden("#view"));
});

test("sparklines draw the daemon's recent history as soon as the page loads", async () => {
  // The daemon samples every 5 s from its start; wait for a few samples.
  const deadline = Date.now() + 30000;
  let history = [];
  while (Date.now() < deadline) {
    const r = await aikore.api("GET", "/api/v1/system");
    history = r.body.history || [];
    if (history.length >= 3) break;
    await new Promise((ok) => setTimeout(ok, 500));
  }
  assert.ok(history.length >= 3, `the daemon kept ${history.length} samples`);
  await page.reload();
  await page.waitForSelector("#system-body .metric");
  // The first render, before any second poll: more than one point already.
  const points = await page.$eval("#system-body .metric .spark polyline", (p) => p.getAttribute("points").trim().split(/\s+/).length);
  assert.ok(points >= 3, `the CPU sparkline has ${points} points on load`);
  await shot("layout-system");
});
