// Baton's dashboard. Plain browser JavaScript, no build step, no external
// assets: it polls /ui/state and acts through the agent's control API.
// Text from the cluster (member names, reasons, tags) is only ever set as
// textContent, never parsed as markup.
"use strict";

const REFRESH_MS = 1000;
const SVG = "http" + "://www.w3.org/2000/svg"; // a namespace name, not a location
const $ = (id) => document.getElementById(id);
let last = null; // the last /ui/state answer
let pendingConfirm = null;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v : v.toFixed(1)) + " " + units[i];
}

function lsn(n) {
  if (n === null || n === undefined) return "";
  const hi = Math.floor(n / 4294967296), lo = n % 4294967296;
  return hi.toString(16).toUpperCase() + "/" + lo.toString(16).toUpperCase();
}

function headers() {
  const h = { "Content-Type": "application/json", "X-Requested-With": "baton-ui" };
  const u = $("user").value;
  if (u) h["Authorization"] = "Basic " + btoa(u + ":" + $("pass").value);
  return h;
}

function showResult(ok, text) {
  const r = $("result");
  r.textContent = text;
  r.className = ok ? "ok" : "err";
}

// Calls a control endpoint; the answer (or the refusal, with its code) is
// shown under the buttons.
async function call(method, path, body, done) {
  showResult(true, method + " " + path + " …");
  try {
    const resp = await fetch(path, { method, headers: headers(), body: body === undefined ? undefined : JSON.stringify(body) });
    let data = {};
    try { data = await resp.json(); } catch (_) { /* empty or not JSON */ }
    if (resp.ok) {
      showResult(true, data.message || done || (resp.status + " " + resp.statusText));
    } else {
      const why = data.error || data.message || resp.statusText;
      showResult(false, "refused (" + resp.status + (data.code ? ", " + data.code : "") + "): " + why);
    }
  } catch (e) {
    showResult(false, "request failed: " + e);
  }
  refresh();
}

// Every action goes through this: nothing is sent until the operator
// confirms in the dialog.
function confirmThen(text, action) {
  $("confirm-text").textContent = text;
  pendingConfirm = action;
  $("confirm").showModal();
}

$("confirm-yes").addEventListener("click", () => {
  $("confirm").close();
  const a = pendingConfirm;
  pendingConfirm = null;
  if (a) a();
});
$("confirm-no").addEventListener("click", () => { pendingConfirm = null; $("confirm").close(); });

$("switchover").addEventListener("click", () => {
  const leader = last && last.cluster && last.cluster.leader;
  if (!leader) { showResult(false, "no leader: a switchover needs one (use failover)"); return; }
  const c = $("candidate").value;
  const body = { leader };
  if (c) body.candidate = c;
  confirmThen("Switch over from " + leader + " to " + (c || "the best replica") + "?", () => call("POST", "/switchover", body));
});

$("failover").addEventListener("click", () => {
  const c = $("candidate").value;
  if (!c) { showResult(false, "failover needs a candidate: choose one"); return; }
  confirmThen("Fail over to " + c + "? Use this only when the leader is gone.", () => call("POST", "/failover", { candidate: c }));
});

$("pause").addEventListener("click", () => {
  const paused = !!(last && last.cluster && last.cluster.paused);
  confirmThen(paused ? "Resume automatic failover?" : "Pause: no automatic action until resumed?",
    () => call("PATCH", "/config", { pause: !paused }, paused ? "Resumed: automatic failover is on" : "Paused: no automatic action until resumed"));
});

$("cancel-switchover").addEventListener("click", () => {
  confirmThen("Cancel the scheduled switchover?", () => call("DELETE", "/switchover"));
});

function memberAction(name, action, label) {
  confirmThen(label + " " + name + "?", () => call("POST", "/ui/members/" + encodeURIComponent(name) + "/" + action, {}));
}

function renderMembers(st) {
  const tbody = $("members").tBodies[0];
  tbody.replaceChildren();
  const progress = st.progress || {};
  for (const m of st.cluster.members) {
    const tr = el("tr");
    tr.dataset.member = m.name;
    tr.dataset.role = m.role;
    tr.appendChild(el("td", m.name, "name"));
    tr.appendChild(el("td", m.role, "role role-" + m.role));
    // The state already reads "cloning 43%"; the page adds rate and ETA.
    const p = progress[m.name];
    let state = m.state;
    if (p && p.rate_bytes_per_s) state += " · " + bytes(p.rate_bytes_per_s) + "/s";
    if (p && p.eta_s !== undefined && p.eta_s !== null) state += " · ETA " + p.eta_s + " s";
    tr.appendChild(el("td", state, "state"));
    tr.appendChild(el("td", m.timeline));
    tr.appendChild(el("td", m.receive_lsn, "mono"));
    tr.appendChild(el("td", m.replay_lsn, "mono"));
    let lag = m.role === "leader" ? "" : bytes(m.lag);
    if (lag && m.lag_ms !== null && m.lag_ms !== undefined) lag += " · " + (m.lag_ms / 1000).toFixed(m.lag_ms < 10000 ? 2 : 0) + " s";
    tr.appendChild(el("td", lag, "lag"));
    const tags = Object.entries(m.tags || {}).filter(([, v]) => v !== false && v !== null).map(([k, v]) => v === true ? k : k + "=" + v);
    tr.appendChild(el("td", tags.join(" ")));
    const reason = el("td", m.reason || "", "reason");
    if (m.reason_code) reason.appendChild(el("code", m.reason_code));
    tr.appendChild(reason);
    const acts = el("td", null, "row-actions");
    const restart = el("button", "Restart");
    restart.type = "button";
    restart.addEventListener("click", () => memberAction(m.name, "restart", "Restart postgres on"));
    acts.appendChild(restart);
    if (m.role !== "leader") {
      const reinit = el("button", "Reinit");
      reinit.type = "button";
      reinit.addEventListener("click", () => memberAction(m.name, "reinitialize", "Wipe and rebuild"));
      acts.appendChild(reinit);
    }
    tr.appendChild(acts);
    tbody.appendChild(tr);
  }
}

