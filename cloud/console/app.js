// The fabpm operator console: plain JS against the REST API (no build step, no CDN).
"use strict";

const state = { token: sessionStorage.getItem("fabpm-token"), role: sessionStorage.getItem("fabpm-role"), tab: "fleet" };
const RANK = { viewer: 0, operator: 1, admin: 2 };
const $ = (sel, root = document) => root.querySelector(sel);

function can(role) { return RANK[state.role] >= RANK[role]; }
// Times in the browser's time zone, as the times entered in the forms are (the header says which).
function fmtTime(ts) {
  if (!ts) return "";
  const d = new Date(ts * 1000);
  return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().replace("T", " ").slice(0, 19);
}
function zoneName() {
  const off = -new Date().getTimezoneOffset(), sign = off >= 0 ? "+" : "\u2212", a = Math.abs(off);
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
  return `times in ${zone} (UTC${sign}${String(Math.floor(a / 60)).padStart(2, "0")}:${String(a % 60).padStart(2, "0")})`;
}
document.getElementById("tz").textContent = zoneName();
function fmtNum(x, d = 2) { return x === null || x === undefined ? "" : Number(x).toFixed(d); }
// Four significant digits: sensor values span mTorr to sccm to nm.
function fmtVal(x) { return x === null || x === undefined ? "" : String(Number(Number(x).toPrecision(4))); }
function fmtProbs(p) {
  if (!p) return "";
  return Object.entries(p).sort((a, b) => b[1] - a[1]).slice(0, 3).map(([m, v]) => `${m} ${fmtNum(v)}`).join(", ");
}
// The models give a probability for every mode of every tool type; show a case's own modes only.
function ownProbs(p, modes) {
  if (!p || !modes) return p;
  return Object.fromEntries(Object.entries(p).filter(([m]) => modes.includes(m)));
}
function cell(text, cls) { const td = document.createElement("td"); td.textContent = text ?? ""; if (cls) td.className = cls; return td; }
// Sensors to look at before trusting a tool's risk: stuck (unchanged while processing) or Bad.
function fmtIssues(issues) {
  return (issues || []).map((i) =>
    `${i.sensor} ${i.issue === "unchanged" ? "unchanged while processing" : "no good value"} ${fmtNum(i.hours, 1)} h`).join("; ");
}
const signed = (x, d = 2) => `${x >= 0 ? "+" : "\u2212"}${fmtNum(Math.abs(x), d)}`;
// A tuning proposal as what it changes, one setpoint a line: "rf_power_sp 1200 → 1175 W (−2.1%)".
function fmtChange(t) {
  const units = t.units || {}, before = t.previous || {};
  return Object.entries(t.setpoints || {}).map(([k, v]) => {
    const unit = units[k] ? ` ${units[k]}` : "", was = before[k];
    if (was === undefined || was === null) return `${k} \u2192 ${fmtVal(v)}${unit}`;
    const pct = was ? ` (${signed((100 * (v - was)) / Math.abs(was), 1)}%)` : "";
    return `${k} ${fmtVal(was)} \u2192 ${fmtVal(v)}${unit}${pct}`;
  }).join("\n");
}
// What a step is expected to do: the proposing optimiser's figures (fitted on the tools' recent
// lots), then the offline tuning model's view of the same step; keys a newer edge adds, as sent.
function fmtExpected(e) {
  const known = ["yield_delta", "energy_delta", "surrogate_yield_delta", "surrogate_energy_delta"];
  const say = (y, en) => [y === undefined ? "" : `yield ${signed(y)} points`,
    en === undefined ? "" : `energy ${signed(en)} kWh per lot`].filter(Boolean).join(", ");
  const mine = say(e?.yield_delta, e?.energy_delta), model = say(e?.surrogate_yield_delta, e?.surrogate_energy_delta);
  const other = Object.entries(e || {}).filter(([k]) => !known.includes(k)).map(([k, v]) => `${k} ${fmtNum(v)}`).join(", ");
  return [mine, model ? `tuning model: ${model}` : "", other].filter(Boolean).join("\n") || "no prediction (see why)";
}
// A 90% interval of a share, after the share itself: " (90%: 27–100%)"; "" without one.
function fmtInterval(lo, hi) {
  return lo == null || hi == null ? "" : ` (90%: ${Math.round(100 * lo)}\u2013${Math.round(100 * hi)}%)`;
}
// A release's alert rule and what it did on tools it never trained on, with 90% intervals: a
// fleet of ~30 tools decides a precision to within several points (cloud.training.alert_choice).
function fmtRule(m) {
  const th = m?.thresholds || {}, f = m?.metrics || {};
  if (th.alert_probability === undefined) return "";
  const rule = `p \u2265 ${fmtVal(th.alert_probability)} for ${th.alert_persistence_steps} steps`;
  if (f.alert_rule_precision === undefined) return `${rule}\nnot measured on this release (a default, or its parent's rule)`;
  const pc = (x) => `${Math.round(100 * x)}%`;
  const n = f.alert_rule_warnable_failures, warned = Math.round((f.alert_rule_recall_ge_lead ?? 0) * n);
  const alerts = f.alert_rule_alerts === undefined ? "" : ` of ${f.alert_rule_alerts} alerts`;
  const tools = f.alert_rule_tools === undefined ? "" : ` on ${f.alert_rule_tools} tools not trained on`;
  return `${rule}\nwarned \u2265 72 h: ${warned} of ${n} failures, ${pc(f.alert_rule_recall_ge_lead ?? 0)}` +
    `${fmtInterval(f.alert_rule_recall_ge_lead_lo, f.alert_rule_recall_ge_lead_hi)}\nprecision ${pc(f.alert_rule_precision)}${alerts}` +
    `${fmtInterval(f.alert_rule_precision_lo, f.alert_rule_precision_hi)}${tools}`;
}
// What the canary's hard cases say of a rollout: how far its edge model's answers were from the
// full model's verdicts, beside the previous model's (cloud/rollout.py rolls back when worse).
function watched(o) {
  if (!o.observations) return "no hard cases from it yet";
  const then = o.error_previous === null || o.error_previous === undefined ? "" : ` (previous model ${fmtNum(o.error_previous, 3)})`;
  return `${o.observations} hard cases; off the full model by ${fmtNum(o.error_new, 3)}${then}`;
}
function button(label, onClick, cls = "small") {
  const b = document.createElement("button"); b.textContent = label; b.className = cls; b.addEventListener("click", onClick); return b;
}
function setStatus(msg, isError = false) { const s = $("#status"); s.textContent = msg; s.className = isError ? "error" : ""; }

