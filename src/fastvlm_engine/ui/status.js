// The "Status" view: hosts and their workers, GPU memory, queues, and the router's own request
// rate, error rate and latency over the last minutes, refreshed every 2 s while it is shown.
//
// It reads GET /status (the /healthz document plus the rolling series). Where the service has
// keys, /status needs the admin key; without one the view falls back to /healthz and says what
// is missing.

import { call, errorOf } from "./api.js";
import { lineChart } from "./charts.js";
import { byId, clear, el, fmtBytes, fmtMs } from "./dom.js";

const REFRESH_MS = 2000;
const ENDPOINTS = [["/predict_image", "images", "series-image"], ["/summarize_video", "videos", "series-video"]];
let timer = null;
let visible = false;
let inFlight = false;

export function setupStatus({ onHealth, askForKey }) {
  byId("status-refresh").addEventListener("click", () => refresh(onHealth, askForKey));
  byId("status-live").addEventListener("change", () => schedule(onHealth, askForKey));
  document.addEventListener("visibilitychange", () => schedule(onHealth, askForKey));
  return {
    shown(isShown) {
      visible = isShown;
      if (isShown) refresh(onHealth, askForKey);
      schedule(onHealth, askForKey);
    },
  };
}

function schedule(onHealth, askForKey) {
  clearInterval(timer);
  timer = null;
  if (visible && byId("status-live").checked && !document.hidden) {
    timer = setInterval(() => refresh(onHealth, askForKey), REFRESH_MS);
  }
}

async function refresh(onHealth, askForKey) {
  if (inFlight) return;
  inFlight = true;
  try {
    let doc;
    let note = "";
    const response = await call("status", { key: "admin" });
    if (response.ok) {
      doc = await response.json();
    } else {
      const error = await errorOf(response);
      if (error.status !== 401) throw error;
      note = `Request rates and latency need the admin key (${error.message})`;
      const health = await call("healthz");
      if (!health.ok) throw await errorOf(health);
      doc = await health.json();
    }
    onHealth(doc);
    render(doc, note, askForKey);
  } catch (exc) {
    byId("status-summary").textContent = `${exc.code || "error"}: ${exc.message}`;
  } finally {
    inFlight = false;
  }
}

