// The CryptoRAT node dashboard: polls /api/status every second and /api/standing every
// ten, draws what they say, and sends START / STOP. No dependencies: the page must work on
// a machine with no Internet access.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
// On a non-loopback address the node prints the page's address with #token=… .
const token = new URLSearchParams(location.hash.slice(1)).get("token");
let mode = "unknown";
let busy = false;

const $ = (id) => document.getElementById(id);
const setText = (id, value) => { $(id).textContent = value; };

async function api(path, method) {
  const headers = { "X-Crat-Dashboard": "1" };
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(path, { method: method || "GET", headers, cache: "no-store" });
  if (!response.ok) {
    throw new Error(path + ": " + response.status + " " + (await response.text()));
  }
  return response.json();
}

// Integer µ-amounts (µUSD, µCRAT) as exact decimals.
function micro(value) {
  const digits = String(value).padStart(7, "0");
  return digits.slice(0, -6) + "." + digits.slice(-6);
}

function micros(us) {
  if (us === null || us === undefined) return "–";
  return us >= 10000 ? (us / 1000).toFixed(1) + " ms" : us + " µs";
}

function bytes(n) {
  if (!n) return "unknown";
  return (n / 2 ** 30).toFixed(1) + " GiB";
}

function short(id) {
  return id.length > 16 ? id.slice(0, 16) + "…" : id;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

function svg(parent, name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attributes)) element.setAttribute(k, v);
  if (text !== undefined) element.textContent = text;
  parent.appendChild(element);
  return element;
}

function rows(tbody, lines, empty, columns) {
  clear(tbody);
  if (lines.length === 0) {
    const tr = tbody.insertRow();
    const td = tr.insertCell();
    td.colSpan = columns;
    td.textContent = empty;
    return;
  }
  for (const line of lines) {
    const tr = tbody.insertRow();
    for (const cell of line) tr.insertCell().textContent = cell;
  }
}

function showMode(next) {
  mode = next;
  const badge = $("mode");
  badge.dataset.mode = next;
  badge.textContent = next;
  $("start").disabled = busy || next !== "stopped";
  $("stop").disabled = busy || !(next === "online" || next === "starting");
}

function drawTasks(perSecond) {
  const chart = $("tasks-chart");
  clear(chart);
  const top = Math.max(1, ...perSecond);
  const step = 600 / Math.max(1, perSecond.length - 1);
  const points = perSecond.map((n, i) => (i * step).toFixed(1) + "," + (57 - (n / top) * 48).toFixed(1));
  svg(chart, "polyline", { points: points.join(" "), fill: "none", stroke: "#2b6cb0", "stroke-width": "2" });
  svg(chart, "text", { x: "4", y: "8", "font-size": "7", fill: "#5a6478" }, "max " + top + " tasks/s, last 60 s");
}

function drawEarnings(closed) {
  const chart = $("earnings-chart");
  clear(chart);
  const rounds = closed.slice().reverse(); // oldest first
  if (rounds.length === 0) {
    svg(chart, "text", { x: "10", y: "60", "font-size": "8", fill: "#5a6478" }, "no closed round yet");
    return;
  }
  const usd = rounds.map((r) => r.guaranteed_usd_micro + r.bonus_usd_micro);
  const topUsd = Math.max(1, ...usd);
  const topCrat = Math.max(1, ...rounds.map((r) => r.crat_issued_micro));
  const width = 580 / rounds.length;
  const bar = Math.max(2, width * 0.6);
  const crat = [];
  rounds.forEach((r, i) => {
    const x = 10 + i * width;
    const g = (r.guaranteed_usd_micro / topUsd) * 90;
    const b = (r.bonus_usd_micro / topUsd) * 90;
    const bars = svg(chart, "g", { class: "round", "data-round": String(r.index) });
    svg(bars, "rect", { x: x.toFixed(1), y: (105 - g).toFixed(1), width: bar.toFixed(1), height: g.toFixed(1), fill: "#2b6cb0" });
    svg(bars, "rect", { x: x.toFixed(1), y: (105 - g - b).toFixed(1), width: bar.toFixed(1), height: b.toFixed(1), fill: "#68d391" });
    svg(bars, "title", {}, "round " + r.index + ": " + micro(usd[i]) + " USD, " + micro(r.crat_issued_micro) + " CRAT");
    svg(chart, "text", { x: (x + bar / 2).toFixed(1), y: "116", "font-size": "7", "text-anchor": "middle", fill: "#5a6478" }, String(r.index));
    crat.push((x + bar / 2).toFixed(1) + "," + (105 - (r.crat_issued_micro / topCrat) * 90).toFixed(1));
  });
  svg(chart, "polyline", { points: crat.join(" "), fill: "none", stroke: "#d69e2e", "stroke-width": "2" });
  svg(chart, "text", { x: "12", y: "9", "font-size": "7", fill: "#5a6478" }, "max " + micro(topUsd) + " USD, " + micro(topCrat) + " CRAT / round");
}

