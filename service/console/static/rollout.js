// A canary's steps (task.metadata.rollout.steps, issue 27) as an SVG: the candidate's
// weight over time as a step line, and under it each generation's error rate and p99 per
// step, the failing step marked; then the same figures as a table. A shadow's figures as
// a short list. Redrawn with the task while it runs (the steps grow as they are judged).

import { h, s, seconds } from "./dom.js";

const pct = (x) => (x === null || x === undefined ? "—" : `${(x * 100).toFixed(1)} %`);
const ms = (x) => (x === null || x === undefined ? "—" : `${x.toFixed(1)} ms`);

function canaryChart(steps) {
  const width = 720, left = 110, right = 20, top = 10, weightH = 90, barsH = 70, gap = 26;
  const plotW = width - left - right;
  const durations = steps.map((st) => Math.max(0.001, st.elapsed_s || 0));
  const total = durations.reduce((a, b) => a + b, 0);
  const x = (t) => left + (t / total) * plotW;
  const height = top + weightH + gap + barsH * 2 + gap + 20;
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", class: "timeline",
    role: "img", "aria-label": "Canary steps: " + steps.map((st) =>
      `${st.weight} % ${st.verdict}, candidate errors ${pct(st.candidate.error_rate)} p99 ` +
      `${ms(st.candidate.p99_ms)}, serving errors ${pct(st.serving.error_rate)} p99 ` +
      `${ms(st.serving.p99_ms)}`).join("; ") });
  // Weight over time.
  const wy = (w) => top + weightH - (w / 100) * weightH;
  let cursor = 0, path = `M ${x(0)} ${wy(0)}`;
  steps.forEach((st, i) => {
    path += ` L ${x(cursor)} ${wy(st.weight)} L ${x(cursor + durations[i])} ${wy(st.weight)}`;
    cursor += durations[i];
  });
  svg.append(s("text", { x: 0, y: top + weightH / 2 + 4, class: "seg-label" }, "weight"),
    s("text", { x: left - 6, y: wy(100) + 4, class: "axis", "text-anchor": "end" }, "100 %"),
    s("text", { x: left - 6, y: wy(0), class: "axis", "text-anchor": "end" }, "0 %"),
    s("line", { x1: left, x2: width - right, y1: wy(0), y2: wy(0), class: "rollout-axis" }),
    s("path", { d: path, class: "rollout-weight", fill: "none" }));
  // Per step: two bars per generation (serving, candidate), error rate and p99.
  const maxRate = Math.max(0.01, ...steps.flatMap((st) => [st.serving.error_rate || 0,
                                                           st.candidate.error_rate || 0]));
  const maxP99 = Math.max(1, ...steps.flatMap((st) => [st.serving.p99_ms || 0,
                                                       st.candidate.p99_ms || 0]));
  const panels = [["error rate", "error_rate", maxRate, pct], ["p99", "p99_ms", maxP99, ms]];
  panels.forEach(([label, key, max, fmt], p) => {
    const y0 = top + weightH + gap + p * barsH;
    svg.append(s("text", { x: 0, y: y0 + 14, class: "seg-label" }, label));
    cursor = 0;
    steps.forEach((st, i) => {
      const slot = x(cursor + durations[i]) - x(cursor);
      const barW = Math.max(2, slot / 2 - 6);
      ["serving", "candidate"].forEach((gen, j) => {
        const value = st[gen][key];
        const hgt = value ? (value / max) * (barsH - 22) : 0;
        const bx = x(cursor) + 3 + j * (slot / 2);
        svg.append(s("g", { class: `rollout-bar rollout-${gen}`, "data-step": i,
                            "data-generation": st[gen].generation, "data-metric": key },
          s("rect", { x: bx, y: y0 + barsH - 8 - hgt, width: barW, height: Math.max(1, hgt) }),
          s("text", { x: bx, y: y0 + barsH - 10 - hgt, class: "axis" }, fmt(value))));
      });
      cursor += durations[i];
    });
  });
  // Step labels, the verdict of each.
  cursor = 0;
  const labelY = height - 8;
  steps.forEach((st, i) => {
    svg.append(s("text", { x: x(cursor) + 3, y: labelY,
                           class: `axis rollout-verdict verdict-${st.verdict}`,
                           "data-step": i },
      `${st.weight} % ${st.verdict}`));
    cursor += durations[i];
  });
  return svg;
}

export function rolloutView(rollout) {
  if (!rollout || typeof rollout !== "object") return null;
  if (rollout.strategy === "shadow" && rollout.candidate) {
    return h("section", { id: "rollout", "aria-labelledby": "rollout-title" },
      h("h2", { id: "rollout-title" }, "Shadow"),
      h("dl", { class: "facts" },
        h("dt", {}, "Mirrored"), h("dd", {}, `${rollout.percent} % for ${seconds(rollout.elapsed_s || 0)}`),
        h("dt", {}, "Serving"), h("dd", {}, `generation ${rollout.serving.generation}: ` +
          `${rollout.serving.requests} requests, errors ${pct(rollout.serving.error_rate)}, p99 ${ms(rollout.serving.p99_ms)}`),
        h("dt", {}, "Shadow"), h("dd", {}, `generation ${rollout.candidate.generation}: ` +
          `${rollout.candidate.requests} requests, errors ${pct(rollout.candidate.error_rate)}, p99 ${ms(rollout.candidate.p99_ms)}`),
        h("dt", {}, "Mean cosine"), h("dd", { id: "shadow-cosine" },
          rollout.mean_cosine === null ? "—" : rollout.mean_cosine.toFixed(4))));
  }
  const steps = rollout.steps || [];
  if (!steps.length) return null;
  const row = (st) => h("tr", { class: `verdict-${st.verdict}` },
    h("td", {}, `${st.weight} %`), h("td", {}, st.verdict),
    h("td", {}, String(st.serving.requests)), h("td", {}, pct(st.serving.error_rate)),
    h("td", {}, ms(st.serving.p99_ms)),
    h("td", {}, String(st.candidate.requests)), h("td", {}, pct(st.candidate.error_rate)),
    h("td", {}, ms(st.candidate.p99_ms)), h("td", {}, (st.reasons || []).join("; ")));
  return h("section", { id: "rollout", "aria-labelledby": "rollout-title" },
    h("h2", { id: "rollout-title" }, "Canary"),
    h("figure", { class: "chart", id: "rollout-chart" }, canaryChart(steps),
      h("figcaption", {}, `Generation ${steps[0].candidate.generation} against ` +
        `${steps[0].serving.generation}: its weight over time, and each generation's ` +
        "error rate and p99 per step (left bar serving, right bar candidate).")),
    h("table", { id: "rollout-steps" },
      h("caption", {}, "Canary steps"),
      h("thead", {}, h("tr", {}, ["Weight", "Verdict", "Serving requests", "Serving errors",
        "Serving p99", "Candidate requests", "Candidate errors", "Candidate p99", "Why"]
        .map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, steps.map(row))));
}
