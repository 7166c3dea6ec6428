// ANSI SGR -> DOM: turns a log line with colour escapes into spans whose text
// is set with textContent. A log line is never parsed as HTML.
(function () {
  "use strict";
  // xterm's default 256-colour cube and grey ramp, for 38;5;n / 48;5;n.
  function color256(n) {
    if (n < 16) return null;
    if (n >= 232) { const v = 8 + (n - 232) * 10; return `rgb(${v},${v},${v})`; }
    n -= 16;
    const c = [0, 95, 135, 175, 215, 255];
    return `rgb(${c[Math.floor(n / 36)]},${c[Math.floor(n / 6) % 6]},${c[n % 6]})`;
  }

  function freshState() {
    return { bold: false, dim: false, italic: false, underline: false, fg: null, bg: null, fgRgb: null, bgRgb: null };
  }

  function applySgr(state, params) {
    const p = params.length ? params : [0];
    for (let i = 0; i < p.length; i++) {
      const code = p[i];
      if (code === 0) Object.assign(state, freshState());
      else if (code === 1) state.bold = true;
      else if (code === 2) state.dim = true;
      else if (code === 3) state.italic = true;
      else if (code === 4) state.underline = true;
      else if (code === 22) { state.bold = false; state.dim = false; }
      else if (code === 23) state.italic = false;
      else if (code === 24) state.underline = false;
      else if (code >= 30 && code <= 37) { state.fg = code - 30; state.fgRgb = null; }
      else if (code >= 90 && code <= 97) { state.fg = code - 90 + 8; state.fgRgb = null; }
      else if (code === 39) { state.fg = null; state.fgRgb = null; }
      else if (code >= 40 && code <= 47) { state.bg = code - 40; state.bgRgb = null; }
      else if (code >= 100 && code <= 107) { state.bg = code - 100 + 8; state.bgRgb = null; }
      else if (code === 49) { state.bg = null; state.bgRgb = null; }
      else if (code === 38 || code === 48) {
        const fg = code === 38;
        let idx = null, rgb = null;
        if (p[i + 1] === 5) { const n = p[i + 2] | 0; if (n < 16) idx = n; else rgb = color256(n); i += 2; }
        else if (p[i + 1] === 2) { rgb = `rgb(${p[i + 2] | 0},${p[i + 3] | 0},${p[i + 4] | 0})`; i += 4; }
        if (fg) { state.fg = idx; state.fgRgb = rgb; } else { state.bg = idx; state.bgRgb = rgb; }
      }
    }
  }

  function span(text, state) {
    const el = document.createElement("span");
    el.textContent = text;
    const cls = [];
    if (state.bold) cls.push("a-b");
    if (state.dim) cls.push("a-d");
    if (state.italic) cls.push("a-i");
    if (state.underline) cls.push("a-u");
    if (state.fg !== null) cls.push("a-f" + state.fg);
    if (state.bg !== null) cls.push("a-g" + state.bg);
    if (cls.length) el.className = cls.join(" ");
    if (state.fgRgb) el.style.color = state.fgRgb;
    if (state.bgRgb) el.style.backgroundColor = state.bgRgb;
    return el;
  }

  // CSI sequences (ESC [ params final) and OSC sequences (ESC ] ... BEL/ST).
  const ESCAPE = /\x1b\[([0-9;:?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]/g;

  // Returns a DocumentFragment for one line.
  function render(text) {
    // Progress bars redraw with carriage returns: keep what was drawn last.
    const cr = text.lastIndexOf("\r", text.length - 2);
    if (cr >= 0) text = text.slice(cr + 1);
    const frag = document.createDocumentFragment();
    const state = freshState();
    let last = 0;
    let m;
    ESCAPE.lastIndex = 0;
    while ((m = ESCAPE.exec(text)) !== null) {
      if (m.index > last) frag.appendChild(span(text.slice(last, m.index), state));
      if (m[2] === "m") {
        applySgr(state, (m[1] || "").split(/[;:]/).filter((s) => s !== "").map((s) => parseInt(s, 10) || 0));
      }
      last = ESCAPE.lastIndex;
    }
    if (last < text.length) frag.appendChild(span(text.slice(last), state));
    return frag;
  }

  window.AnsiLine = { render: render };
})();
