// The MAESTRO · MOON web UI: plain JavaScript, no build step, no network beyond this server.
// Every value shown comes from /ui/api/… (verified reads of the journals); this file only draws.
"use strict";

const main = document.getElementById("main");
const live = document.getElementById("live");
let config = {actions: false, available: [], why: "", palette: []};
let source = null; // the page's EventSource, closed when the page changes

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function put(...nodes) {
  main.replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false && n !== ""));
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

async function api(path, options) {
  const answer = await fetch(path, options);
  const body = await answer.json().catch(() => ({}));
  if (!answer.ok) {
    const error = new Error(body.detail || body.title || answer.statusText);
    error.body = body; error.status = answer.status;
    throw error;
  }
  return body;
}

const clock = (ms) => ms ? new Date(ms).toLocaleTimeString([], {hour12: false}) : "";
const stamp = (ms) => ms ? new Date(ms).toLocaleString([], {hour12: false}) : "";
function seconds(ms) {
  if (ms === null || ms === undefined || ms < 0) return "";
  if (ms < 1000) return `${ms}ms`;
  return ms < 600000 ? `${(ms / 1000).toFixed(1)}s` : `${(ms / 60000).toFixed(1)}m`;
}
const axisLabel = (t) => `${+(t / 1000).toFixed(3)}s`;
const status = (s) => el("span", {class: `status s-${s}`}, s);

function debounce(fn, ms) {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
}

function listen(url, handlers) {
  if (source) source.close();
  source = new EventSource(url);
  source.onopen = () => live.classList.add("on");
  source.onerror = () => live.classList.remove("on");
  for (const [name, fn] of Object.entries(handlers)) source.addEventListener(name, fn);
}

// The server verifies a journal once and then reads only what is new: pointing at a row lets
// it do the first (the slow) read before the click.
const warmed = new Set();
function warm(id) {
  if (warmed.has(id)) return;
  warmed.add(id);
  fetch(`/ui/api/workflows/${encodeURIComponent(id)}`).catch(() => {});
}

// -- the workflow list ------------------------------------------------------------------------

const SINCE = [["", "any time"], ["3600000", "last hour"], ["86400000", "last 24 h"], ["604800000", "last 7 days"]];

async function listPage() {
  const params = new URLSearchParams(location.search);
  const query = new URLSearchParams();
  for (const k of ["status", "plan", "q", "page"]) if (params.get(k)) query.set(k, params.get(k));
  if (params.get("since")) query.set("since", String(Date.now() - Number(params.get("since"))));
  const data = await api(`/ui/api/workflows?${query}`);
  document.title = "workflows · MAESTRO · MOON";
  const go = (changes) => {
    const next = new URLSearchParams(location.search);
    for (const [k, v] of Object.entries(changes)) v ? next.set(k, v) : next.delete(k);
    if (!("page" in changes)) next.delete("page");
    history.pushState(null, "", `/ui/?${next}`);
    route();
  };
  const search = el("input", {type: "search", placeholder: "search workflow id", value: params.get("q") || "",
    "aria-label": "search by workflow id", id: "search"});
  search.addEventListener("change", () => go({q: search.value.trim()}));
  const plan = el("input", {type: "text", placeholder: "plan id", value: params.get("plan") || "",
    "aria-label": "filter by plan", id: "plan-filter"});
  plan.addEventListener("change", () => go({plan: plan.value.trim()}));
  const since = el("select", {"aria-label": "updated since", id: "since"},
    SINCE.map(([v, label]) => el("option", {value: v, selected: (params.get("since") || "") === v}, label)));
  since.addEventListener("change", () => go({since: since.value}));
  const chips = [el("span", {class: `chip${params.get("status") ? "" : " on"}`, onclick: () => go({status: ""})}, `all ${Object.values(data.counts).reduce((a, b) => a + b, 0)}`)];
  for (const [s, n] of Object.entries(data.counts).sort()) {
    chips.push(el("span", {class: `chip${params.get("status") === s ? " on" : ""}`, "data-status": s,
      onclick: () => go({status: s})}, `${s} ${n}`));
  }
  const rows = data.items.map((r) => el("tr", {"data-workflow": r.workflow_id},
    el("td", {class: "mono"}, el("a", {href: `/ui/workflows/${encodeURIComponent(r.workflow_id)}`, onmouseenter: () => warm(r.workflow_id)}, r.workflow_id)),
    el("td", {}, status(r.status)),
    el("td", {class: "num"}, `${r.completed}/${r.steps}`),
    el("td", {class: "num"}, r.tokens || ""),
    el("td", {class: "mono"}, r.plan_id ? el("a", {href: `/ui/plans/${encodeURIComponent(r.plan_id)}`}, r.plan_id) : ""),
    el("td", {class: "num"}, r.version),
    el("td", {}, stamp(r.updated_ms)),
    el("td", {class: "error"}, r.detail || "")));
  const page = data.page;
  const pager = el("div", {class: "pager"},
    el("button", {disabled: page <= 1, onclick: () => go({page: String(page - 1)})}, "← newer"),
    el("span", {class: "muted"}, `page ${page} of ${data.pages} · ${data.total} workflows`),
    el("button", {disabled: page >= data.pages, onclick: () => go({page: String(page + 1)})}, "older →"));
  put(
    el("h1", {}, "Workflows"),
    el("div", {class: "filters"}, search, plan, since),
    el("div", {class: "filters"}, chips),
    el("table", {id: "workflows"}, el("thead", {}, el("tr", {},
      ["workflow", "status", "done", "tokens", "plan", "seq", "updated", ""].map((h, i) =>
        el("th", {class: [2, 3, 5].includes(i) ? "num" : ""}, h)))), el("tbody", {}, rows)),
    data.total ? pager : el("p", {class: "muted"}, "no workflow matches"));
  const refresh = debounce(() => { if (location.pathname === "/ui/") listPage().catch(show); }, 1000);
  listen(`/ui/api/stream?after=${data.cursor}`, {index: refresh});
}

