// A /summarize_video document as a page: summary, a timeline of scenes with the keyframes on it,
// each scene with its keyframe cards, speech and on-screen text, then flags, tags and timing.

import { el, fmtClock, fmtSeconds } from "./dom.js";

const SEQUENTIAL_STAGES = [
  ["stats_sec", "stats"], ["scene_detection_sec", "scenes"], ["frame_extraction_sec", "frames"],
  ["dedupe_sec", "dedupe"], ["captioning_sec", "captioning"], ["summary_sec", "summary"],
  ["tags_sec", "tags"], ["safety_sec", "safety"],
];
const PARALLEL_STAGES = [["asr_sec", "speech"], ["ocr_sec", "on-screen text"]];
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/** Render the document into container; seek(t) moves the preview (when there is one). */
export function renderVideo(container, doc, { seek } = {}) {
  const scenes = Array.isArray(doc.scenes) ? doc.scenes : [];
  const captions = Array.isArray(doc.captions) ? doc.captions : [];
  const duration = doc.video && doc.video.duration_sec > 0 ? doc.video.duration_sec
    : Math.max(0.001, ...scenes.map((s) => s.end_sec || 0));
  container.replaceChildren(
    el("p", { class: "summary", attrs: { id: "video-summary" }, text: doc.summary || "" }),
    info(doc),
    timeline(scenes, captions, duration, seek),
    el("div", { class: "scenes", attrs: { id: "scenes" } },
      scenes.map((scene, index) => sceneSection(scene, index, captions.filter((c) => c.scene === index))),
      orphans(captions, scenes.length)),
    flagsAndTags(doc),
    stages(doc.stages),
    timing(doc.timing || {}),
  );
}

function info(doc) {
  const video = doc.video || {};
  const parts = [
    `${fmtSeconds(video.duration_sec)} at ${video.fps ? video.fps.toFixed(1) : "–"} fps`,
    `${video.width}×${video.height}${video.rotation ? ` (rotated ${video.rotation}°)` : ""}`,
    `${doc.scenes_detected ?? "–"} scene(s), ${doc.frames_used ?? "–"} keyframe(s) captioned`,
    `summary: ${doc.summary_source || "–"}`,
    `model ${doc.model || "–"}`,
  ];
  return el("p", { class: "meta", attrs: { id: "video-info" }, text: parts.join(" · ") });
}

function timeline(scenes, captions, duration, seek) {
  const bar = el("div", { class: "timeline-scenes" });
  scenes.forEach((scene, index) => {
    const span = Math.max(0, scene.end_sec - scene.start_sec);
    const label = `Scene ${index + 1}: ${fmtClock(scene.start_sec)}–${fmtClock(scene.end_sec)}`;
    const button = el("button", {
      class: `segment segment-${index % 6}`, text: String(index + 1),
      attrs: { type: "button", title: label, "aria-label": `${label}, show it` },
      data: { scene: index },
      on: {
        click: () => {
          const section = document.getElementById(`scene-${index}`);
          if (section) {
            section.scrollIntoView({ block: "start", behavior: "smooth" });
            section.focus({ preventScroll: true });
          }
          if (seek) seek(scene.start_sec);
        },
      },
    });
    button.style.flexGrow = String(Math.max(span / duration, 0.002)); // CSSOM, not a style attribute
    bar.append(button);
  });
  const marks = el("div", { class: "timeline-marks", attrs: { "aria-hidden": "true" } });
  for (const caption of captions) {
    const mark = el("span", { class: "mark", attrs: { title: fmtClock(caption.timestamp_sec) } });
    mark.style.left = `${Math.min(100, Math.max(0, (100 * caption.timestamp_sec) / duration))}%`;
    marks.append(mark);
  }
  return el("div", { class: "timeline", attrs: { id: "timeline", role: "group", "aria-label": "Timeline" } },
    bar, marks,
    el("div", { class: "timeline-axis", attrs: { "aria-hidden": "true" } },
      el("span", { text: fmtClock(0) }), el("span", { text: fmtClock(duration) })));
}

function sceneSection(scene, index, captions) {
  const speech = Array.isArray(scene.speech) ? scene.speech : [];
  const texts = Array.isArray(scene.on_screen_text) ? scene.on_screen_text : [];
  return el("section", { class: "scene", attrs: { id: `scene-${index}`, tabindex: "-1" }, data: { scene: index } },
    el("h3", { text: `Scene ${index + 1} · ${fmtClock(scene.start_sec)}–${fmtClock(scene.end_sec)}` }),
    el("div", { class: "cards" }, captions.map(card)),
    speech.length ? el("div", { class: "speech" }, el("h4", { text: "Speech" }),
      el("ul", {}, speech.map((s) => el("li", {},
        el("span", { class: "time", text: `${fmtClock(s.start_sec)}–${fmtClock(s.end_sec)}` }),
        el("span", { class: "said", text: s.text || "" }))))) : null,
    texts.length ? el("div", { class: "on-screen" }, el("h4", { text: "On-screen text" }),
      el("ul", {}, texts.map((t) => el("li", {},
        el("span", { class: "time", text: `${fmtClock(t.start_sec)}–${fmtClock(t.end_sec)}` }),
        el("q", { class: "shown", text: t.text || "" }),
        el("span", { class: "note", text: ` ${Math.round((t.confidence || 0) * 100)}%` }))))) : null);
}

