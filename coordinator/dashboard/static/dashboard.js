// edgefl command center. No framework, no CDN: polls /api/state and draws SVG charts.
// Everything that comes from the broker is inserted with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const meta = (name) => (document.querySelector(`meta[name="${name}"]`) || {}).content || "";
const CSRF = meta("csrf-token");
const REFRESH_MS = Math.max(500, parseInt(meta("refresh-ms"), 10) || 2000);
const ROLE = document.body.dataset.role;
const MAX_UPLOAD = parseInt(meta("max-upload-bytes"), 10) || 0;
const SVG = "http://www.w3.org/2000/svg";
let last = null; // last state
let chartKey = "";
let modelSha = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

const pct = (v, d = 2) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(d)} %`);
const num = (v, d = 4) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "kB", "MB", "GB"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}
function ago(t, now) {
  if (!t) return "–";
  const s = Math.max(0, now - t);
  if (s < 120) return `${Math.round(s)} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  return s < 172800 ? `${Math.round(s / 3600)} h ago` : `${Math.round(s / 86400)} days ago`;
}
const clock = (t) => new Date(t * 1000).toLocaleTimeString();

async function api(path, options = {}) {
  const opts = { credentials: "same-origin", ...options };
  opts.headers = { "X-CSRF-Token": CSRF, ...(options.headers || {}) };
  const r = await fetch(path, opts);
  if (r.status === 401) { window.location.href = "/login"; throw new Error("logged out"); }
  let body;
  try { body = await r.json(); } catch (e) { body = { error: `HTTP ${r.status}` }; }
  return { ok: r.ok, status: r.status, body };
}