function render(doc, note, askForKey) {
  const workers = Array.isArray(doc.workers) ? doc.workers : [];
  const ready = workers.filter((w) => w.state === "ready").length;
  byId("status-summary").textContent = [
    `${ready} of ${workers.length} worker(s) ready`,
    doc.mode ? `${doc.mode} mode` : null,
    doc.draining ? "draining: new requests are refused" : null,
  ].filter(Boolean).join(" · ");
  const noteLine = byId("status-note");
  clear(noteLine);
  if (note) {
    noteLine.append(note, " ", el("button", {
      text: "Enter the admin key", attrs: { type: "button", id: "status-admin-key" },
      on: { click: () => askForKey("admin", "The status view's charts need the admin key.") },
    }));
  }
  byId("status-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  renderHosts(workers);
  renderGpus(Array.isArray(doc.gpus) ? doc.gpus : []);
  renderQueues(doc);
  renderTraffic(doc.traffic);
}

function renderHosts(workers) {
  const hosts = new Map();
  for (const worker of workers) {
    const host = worker.host || "local";
    if (!hosts.has(host)) hosts.set(host, []);
    hosts.get(host).push(worker);
  }
  const container = clear(byId("hosts"));
  if (!workers.length) container.append(el("p", { class: "note", text: "No workers yet." }));
  for (const [host, members] of hosts) {
    const tags = [...new Set(members.flatMap((w) => (Array.isArray(w.tags) ? w.tags : [])))];
    container.append(el("section", { class: "host", data: { host } },
      el("h3", { text: host }, tags.length ? el("span", { class: "note", text: ` · ${tags.join(", ")}` }) : null),
      el("div", { class: "workers" }, members.map(workerCard))));
  }
}

function workerCard(worker) {
  const slots = worker.max_concurrent || 0;
  const latency = worker.latency_ms && typeof worker.latency_ms === "object" ? worker.latency_ms : {};
  const latencyText = ENDPOINTS.filter(([path]) => typeof latency[path] === "number")
    .map(([path, name]) => `${name} ${fmtMs(latency[path])}`).join(", ") || "not measured yet";
  const rss = worker.memory && worker.memory.host_rss_bytes;
  const fields = [
    ["device", worker.device || "–"],
    ["in flight", `${worker.in_flight ?? 0} / ${slots}`],
    ["restarts", String(worker.restarts ?? 0)],
    ["latency", latencyText],
    ["pid", worker.pid ?? "–"],
    rss ? ["memory", fmtBytes(rss)] : null,
  ].filter(Boolean);
  return el("article", { class: "worker", data: { worker: worker.id, state: worker.state } },
    el("header", {}, el("strong", { class: "worker-id", text: worker.id }),
      el("span", { class: `badge state-${worker.state}`, text: worker.state })),
    el("meter", { attrs: { min: 0, max: Math.max(1, slots), value: worker.in_flight || 0,
      "aria-label": `${worker.id} in flight over slots` } }),
    el("dl", {}, fields.map(([name, value]) => [el("dt", { text: name }), el("dd", { text: value })])),
    el("p", { class: "note", text: worker.reason || "" }),
    worker.last_failure ? el("p", { class: "note", text: `last failure: ${worker.last_failure}` }) : null);
}

function renderGpus(gpus) {
  const container = clear(byId("gpus"));
  if (!gpus.length) {
    container.append(el("p", { class: "note", text: "No GPUs: workers run on the CPU." }));
    return;
  }
  for (const gpu of gpus) {
    const total = gpu.memory_total_bytes || 0;
    const used = gpu.memory_used_bytes || 0;
    container.append(el("div", { class: "gpu", data: { gpu: gpu.index } },
      el("p", {}, el("strong", { text: `GPU ${gpu.index}` }), ` ${gpu.name || ""}`,
        gpu.simulated ? el("span", { class: "badge", text: "simulated" }) : null),
      el("meter", { attrs: { min: 0, max: Math.max(1, total), value: used, "aria-label": `GPU ${gpu.index} memory` } }),
      el("p", { class: "note", text: `${fmtBytes(used)} of ${fmtBytes(total)} in use` })));
  }
}

function renderQueues(doc) {
  const container = clear(byId("queues"));
  const rows = [];
  for (const [name, depth] of Object.entries(doc.admission_queue || {})) rows.push([`admission: ${name}`, depth]);
  for (const source of ["jobs", "queue"]) {
    const value = doc[source];
    if (value && typeof value === "object") {
      for (const [name, count] of Object.entries(value)) {
        if (typeof count === "number") rows.push([`${source}: ${name}`, count]);
      }
    }
  }
  container.append(rows.length
    ? el("dl", { class: "queues" },
      rows.map(([name, depth]) => [el("dt", { text: name }), el("dd", { text: String(depth) })]))
    : el("p", { class: "note", text: "No queue information." }));
}

function renderTraffic(traffic) {
  const charts = clear(byId("charts"));
  const note = byId("traffic-note");
  if (!traffic || !traffic.endpoints) {
    note.textContent = "Not available without the admin key.";
    return;
  }
  const span = traffic.window_s;
  const start = traffic.now - span;
  const fraction = (t) => Math.min(1, Math.max(0, (t + traffic.bucket_s / 2 - start) / span));
  const series = (pick) => ENDPOINTS.map(([path, name, cls]) => ({
    name, cls, points: ((traffic.endpoints[path] || {}).series || []).map((p) => ({ x: fraction(p.t), y: pick(p) })),
  }));
  const totals = ENDPOINTS.map(([path, name]) => {
    const t = traffic.endpoints[path] || {};
    return `${name}: ${t.requests ?? 0} requests, ${t.errors ?? 0} errors (5xx), ${t.client_errors ?? 0} refused (4xx)`;
  });
  note.textContent = `Last ${Math.round(span / 60)} minutes in ${traffic.bucket_s} s steps, as this router saw them. `
    + `${totals.join("; ")}.`;
  charts.append(
    lineChart({ id: "chart-rate", title: "Requests / s", format: (v) => v.toFixed(2),
      lines: series((p) => (p.seconds > 0 ? p.requests / p.seconds : null)), span }),
    lineChart({ id: "chart-errors", title: "Error rate (5xx)", format: (v) => `${v.toFixed(0)}%`,
      lines: series((p) => (p.requests ? (100 * p.errors) / p.requests : null)), span }),
    lineChart({ id: "chart-p50", title: "Latency p50", format: fmtMs, lines: series((p) => p.p50_ms), span }),
    lineChart({ id: "chart-p99", title: "Latency p99", format: fmtMs, lines: series((p) => p.p99_ms), span }),
  );
}
