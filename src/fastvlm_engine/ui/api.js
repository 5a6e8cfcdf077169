// Talking to the router: keys, errors, server-sent events and jobs.
//
// Keys live in sessionStorage (this tab only, gone when it closes) and travel as headers: the API
// key as X-API-Key, the admin key as Authorization: Bearer. Never in a URL, so they cannot end
// up in logs, history or a Referer.

const STORAGE = { api: "fastvlm.apiKey", admin: "fastvlm.adminKey" };
const JOB_WAIT_S = 20;
const JOB_MAX_POLLS = 720; // 4 hours of long polls at most: the loop is bounded
export const JOB_DONE = new Set(["succeeded", "failed", "cancelled", "expired"]);

const KEY_CHARACTERS = /^[\x21-\x7e]{1,512}$/; // what a header can carry; fvk_ keys are URL-safe base64

export const keys = {
  /** Whether a typed key can be sent at all (printable ASCII, no spaces). */
  valid(value) {
    return KEY_CHARACTERS.test(value);
  },
  get(kind) {
    try {
      return sessionStorage.getItem(STORAGE[kind]) || "";
    } catch {
      return ""; // storage disabled: the page works without keys
    }
  },
  set(kind, value) {
    sessionStorage.setItem(STORAGE[kind], value);
  },
  forget(kind) {
    sessionStorage.removeItem(STORAGE[kind]);
  },
};

/** An error as the API reports it ({"error": {"code", "message", ...}}), or one the console met. */
export class ApiError extends Error {
  constructor(status, detail) {
    super(detail.message || "The request failed.");
    this.status = status;
    this.code = detail.code || (status ? `http_${status}` : "network_error");
    this.requestId = detail.request_id || null;
    this.retryAfterSec = typeof detail.retry_after_sec === "number" ? detail.retry_after_sec : null;
    this.fields = Array.isArray(detail.fields) ? detail.fields : [];
  }
}

/** The ApiError a non-2xx response carries (its JSON error body, or its status when it has none). */
export async function errorOf(response) {
  const text = await response.text().catch(() => "");
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === "object" && body.error !== null) return new ApiError(response.status, body.error);
  } catch {
    // not JSON: a proxy's page, for instance; never shown as HTML
  }
  return new ApiError(response.status, {
    code: `http_${response.status}`,
    message: `The server answered ${response.status} ${response.statusText || ""}`.trim() + ".",
    request_id: response.headers.get("x-request-id"),
  });
}

/** fetch() with the right key header; a network failure becomes ApiError("network_error"). */
export async function call(path, { method = "GET", body, headers = {}, key = "api", signal } = {}) {
  const all = { ...headers };
  const secret = keys.get(key);
  if (secret) {
    if (key === "admin") all.Authorization = `Bearer ${secret}`;
    else all["X-API-Key"] = secret;
  }
  try {
    return await fetch(path, { method, body, headers: all, signal, cache: "no-store", credentials: "same-origin" });
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw new ApiError(0, { code: "network_error", message: "The service could not be reached." });
  }
}

/** Server-sent events of a streaming response, as {event, data} with data the raw JSON text. */
export async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      buffer = buffer.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event = parseEvent(block);
        if (event) yield event;
      }
      if (done) break;
    }
  } finally {
    reader.releaseLock();
  }
  const last = parseEvent(buffer);
  if (last) yield last;
}

function parseEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue; // a comment (keep-alive)
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  return data.length ? { event, data: data.join("\n") } : null;
}

/** Follow a job with long polls until it ends; onUpdate(job) after every answer. Returns
 * {job, raw} for the last answer (raw: its exact body text). */
export async function followJob(jobId, { onUpdate, signal }) {
  const path = `job/${encodeURIComponent(jobId)}?wait=${JOB_WAIT_S}`;
  for (let poll = 0; poll < JOB_MAX_POLLS; poll += 1) {
    const response = await call(path, { signal });
    if (!response.ok) throw await errorOf(response);
    const raw = await response.text();
    const job = JSON.parse(raw);
    onUpdate(job);
    if (JOB_DONE.has(job.status)) return { job, raw };
  }
  throw new ApiError(0, { code: "console_gave_up", message: `Stopped following job ${jobId}; it is still running.` });
}

export async function cancelJob(jobId) {
  const response = await call(`job/${encodeURIComponent(jobId)}`, { method: "DELETE" });
  if (!response.ok) throw await errorOf(response);
}