// -- charts -----------------------------------------------------------------------------
function niceStep(range, ticks) {
  const raw = range / Math.max(1, ticks);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const f = raw / mag;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

function lineChart(box, points, o) {
  const data = points.filter((p) => p.y !== null && p.y !== undefined && isFinite(p.y));
  const W = Math.max(260, Math.round(box.clientWidth || 600)), H = 220;
  const m = { l: 52, r: 14, t: 12, b: 30 };
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, "data-points": data.length, class: o.cls });
  box.replaceChildren(root);
  if (!data.length) {
    root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, o.empty));
    return;
  }
  let y0 = Math.min(...data.map((p) => p.y)), y1 = Math.max(...data.map((p) => p.y));
  if (y1 - y0 < 1e-9) { const pad = Math.abs(y0) * 0.05 || 0.5; y0 -= pad; y1 += pad; }
  const step = niceStep(y1 - y0, 4);
  y0 = Math.floor(y0 / step) * step; y1 = Math.ceil(y1 / step) * step;
  if (o.min !== undefined) y0 = Math.max(o.min, y0);
  if (o.max !== undefined) y1 = Math.min(o.max, y1);
  const xs = data.map((p) => p.x);
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  const sx = (x) => m.l + ((x - x0) / (x1 - x0)) * (W - m.l - m.r);
  const sy = (y) => H - m.b - ((y - y0) / (y1 - y0 || 1)) * (H - m.t - m.b);
  const decimals = step < 1 ? Math.min(4, Math.ceil(-Math.log10(step))) : 0;
  for (let v = y0; v <= y1 + step / 2; v += step) {
    root.append(svg("line", { x1: m.l, x2: W - m.r, y1: sy(v), y2: sy(v), class: "grid" }));
    root.append(svg("text", { x: m.l - 6, y: sy(v) + 4, "text-anchor": "end", class: "axis-label" },
      o.fmt(v, decimals)));
  }
  const xStep = Math.max(1, Math.ceil((x1 - x0) / Math.max(2, Math.floor((W - m.l) / 60))));
  for (let x = Math.ceil(x0); x <= x1; x += xStep) {
    root.append(svg("text", { x: sx(x), y: H - m.b + 18, "text-anchor": "middle", class: "axis-label" }, x));
  }
  root.append(svg("text", { x: W - m.r, y: H - 2, "text-anchor": "end", class: "axis-label" }, "round"));
  const d = data.map((p, i) => `${i ? "L" : "M"}${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join(" ");
  root.append(svg("path", { d, class: "series", stroke: o.color }));
  for (const p of data) {
    const c = svg("circle", { cx: sx(p.x), cy: sy(p.y), r: data.length > 40 ? 2.5 : 4.5,
      class: "pt", fill: o.color, "data-round": p.x, "data-value": p.y });
    c.append(svg("title", {}, `round ${p.x}: ${o.fmt(p.y, decimals + 2)}${p.note || ""}`));
    root.append(c);
  }
}

// "2 rejected, 1 contested, 1 dropped" for a round; "" when it had none
function notAggregated(h) {
  const parts = [[h.rejected || 0, "rejected"], [(h.contested || []).length, "contested"],
    [(h.dropped || []).length, "dropped"]].filter(([n]) => n > 0);
  return parts.map(([n, what]) => `${n} ${what}`).join(", ");
}

function drawCharts(history) {
  const key = JSON.stringify(history.map((h) => [h.round, h.accuracy, h.loss, notAggregated(h)])) + $("chart-loss").clientWidth;
  if (key === chartKey) return;
  chartKey = key;
  const css = getComputedStyle(document.documentElement);
  const note = (h) => (notAggregated(h) ? ` (${notAggregated(h)})` : "");
  lineChart($("chart-accuracy"), history.map((h) => ({ x: h.round, y: h.accuracy === null ? null : 100 * h.accuracy, note: note(h) })),
    { color: css.getPropertyValue("--accent").trim() || "#2563eb", fmt: (v, d) => `${v.toFixed(d)} %`,
      min: 0, max: 100, cls: "accuracy", empty: "No evaluated round yet" });
  lineChart($("chart-loss"), history.map((h) => ({ x: h.round, y: h.loss, note: note(h) })),
    { color: css.getPropertyValue("--accent-2").trim() || "#d97706", fmt: (v, d) => v.toFixed(d),
      min: 0, cls: "loss", empty: "No evaluated round yet" });
}

// -- state ------------------------------------------------------------------------------
function badge(node, text, cls) {
  node.textContent = text;
  node.className = `badge ${cls || text}`;
}

function row(cells, cls) {
  return el("tr", { class: cls }, ...cells.map(([label, value, c]) => el("td", { "data-label": label, class: c }, value)));
}

function renderDevices(s) {
  const body = $("devices").tBodies[0];
  const rows = s.devices.map((d) => {
    const presence = el("span", { class: `badge ${d.presence}` }, d.presence);
    const state = el("span", { class: `badge ${d.state}`, title: d.detail || "" }, d.state);
    return row([
      ["Device", el("strong", {}, d.device), "wide"], ["Presence", presence], ["State", state],
      ["Selected", d.selected ? "yes" : "–"],
      ["Replied", d.replied === "failed" ? `failed: ${d.failure}` : d.replied || "–", d.replied === "failed" ? "wide" : ""],
      ["Samples", d.samples ? d.samples.toLocaleString() : "–", "num"],
      ["Loss", num(d.loss), "num"], ["Accuracy", pct(d.accuracy), "num"],
      ["Last seen", ago(d.last_seen, s.now)], ["Interpreter", d.interpreter || "–", "wide"],
    ], "device");
  });
  body.replaceChildren(...(rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colspan: 10 }, "No device seen yet."))]));
  $("devices-count").textContent = `(${s.summary.online} online of ${s.summary.devices})`;
}

// Semi-synchronous rounds (docs/round-modes.md): late updates folded, over-selected devices
// still training at the target, late updates wasted (dropped devices: the Rejected column)
function roundNote(h) {
  const parts = [];
  // buffered jobs (FedBuff): a row is a global version, made of `updates` of some staleness
  if (h.mode === "buffered") parts.push(`${h.updates} updates, staleness ${h.staleness_mean === null ? "–" : h.staleness_mean.toFixed(1)}/${h.staleness_max === null ? "–" : h.staleness_max}`);
  if (h.late_folded) parts.push(`+${h.late_folded} late`);
  if ((h.cancelled || []).length) parts.push(`${h.cancelled.length} cancelled`);
  if (h.wasted) parts.push(`${h.wasted} wasted`);
  // secure aggregation (docs/secure-aggregation.md): vectors unmasked, of the threshold
  const sa = h.secagg;
  if (sa) parts.push(sa.stage === "done" ? `secure, t=${sa.threshold}${sa.recovered ? `, ${sa.recovered} recovered` : ""}` : `secure round FAILED: ${sa.failed}`);
  return parts.length ? ` (${parts.join(", ")})` : "";
}

// The open secure round's stage and how many devices sent each stage's message
function secureNote(r) {
  const sa = r && r.secagg;
  if (!sa) return "";
  const sent = ["keys", "shares", "masked", "unmask"].map((k) => `${k} ${sa.sent[k] || "–"}`).join(" · ");
  return `; secure: ${sa.stage} (${sent})`;
}

function renderRounds(history) {
  const body = $("rounds").tBodies[0];
  const rows = history.slice(-50).reverse().map((h) => row([
    ["Round", h.round], ["Accuracy", pct(h.accuracy), "num"], ["Loss", num(h.loss), "num"],
    ["Devices", h.participants.length + roundNote(h), "num"], ["Up", bytes(h.bytes_up), "num"],
    ["Down", bytes(h.bytes_down), "num"], ["Time", h.duration_s === null ? "–" : `${h.duration_s.toFixed(1)} s`, "num"],
    ["Rejected", notAggregated(h) || "–", "num"],
  ], "round"));
  body.replaceChildren(...(rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colspan: 8 }, "No finished round yet."))]));
}

// Newest first. The topic's device is not blamed for a message another sender put under its name.
function renderRejections(list) {
  const rows = (list || []).slice().reverse().map((r) => row([
    ["Round", r.round],
    ["Device", r.sender === r.device ? r.device : `update under ${r.device}'s name from ${r.sender}`, "wide"],
    ["Reason", r.counted ? `${r.reason} (counted as its reply)` : r.reason, "wide"],
  ], "rejection"));
  $("rejections").tBodies[0].replaceChildren(...(rows.length ? rows
    : [el("tr", { class: "empty" }, el("td", { colspan: 3 }, "No update rejected."))]));
  $("rejections-count").textContent = rows.length ? `(latest ${rows.length})` : "";
}

