// pgqueue dashboard: plain JS, no build step. Talks to /api/v1 with the
// bearer token kept in sessionStorage (this tab only); live updates come from
// the /api/v1/events stream (EventSource cannot send headers, so the token
// goes in ?access_token= there).
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "pgqueue.token";
const TERMINAL = new Set(["completed", "failed", "timeout", "zombie", "dead_letter", "cancelled"]);
const FAILED = ["failed", "dead_letter", "timeout", "zombie"];
const RETRYABLE = new Set([...FAILED, "cancelled"]);
const CANCELLABLE = new Set(["pending", "retrying", "running"]);

// jobs: id -> job as last known; changes: id -> events seen (to order HTTP reads).
const state = { token: null, me: null, jobs: new Map(), changes: new Map(), source: null,
                timer: null, queuesDue: null };
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  }
  return node;
}

function say(text) { $("message").textContent = text || ""; }

async function api(path, options = {}) {
  const response = await fetch(API + path, {
    ...options,
    headers: { "Authorization": "Bearer " + state.token, "Accept": "application/json",
               ...(options.body ? { "Content-Type": "application/json" } : {}) },
  });
  if (response.status === 401) {
    signOut("The token was refused; paste another.");
    throw new Error("unauthorized");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.message || response.statusText);
  return body;
}

// -- token ------------------------------------------------------------------------------

