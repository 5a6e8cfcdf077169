// The "Try it" view: choose or drop an image or a video, send it, show the result as it arrives.
//
// One request at a time: a new one aborts the previous. Images stream their caption (fetch and a
// ReadableStream over the SSE response, since EventSource cannot POST); in queue mode, or with
// "Submit as a job", the console submits a job and follows it to its end. "Copy JSON" copies the
// exact body of the last answer (for a stream: the "done" event's document).

import { ApiError, JOB_DONE, call, cancelJob, errorOf, followJob, sseEvents } from "./api.js";
import { byId, fmtMs, show } from "./dom.js";
import { renderVideo } from "./video.js";

const ENDPOINT = { image: "predict_image", video: "summarize_video" };
let current = null; // {kind, controller, jobId}
let lastRaw = "";
let previewUrls = { image: null, video: null };

export function setupTry({ service, askForKey }) {
  for (const kind of ["image", "video"]) {
    const input = byId(`${kind}-file`);
    input.addEventListener("change", () => chosen(kind));
    dropZone(kind, input);
    byId(`${kind}-form`).addEventListener("submit", (event) => {
      event.preventDefault();
      submit(kind, service, askForKey);
    });
  }
  byId("copy-json").addEventListener("click", copyJson);
  byId("job-cancel").addEventListener("click", cancelCurrentJob);
}

/** Queue mode: every submission is a job, so the "as a job" boxes are on and fixed. */
export function applyMode(mode) {
  for (const box of document.querySelectorAll(".as-job")) {
    if (mode === "queue") {
      box.checked = true;
      box.disabled = true;
    } else if (box.disabled) {
      box.disabled = false;
      box.checked = false;
    }
  }
}

function dropZone(kind, input) {
  const zone = byId(`${kind}-drop`);
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length) {
      input.files = files;
      chosen(kind);
    }
  });
}

function chosen(kind) {
  const file = byId(`${kind}-file`).files[0];
  byId(`${kind}-name`).textContent = file ? `${file.name} (${Math.ceil(file.size / 1024)} KiB)` : "";
  const preview = byId(`${kind}-preview`);
  if (previewUrls[kind]) URL.revokeObjectURL(previewUrls[kind]);
  previewUrls[kind] = file ? URL.createObjectURL(file) : null;
  if (previewUrls[kind]) preview.src = previewUrls[kind];
  else preview.removeAttribute("src");
  show(preview, Boolean(file));
}

function formFor(kind, file) {
  const form = new FormData();
  form.append(kind, file, file.name);
  if (kind === "image") {
    const prompt = byId("image-prompt").value;
    if (prompt.trim()) form.append("prompt", prompt);
    const tokens = byId("image-max-tokens").value.trim();
    if (tokens) form.append("max_new_tokens", tokens);
  } else {
    form.append("speech", String(byId("video-speech").checked));
    form.append("ocr", String(byId("video-ocr").checked));
    form.append("include_thumbnails", "true");
  }
  return form;
}

async function submit(kind, service, askForKey) {
  const file = byId(`${kind}-file`).files[0];
  if (!file) {
    startResult(kind, "");
    const what = kind === "image" ? "an image" : "a video";
    showError(new ApiError(0, { code: "no_file", message: `Choose or drop ${what} first.` }));
    return;
  }
  if (current) current.controller.abort();
  const controller = new AbortController();
  const request = { kind, controller, jobId: null };
  current = request;
  startResult(kind, file.name);
  const asJob = byId(`${kind}-job`).checked || service.mode === "queue";
  const stream = kind === "image" && !asJob && byId("image-stream").checked;
  const form = formFor(kind, file);
  if (stream) form.append("stream", "true");
  setBusy(true, kind === "image" ? "Describing…" : "Summarizing…");
  try {
    const response = await call(ENDPOINT[kind], {
      method: "POST", body: form, signal: controller.signal, headers: asJob ? { Prefer: "respond-async" } : {},
    });
    if (response.status === 202) {
      await followSubmitted(request, await response.text());
    } else if (!response.ok) {
      throw await errorOf(response);
    } else if ((response.headers.get("content-type") || "").startsWith("text/event-stream")) {
      await readStream(response);
    } else {
      showDocument(kind, await response.text());
    }
  } catch (exc) {
    if (exc.name === "AbortError" || current !== request) return;
    showError(exc instanceof ApiError ? exc
      : new ApiError(0, { code: "console_error", message: String(exc.message || exc) }));
    if (exc.code === "unauthorized") askForKey("api", exc.message);
  } finally {
    if (current === request) {
      current = null;
      setBusy(false);
    }
  }
}

async function readStream(response) {
  const caption = byId("caption");
  caption.classList.add("streaming");
  try {
    for await (const { event, data } of sseEvents(response)) {
      if (event === "delta") {
        caption.textContent += JSON.parse(data).text || "";
      } else if (event === "done") {
        showDocument("image", data);
        return;
      } else if (event === "error") {
        const body = JSON.parse(data);
        throw new ApiError(response.status, body.error || {});
      }
    }
  } finally {
    caption.classList.remove("streaming");
  }
  throw new ApiError(0, { code: "incomplete_stream", message: "The stream ended before its result arrived." });
}