// -- the Gantt of plan versus actual ------------------------------------------------------------

function palette(executors) {
  const colors = config.palette.length ? config.palette : ["#0e7490", "#a21caf", "#15803d", "#a16207"];
  const out = {};
  [...executors].sort().forEach((e, i) => { out[e] = colors[i % colors.length]; });
  return out;
}

// Rows by step (planned and executed bars of a step on one row) or by executor (each
// executor's planned bars above its executed ones): the same bars, two readings.
function gantt(wf, scale, lanes) {
  const byExecutor = lanes === "executor";
  const ROW = byExecutor ? 30 : 26, LABEL = 230, WIDTH = 900, TOP = 36, RIGHT = 150;
  const t0 = wf.t0;
  const firstPlanned = {};
  for (const b of wf.planned) if (!(b.step in firstPlanned)) firstPlanned[b.step] = b.start;
  const firstRun = {};
  for (const a of wf.attempts) if (!(a.step in firstRun)) firstRun[a.step] = (a.started_at || a.scheduled_at || t0) - t0;
  const steps = wf.steps.map((s) => s.id).sort((a, b) =>
    ((firstPlanned[a] ?? firstRun[a] ?? 0) - (firstPlanned[b] ?? firstRun[b] ?? 0)) || a.localeCompare(b));
  const executors = new Set([...wf.planned.map((b) => b.executor), ...wf.attempts.map((a) => a.executor).filter(Boolean)]);
  const rows = byExecutor ? [...executors].sort() : steps;
  const index = Object.fromEntries(rows.map((r, i) => [r, i]));
  const stepRow = Object.fromEntries(steps.map((s, i) => [s, i]));
  const plannedRow = (b) => byExecutor ? index[b.executor] : stepRow[b.step];
  const attemptRow = (a) => byExecutor ? index[a.executor] : stepRow[a.step];
  const markRow = (d) => byExecutor ? (index[d.executor] ?? 0) : (stepRow[d.step] ?? 0);
  const span = Math.max(scale === "actual" ? wf.axis.actual_span : wf.axis.span, 1);
  const ticks = scale === "actual" ? wf.axis.actual_ticks : wf.axis.ticks;
  const x = (t) => LABEL + Math.min(Math.max(t, 0), span) * WIDTH / span;
  const height = TOP + ROW * rows.length + 24;
  const color = palette(executors);
  const chart = svg("svg", {class: "gantt", id: "gantt", width: LABEL + WIDTH + RIGHT, height,
    viewBox: `0 0 ${LABEL + WIDTH + RIGHT} ${height}`, role: "img", "aria-label": `Gantt of ${wf.workflow_id}: plan versus actual`});
  for (const t of ticks) {
    chart.append(svg("line", {class: "tick", x1: x(t), x2: x(t), y1: TOP - 8, y2: height - 20}));
    chart.append(svg("text", {x: x(t), y: TOP - 14, "text-anchor": "middle"}, axisLabel(t)));
  }
  rows.forEach((r, i) => {
    chart.append(svg("text", {x: LABEL - 10, y: TOP + i * ROW + 17, "text-anchor": "end", class: byExecutor ? "executor-label" : "step-label"}, r));
  });
  const now = Date.now();
  for (const b of wf.planned) {
    const i = plannedRow(b);
    if (i === undefined || (scale === "actual" && b.start > span)) continue;
    const y = TOP + i * ROW + 3 + (b.revision ? 2 : 0);
    const tall = byExecutor ? ROW / 2 - 4 : ROW - 6 - (b.revision ? 4 : 0);
    chart.append(svg("rect", {class: `planned rev-${b.revision}`, "data-step": b.step, x: x(b.start), y,
      width: Math.max(x(b.end) - x(b.start), 2), height: tall, rx: 3, stroke: color[b.executor]},
      svg("title", {}, `planned${b.revision ? ` (revision ${b.revision})` : ""}: ${b.step} on ${b.executor}, ${axisLabel(b.start)} to ${axisLabel(b.end)}`)));
    if (b.revision) chart.append(svg("text", {x: x(b.end) + 3, y: TOP + i * ROW + 11, class: "replan-label"}, `r${b.revision}`));
  }
  for (const a of wf.attempts) {
    const i = attemptRow(a);
    const from = a.started_at || a.scheduled_at;
    if (i === undefined || !from) continue;
    const to = a.ended_at || (wf.status === "running" || wf.status === "compensating" ? now : from);
    const y = TOP + i * ROW + (byExecutor ? ROW / 2 + 1 : 8);
    chart.append(svg("rect", {class: `attempt ${a.outcome || "open"}${a.compensation ? " compensation" : ""}`, "data-step": a.step,
      x: x(from - t0), y, width: Math.max(x(to - t0) - x(from - t0), 3), height: byExecutor ? ROW / 2 - 4 : ROW - 16, rx: 2,
      fill: a.started_at ? (color[a.executor] || "#888") : "none", stroke: a.started_at ? null : (color[a.executor] || "#888")},
      svg("title", {}, `${a.compensation ? "compensation " : ""}attempt ${a.attempt} of ${a.step} on ${a.executor || "?"}: ${a.outcome || "running"}, ${seconds(to - from)}${a.error ? ` — ${a.error}` : ""}`)));
  }
  for (const r of wf.replans) {
    const at = x(r.at_ms - t0);
    chart.append(svg("line", {class: "replan-line", x1: at, x2: at, y1: TOP - 4, y2: height - 20}));
    chart.append(svg("text", {class: "replan-label", x: at + 4, y: height - 8}, `replan r${r.revision}`));
  }
  for (const d of wf.deviations) {
    const i = markRow(d);
    const cx = x(d.at_ms - t0), cy = TOP + i * ROW + ROW / 2;
    chart.append(svg("path", {class: "deviation-mark", "data-step": d.step, d: `M${cx} ${cy - 7}L${cx + 6} ${cy}L${cx} ${cy + 7}L${cx - 6} ${cy}Z`},
      svg("title", {}, `deviation ${d.kind}${d.step ? ` of ${d.step}` : ""}${d.executor ? ` on ${d.executor}` : ""}: ${d.detail}`)));
  }
  if (wf.deadline !== null && wf.deadline <= span) {
    chart.append(svg("line", {class: "deadline", x1: x(wf.deadline), x2: x(wf.deadline), y1: TOP - 8, y2: height - 20}));
    chart.append(svg("text", {class: "deadline-label", x: x(wf.deadline) - 4, y: height - 8, "text-anchor": "end"}, `deadline ${axisLabel(wf.deadline)}`));
  }
  const legend = el("div", {class: "legend"},
    [...executors].sort().map((e) => el("span", {}, el("i", {style: `background:${color[e]}`}), e)),
    el("span", {}, el("i", {style: "border:1.5px dashed var(--muted)"}), "planned"),
    el("span", {}, el("i", {style: "background:var(--muted)"}), "executed"),
    el("span", {class: "s-failed"}, "◆ deviation"),
    el("span", {style: "color:var(--replan)"}, "┆ replan"),
    el("span", {class: "s-failed"}, "│ deadline"));
  return [el("div", {class: "gantt-wrap"}, chart), legend];
}

