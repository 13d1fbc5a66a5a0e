// meshlog incident console. Plain JS, no build step, no dependency.
// Every string that comes from the log is put on the page with textContent (via el()), never as HTML:
// the log is written by whoever can register an instance or apply a rule.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const KIND_COLORS = {
  "instance.registered": "#3a8f3a", "instance.deregistered": "#777",
  "instance.health_changed:healthy": "#5cb85c", "instance.health_changed:unhealthy": "#d9534f",
  "instance.health_changed:draining": "#e0a800", "route_rule.upserted": "#4a7fd4", "route_rule.deleted": "#2b4f8a",
  "destination_policy.upserted": "#8a5cd4", "destination_policy.deleted": "#5b3a8f",
  "rule.rejected": "#c0392b", "dead_letter": "#000",
  "sync.acked": "#7fa37f", "sync.nacked": "#e06c00", "sync.stream_opened": "#999", "sync.stream_closed": "#555",
  "identity.issued": "#0f8a8a", "identity.revoked": "#8a0f4f", "join_token.redeemed": "#5f8a0f",
};
const TYPE_KIND = {
  "type.googleapis.com/envoy.config.cluster.v3.Cluster": "clusters",
  "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment": "endpoints",
  "type.googleapis.com/envoy.config.listener.v3.Listener": "listeners",
  "type.googleapis.com/envoy.config.route.v3.RouteConfiguration": "routes",
};
const PARAMS = ["from", "to", "at", "b", "node"];

const view = { from: null, to: null, at: null, b: null, node: null };
let timeline = null;  // the last /api/timeline answer
let busy = 0;