async function followSubmitted(request, raw) {
  const submitted = JSON.parse(raw);
  request.jobId = submitted.job_id;
  setJob(submitted);
  setRaw(raw);
  const { job, raw: last } = JOB_DONE.has(submitted.status)
    ? { job: submitted, raw }
    : await followJob(submitted.job_id, { onUpdate: setJob, signal: request.controller.signal });
  if (job.status === "succeeded" && job.result) {
    showDocument(request.kind, JSON.stringify(job.result));
    setRaw(last);
    return;
  }
  const detail = job.error && typeof job.error === "object" ? job.error.error || job.error : null;
  throw new ApiError(0, detail && detail.code ? detail
    : { code: `job_${job.status}`, message: `The job ended ${job.status}.` });
}

function setJob(job) {
  show(byId("job"), true);
  byId("job-id").textContent = job.job_id || "";
  byId("job-status").textContent = job.status || "";
  const detail = [];
  if (job.attempts) detail.push(`attempt ${job.attempts}`);
  if (typeof job.progress === "number") detail.push(`${Math.round(job.progress * 100)}%`);
  else if (job.progress && typeof job.progress === "object") {
    const parts = Object.entries(job.progress).map(([k, v]) => `${k} ${typeof v === "object" ? JSON.stringify(v) : v}`);
    detail.push(parts.join(", "));
  }
  byId("job-detail").textContent = detail.length ? `(${detail.join(", ")})` : "";
  byId("job-cancel").hidden = JOB_DONE.has(job.status);
}

async function cancelCurrentJob() {
  if (!current || !current.jobId) return;
  try {
    await cancelJob(current.jobId);
  } catch (exc) {
    showError(exc);
  }
}

function startResult(kind, fileName) {
  show(byId("result"), true);
  byId("result-title").textContent = kind === "image" ? "Image result" : "Video result";
  byId("result-file").textContent = fileName;
  show(byId("job"), false);
  show(byId("error"), false);
  show(byId("image-result"), kind === "image");
  show(byId("video-result"), false);
  byId("caption").textContent = "";
  byId("image-result-prompt").textContent = "";
  byId("image-result-meta").textContent = "";
  byId("video-result").replaceChildren();
  setRaw("");
}

function showDocument(kind, raw) {
  const doc = JSON.parse(raw);
  setRaw(raw);
  if (kind === "image") {
    byId("image-result-prompt").textContent = doc.prompt ?? "";
    byId("caption").textContent = doc.output ?? "";
    const timing = doc.timing || {};
    byId("image-result-meta").textContent = [
      `${doc.model}`, doc.image ? `${doc.image.width}×${doc.image.height}` : "",
      `finish: ${doc.finish_reason}`, doc.usage ? `${doc.usage.completion_tokens} tokens` : "",
      `first token ${fmtMs(timing.ttft_ms)}`, `total ${fmtMs(timing.total_ms)}`,
    ].filter(Boolean).join(" · ");
  } else {
    const container = byId("video-result");
    renderVideo(container, doc, { seek: seekPreview });
    show(container, true);
  }
}

function seekPreview(seconds) {
  const video = byId("video-preview");
  if (!video.hidden && Number.isFinite(seconds)) video.currentTime = seconds;
}

function showError(error) {
  show(byId("error"), true);
  byId("error-code").textContent = error.code;
  byId("error-message").textContent = error.message;
  const extra = [];
  if (error.status) extra.push(`HTTP ${error.status}`);
  if (typeof error.retryAfterSec === "number") extra.push(`retry after ${error.retryAfterSec.toFixed(1)} s`);
  for (const field of error.fields || []) extra.push(`${field.field}: ${field.message}`);
  if (error.requestId) extra.push(`request ${error.requestId}`);
  byId("error-extra").textContent = extra.join(" · ");
}

function setRaw(raw) {
  lastRaw = raw;
  const pre = byId("json");
  try {
    pre.textContent = raw ? JSON.stringify(JSON.parse(raw), null, 2) : "";
  } catch {
    pre.textContent = raw;
  }
  byId("copy-json").disabled = !raw;
  byId("copy-note").textContent = "";
}

async function copyJson() {
  const note = byId("copy-note");
  try {
    await navigator.clipboard.writeText(lastRaw);
    note.textContent = "Copied.";
  } catch {
    note.textContent = "The browser refused the clipboard: the JSON is under “Response JSON” below.";
  }
}

function setBusy(busy, label) {
  for (const kind of ["image", "video"]) {
    const button = byId(`${kind}-submit`);
    if (!button.dataset.label) button.dataset.label = button.textContent;
    button.textContent = busy && current && current.kind === kind ? label : button.dataset.label;
    button.setAttribute("aria-busy", String(busy && current && current.kind === kind));
  }
}