async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json", ...(options.headers || {}) };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const res = await fetch(path, { ...options, headers });
  if (res.status === 401 && path !== "/api/auth/token") { logout(); throw new Error("session expired: sign in again"); }
  const body = res.headers.get("content-type")?.includes("json") ? await res.json() : await res.text();
  if (!res.ok) throw new Error(body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)) : res.statusText);
  return body;
}
const post = (path, body = {}) => api(path, { method: "POST", body: JSON.stringify(body) });
const del = (path) => api(path, { method: "DELETE" });

function fill(tbody, rows, render) {
  tbody.replaceChildren(...rows.map((r) => { const tr = document.createElement("tr"); render(r, tr); return tr; }));
  applySort(tbody.closest("table"));
  applyFilter(tbody.closest("table"));
}

// A filter box over each data table: the rows whose text lacks any of the words typed are hidden
// (case-insensitive), kept across the refreshes, and left out of its CSV: a fleet of hundreds of
// tools is read one area or type at a time.
const FILTERS = new Map();  // table → lowercase words
function applyFilter(table) {
  const words = FILTERS.get(table) || [];
  for (const tr of table.tBodies[0].rows) tr.hidden = !words.every((w) => tr.textContent.toLowerCase().includes(w));
}

// A data table sorts by the column whose header is clicked: highest, newest or last first, a
// second click the other way; kept across the refreshes. A cell's data-sort (a risk's highest
// probability, a stretch's hours) is its key where its text is not; numbers sort as numbers,
// before the empty cells and text.
const SORTS = new Map();  // table → { col, dir }
function sortKey(td) {
  const k = (td?.dataset.sort ?? td?.textContent ?? "").trim();
  return k !== "" && Number.isFinite(Number(k)) ? Number(k) : k.toLowerCase();
}
function applySort(table) {
  const by = table && SORTS.get(table);
  if (!by) return;
  const rows = [...table.tBodies[0].rows];
  rows.sort((a, b) => {
    const x = sortKey(a.cells[by.col]), y = sortKey(b.cells[by.col]);
    if (typeof x !== typeof y) return typeof x === "number" ? -1 : 1;  // numbers first either way
    return (x < y ? -1 : x > y ? 1 : 0) * by.dir;
  });
  table.tBodies[0].append(...rows);
  [...table.tHead.rows[0].cells].forEach((th, i) => { th.dataset.sorted = i === by.col ? (by.dir < 0 ? "desc" : "asc") : ""; });
}
function sortable(table) {
  [...table.tHead.rows[0].cells].forEach((th, col) => {
    if (!th.textContent.trim()) return;  // the buttons' column
    th.classList.add("sortable");
    th.title = th.title ? `${th.title} (click to sort)` : "click to sort";
    th.addEventListener("click", () => {
      const now = SORTS.get(table);
      SORTS.set(table, { col, dir: now?.col === col ? -now.dir : -1 });
      applySort(table);
    });
  });
}