// ---------------------------------------------------------------- small helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else if (k.startsWith("data-")) node.setAttribute(k, String(v));
    else node[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function iso(ms) { return new Date(ms).toISOString(); }
function parseMs(text) {
  if (!text) return null;
  if (/^@\d{1,15}$/.test(text)) return Number(text.slice(1));
  const ms = Date.parse(text);
  return Number.isFinite(ms) ? ms : null;
}

function setBusy(delta) {
  busy += delta;
  document.body.dataset.busy = String(busy);
}

async function api(path, params) {
  const url = path + "?" + new URLSearchParams(params).toString();
  setBusy(+1);
  try {
    let res;
    try {
      res = await fetch(url, { headers: { Accept: "application/json" } });
    } catch (e) {
      throw new Error("the console did not answer (is `replay ui` still running?)");
    }
    let doc;
    try { doc = await res.json(); } catch (e) { throw new Error(`${path}: HTTP ${res.status}, not JSON`); }
    if (!res.ok) throw new Error(doc.error || `HTTP ${res.status}`);
    return doc;
  } finally {
    setBusy(-1);
  }
}

function showError(where, err) {
  const box = where || document.getElementById("error");
  box.hidden = false;
  box.replaceChildren(el("span", {}, String(err && err.message ? err.message : err)));
}

function panel(id, title) {
  const p = document.getElementById(id);
  const body = el("div", { class: "body" });
  p.replaceChildren(el("h2", {}, ...title), body);
  return body;
}

function panelError(id, title, err) {
  const body = panel(id, title);
  const box = el("div", { class: "error", role: "alert" });
  body.append(box);
  showError(box, err);
}

// ---------------------------------------------------------------- the URL holds the view

function readUrl() {
  const q = new URLSearchParams(location.search);
  const problems = [];
  for (const key of q.keys()) if (!PARAMS.includes(key)) problems.push(`unknown URL parameter '${key}' (ignored)`);
  for (const key of PARAMS) view[key] = q.get(key) || null;
  for (const key of ["from", "to", "at", "b"]) {
    if (view[key] && parseMs(view[key]) === null && !/^(@\d+|now|-\d+(\.\d+)?(ms|s|m|h|d|w))$/.test(view[key])) {
      problems.push(`URL parameter '${key}' is not a time: ${view[key].slice(0, 80)}`);
    }
  }
  return problems;
}

function writeUrl() {
  const q = new URLSearchParams();
  for (const key of PARAMS) if (view[key]) q.set(key, view[key]);
  history.replaceState(null, "", "?" + q.toString());
  document.getElementById("from").value = view.from || "";
  document.getElementById("to").value = view.to || "";
}

// ---------------------------------------------------------------- the timeline

async function loadTimeline() {
  const box = document.getElementById("timeline");
  const width = Math.max(400, box.clientWidth || 1000);
  const buckets = Math.max(20, Math.min(400, Math.floor((width - 240) / 4)));
  document.getElementById("timeline-note").textContent =
    "loading… (the console's first answer waits for its index of the log: one scan, about a minute per million events)";
  try {
    timeline = await api("/api/timeline", { from: view.from, to: view.to, buckets });
    // a relative window ("-1h", "now") is pinned to what it meant, so the address stays a stable link
    if (parseMs(view.from) === null || parseMs(view.to) === null) {
      view.from = iso(timeline.from_ms); view.to = iso(timeline.to_ms); writeUrl();
    }
  } catch (err) {
    timeline = null;
    box.replaceChildren();
    showError(null, `timeline: ${err.message}`);
    return;
  }
  drawTimeline();
}

function drawTimeline() {
  const box = document.getElementById("timeline");
  const t = timeline;
  if (!t) return;
  const width = Math.max(400, box.clientWidth || 1000);
  const left = 240, right = 10, rowH = 16, top = 18;
  const rows = [["kinds", null], ...t.by_kind.map(r => [r.kind, r]), ["services", null],
                ...t.by_service.map(r => [r.service || "(no service)", r])];
  const height = top + rows.length * rowH + 20;
  const plotW = width - left - right;
  const span = t.to_ms - t.from_ms + 1;
  const xOf = ms => left + ((ms - t.from_ms) / span) * plotW;
  const s = svg("svg", { width, height, role: "img" });
  s.append(svg("rect", { x: left, y: 0, width: plotW, height, fill: "#fcfcfc" }));
  // axis: five ticks
  const axis = svg("g", { class: "axis" });
  for (let i = 0; i <= 4; i++) {
    const ms = t.from_ms + (span * i) / 4;
    const x = xOf(ms);
    axis.append(svg("line", { x1: x, x2: x, y1: 12, y2: height, stroke: "#eee" }));
    const label = svg("text", { x: Math.min(x, width - 150), y: 10 });
    label.textContent = iso(ms).replace("T", " ").replace("Z", "");
    axis.append(label);
  }
  s.append(axis);
  const pointsByRow = new Map();
  if (t.points) {
    for (const p of t.points) {
      for (const key of [p.kind, p.service || "(no service)"]) {
        if (!pointsByRow.has(key)) pointsByRow.set(key, []);
        pointsByRow.get(key).push(p);
      }
    }
  }
  rows.forEach(([name, row], i) => {
    const y = top + i * rowH;
    const label = svg("text", { x: row ? 8 : 2, y: y + 12, "font-weight": row ? "normal" : "bold" });
    label.textContent = row ? `${name.slice(0, 36)} (${row.total})` : name;
    s.append(label);
    if (!row) return;
    const color = KIND_COLORS[row.kind] || "#4a7fd4";
    const g = svg("g", { "data-row": name });
    if (t.points && pointsByRow.has(name)) {
      for (const p of pointsByRow.get(name)) {
        const mark = svg("rect", { x: xOf(p.timestamp_ms) - 1.5, y: y + 2, width: 3, height: rowH - 4,
                                   fill: KIND_COLORS[p.kind] || color, class: "mark" });
        const tip = svg("title");
        tip.textContent = `${iso(p.timestamp_ms)} ${p.kind} ${p.service}`;
        mark.append(tip);
        mark.addEventListener("click", ev => { ev.stopPropagation(); pick(p.timestamp_ms, ev.shiftKey, p.timestamp_ms, p.timestamp_ms, row); });
        g.append(mark);
      }
    } else {
      const max = Math.max(...row.counts, 1);
      row.counts.forEach((c, b) => {
        if (!c) return;
        const x0 = xOf(t.from_ms + b * t.width_ms), x1 = xOf(Math.min(t.to_ms + 1, t.from_ms + (b + 1) * t.width_ms));
        const h = Math.max(2, Math.sqrt(c / max) * (rowH - 3));
        const bar = svg("rect", { x: x0, y: y + rowH - 1 - h, width: Math.max(1, x1 - x0 - 0.5), height: h, fill: color, class: "bar" });
        const tip = svg("title");
        tip.textContent = `${c} events from ${iso(t.from_ms + b * t.width_ms)}`;
        bar.append(tip);
        const lo = t.from_ms + b * t.width_ms, hi = Math.min(t.to_ms, lo + t.width_ms - 1);
        bar.addEventListener("click", ev => { ev.stopPropagation(); pick(hi, ev.shiftKey, lo, hi, row); });
        g.append(bar);
      });
    }
    s.append(g);
  });
  for (const [key, color, cls] of [["at", "#1f5fbf", "cursor-a"], ["b", "#c25a00", "cursor-b"]]) {
    const ms = parseMs(view[key]);
    if (ms === null || ms < t.from_ms || ms > t.to_ms) continue;
    s.append(svg("line", { x1: xOf(ms), x2: xOf(ms), y1: 12, y2: height, stroke: color, "stroke-width": 2, class: cls }));
  }
  s.addEventListener("click", ev => {
    const rect = s.getBoundingClientRect();
    const x = ev.clientX - rect.left;
    if (x < left) return;
    pick(Math.round(t.from_ms + ((x - left) / plotW) * span), ev.shiftKey);
  });
  s.addEventListener("wheel", ev => {
    ev.preventDefault();
    const rect = s.getBoundingClientRect();
    const x = Math.max(left, ev.clientX - rect.left);
    zoom(ev.deltaY < 0 ? 0.5 : 2, t.from_ms + ((x - left) / plotW) * span);
  }, { passive: false });
  box.replaceChildren(s);
  const note = document.getElementById("timeline-note");
  note.textContent = `${t.total} events in the window (${t.points ? "each drawn" : `${t.buckets} buckets of ${fmtDuration(t.width_ms)}`}); ` +
    `log: ${t.log.events} events from ${t.log.first_ms ? iso(t.log.first_ms) : "-"} to ${t.log.last_ms ? iso(t.log.last_ms) : "-"}; ` +
    `answered in ${t.compute_ms} ms`;
  drawCursors();
}

function fmtDuration(ms) {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 120000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 7200000) return `${(ms / 60000).toFixed(1)} min`;
  if (ms < 172800000) return `${(ms / 3600000).toFixed(1)} h`;
  return `${(ms / 86400000).toFixed(1)} d`;
}

