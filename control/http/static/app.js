// The OpenFANG dashboard: plain DOM, no framework. Every text from the cluster goes in through
// textContent (never innerHTML), so an agent's reply or an event cannot inject markup.
"use strict";

const POLL_MS = 2000;
const MAX_EVENTS = 200;
const UI_HEADER = { "X-OpenFang-Dashboard": "1" };
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function headers(extra) {
  const h = Object.assign({}, UI_HEADER, extra || {});
  const token = sessionStorage.getItem("openfang-token");
  if (token) h.Authorization = "Bearer " + token;
  return h;
}

class Unauthorized extends Error {}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const response = await fetch(path, opts);
  if (response.status === 401) {
    $("token-form").hidden = false;
    throw new Unauthorized("this face needs a bearer token");
  }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function problem(text) {
  const p = $("problem");
  p.hidden = !text;
  p.textContent = text || "";
}

function bytes(n) {
  if (typeof n !== "number") return "-";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function stateCell(state) {
  return el("span", state || "?", "state state-" + (state || "unknown"));
}

// -- status, tree, agents (polled) --------------------------------------------------------------

let selected = null;
let agentIds = [];

function renderStatus(status, errors) {
  const s = $("status");
  if (!status) { s.textContent = "gateway not answering: " + (errors.status || "?"); return; }
  s.textContent = `${status.name} ${status.version} · ${status.state} · up ${Math.round(status.uptime_s)} s · ` +
    `${status.workers} workers connected`;
}

function treeNode(node) {
  const li = el("li");
  li.dataset.path = node.path || node.id;
  li.append(el("span", node.id + " "), stateCell(node.state));
  const bits = [];
  if (node.pid) bits.push("pid " + node.pid);
  if (node.restarts) bits.push(node.restarts + " restarts");
  if (node.rss_bytes) bits.push(bytes(node.rss_bytes));
  if (bits.length) li.append(el("span", " " + bits.join(" · "), "muted"));
  if (node.children && node.children.length) {
    const ul = el("ul");
    node.children.forEach((child) => ul.append(treeNode(child)));
    li.append(ul);
  }
  return li;
}

let lastTree = "";
function renderTree(tree) {
  const ul = $("tree");
  const key = JSON.stringify(tree, (k, v) => (k === "uptime_s" ? undefined : v));
  if (key === lastTree) return;
  lastTree = key;
  ul.replaceChildren();
  if (!tree) return;
  const root = tree.root ? Object.assign({}, tree.root, { children: tree.children }) : null;
  if (root) ul.append(treeNode(root));
  else (tree.children || []).forEach((n) => ul.append(treeNode(n)));
}

function actionButton(agent, action) {
  const b = el("button", action, "small");
  b.type = "button";
  b.dataset.action = action;
  b.addEventListener("click", async (ev) => {
    ev.stopPropagation();
    try {
      await api(`/ui/api/agents/${encodeURIComponent(agent.agent_id)}/${action}`, { method: "POST" });
      refresh();
    } catch (err) { problem(`${action} ${agent.agent_id}: ${err.message}`); }
  });
  return b;
}

// Rows are kept by agent id and updated in place, so a row (and its buttons) survives each poll.
const rows = new Map();

function agentRow(a) {
  let tr = rows.get(a.agent_id);
  if (!tr) {
    tr = el("tr");
    tr.dataset.agentId = a.agent_id;
    for (const [cls, num] of [["id"], ["name"], ["worker"], ["state-cell"], ["activity"], ["messages", 1],
      ["fuel", 1], ["memory", 1], ["inbox", 1], ["actions"]]) {
      tr.append(el("td", "", num ? cls + " num" : cls));
    }
    tr.addEventListener("click", () => selectAgent(a.agent_id));
    rows.set(a.agent_id, tr);
  }
  const c = tr.cells;
  c[0].textContent = a.agent_id;
  c[1].textContent = a.name || "";
  c[2].textContent = a.worker || "-";
  if (tr.dataset.state !== a.state) {
    tr.dataset.state = a.state;
    c[3].replaceChildren(stateCell(a.state));
    const actions = [];
    if (a.state === "suspended") actions.push(actionButton(a, "resume"));
    else if (a.state === "running") actions.push(actionButton(a, "suspend"));
    if (a.state !== "dead") actions.push(actionButton(a, "kill"));
    c[9].replaceChildren(...actions);
  }
  c[4].textContent = a.activity || "-";
  c[5].textContent = a.messages ?? "-";
  c[6].textContent = a.fuel_used ?? "-";
  c[7].textContent = bytes(a.memory_bytes);
  c[8].textContent = a.inbox ?? "-";
  tr.classList.toggle("selected", a.agent_id === selected);
  return tr;
}

function renderAgents(listing) {
  const agents = (listing && listing.agents) || [];
  agents.sort((a, b) => String(a.agent_id).localeCompare(String(b.agent_id)));
  const body = $("agents").tBodies[0];
  const seen = new Set(agents.map((a) => a.agent_id));
  for (const [id, tr] of rows) if (!seen.has(id)) { tr.remove(); rows.delete(id); }
  agents.forEach((a, i) => {
    const tr = agentRow(a);
    if (body.rows[i] !== tr) body.insertBefore(tr, body.rows[i] || null);
  });
  const total = listing && typeof listing.total === "number" ? listing.total : agents.length;
  $("agent-count").textContent = total > agents.length ? `(${agents.length} shown of ${total})` : `(${total})`;
  const ids = agents.filter((a) => a.state !== "dead").map((a) => a.agent_id);
  if (ids.join("\n") !== agentIds.join("\n")) {
    agentIds = ids;
    const sel = $("chat-agent");
    const keep = sel.value;
    sel.replaceChildren(...ids.map((id) => { const o = el("option", id); o.value = id; return o; }));
    if (ids.includes(keep)) sel.value = keep;
  }
  if (listing && listing.errors && listing.errors.length) {
    problem("some workers did not answer agent.list: " + JSON.stringify(listing.errors));
  }
}

function selectAgent(id) {
  selected = id;
  $("chat-agent").value = id;
  for (const tr of $("agents").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.agentId === id);
  $("chat-input").focus();
}

let refreshing = false;
async function refresh() {
  if (refreshing) return;
  refreshing = true;
  try {
    const params = new URLSearchParams({ filter: $("agent-filter").value.trim() });
    const data = await (await api("/ui/api/overview?" + params)).json();
    renderStatus(data.status, data.errors);
    renderTree(data.tree);
    renderAgents(data.agent_list);
    const errs = Object.entries(data.errors || {});
    if (errs.length) problem(errs.map(([k, v]) => `${k}: ${v}`).join("; "));
    else if (!(data.agent_list && data.agent_list.errors && data.agent_list.errors.length)) problem("");
  } catch (err) {
    if (!(err instanceof Unauthorized)) problem("the face did not answer: " + err.message);
  } finally {
    refreshing = false;
  }
}

// -- live events (server-sent events read with fetch, so the bearer header goes along) ---------

function describeEvent(e) {
  const when = new Date((e.time || Date.now() / 1000) * 1000).toLocaleTimeString();
  const parts = [when, e.kind];
  for (const key of ["path", "agent_id", "worker", "state", "pid", "reason", "status"]) {
    if (e[key] !== undefined && e[key] !== null) parts.push(`${key}=${e[key]}`);
  }
  return parts.join(" ");
}

async function readLines(response, onLine) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      onLine(line);
    }
  }
  if (buffer) onLine(buffer);
}

