// The dashboard's GPU view against a real aikore with fake GPUs
// (AIKORE_GPU_FAKE: a JSON file in NVML's shape, see docs/gpus.md): the
// health badge and its reason, the instance row's placed GPU and VRAM, and
// the `auto` choice in the GPU picker.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync, renameSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startAikore, launchBrowser, login } from "./helpers.mjs";

const GIB = 2 ** 30;
let aikore, context, page, fakeDir;

function machine({ xid = [], pid = null } = {}) {
  return {
    gpus: [0, 1].map((index) => ({
      index, uuid: `GPU-fake-${index}`, name: "NVIDIA H100 80GB HBM3",
      memory_total_bytes: 80 * GIB, reserved_bytes: (index === 0 ? 10 : 40) * GIB,
      fan_speed_percent: "InvalidArg", ecc_uncorrected_total: 0,
      xid_events: index === 1 ? xid : [],
      processes: index === 0 && pid ? [{ pid, used_bytes: 2 * GIB }] : [],
    })),
  };
}

function writeFake(m) {
  const path = join(fakeDir, "gpus.json");
  writeFileSync(path + ".tmp", JSON.stringify(m));
  renameSync(path + ".tmp", path);
  return path;
}

before(async () => {
  fakeDir = mkdtempSync(join(tmpdir(), "aikore-fake-gpus-"));
  const path = writeFake(machine());
  aikore = await startAikore({ env: { AIKORE_GPU_FAKE: path, AIKORE_WATCH_INTERVAL_MS: "200" } });
  context = await launchBrowser();
  page = await context.newPage();
});

after(async () => {
  if (context) await context.close();
  if (aikore) await aikore.stop();
  if (fakeDir) rmSync(fakeDir, { recursive: true, force: true });
});

test("an auto instance's GPU and VRAM show in its row; an Xid 79 turns the GPU's badge red with the reason", async () => {
  const created = await aikore.api("POST", "/api/v1/instances", { name: "gpu-a", blueprint: "test-http", gpus: "auto", start: true });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  let inst;
  for (let i = 0; i < 200; i++) {
    inst = (await aikore.api("GET", "/api/v1/instances/gpu-a")).body;
    if (inst.status === "started") break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(inst.status, "started", JSON.stringify(inst));
  assert.deepEqual(inst.placed_gpus, [0], "GPU 0 has the most free memory");
  writeFake(machine({ xid: [79], pid: inst.pid }));

  await login(page, aikore);
  const row = 'tr[data-name="gpu-a"]';
  await page.waitForFunction((sel) => document.querySelector(sel)?.textContent === "GPU 0 · 2.0 GiB",
    `${row} [data-role="vram"]`, { timeout: 20000 });
  await page.waitForSelector(".gpu-health.bad", { timeout: 20000 });
  const reason = await page.textContent(".gpu-reason");
  assert.equal(reason, "Xid 79: fell off the bus");
  assert.equal(await page.locator(".gpu-health.ok").count(), 1, "GPU 0 stays healthy");
  assert.match(await page.textContent("#system-body"), /gpu-a 2\.0 GiB/, "top instances by VRAM on GPU 0");
  // The picker offers auto, ticked for this instance, with no fixed GPU ticked.
  assert.equal(await page.locator(`${row} input.gpu-auto`).isChecked(), true);
  assert.equal(await page.locator(`${row} .gpu-checks input:checked`).count(), 1);
});