function drawCursors() {
  const c = document.getElementById("cursors");
  c.replaceChildren(el("span", { class: "a" }, `A: ${view.at || "-"}`),
                    el("span", { class: "b" }, `B: ${view.b || "-"}`),
                    el("span", {}, view.node ? ` node: ${view.node}` : ""));
}

function pick(ms, asB, lo, hi, row) {
  if (asB) view.b = iso(ms); else view.at = iso(ms);
  writeUrl();
  drawTimeline();
  if (asB) loadDiff(); else { loadMesh(); loadNode(); loadDiff(); }
  if (lo !== undefined) loadEvents(lo, hi, row);
}

function zoom(factor, centerMs) {
  const t = timeline;
  if (!t) return;
  const span = (t.to_ms - t.from_ms) * factor;
  const center = centerMs ?? parseMs(view.at) ?? (t.from_ms + t.to_ms) / 2;
  const from = Math.round(center - span / 2), to = Math.round(center + span / 2);
  if (to - from < 10) return;
  view.from = iso(from); view.to = iso(Math.min(to, Date.now()));
  writeUrl();
  loadTimeline();
}

// ---------------------------------------------------------------- the mesh at A

async function loadMesh() {
  if (!view.at) return;
  const title = ["mesh at ", el("span", { class: "mono" }, view.at)];
  let doc;
  try { doc = await api("/api/mesh", { at: view.at }); } catch (err) { panelError("mesh-panel", title, err); return; }
  if (parseMs(view.at) === null) { view.at = doc.at; writeUrl(); drawCursors(); drawTimeline(); }
  const body = panel("mesh-panel", title);
  body.append(el("h3", {}, `services (${doc.services.length})`));
  const services = el("table", { id: "services" }, el("tr", {}, el("th", {}, "service"), el("th", {}, "protocol:port"), el("th", {}, "instances")));
  for (const s of doc.services) {
    const chips = el("td", {});
    for (const i of s.instances) {
      chips.append(el("span", { class: `chip health-${i.health}`, "data-instance": i.instance_id, "data-health": i.health,
                                title: `${i.address}:${i.port} ${JSON.stringify(i.labels)} ${i.health}${i.health_since ? " since " + i.health_since : ""}` },
                      i.instance_id));
    }
    services.append(el("tr", { "data-service": s.name }, el("td", { class: "mono" }, s.name), el("td", {}, `${s.protocol}:${s.port}`), chips));
  }
  body.append(services);
  body.append(el("h3", {}, `route rules (${doc.route_rules.length})`));
  for (const r of doc.route_rules) {
    const box = el("div", { class: "rule", "data-rule": r.host },
                   el("div", {}, el("b", { class: "mono" }, r.host), ` revision ${r.revision} `,
                      r.served ? el("span", { class: "added" }, "served") : el("span", { class: "removed" }, `NOT served: ${r.problem}`)));
    for (const route of r.routes) {
      const m = route.match || {};
      box.append(el("div", { class: "dim" }, `match ${m.path_exact ? "= " + m.path_exact : (m.path_prefix || "/")}` +
                    (m.headers && m.headers.length ? ` + headers ${m.headers.map(h => h.name).join(",")}` : "")));
      for (const d of route.destinations) {
        const label = `${d.service || r.host}${d.subset ? "|" + d.subset : ""}`;
        box.append(el("div", { class: "weight", "data-destination": label, "data-weight": d.weight },
                      el("span", { class: "label", title: label }, label),
                      el("span", { class: "track" }, el("span", { class: "bar" })),
                      el("span", { class: "num" }, `${d.weight}`)));
        box.lastChild.querySelector(".bar").style.width = `${Math.max(0, Math.min(100, d.weight))}%`;
      }
    }
    body.append(box);
  }
  body.append(el("h3", {}, `destination policies (${doc.destination_policies.length})`));
  const pol = el("table", {}, el("tr", {}, el("th", {}, "service"), el("th", {}, "rev"), el("th", {}, "lb"), el("th", {}, "subsets")));
  for (const p of doc.destination_policies) {
    pol.append(el("tr", {}, el("td", { class: "mono" }, p.service), el("td", {}, p.revision), el("td", {}, p.policy.lb_policy),
                  el("td", { class: "mono" }, (p.policy.subsets || []).map(s => `${s.name}(${Object.entries(s.labels).map(([k, v]) => `${k}=${v}`).join(",")})`).join(" "))));
  }
  body.append(pol);
  body.append(el("h3", {}, `nodes (${doc.nodes.length})`));
  const nodes = el("div", { id: "nodes" });
  for (const n of doc.nodes) {
    nodes.append(el("button", { class: "link node-link", "data-node": n.node, type: "button",
                                on: { click: () => { view.node = n.node; writeUrl(); drawCursors(); loadNode(); loadDiff(); } } }, n.node), " ");
  }
  body.append(nodes);
  for (const p of doc.problems) body.append(el("div", { class: "removed" }, `problem: ${p}`));
}