async function followEvents() {
  const state = $("events-state");
  for (;;) {
    try {
      const response = await api("/ui/api/events");
      state.textContent = "(live)";
      await readLines(response, (line) => {
        if (!line.startsWith("data: ")) return;
        let event;
        try { event = JSON.parse(line.slice(6)); } catch (_) { return; }
        if (event.endpoint !== undefined && event.kind === undefined) return; // the hello
        const list = $("events");
        const item = el("li", describeEvent(event));
        item.dataset.kind = event.kind || "";
        list.prepend(item);
        while (list.children.length > MAX_EVENTS) list.lastChild.remove();
        if (String(event.kind).startsWith("agent.") || String(event.kind).startsWith("child.")) refresh();
      });
      state.textContent = "(reconnecting)";
    } catch (err) {
      state.textContent = "(" + err.message + ")";
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

// -- chat (NDJSON lines of agent.send with stream = true) ---------------------------------------

async function sendChat(ev) {
  ev.preventDefault();
  const agentId = $("chat-agent").value;
  const input = $("chat-input");
  const text = input.value.trim();
  if (!agentId || !text) return;
  input.value = "";
  const log = $("chat-log");
  log.append(el("div", `you → ${agentId}: ${text}`, "msg user"));
  const reply = el("div", "", "msg assistant");
  reply.dataset.agentId = agentId;
  reply.dataset.done = "false";
  log.append(reply);
  $("chat-send").disabled = true;
  try {
    const response = await api("/ui/api/chat", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ agent_id: agentId, text }),
    });
    let streamed = false;
    await readLines(response, (line) => {
      if (!line.trim()) return;
      const part = JSON.parse(line);
      if (part.kind === "text" && part.text) {
        streamed = true;
        reply.textContent += part.text;
        reply.dataset.pieces = String(Number(reply.dataset.pieces || 0) + 1);
      } else if (part.kind === "tool") {
        const what = part.state === "done" ? `done ${part.ok ? "ok" : "failed"}` : part.state;
        reply.before(el("div", `[tool ${part.tool} ${what}]`, "msg tool"));
      } else if (part.kind === "reply") {
        if (!streamed) reply.textContent = part.reply;
        const u = part.usage || {};
        reply.title = `${u.prompt_tokens || 0} prompt + ${u.completion_tokens || 0} completion tokens, fuel ${u.fuel || 0}`;
      } else if (part.kind === "error") {
        reply.className = "msg error";
        reply.textContent = `${part.code}: ${part.message}`;
      }
      log.scrollTop = log.scrollHeight;
    });
  } catch (err) {
    reply.className = "msg error";
    reply.textContent = err.message;
  } finally {
    reply.dataset.done = "true";
    $("chat-send").disabled = false;
    refresh(); // the agent's counters moved
  }
}