const RENDER = {
  async fleet() {
    const [edges, tools, workers, sensors, e10, day] = await Promise.all([api("/api/fleet"), api("/api/tools"), api("/api/workers"),
      api("/api/sensor-issues?limit=50"), api(`/api/e10?days=${$("#e10-days").value}`), api("/api/digest?hours=24")]);
    $("#digest").textContent = day.text.replace(/^fabpm, t/, "T");
    const f = e10.fleet;
    $("#e10-summary").textContent = f.known_h ? `Fleet, ${f.tools} tools, to ${fmtTime(e10.now_ts)} on the equipment's clock: ` +
      `equipment uptime ${fmtPct(f.equipment_uptime_pct)}, ${f.failures} failure${f.failures === 1 ? "" : "s"}, ` +
      `${fmtNum(f.unscheduled_down_h, 1)} h unscheduled down, MTBF ${f.mtbf_productive_h === null ? "(no failure)" : fmtNum(f.mtbf_productive_h, 0) + " h"}, ` +
      `MTTR ${f.mttr_h === null ? "(no repair ended)" : fmtNum(f.mttr_h, 1) + " h"}.` : "No state changes reported in this window.";
    fill($("#e10 tbody"), e10.tools, (t, tr) => {
      const bar = cell(""); bar.append(e10Bar(t.hours, t.unmapped_h)); bar.dataset.sort = t.hours.productive;
      const up = cell(fmtPct(t.equipment_uptime_pct), "num"); up.dataset.sort = t.equipment_uptime_pct ?? "";
      const failed = cell(t.down_now ? `${t.failures} (down now)` : t.failures, "num"); failed.dataset.sort = t.failures;
      tr.append(cell(t.tool_id), cell(t.tool_type), bar, up, cell(fmtNum(t.unscheduled_down_h, 1), "num"),
        cell(fmtNum(t.hours.scheduled_down, 1), "num"), failed, cell(fmtNum(t.mtbf_productive_h, 0), "num"),
        cell(fmtNum(t.mttr_h, 1), "num"), cell(fmtNum(t.known_h, 0), "num"));
    });
    fill($("#fleet tbody"), edges, (e, tr) => tr.append(
      cell(e.site), cell(e.edge_id), cell(e.state), cell(Object.entries(e.models || {}).map(([k, v]) => `${k}: ${v}`).join(", ")),
      cell(e.last_update?.outcome ? `${e.last_update.outcome} ${e.last_update.version || ""} ${e.last_update.reason || ""}` : ""),
      cell(fmtTime(e.last_seen_ts))));
    fill($("#tools tbody"), tools, (t, tr) => {
      const look = cell(""); look.append(button("Risk", () => showRisk(t.tool_id)));
      const issues = fmtIssues(t.sensor_issues);
      const risk = cell(fmtProbs(t.risk)); risk.dataset.sort = Math.max(...Object.values(t.risk || {}), -1);
      const shelf = t.shelf ? fmtShelf(t.shelf) : "";
      tr.append(cell(t.tool_id), cell(t.tool_type), cell(t.edge_id), cell(t.state), risk,
        cell(issues, issues ? "sensor-issue" : ""), cell(shelf, "shelved"), cell(fmtTime(t.last_ts)), look);
    });
    // An open stretch of a tool that has sent nothing for 10 minutes (its edge offline) is as its
    // last telemetry left it: said so, with when that was.
    const lastData = Object.fromEntries(tools.map((t) => [t.tool_id, t.last_ts]));
    const quiet = (tool) => Date.now() / 1000 - (lastData[tool] ?? 0) > 600;
    fill($("#sensor-issues tbody"), sensors, (i, tr) => {
      const lasted = cell(`${fmtNum(i.hours, 1)} h`, "num"); lasted.dataset.sort = i.hours;
      tr.append(cell(i.tool_id), cell(i.sensor), cell(i.issue === "unchanged" ? "unchanged while processing" : "no good value"),
        cell(fmtTime(i.start_ts)), lasted,
        i.end_ts !== null ? cell(fmtTime(i.end_ts))
          : cell(quiet(i.tool_id) ? `open at the tool's last data (${fmtTime(lastData[i.tool_id])})` : "still open", "sensor-issue"));
    });
    // A negative age: another worker has claimed this silent worker's session and is draining it.
    fill($("#workers tbody"), workers, (w, tr) => tr.append(
      cell(w.client_id), cell(w.share_group), cell(w.age_s < 0 ? "silent: its session is being adopted" : `${fmtNum(w.age_s, 0)} s ago`)));
  },
  async alerts() {
    const [rows, sent, field] = await Promise.all([api("/api/alerts?limit=200"),
      can("operator") ? api("/api/notifications?limit=100") : [], api(`/api/alerts/field?days=${$("#field-days").value}`)]);
    $("#field-summary").textContent = fieldSummary(field);
    $("#field-chart").replaceChildren(...(field.failure_warnings.length ? leadChart(field) : []));
    $("#notifications").hidden = !sent.length;  // shown where webhooks are configured and used
    fill($("#notifications tbody"), sent, (n, tr) => tr.append(
      cell(fmtTime(n.created_ts)), cell(n.target), cell(n.text), cell(n.status, `status-${n.status}`),
      cell(n.attempts, "num"), cell(n.last_error)));
    fill($("#alerts tbody"), rows, (a, tr) => {
      const found = { fault: "fault found", no_fault: "no fault found" }[a.ack_finding];
      const ack = cell(a.acknowledged_by ? `${a.acknowledged_by}${found ? ": " + found : ""}` : "");
      if (can("operator") && !a.ack_finding) {  // what an inspection found decides the alert (field report)
        const ackWith = (finding) => act(post(`/api/alerts/${a.msg_id}/ack`, finding ? { finding } : {}));
        if (!a.acknowledged_by) ack.append(button("Acknowledge", () => ackWith(null)));
        ack.append(button("Fault found", () => ackWith("fault")), button("No fault found", () => ackWith("no_fault")));
      }
      const o = field.alert_outcomes[a.msg_id];
      // When the equipment showed it (the window that raised it), on the clock its failures and
      // maintenance are stamped with; the edge's send time in the tooltip (older edges: only that).
      const raised = cell(fmtTime(a.source_ts ?? a.ts));
      raised.title = `sent by the edge ${fmtTime(a.ts)}`;
      // A sensor that looked wrong when the alert came may be what raised it: said under the mode.
      const mode = cell(a.mode), issues = fmtIssues(a.sensor_issues);
      if (a.likely_mode && a.likely_mode !== a.mode) {  // the catalog's precursors of another mode are what moves
        const note = document.createElement("div");
        note.className = "likely-mode"; note.textContent = `sensors point to ${a.likely_mode}`;
        note.title = "the mode whose precursor sensors (the equipment catalog's) carry the risk; the mode above is the one the edge's model names, and models often confuse modes of one tool type";
        mode.append(note);
      }
      if (issues) {
        const note = document.createElement("div");
        note.className = "sensor-issue"; note.textContent = `check first: ${issues}`; mode.append(note);
      }
      if (a.shelved) {  // stored and shown, not sent to the webhooks
        const note = document.createElement("div");
        note.className = "shelved"; note.textContent = `not sent: shelved by ${a.shelved.by} (${a.shelved.reason})`;
        mode.append(note);
      }
      tr.append(raised, cell(a.tool_id), mode, moving(a.evidence, a.reference_known), cell(fmtNum(a.probability), "num"),
        cell(fmtNum(a.rul_h, 1), "num"), cell(a.model_version), cell(o ? followed(o, field.match_h) : "", o ? `outcome-${o.outcome}` : ""), ack);
    });
  },
  async cases() {
    const rows = await api(`/api/cases?status=${$("#case-filter").value}&limit=200`);
    fill($("#cases tbody"), rows, (c, tr) => {
      const label = c.label_failed === null ? "" :
        `${c.label_failed ? "failed" + (c.label_mode ? " (" + c.label_mode + ")" : "") : "healthy"}` +
        `${c.label_rul_h !== null ? ", RUL " + fmtNum(c.label_rul_h, 1) + " h" : ""} by ${c.label_source}` +
        (c.label_source === "survival" ? " (its tool ran a horizon on)" : "");
      const actions = cell("");
      if (can("operator")) {
        const said = ownProbs(c.verdict?.probs || c.edge_prediction?.probs || {}, c.tool_modes);
        const top = Object.keys(said).sort((a, b) => said[b] - said[a])[0] || null;
        actions.append(
          button(`Failed${top ? " (" + top + ")" : ""}`, () => act(post(`/api/cases/${c.case_id}/labels`, { failed: true, mode: top }))),
          button("Healthy", () => act(post(`/api/cases/${c.case_id}/labels`, { failed: false }))));
      }
      const look = cell(""); look.append(button("Show", () => showWindow(c.case_id)));
      // The window's end on the equipment's clock (what a failure or maintenance is compared with
      // when labelling); when the cloud received it in the tooltip.
      const at = cell(fmtTime(c.window_ts)); at.title = `received ${fmtTime(c.received_ts)}`;
      tr.append(at, cell(c.tool_id), cell((c.reasons || []).join(", ")),
        cell(fmtProbs(ownProbs(c.edge_prediction?.probs, c.tool_modes))), cell(c.verdict ? (c.verdict.error ? `not answerable: ${c.verdict.error}` : `${fmtProbs(ownProbs(c.verdict.probs, c.tool_modes))}; RUL ${fmtNum(c.verdict.rul_h, 1)} h`) : "waiting"),
        cell(label), actions, look);
    });
  },
  async models() {
    const [models, rollouts] = await Promise.all([api("/api/models"), api("/api/rollouts")]);
    const busy = rollouts.some((r) => r.stage === "canary");
    fill($("#models tbody"), models, (m, tr) => {
      const actions = cell("");
      if (can("admin") && !busy && ["registered", "retired", "rolled_back"].includes(m.status)) {
        actions.append(button("Roll out", () => act(post("/api/rollouts", { version: m.version }))));
      }
      tr.append(cell(m.version), cell(m.role), cell(m.parent_version), cell(m.status, `status-${m.status}`),
        cell(m.round_id), cell(fmtTime(m.created_ts)), cell(fmtRule(m.manifest), "lines"), actions);
    });
    fill($("#rollouts tbody"), rollouts, (r, tr) => {
      const actions = cell("");
      if (["canary", "all"].includes(r.stage) && can("operator")) {
        actions.append(button("Roll back", () => act(post(`/api/rollouts/${r.id}/rollback`, { reason: "from the console" }))));
      }
      if (r.stage === "canary" && can("admin")) actions.append(button("Promote", () => act(post(`/api/rollouts/${r.id}/promote`))));
      const o = r.observations || {};
      tr.append(cell(r.id), cell(r.version), cell(r.previous_version), cell(r.stage, `stage-${r.stage}`), cell((r.canary_edges || []).join(", ")),
        cell(watched(o)), cell(r.reason), actions);
    });
  },
  async tuning() {
    const rows = await api("/api/tuning");
    fill($("#tuning tbody"), rows, (t, tr) => {
      const actions = cell("");
      if (t.status === "proposal" && can("operator")) {
        actions.append(button("Approve", () => act(post(`/api/tuning/${t.proposal_id}/approve`, { reason: "approved in the console" }))),
          button("Reject", () => act(post(`/api/tuning/${t.proposal_id}/reject`, { reason: "rejected in the console" }))));
      }
      const last = (t.history || []).at(-1) || {};  // why it is where it is: expired, refused, who decided
      const why = [last.reason || t.reason, last.actor && last.actor !== "edge" ? `by ${last.actor}` : ""].filter(Boolean).join(", ");
      tr.append(cell(fmtTime(t.updated_ts), "time"), cell(t.tool_id), cell(fmtChange(t), "lines"), cell(fmtExpected(t.expected), "lines"),
        cell(t.status), cell(why), actions);
    });
  },
  async users() {
    const [users, tokens] = await Promise.all([api("/api/users"), api("/api/auth/api-tokens")]);
    const me = sessionStorage.getItem("fabpm-user");
    fill($("#users tbody"), users, (u, tr) => {
      const actions = cell("");
      if (u.username !== me) {
        actions.append(button("Remove", () => {
          if (confirm(`Remove ${u.username} and every token of theirs?`)) act(del(`/api/users/${encodeURIComponent(u.username)}`));
        }));
      }
      tr.append(cell(u.username), cell(u.role), cell(fmtTime(u.created_ts)), actions);
    });
    fill($("#api-tokens tbody"), tokens, (t, tr) => {
      const actions = cell("");
      actions.append(button("Revoke", () => act(del(`/api/auth/api-tokens/${t.token_id}`))));
      tr.append(cell(t.token_id), cell(t.username), cell(t.name), cell(fmtTime(t.created_ts)), actions);
    });
  },
  async audit() {
    const actor = $("#audit-form").elements.actor.value.trim();
    const rows = await api(`/api/audit${actor ? `?actor=${encodeURIComponent(actor)}` : ""}`);
    fill($("#audit tbody"), rows, (r, tr) => {
      const outcome = r.status === 0 ? "done (CLI)" : `${r.status < 400 ? "done" : "refused"} (${r.status})`;
      tr.append(cell(fmtTime(r.ts)), cell(r.actor), cell(r.role), cell(r.client), cell(r.action), cell(r.target),
        cell(outcome, r.status >= 400 ? "status-failed" : ""));
    });
  },
  async learning() {
    const rows = await api("/api/learning/rounds");
    fill($("#learning tbody"), rows, (r, tr) => {
      const log = document.createElement("pre");
      log.textContent = (r.log || []).map((l) => `${fmtTime(l.ts)} ${l.msg}`).join("\n");
      const td = cell(""); td.append(log);
      tr.append(cell(r.id), cell(r.trigger), cell(r.step), cell(r.status), td);
    });
  },
};

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) { const e = document.createElementNS(SVG, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); return e; }