// -- one workflow -------------------------------------------------------------------------------

async function act(wf, action, extra) {
  const notice = document.getElementById("action-result");
  try {
    const answer = await api(`/ui/api/workflows/${encodeURIComponent(wf)}/actions/${action}`, {
      method: "POST", headers: {"Content-Type": "application/json", "X-Maestro-UI": "1"},
      body: JSON.stringify(extra || {})});
    notice.className = "notice";
    notice.textContent = `${action}: ${answer.outcome} (${answer.audit})`;
  } catch (error) {
    notice.className = "notice bad";
    notice.textContent = `${action} refused: ${error.message}${error.body && error.body.audit ? ` (${error.body.audit})` : ""}`;
  }
}

function actionBar(wf) {
  const off = !config.actions;
  const title = off ? config.why : null;
  const button = (name, label, extra) => el("button", {id: `action-${name}`, disabled: off || !config.available.includes(name),
    title: title || (config.available.includes(name) ? null : `the server's grant does not cover ${name}`),
    onclick: () => { if (confirm(`${label} ${wf.workflow_id}?`)) act(wf.workflow_id, name, extra); }}, label);
  return el("div", {class: "actions"},
    button("compensate", "Compensate"), button("cancel", "Cancel"),
    el("span", {class: "why"}, off ? config.why : "actions go through the gate as " + (config.caller || "the server's caller") + "; fork from a journal row"),
    el("div", {id: "action-result"}));
}