// ---------------------------------------------------------------- a node at A

async function loadNode() {
  if (!view.node || !view.at) return;
  const title = ["node ", el("span", { class: "mono" }, view.node), " at ", el("span", { class: "mono" }, view.at)];
  let doc;
  try { doc = await api("/api/node", { at: view.at, node: view.node }); } catch (err) { panelError("node-panel", title, err); return; }
  const body = panel("node-panel", title);
  const inst = doc.instance;
  if (inst) body.append(el("div", {}, `instance ${inst.service}/${inst.instance_id} at ${inst.address}:${inst.port} (${inst.health}); depends on ${inst.depends_on.join(", ") || "nothing"}`));
  const acc = doc.accepted;
  if (acc) {
    const stream = acc.stream ? `${acc.connected ? "connected" : "disconnected"} (${acc.stream.gateway || "?"})` : "no ADS stream logged";
    const box = el("div", { id: "accepted" }, el("h3", {}, `what the proxy had ACKed by A (meshlog.sync): ${stream}`));
    const table = el("table", {});
    for (const [type, st] of Object.entries(acc.types || {})) {
      table.append(el("tr", { "data-sync-type": type, "data-sync-state": st.state },
        el("td", {}, type), el("td", { class: st.state === "SYNCED" ? "added" : "removed" }, st.state),
        el("td", { class: "mono" }, st.reason || (st.differences.length ? `${st.differences.length} names differ` : ""))));
    }
    box.append(table);
    body.append(box);
  }
  const lastChange = el("div", { id: "last-change" });
  body.append(el("div", {}, el("button", { type: "button", id: "load-causes",
    on: { click: () => loadCauses(lastChange, doc) } }, "show the events that last changed each resource (within the window)")), lastChange);
  for (const [typeUrl, named] of Object.entries(doc.resources)) {
    const kind = TYPE_KIND[typeUrl] || typeUrl;
    body.append(el("h3", {}, `${kind} (${Object.keys(named).length})`));
    const table = el("table", {});
    for (const [name, version] of Object.entries(named)) {
      const pre = el("pre", { hidden: true }, JSON.stringify(doc.bodies[typeUrl][name], null, 2));
      const causes = el("div", { class: "cause", "data-causes-for": `${typeUrl}|${name}` });
      table.append(el("tr", { "data-resource": name, "data-kind": kind },
        el("td", { class: "mono" }, name, causes, pre),
        el("td", { class: "mono" }, version || ""),
        el("td", {}, el("button", { class: "link", type: "button", on: { click: () => { pre.hidden = !pre.hidden; } } }, "body"))));
    }
    body.append(table);
  }
}

