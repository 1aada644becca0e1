// TrainNet dashboard: polls /v1/dashboard and redraws. Plain JS, inline SVG charts, nothing external.
// Everything received is shown with textContent (node ids, reasons and energy sources come from
// untrusted workers), never as HTML.
"use strict";

const params = new URLSearchParams(location.search);
const INTERVAL_MS = Math.max(500, Number(params.get("interval") || 2000));
const SVGNS = "http://www.w3.org/2000/svg";
let lastOk = 0;

const $ = (id) => document.getElementById(id);
function setText(id, text) { const el = $(id); if (el) el.textContent = text; }
function fmtInt(n) { return n == null ? "–" : Math.round(n).toLocaleString("en-US"); }
function fmtNum(x, d = 3) { return x == null || !isFinite(x) ? "–" : Number(x).toFixed(d); }
function fmtBytes(n) {
  if (n == null) return "–";
  const u = ["B", "kB", "MB", "GB", "TB"]; let i = 0;
  while (Math.abs(n) >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + u[i];
}
function fmtAgo(s) {
  if (s == null) return "–";
  if (s < 60) return s.toFixed(0) + " s ago";
  if (s < 3600) return (s / 60).toFixed(0) + " min ago";
  return (s / 3600).toFixed(1) + " h ago";
}
function fmtDur(s) {
  if (s < 60) return s.toFixed(0) + " s";
  if (s < 3600) return (s / 60).toFixed(0) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function fmtEnergy(j) {
  if (j == null) return "–";
  if (j < 3600) return j.toFixed(1) + " J";
  return (j / 3.6e6).toFixed(j < 3.6e6 ? 5 : 2) + " kWh";
}
function fmtTime(t) { return new Date(t * 1000).toLocaleTimeString("en-GB"); }
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

// ---------------------------------------------------------------- charts
function niceTicks(lo, hi, n) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(v);
  return out;
}
function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text != null) e.textContent = text;
  return e;
}
function lineChart(svg, pts, o) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const W = 560, H = 240, L = 58, R = 14, T = 12, B = 36;
  if (!pts.length) {
    svg.appendChild(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, o.empty));
    return;
  }
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (o.yZero) y0 = 0;
  if (x1 === x0) x1 = x0 + 1;
  const pad = (y1 - y0) * 0.08 || Math.abs(y1) * 0.05 || 1;
  if (!o.yZero) y0 -= pad;
  y1 += pad;
  const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = (y) => H - B - (y - y0) / (y1 - y0) * (H - T - B);
  for (const t of niceTicks(y0, y1, 4)) {
    svg.appendChild(svgEl("line", { x1: L, x2: W - R, y1: sy(t), y2: sy(t), class: "grid" }));
    svg.appendChild(svgEl("text", { x: L - 6, y: sy(t) + 4, "text-anchor": "end", class: "tick" }, o.yFmt(t)));
  }
  for (const t of niceTicks(x0, x1, 5)) {
    svg.appendChild(svgEl("text", { x: sx(t), y: H - B + 16, "text-anchor": "middle", class: "tick" }, o.xFmt(t)));
  }
  svg.appendChild(svgEl("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
  svg.appendChild(svgEl("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
  svg.appendChild(svgEl("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", class: "tick" }, o.xLabel));
  const d = pts.map((p, i) => (i ? "L" : "M") + sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join("");
  if (o.area) {
    svg.appendChild(svgEl("path", { d: d + `L${sx(xs[xs.length - 1])},${H - B}L${sx(xs[0])},${H - B}Z`, class: "area" }));
  }
  svg.appendChild(svgEl("path", { d, class: "series" }));
  if (o.dots && pts.length <= 80) {
    for (const p of pts) svg.appendChild(svgEl("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.6, class: "dot" }));
  }
}
function shortNum(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
  if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
  if (a >= 1e3) return (v / 1e3).toFixed(a >= 1e4 ? 0 : 1) + "k";
  return String(Math.round(v * 100) / 100);
}

// ---------------------------------------------------------------- render
function renderCards(d) {
  setText("run-id", d.run_id || "?");
  const st = $("status");
  st.textContent = d.done ? "finished" : "running";
  st.className = "badge " + (d.done ? "finished" : "running");
  setText("ended", d.done && d.ended_at != null
    ? `at ${fmtTime(d.ended_at)} (${fmtAgo(d.ended_ago_s)})` : "");
  setText("model-version", "v" + d.model_version);
  setText("outer-steps", `${fmtInt(d.updates.outer_steps)} outer steps · ${d.updates.buffered} buffered`);
  setText("tokens", fmtInt(d.tokens));
  const pct = d.progress == null ? 0 : Math.min(100, 100 * d.progress);
  $("progress-bar").style.width = pct.toFixed(1) + "%";
  setText("tokens-note", `of ${fmtInt(d.tokens_target)} target (${pct.toFixed(1)}%)`);
  const vc = d.val_curve || [];
  setText("val-loss", d.val_loss == null ? "–" : fmtNum(d.val_loss));
  if (vc.length) {
    const last = vc[vc.length - 1];
    const delta = vc.length > 1 ? ` · Δ ${fmtNum(last.val_loss - vc[0].val_loss)} since v${vc[0].version}` : "";
    setText("val-note", `nats/token at v${last.version}${delta}`);
  }
  const tp = d.throughput;
  setText("throughput", fmtInt(tp.tokens_per_s) + " tok/s");
  setText("throughput-note", d.done ? `mean over the run (${tp.window_s.toFixed(0)} s)`
    : `accepted tokens, last ${tp.window_s.toFixed(0)} s`);
  setText("bytes", fmtBytes(d.bytes.in_total) + " / " + fmtBytes(d.bytes.out_total));
  const k = d.bytes.by_kind || {};
  setText("bytes-note", `in: uploads · out: models ${fmtBytes((k.model_full || 0) + (k.model_delta || 0))},`
    + ` shards ${fmtBytes(k.shard || 0)}`);
  const n = d.nodes;
  // A finished run's nodes are not "active": they took part until the end (finished) or left before (gone).
  const states = d.done ? ["finished", "gone"] : ["active", "lagging", "dropped"];
  $("nodes-chips").replaceChildren(...states.map((s) => {
    const chip = el("span", "chip " + s, `${n[s] || 0} ${s}`);
    chip.id = "nodes-" + s;
    return chip;
  }));
  setText("nodes-note", `${n.total} registered` + (n.banned ? ` · ${n.banned} banned` : "")
    + (d.done ? " · states at the end of the run" : ""));
  const u = d.updates;
  setText("updates", `${fmtInt(u.updates_accepted)} ok / ${fmtInt(u.updates_rejected)} rejected`);
  const reasons = Object.entries(u.reject_reasons || {}).map(([r, c]) => `${r} ${c}`).join(", ");
  setText("updates-note", `${u.leases_active} leases active, ${u.leases_expired} expired` + (reasons ? ` · ${reasons}` : "")
    + ` · audits ${d.audits.passed} passed, ${d.audits.failed} failed`);
  const e = d.energy;
  setText("energy", e.joules > 0 ? fmtEnergy(e.joules) : "–");
  let label = "none reported yet";
  if (e.joules > 0) {
    const share = e.measured_share || 0;
    label = share >= 0.999 ? "measured" : share <= 0 ? "estimate" : `${(100 * share).toFixed(0)}% measured`;
    label += ` · ≈ ${e.co2_kg.toPrecision(2)} kg CO₂, $${e.cost_usd.toPrecision(2)} (assumed factors)`;
  }
  setText("energy-note", label);
}

function renderCharts(d) {
  lineChart($("chart-loss"), (d.val_curve || []).map((p) => [p.tokens, p.val_loss]), {
    xLabel: "accepted tokens", xFmt: shortNum, yFmt: (v) => v.toFixed(2), dots: true,
    empty: "no evaluation yet",
  });
  const s = d.throughput.series || [];
  const t0 = s.length ? s[0][0] : 0;
  lineChart($("chart-tokens"), s.map((p) => [p[0] - t0, p[1]]), {
    xLabel: "seconds since the first node registered", xFmt: shortNum, yFmt: shortNum, area: true, yZero: true,
    empty: "no accepted update yet",
  });
}

function lastSeen(c) {
  if (c.state === "finished") return "idle since run end";
  if (c.state === "gone") {
    const before = c.last_seen_before_end_s;
    return "last seen " + fmtAgo(c.last_seen_ago_s) + (before == null ? "" : `, ${fmtDur(before)} before the end`);
  }
  return fmtAgo(c.last_seen_ago_s);
}

function renderTable(d) {
  const body = $("contributors").querySelector("tbody");
  const rows = [];
  for (const c of d.contributors) {
    const tr = el("tr", c.banned ? "banned" : "");
    tr.dataset.node = c.node_id;
    const id = el("td", "mono", c.node_id);
    if (c.device) id.title = "device: " + c.device;
    tr.appendChild(id);
    const p = c.progress;  // the worker's last report on its running task (heartbeats)
    const busy = p && p.steps && c.state !== "finished" && c.state !== "gone"
      ? ` · ${Math.floor(100 * p.steps_done / p.steps)}% of ${p.task_id}` + (p.eta_s != null ? `, ETA ${fmtDur(p.eta_s)}` : "")
      : "";
    tr.appendChild(el("td", "state " + c.state, c.state + busy));
    tr.appendChild(el("td", "num", fmtInt(c.tokens)));
    tr.appendChild(el("td", "num", fmtInt(c.accepted)));
    const reasons = Object.entries(c.reject_reasons || {}).map(([r, n]) => `${r} ${n}`).join(", ");
    tr.appendChild(el("td", c.rejected ? "bad" : "muted", c.rejected ? `${c.rejected} (${reasons})` : "0"));
    const st = c.staleness_last == null ? "–"
      : `${c.staleness_last} / ${fmtNum(c.staleness_mean, 1)} / ${c.staleness_max}`;
    tr.appendChild(el("td", "num", st));
    tr.appendChild(el("td", "num", fmtBytes(c.bytes_up)));
    const ver = c.banned ? `BANNED: ${c.ban_reason}` : `${c.audits_passed} passed, ${c.audits_failed} failed`;
    tr.appendChild(el("td", c.banned || c.audits_failed ? "bad" : "", ver));
    const en = el("td", "num", c.energy_j == null ? "–" : fmtEnergy(c.energy_j)
      + (c.energy_measured === true ? " (measured)" : c.energy_measured === "mixed" ? " (mixed)" : " (estimate)"));
    if (c.energy_source) en.title = c.energy_source;
    tr.appendChild(en);
    tr.appendChild(el("td", "muted", lastSeen(c)));
    rows.push(tr);
  }
  if (!rows.length) {
    const tr = el("tr"); const td = el("td", "muted", "no node has registered yet"); td.colSpan = 10;
    tr.appendChild(td); rows.push(tr);
  }
  body.replaceChildren(...rows);
}

const BAD = new Set(["update_rejected", "lease_expired", "node_banned", "audit_failed"]);
function renderEvents(d) {
  const items = d.events.map((ev) => {
    const li = el("li");
    li.appendChild(el("span", "t", fmtTime(ev.time)));
    li.appendChild(el("span", "k" + (BAD.has(ev.kind) ? " bad" : ""), ev.kind));
    const parts = Object.entries(ev.data || {}).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`);
    li.appendChild(el("span", "", parts.join("  ")));
    return li;
  });
  $("events").replaceChildren(...items);
}

async function poll() {
  try {
    // The operator's token (printed by the coordinator in the dashboard URL) travels as a bearer header.
    const token = params.get("token");
    const r = await fetch("/v1/dashboard", { cache: "no-store",
                                             headers: token ? { Authorization: "Bearer " + token } : {} });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const d = await r.json();
    renderCards(d); renderCharts(d); renderTable(d); renderEvents(d);
    lastOk = Date.now();
    setText("updated", "updated " + new Date().toLocaleTimeString("en-GB"));
  } catch (err) {
    const st = $("status");
    st.textContent = "offline"; st.className = "badge offline";
    setText("updated", `no data (${err.message})` + (lastOk ? `, last ${new Date(lastOk).toLocaleTimeString("en-GB")}` : ""));
  } finally {
    setTimeout(poll, INTERVAL_MS);
  }
}
poll();