function renderCandidates(st) {
  const sel = $("candidate");
  const keep = sel.value;
  const names = st.cluster.members.filter((m) => m.role !== "leader").map((m) => m.name);
  const wanted = ["", ...names].join("\n");
  if (sel.dataset.names !== wanted) {
    sel.replaceChildren();
    const any = el("option", "best replica (Baton picks)");
    any.value = "";
    sel.appendChild(any);
    for (const n of names) {
      const o = el("option", n);
      o.value = n;
      sel.appendChild(o);
    }
    sel.dataset.names = wanted;
    if (names.includes(keep)) sel.value = keep;
  }
}

const COLORS = ["#2b7bb9", "#d9822b", "#3d9970", "#b10dc9", "#e74c3c", "#7f8c8d", "#f1c40f"];

function renderLag(samples) {
  const box = $("lag");
  box.replaceChildren();
  if (!samples || samples.length < 2) { box.appendChild(el("p", "collecting samples…", "muted")); return; }
  const names = [...new Set(samples.flatMap((s) => Object.keys(s.lag)))].sort();
  const leader = last && last.cluster ? last.cluster.leader : null;
  const shown = names.filter((n) => n !== leader);
  const W = 600, H = 140, P = 4;
  const t0 = samples[0].at, t1 = samples[samples.length - 1].at;
  const max = Math.max(1, ...samples.flatMap((s) => shown.map((n) => s.lag[n] || 0)));
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  shown.forEach((n, i) => {
    const pts = samples.filter((s) => n in s.lag).map((s) => {
      const x = P + (W - 2 * P) * (s.at - t0) / Math.max(1, t1 - t0);
      const y = H - P - (H - 2 * P) * s.lag[n] / max;
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", pts.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", COLORS[i % COLORS.length]);
    line.setAttribute("stroke-width", "2");
    line.setAttribute("vector-effect", "non-scaling-stroke");
    svg.appendChild(line);
  });
  box.appendChild(svg);
  const legend = el("p", null, "legend");
  legend.appendChild(el("span", "max " + bytes(max) + " · " + Math.round((t1 - t0) / 1000) + " s"));
  shown.forEach((n, i) => {
    const s = el("span", n);
    s.style.color = COLORS[i % COLORS.length];
    legend.appendChild(s);
  });
  box.appendChild(legend);
}

function renderHistory(history) {
  const tbody = $("history").tBodies[0];
  tbody.replaceChildren();
  for (const h of [...(history || [])].reverse()) {
    const tr = el("tr");
    tr.appendChild(el("td", h[0]));
    tr.appendChild(el("td", typeof h[1] === "number" ? lsn(h[1]) : h[1], "mono"));
    tr.appendChild(el("td", h[2]));
    tr.appendChild(el("td", h[3]));
    tr.appendChild(el("td", h[4]));
    tbody.appendChild(tr);
  }
}

function renderEvents(st) {
  const tbody = $("events").tBodies[0];
  tbody.replaceChildren();
  for (const e of [...st.events].reverse()) {
    const tr = el("tr");
    tr.dataset.code = e.code;
    tr.appendChild(el("td", e.at.replace("T", " ").replace("Z", ""), "mono"));
    tr.appendChild(el("td", e.member));
    tr.appendChild(el("td", e.kind));
    tr.appendChild(el("td", e.code, "code"));
    tr.appendChild(el("td", e.detail));
    tbody.appendChild(tr);
  }
  $("events-missing").textContent = st.events_missing.length ? "(not answering: " + st.events_missing.join("; ") + ")" : "";
}

function render(st) {
  last = st;
  $("served-by").textContent = "as seen by " + st.member;
  $("credentials").hidden = !st.auth;
  const c = st.cluster;
  $("scope").textContent = c.scope;
  const badge = $("state");
  badge.textContent = c.state;
  badge.className = "badge state-" + c.state.toLowerCase();
  $("paused").hidden = !c.paused;
  $("pause").textContent = c.paused ? "Resume" : "Pause";
  const problems = $("problems");
  problems.replaceChildren(...c.problems.map((p) => el("li", p)));
  $("pending").hidden = !c.switchover;
  $("pending-text").textContent = c.switchover ? "Pending switchover " + c.switchover : "";
  renderMembers(st);
  renderCandidates(st);
  renderLag(st.lag);
  renderHistory(st.history);
  renderEvents(st);
}

let inFlight = false;
async function refresh() {
  if (inFlight) return;
  inFlight = true;
  try {
    const resp = await fetch("/ui/state", { headers: { "X-Requested-With": "baton-ui" } });
    const st = await resp.json();
    if (!resp.ok) {
      const badge = $("state");
      badge.textContent = "Unknown";
      badge.className = "badge state-unavailable";
      $("problems").replaceChildren(el("li", st.error || resp.statusText));
    } else {
      render(st);
    }
  } catch (e) {
    $("problems").replaceChildren(el("li", "this agent does not answer: " + e));
  } finally {
    inFlight = false;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