function renderModel(s) {
  const m = s.model;
  const sha = m ? m.sha256 : null;
  if (sha === modelSha && !s.global) return;
  const box = $("model-info");
  if (!m) { box.replaceChildren("No model published yet."); box.className = "muted"; return; }
  box.className = "";
  const kv = [["Architecture", m.architecture], ["Parameters", (m.parameters || 0).toLocaleString()],
    ["Input", (m.input_shape || []).join(" × ")], ["Classes", (m.label_names || []).join(", ")],
    ["Optimizer", `${m.optimizer}, batch ${m.batch_size}`], ["Model", `${bytes(m.bytes)}, sha256 ${m.sha256.slice(0, 12)}…`],
    ["Global weights", s.global ? `round ${s.global.round} (${s.global.encoding}, ${bytes(s.global.bytes)})` : "not published yet"]];
  box.replaceChildren(el("dl", { class: "kv" }, ...kv.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])));
  if (sha !== modelSha) { modelSha = sha; loadConfig(); }
}

async function loadConfig() {
  const { ok, body } = await api("/api/config");
  if (!ok) return;
  const settings = body.settings || {};
  const items = Object.keys(settings).length ? Object.entries(settings)
    : Object.entries({ job: body.job, prefix: body.prefix, broker: body.broker, encoding: body.encoding,
      ...(body.round_hyperparams || {}) });
  $("config").replaceChildren(el("dl", { class: "kv", id: "config-list" },
    ...items.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v === null ? "–" : typeof v === "object" ? JSON.stringify(v) : v)])));
}

function pausedText(c) {
  const who = c.by ? ` by ${c.by}` : "";
  const until = c.until ? ` It resumes by itself at ${clock(c.until)} (the job's --max-pause) unless an admin resumes it sooner.` : " No new round opens until an admin resumes it.";
  return `The job was paused${who} at ${clock(c.time)}${c.detail ? ` (${c.detail})` : ""}.${until}`;
}

function renderBanner(s) {
  const b = $("banner");
  let text = "";
  if (!s.connected) text = "The dashboard is not connected to the broker; reconnecting…";
  else if (!s.seen) text = `No message from job “${s.job}” on ${s.broker} yet. Is the job running, and is the job name right?`;
  else if (s.coordinator_lost) text = "The coordinator lost its connection to the broker (Last Will). Is it still running?";
  else if (s.control && s.control.state === "paused") text = pausedText(s.control);
  else if (s.control && s.control.state === "stopped") text = `The job is stopped${s.control.detail ? ` (${s.control.detail})` : ""}.`;
  b.textContent = text;
  b.hidden = !text;
}

function renderControls(s) {
  if (ROLE !== "admin" || !$("controls")) return;
  const st = s.control ? s.control.state : null;
  $("btn-pause").disabled = st !== "running";
  $("btn-resume").disabled = st !== "paused";
  $("btn-stop").disabled = !st || st === "stopped";
}

