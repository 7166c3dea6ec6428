import { startAikore, launchBrowser, login } from "./helpers.mjs";
const aikore = await startAikore({ nginx: true });
const ctx = await launchBrowser({ viewport: { width: 1280, height: 800 } });
const page = await ctx.newPage();
page.on("console", (m) => console.log("console:", m.text()));
page.on("pageerror", (e) => console.log("pageerror:", e.message));
try {
  await login(page, aikore, aikore.publicUrl);
  for (const n of ["web-1", "comfy-long-name"]) await aikore.api("POST", "/api/v1/instances", { name: n, blueprint: "test-http", start: n === "web-1", description: "a test instance" });
  await page.reload();
  await page.waitForSelector('tr[data-name="web-1"] .badge.st-started', { timeout: 20000 });
  await page.screenshot({ path: "/tmp/dash/dash.png" });
  console.log(await page.evaluate(() => { const w = document.querySelector(".table-wrap"); return [w.scrollWidth, w.clientWidth, [...document.querySelectorAll("thead th")].map(t => t.textContent + ":" + Math.round(t.getBoundingClientRect().width))]; }));
  await page.click('tr[data-name="web-1"] details.menu summary');
  await page.screenshot({ path: "/tmp/dash/menu.png" });
  await page.click('tr[data-name="web-1"] [data-act="settings"]');
  await page.waitForSelector("#settings[open]");
  await page.screenshot({ path: "/tmp/dash/settings.png" });
} finally {
  console.log(aikore.log().split("\n").filter(l => /error|warn/i.test(l)).slice(-20).join("\n"));
  await ctx.close(); await aikore.stop();
}