// One small chart per series: a line over the window's steps (broken where a reading is missing),
// a reference line (the type's typical value for sensors in units, else zero), ticks where missing.
function chart(series, steps) {
  const W = 240, H = 56, pad = 3;
  const vals = series.values, known = vals.filter((v) => v !== null);
  const base = series.typical ?? 0;
  const lo = Math.min(base, ...known), hi = Math.max(base, ...known), span = hi - lo || 1;
  const x = (i) => pad + (i / Math.max(1, steps - 1)) * (W - 2 * pad);
  const y = (v) => H - pad - ((v - lo) / span) * (H - 2 * pad);
  const fig = document.createElement("figure");
  const box = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": series.name });
  box.append(svg("line", { x1: pad, x2: W - pad, y1: y(base), y2: y(base), class: "zero" }));
  let run = [];
  const flush = () => {  // a reading alone between gaps is a dot: a one-point line would not show
    if (run.length === 1) box.append(svg("circle", { cx: run[0][0], cy: run[0][1], r: 1.3, class: "dot" }));
    else if (run.length) box.append(svg("polyline", { points: run.map((p) => p.join(",")).join(" "), class: "trace" }));
    run = [];
  };
  vals.forEach((v, i) => { if (v === null) flush(); else run.push([x(i).toFixed(1), y(v).toFixed(1)]); });
  flush();
  for (const i of series.missing || []) box.append(svg("line", { x1: x(i), x2: x(i), y1: H - pad, y2: H - pad - 6, class: "missing" }));
  for (const i of series.clipped || []) box.append(svg("circle", { cx: x(i), cy: y(vals[i]), r: 2, class: "clipped" }));
  const cap = document.createElement("figcaption");
  const unit = series.unit ? ` ${series.unit}` : "";
  const typical = series.typical !== undefined ? `, typical ${fmtVal(series.typical)}` : "";
  const range = known.length ? `[${fmtVal(Math.min(...known))} … ${fmtVal(Math.max(...known))}]${unit}` : "no reading";
  cap.textContent = `${series.name}  ${range}${typical}`;
  fig.append(box, cap);
  return fig;
}

