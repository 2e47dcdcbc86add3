// The console's embed jobs page (issue 30): the caller's bulk embedding jobs with their
// progress, refreshed every two seconds while shown; cancel one that runs, remove one that
// has ended (its files too). Results are read with `greenroom embed` or the API.

import { api, get } from "./api.js";
import { badge, h, table, when } from "./dom.js";

const RUNNING = ["pending", "processing"];

function progressCell(job) {
  const finished = job.counts.done + job.counts.failed;
  return h("span", { class: "job-progress", "data-finished": finished },
    h("progress", { max: job.counts.total, value: finished,
      "aria-label": `${finished} of ${job.counts.total} inputs` }),
    ` ${finished.toLocaleString()} / ${job.counts.total.toLocaleString()}`);
}

function rateCell(job) {
  if (!RUNNING.includes(job.status) || job.rate === null) return "—";
  const eta = job.eta_s === null ? "" : `, ${Math.round(job.eta_s)} s left`;
  return `${Math.round(job.rate).toLocaleString()}/s${eta}`;
}

export function embedJobsView(view, { replace, failure }) {
  const body = h("div", { id: "embed-jobs" }, h("p", {}, "Loading…"));
  replace(view, h("h1", {}, "Embed jobs"), body,
    h("p", { class: "note" }, "A job embeds a JSONL corpus on one pinned generation: ",
      "start one with `greenroom embed MODEL corpus.jsonl -o out.jsonl` or ",
      "POST /api/v2/embed-jobs?model=OWNER/NAME. Failed inputs are kept in the results, ",
      "each with its reason."));
  let timer = null;
  let stopped = false;
  const act = async (job) => {
    try { await api("DELETE", `/api/v2/embed-jobs/${job.id}`); } catch (err) { failure(err); }
    refresh();
  };
  const refresh = async () => {
    clearTimeout(timer);
    try {
      const jobs = await get("/api/v2/embed-jobs");
      replace(body, table("Embed jobs",
        ["Job", "Model", "Generation", "Status", "Progress", "Failed", "Tokens", "Rate",
         "Started", "Actions"],
        jobs.map((j) => [j.id.slice(0, 8), j.model, j.generation,
          h("span", { title: j.detail || "" }, badge(j.status)), progressCell(j),
          j.counts.failed, j.tokens.toLocaleString(), rateCell(j), when(j.created_at),
          h("button", { type: "button", onclick: () => act(j) },
            RUNNING.includes(j.status) ? "Cancel" : "Remove")]),
        "No embed jobs yet."));
    } catch (err) { failure(err); return; }
    if (!stopped) timer = setTimeout(refresh, 2000);
  };
  refresh();
  return { dispose() { stopped = true; clearTimeout(timer); } };
}
