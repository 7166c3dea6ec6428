// Dashboard benchmark: page weight (HTML + CSS + JS bytes the dashboard
// loads) and time to first render of the instances table with 100 instances.
// Usage: node web/bench/dashboard.mjs   (AIKORE_BIN picks the binary)
import { startAikore, launchBrowser, login } from "../tests/helpers.mjs";

const INSTANCES = Number(process.env.BENCH_INSTANCES || 100);
const RUNS = 5;

const aikore = await startAikore();
const context = await launchBrowser();
try {
  const t0 = Date.now();
  for (let i = 0; i < INSTANCES; i++) {
    const r = await aikore.api("POST", "/api/v1/instances", { name: `bench-${String(i).padStart(3, "0")}`, blueprint: "test-http" });
    if (r.status !== 201) throw new Error(`create ${i}: ${r.status} ${JSON.stringify(r.body)}`);
  }
  console.log(`created ${INSTANCES} instances in ${Date.now() - t0} ms`);
  const page = await context.newPage();
  await login(page, aikore);

  const weights = {};
  page.on("response", async (res) => {
    const type = (res.headers()["content-type"] || "").split(";")[0];
    const kind = type === "text/html" ? "html" : type === "text/css" ? "css" : type.includes("javascript") ? "js" : null;
    if (!kind || !res.url().startsWith(aikore.url)) return;
    try { const body = await res.body(); weights[res.url()] = { kind, bytes: body.length }; } catch (_) { /* streamed */ }
  });

  const samples = [];
  for (let run = 0; run < RUNS; run++) {
    await page.goto(aikore.url + "/", { waitUntil: "load" });
    await page.waitForFunction((n) => document.querySelectorAll("#instance-rows tr[data-name]").length === n, INSTANCES);
    samples.push(await page.evaluate(() => {
      const nav = performance.getEntriesByType("navigation")[0];
      const fcp = performance.getEntriesByName("first-contentful-paint")[0];
      return { ttfb: nav.responseStart, domContentLoaded: nav.domContentLoadedEventEnd, fcp: fcp ? fcp.startTime : NaN, load: nav.loadEventEnd };
    }));
  }
  const totals = { html: 0, css: 0, js: 0 };
  for (const [url, w] of Object.entries(weights)) { totals[w.kind] += w.bytes; console.log(`  ${w.kind.padEnd(4)} ${String(w.bytes).padStart(8)}  ${url.replace(aikore.url, "")}`); }
  const median = (k) => { const v = samples.map((s) => s[k]).sort((a, b) => a - b); return v[Math.floor(v.length / 2)].toFixed(1); };
  console.log(`page weight: html ${totals.html} B, css ${totals.css} B, js ${totals.js} B, total ${totals.html + totals.css + totals.js} B (uncompressed)`);
  console.log(`instances table with ${INSTANCES} rows (median of ${RUNS} loads): TTFB ${median("ttfb")} ms, first contentful paint ${median("fcp")} ms, DOMContentLoaded ${median("domContentLoaded")} ms, load ${median("load")} ms`);
} finally {
  await context.close();
  await aikore.stop();
}