async function showWindow(caseId) {
  try {
    const w = await api(`/api/cases/${caseId}/window`);
    const detail = $("#case-detail");
    $("h2", detail).textContent = `Case ${w.case_id}: ${w.tool_id} (${w.tool_type}), ${w.steps} steps to ${fmtTime(w.window_ts)}`;
    const says = (p) => p ? `${fmtProbs(ownProbs(p.probs, w.tool_modes))}; RUL ${fmtNum(p.rul_h, 1)} ± ${fmtNum(p.rul_std_h, 1)} h` : "";
    const full = w.verdict ? (w.verdict.error ? `not answerable: ${w.verdict.error}` : says(w.verdict)) : "waiting";
    const scale = w.scale === "units"
      ? `Sensors in their units (scaler of model ${w.model_version})`
      : `Sensors as z-scores (this registry has no scaler of model ${w.model_version} for ${w.tool_type})`;
    $(".says", detail).textContent = `Edge: ${says(w.edge_prediction)}. Full model: ${full}. ${scale}.`;
    $(".note", detail).textContent = (w.scale === "units"
      ? "Dotted line: the type's typical value (the mean the model was trained on); gaps and red ticks: readings missing; red dots: beyond what the model reads (shown at its limit)."
      : "Each sensor z-scored with its tool type's scaler (dotted line 0: the type's mean; ±1 one standard deviation); red ticks: readings missing.")
      + " The newest step is on the right.";
    $(".charts", detail).replaceChildren(...w.series.map((s) => chart(s, w.steps)));
    detail.hidden = false;
    detail.scrollIntoView({ block: "nearest" });
  } catch (err) { setStatus(err.message, true); }
}

const PALETTE = ["#16324f", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d6a9f", "#2e4057", "#b5651d"];

// Risk per mode over time on a 0–1 axis, one line per mode, alerts as red triangles.
// Points split where no window ran for over three times their usual spacing (the tool down, the
// edge away): a line across the gap would draw a risk nobody measured.
function runs(points) {
  const gaps = points.slice(1).map((p, i) => p.ts - points[i].ts).sort((a, b) => a - b);
  const limit = 3 * (gaps[Math.floor(gaps.length / 2)] ?? 0);
  const out = [];
  points.forEach((p, i) => {
    if (i === 0 || p.ts - points[i - 1].ts > limit) out.push([]);
    out[out.length - 1].push(p);
  });
  return out;
}

function trend(data) {
  const W = 760, H = 220, L = 34, R = 8, T = 8, B = 22;
  // The time axis starts at the oldest data (a young tool's hour fills the chart) and ends at the
  // tool's newest report, so a stretch without windows run (the tool down) shows as a gap.
  const events = data.events || [];
  const times = [...data.points.map((p) => p.ts), ...data.alerts.map((a) => a.ts), ...events.map((e) => e.ts)];
  const t0 = times.length ? Math.min(...times) : data.since_ts, t1 = Math.max(t0 + 1, data.until_ts ?? t0, ...times);
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  // The risk axis ends at the first of these above the highest value: a model whose alerts fire
  // at a few percent would otherwise draw a flat line along the bottom.
  const top = Math.max(0, ...data.points.flatMap((p) => Object.values(p.risk)), ...data.alerts.map((a) => a.probability));
  const ymax = [0.02, 0.05, 0.1, 0.2, 0.5, 1].find((m) => top <= 0.9 * m) ?? 1;
  const y = (v) => T + (1 - Math.min(v, ymax) / ymax) * (H - T - B);
  const box = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `risk of ${data.tool_id}` });
  for (const v of [0, ymax / 2, ymax]) {
    box.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "zero" }));
    const lab = svg("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end", class: "axis" }); lab.textContent = +v.toFixed(3); box.append(lab);
  }
  for (const [t, anchor] of [[t0, "start"], [t1, "end"]]) {
    const lab = svg("text", { x: x(t), y: H - 6, "text-anchor": anchor, class: "axis" }); lab.textContent = fmtTime(t); box.append(lab);
  }
  for (const e of events) {  // a failure (red) or a maintenance (grey): how far ahead the risk rose
    const line = svg("line", { x1: x(e.ts), x2: x(e.ts), y1: T, y2: H - B, class: `event-mark ${e.event}` });
    const said = svg("title", {}); said.textContent = `${e.event} ${fmtTime(e.ts)}${e.mode ? `: ${e.mode}` : ""}`;
    line.append(said); box.append(line);
  }
  const modes = [...new Set(data.points.flatMap((p) => Object.keys(p.risk)))].sort();
  const legend = document.createElement("p"); legend.className = "legend";
  modes.forEach((m, k) => {
    const color = PALETTE[k % PALETTE.length];
    for (const run of runs(data.points.filter((p) => m in p.risk))) {
      const pts = run.map((p) => `${x(p.ts).toFixed(1)},${y(p.risk[m]).toFixed(1)}`);
      box.append(svg("polyline", { points: pts.join(" "), class: "mode", stroke: color }));
    }
    const key = document.createElement("span"); key.textContent = m; key.style.color = color; legend.append(key);
  });
  for (const a of data.alerts) {
    const cx = x(a.ts), cy = y(a.probability);
    const mark = svg("polygon", { points: `${cx},${cy - 6} ${cx - 5},${cy + 3} ${cx + 5},${cy + 3}`, class: "alert-mark" });
    const said = svg("title", {});  // hovered: what the alert said, and the sensors it named
    said.textContent = `alert ${fmtTime(a.ts)}: ${a.mode} ${fmtNum(a.probability)}` +
      (a.evidence?.length ? `; moving: ${a.evidence.map((e) => `${e.sensor} ${fmtSd(e.deviation)}`).join(", ")}` : "");
    mark.append(said); box.append(mark);
  }
  return [box, legend];
}