async function loadCauses(box, nodeDoc) {
  const from = timeline ? iso(timeline.from_ms) : view.from;
  box.replaceChildren(el("span", { class: "dim" }, "walking the window…"));
  let doc;
  try { doc = await api("/api/diff", { from, to: view.at, node: view.node }); } catch (err) { showError(box, err); return; }
  box.replaceChildren(el("span", { class: "dim" }, `${doc.events} events from ${doc.from} to ${doc.to}`));
  const byKey = new Map();
  for (const e of [...doc.added, ...doc.changed]) byKey.set(`${e.type_url}|${e.name}`, e.caused_by);
  for (const cell of document.querySelectorAll("[data-causes-for]")) {
    const refs = byKey.get(cell.dataset.causesFor);
    if (!refs || !refs.length) { cell.replaceChildren(el("span", { class: "dim" }, "unchanged in the window")); continue; }
    const last = refs[refs.length - 1];
    cell.replaceChildren(el("span", { class: "changed" }, "last changed by "), causeLine(last));
  }
}

function causeLine(r) {
  return el("button", { class: "link cause", type: "button", title: "list this event",
                        on: { click: () => loadEvents(r.timestamp_ms, r.timestamp_ms) } },
            `${r.time} ${r.type} ${r.key} (${r.producer})`);
}

// ---------------------------------------------------------------- diff A → B

async function loadDiff() {
  if (!view.at || !view.b) return;
  const [a, b] = parseMs(view.at) <= parseMs(view.b) ? [view.at, view.b] : [view.b, view.at];
  const scope = view.node ? `node ${view.node}` : "whole mesh";
  const title = ["diff ", el("span", { class: "mono" }, `${a} → ${b}`), ` (${scope})`];
  let doc;
  const params = { from: a, to: b };
  if (view.node) params.node = view.node;
  try { doc = await api("/api/diff", params); } catch (err) { panelError("diff-panel", title, err); return; }
  const body = panel("diff-panel", title);
  body.append(el("div", { class: "dim" }, `${doc.events} events; ${doc.added.length} added, ${doc.changed.length} changed, ${doc.removed.length} removed` +
                 (doc.exact ? "" : " (long window: changes attributed to groups of events)")));
  const table = el("table", { id: "diff" }, el("tr", {}, el("th", {}, "change"), el("th", {}, "resource"), el("th", {}, "version"), el("th", {}, "caused by")));
  const rows = [...doc.added.map(e => ["added", e, e.version]), ...doc.changed.map(e => ["changed", e, `${e.from_version} → ${e.to_version}`]),
                ...doc.removed.map(e => ["removed", e, e.version])];
  for (const [what, e, version] of rows) {
    const causes = el("td", {});
    for (const r of e.caused_by.slice(0, 6)) causes.append(causeLine(r), el("br"));
    if (e.caused_by.length > 6) causes.append(el("span", { class: "dim" }, `… ${e.caused_by.length - 6} more`));
    table.append(el("tr", { "data-change": what }, el("td", { class: what }, what),
                    el("td", { class: "mono" }, `${TYPE_KIND[e.type_url] || e.type_url} ${e.name}`), el("td", { class: "mono" }, version), causes));
  }
  body.append(rows.length ? table : el("div", {}, "no served resource differs"));
  for (const what of ["added", "removed", "changed"]) {
    if (doc.nodes[what].length) body.append(el("div", {}, `nodes ${what}: ${doc.nodes[what].join(", ")}`));
  }
  for (const j of doc.rejections) body.append(el("div", { class: "removed" }, `rejected ${j.kind_of_rule} ${j.name} r${j.revision} at ${j.time}: ${j.reason}`));
}