function card(caption) {
  const thumb = typeof caption.thumbnail_jpeg_base64 === "string" && BASE64.test(caption.thumbnail_jpeg_base64)
    ? el("img", { attrs: { alt: `Keyframe at ${fmtClock(caption.timestamp_sec)}`, loading: "lazy",
      src: `data:image/jpeg;base64,${caption.thumbnail_jpeg_base64}` } })
    : el("div", { class: "no-thumb", text: "no thumbnail" });
  return el("figure", { class: "card", data: { timestamp: caption.timestamp_sec } },
    thumb,
    el("figcaption", {},
      el("span", { class: "time", text: fmtClock(caption.timestamp_sec) }),
      el("span", { class: "said", text: caption.caption || "" })));
}

function orphans(captions, sceneCount) {
  const lost = captions.filter((c) => !(Number.isInteger(c.scene) && c.scene >= 0 && c.scene < sceneCount));
  if (!lost.length) return null;
  return el("section", { class: "scene" }, el("h3", { text: "Keyframes outside every scene" }),
    el("div", { class: "cards" }, lost.map(card)));
}

function flagsAndTags(doc) {
  const flags = Array.isArray(doc.safety_flags) ? doc.safety_flags : [];
  const chips = (tags) => (Array.isArray(tags) && tags.length
    ? tags.map((t) => el("span", { class: "chip", text: t })) : [el("span", { class: "note", text: "none" })]);
  return el("div", { class: "flags-tags" },
    el("div", { attrs: { id: "safety" } }, el("h3", { text: "Safety flags" }),
      flags.length ? el("ul", { class: "flags" }, flags.map((f) => el("li", { class: `flag level-${f.level}` },
        el("strong", { text: `${f.category} (${f.level})` }),
        el("span", { text: ` score ${Number(f.score).toFixed(2)} from ${f.source}` }),
        el("span", { class: "note", text: ` at ${(f.frames || []).map(fmtClock).join(", ") || "–"}` }),
        f.evidence && f.evidence.length
          ? el("span", { class: "note", text: ` · “${f.evidence.join("”, “")}”` }) : null)))
        : el("p", { class: "note", text: "No safety flags." })),
    el("div", { attrs: { id: "tags" } }, el("h3", { text: "Tags" }),
      el("p", { attrs: { id: "vibe-tags" } }, el("span", { class: "label", text: "vibe " }), chips(doc.vibe_tags)),
      el("p", { attrs: { id: "visual-tags" } },
        el("span", { class: "label", text: "visual " }), chips(doc.visual_tags))));
}

function stages(report) {
  if (!report) return null;
  const line = (name, stage) => el("li", {}, el("strong", { text: `${name}: ` }),
    el("span", { text: stage ? stage.status : "–" }),
    stage && stage.reason ? el("span", { class: "note", text: ` (${stage.reason})` }) : null);
  return el("div", { class: "stages" }, el("h3", { text: "Stages" }),
    el("ul", {}, line("speech", report.speech), line("on-screen text", report.ocr)));
}

function timing(times) {
  const total = times.total_sec > 0 ? times.total_sec : 0;
  const known = SEQUENTIAL_STAGES.reduce((sum, [key]) => sum + (times[key] || 0), 0);
  const rows = SEQUENTIAL_STAGES.map(([key, name], i) => ({ key, name, seconds: times[key] || 0, cls: `stage-${i}` }));
  if (total > known) {
    rows.push({ key: "other", name: "waiting + overhead", seconds: total - known, cls: "stage-other" });
  }
  const scale = Math.max(total, known, 1e-9);
  const bar = el("div", { class: "timing-bar", attrs: { role: "img", "aria-label": "Time per stage" } });
  for (const row of rows) {
    if (row.seconds <= 0) continue;
    const part = el("span", { class: `part ${row.cls}`, attrs: { title: `${row.name} ${fmtSeconds(row.seconds)}` } });
    part.style.flexGrow = String(row.seconds / scale);
    bar.append(part);
  }
  const legend = el("ul", { class: "legend" }, rows.map((row) => el("li", {},
    el("span", { class: `swatch ${row.cls}` }), `${row.name} ${fmtSeconds(row.seconds)}`)));
  const parallel = PARALLEL_STAGES.map(([key, name]) => {
    const seconds = times[key] || 0;
    const track = el("div", { class: "timing-bar thin" });
    const part = el("span", { class: "part stage-parallel" });
    part.style.flexGrow = String(seconds / scale);
    const rest = el("span", { class: "part rest" });
    rest.style.flexGrow = String(Math.max(0, 1 - seconds / scale));
    track.append(part, rest);
    const label = `${name} ${fmtSeconds(seconds)} (alongside captioning)`;
    return el("div", { class: "parallel" }, el("span", { class: "note", text: label }), track);
  });
  return el("div", { class: "timing", attrs: { id: "timing" } },
    el("h3", { text: `Time per stage · ${fmtSeconds(total)} in all` }), bar, legend, parallel);
}