function takeTokenFromFragment() {
  const match = location.hash.match(/(?:^#|&)token=([^&]+)/);
  if (!match) return;
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
  history.replaceState(null, "", location.pathname + location.search);  // keep it out of history
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  if (state.source) state.source.close();
  clearInterval(state.timer);
  $("main").hidden = true;
  $("signout").hidden = true;
  $("who").textContent = "";
  setLive(false);
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

async function start() {
  state.token = sessionStorage.getItem(TOKEN_KEY);
  if (!state.token) { signOut(); return; }
  try {
    state.me = await api("/whoami");
  } catch (error) {
    if (error.message !== "unauthorized") say("Cannot reach the API: " + error.message);
    return;
  }
  $("login").hidden = true;
  $("main").hidden = false;
  $("signout").hidden = false;
  $("who").textContent = state.me.owner + (state.me.admin ? " (admin)" : "");
  connect();
  refresh();
  state.timer = setInterval(refresh, 5000);
}

// -- live updates -----------------------------------------------------------------------

function setLive(on) {
  $("live").textContent = on ? "live" : "offline";
  $("live").className = "badge " + (on ? "on" : "off");
}

function connect() {
  if (state.source) state.source.close();
  const source = new EventSource(API + "/events?access_token=" + encodeURIComponent(state.token));
  state.source = source;
  source.onopen = () => setLive(true);
  source.onerror = () => setLive(false);  // EventSource reconnects with Last-Event-ID
  source.addEventListener("snapshot", (message) => {
    const data = JSON.parse(message.data);
    state.jobs = new Map(data.jobs.map((job) => [job.id, job]));
    renderActive();
  });
  source.addEventListener("job", (message) => {
    const change = JSON.parse(message.data);
    state.changes.set(change.id, (state.changes.get(change.id) || 0) + 1);
    const known = state.jobs.get(change.id);
    if (known) {
      const statusChanged = known.status !== change.status;
      Object.assign(known, change);
      updateRow(known);
      if (statusChanged) fetchJob(change.id);  // attempts, error, result
    } else {
      state.jobs.set(change.id, { ...change });  // details follow
      renderActive();
      fetchJob(change.id);
    }
    if (TERMINAL.has(change.status) || change.status === "retrying") refreshFailures();
    if (!state.queuesDue) {  // counts follow the changes, at most twice a second
      state.queuesDue = setTimeout(() => { state.queuesDue = null; refreshQueues().catch(() => {}); renderBatches().catch(() => {}); }, 500);
    }
  });
}

// A job read over HTTP may be older than events that arrived meanwhile: then
// keep the status and progress the events said, take the rest from the read.
function mergeJob(job, changesBefore) {
  const current = state.jobs.get(job.id);
  const newer = current && (state.changes.get(job.id) || 0) !== changesBefore;
  state.jobs.set(job.id, newer ? { ...job, status: current.status, progress: current.progress }
                               : job);
  renderActive();
}

function fetchJob(id) {
  const before = state.changes.get(id) || 0;
  api("/jobs/" + id).then((job) => mergeJob(job, before)).catch(() => {});
}

// -- panels -----------------------------------------------------------------------------

function progressBar(job) {
  const pct = Math.max(0, Math.min(100, job.progress || 0));
  const fill = el("div", { class: "fill" });
  fill.style.width = pct + "%";  // CSSOM, not a style attribute: the CSP forbids inline styles
  return el("div", { class: "bar" + (job.status === "completed" ? " done" : ""), role: "progressbar",
                     "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": String(pct) },
            fill, el("span", { class: "pct" }, pct + "%"));
}

function actions(job) {
  const cell = el("td");
  if (CANCELLABLE.has(job.status)) {
    cell.append(el("button", { type: "button", class: "cancel", onclick: () => act(job.id, "cancel") }, "Cancel"));
  }
  if (RETRYABLE.has(job.status)) {
    cell.append(el("button", { type: "button", class: "retry", onclick: () => act(job.id, "retry") }, "Retry"));
  }
  return cell;
}

// A job another executor runs (a procrastinate job the bridge mirrors) says so.
function taskCell(job) {
  return el("td", {}, job.task || "",
            job.executor ? el("span", { class: "badge executor", title: `${job.executor} job ${job.external_id}` },
                              job.executor) : "");
}

function activeRow(job) {
  return el("tr", { "data-job-id": String(job.id) },
            el("td", {}, String(job.id)), taskCell(job), el("td", {}, job.queue || ""),
            el("td", { class: "status " + job.status }, job.status),
            el("td", {}, progressBar(job)),
            el("td", {}, job.attempts !== undefined ? `${job.attempts}/${job.max_attempts}` : ""),
            actions(job));
}

function renderActive() {
  const jobs = [...state.jobs.values()].sort((a, b) => b.id - a.id);
  $("active").replaceChildren(...jobs.map(activeRow));
  $("active-empty").hidden = jobs.length > 0;
}

function updateRow(job) {
  const row = document.querySelector(`#active tr[data-job-id="${job.id}"]`);
  if (row) row.replaceWith(activeRow(job)); else renderActive();
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 120) return seconds.toFixed(1) + " s";
  if (seconds < 7200) return Math.round(seconds / 60) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

async function refreshQueues() {
  const page = await api("/queues?limit=200");
  $("queues").replaceChildren(...page.items.map((q) => {
    const toggle = state.me.admin
      ? el("button", { type: "button", class: q.paused ? "resume" : "pause",
                       onclick: () => queueAction(q.queue, q.paused ? "resume" : "pause") },
           q.paused ? "Resume" : "Pause")
      : "";
    return el("tr", { "data-queue": q.queue },
              el("td", {}, q.queue), el("td", {}, String(q.counts.pending)),
              el("td", {}, String(q.counts.retrying)), el("td", {}, String(q.counts.running)),
              el("td", {}, age(q.oldest_pending_age)),
              el("td", {}, q.rate_limit ? `${q.rate_used}/${q.rate_limit} per ${q.rate_per}s` : "-"),
              el("td", { class: "queue-state" }, q.paused ? "paused" : "active"), el("td", {}, toggle));
  }));
}

async function refreshFailures() {
  const page = await api("/jobs?status=" + FAILED.join(",") + "&limit=20");
  $("failures").replaceChildren(...page.items.map((job) =>
    el("tr", { "data-job-id": String(job.id) },
       el("td", {}, String(job.id)), taskCell(job),
       el("td", { class: "status " + job.status }, job.status),
       el("td", {}, job.completed_at ? new Date(job.completed_at).toLocaleTimeString() : ""),
       el("td", {}, errorText(job.error)),
       actions(job))));
  $("failures-empty").hidden = page.items.length > 0;
}

// The last line of an error (a traceback's is the exception) with the whole text folded.
function errorText(error) {
  const lines = (error || "").trim().split("\n").filter((line) => line.trim());
  if (lines.length <= 1) return el("span", { class: "err-summary" }, lines[0] || "");
  return el("details", {}, el("summary", { class: "err-summary" }, lines[lines.length - 1]),
            el("pre", { class: "err" }, error));
}

const BATCH_FINAL = new Set(["completed", "completed_with_errors", "cancelled"]);

function batchActions(batch) {
  const cell = el("td");
  if (BATCH_FINAL.has(batch.status)) return cell;
  const action = batch.paused ? "resume" : "pause";
  cell.append(el("button", { type: "button", class: action, onclick: () => batchAction(batch.id, action) },
                 batch.paused ? "Resume" : "Pause"));
  cell.append(el("button", { type: "button", class: "cancel", onclick: () => batchAction(batch.id, "cancel") },
                 "Cancel"));
  return cell;
}

// Batches: counted by the database; refreshed with the queues and on job events.
async function renderBatches() {
  const page = await api("/batches?limit=20");
  $("batches-panel").hidden = page.items.length === 0;
  $("batches").replaceChildren(...page.items.map((batch) => {
    const failed = batch.total - batch.counts.completed - batch.counts.pending
      - batch.counts.running - batch.counts.retrying;
    const detail = `${batch.counts.completed} ok` + (failed ? `, ${failed} failed` : "") + ` of ${batch.total}`;
    return el("tr", { "data-batch-id": String(batch.id) },
              el("td", {}, String(batch.id) + " " + batch.task),
              el("td", { class: "status " + batch.status }, batch.status),
              el("td", {}, progressBar({ progress: batch.progress }), el("span", { class: "muted" }, " " + detail)),
              batchActions(batch));
  }));
}

async function batchAction(id, action) {
  try {
    await api(`/batches/${id}/${action}`, { method: "POST" });
    say("");
    await renderBatches();
  } catch (error) {
    say(`Could not ${action} batch ${id}: ${error.message}`);
  }
}

// Admins: cron schedules with their next run (by the database's clock).
async function renderSchedules() {
  if (!state.me.admin) return;
  const listing = await api("/periodic");
  $("schedules-panel").hidden = listing.items.length === 0;
  $("schedules").replaceChildren(...listing.items.map((s) =>
    el("tr", { "data-schedule": s.name },
       el("td", {}, s.name), el("td", {}, s.task),
       el("td", {}, `${s.cron} (${s.timezone})`),
       el("td", {}, s.next_tick ? new Date(s.next_tick).toLocaleString() : "-"),
       el("td", {}, s.last_tick ? new Date(s.last_tick).toLocaleString() : "-"))));
}

async function refresh() {
  try {
    await Promise.all([refreshQueues(), refreshFailures(), renderBatches(), renderSchedules()]);
  } catch (error) {
    if (error.message !== "unauthorized") say("Refresh failed: " + error.message);
  }
}

async function act(id, action) {
  try {
    const before = state.changes.get(id) || 0;
    const job = await api(`/jobs/${id}/${action}`, { method: "POST", body: "{}" });
    mergeJob(job, before);
    say("");
    await refreshFailures();
  } catch (error) {
    say(`Could not ${action} job ${id}: ${error.message}`);
  }
}

async function queueAction(name, action) {
  try {
    await api(`/queues/${encodeURIComponent(name)}/${action}`, { method: "POST" });
    await refreshQueues();
  } catch (error) {
    say(`Could not ${action} queue ${name}: ${error.message}`);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token-input").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token-input").value = "";
    start();
  });
  $("signout").addEventListener("click", () => signOut());
  takeTokenFromFragment();
  start();
});