// A tool's time per SEMI E10 state as one bar, in E10's order; hovered, the hours of each.
const E10_STATES = ["productive", "standby", "engineering", "scheduled_down", "unscheduled_down", "non_scheduled"];
function e10Bar(hours, unmapped) {
  const W = 160, H = 12, parts = [...E10_STATES.map((s) => [s, hours[s] || 0]), ["unmapped", unmapped || 0]];
  const total = parts.reduce((a, [, h]) => a + h, 0), root = svg("svg", { width: W, height: H, class: "e10-bar" });
  let x = 0;
  for (const [s, h] of parts) {
    if (!total || !h) continue;
    const w = (h / total) * W, r = svg("rect", { x, y: 0, width: w, height: H, class: s }), t = svg("title", {});
    t.textContent = `${s.replace("_", " ")}: ${fmtNum(h, 1)} h (${fmtPct((100 * h) / total)})`;
    r.append(t); root.append(r); x += w;
  }
  return root;
}
function fmtPct(x) { return x === null || x === undefined ? "" : `${fmtNum(x, 1)}%`; }

// A tool's shelf: "until 2026-12-02 08:00:00 by olga: PM until Friday".
function fmtShelf(x) { return `until ${fmtTime(x.end_ts)} by ${x.by}: ${x.reason}`; }

async function showRisk(toolId) {
  try {
    const tool = encodeURIComponent(toolId);
    const [data, shelves] = await Promise.all([api(`/api/tools/${tool}/risk?hours=72`), api(`/api/shelves?tool_id=${tool}&limit=20`)]);
    const shelf = shelves.find((x) => x.active);
    $(".shelf-now").textContent = shelf ? `Notifications shelved ${fmtShelf(shelf)}` : "";
    // Shelves planned ahead, the next first, each with a Cancel button for operators.
    $(".shelf-planned").replaceChildren(...shelves.filter((x) => x.planned).reverse().map((x) => {
      const li = document.createElement("li");
      li.textContent = `Planned: from ${fmtTime(x.start_ts)} ${fmtShelf(x)} `;
      if (can("operator")) {
        li.append(button("Cancel", async () => {
          try { await post(`/api/shelves/${x.id}/cancel`); await showRisk(toolId); setStatus(`planned shelf of ${toolId} cancelled`); }
          catch (err) { setStatus(err.message, true); }
        }));
      }
      return li;
    }));
    const shelveForm = $("#shelve-form");
    shelveForm.dataset.tool = toolId;
    shelveForm.elements.unshelve.hidden = !shelf;
    const detail = $("#tool-detail");
    const n = data.alerts.length;
    const failures = (data.events || []).filter((e) => e.event === "failure").length;
    $("h2", detail).textContent = `Risk of ${toolId}, its last 72 h to ${fmtTime(data.until_ts)} (${data.points.length} points, ` +
      `${n} alert${n === 1 ? "" : "s"}, ${failures} failure${failures === 1 ? "" : "s"})`;
    $(".trend", detail).replaceChildren(...trend(data));
    const form = $("#event-form");
    form.dataset.tool = toolId;
    form.elements.mode.replaceChildren(...(data.tool_modes || []).map((m) => { const o = document.createElement("option"); o.textContent = m; return o; }));
    // The tool's newest report on its own clock, the clock of its history and of the labels the
    // event makes (the cloud's now for a tool that never said one): a tool whose clock is not the
    // cloud's (the demo's simulator runs an hour a second) would otherwise get its failure months
    // after every case it labels.
    form.elements.at.value = fmtTime(data.until_ts).replace(" ", "T");
    await showHistory(toolId);
    detail.hidden = false;
    detail.scrollIntoView({ block: "nearest" });
  } catch (err) { setStatus(err.message, true); }
}

// A tool's history (GET /api/tools/{id}/history): failures, maintenance, alarms, alerts and what
// operators recorded, newest first; "Older" appends the next page.
const HISTORY_PAGE = 50;
const WHAT = { failure: "failure", maintenance: "maintenance", alarm: "alarm", alert: "alert", state: "state change" };
async function showHistory(toolId, older = false) {
  const table = $("#history"), more = $("#history-older");
  const states = $("#history-states").checked;
  const before = older ? `&before_ts=${more.dataset.before}` : "";
  const h = await api(`/api/tools/${encodeURIComponent(toolId)}/history?limit=${HISTORY_PAGE}&states=${states}${before}`);
  const ago = (ts) => (ts ? `${fmtTime(ts)}` : "none reported");
  $("#history-last").textContent = `${toolId}: last maintenance ${ago(h.last_maintenance_ts)}, last failure ${ago(h.last_failure_ts)}.`;
  const rows = h.items.map((i) => {
    const tr = document.createElement("tr");
    const when = cell(fmtTime(i.ts)); when.dataset.sort = i.ts;
    tr.append(when, cell(WHAT[i.kind] ?? i.kind, `history-${i.kind}`), cell(i.mode), cell(i.state), cell(i.text), cell(i.source));
    return tr;
  });
  const body = table.tBodies[0];
  if (older) body.append(...rows); else body.replaceChildren(...rows);
  applySort(table); applyFilter(table);
  table.dataset.tool = toolId;
  more.hidden = h.next_before_ts === null;
  more.dataset.before = h.next_before_ts ?? "";
}