function showStatus(s) {
  setText("node-id", short(s.node));
  $("node-id").title = s.node;
  showMode(s.mode);
  const hw = s.hardware;
  setText("probed", "rating " + hw.rating + " (" + hw.rating_reason + ")");
  setText("cpu", hw.cpu.model + ", " + hw.cpu.cores + " cores, " + bytes(hw.cpu.memory_bytes));
  setText("gpus", hw.gpus.length === 0 ? "none" : hw.gpus.map((g) => g.name + " (" + bytes(g.memory_bytes) + ", driver " + g.driver + ")").join("; "));
  setText("backend", s.backend.name + " / " + s.backend.execution_provider);
  setText("backend-detail", s.backend.detail || "–");
  setText("dispatcher", s.dispatcher);
  const a = s.tasks.activity;
  setText("tasks-rate", a.tasks_per_s.toFixed(1));
  setText("latency-p50", micros(a.latency_p50_us));
  setText("latency-p99", micros(a.latency_p99_us));
  setText("inflight", s.tasks.inflight + " / " + s.tasks.queued);
  setText("tasks-total", String(a.tasks_ok_total));
  setText("tasks-failed", String(a.tasks_failed_total));
  setText("usage-pending", String(s.usage_pending));
  drawTasks(a.per_second);
  rows($("models"), s.models.map((m) => [m.deployment, m.model || "–", m.state]), "none yet", 3);
  if (!s.idle) {
    setText("idle-state", "not configured ([node.idle] in the settings file)");
    setText("idle-command", "–");
    setText("idle-policy", "–");
  } else {
    const st = s.idle.status;
    setText("idle-state", st.suspended ? "stopped with the node" : st.running ? "running" : "waiting: idle " + st.idle_for_s + " s of " + st.idle_s_min + " s");
    setText("idle-command", (s.idle.command || []).join(" "));
    const demand = st.demand_bps === null ? "unknown" : (st.demand_bps / 100).toFixed(0) + " %";
    setText("idle-policy", "after " + st.idle_s_min + " s without work, at network demand ≤ " + (st.demand_bps_max / 100).toFixed(0) + " % (now " + demand + ")");
  }
}

function showStanding(answer) {
  setText("standing-error", answer.error ? "dispatcher: " + answer.error : "");
  const s = answer.standing;
  if (!s) return;
  const p = s.proven;
  setText("proven-rating", p.rating + (p.challenged ? "" : " (no challenge finished on this connection yet)"));
  setText("proven-income", micro(p.mining_income_usd_micro_per_day) + " USD / day");
  setText("challenges", s.challenges_passed + " passed, " + s.challenges_failed + " failed");
  setText("reach", s.direct === true ? "yes: clients connect straight to this node"
    : s.direct === false ? "no: clients start through the relay (run `crat node doctor`)"
    : "not checked yet");
  const r = s.round;
  const rank = r.rank === null ? "not eligible for a bonus yet" : "rank " + r.rank + " of " + r.ranked + " (" + r.paid_ranks + " paid a bonus)";
  setText("round", "Round " + r.index + ": " + r.elapsed_s + " s of " + r.length_s + " s; online " + r.uptime_s + " s, " + (r.committed ? "committed so far" : "not committed") + ", " + rank + "; so far " + micro(r.guaranteed_usd_micro) + " USD guaranteed + " + micro(r.bonus_usd_micro) + " USD bonus (estimate), " + r.tasks_served + " tasks served.");
  setText("held", "Held: " + micro(s.crat_micro) + " CRAT, streak " + s.streak + " rounds, " + s.uptime_total_s + " s online in closed rounds; the dispatcher counts this node " + (s.online ? "online" : "offline") + ".");
  drawEarnings(s.closed);
  rows($("rounds"), s.closed.map((e) => [String(e.index), e.uptime_s + " s", e.committed ? "yes" : "no", e.rank === null ? "–" : String(e.rank), micro(e.guaranteed_usd_micro), micro(e.bonus_usd_micro), micro(e.crat_issued_micro)]), "no closed round yet", 7);
}

async function refreshStatus() {
  try {
    showStatus(await api("/api/status"));
  } catch (e) {
    setText("message", "cannot reach the node: " + e.message);
    $("mode").dataset.mode = "unknown";
  }
}

async function refreshStanding() {
  try {
    showStanding(await api("/api/standing"));
  } catch (e) {
    setText("standing-error", e.message);
  }
}

async function refreshReach() {
  try {
    const answer = await api("/api/reach");
    const r = answer.reach;
    if (!r) {
      setText("observed", answer.error || "–");
      return;
    }
    setText("observed", (r.observed || "unknown") + (r.inbound === true
      ? ": the dispatcher reached it directly (" + r.probe_ms + " ms)"
      : r.inbound === false ? ": the dispatcher could not reach it directly (a NAT or firewall; run `crat node doctor`)"
      : ""));
  } catch (e) {
    setText("observed", e.message);
  }
}

async function control(action) {
  busy = true;
  showMode(action === "start" ? "starting" : "stopping");
  setText("message", action === "start" ? "Starting: joining the network…" : "Stopping: finishing the tasks in flight…");
  try {
    const answer = await api("/api/" + action, "POST");
    if (action === "stop") {
      const r = answer.report;
      setText("message", "Stopped in " + r.took_ms + " ms: " + r.tasks_unfinished + " tasks unfinished, " + r.usage_unacknowledged + " usage records kept to report later.");
    } else {
      setText("message", "Started.");
    }
    busy = false;
    showMode(answer.mode);
  } catch (e) {
    busy = false;
    setText("message", action + " failed: " + e.message);
  }
  refreshStatus();
  refreshStanding();
}

$("start").addEventListener("click", () => control("start"));
$("stop").addEventListener("click", () => control("stop"));
refreshStatus();
refreshStanding();
refreshReach();
setInterval(refreshStatus, 1000);
setInterval(refreshStanding, 10000);
setInterval(refreshReach, 300000);
