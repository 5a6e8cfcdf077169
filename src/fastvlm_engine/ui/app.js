// The console's entry point: the two views, the keys panel and the service line in the header.

import { call, errorOf, keys } from "./api.js";
import { byId } from "./dom.js";
import { setupStatus } from "./status.js";
import { applyMode, setupTry } from "./try.js";

const HEALTH_EVERY_MS = 10000;
const service = { mode: "sync" };

function onHealth(health) {
  service.mode = health.mode === "queue" ? "queue" : "sync";
  applyMode(service.mode);
  const workers = Array.isArray(health.workers) ? health.workers : [];
  const ready = typeof health.ready_workers === "number" ? health.ready_workers
    : workers.filter((w) => w.state === "ready").length;
  const draining = health.draining ? " · draining" : "";
  byId("service").textContent = `${service.mode} mode · ${ready} ready worker(s)${draining}`;
}

async function pollHealth() {
  try {
    const response = await call("healthz");
    if (!response.ok) throw await errorOf(response);
    onHealth(await response.json());
  } catch (exc) {
    byId("service").textContent = `service unreachable (${exc.code || "error"})`;
  }
}

function askForKey(kind, message) {
  const panel = byId("keys");
  panel.open = true;
  byId("keys-note").textContent = message;
  byId(kind === "admin" ? "admin-key" : "api-key").focus();
}

function setupKeys(onChange) {
  for (const kind of ["api", "admin"]) {
    const input = byId(`${kind}-key`);
    const state = byId(`${kind}-key-state`);
    const describe = () => {
      state.textContent = keys.get(kind) ? "saved for this tab" : "none";
    };
    byId(`${kind}-key-form`).addEventListener("submit", (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (value && !keys.valid(value)) {
        byId("keys-note").textContent = "A key is printable ASCII without spaces; that one cannot be sent.";
        return;
      }
      if (value) keys.set(kind, value);
      input.value = "";
      describe();
      onChange(kind);
    });
    byId(`${kind}-key-forget`).addEventListener("click", () => {
      keys.forget(kind);
      input.value = "";
      describe();
      onChange(kind);
    });
    describe();
  }
}

function setupViews(statusView) {
  const tabs = [...document.querySelectorAll(".tab")];
  const select = (name) => {
    for (const tab of tabs) {
      const active = tab.dataset.view === name;
      tab.setAttribute("aria-pressed", String(active));
      byId(`view-${tab.dataset.view}`).hidden = !active;
    }
    statusView.shown(name === "status");
  };
  for (const tab of tabs) {
    tab.addEventListener("click", () => {
      select(tab.dataset.view);
      history.replaceState(null, "", `#${tab.dataset.view}`);
    });
  }
  const fromHash = () => select(location.hash === "#status" ? "status" : "try");
  window.addEventListener("hashchange", fromHash);
  fromHash();
}

setupTry({ service, askForKey });
const statusView = setupStatus({ onHealth, askForKey });
setupKeys((kind) => {
  if (kind === "admin" && !byId("view-status").hidden) statusView.shown(true);
});
setupViews(statusView);
pollHealth();
setInterval(pollHealth, HEALTH_EVERY_MS);