// Each progressive failure of the field report (newest at the top, at most LEAD_ROWS), a bar as
// long as it was warned ahead (green from lead_h on, amber short of it), a red cross when no alert
// came; the dashed line is lead_h (B2's 72 h).
const LEAD_ROWS = 40;
function leadChart(f) {
  const rows = f.failure_warnings.slice(-LEAD_ROWS).reverse();
  const W = 820, ROW = 14, L = 300, R = 40, T = 6, B = 20, H = T + B + ROW * rows.length;
  const span = Math.max(f.match_h, ...rows.map((w) => w.lead_h ?? 0));
  const x = (h) => L + (h / span) * (W - L - R);
  const box = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "how far ahead each failure was warned" });
  box.append(svg("line", { x1: x(f.lead_h), x2: x(f.lead_h), y1: T, y2: H - B, class: "zero" }));
  for (const [h, anchor] of [[0, "start"], [f.lead_h, "middle"], [span, "end"]]) {
    const lab = svg("text", { x: x(h), y: H - 6, "text-anchor": anchor, class: "axis" });
    lab.textContent = `${fmtNum(h, 0)} h`; box.append(lab);
  }
  rows.forEach((w, i) => {
    const y = T + i * ROW;
    const name = svg("text", { x: L - 6, y: y + ROW - 3, "text-anchor": "end", class: "axis" });
    name.textContent = `${fmtTime(w.at_ts).slice(0, 16)} ${w.tool_id} ${w.mode ?? ""}`; box.append(name);
    if (w.lead_h === null) {
      const miss = svg("text", { x: x(0), y: y + ROW - 3, class: "axis unwarned" }); miss.textContent = "✕ not warned"; box.append(miss);
      return;
    }
    const bar = svg("rect", { x: x(0), y: y + 2, width: Math.max(1, x(w.lead_h) - x(0)), height: ROW - 4,
      class: w.lead_h >= f.lead_h ? "lead-ok" : "lead-short" });
    const tip = svg("title", {}); tip.textContent = `warned ${fmtNum(w.lead_h, 0)} h ahead${w.named ? "" : " (another mode named)"}`;
    bar.append(tip); box.append(bar);
  });
  const note = document.createElement("p"); note.className = "legend";
  const which = rows.length < f.failure_warnings.length ? `the newest ${rows.length} of ${f.failure_warnings.length}` : "newest at the top";
  note.textContent = `How far ahead each progressive failure was warned (${which}); dashed: ${f.lead_h} h.`;
  return [note, box];
}

// The sensors that carry an alert's risk, as its edge found them (shared/evidence.py): one a
// line, how far it reads from the tool's own readings after its last maintenance; the tooltip
// says how much of the risk goes when it alone is put back there. Sorts by the largest share.
function fmtSd(d) { return `${d >= 0 ? "+" : "−"}${fmtNum(Math.abs(d), 1)} sd`; }
function moving(evidence, referenceKnown) {
  if (!evidence) return cell("");  // an edge from before the evidence
  const none = referenceKnown === false ? "none named: no reference yet" : "none named";
  // Without the tool's reference the edge compared it with the first readings it saw of it.
  const lines = evidence.map((e) => `${e.sensor} ${fmtSd(e.deviation)}`);
  if (evidence.length && referenceKnown === false) lines.push("since the edge began watching");
  const base = referenceKnown === false ? "the first readings the edge saw of it (no maintenance seen yet)" : "its reference";
  const td = cell(evidence.length ? lines.join("\n") : none, "lines");
  td.title = evidence.length
    ? evidence.map((e) => `${e.sensor}: put back to ${base}, the risk falls by ${fmtNum(e.contribution)}`).join("\n")
    : referenceKnown === false
      ? "the edge has not seen this tool come back up from maintenance or a repair yet, so its model compares the tool with no reference; against the first readings the edge saw of it, no sensor alone carried a tenth of the alerted mode's probability (or there were too few of them yet)"
      : "no sensor alone carried a tenth of the alerted mode's probability";
  td.dataset.sort = evidence.length ? evidence[0].contribution : -1;
  return td;
}
function followed(o, matchH) {  // what came after an alert, from the events reported
  const after = o.event_ts ? ` ${fmtNum((o.event_ts - o.at_ts) / 3600, 0)} h later` : "";
  return {
    failure: `failed (${o.failed_mode})${after}`, sudden: `sudden failure (${o.failed_mode})${after}`,
    fault_found: "fault found", no_fault: "no fault found", maintenance: `maintained${after}`,
    none: `nothing within ${matchH} h`, open: "open",
  }[o.outcome];
}

function fieldSummary(f) {
  const pct = (x) => (x === null ? "–" : `${Math.round(100 * x)}%`);
  // Wilson's 90% interval: a few dozen alerts decide a precision to within many points
  const within = (iv) => (iv ? fmtInterval(iv[0], iv[1]) : "");
  const many = (k, word) => `${k} ${word}${k === 1 ? "" : "s"}`;
  const n = f.outcomes;
  const days = `Last ${Math.round((f.until_ts - f.since_ts) / 86400)} days`;
  if (!f.alerts && !f.failures) return `${days}: no alerts and no failures reported.`;
  return `${days}: ${many(f.alerts, "alert")}; ${n.failure} followed by a failure, ${n.fault_found} by a fault found, ` +
    `${n.no_fault} by an inspection that found none, ${n.maintenance} by maintenance, ${n.none} by nothing within ${f.match_h} h, ` +
    `${n.sudden} by a sudden failure, ${n.open} open. ` +
    `Precision ${pct(f.precision)}${within(f.precision_interval)} (${pct(f.precision_if_maintained_right)} if the maintained ones were right)` +
    `${f.false_alarms_per_tool_month === null ? "" : `, ${fmtNum(f.false_alarms_per_tool_month, 2)} false alarms per tool-month`}. ` +
    `${many(f.failures, "progressive failure")}: ${f.warned} warned, ${f.warned_ge_lead} at least ${f.lead_h} h ahead${within(f.recall_ge_lead_interval)}` +
    `${f.median_lead_h === null ? "" : ` (median lead ${fmtNum(f.median_lead_h, 0)} h)`}; ${many(f.failures_sudden, "sudden failure")} not counted.` +
    (f.warned ? ` The mode that failed: named by an alert before it for ${f.warned_named_mode} of the ${f.warned} warned, pointed to by an alert's sensors for ${f.warned_pointed_mode}.` : "");
}