// ---------------------------------------------------------------- the events behind a mark

async function loadEvents(lo, hi, row) {
  const title = ["events ", el("span", { class: "mono" }, lo === hi ? iso(lo) : `${iso(lo)} → ${iso(hi)}`)];
  const params = { from: iso(lo), to: iso(hi), limit: 200 };
  if (row && row.kind) params.kind = row.kind;
  if (row && row.service !== undefined && row.service !== "(other services)") params.service = row.service;
  let doc;
  try { doc = await api("/api/events", params); } catch (err) { panelError("events-panel", title, err); return; }
  const body = panel("events-panel", title);
  if (doc.truncated) body.append(el("div", { class: "dim" }, `the first ${doc.limit} shown; zoom in for the rest`));
  const table = el("table", { id: "events" }, el("tr", {}, el("th", {}, "broker time"), el("th", {}, "kind"), el("th", {}, "key / name"), el("th", {}, "producer")));
  for (const e of doc.events) {
    const pre = el("pre", { hidden: true }, JSON.stringify(e.payload || e, null, 2));
    table.append(el("tr", { "data-event-kind": e.kind },
      el("td", { class: "mono" }, e.time), el("td", {}, e.kind),
      el("td", { class: "mono" }, e.key || e.name || `${e.topic}/${e.partition}/${e.offset}`,
         el("button", { class: "link", type: "button", on: { click: () => { pre.hidden = !pre.hidden; } } }, " payload"), pre),
      el("td", { class: "mono" }, e.producer || e.reason || "")));
  }
  body.append(doc.events.length ? table : el("div", {}, "no event in this window"));
}

// ---------------------------------------------------------------- start

async function start() {
  setBusy(+1);
  try {
    const problems = readUrl();
    if (problems.length) showError(null, problems.join("\n"));
    if (!view.from || !view.to || !view.at) {
      const info = await api("/api/info", {});
      if (info.first_ms === null) {
        showError(null, "the event log is empty: nothing to show yet");
        return;
      }
      const pad = Math.max(1000, Math.round((info.last_ms - info.first_ms) * 0.02));
      view.from = view.from || iso(info.first_ms - pad);
      view.to = view.to || iso(Math.min(info.now_ms, info.last_ms + pad));
      view.at = view.at || iso(info.last_ms);
    }
    writeUrl();
    drawCursors();
    await Promise.all([loadTimeline(), loadMesh(), loadNode(), loadDiff()]);
  } catch (err) {
    showError(null, err);
  } finally {
    setBusy(-1);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("window-form").addEventListener("submit", ev => {
    ev.preventDefault();
    view.from = document.getElementById("from").value.trim() || null;
    view.to = document.getElementById("to").value.trim() || null;
    writeUrl();
    document.getElementById("error").hidden = true;
    loadTimeline();
  });
  document.getElementById("zoom-in").addEventListener("click", () => zoom(0.25));
  document.getElementById("zoom-out").addEventListener("click", () => zoom(4));
  document.getElementById("whole-log").addEventListener("click", () => { view.from = null; view.to = null; start(); });
  document.getElementById("clear-b").addEventListener("click", () => {
    view.b = null; writeUrl(); drawTimeline();
    panel("diff-panel", ["diff"]).append(el("span", { class: "dim" }, "shift+click the timeline to set cursor B"));
  });
  document.getElementById("timeline").addEventListener("keydown", ev => {
    if (!timeline || (ev.key !== "ArrowLeft" && ev.key !== "ArrowRight")) return;
    const at = parseMs(view.at) ?? timeline.to_ms;
    const ms = Math.max(timeline.from_ms, Math.min(timeline.to_ms, at + (ev.key === "ArrowLeft" ? -1 : 1) * timeline.width_ms));
    pick(ms, ev.shiftKey);
  });
  window.addEventListener("resize", () => drawTimeline());
  start();
});
