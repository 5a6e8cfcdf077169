// Small line charts drawn as inline SVG: a few lines over a fixed time window, no library.

import { el, svg } from "./dom.js";

const WIDTH = 300;
const HEIGHT = 90;
const PAD = { left: 4, right: 4, top: 8, bottom: 4 };

/** A chart: lines = [{name, cls, points: [{x: 0..1, y: number|null}]}] over the last span
 * seconds; a null y breaks the line. format(y) labels the top of the scale and the latest values. */
export function lineChart({ title, lines, format, id, span }) {
  const values = lines.flatMap((line) => line.points.map((p) => p.y)).filter((y) => typeof y === "number");
  const top = niceCeiling(Math.max(0, ...values));
  const x = (fraction) => PAD.left + fraction * (WIDTH - PAD.left - PAD.right);
  const y = (value) => HEIGHT - PAD.bottom - (top > 0 ? value / top : 0) * (HEIGHT - PAD.top - PAD.bottom);
  const plot = svg("svg", {
    class: "chart-plot",
    attrs: { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, preserveAspectRatio: "none", role: "img", "aria-label": title },
  },
  svg("line", { class: "axis", attrs: { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(0), y2: y(0) } }),
  svg("line", { class: "grid", attrs: { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(top), y2: y(top) } }));
  for (const line of lines) {
    for (const run of runs(line.points)) {
      const points = run.map((p) => `${x(p.x).toFixed(1)},${y(p.y).toFixed(1)}`).join(" ");
      plot.append(run.length === 1
        ? svg("circle", { class: `dot ${line.cls}`, attrs: { cx: x(run[0].x), cy: y(run[0].y), r: 2 } })
        : svg("polyline", { class: `line ${line.cls}`, attrs: { points } }));
    }
  }
  const legend = el("ul", { class: "chart-legend" }, lines.map((line) => {
    const latest = [...line.points].reverse().find((p) => typeof p.y === "number");
    return el("li", {}, el("span", { class: `swatch ${line.cls}` }),
      `${line.name}: ${latest ? format(latest.y) : "–"}`);
  }));
  return el("figure", { class: "chart", attrs: { id } },
    el("figcaption", {}, el("span", { text: title }), el("span", { class: "note", text: `max ${format(top)}` })),
    plot,
    el("div", { class: "chart-axis", attrs: { "aria-hidden": "true" } },
      el("span", { text: `−${Math.round(span / 60)} min` }), el("span", { text: "now" })),
    legend);
}

function runs(points) {
  const result = [];
  let run = [];
  for (const point of points) {
    if (typeof point.y === "number" && Number.isFinite(point.y)) run.push(point);
    else if (run.length) {
      result.push(run);
      run = [];
    }
  }
  if (run.length) result.push(run);
  return result;
}

function niceCeiling(value) {
  if (!(value > 0)) return 0;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * magnitude) return step * magnitude;
  }
  return 10 * magnitude;
}
