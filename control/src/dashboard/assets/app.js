// yr dashboard: polls /api/state every 2 s and renders the page for the current hash route.
// Vanilla JS, no build step, nothing loaded from elsewhere. Every value from the server goes
// into the page as text (textContent), never as markup.
"use strict";

(function () {
  const PAGES = ["overview", "nodes", "functions", "instances", "objects", "masters"];
  const REFRESH_MS = 2000;
  const LOG_POLL_MS = 1000;
  const HISTORY_KEEP_MS = 3600 * 1000;
  const LOG_KEEP_CHARS = 1 << 20;

  let timer = null;
  let lastState = null;
  const histories = new Map(); // node id -> {since, samples: []}
  let historyBusy = false;
  const log = { id: null, timer: null, offsets: {}, busy: false };

  const $ = (sel, root) => (root || document).querySelector(sel);

  // ---------- formatting ----------
  function bytes(n) {
    if (n == null || isNaN(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    let v = Number(n);
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 2 : 1)) + " " + units[i];
  }
  function num(n, digits) {
    if (n == null || isNaN(n)) return "–";
    return Number(n).toFixed(digits);
  }
  function pct(part, whole) {
    if (!whole) return "–";
    return (100 * part / whole).toFixed(1) + "%";
  }
  function cores(millis) { return (millis / 1000).toFixed(2); }
  function ms(v) { return v == null ? "–" : (v < 10 ? v.toFixed(2) : v.toFixed(1)) + " ms"; }
  function clock(unixMs) {
    if (!unixMs) return "never";
    return new Date(unixMs).toLocaleTimeString();
  }

  // ---------- DOM helpers ----------
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    return e;
  }
  function setText(e, text) {
    const t = String(text);
    if (e.textContent !== t) e.textContent = t;
  }
  // Keeps one row per key in `tbody`, in the order of `items`: rows are reused (so a button a
  // user is about to click stays the same element), created when new and removed when gone.
  // `fill(row, item, fresh)` writes the cells.
  function syncRows(tbody, items, keyAttr, keyOf, columns, fill) {
    const existing = new Map();
    for (const r of Array.from(tbody.rows)) existing.set(r.getAttribute(keyAttr), r);
    const keep = new Set();
    let prev = null;
    for (const item of items) {
      const key = String(keyOf(item));
      keep.add(key);
      let row = existing.get(key);
      const fresh = !row;
      if (fresh) {
        row = el("tr", { [keyAttr]: key });
        for (const c of columns) {
          const td = el("td");
          if (c.field) td.setAttribute("data-field", c.field);
          if (c.num) td.className = "num";
          row.appendChild(td);
        }
      }
      fill(row, item, fresh);
      const want = prev ? prev.nextSibling : tbody.firstChild;
      if (want !== row) tbody.insertBefore(row, want);
      prev = row;
    }
    for (const [k, r] of existing) if (!keep.has(k)) r.remove();
  }
  function cell(row, i) { return row.cells[i]; }

  // ---------- auth ----------
  function showLogin(message) {
    stopPolling();
    closeLogs();
    $("#app").hidden = true;
    $("#login-screen").hidden = false;
    const err = $("#login-error");
    err.hidden = !message;
    err.textContent = message || "";
    $("#token").focus();
  }
  function showApp() {
    $("#login-screen").hidden = true;
    $("#app").hidden = false;
    route();
    startPolling();
  }
  async function login(ev) {
    ev.preventDefault();
    const token = $("#token").value.trim();
    let r;
    try {
      r = await fetch("/api/login", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ token: token }),
      });
    } catch (e) {
      showLogin("cannot reach the dashboard: " + e);
      return;
    }
    if (r.ok) {
      $("#token").value = "";
      showApp();
    } else {
      showLogin("The token is wrong.");
    }
  }
  async function logout() {
    try { await fetch("/api/logout", { method: "POST", credentials: "same-origin" }); } catch (e) { /* shown below */ }
    showLogin("");
  }

  // ---------- polling ----------
  async function getJSON(path) {
    const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
    if (r.status === 401) {
      const e = new Error("unauthorized");
      e.unauthorized = true;
      throw e;
    }
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
    return body;
  }
  function startPolling() {
    if (timer) return;
    refresh();
    timer = setInterval(refresh, REFRESH_MS);
  }
  function stopPolling() {
    if (timer) clearInterval(timer);
    timer = null;
  }
  async function refresh() {
    let state;
    try {
      state = await getJSON("/api/state");
    } catch (e) {
      if (e.unauthorized) { showLogin(""); return; }
      const s = $("#sources");
      s.className = "badge down";
      s.textContent = "dashboard unreachable";
      return;
    }
    lastState = state;
    render(state);
    document.body.setAttribute("data-updated", String(Date.now()));
    if (currentPage() === "nodes") refreshHistories(state);
  }

  // ---------- routing ----------
  function currentPage() {
    const m = /^#\/([a-z]+)/.exec(location.hash);
    return m && PAGES.includes(m[1]) ? m[1] : "overview";
  }
  function route() {
    const page = currentPage();
    for (const p of PAGES) {
      $("#page-" + p).hidden = p !== page;
      const a = $('a[data-nav="' + p + '"]');
      a.classList.toggle("active", p === page);
    }
    if (page === "nodes" && lastState) refreshHistories(lastState);
  }

  // ---------- rendering ----------
  function render(s) {
    setText($("#cluster-name"), (s.cluster && s.cluster.name) || "yr");
    setText($("#updated"), "updated " + clock(s.updated_unix_ms || Date.now()));
    const warnings = [];
    const src = s.sources || {};
    if (src.master && !src.master.reachable && src.master.error) warnings.push("master: " + src.master.error);
    if (src.etcd && !src.etcd.reachable && src.etcd.error) warnings.push("etcd: " + src.etcd.error);
    const staleNodes = (s.nodes || []).filter((n) => n.state === "alive" && n.collector && n.collector.stale);
    if (staleNodes.length) warnings.push("no fresh figures from the collector of " + staleNodes.map((n) => n.node_id).join(", "));
    const w = $("#warnings");
    w.hidden = warnings.length === 0;
    setText(w, warnings.join(" · "));
    const badge = $("#sources");
    if (src.master && !src.master.reachable) { badge.className = "badge down"; setText(badge, "master unreachable"); }
    else if (warnings.length) { badge.className = "badge stale"; setText(badge, "partly stale"); }
    else { badge.className = "badge"; setText(badge, "live"); }

    renderOverview(s.overview || {});
    renderNodes(s.nodes || []);
    renderFunctions(s.functions || []);
    renderRest(s.rest || []);
    renderInstances(s.instances || []);
    renderObjects(s.objects || []);
    renderMasters(s.masters || []);
  }

  function stat(name, value) { setText($('[data-stat="' + name + '"]'), value); }
  function renderOverview(o) {
    stat("nodes-alive", o.nodes_alive ?? 0);
    stat("nodes-dead", o.nodes_dead ?? 0);
    stat("instances", o.instances ?? 0);
    setText($("#stat-instances-sub"), (o.instances_running ?? 0) + " running · " + (o.functions ?? 0) + " functions");
    stat("calls-per-s", num(o.calls_per_s ?? 0, 2));
    stat("errors-per-s", num(o.errors_per_s ?? 0, 2));
    stat("rest-per-s", num(o.rest_requests_per_s ?? 0, 2));
    setText($("#stat-rest-sub"), num(o.rest_errors_per_s ?? 0, 2) + " 5xx / s");
    stat("cpu", pct(o.cpu_millis || 0, o.cpu_total_millis));
    setText($("#stat-cpu-sub"), cores(o.cpu_millis || 0) + " of " + cores(o.cpu_total_millis || 0) + " cores");
    stat("memory", bytes(o.memory_used_bytes || 0));
    setText($("#stat-memory-sub"), "of " + bytes(o.memory_total_bytes || 0));
    stat("shm", bytes(o.shm_used_bytes || 0));
    setText($("#stat-shm-sub"), "of " + bytes(o.shm_total_bytes || 0) + " in arenas");
    stat("objects", o.objects ?? 0);
  }

  function bar(td, text, part, whole) {
    if (!td.firstChild) {
      td.appendChild(el("div"));
      const b = el("div", { class: "bar" });
      b.appendChild(el("div"));
      td.appendChild(b);
    }
    setText(td.firstChild, text);
    const frac = whole ? Math.min(1, part / whole) : 0;
    td.lastChild.firstChild.style.width = (100 * frac).toFixed(1) + "%";
  }

  const NODE_COLS = [{}, {}, { field: "state" }, { field: "cpu" }, { field: "memory" }, { field: "shm" }, { field: "objects", num: true }, { field: "instances", num: true }, { field: "calls-per-s", num: true }, { field: "collector" }];
  function renderNodes(nodes) {
    syncRows($("#nodes-body"), nodes, "data-node-id", (n) => n.node_id, NODE_COLS, (row, n) => {
      row.className = n.state;
      setText(cell(row, 0), n.node_id);
      setText(cell(row, 1), n.hostname || "");
      setText(cell(row, 2), n.state);
      bar(cell(row, 3), cores(n.cpu_millis) + " / " + cores(n.cpu_total_millis) + " cores", n.cpu_millis, n.cpu_total_millis);
      bar(cell(row, 4), bytes(n.memory_used_bytes) + " / " + bytes(n.memory_total_bytes), n.memory_used_bytes, n.memory_total_bytes);
      bar(cell(row, 5), bytes(n.shm_used_bytes) + " / " + bytes(n.shm_total_bytes), n.shm_used_bytes, n.shm_total_bytes);
      setText(cell(row, 6), n.objects);
      setText(cell(row, 7), n.instances);
      setText(cell(row, 8), num(n.calls_per_s, 2));
      const c = n.collector || {};
      setText(cell(row, 9), c.reachable ? (c.stale ? "stale" : "ok") : ("unreachable" + (c.error ? ": " + c.error : "")));
    });
    syncPlots(nodes);
  }

  // ---------- plots ----------
  const PLOTS = [
    { key: "cpu", title: "CPU (cores)", value: (s) => s.cpu_millis / 1000, max: (s) => s.cpu_total_millis / 1000, fmt: (v) => v.toFixed(2) },
    { key: "memory", title: "Memory", value: (s) => s.memory_used_bytes, max: (s) => s.memory_total_bytes, fmt: bytes },
    { key: "arena", title: "Arena use", value: (s) => s.arena_used_bytes, max: (s) => s.arena_capacity_bytes, fmt: bytes },
    { key: "spill", title: "Spilled", value: (s) => s.spilled_bytes, max: () => 0, fmt: bytes },
  ];
  const SVG = "http://www.w3.org/2000/svg";
  function svgEl(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    return e;
  }
  function syncPlots(nodes) {
    const box = $("#plots");
    const want = new Set(nodes.map((n) => n.node_id));
    for (const card of Array.from(box.children)) if (!want.has(card.getAttribute("data-node-id"))) card.remove();
    for (const n of nodes) {
      let card = box.querySelector('.node-plots[data-node-id="' + CSS.escape(n.node_id) + '"]');
      if (!card) {
        card = el("div", { class: "node-plots", "data-node-id": n.node_id });
        card.appendChild(el("h3", {}, n.node_id));
        const rowEl = el("div", { class: "plot-row" });
        for (const p of PLOTS) {
          const wrap = el("div", { class: "plot" });
          wrap.appendChild(el("div", { class: "title" }, p.title));
          const svg = svgEl("svg", { "data-plot": p.key, "data-node-id": n.node_id, viewBox: "0 0 300 110", preserveAspectRatio: "none" });
          wrap.appendChild(svg);
          rowEl.appendChild(wrap);
        }
        card.appendChild(rowEl);
        box.appendChild(card);
      }
      const h = histories.get(n.node_id);
      for (const p of PLOTS) {
        const svg = card.querySelector('svg[data-plot="' + p.key + '"]');
        drawPlot(svg, h ? h.samples : [], p);
      }
    }
  }
  // A line over time: x from the first to the last sample, y from 0 to the larger of the
  // series' maximum and its natural ceiling (the node's total).
  function drawPlot(svg, samples, p) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const W = 300, H = 110, L = 4, R = 296, T = 14, B = 96;
    svg.appendChild(svgEl("line", { class: "axis", x1: L, y1: B, x2: R, y2: B }));
    if (samples.length < 2) {
      svg.appendChild(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "waiting for samples"));
      return;
    }
    const t0 = samples[0].unix_ms, t1 = samples[samples.length - 1].unix_ms;
    let top = 0;
    for (const s of samples) top = Math.max(top, p.value(s) || 0, p.max(s) || 0);
    if (top <= 0) top = 1;
    const x = (t) => L + (R - L) * (t1 === t0 ? 1 : (t - t0) / (t1 - t0));
    const y = (v) => B - (B - T) * Math.max(0, Math.min(1, (v || 0) / top));
    const pts = samples.map((s) => x(s.unix_ms).toFixed(1) + "," + y(p.value(s)).toFixed(1));
    svg.appendChild(svgEl("polygon", { class: "area", points: L + "," + B + " " + pts.join(" ") + " " + R + "," + B }));
    svg.appendChild(svgEl("polyline", { class: "line", points: pts.join(" ") }));
    svg.appendChild(svgEl("text", { x: L, y: 10 }, "max " + p.fmt(top)));
    const last = samples[samples.length - 1];
    svg.appendChild(svgEl("text", { x: R, y: 10, "text-anchor": "end" }, "now " + p.fmt(p.value(last) || 0)));
    svg.appendChild(svgEl("text", { x: L, y: H - 2 }, clock(t0)));
    svg.appendChild(svgEl("text", { x: R, y: H - 2, "text-anchor": "end" }, clock(t1)));
  }
  async function refreshHistories(state) {
    if (historyBusy) return;
    historyBusy = true;
    try {
      for (const n of state.nodes || []) {
        const h = histories.get(n.node_id) || { since: 0, samples: [] };
        try {
          const r = await getJSON("/api/nodes/" + encodeURIComponent(n.node_id) + "/history?since=" + h.since);
          for (const s of r.samples || []) h.samples.push(s);
        } catch (e) {
          if (e.unauthorized) { showLogin(""); return; }
          continue;
        }
        if (h.samples.length) {
          const newest = h.samples[h.samples.length - 1].unix_ms;
          h.since = newest;
          while (h.samples.length && h.samples[0].unix_ms < newest - HISTORY_KEEP_MS) h.samples.shift();
        }
        histories.set(n.node_id, h);
      }
      syncPlots(state.nodes || []);
    } finally {
      historyBusy = false;
    }
  }

  const FN_COLS = [{}, {}, { field: "min", num: true }, { field: "max", num: true }, { field: "instances", num: true }, { field: "running", num: true }, { field: "calls", num: true }, { field: "calls-per-s", num: true }, { field: "errors-per-s", num: true }, { field: "p50", num: true }, { field: "p99", num: true }];
  function renderFunctions(fns) {
    syncRows($("#functions-body"), fns, "data-function", (f) => f.name, FN_COLS, (row, f) => {
      setText(cell(row, 0), f.name);
      setText(cell(row, 1), f.kind || (f.deployed ? "" : "not deployed"));
      setText(cell(row, 2), f.min);
      setText(cell(row, 3), f.max);
      setText(cell(row, 4), f.instances);
      setText(cell(row, 5), f.running);
      setText(cell(row, 6), String(f.calls_total));
      setText(cell(row, 7), num(f.calls_per_s, 2));
      setText(cell(row, 8), num(f.errors_per_s, 2));
      setText(cell(row, 9), ms(f.p50_ms));
      setText(cell(row, 10), ms(f.p99_ms));
    });
  }

  const REST_COLS = [{ field: "service" }, { field: "node" }, { field: "url" }, { field: "requests", num: true }, { field: "requests-per-s", num: true }, { field: "errors-per-s", num: true }, { field: "p50", num: true }, { field: "p99", num: true }];
  function renderRest(list) {
    syncRows($("#rest-body"), list, "data-rest", (r) => r.service + "@" + r.node_id, REST_COLS, (row, r) => {
      setText(cell(row, 0), r.service);
      setText(cell(row, 1), r.node_id);
      setText(cell(row, 2), r.url + (r.up ? "" : " (not answering: " + (r.error || "?") + ")"));
      setText(cell(row, 3), String(r.requests_total));
      setText(cell(row, 4), num(r.requests_per_s, 2));
      setText(cell(row, 5), num(r.errors_per_s, 2));
      setText(cell(row, 6), ms(r.p50_ms));
      setText(cell(row, 7), ms(r.p99_ms));
    });
  }

  const INST_COLS = [{ field: "id" }, { field: "function" }, { field: "state" }, { field: "node" }, { field: "pid", num: true }, { field: "restarts", num: true }, { field: "cpu", num: true }, { field: "rss", num: true }, { field: "error" }, {}];
  function renderInstances(list) {
    syncRows($("#instances-body"), list, "data-instance-id", (i) => i.instance_id, INST_COLS, (row, i, fresh) => {
      setText(cell(row, 0), i.instance_id + (i.name ? " (" + i.name + ")" : ""));
      setText(cell(row, 1), i.function);
      setText(cell(row, 2), i.state);
      cell(row, 2).className = "state-" + i.state;
      setText(cell(row, 3), i.node_id);
      setText(cell(row, 4), i.pid);
      setText(cell(row, 5), i.restarts);
      setText(cell(row, 6), i.cpu_millis + "m");
      setText(cell(row, 7), bytes(i.rss_bytes));
      setText(cell(row, 8), i.error || "");
      if (fresh) {
        const b = el("button", { type: "button", "data-logs": i.instance_id }, "Logs");
        b.addEventListener("click", () => openLogs(i.instance_id));
        cell(row, 9).appendChild(b);
      }
    });
  }

  const OBJ_COLS = [{}, { field: "arena" }, { field: "objects", num: true }, { field: "pinned", num: true }, { field: "spilled", num: true }, { field: "spilled-bytes", num: true }, { field: "spills", num: true }, { field: "restores", num: true }, { field: "transfer-in", num: true }, { field: "transfer-out", num: true }];
  function renderObjects(list) {
    syncRows($("#objects-body"), list, "data-node-id", (o) => o.node_id, OBJ_COLS, (row, o) => {
      setText(cell(row, 0), o.node_id);
      bar(cell(row, 1), bytes(o.used_bytes) + " / " + bytes(o.capacity_bytes) + (o.up ? "" : " (data worker not answering)"), o.used_bytes, o.capacity_bytes);
      setText(cell(row, 2), o.objects);
      setText(cell(row, 3), o.pinned_objects);
      setText(cell(row, 4), o.spilled_objects);
      setText(cell(row, 5), bytes(o.spilled_bytes));
      setText(cell(row, 6), o.spills_total);
      setText(cell(row, 7), o.restores_total);
      setText(cell(row, 8), bytes(o.transfer_in_bytes_total) + " (" + bytes(o.transfer_in_per_s) + "/s)");
      setText(cell(row, 9), bytes(o.transfer_out_bytes_total) + " (" + bytes(o.transfer_out_per_s) + "/s)");
    });
  }

  const MASTER_COLS = [{}, { field: "address" }, { field: "role" }];
  function renderMasters(list) {
    syncRows($("#masters-body"), list, "data-master", (m) => m.node_id, MASTER_COLS, (row, m) => {
      setText(cell(row, 0), m.node_id);
      setText(cell(row, 1), m.address);
      const role = m.active ? "active" : "standby";
      setText(cell(row, 2), role);
      cell(row, 2).className = "role-" + role;
    });
  }

  // ---------- logs ----------
  function openLogs(id) {
    closeLogs();
    log.id = id;
    log.offsets = { stdout: null, stderr: null };
    const view = $("#log-view");
    view.setAttribute("data-instance", id);
    setText($("#log-title"), id);
    setText($("#log-status"), "loading…");
    $("#log-text").textContent = "";
    view.hidden = false;
    pollLogs();
    log.timer = setInterval(pollLogs, LOG_POLL_MS);
  }
  function closeLogs() {
    if (log.timer) clearInterval(log.timer);
    log.timer = null;
    log.id = null;
    const view = $("#log-view");
    if (view) {
      view.hidden = true;
      view.removeAttribute("data-instance");
    }
  }
  async function pollLogs() {
    if (log.busy || !log.id) return;
    log.busy = true;
    const id = log.id;
    try {
      for (const stream of ["stdout", "stderr"]) {
        const off = log.offsets[stream];
        const q = "/api/instances/" + encodeURIComponent(id) + "/logs?stream=" + stream + (off == null ? "" : "&offset=" + off);
        let r;
        try {
          r = await getJSON(q);
        } catch (e) {
          if (e.unauthorized) { showLogin(""); return; }
          if (log.id === id) setText($("#log-status"), stream + ": " + e.message);
          continue;
        }
        if (log.id !== id) return;
        log.offsets[stream] = r.next_offset;
        if (r.text) appendLog(r.text, stream);
        setText($("#log-status"), "following stdout and stderr");
      }
    } finally {
      log.busy = false;
    }
  }
  function appendLog(text, stream) {
    const pre = $("#log-text");
    const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 30;
    if (stream === "stderr") pre.appendChild(el("span", { class: "stderr" }, text));
    else pre.appendChild(document.createTextNode(text));
    while (pre.textContent.length > LOG_KEEP_CHARS && pre.firstChild) pre.removeChild(pre.firstChild);
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  // ---------- start ----------
  async function start() {
    $("#login").addEventListener("submit", login);
    $("#logout").addEventListener("click", logout);
    $("#log-close").addEventListener("click", closeLogs);
    window.addEventListener("hashchange", route);
    if (!location.hash) history.replaceState(null, "", "#/overview");
    try {
      const s = await getJSON("/api/state");
      showApp();
      lastState = s;
      render(s);
      document.body.setAttribute("data-updated", String(Date.now()));
    } catch (e) {
      showLogin(e.unauthorized ? "" : "cannot reach the dashboard: " + e.message);
    }
  }
  document.addEventListener("DOMContentLoaded", start);
})();