function forkButton(wf, seq) {
  if (!config.actions || !config.available.includes("fork")) return "";
  return el("button", {class: "fork", onclick: () => {
    const id = prompt(`fork ${wf} at #${seq} as`, `${wf}-fork-${seq}`.slice(0, 64));
    if (id) act(wf, "fork", {at_seq: seq, new_workflow_id: id});
  }}, "fork here");
}

function eventRow(wf, e) {
  return el("tr", {"data-seq": e.seq},
    el("td", {class: "num mono"}, `#${e.seq}`), el("td", {}, clock(e.at_ms)),
    el("td", {class: "mono"}, e.command), el("td", {class: "mono"}, e.events.join(", ")),
    el("td", {}, forkButton(wf, e.seq)));
}

// Long tables show their first rows until asked for all: a page of 1,000 steps stays quick
// to draw (the Gantt always shows every step).
const ROWS = 200;
const expanded = new Set();
const shown = (rows, name) => expanded.has(name) ? rows : rows.slice(0, ROWS);
function more(rows, name, redraw) {
  if (rows.length <= ROWS || expanded.has(name)) return "";
  return el("button", {class: "more", onclick: () => { expanded.add(name); redraw(); }}, `show all ${rows.length} ${name}`);
}

function renderWorkflow(wf, events, view) {
  document.title = `${wf.workflow_id} · MAESTRO · MOON`;
  const scaleSelect = el("select", {id: "scale", "aria-label": "time axis"},
    el("option", {value: "all", selected: view.scale !== "actual"}, "axis: plan and actual"),
    el("option", {value: "actual", selected: view.scale === "actual"}, "axis: actual run"));
  scaleSelect.addEventListener("change", () => { view.scale = scaleSelect.value; renderWorkflow(wf, events, view); });
  const lanesSelect = el("select", {id: "lanes", "aria-label": "rows"},
    el("option", {value: "step", selected: view.lanes !== "executor"}, "rows: steps"),
    el("option", {value: "executor", selected: view.lanes === "executor"}, "rows: executors"));
  lanesSelect.addEventListener("change", () => { view.lanes = lanesSelect.value; renderWorkflow(wf, events, view); });
  const meta = [`${wf.steps.length} steps`, `journal #${wf.version}`, `${wf.usage.tokens} tokens`,
    `${seconds(wf.usage.wall_ms)} wall`, `${wf.usage.joules} J`];
  if (wf.deadline_ms) meta.push(`deadline ${stamp(wf.deadline_ms)}${wf.late ? " (late)" : ""}`);
  if (wf.forked_from) meta.push(`forked from ${wf.forked_from}`);
  const marks = [
    ...wf.deviations.map((d) => el("li", {class: "dev deviation", "data-step": d.step},
      `#${d.seq} deviation ${d.kind}${d.step ? ` · ${d.step}` : ""}${d.executor ? ` on ${d.executor}` : ""}: ${d.detail}`)),
    ...wf.replans.map((r) => el("li", {class: "rep replan"},
      `#${r.seq} replan r${r.revision}: ${r.reason} → ${Object.entries(r.assignments).map(([s, e]) => `${s} on ${e}`).join(", ")}`)),
  ];
  const steps = shown(wf.steps, "steps").map((s) => el("tr", {"data-step": s.id},
    el("td", {class: "mono"}, s.id), el("td", {}, status(s.status)), el("td", {class: "mono"}, s.capability),
    el("td", {class: "num"}, s.attempt), el("td", {}, s.executor || ""),
    el("td", {class: s.planned_executor && s.executor && s.planned_executor !== s.executor ? "s-failed" : ""}, s.planned_executor || ""),
    el("td", {class: "num"}, seconds(s.duration_ms)), el("td", {class: "num"}, s.usage.tokens || ""),
    el("td", {class: "num"}, seconds(s.usage.wall_ms)), el("td", {class: "num"}, s.usage.joules || ""),
    el("td", {class: "result mono"}, s.result), el("td", {class: "error"}, s.error)));
  const attempts = shown(wf.attempts, "attempts").map((a) => el("tr", {"data-attempt": `${a.step}/${a.attempt}`},
    el("td", {class: "mono"}, a.step), el("td", {class: "num"}, a.attempt + (a.compensation ? " (undo)" : "")),
    el("td", {}, a.executor || ""), el("td", {}, clock(a.scheduled_at)), el("td", {}, clock(a.started_at)),
    el("td", {class: "num"}, seconds(a.ended_at && a.started_at ? a.ended_at - a.started_at : null)),
    el("td", {}, a.outcome ? status(a.outcome) : "running"),
    el("td", {class: "num"}, a.usage ? a.usage.tokens : ""), el("td", {class: "error"}, a.error)));
  const audit = wf.audit.map((r) => el("tr", {},
    el("td", {class: "num mono"}, `#${r.seq}`), el("td", {}, stamp(r.at)), el("td", {class: "mono"}, `${r.service}.${r.method}`),
    el("td", {}, status(r.outcome)), el("td", {class: "mono"}, r.caller ? r.caller.slice(-16) : "(unverified)"),
    el("td", {}, r.reason || ""), el("td", {class: "mono"}, r.ref)));
  const head = (...names) => el("thead", {}, el("tr", {}, names.map((n) => el("th", {}, n))));
  put(
    el("h1", {}, el("span", {class: "mono", id: "wf-id"}, wf.workflow_id), " ", status(wf.shown_status)),
    el("p", {class: "meta"}, meta.join(" · "), wf.plan_id ? [" · plan ", el("a", {href: `/ui/plans/${encodeURIComponent(wf.plan_id)}`}, wf.plan_id), ` r${wf.plan_revision}`] : ""),
    wf.quarantined ? el("p", {class: "notice bad"}, `quarantined: journal #${wf.quarantined.seq} does not verify (${wf.quarantined.detail}); what is shown is the verified part before it`) : "",
    wf.hints.map((h) => el("p", {class: "hint"}, `… ${h}`)),
    actionBar(wf),
    el("h2", {}, "Plan versus actual ", scaleSelect, " ", lanesSelect),
    gantt(wf, view.scale, view.lanes),
    marks.length ? el("ul", {class: "marks", id: "marks"}, marks) : el("p", {class: "muted", id: "marks"}, "no deviation, no replan"),
    el("h2", {}, "Steps"),
    el("table", {id: "steps"}, head("step", "status", "capability", "attempts", "executor", "planned", "duration", "tokens", "wall", "joules", "result", "error"), el("tbody", {}, steps)),
    more(wf.steps, "steps", () => renderWorkflow(wf, events, view)),
    el("h2", {}, "Attempts"),
    el("table", {id: "attempts"}, head("step", "attempt", "executor", "scheduled", "started", "took", "outcome", "tokens", "error"), el("tbody", {}, attempts)),
    more(wf.attempts, "attempts", () => renderWorkflow(wf, events, view)),
    el("div", {class: "cols"},
      el("div", {}, el("h2", {}, `Journal (${wf.events} messages${events.length < wf.events ? `, last ${events.length} shown` : ""})`),
        el("table", {id: "journal"}, head("seq", "time", "command", "events", ""), el("tbody", {}, events.map((e) => eventRow(wf.workflow_id, e))))),
      el("div", {}, el("h2", {}, "Audit"),
        wf.audit.length ? el("table", {id: "audit"}, head("seq", "at", "method", "outcome", "caller", "reason", "record"), el("tbody", {}, audit))
          : el("p", {class: "muted"}, "no audit record of this workflow's requests in the recent window"))));
}