function render(s) {
  last = s;
  const st = s.control ? s.control.state : "unknown";
  badge($("job-state"), st);
  $("job-unsigned").hidden = !(s.control && s.control.unsigned_job);
  badge($("link-state"), s.connected ? "connected" : "disconnected");
  renderBanner(s);
  const r = s.round;
  const buffered = r && r.mode === "buffered";
  $("stat-round").textContent = r ? (buffered ? `v${r.round}` : r.round) : "–";
  $("stat-round-sub").textContent = buffered ? `${r.state}: buffered, ${r.selected.length} training, updates at most ${r.max_staleness} versions behind`
    : r ? `${r.state}${r.remaining_s === null ? "" : r.remaining_s > 0 ? `, deadline in ${Math.round(r.remaining_s)} s` : ", deadline passed"}, ${r.replied.length}/${r.selected.length} replied${secureNote(r)}` : "no round yet";
  const h = s.history.length ? s.history[s.history.length - 1] : null;
  $("stat-accuracy").textContent = pct(s.summary.accuracy);
  $("stat-accuracy-sub").textContent = h ? `after round ${h.round}` : "no finished round";
  $("stat-loss").textContent = num(s.summary.loss);
  $("stat-loss-sub").textContent = `${s.summary.rounds_done} round(s) finished`;
  $("stat-devices").textContent = `${s.summary.online} / ${s.summary.devices}`;
  $("stat-devices-sub").textContent = r ? `${r.selected.length} selected this round` : "\u00a0";
  renderControls(s);
  drawCharts(s.history);
  renderDevices(s);
  renderRounds(s.history);
  renderRejections(s.rejections);
  renderModel(s);
  $("events").replaceChildren(...(s.events.length ? s.events.slice(-12).reverse().map((e) =>
    el("li", {}, el("time", {}, clock(e.time)), e.text)) : [el("li", { class: "muted" }, "Nothing yet.")]));
  $("broker").textContent = s.broker || "–";
  $("updated").textContent = clock(s.now);
}

async function refresh() {
  try {
    const { ok, body } = await api("/api/state");
    if (ok) render(body);
  } catch (e) {
    badge($("link-state"), "dashboard unreachable", "disconnected");
  }
}

async function poll() {
  await refresh();
  setTimeout(poll, REFRESH_MS);
}

// -- actions ----------------------------------------------------------------------------
async function control(state) {
  if (state === "stopped" && !window.confirm("Stop the job? The coordinator ends it and devices leave.")) return;
  const msg = $("control-msg");
  msg.textContent = `Asking the job to be ${state}…`;
  const { ok, body } = await api("/api/control", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ state }) });
  msg.textContent = ok ? `Published: job ${body.state}.` : body.error;
  msg.className = ok ? "muted small" : "error small";
  refresh();
}

function showPrediction(p) {
  const best = p.probabilities[0];
  const bars = el("ul", { class: "bars", id: "probabilities" }, ...p.probabilities.map((c, i) =>
    el("li", { class: i === 0 ? "best" : "", "data-label": c.label, "data-p": c.p },
      el("span", { class: "name", title: c.label }, c.label),
      el("span", { class: "bar" }, el("span", { class: "fill" })),
      el("span", { class: "pct" }, `${(100 * c.p).toFixed(1)} %`))));
  // widths via the CSSOM (inline style attributes are blocked by the CSP)
  bars.querySelectorAll(".fill").forEach((f, i) => { f.style.width = `${(100 * p.probabilities[i].p).toFixed(1)}%`; });
  $("predict-result").replaceChildren(el("div", { class: "prediction" },
    el("img", { src: p.preview, alt: "the image as the model sees it" }),
    el("div", {}, el("div", { class: "top", id: "predicted-label" }, best.label),
      el("div", { class: "muted small" }, `${(100 * best.p).toFixed(1)} % · ${p.weights}`)),
    bars));
}

async function predict(event) {
  event.preventDefault();
  const file = $("predict-file").files[0];
  const out = $("predict-result");
  if (!file) { out.replaceChildren(el("p", { class: "error" }, "Choose an image file first.")); return; }
  if (MAX_UPLOAD && file.size > MAX_UPLOAD) {
    out.replaceChildren(el("p", { class: "error", id: "predict-error" },
      `The file is too large: the limit is ${MAX_UPLOAD / 1e6} MB.`));
    return;
  }
  const form = new FormData();
  form.append("image", file);
  if ($("predict-invert").checked) form.append("invert", "1");
  out.replaceChildren(el("p", { class: "muted" }, "Classifying…"));
  try {
    const { ok, body } = await api("/api/predict", { method: "POST", body: form });
    if (ok) showPrediction(body);
    else out.replaceChildren(el("p", { class: "error", id: "predict-error" }, body.error));
  } catch (e) {
    out.replaceChildren(el("p", { class: "error", id: "predict-error" }, "The upload failed: the file may be too large or the dashboard unreachable."));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("predict-form").addEventListener("submit", predict);
  document.querySelectorAll("#controls button[data-state]").forEach((b) =>
    b.addEventListener("click", () => control(b.dataset.state)));
  let timer = null;
  window.addEventListener("resize", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { chartKey = ""; if (last) drawCharts(last.history); }, 150);
  });
  loadConfig();  // again whenever the model changes
  poll();
});