function tableCsv(table) {
  // The table as shown (header row, then each body row), columns without a header (buttons) left
  // out. A text cell starting with = + - @ is prefixed with ' so a spreadsheet shows it rather than
  // running it as a formula (a tool id or a note comes from outside); numbers stay numbers.
  const keep = [...table.tHead.rows[0].cells].map((th, i) => [i, th.textContent.trim()]).filter(([, h]) => h);
  const text = (td) => { const c = td.cloneNode(true); c.querySelectorAll("button, svg").forEach((b) => b.remove()); return c.textContent.trim(); };
  const esc = (v) => {
    const safe = /^[=+\-@\t\r]/.test(v) && Number.isNaN(Number(v)) ? `'${v}` : v;
    return /[",\r\n]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
  };
  const lines = [keep.map(([, h]) => esc(h)).join(",")];
  for (const tr of [...table.tBodies[0].rows].filter((r) => !r.hidden)) lines.push(keep.map(([i]) => esc(tr.cells[i] ? text(tr.cells[i]) : "")).join(","));
  return lines.join("\r\n") + "\r\n";
}

document.querySelectorAll("table[data-csv]").forEach(sortable);
document.querySelectorAll("table[data-csv]").forEach((table) => {
  const b = button("CSV", () => {
    const url = URL.createObjectURL(new Blob(["\ufeff" + tableCsv(table)], { type: "text/csv" }));  // BOM: Excel reads UTF-8
    const a = document.createElement("a");
    a.href = url;
    a.download = `fabpm-${table.dataset.csv}-${new Date().toISOString().slice(0, 19).replace(/[-:T]/g, "")}.csv`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  });
  b.title = "This table as a CSV file (opens in a spreadsheet): the rows the filter shows";
  b.classList.add("csv");
  const box = document.createElement("input");
  box.type = "search"; box.placeholder = "filter"; box.className = "filter"; box.dataset.table = table.dataset.csv;
  box.title = "Show only the rows that contain every word typed";
  box.addEventListener("input", () => { FILTERS.set(table, box.value.toLowerCase().split(/\s+/).filter(Boolean)); applyFilter(table); });
  table.before(b, box);
});

async function act(promise) {
  try { await promise; setStatus("done"); await refresh(); } catch (err) { setStatus(err.message, true); }
}

async function refresh() {
  if (!state.token) return;
  try { await RENDER[state.tab](); setStatus(`updated ${new Date().toLocaleTimeString()}`); }
  catch (err) { setStatus(err.message, true); }
}

function show() {
  const signedIn = Boolean(state.token);
  $("#login").hidden = signedIn;
  $("#tabs").hidden = !signedIn;
  $("#logout").hidden = !signedIn;
  $("#who").textContent = signedIn ? `${sessionStorage.getItem("fabpm-user")} (${state.role})` : "";
  document.querySelectorAll(".tab").forEach((s) => { s.hidden = !signedIn || s.id !== state.tab; });
  document.querySelectorAll(".admin-only").forEach((b) => { b.hidden = !can("admin"); });
  document.querySelectorAll(".operator-only").forEach((b) => { b.hidden = !can("operator"); });
  document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.tab === state.tab));
}

function logout() {
  // End the session on the server too (best effort: a token left there would stay valid until it
  // expires); the page forgets it at once either way.
  if (state.token) fetch("/api/auth/logout", { method: "POST", headers: { Authorization: `Bearer ${state.token}` } }).catch(() => {});
  state.token = null; state.role = null; state.tab = "fleet";  // the next user may not see this tab
  const issued = $("#new-token"); issued.textContent = ""; issued.hidden = true;  // nor a token shown once
  sessionStorage.removeItem("fabpm-token"); sessionStorage.removeItem("fabpm-role");
  show();
}

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  try {
    const res = await post("/api/auth/token", { username: form.get("username"), password: form.get("password") });
    state.token = res.access_token; state.role = res.role;
    sessionStorage.setItem("fabpm-token", res.access_token);
    sessionStorage.setItem("fabpm-role", res.role);
    sessionStorage.setItem("fabpm-user", form.get("username"));
    $("#login-error").textContent = "";
    show(); refresh();
  } catch (err) { $("#login-error").textContent = err.message; }
});
$("#logout").addEventListener("click", logout);
$("#tabs").addEventListener("click", (ev) => {
  const tab = ev.target.dataset?.tab;
  if (tab) { state.tab = tab; show(); refresh(); }
});
$("#case-filter").addEventListener("change", refresh);
$("#field-days").addEventListener("change", refresh);
$("#e10-days").addEventListener("change", refresh);
$("#new-round").addEventListener("click", () => act(post("/api/learning/rounds")));
$("#event-form").elements.event.addEventListener("change", (ev) => {  // a maintenance has no mode
  $("#event-form").elements.mode.disabled = ev.target.value !== "failure";
});
$("#event-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = ev.target, event = f.elements.event.value;
  const body = { event, mode: event === "failure" ? f.elements.mode.value : null,
    at_ts: new Date(f.elements.at.value).getTime() / 1000, note: f.elements.note.value };
  try {
    const res = await post(`/api/tools/${encodeURIComponent(f.dataset.tool)}/events`, body);
    setStatus(`${event} of ${f.dataset.tool} recorded: ${res.labelled} case${res.labelled === 1 ? "" : "s"} labelled`);
    f.elements.note.value = "";
    await showRisk(f.dataset.tool);  // the chart's failure line and the history's row
  } catch (err) { setStatus(err.message, true); }
});
$("#shelve-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = ev.target, tool = f.dataset.tool;
  try {
    const from = f.elements.from.value;  // the browser's time zone; blank: now
    await post(`/api/tools/${encodeURIComponent(tool)}/shelve`, { hours: Number(f.elements.hours.value), reason: f.elements.reason.value,
      start_ts: from ? new Date(from).getTime() / 1000 : null });
    f.elements.reason.value = ""; f.elements.from.value = "";
    await refresh(); await showRisk(tool);
    setStatus(`${tool}'s notifications shelved`);
  } catch (err) { setStatus(err.message, true); }
});
$("#shelve-form").elements.unshelve.addEventListener("click", async () => {
  const tool = $("#shelve-form").dataset.tool;
  try {
    await post(`/api/tools/${encodeURIComponent(tool)}/unshelve`);
    await refresh(); await showRisk(tool);
    setStatus(`${tool} unshelved: its next alerts are sent`);
  } catch (err) { setStatus(err.message, true); }
});
$("#history-states").addEventListener("change", () => showHistory($("#history").dataset.tool).catch((err) => setStatus(err.message, true)));
$("#history-older").addEventListener("click", () => showHistory($("#history").dataset.tool, true).catch((err) => setStatus(err.message, true)));
$("#audit-form").addEventListener("submit", (ev) => { ev.preventDefault(); refresh(); });
$("#user-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  act(post("/api/users", { username: form.get("username"), role: form.get("role"), password: form.get("password") })
    .then(() => ev.target.reset()));
});
$("#token-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  try {
    const res = await post("/api/auth/api-tokens", { name: form.get("name") });
    const shown = $("#new-token");  // the only time the token is shown: the cloud keeps its hash
    shown.textContent = `Token "${res.name}" (copy it now, it is not shown again): ${res.token}`;
    shown.hidden = false;
    ev.target.reset();
    await refresh();
  } catch (err) { setStatus(err.message, true); }
});

show();
refresh();
setInterval(refresh, 5000);