async function workflowPage(id) {
  const [wf, journal] = await Promise.all([api(`/ui/api/workflows/${encodeURIComponent(id)}`),
    api(`/ui/api/workflows/${encodeURIComponent(id)}/events?last=1&limit=300`)]);
  const events = journal.items;
  let current = wf;
  const view = {scale: "all", lanes: "step"};
  const draw = () => {
    const y = window.scrollY;
    renderWorkflow(current, events, view);
    window.scrollTo(0, y);
  };
  draw();
  const refetch = debounce(async () => {
    if (!location.pathname.startsWith("/ui/workflows/")) return;
    try { current = await api(`/ui/api/workflows/${encodeURIComponent(id)}`); draw(); } catch (error) { show(error); }
  }, 250);
  listen(`/ui/api/workflows/${encodeURIComponent(id)}/stream?after=${wf.version}`, {
    journal: (message) => {
      const row = JSON.parse(message.data);
      if (!events.length || row.seq > events[events.length - 1].seq) events.push(row);
      if (events.length > 300) events.shift();
      refetch();
    },
    quarantined: refetch,
  });
}

// -- one plan -----------------------------------------------------------------------------------

function planTable(plan, deadline) {
  if (!plan || !plan.assignments) return el("p", {class: "muted"}, "no schedule");
  const rows = [...plan.assignments].sort((a, b) => a.start - b.start || a.step.localeCompare(b.step));
  return el("table", {class: "plan"}, el("thead", {}, el("tr", {}, ["step", "executor", "start", "end", "duration"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((a) => el("tr", {"data-step": a.step}, el("td", {class: "mono"}, a.step), el("td", {}, a.executor),
      el("td", {class: "num"}, axisLabel(a.start)), el("td", {class: "num" + (deadline && a.end > deadline ? " s-failed" : "")}, axisLabel(a.end)),
      el("td", {class: "num"}, axisLabel(a.end - a.start))))));
}

async function planPage(id) {
  const p = await api(`/ui/api/plans/${encodeURIComponent(id)}`);
  document.title = `plan ${id} · MAESTRO · MOON`;
  const deadline = p.goal && p.goal.deadline_ms;
  const json = (v) => el("pre", {}, JSON.stringify(v, null, 2));
  const plan = p.plan || {};
  put(
    el("h1", {}, "plan ", el("span", {class: "mono"}, p.plan_id), " ", status(p.status)),
    el("p", {class: "meta"}, [p.goal ? `goal ${p.goal.name}, ${(p.goal.steps || []).length} steps` : "", plan.makespan !== undefined ? `makespan ${axisLabel(plan.makespan || 0)}` : "",
      plan.cost !== undefined && plan.cost !== null ? `cost ${plan.cost}` : "", deadline ? `deadline ${axisLabel(deadline)}` : "",
      plan.status ? `solver ${plan.status}` : ""].filter(Boolean).join(" · "),
      p.workflow_id ? [" · workflow ", el("a", {href: `/ui/workflows/${encodeURIComponent(p.workflow_id)}`}, p.workflow_id)] : ""),
    p.foreign.length ? el("p", {class: "notice bad"}, `${p.foreign.length} PLANS message(s) not written by MAESTRO, not folded: ` + p.foreign.map((f) => f.detail).join("; ")) : "",
    el("h2", {}, "The plan (as proposed)"), planTable(p.plan, deadline),
    el("h2", {}, `Revisions (${p.revisions.length})`),
    p.revisions.length ? p.revisions.map((r) => el("div", {class: "revision", "data-revision": r.revision},
      el("h3", {}, `r${r.revision} · #${r.seq} · ${stamp(r.at_ms)}`), el("p", {}, `why: ${r.why}`),
      el("p", {}, "moved: ", Object.entries(r.moved).map(([s, m]) => `${s}: ${m}`).join(", ") || "nothing"),
      el("div", {class: "cols"}, el("div", {}, el("h4", {}, "revision"), planTable(r.plan, deadline)),
        el("div", {class: "dissent"}, el("h4", {}, "dissent: the plan it replaced"), planTable(r.dissent, deadline)))))
      : el("p", {class: "muted"}, "no revision"),
    el("div", {class: "cols"},
      el("div", {}, el("h2", {}, "Anticipation"), p.anticipation ? [
        el("p", {id: "p-on-time"}, `p(on time) ${p.anticipation.p_on_time ?? "?"} · p(success) ${p.anticipation.p_success ?? "?"} · ${p.anticipation.samples ?? "?"} samples`),
        el("ul", {}, (p.anticipation.backups || []).map((b) => el("li", {}, `backup for ${b.step}: ${b.executor} (${axisLabel(b.duration)}, cost ${b.cost})`))),
        json(p.anticipation)] : el("p", {class: "muted"}, "none recorded")),
      el("div", {}, el("h2", {}, "Bids"), p.bids ? json(p.bids) : el("p", {class: "muted"}, "no bids (board prices)")),
      el("div", {}, el("h2", {}, "Awards"), p.awards ? json(p.awards) : el("p", {class: "muted"}, "not allocated"))),
    p.refusals.length ? [el("h2", {}, "Refusals"), el("ul", {}, p.refusals.map((r) => el("li", {}, `#${r.seq} ${r.reason}: ${r.detail}`)))] : "",
    p.ratifications.length ? [el("h2", {}, "Ratifications"), el("ul", {}, p.ratifications.map((r) => el("li", {}, `#${r.seq} ${r.approved ? "approved" : "rejected"} by ${r.by} ${r.note}`)))] : "",
    el("h2", {}, "Journal"), el("table", {}, el("tbody", {}, p.history.map((h) => el("tr", {}, el("td", {class: "num mono"}, `#${h.seq}`), el("td", {}, stamp(h.at_ms)), el("td", {class: "mono"}, h.type))))),
    el("h2", {}, "Audit"), p.audit.length ? el("ul", {}, p.audit.map((r) => el("li", {class: "mono"}, `#${r.seq} ${r.service}.${r.method} ${r.outcome} ${r.ref}`)))
      : el("p", {class: "muted"}, "no audit record of this plan's requests in the recent window (a plan made in-process, as by `maestro demo`, passed no gate)"));
}

// -- routing --------------------------------------------------------------------------------------

function show(error) {
  put(el("p", {class: "notice bad", id: "error"}, error.message || String(error)));
}

async function route() {
  if (source) { source.close(); source = null; live.classList.remove("on"); }
  const path = location.pathname;
  try {
    if (path.startsWith("/ui/workflows/")) await workflowPage(decodeURIComponent(path.slice("/ui/workflows/".length)));
    else if (path.startsWith("/ui/plans/")) await planPage(decodeURIComponent(path.slice("/ui/plans/".length)));
    else await listPage();
  } catch (error) { show(error); }
}

document.addEventListener("click", (event) => {
  const link = event.target.closest && event.target.closest("a");
  if (!link || link.origin !== location.origin || !link.pathname.startsWith("/ui/") || event.ctrlKey || event.metaKey) return;
  event.preventDefault();
  history.pushState(null, "", link.href);
  route();
});
window.addEventListener("popstate", route);

(async () => {
  try { config = await api("/ui/api/config"); } catch (error) { /* read-only defaults */ }
  document.getElementById("mode").textContent = config.actions ? "actions enabled (through the gate)" : "read-only";
  route();
})();
