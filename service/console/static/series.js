// A deployment over time (issue 31): traffic, latency and replicas per generation as SVG
// lines, and its events as markers, from GET /api/v2/deployments/{model}/series. Redrawn
// every bucket (10 s) and on every change the live feed reports for the deployment.

import { get, ref } from "./api.js";
import { h, s } from "./dom.js";

const WINDOWS = ["2m", "15m", "1h", "6h", "24h"];
// A colour per generation (by generation number), as presentation attributes: the CSP
// allows no inline style.
const PALETTE = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2"];
const colour = (generation) => PALETTE[generation % PALETTE.length];
const LEVEL = { error: "#dc2626", warning: "#d97706" };
const W = 720, LEFT = 52, RIGHT = 12, TOP = 10, BOTTOM = 20;
const t = (iso) => Date.parse(iso) / 1000;

function niceMax(value) {
  if (!(value > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 2.5, 5, 10].map((m) => m * p).find((m) => m >= value);
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// One chart: `lines` are {points: [[t, v]...], colour, dash, step, label}; markers are events.
function plot(id, title, unit, lines, start, end, markers, numbered = false, height = 130) {
  const x = (sec) => LEFT + ((sec - start) / Math.max(1, end - start)) * (W - LEFT - RIGHT);
  const max = niceMax(Math.max(0, ...lines.flatMap((l) => l.points.map((p) => p[1] ?? 0))));
  const y = (v) => TOP + (1 - v / max) * (height - TOP - BOTTOM);
  const svg = s("svg", { viewBox: `0 0 ${W} ${height}`, width: "100%", class: "series", id,
    role: "img", "aria-label": `${title}: ` + lines.map((l) => `${l.label} ` +
      (l.points.length ? `${fmt(l.points[l.points.length - 1][1])} ${unit} now` : "no data"))
      .join(", ") });
  for (const v of [0, max / 2, max]) {
    svg.append(s("line", { x1: LEFT, x2: W - RIGHT, y1: y(v), y2: y(v), class: "grid" }),
      s("text", { x: LEFT - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, fmt(v)));
  }
  svg.append(s("text", { x: LEFT, y: height - 4, class: "axis" }, clock(start)),
    s("text", { x: W - RIGHT, y: height - 4, class: "axis", "text-anchor": "end" }, clock(end)),
    s("text", { x: (LEFT + W) / 2, y: height - 4, class: "axis", "text-anchor": "middle" },
      `${title} (${unit})`));
  for (const m of markers) {
    const mx = x(t(m.at));
    if (mx < LEFT || mx > W - RIGHT) continue;
    svg.append(s("g", { class: "marker", "data-level": m.level },
      s("title", {}, `${new Date(m.at).toLocaleTimeString()} ${m.generation ? `gen ${m.generation}: ` : ""}${m.message}`),
      s("line", { x1: mx, x2: mx, y1: TOP, y2: height - BOTTOM, stroke: LEVEL[m.level] || "#64748b",
                  "stroke-dasharray": "3 3" }),
      numbered ? s("text", { x: mx + 3, y: TOP + 7, class: "marker-number" }, String(m.number))
        : s("circle", { cx: mx, cy: TOP + 3, r: 3.5, fill: LEVEL[m.level] || "#64748b" })));
  }
  for (const l of lines) {
    const pts = l.points.filter((p) => p[1] !== null && p[1] !== undefined);
    if (!pts.length) continue;
    let d = "";
    pts.forEach(([sec, v], i) => {
      const px = x(sec).toFixed(1), py = y(v).toFixed(1);
      if (i === 0) d += `M${px},${py}`;
      else if (l.step) d += `H${px}V${py}`;
      else d += `L${px},${py}`;
    });
    if (l.step) d += `H${x(Math.min(end, pts[pts.length - 1][0] + 10)).toFixed(1)}`;
    svg.append(s("path", { d, fill: "none", stroke: l.colour, "stroke-width": l.width || 1.8,
      "stroke-dasharray": l.dash || null, class: "line", "data-label": l.label }));
  }
  return svg;
}

function fmt(v) {
  if (v === null || v === undefined) return "—";
  if (v >= 100) return v.toFixed(0);
  if (v >= 10) return v.toFixed(1);
  return v.toFixed(2).replace(/\.?0+$/, "") || "0";
}

function legend(generations) {
  return h("p", { class: "series-legend" }, generations.map((g) => h("span", {
    class: "legend-item", "data-generation": g.generation },
    s("svg", { width: 18, height: 10, viewBox: "0 0 18 10" },
      s("line", { x1: 0, x2: 18, y1: 5, y2: 5, stroke: colour(g.generation), "stroke-width": 3 })),
    ` generation ${g.generation} `)),
  h("span", { class: "legend-note" }, "dashed: errors/s, p50, desired replicas; ",
    "vertical marks: events (hover for the text)"));
}

export function draw(data) {
  const start = t(data.start), end = t(data.end);
  const gens = data.generations;
  const mid = data.step_s / 2;
  const series = (g, key) => g.points.map((p) => [t(p.at) + mid, p[key]]);
  const steps = (g, key) => g.points.map((p) => [t(p.at), p[key]]);
  const traffic = gens.flatMap((g) => [
    { points: series(g, "requests_per_s"), colour: colour(g.generation), label: `gen ${g.generation} requests/s` },
    { points: series(g, "errors_per_s"), colour: colour(g.generation), dash: "4 3", label: `gen ${g.generation} errors/s` }]);
  const latency = gens.flatMap((g) => [
    { points: series(g, "p99_ms"), colour: colour(g.generation), label: `gen ${g.generation} p99` },
    { points: series(g, "p50_ms"), colour: colour(g.generation), dash: "4 3", label: `gen ${g.generation} p50` }]);
  const replicas = gens.flatMap((g) => [
    { points: steps(g, "replicas"), colour: colour(g.generation), step: true, width: 2.4, label: `gen ${g.generation} replicas` },
    { points: steps(g, "desired"), colour: colour(g.generation), step: true, dash: "5 4", label: `gen ${g.generation} desired` },
    { points: series(g, "inflight"), colour: "#94a3b8", width: 1, label: `gen ${g.generation} in flight` }]);
  const markers = data.events.map((e, i) => ({ ...e, number: i + 1 }));
  return h("div", { class: "series-charts", "data-points": gens.reduce((n, g) => n + g.points.length, 0),
                    "data-markers": markers.length },
    legend(gens),
    plot("series-traffic", "requests and errors", "per s", traffic, start, end, markers, true),
    plot("series-latency", "latency p99 and p50", "ms", latency, start, end, markers),
    plot("series-replicas", "replicas ready, desired and in flight", "count", replicas, start, end, markers),
    gens.length ? null : h("p", { class: "empty" }, "No data in this window yet: a worker writes a point every 10 s."),
    markers.length ? h("ol", { class: "series-events", id: "series-events" },
      markers.slice(-12).map((m) => h("li", { value: m.number, "data-level": m.level },
        `${new Date(m.at).toLocaleTimeString()} `, m.kind ? `[${m.kind}] ` : "",
        m.generation ? `gen ${m.generation}: ` : "", m.message)))
      : null);
}

export function seriesPanel(identifier) {
  let windowText = "1h";
  const body = h("div", { id: "series-body" }, h("p", {}, "Loading…"));
  const picker = h("div", { class: "series-windows", role: "group", "aria-label": "Window" },
    WINDOWS.map((w) => h("button", { type: "button", "data-window": w,
      "aria-pressed": String(w === windowText), onclick: () => { windowText = w; mark(); refresh(); } }, w)));
  const mark = () => picker.querySelectorAll("button").forEach((b) =>
    b.setAttribute("aria-pressed", String(b.dataset.window === windowText)));
  let busy = false;
  const refresh = async () => {
    if (busy) return;
    busy = true;
    try {
      const data = await get(`/api/v2/deployments/${ref(identifier)}/series?window=${windowText}`);
      body.replaceChildren(draw(data));
      body.dataset.updated = data.end;
    } catch (err) {
      body.replaceChildren(h("p", { class: "empty" }, `Series unavailable: ${err.message}`));
    } finally { busy = false; }
  };
  refresh();
  const timer = setInterval(refresh, 10_000);
  return {
    el: h("figure", { class: "chart", id: "series" }, picker, body,
      h("figcaption", {}, "Traffic, latency and replicas over time, per generation; events as markers. Updated every 10 s.")),
    refresh,
    dispose() { clearInterval(timer); },
  };
}
