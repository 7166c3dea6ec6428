// The dashboard's live layer. The server renders everything and plain forms
// work alone; this script turns them into fetch calls, applies state pushed
// over SSE (/api/v1/events), and runs the logs, terminal, script and view
// panes. No polling loop for status: the only timer refreshes system figures
// while no SSE exists for them.
(function () {
  "use strict";

  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const csrf = ($('meta[name="csrf-token"]') || {}).content || "";
  const store = {
    get(key, fallback) { try { const v = localStorage.getItem("aikore." + key); return v === null ? fallback : v; } catch (_) { return fallback; } },
    set(key, value) { try { localStorage.setItem("aikore." + key, value); } catch (_) { /* private mode */ } },
  };
  const RUNNING = new Set(["starting", "stalled", "started", "stopping", "restarting", "draining", "installing"]);
  const MAX_LOG_LINES = 5000; // a pane holds this much; older lines drop off the top
  const SYSTEM_REFRESH_MS = 3000; // figures only, and only while no SSE carries them
  const SPARK_POINTS = 61; // the daemon's 60 samples (5 minutes at 5 s) and the current value

  // ----- errors and API -----------------------------------------------------
  const errorBox = $("#js-error");
  const noticeBox = $("#js-notice");
  function showError(message) {
    if (message) showNotice("");
    if (!errorBox) return;
    errorBox.textContent = message;
    errorBox.hidden = !message;
  }
  // Success and hints: the green box, never the red one.
  function showNotice(message) {
    if (!noticeBox) return;
    noticeBox.textContent = message;
    noticeBox.hidden = !message;
  }

  async function api(method, url, body) {
    const opts = { method, headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const res = await fetch(url, opts);
    let data = null;
    const text = await res.text();
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
    if (!res.ok) {
      const msg = (data && data.error) || `${method} ${url}: ${res.status}`;
      throw new Error(msg);
    }
    return data;
  }

  async function guarded(fn) {
    try { showError(""); showNotice(""); return await fn(); } catch (e) { showError(e.message); return undefined; }
  }

  // ----- instances table ----------------------------------------------------
  const rowsBody = $("#instance-rows");
  const rowOf = (name) => rowsBody && $$("tr[data-name]", rowsBody).find((tr) => tr.dataset.name === name);

  // The newest state seen per unit (SSE), so a row rendered from an older
  // snapshot (a fetch that was in flight when the event came) is corrected.
  const latest = new Map();

  // Applies a live state unless the row already shows a newer one: every
  // event and snapshot carries the unit's `seq`, which only grows.
  // `draining` / `idle-stopped` laid over the state with the same seq
  // (docs/operations.md): shown while that state is the row's latest.
  const overlays = new Map();

  function setStatus(tr, ev) {
    if (typeof ev.seq === "number" && ev.seq <= Number(tr.dataset.seq || 0)) return;
    if (typeof ev.seq === "number") tr.dataset.seq = String(ev.seq);
    tr.dataset.engineStatus = ev.status;
    const over = overlays.get(tr.dataset.name);
    if (over && over.status && over.seq === ev.seq) ev = Object.assign({}, ev, { status: over.status, detail: over.detail });
    const status = ev.status;
    tr.dataset.status = status;
    const badge = $('[data-role="badge"]', tr);
    badge.className = "badge st-" + status;
    badge.textContent = status;
    // Why the last run ended badly, as the server renders it (pages.rs failure_tip).
    if (ev.failure) {
      badge.dataset.failure = ev.failure.class;
      badge.title = failureTip(ev.failure);
    } else {
      delete badge.dataset.failure;
      badge.removeAttribute("title");
    }
    const figures = $('[data-role="figures"]', tr);
    const parts = [];
    if (ev.pid) parts.push("pid " + ev.pid);
    if (ev.restarts > 0) parts.push(ev.restarts + " restarts");
    figures.textContent = parts.join(" · ");
    const detail = $('[data-role="detail"]', tr);
    detail.textContent = ev.detail || "";
    detail.title = ev.detail || "";
    syncButtons(tr);
    if (ev.port !== undefined) {
      const port = ev.port ? String(ev.port) : "";
      tr.dataset.port = port;
      const shown = $('[data-role="port"]', tr);
      if (shown && port) shown.textContent = ":" + port;
    }
    if (tr.dataset.name === selected && activeTab === "view") showView();
  }

  function failureTip(f) {
    return ["failure: " + f.class, f.line, f.hint].filter((p) => p).join("\n");
  }

  // One of Start and Stop at a time, as the status allows.
  function syncButtons(tr) {
    const running = RUNNING.has(tr.dataset.status);
    const start = $('[data-act="start"]', tr), stop = $('[data-act="stop"]', tr);
    start.disabled = start.hidden = running;
    stop.disabled = stop.hidden = !running;
  }

  function snapshotInputs(tr) {
    $$("input, select", tr).forEach((el) => {
      if (el.type === "hidden") return;
      el.dataset.initial = el.type === "checkbox" ? String(el.checked) : el.value;
    });
    markDirty(tr);
  }

  function markDirty(tr) {
    const dirty = $$("input, select", tr).some((el) => el.dataset.initial !== undefined &&
      el.dataset.initial !== (el.type === "checkbox" ? String(el.checked) : el.value));
    tr.classList.toggle("dirty", dirty);
    const marker = $(".unsaved", tr);
    if (marker) marker.hidden = !dirty;
  }

  function bindRows() {
    if (!rowsBody) return;
    $$("tr[data-name]", rowsBody).forEach((tr) => {
      const newer = latest.get(tr.dataset.name);
      if (newer) setStatus(tr, newer);
      snapshotInputs(tr);
      upgradeGpuInputs(tr);
      tr.classList.toggle("selected", tr.dataset.name === selected);
    });
    $("#count").textContent = $$("tr[data-name]", rowsBody).length;
  }

  let refreshing = null;
  async function refreshRows() {
    if (refreshing) return refreshing;
    refreshing = (async () => {
      const res = await fetch("/partials/instances", { credentials: "same-origin" });
      if (res.ok) {
        // Server-rendered by maud (escaped); keep rows the user is editing.
        const dirty = new Map($$("tr.dirty", rowsBody).map((tr) => [tr.dataset.name, tr]));
        const tpl = document.createElement("template");
        tpl.innerHTML = await res.text();
        for (const tr of $$("tr[data-name]", tpl.content)) {
          const keep = dirty.get(tr.dataset.name);
          if (!keep) continue;
          // The edited fields stay; a newer status from the server still shows.
          if (Number(tr.dataset.seq) > Number(keep.dataset.seq || 0)) {
            $("td.status", keep).replaceWith($("td.status", tr));
            Object.assign(keep.dataset, { seq: tr.dataset.seq, status: tr.dataset.status, port: tr.dataset.port });
            syncButtons(keep);
          }
          tr.replaceWith(keep);
        }
        rowsBody.replaceChildren(tpl.content);
        bindRows();
      }
    })().finally(() => { refreshing = null; });
    return refreshing;
  }

  async function refreshTrash() {
    const res = await fetch("/partials/trash", { credentials: "same-origin" });
    if (res.ok) {
      const tpl = document.createElement("template");
      tpl.innerHTML = await res.text();
      $("#trash-body").replaceChildren(tpl.content);
      formatTimes();
    }
  }

  function formValues(tr) {
    const get = (n) => $(`[name="${n}"]`, tr);
    const body = {
      gpus: get("gpus").value.trim(),
      port: get("port").value.trim(),
      autostart: get("autostart").checked,
      active_slot: get("active_slot").value || null,
    };
    return { body, public: get("public").checked, publicChanged: get("public").dataset.initial !== String(get("public").checked) };
  }

  async function rowAction(tr, act) {
    const name = tr.dataset.name;
    const base = "/api/v1/instances/" + encodeURIComponent(name);
    switch (act) {
      case "start": case "stop": case "restart": case "reinstall": case "update":
        await guarded(() => api("POST", `${base}/${act}`));
        break;
      case "save":
        await guarded(async () => {
          const v = formValues(tr);
          if (v.publicChanged) await api("PUT", `${base}/public`, { public: v.public });
          const out = await api("PATCH", base, v.body);
          snapshotInputs(tr);
          showNotice(out && out.restart_pending ? `Saved ${name}: restart it to apply the change.` : `Saved ${name}.`);
        });
        break;
      case "delete":
        if (!confirm(`Move ${name} to the trash can? A running instance is stopped first.`)) return;
        await guarded(async () => {
          await api("DELETE", `${base}?force=true`);
          if (selected === name) select(null);
          await refreshRows();
          await refreshTrash();
        });
        break;
      case "logs": case "terminal": case "script": case "view":
        select(name);
        showTab(act);
        break;
      case "settings":
        closeMenus();
        await openSettings(name);
        break;
      case "blueprint": {
        const id = prompt(`Save ${name}'s launch.sh as a custom blueprint named:`, name + "-custom");
        if (!id) return;
        await guarded(async () => { await api("POST", "/api/v1/blueprints", { instance: name, id }); showNotice(`Saved blueprint ${id}: new instances can use it.`); });
        break;
      }
    }
    closeMenus();
  }

  // ----- the ⋯ menu -----------------------------------------------------------
  // Fixed to the viewport, not absolute inside the scrolling table: the table
  // would clip it. Placed under its button, or above when there is no room,
  // and always inside the window.
  const MENU_MARGIN = 6;
  function closeMenus(except) {
    $$("details.menu[open]").forEach((d) => { if (d !== except) d.open = false; });
  }
  function placeMenu(details) {
    const items = $(".menu-items", details);
    const anchor = $("summary", details).getBoundingClientRect();
    const w = items.offsetWidth, h = items.offsetHeight;
    const vw = document.documentElement.clientWidth, vh = document.documentElement.clientHeight;
    let left = Math.min(anchor.right - w, vw - w - MENU_MARGIN);
    left = Math.max(MENU_MARGIN, left);
    let top = anchor.bottom + 4;
    if (top + h > vh - MENU_MARGIN) top = anchor.top - 4 - h;
    top = Math.max(MENU_MARGIN, Math.min(top, vh - h - MENU_MARGIN));
    items.style.left = left + "px";
    items.style.top = top + "px";
  }
  document.addEventListener("toggle", (e) => {
    const d = e.target;
    if (!(d instanceof HTMLDetailsElement) || !d.classList.contains("menu")) return;
    const tr = d.closest("tr");
    if (tr) tr.classList.toggle("menu-open", d.open);
    if (d.open) { closeMenus(d); placeMenu(d); }
  }, true);
  document.addEventListener("click", (e) => {
    if (!e.target.closest("details.menu")) closeMenus();
  });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeMenus(); });
  window.addEventListener("resize", () => $$("details.menu[open]").forEach(placeMenu));
  const tableWrap = $(".table-wrap");
  // The table scrolled: the menu follows its button, and closes once the button is scrolled away.
  if (tableWrap) {
    tableWrap.addEventListener("scroll", () => {
      const view = tableWrap.getBoundingClientRect();
      $$("details.menu[open]", tableWrap).forEach((d) => {
        const r = $("summary", d).getBoundingClientRect();
        if (r.bottom <= view.top || r.top >= view.bottom || r.right <= view.left || r.left >= view.right) d.open = false;
        else placeMenu(d);
      });
    }, { passive: true });
  }

  if (rowsBody) {
    rowsBody.addEventListener("click", (e) => {
      const btn = e.target.closest("[data-act]");
      const tr = e.target.closest("tr[data-name]");
      if (!tr) return;
      if (!btn) {
        if (!e.target.closest("input, select, button, a, details, label")) select(tr.dataset.name);
        return;
      }
      if (btn.dataset.act === "open") return; // a plain link
      e.preventDefault();
      rowAction(tr, btn.dataset.act);
    });
    const onEdit = (e) => { const tr = e.target.closest("tr[data-name]"); if (tr) markDirty(tr); };
    rowsBody.addEventListener("input", onEdit);
    rowsBody.addEventListener("change", onEdit);
    // Enter in a field saves through the API, not the plain form.
    rowsBody.addEventListener("keydown", (e) => {
      if (e.key !== "Enter" || !e.target.matches("input[type=text]")) return;
      const tr = e.target.closest("tr[data-name]");
      if (tr) { e.preventDefault(); rowAction(tr, "save"); }
    });
  }

  const createForm = $("#create-form");
  if (createForm) {
    createForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      const field = (n) => document.querySelector(`[form="create-form"][name="${n}"]`);
      const body = {
        name: field("name").value.trim(),
        blueprint: field("blueprint").value,
        gpus: field("gpus").value.trim(),
        autostart: field("autostart").checked,
        start: field("start").checked,
      };
      const port = field("port").value.trim();
      if (port) body.port = port;
      await guarded(async () => {
        const created = await api("POST", "/api/v1/instances", body);
        field("name").value = "";
        await refreshRows();
        if (created && created.name) select(created.name);
      });
    });
  }

  const trashBody = $("#trash-body");
  if (trashBody) {
    trashBody.addEventListener("submit", async (e) => {
      const li = e.target.closest("li[data-id]");
      if (!li) return;
      e.preventDefault();
      const id = encodeURIComponent(li.dataset.id);
      const name = $("strong", li).textContent;
      if (e.submitter && e.submitter.dataset.act === "purge") {
        if (!confirm(`Delete ${name} for good? Its directory, models and outputs inside it are removed.`)) return;
        await guarded(async () => {
          await api("DELETE", `/api/v1/trashcan/${id}`);
          await refreshTrash();
          showNotice(`Deleted ${name} for good.`);
        });
        return;
      }
      await guarded(async () => {
        await api("POST", `/api/v1/trashcan/${id}/restore`);
        await refreshRows();
        await refreshTrash();
        showNotice(`Restored ${name}.`);
      });
    });
  }

  // ----- settings dialog ------------------------------------------------------
  const dialog = $("#settings");
  let settingsFor = null;

  function envRow(key, value) {
    const row = document.createElement("div");
    row.className = "env-row";
    const k = document.createElement("input");
    Object.assign(k, { type: "text", placeholder: "NAME", value: key || "", spellcheck: false });
    k.className = "env-key";
    k.setAttribute("list", "env-keys");
    k.setAttribute("aria-label", "Variable name");
    k.pattern = "[A-Za-z_][A-Za-z0-9_]*";
    const v = document.createElement("input");
    Object.assign(v, { type: "text", placeholder: "value", value: value || "", spellcheck: false });
    v.className = "env-value";
    v.setAttribute("aria-label", "Value");
    const del = document.createElement("button");
    Object.assign(del, { type: "button", textContent: "✕", title: "Remove" });
    del.className = "btn ghost";
    del.addEventListener("click", () => row.remove());
    row.append(k, v, del);
    $("#env-rows").appendChild(row);
    return row;
  }

  async function openSettings(name) {
    if (!dialog) return;
    await guarded(async () => {
      const inst = await api("GET", "/api/v1/instances/" + encodeURIComponent(name));
      settingsFor = name;
      const f = $("#settings-form");
      $("#settings-of").textContent = name;
      f.elements.name.value = inst.name;
      f.elements.description.value = inst.description || "";
      f.elements.persistent_mode.checked = !!inst.persistent_mode;
      $("#env-rows").replaceChildren();
      Object.entries(inst.environment || {}).forEach(([k, v]) => envRow(k, v));
      if (!Object.keys(inst.environment || {}).length) envRow("", "");
      $("#settings-error").hidden = true;
      dialog.showModal();
    });
  }

  if (dialog) {
    $("#env-add").addEventListener("click", () => $(".env-key", envRow("", "")).focus());
    $("#settings-cancel").addEventListener("click", () => dialog.close());
    $("#settings-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const f = e.target;
      const restart = e.submitter && e.submitter.value === "restart";
      const environment = {};
      for (const row of $$(".env-row", f)) {
        const k = $(".env-key", row).value.trim(), v = $(".env-value", row).value;
        if (k) environment[k] = v;
      }
      const body = {
        description: f.elements.description.value.trim(),
        persistent_mode: f.elements.persistent_mode.checked,
        environment,
      };
      const newName = f.elements.name.value.trim();
      if (newName !== settingsFor) body.name = newName;
      const old = settingsFor;
      const err = $("#settings-error");
      try {
        const out = await api("PATCH", `/api/v1/instances/${encodeURIComponent(old)}${restart ? "?restart=true" : ""}`, body);
        dialog.close();
        const now = (out && out.instance && out.instance.name) || newName;
        await refreshRows();
        if (selected === old) select(now);
        showNotice(out && out.restart_pending ? `Saved ${now}: restart it to apply.` : (out && out.restarted ? `Saved ${now} and restarted it.` : `Saved ${now}.`));
      } catch (ex) {
        err.textContent = ex.message;
        err.hidden = false;
      }
    });
  }

  function formatTimes() {
    $$(".when[data-ms]").forEach((el) => {
      el.textContent = "deleted " + new Date(Number(el.dataset.ms)).toLocaleString();
    });
  }

  // ----- live state over SSE ------------------------------------------------
  const live = $("#live");
  function connectEvents() {
    if (!rowsBody) return;
    const es = new EventSource("/api/v1/events");
    let reconnect = false;
    es.onopen = () => {
      live.textContent = "live";
      live.className = "live on";
      // Events from before this subscription were missed (between the page's
      // render and now, or during a gap): re-read the rows once; seq keeps
      // whichever is newer. After a gap the daemon may have restarted, its
      // seq counter with it: forget what was seen.
      if (reconnect) { latest.clear(); $$("tr[data-name]", rowsBody).forEach((tr) => { tr.dataset.seq = "0"; }); }
      refreshRows();
      reconnect = true;
    };
    es.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
    es.addEventListener("state", (msg) => {
      const ev = JSON.parse(msg.data);
      const seen = latest.get(ev.unit);
      if (!seen || !(ev.seq <= seen.seq)) latest.set(ev.unit, ev);
      const tr = rowOf(ev.unit);
      if (tr) setStatus(tr, ev);
      else if (ev.kind === "instance") refreshRows();
    });
    es.addEventListener("overlay", (msg) => {
      const ov = JSON.parse(msg.data);
      overlays.set(ov.unit, ov);
      const tr = rowOf(ov.unit);
      // A newer state is shown, or the state it lies over comes later (setStatus applies it then).
      if (!tr || Number(tr.dataset.seq || 0) !== ov.seq) return;
      const base = latest.get(ov.unit);
      const ev = base && base.seq === ov.seq ? base
        : { seq: ov.seq, status: tr.dataset.engineStatus || "started", detail: "", pid: null, restarts: 0 };
      tr.dataset.seq = String(ov.seq - 1); // the same seq again, now with the overlay
      setStatus(tr, ev);
    });
    // Unit files changed (create, rename, delete, reload): re-read the rows.
    es.addEventListener("config", () => refreshRows());
    es.addEventListener("lagged", () => refreshRows());
  }

  // ----- selection and tabs ---------------------------------------------------
  let selected = store.get("selected", null);
  let activeTab = store.get("tab", "logs");

  function select(name) {
    if (name && !rowOf(name)) name = null;
    const changed = name !== selected;
    selected = name;
    const ws = $("#workspace");
    if (ws) ws.classList.toggle("none", !name);
    store.set("selected", name || "");
    $("#selected").textContent = name || "none — pick one in the table";
    $$("tr[data-name]", rowsBody).forEach((tr) => tr.classList.toggle("selected", tr.dataset.name === name));
    if (changed) {
      closeTerminal();
      stopLogs();
      $("#view").removeAttribute("src");
      loadedScript = null;
    }
    activate(activeTab);
  }

  function showTab(tab) {
    activeTab = tab;
    store.set("tab", tab);
    $$(".tab").forEach((b) => b.classList.toggle("active", b.dataset.tab === tab));
    $$(".tab-body").forEach((p) => { p.hidden = p.id !== "tab-" + tab; });
    activate(tab);
  }

  function activate(tab) {
    if (tab === "logs") startLogs();
    if (tab === "terminal") openTerminal();
    if (tab === "script") loadScript();
    if (tab === "view") showView();
  }

  $$(".tab").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));

  // ----- logs -------------------------------------------------------------
  const logBox = $("#log");
  const logState = $("#log-state");
  const followBtn = $("#log-bottom");
  let logStream = null;
  let logUnit = null;
  let follow = true;

  function atBottom() { return logBox.scrollHeight - logBox.scrollTop - logBox.clientHeight < 24; }

  if (logBox) {
    logBox.addEventListener("scroll", () => {
      follow = atBottom();
      followBtn.hidden = follow;
    });
    followBtn.addEventListener("click", () => { follow = true; followBtn.hidden = true; logBox.scrollTop = logBox.scrollHeight; });
    $("#log-clear").addEventListener("click", () => logBox.replaceChildren());
  }

  function appendLine(line) {
    const div = document.createElement("div");
    div.className = "line";
    if (line.ts_ms) {
      const ts = document.createElement("span");
      ts.className = "ts";
      ts.textContent = new Date(line.ts_ms).toLocaleTimeString();
      div.appendChild(ts);
    }
    div.appendChild(window.AnsiLine ? window.AnsiLine.render(line.text) : document.createTextNode(line.text));
    logBox.appendChild(div);
    while (logBox.childElementCount > MAX_LOG_LINES) logBox.firstElementChild.remove();
  }

  function stopLogs() {
    if (logStream) logStream.close();
    logStream = null;
    logUnit = null;
  }

  function startLogs() {
    if (!logBox || !selected || logUnit === selected) return;
    stopLogs();
    logBox.replaceChildren();
    follow = true;
    followBtn.hidden = true;
    logUnit = selected;
    logState.textContent = "connecting…";
    const es = new EventSource(`/api/v1/units/${encodeURIComponent(selected)}/logs/stream?tail=500`);
    logStream = es;
    es.onopen = () => { logState.textContent = "following " + logUnit; };
    es.onerror = () => { logState.textContent = "reconnecting…"; };
    es.addEventListener("line", (msg) => {
      appendLine(JSON.parse(msg.data));
      if (follow) logBox.scrollTop = logBox.scrollHeight;
    });
    es.addEventListener("lagged", (msg) => appendLine({ text: `… ${msg.data} lines skipped (the pane fell behind)` }));
  }

  // ----- terminal -----------------------------------------------------------
  const termBox = $("#term");
  const termMsg = $("#term-msg");
  let term = null, fit = null, socket = null, termUnit = null, resizeObs = null;

  function closeTerminal() {
    if (socket) socket.close();
    socket = null;
    termUnit = null;
    if (resizeObs) resizeObs.disconnect();
    resizeObs = null;
    if (term) term.dispose();
    term = null;
    window.__aikoreTerm = null;
  }

  function sendSize() {
    if (socket && socket.readyState === WebSocket.OPEN && term) {
      socket.send(JSON.stringify({ type: "resize", cols: term.cols, rows: term.rows }));
    }
  }

  function openTerminal() {
    if (!termBox || !selected) return;
    if (termUnit === selected && socket && socket.readyState <= WebSocket.OPEN) { if (term) term.focus(); return; }
    closeTerminal();
    if (typeof window.Terminal !== "function") {
      termMsg.textContent = "The terminal needs xterm.js, which is not installed: run `npm ci --prefix web` on the server and reload.";
      termMsg.className = "flash error";
      return;
    }
    termMsg.textContent = "";
    termMsg.className = "muted";
    termUnit = selected;
    term = new window.Terminal({
      cursorBlink: true, fontSize: 13, scrollback: 5000,
      fontFamily: "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace",
      theme: { background: "#0b0e14", foreground: "#d7dae0" },
    });
    if (window.FitAddon) { fit = new window.FitAddon.FitAddon(); term.loadAddon(fit); }
    term.open(termBox);
    if (fit) fit.fit();
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(`${proto}//${location.host}/api/v1/instances/${encodeURIComponent(termUnit)}/terminal?cols=${term.cols}&rows=${term.rows}`);
    socket.binaryType = "arraybuffer";
    const encoder = new TextEncoder();
    socket.onopen = () => { sendSize(); term.focus(); };
    socket.onmessage = (m) => { if (term) term.write(typeof m.data === "string" ? m.data : new Uint8Array(m.data)); };
    socket.onclose = () => { if (term) term.write("\r\n\x1b[2m[session closed — switch tabs to open a new one]\x1b[0m\r\n"); };
    term.onData((d) => { if (socket && socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(d)); });
    term.onResize(() => sendSize());
    resizeObs = new ResizeObserver(() => { if (fit && !termBox.closest("[hidden]")) fit.fit(); });
    resizeObs.observe(termBox);
    // Tests drive the terminal through this handle.
    window.__aikoreTerm = term;
  }

  // ----- script editor ------------------------------------------------------
  const scriptBox = $("#script");
  const scriptState = $("#script-state");
  let loadedScript = null;

  async function loadScript() {
    if (!scriptBox || !selected || loadedScript === selected) return;
    const name = selected;
    await guarded(async () => {
      const out = await api("GET", `/api/v1/instances/${encodeURIComponent(name)}/script`);
      scriptBox.value = out.content;
      scriptBox.dataset.initial = out.content;
      loadedScript = name;
      scriptState.textContent = "";
    });
  }

  async function saveScript(restart) {
    if (!selected) return;
    const name = selected;
    await guarded(async () => {
      const out = await api("PUT", `/api/v1/instances/${encodeURIComponent(name)}/script${restart ? "?restart=true" : ""}`, { content: scriptBox.value });
      scriptBox.dataset.initial = scriptBox.value;
      scriptState.textContent = out.restart_pending ? "saved · restart to apply" : (restart ? "saved · restarting" : "saved");
    });
  }

  if (scriptBox) {
    scriptBox.addEventListener("input", () => {
      scriptState.textContent = scriptBox.value !== scriptBox.dataset.initial ? "● unsaved" : "";
    });
    scriptBox.addEventListener("keydown", (e) => {
      if (e.key === "Tab" && !e.shiftKey) {
        e.preventDefault();
        scriptBox.setRangeText("  ", scriptBox.selectionStart, scriptBox.selectionEnd, "end");
        scriptBox.dispatchEvent(new Event("input"));
      } else if (e.key === "s" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        saveScript(false);
      }
    });
    $("#script-save").addEventListener("click", () => saveScript(false));
    $("#script-save-restart").addEventListener("click", () => saveScript(true));
    $("#script-blueprint").addEventListener("click", async () => {
      if (!selected) return;
      await saveScript(false);
      const tr = rowOf(selected);
      if (tr) rowAction(tr, "blueprint");
    });
  }

  // ----- view ---------------------------------------------------------------
  // The app in a frame, once it runs; until then a line saying why not.
  function showView() {
    const tr = selected && rowOf(selected);
    const frame = $("#view"), msg = $("#view-msg");
    if (!frame || !tr) return;
    const status = tr.dataset.status;
    if (status === "started" || status === "stalled") {
      msg.hidden = true;
      frame.hidden = false;
      if (frame.getAttribute("src") !== tr.dataset.url) frame.setAttribute("src", tr.dataset.url);
    } else {
      frame.hidden = true;
      frame.removeAttribute("src");
      msg.hidden = false;
      msg.textContent = RUNNING.has(status)
        ? `${tr.dataset.name} is ${status}: its app shows here once it is started.`
        : `${tr.dataset.name} is ${status}: start it to view its app here.`;
    }
  }

  // ----- resizable panes ----------------------------------------------------
  function makeSplitter(el) {
    const key = "split." + el.dataset.split;
    const vertical = el.classList.contains("vertical");
    const target = vertical ? $("#system") : $("#instances-panel");
    const saved = Number(store.get(key, 0));
    if (saved > 0) target.style[vertical ? "width" : "height"] = saved + "px";
    el.addEventListener("pointerdown", (down) => {
      down.preventDefault();
      el.setPointerCapture(down.pointerId);
      const start = vertical ? down.clientX : down.clientY;
      const rect = target.getBoundingClientRect();
      const size0 = vertical ? rect.width : rect.height;
      document.body.classList.add("dragging");
      const move = (e) => {
        const delta = (vertical ? e.clientX : e.clientY) - start;
        // The system pane sits right of its splitter: dragging left widens it.
        const size = Math.max(120, vertical ? size0 - delta : size0 + delta);
        target.style[vertical ? "width" : "height"] = size + "px";
      };
      const up = () => {
        el.removeEventListener("pointermove", move);
        document.body.classList.remove("dragging");
        store.set(key, Math.round(parseFloat(target.style[vertical ? "width" : "height"]) || 0));
        if (fit && term) fit.fit();
      };
      el.addEventListener("pointermove", move);
      el.addEventListener("pointerup", up, { once: true });
    });
  }
  $$(".splitter").forEach(makeSplitter);

  // ----- system pane --------------------------------------------------------
  const sysBody = $("#system-body");
  const history = new Map();
  let gpus = null;

  // Points of one figure: the daemon's history ring (one sample per 5 s,
  // so a fresh page has minutes of trend at once) plus the current value.
  // Without a ring (an older daemon), what this page has polled so far.
  let serverHistory = [];
  function series(key, value, pick) {
    if (typeof value !== "number" || !isFinite(value)) return [];
    if (serverHistory.length) {
      const past = serverHistory.map(pick).filter((v) => typeof v === "number" && isFinite(v));
      return past.concat([value]).slice(-SPARK_POINTS);
    }
    const h = history.get(key) || [];
    h.push(value);
    if (h.length > SPARK_POINTS) h.shift();
    history.set(key, h);
    return h;
  }

  function sparkline(points, max) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${SPARK_POINTS - 1} 20`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("class", "spark");
    const top = max || Math.max(1, ...points);
    const pts = points.map((v, i) => `${i + (SPARK_POINTS - points.length)},${(20 - (Math.min(v, top) / top) * 19).toFixed(1)}`);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", pts.join(" "));
    svg.appendChild(line);
    return svg;
  }

  function metric(label, valueText, points, max) {
    const row = document.createElement("div");
    row.className = "metric";
    const l = document.createElement("span"); l.className = "label"; l.textContent = label;
    const v = document.createElement("span"); v.className = "value"; v.textContent = valueText;
    row.append(l, v, sparkline(points, max));
    return row;
  }

  const gib = (b) => (b / 1073741824).toFixed(1) + " GiB";
  const num = (x) => (typeof x === "number" ? x : null);
  const pct = (r) => (typeof r === "number" ? 100 * r : null);
  const gpuOf = (p, index) => (p.gpus || []).find((g) => g.index === index) || {};

  // Shape of GET /api/v1/system (src/metrics/mod.rs SystemView): ratios are 0..1, sizes in bytes.
  function renderSystem(s) {
    serverHistory = Array.isArray(s.history) ? s.history : [];
    const out = document.createDocumentFragment();
    const cpu = num(s.cpu && s.cpu.usage_ratio);
    if (cpu !== null) out.appendChild(metric("CPU", pct(cpu).toFixed(0) + " %", series("cpu", pct(cpu), (p) => pct(p.cpu_ratio)), 100));
    const mem = s.memory || {};
    if (num(mem.total_bytes)) {
      const used = mem.total_bytes - (mem.available_bytes || 0);
      out.appendChild(metric("RAM", `${gib(used)} / ${gib(mem.total_bytes)}`,
        series("ram", (100 * used) / mem.total_bytes, (p) => pct(p.memory_ratio)), 100));
    }
    const d = s.disk;
    if (d && num(d.total_bytes)) {
      const used = d.total_bytes - (d.available_bytes || 0);
      out.appendChild(metric("Disk", `${gib(used)} / ${gib(d.total_bytes)}`,
        series("disk", (100 * used) / d.total_bytes, (p) => pct(p.disk_ratio)), 100));
    }
    (s.gpus || []).forEach((g) => {
      const box = document.createElement("div");
      box.className = "gpu";
      const h = document.createElement("div"); h.className = "gpu-name"; h.textContent = `GPU ${g.index} · ${g.name || ""}`;
      // Health (src/gpu/health.rs): an unhealthy GPU gets nothing new; the reason says what to do.
      const badge = document.createElement("span");
      badge.className = "gpu-health " + (g.healthy === false ? "bad" : "ok");
      badge.textContent = g.healthy === false ? "unhealthy" : "healthy";
      if (g.unhealthy_reason) badge.title = g.unhealthy_reason;
      h.append(" ", badge);
      box.appendChild(h);
      if (g.healthy === false && g.unhealthy_reason) {
        const why = document.createElement("div"); why.className = "gpu-reason"; why.textContent = g.unhealthy_reason; box.appendChild(why);
      }
      const k = "gpu" + g.index + ".";
      const u = num(g.utilization_ratio);
      if (u !== null) box.appendChild(metric("Util", pct(u).toFixed(0) + " %", series(k + "u", pct(u), (p) => pct(gpuOf(p, g.index).utilization_ratio)), 100));
      const vt = num(g.memory_total_bytes), vu = num(g.memory_used_bytes);
      if (vt) box.appendChild(metric("VRAM", `${gib(vu || 0)} / ${gib(vt)}`, series(k + "m", (100 * (vu || 0)) / vt, (p) => pct(gpuOf(p, g.index).memory_ratio)), 100));
      const t = num(g.temperature_celsius);
      if (t !== null) box.appendChild(metric("Temp", t.toFixed(0) + " °C", series(k + "t", t, (p) => gpuOf(p, g.index).temperature_celsius), 100));
      const pw = num(g.power_draw_watts);
      if (pw !== null) box.appendChild(metric("Power", pw.toFixed(0) + " W", series(k + "p", pw, (p) => gpuOf(p, g.index).power_draw_watts), num(g.power_limit_watts) || undefined));
      // Top instances by VRAM on this GPU (the watch's last reading).
      const users = (g.instances || []).slice(0, 5);
      if (users.length) {
        const list = document.createElement("ul"); list.className = "gpu-users";
        users.forEach((u) => { const li = document.createElement("li"); li.textContent = `${u.unit} ${gib(u.bytes)}`; list.appendChild(li); });
        box.appendChild(list);
      }
      out.appendChild(box);
    });
    if (s.gpu_note) { const n = document.createElement("p"); n.className = "muted"; n.textContent = s.gpu_note; out.appendChild(n); }
    if (s.gpu_pid_note) { const n = document.createElement("p"); n.className = "muted"; n.textContent = s.gpu_pid_note; out.appendChild(n); }
    if (!out.childNodes.length) { const p = document.createElement("p"); p.className = "muted"; p.textContent = "No figures reported."; out.appendChild(p); }
    sysBody.replaceChildren(out);
  }

  async function pollSystem() {
    if (!sysBody) return;
    let res;
    try { res = await fetch("/api/v1/system", { credentials: "same-origin" }); } catch (_) { res = null; }
    if (!res || !res.ok) {
      const p = document.createElement("p");
      p.className = "muted";
      p.textContent = res && res.status === 404 ? "System figures are not available in this build." : "System figures are not available right now.";
      sysBody.replaceChildren(p);
      if (res && res.status === 404) return; // no endpoint: nothing to refresh
    } else {
      const s = await res.json();
      if (Array.isArray(s.gpus) && gpus === null) { gpus = s.gpus; $$("tr[data-name], tr.add-row").forEach(upgradeGpuInputs); }
      renderSystem(s);
      refreshVram(s);
    }
    setTimeout(pollSystem, SYSTEM_REFRESH_MS);
  }

  // Each instance row's "GPU 0 · 3.1 GiB": where its run is placed and the VRAM it uses.
  function refreshVram(s) {
    const placed = new Map(), vram = new Map();
    (s.gpus || []).forEach((g) => {
      (g.placed || []).forEach((u) => placed.set(u, (placed.get(u) || []).concat([g.index])));
      (g.instances || []).forEach((u) => vram.set(u.unit, (vram.get(u.unit) || 0) + u.bytes));
    });
    $$("tr[data-name]").forEach((tr) => {
      const span = $('[data-role="vram"]', tr);
      if (!span) return;
      const name = tr.dataset.name, parts = [];
      if (placed.has(name)) parts.push("GPU " + placed.get(name).join(","));
      if (vram.get(name)) parts.push(gib(vram.get(name)));
      span.textContent = parts.join(" · ");
    });
  }

  // With detected GPUs, the free-text field becomes one checkbox per GPU
  // (the text field stays, hidden, as what forms and saves read).
  function upgradeGpuInputs(tr) {
    if (!gpus || !gpus.length) return;
    const text = $(".gpus-text", tr);
    if (!text || text.dataset.upgraded) return;
    text.dataset.upgraded = "1";
    text.hidden = true;
    const chosen = new Set(text.value.split(/[ ,]+/).filter(Boolean));
    const box = document.createElement("span");
    box.className = "gpu-checks";
    gpus.forEach((g) => {
      const label = document.createElement("label");
      label.title = `${g.name || "GPU"} ${g.uuid || ""}`;
      const cb = document.createElement("input");
      cb.type = "checkbox";
      cb.value = String(g.index);
      cb.checked = chosen.has(String(g.index)) || (g.uuid && chosen.has(g.uuid));
      cb.addEventListener("change", () => {
        text.value = $$("input", box).filter((c) => c.checked && c.value !== "auto").map((c) => c.value).join(",");
        text.dispatchEvent(new Event("input", { bubbles: true }));
      });
      label.append(cb, document.createTextNode(String(g.index)));
      box.appendChild(label);
    });
    // GPUs=auto[:N]: placement picks at each start; ticking it clears the fixed choice and back.
    const autoLabel = document.createElement("label");
    autoLabel.title = "auto: the GPU with the most free memory, chosen at each start";
    const auto = document.createElement("input");
    auto.type = "checkbox";
    auto.value = "auto";
    auto.className = "gpu-auto";
    auto.checked = [...chosen].some((c) => c.startsWith("auto"));
    const fixed = () => $$("input", box).filter((c) => c !== auto);
    auto.addEventListener("change", () => {
      if (auto.checked) fixed().forEach((c) => { c.checked = false; });
      text.value = auto.checked ? ([...chosen].find((c) => c.startsWith("auto")) || "auto") : "";
      text.dispatchEvent(new Event("input", { bubbles: true }));
    });
    fixed().forEach((c) => c.addEventListener("change", () => { if (c.checked) auto.checked = false; }));
    autoLabel.append(auto, document.createTextNode("auto"));
    box.appendChild(autoLabel);
    text.after(box);
  }

  // ----- start ----------------------------------------------------------------
  bindRows();
  formatTimes();
  connectEvents();
  pollSystem();
  if (selected && rowOf(selected)) select(selected); else select(null);
  showTab(activeTab);
  window.addEventListener("resize", () => { if (fit && term) fit.fit(); });
})();
