// A task's phases as a Gantt-style SVG chart: queued, then each phase with its duration.
// Finished phases come from metadata.timings; the running one grows from the moment it
// began (the task's updated_at) to now, on the server's clock.

import { h, s, seconds } from "./dom.js";

const PHASES = {
  deploy: ["preparing", "starting_replicas", "health_checking", "canary", "shadow", "switching",
           "draining", "removing"],
  delete: ["switching", "draining", "removing"],
  scale: ["starting_replicas", "health_checking", "switching", "draining", "removing"],
};
const LABELS = {
  queued: "queued", preparing: "preparing", starting_replicas: "starting replicas",
  health_checking: "health checking", canary: "canary", shadow: "shadow",
  switching: "switching", draining: "draining", removing: "removing",
};

const t = (iso) => (iso ? Date.parse(iso) / 1000 : null);

// serverNow: the server's clock (s) at this moment.
export function segments(task, serverNow) {
  const created = t(task.created_at);
  const started = t(task.started_at);
  const finished = t(task.finished_at);
  const end = finished ?? serverNow;
  const out = [];
  out.push({ phase: "queued", start: created, duration: (started ?? end) - created,
             state: started ? "done" : (finished ? "done" : "current") });
  if (!started) return out;
  const timings = (task.metadata && task.metadata.timings) || {};
  let cursor = started;
  for (const phase of PHASES[task.kind] || PHASES.deploy) {
    if (phase in timings) {
      out.push({ phase, start: cursor, duration: timings[phase], state: "done" });
      cursor += timings[phase];
    } else if (phase === task.phase) {
      const since = task.status === "processing" ? Math.max(cursor, t(task.updated_at)) : cursor;
      const state = task.status === "processing" ? "current"
        : (task.status === "done" ? "done" : "failed");
      out.push({ phase, start: since, duration: Math.max(0, end - since), state });
      cursor = since + Math.max(0, end - since);
    }
  }
  return out;
}

export function chart(task, serverNow) {
  const segs = segments(task, serverNow);
  const origin = segs[0].start;
  const total = Math.max(0.001, ...segs.map((g) => g.start + g.duration - origin));
  const width = 720, labelW = 150, durW = 80, row = 28, top = 8;
  const barW = width - labelW - durW;
  const height = top * 2 + row * segs.length + 18;
  const scale = (x) => labelW + (x / total) * barW;
  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`, width: "100%", class: "timeline", role: "img",
    "aria-label": `Phases of ${task.kind} task: ` +
      segs.map((g) => `${LABELS[g.phase]} ${seconds(g.duration)} (${g.state})`).join(", "),
  });
  segs.forEach((g, i) => {
    const y = top + i * row;
    const x = scale(g.start - origin);
    const w = Math.max(2, scale(g.start - origin + g.duration) - x);
    svg.append(s("g", { "data-phase": g.phase, "data-state": g.state, class: `seg seg-${g.state}` },
      s("text", { x: 0, y: y + 18, class: "seg-label" }, LABELS[g.phase]),
      s("rect", { x, y: y + 4, width: w, height: row - 10, rx: 3 }),
      s("text", { x: width - durW + 8, y: y + 18, class: "seg-dur" }, seconds(g.duration))));
  });
  const axisY = top + row * segs.length + 12;
  svg.append(s("text", { x: labelW, y: axisY, class: "axis" }, "0 s"),
    s("text", { x: labelW + barW, y: axisY, class: "axis", "text-anchor": "end" },
      seconds(total)));
  return h("figure", { class: "chart", id: "timeline" }, svg,
    h("figcaption", {}, "Phase timeline; the running phase grows live."));
}

// A deployment's generations over time: one bar per generation, from its first replica's
// start to its last replica change (to now while it serves).
export function generationsChart(generations, active, nowS) {
  if (!generations.length) return null;
  const rows = generations.slice().sort((a, b) => a.generation - b.generation).map((g) => {
    const start = t(g.started_at);
    const serving = g.generation === active;
    const end = serving ? Math.max(nowS, t(g.last_change_at)) : t(g.last_change_at);
    const state = serving ? "current" : (g.states.includes("failed") ? "failed" : "done");
    return { g, start, end, state };
  });
  const origin = Math.min(...rows.map((r) => r.start));
  const total = Math.max(0.001, ...rows.map((r) => r.end - origin));
  const width = 720, labelW = 110, durW = 110, row = 26, top = 6;
  const barW = width - labelW - durW;
  const scale = (x) => labelW + (x / total) * barW;
  const height = top * 2 + row * rows.length + 16;
  const words = { current: "serving", failed: "failed", done: "retired" };
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", class: "timeline",
    role: "img", "aria-label": "Generations over time: " + rows.map((r) =>
      `generation ${r.g.generation} ${words[r.state]} for ${seconds(r.end - r.start)}`).join(", ") });
  rows.forEach((r, i) => {
    const y = top + i * row;
    const x = scale(r.start - origin);
    svg.append(s("g", { class: `seg seg-${r.state}`, "data-generation": r.g.generation },
      s("text", { x: 0, y: y + 17, class: "seg-label" }, `generation ${r.g.generation}`),
      s("rect", { x, y: y + 4, width: Math.max(2, scale(r.end - origin) - x), height: row - 10, rx: 3 }),
      s("text", { x: width - durW + 8, y: y + 17, class: "seg-dur" },
        `${words[r.state]} · ${seconds(r.end - r.start)}`)));
  });
  svg.append(s("text", { x: labelW, y: top + row * rows.length + 12, class: "axis" },
    new Date(origin * 1000).toLocaleTimeString()),
  s("text", { x: labelW + barW, y: top + row * rows.length + 12, class: "axis", "text-anchor": "end" },
    `+${seconds(total)}`));
  return h("figure", { class: "chart", id: "generations-chart" }, svg,
    h("figcaption", {}, "Generations over time (newest at the bottom)."));
}