// -- memory search -------------------------------------------------------------------------------

async function searchMemory(ev) {
  ev.preventDefault();
  const q = $("mem-query").value.trim();
  if (!q) return;
  const params = new URLSearchParams({ q, mode: $("mem-mode").value, limit: "20" });
  const list = $("mem-hits");
  list.replaceChildren();
  try {
    const data = await (await api("/ui/api/memory/search?" + params)).json();
    const hits = data.hits || [];
    $("mem-summary").textContent = `${hits.length} hit${hits.length === 1 ? "" : "s"} for “${q}”`;
    for (const h of hits) {
      const li = el("li");
      let how = `${h.agent_id} · ${h.kind || "?"} · fused score ${Number(h.score).toFixed(3)}`;
      if (typeof h.similarity === "number") how += ` · similarity ${h.similarity.toFixed(3)}`;
      if (h.keyword_rank) how += ` · keyword rank ${h.keyword_rank}`;
      li.append(el("span", how, "muted"),
        el("div", h.text));
      list.append(li);
    }
  } catch (err) {
    $("mem-summary").textContent = "search failed: " + err.message;
  }
}

// -- security report and audit -------------------------------------------------------------------

function auditText(audit) {
  if (!audit) return "unknown";
  if (!audit.available) return audit.why || "unavailable";
  let text = (audit.ok ? "ok: " : "BROKEN: ") + audit.records + " records in " + audit.path +
    (audit.keyed ? " (HMAC-keyed chain)" : " (unkeyed chain)") + ", checked in " + audit.ms + " ms";
  if (!audit.ok) text += "; first bad record #" + audit.first_bad_index + ": " + audit.reason;
  if (audit.warning) text += ". WARNING: " + audit.warning;
  return text;
}

async function loadSecurity() {
  try {
    const data = await (await api("/ui/api/security")).json();
    const body = $("security").tBodies[0];
    body.replaceChildren();
    for (const layer of data.layers || []) {
      const tr = el("tr");
      tr.append(el("td", layer.layer), el("td", layer.name),
        el("td", layer.enabled ? "on" : "off", layer.enabled ? "state-running" : "state-stopped"),
        el("td", (layer.config && layer.config.enforced_by) || ""));
      body.append(tr);
    }
    $("audit").textContent = "Audit log verification: " + auditText(data.audit);
  } catch (err) {
    if (!(err instanceof Unauthorized)) $("audit").textContent = "security report failed: " + err.message;
  }
}

// -- start ---------------------------------------------------------------------------------------

function start() {
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem("openfang-token", $("token-input").value);
    $("token-form").hidden = true;
    refresh();
    loadSecurity();
  });
  $("chat-form").addEventListener("submit", sendChat);
  $("agent-filter").addEventListener("input", () => refresh());
  $("mem-form").addEventListener("submit", searchMemory);
  refresh();
  loadSecurity();
  followEvents();
  setInterval(refresh, POLL_MS);
}

document.addEventListener("DOMContentLoaded", start);
