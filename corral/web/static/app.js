// The console: workspaces, members, runs, review and audit, live over the sync protocol (sync.js).
// Pages are addressed by the URL's fragment: #/ (workspaces), #/w/ID (a workspace: members and
// runs), #/run/ID, #/review/ID, #/audit/ID, #/operator (every sandbox and runner, for operators).
// A sign-in link is #login=TICKET.
import { ServerError, SyncClient } from "./sync.js";

const SESSION_KEY = "corral.session";
const DRAFT_KEY = "corral.drafts";
const PAGE = 50;
const origin = location.origin;
const app = document.getElementById("app");

// -- small DOM helpers
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// Replace an element's children, leaving out the null, undefined and false of conditional parts.
function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

function when(ms) {
  if (typeof ms !== "number") return "—";
  return new Date(ms).toLocaleString();
}

function span(ms) {
  if (typeof ms !== "number" || ms < 0) return "—";
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function usd(cost) {
  const value = cost && typeof cost === "object" ? cost.usd : cost;
  return typeof value === "number" ? `$${value.toFixed(value < 1 ? 4 : 2)}` : "—";
}

function person(userId, members) {
  const m = (members ?? []).find((x) => x.user_id === userId);
  if (m && (m.name || m.email)) return m.name || m.email;
  if (userId === session()?.tokenIdentifier) return "you";
  return userId?.split("|").pop() ?? "—";
}

function errorText(error) {
  if (error instanceof ServerError) return error.message;
  return String(error?.message ?? error);
}

// -- drafts: what was typed survives a sign-in that ended
function drafts() { try { return JSON.parse(sessionStorage.getItem(DRAFT_KEY) || "{}"); } catch { return {}; } }
function saveDraft(id, value) { const d = drafts(); if (value) d[id] = value; else delete d[id]; sessionStorage.setItem(DRAFT_KEY, JSON.stringify(d)); }
function field(id, attrs = {}) {
  const input = h(attrs.tag ?? "input", { id, name: id, ...attrs, tag: null });
  input.value = drafts()[id] ?? attrs.value ?? "";
  input.addEventListener("input", () => saveDraft(id, input.value));
  return input;
}
function clearDraft(...ids) { for (const id of ids) saveDraft(id, ""); }

// -- the session: a refresh token kept in localStorage buys short user tokens
function session() { try { return JSON.parse(localStorage.getItem(SESSION_KEY) || "null"); } catch { return null; } }
function storeSession(s) { if (s) localStorage.setItem(SESSION_KEY, JSON.stringify(s)); else localStorage.removeItem(SESSION_KEY); }

async function post(route, body) {
  const response = await fetch(origin + "/api/auth" + route, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  });
  const payload = await response.json().catch(() => ({}));
  if (!response.ok) throw new ServerError(payload.message || `HTTP ${response.status}`, payload);
  return payload;
}

async function fetchToken(forceRefresh) {
  const s = session();
  if (!s) return null;
  if (!forceRefresh && s.expiresAt * 1000 - Date.now() > 60_000) return s.token;
  try {
    const fresh = await post("/session/refresh", { refreshToken: s.refreshToken });
    storeSession({ ...s, token: fresh.token, expiresAt: fresh.expiresAt });
    return fresh.token;
  } catch (error) {
    if (error instanceof ServerError) { storeSession(null); state.ended = errorText(error); }
    return null;
  }
}

const state = { ended: null, notice: null, signedIn: false, connected: false, operator: false };
const client = new SyncClient(origin, {
  onConnectionChange: (up) => { state.connected = up; document.body.classList.toggle("offline", !up); },
  onAuthChange: (ok) => {
    const was = state.signedIn;
    state.signedIn = ok;
    if (ok && !was) { client.mutation("corral/users:sync_profile", {}).catch(() => {}); render(); }
    if (!ok && session()) { storeSession(null); state.ended = state.ended || "the node no longer accepts your sign-in"; render(); }
    else if (!ok && was) render();
  },
});

window.corral = { client }; // for a developer's console (and the browser tests)

async function signInWith(ticket) {
  const s = await post("/session", { ticket });
  storeSession(s);
  state.ended = null;
  state.notice = null;
  client.setAuth(fetchToken);
}

async function signOut() {
  const s = session();
  storeSession(null);
  state.signedIn = false;
  client.clearAuth();
  if (s) post("/session/sign_out", { refreshToken: s.refreshToken }).catch(() => {});
  state.ended = null;
  state.notice = "You are signed out.";
  location.hash = "#/";
  render();
}

// -- live data for the page on screen: every subscription of a page ends when it is left
let stops = [];
function live(path, args, onValue, onError) {
  stops.push(client.subscribe(path, args, onValue, onError ?? ((e) => onValue(undefined, e))));
}

// A live list read page by page with Convex's paginationOpts: each page is its own subscription,
// "Show more" adds the next one from the last page's continueCursor and pins that page's end
// (endCursor), so a row written meanwhile lands in exactly one page. `draw(box, items)` fills the box.
function pagedList(box, path, args, draw, { pageSize = PAGE, more = "Show more", onError } = {}) {
  const pages = [];
  let focusMore = false;
  let stopped = false;
  function watch(p) {
    p.stop?.();
    p.stop = client.subscribe(path, { ...args, paginationOpts: p.opts }, (result) => { p.result = result; redraw(); },
      (error) => (onError ?? ((e) => problem(box, e)))(error));
  }
  function add(cursor) {
    const p = { opts: { numItems: pageSize, cursor }, result: null, stop: null };
    pages.push(p);
    watch(p);
  }
  function redraw() {
    if (stopped || pages.some((p) => !p.result)) return;
    const seen = new Set();
    const items = [];
    for (const p of pages) for (const item of p.result.page) if (!seen.has(item._id)) { seen.add(item._id); items.push(item); }
    draw(box, items);
    const last = pages.at(-1);
    let button = null;
    if (!last.result.isDone) {
      button = h("button", { type: "button", class: "quiet more", onclick: () => {
      const cursor = last.result.continueCursor;
      last.opts = { ...last.opts, endCursor: cursor };
      watch(last);
      focusMore = true;
      add(cursor);
      } }, more);
      box.append(h("div", { class: "inline" }, button, h("span", { class: "muted" }, `${items.length} shown`)));
    }
    if (focusMore) { focusMore = false; box.tabIndex = -1; (button ?? box).focus(); }
  }
  add(null);
  const stop = () => { stopped = true; for (const p of pages) p.stop?.(); };
  stop.redraw = redraw;
  stops.push(stop);
  return stop;
}

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  return { page: parts[0] ?? "", id: parts[1] ?? null };
}

function render() {
  for (const stop of stops) stop();
  stops = [];
  const s = session();
  if (!s) return renderSignIn();
  const { page, id } = route();
  const main = h("main", { id: "main", tabindex: "-1" });
  fill(app, header(page, id), main);
  // Whether the signed-in person is one of the node's operators: the nav shows the operator page to
  // them only. Asked again on each page, so it is always asked as whoever is signed in now.
  live("corral/operator:me", {}, (me) => {
    state.operator = Boolean(me?.operator);
    const link = document.getElementById("nav-operator");
    if (link) link.hidden = !state.operator;
  }, () => { state.operator = false; });
  if (state.notice) { main.append(h("p", { class: "notice", role: "status" }, state.notice)); state.notice = null; }
  if (page === "w" && id) workspacePage(main, id);
  else if (page === "run" && id) runPage(main, id);
  else if (page === "review" && id) reviewPage(main, id);
  else if (page === "audit" && id) auditPage(main, id);
  else if (page === "operator") operatorPage(main);
  else workspacesPage(main);
}

function header(page, id) {
  const s = session();
  const link = (href, text, current) => h("a", { href, "aria-current": current ? "page" : null }, text);
  const wsId = page === "w" || page === "review" || page === "audit" ? id : currentWorkspace;
  return h("header", {},
    h("a", { class: "brand", href: "#/" }, "Corral"),
    h("nav", { "aria-label": "pages" },
      link("#/", "Workspaces", page === ""),
      wsId && link(`#/w/${wsId}`, "Runs & members", page === "w"),
      wsId && link(`#/review/${wsId}`, "Review", page === "review"),
      wsId && link(`#/audit/${wsId}`, "Audit", page === "audit"),
      h("a", { href: "#/operator", id: "nav-operator", hidden: !state.operator,
               "aria-current": page === "operator" ? "page" : null }, "Operator")),
    h("span", { class: "who", title: s.tokenIdentifier }, s.name || s.email || s.subject),
    h("button", { type: "button", id: "sign-out", onclick: signOut }, "Sign out"));
}
let currentWorkspace = null;

function problem(where, error) {
  fill(where, h("p", { class: "error", role: "alert" }, errorText(error)));
}

// status line under a form: the server's own words when it refuses
function statusLine(id) { return h("p", { id, class: "status", role: "status", "aria-live": "polite" }); }
async function act(line, work, done) {
  line.textContent = "…";
  line.className = "status";
  try {
    const result = await work();
    line.textContent = done ?? "";
    return result;
  } catch (error) {
    line.textContent = errorText(error);
    line.className = "status error";
    throw error;
  }
}

// -- sign-in
function renderSignIn() {
  const line = statusLine("sign-in-status");
  const input = h("input", { id: "sign-in-link", name: "link", autocomplete: "off", placeholder: "http://…/#login=…",
                             "aria-describedby": "sign-in-help" });
  const form = h("form", { class: "card", onsubmit: async (e) => {
    e.preventDefault();
    const text = input.value.trim();
    const ticket = text.includes("#login=") ? text.split("#login=")[1] : text;
    try { await act(line, () => signInWith(ticket)); render(); } catch { /* shown */ }
  } },
  h("label", { for: "sign-in-link" }, "Sign-in link"), input,
  h("button", { type: "submit" }, "Sign in"), line);
  fill(app, h("main", { id: "main", class: "narrow" },
    h("h1", {}, "Sign in to Corral"),
    state.ended && h("p", { class: "error", role: "alert" }, "Your session has ended. Sign in again: what you typed is kept.",
      h("br"), h("span", { class: "muted" }, `(${state.ended})`)),
    state.notice && h("p", { class: "notice", role: "status" }, state.notice),
    h("p", { id: "sign-in-help" },
      "Open the one-time link that ", h("code", {}, "corral up"), " printed, or ask the node's operator for one (",
      h("code", {}, "corral login-link --subject YOU"), "), and paste it here."),
    form));
  input.focus();
}

// -- workspaces
function workspacesPage(main) {
  const list = h("div", { id: "workspaces" }, h("p", { class: "muted" }, "Loading…"));
  const line = statusLine("create-status");
  const name = field("new-workspace-name", { required: true, maxlength: 200, placeholder: "Research" });
  main.append(h("h1", {}, "Workspaces"), list,
    h("form", { class: "card inline", onsubmit: async (e) => {
      e.preventDefault();
      try {
        const id = await act(line, () => client.mutation("corral/workspaces:create", { name: name.value }));
        clearDraft("new-workspace-name");
        location.hash = `#/w/${id}`;
      } catch { /* shown */ }
    } }, h("label", { for: "new-workspace-name" }, "New workspace"), name, h("button", { type: "submit" }, "Create"), line));
  live("corral/workspaces:list", {}, (workspaces, error) => {
    if (error) return problem(list, error);
    if (!workspaces.length) return fill(list, h("p", { class: "muted" }, "You belong to no workspace yet: create one, or ask an owner to invite you."));
    fill(list, h("ul", { class: "cards" }, workspaces.map((w) =>
      h("li", {}, h("a", { href: `#/w/${w._id}` }, w.name), " ", h("span", { class: `role ${w.role}` }, w.role),
        w.status === "deleting" ? h("span", { class: "state failed" }, "deleting") : null))));
  });
}

const RULES = [
  "The owner renames, removes and hands over the workspace, adds and removes admins, and changes roles.",
  "Admins invite members, remove members and review artifacts; an admin cannot remove another admin.",
  "Members start and cancel runs, capture artifacts and see everything in the workspace.",
  "Anyone but the owner can leave.",
];

function workspacePage(main, workspaceId) {
  currentWorkspace = workspaceId;
  const title = h("h1", {}, "…");
  const rename = h("div");
  const members = h("div", { id: "members" }, h("p", { class: "muted" }, "Loading…"));
  const invite = h("div");
  const runs = h("div", { id: "runs" }, h("p", { class: "muted" }, "Loading…"));
  const starter = h("div");
  const threads = h("div", { id: "threads" });
  const usage = h("div", { id: "usage" });
  const ownerControls = h("div");
  const keys = h("section", { "aria-labelledby": "keys-h", id: "api-keys" });
  main.append(title, rename,
    h("section", { "aria-labelledby": "runs-h" }, h("h2", { id: "runs-h" }, "Runs"), starter, runs),
    h("section", { "aria-labelledby": "threads-h" }, h("h2", { id: "threads-h" }, "Threads"), threads),
    h("section", { "aria-labelledby": "members-h" }, h("h2", { id: "members-h" }, "Members"), members, invite,
      h("details", {}, h("summary", {}, "Who may do what"), h("ul", {}, RULES.map((r) => h("li", {}, r))))),
    keys,
    h("section", { "aria-labelledby": "settings-h" }, h("h2", { id: "settings-h" }, "Cost and budget"), usage, ownerControls));
  let me = null;
  let drawnFor = null; // the role the owner's and admins' controls were drawn for
  let memberList = [];
  let workspace = null;
  live("corral/workspaces:get", { workspace_id: workspaceId }, (w, error) => {
    if (error) return problem(title, error);
    if (!w) { title.textContent = "Not found"; fill(rename, h("p", { class: "error", role: "alert" }, "This workspace does not exist, or you are not one of its members.")); return; }
    me = w.role;
    workspace = w;
    fill(title, w.name, " ", h("span", { class: `role ${w.role}` }, `you: ${w.role}`));
    if (drawnFor !== me) {
      drawnFor = me;
      fill(keys, ...(me === "member" ? [] : apiKeys(workspaceId, () => memberList)));
      fill(ownerControls, ...(me === "owner" ? ownerForms(() => workspace, () => memberList) : [
        h("p", { class: "muted" }, "Only the owner sets the budget, hands the workspace over or removes it.")]));
    }
    ownerControls.querySelector("#transfer-to")?.refresh?.();
    fill(rename, ...[renameForm(w), w.role !== "owner" ? leaveButton(w) : null].filter(Boolean));
    fill(invite, me === "member" ? h("p", { class: "muted" }, "Only the owner and admins invite people.") : inviteForm(workspaceId, me));
    drawMembers();
  });
  live("corral/workspace_members:list_members", { workspace_id: workspaceId }, (list, error) => {
    if (error) return problem(members, error);
    memberList = list;
    drawMembers();
    ownerControls.querySelector("#transfer-to")?.refresh?.();
  });
  live("corral/sandbox_runs:usage", { workspace_id: workspaceId }, (u, error) => {
    if (error) return problem(usage, error);
    const budget = u.monthly_budget_usd;
    fill(usage, h("p", { id: "usage-line" }, `This month (${u.month}): ${usd(u.usd)} used`,
      budget === null || budget === undefined ? ", no budget." : ` of a budget of ${usd(budget)}${u.usd >= budget ? ": new runs are refused." : "."}`,
      h("span", { class: "muted" }, ` ${u.runs} ended run${u.runs === 1 ? "" : "s"} settled.`)));
  });
  function drawMembers() {
    if (!memberList.length) return;
    const line = statusLine("members-status");
    fill(members, h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "person"), h("th", {}, "role"), h("th", {}, ""))),
      h("tbody", {}, memberList.map((m) => h("tr", {},
        h("td", {}, h("span", { title: m.user_id }, m.name || m.email || m.user_id), m.email && m.name ? h("span", { class: "muted" }, ` ${m.email}`) : null),
        h("td", {}, m.role === "owner" || me !== "owner" ? h("span", { class: `role ${m.role}` }, m.role)
          : h("select", { "aria-label": `role of ${m.name || m.user_id}`, onchange: (e) => act(line,
            () => client.mutation("corral/workspace_members:update_role", { workspace_id: workspaceId, user_id: m.user_id, new_role: e.target.value }),
            `${m.name || m.user_id} is now ${e.target.value}.`).catch(() => {}) },
          ["admin", "member"].map((r) => h("option", { value: r, selected: r === m.role }, r)))),
        h("td", {}, m.role !== "owner" && me !== "member" && m.user_id !== session().tokenIdentifier
          ? h("button", { type: "button", class: "quiet", onclick: () => act(line,
            () => client.mutation("corral/workspace_members:remove_member", { workspace_id: workspaceId, user_id: m.user_id }),
            `Removed ${m.name || m.user_id}.`).catch(() => {}) }, "Remove") : null))))), line);
  }
  const showThread = threadsAndRuns(workspaceId, starter, runs, () => memberList);
  threadList(workspaceId, threads, () => memberList, showThread);
}

function threadList(workspaceId, box, members, showThread) {
  const list = h("div", { id: "thread-list" });
  const line = statusLine("thread-status");
  const title = field("new-thread-title", { maxlength: 200, placeholder: "Fix the flaky test", "aria-label": "thread title" });
  fill(box, list, h("form", { class: "inline", onsubmit: async (e) => {
    e.preventDefault();
    try {
      await act(line, () => client.mutation("corral/threads:create", { workspace_id: workspaceId, ...(title.value.trim() ? { title: title.value } : {}) }), "Created.");
      clearDraft("new-thread-title");
      title.value = "";
    } catch { /* shown */ }
  } }, h("label", { for: "new-thread-title" }, "New thread"), title, h("button", { type: "submit" }, "Create thread"), line));
  pagedList(list, "corral/threads:list", { workspace_id: workspaceId }, (el, page) => {
    if (!page.length) return fill(el, h("p", { class: "muted" }, "No thread yet: starting a run makes one, or create one here."));
    fill(el, h("ul", { class: "cards" }, page.map((t) => h("li", { "data-thread": t._id },
      h("strong", {}, t.title || "untitled"), " ", h("span", { class: "muted" }, `by ${person(t.creator_id, members())}, ${when(t._creationTime)}`), " ",
      h("button", { type: "button", class: "quiet", onclick: () => { showThread(t._id); document.getElementById("runs-h")?.scrollIntoView(); } }, "Its runs")))));
  }, { more: "Show more threads" });
}

function ownerForms(current, members) {
  const w = current();
  const wsId = w._id;
  // monthly budget
  const budgetLine = statusLine("budget-status");
  const budget = h("input", { id: "budget", type: "number", min: "0", step: "0.01", inputmode: "decimal", placeholder: "none",
                               value: w.monthly_budget_usd ?? "", "aria-describedby": "budget-help" });
  const budgetForm = h("form", { class: "inline", onsubmit: async (e) => {
    e.preventDefault();
    const text = budget.value.trim();
    const value = text === "" ? null : Number(text);
    try { await act(budgetLine, () => client.mutation("corral/workspaces:set_budget", { workspace_id: wsId, monthly_budget_usd: value }), value === null ? "No budget." : `Budget set to ${usd(value)} a month.`); } catch { /* shown */ }
  } }, h("label", { for: "budget" }, "Monthly budget (US$)"), budget, h("button", { type: "submit" }, "Set budget"),
  h("span", { class: "muted", id: "budget-help" }, "empty: none; past it, new runs are refused"), budgetLine);
  // transfer ownership, to an admin
  const transferLine = statusLine("transfer-status");
  const to = h("select", { id: "transfer-to" });
  to.refresh = () => {
    const keep = to.value;
    const admins = members().filter((m) => m.role === "admin");
    fill(to, ...(admins.length ? admins.map((m) => h("option", { value: m.user_id, selected: m.user_id === keep }, m.name || m.email || m.user_id))
      : [h("option", { value: "" }, "no admin yet")]));
    to.disabled = !admins.length;
  };
  to.refresh();
  const transferForm = h("form", { class: "inline", onsubmit: async (e) => {
    e.preventDefault();
    if (!to.value) { transferLine.className = "status error"; transferLine.textContent = "Make someone an admin first: ownership goes to an admin."; return; }
    const name = to.selectedOptions[0]?.textContent;
    if (!confirm(`Make ${name} the owner of ${current().name}? You become an admin.`)) return;
    try { await act(transferLine, () => client.mutation("corral/workspaces:transfer_ownership", { workspace_id: wsId, user_id: to.value }), `${name} is now the owner; you are an admin.`); } catch { /* shown */ }
  } }, h("label", { for: "transfer-to" }, "Hand over to"), to, h("button", { type: "submit", class: "quiet" }, "Transfer ownership"), transferLine);
  // remove, confirmed by typing the name
  const removeLine = statusLine("remove-status");
  const typed = h("input", { id: "remove-confirm", autocomplete: "off", "aria-describedby": "remove-help" });
  const removeForm = h("form", { class: "card", onsubmit: async (e) => {
    e.preventDefault();
    const wsName = current().name;
    if (typed.value !== wsName) { removeLine.className = "status error"; removeLine.textContent = `Type the workspace's name, ${wsName}, exactly to remove it.`; return; }
    try {
      await act(removeLine, () => client.mutation("corral/workspaces:remove", { workspace_id: wsId }));
      state.notice = `Removing ${wsName}: its artifacts, runs (their sandboxes killed), threads and members go first.`;
      location.hash = "#/";
    } catch { /* shown */ }
  } }, h("h3", {}, "Remove this workspace"),
  h("p", { id: "remove-help" }, "Everything in it goes: artifacts and their files, runs (live sandboxes are killed), threads, members. Type its name to confirm."),
  h("div", { class: "inline" }, h("label", { for: "remove-confirm" }, "Name"), typed, h("button", { type: "submit", class: "reject" }, "Remove workspace")), removeLine);
  return [budgetForm, transferForm, removeForm];
}

function apiKeys(workspaceId, members) {
  const list = h("div", { id: "key-list" }, h("p", { class: "muted" }, "Loading…"));
  const shown = h("div", { id: "new-key" });
  const line = statusLine("key-status");
  const name = field("new-key-name", { required: true, maxlength: 100, placeholder: "ci", "aria-label": "key name" });
  const form = h("form", { class: "inline", onsubmit: async (e) => {
    e.preventDefault();
    try {
      const made = await act(line, () => client.action("corral/workspace_keys:create_api_key", { workspace_id: workspaceId, name: name.value }));
      clearDraft("new-key-name");
      name.value = "";
      const env = h("pre", { id: "new-key-env", tabindex: "0" }, e2bLines(made.key));
      const copied = h("span", { class: "status", role: "status" });
      const copy = h("button", { type: "button", id: "copy-key", onclick: async () => {
        try { await navigator.clipboard.writeText(env.textContent); copied.textContent = "Copied."; }
        catch { getSelection().selectAllChildren(env); copied.textContent = "Selected: press Ctrl+C (⌘C) to copy."; }
      } }, "Copy");
      fill(shown, h("div", { class: "card notice", role: "status" },
        h("p", {}, h("strong", {}, `Key ${made.name} created.`), " Copy it now: it is not shown again. Paste these lines into a shell that runs the ", h("code", {}, "e2b"), " SDK:"),
        env, h("div", { class: "inline" }, copy, h("button", { type: "button", class: "quiet", onclick: () => fill(shown) }, "Done"), copied)));
      copy.focus();
    } catch { /* shown */ }
  } }, h("label", { for: "new-key-name" }, "New key"), name, h("button", { type: "submit" }, "Create key"), line);
  live("corral/workspace_keys:list_api_keys", { workspace_id: workspaceId }, (keys, error) => {
    if (error) return problem(list, error);
    if (!keys.length) return fill(list, h("p", { class: "muted" }, "No key yet."));
    const status = statusLine("revoke-status");
    fill(list, h("table", { class: "keys" },
      h("thead", {}, h("tr", {}, ["name", "key", "created", "by", ""].map((c) => h("th", {}, c)))),
      h("tbody", {}, [...keys].reverse().map((k) => h("tr", { "data-key": k.id },
        h("td", {}, k.name), h("td", {}, h("code", {}, k.hint)), h("td", {}, when(k.created)), h("td", {}, person(k.created_by, members())),
        h("td", {}, k.revoked ? h("span", { class: "state canceled" }, `revoked ${when(k.revoked)}`)
          : h("button", { type: "button", class: "quiet", "aria-label": `revoke ${k.name}`, onclick: () => act(status,
            () => client.mutation("corral/workspace_keys:revoke_api_key", { workspace_id: workspaceId, key_id: k.id }), `Revoked ${k.name}.`).catch(() => {}) }, "Revoke")))))), status);
  });
  return [h("h2", { id: "keys-h" }, "API keys"),
    h("p", { class: "muted" }, "A workspace key lets the official e2b SDK reach this workspace's sandboxes, and nothing else. Owners and admins create and revoke them."),
    shown, form, list];
}

function renameForm(w) {
  if (w.role !== "owner") return h("p", { class: "muted" }, "Only the owner renames the workspace.");
  const line = statusLine("rename-status");
  const name = field(`rename-${w._id}`, { value: w.name, maxlength: 200, "aria-label": "workspace name" });
  return h("form", { class: "inline", onsubmit: async (e) => {
    e.preventDefault();
    try { await act(line, () => client.mutation("corral/workspaces:update", { workspace_id: w._id, name: name.value }), "Renamed."); clearDraft(`rename-${w._id}`); } catch { /* shown */ }
  } }, name, h("button", { type: "submit" }, "Rename"), line);
}

function leaveButton(w) {
  const line = statusLine("leave-status");
  return h("div", { class: "inline" }, h("button", { type: "button", class: "quiet", onclick: async () => {
    if (!confirm(`Leave ${w.name}? You will need a new invitation to come back.`)) return;
    try { await act(line, () => client.mutation("corral/workspace_members:leave", { workspace_id: w._id })); location.hash = "#/"; } catch { /* shown */ }
  } }, "Leave this workspace"), line);
}

function inviteForm(workspaceId, myRole) {
  const line = statusLine("invite-status");
  const who = field("invite-who", { required: true, placeholder: "user id or email", "aria-label": "user id or email" });
  const role = h("select", { id: "invite-role", "aria-label": "role" },
    h("option", { value: "member" }, "member"), myRole === "owner" ? h("option", { value: "admin" }, "admin") : null);
  return h("form", { class: "card inline", onsubmit: async (e) => {
    e.preventDefault();
    const text = who.value.trim();
    const args = { workspace_id: workspaceId, role: role.value, ...(text.includes("@") && !text.includes("|") ? { email: text } : { user_id: text }) };
    try {
      const added = await act(line, () => client.mutation("corral/workspace_members:add_member", args));
      line.textContent = added?.status === "invited" ? `Invited ${added.email}: they join when they first sign in.` : `Added as ${args.role}.`;
      clearDraft("invite-who");
      who.value = "";
    } catch { /* shown */ }
  } }, h("label", { for: "invite-who" }, "Invite"), who, role, h("button", { type: "submit" }, "Add"), line);
}

// -- runs
function threadsAndRuns(workspaceId, starter, runsBox, members) {
  const threadSelect = h("select", { id: "thread", "aria-label": "thread" }, h("option", { value: "" }, "a new thread"));
  const line = statusLine("start-status");
  let threadFilter = "";
  fill(starter, h("form", { class: "inline", onsubmit: async (e) => {
    e.preventDefault();
    try {
      await act(line, async () => {
        let threadId = threadSelect.value;
        if (!threadId) threadId = await client.mutation("corral/threads:create", { workspace_id: workspaceId, title: `Run ${new Date().toLocaleTimeString()}` });
        return client.action("corral/sandbox_runs:start", { workspace_id: workspaceId, thread_id: threadId });
      }, "Started.");
    } catch { /* shown */ }
  } }, h("label", { for: "thread" }, "Thread"), threadSelect, h("button", { type: "submit", id: "start-run" }, "Start a run"),
  h("label", { for: "thread-filter" }, "Show"),
  h("select", { id: "thread-filter", onchange: (e) => showThread(e.target.value) }, h("option", { value: "" }, "all threads")),
  line));
  live("corral/threads:list", { workspace_id: workspaceId, paginationOpts: { numItems: PAGE, cursor: null } }, (threads, error) => {
    if (error || !threads) return;
    const options = threads.page.map((t) => [t._id, t.title || t._id]);
    for (const select of [threadSelect, document.getElementById("thread-filter")]) {
      if (!select) continue;
      const keep = select.value;
      fill(select, h("option", { value: "" }, select === threadSelect ? "a new thread" : "all threads"),
        ...options.map(([id, title]) => h("option", { value: id, selected: id === keep }, title)));
    }
  });
  let stopRuns = null;
  function subscribeRuns() {
    if (stopRuns) stopRuns();
    const [path, args] = threadFilter
      ? ["corral/sandbox_runs:list_by_thread", { thread_id: threadFilter }]
      : ["corral/sandbox_runs:list_by_workspace", { workspace_id: workspaceId }];
    stopRuns = pagedList(runsBox, path, args, (box, runs) => drawRuns(box, runs, members()), { more: "Show more runs" });
  }
  function showThread(threadId) {
    threadFilter = threadId;
    const filter = document.getElementById("thread-filter");
    if (filter) filter.value = threadId;
    subscribeRuns();
  }
  subscribeRuns();
  return showThread;
}

// A span of time that keeps counting on screen until `to` (the clock ticks here; the data does not poll).
function since(from, to) {
  if (typeof from !== "number") return h("span", {}, "—");
  const el = h("span", { "data-from": from, "data-to": typeof to === "number" ? to : null });
  el.textContent = span((typeof to === "number" ? to : Date.now()) - from);
  return el;
}
setInterval(() => {
  for (const el of document.querySelectorAll("[data-from]:not([data-to])")) el.textContent = span(Date.now() - Number(el.dataset.from));
}, 1000);

function runTimes(run) {
  const start = run.started_at ?? run._creationTime;
  const last = run.last_activity ?? run.sandbox?.last_activity;
  return { duration: since(start, run.ended_at ?? undefined), idle: run.status === "running" && typeof last === "number" ? since(last) : "—" };
}

function drawRuns(box, runs, members) {
  if (!runs.length) return fill(box, h("p", { class: "muted" }, "No run yet."));
  fill(box, h("table", { class: "runs" },
    h("thead", {}, h("tr", {}, ["run", "status", "started", "duration", "idle", "cost", "by"].map((c) => h("th", {}, c)))),
    h("tbody", {}, runs.map((run) => {
      const t = runTimes(run);
      return h("tr", { "data-run": run._id },
        h("td", {}, h("a", { href: `#/run/${run._id}` }, run._id.slice(-8))),
        h("td", {}, h("span", { class: `state ${run.status}` }, run.status)),
        h("td", {}, when(run._creationTime)), h("td", {}, t.duration), h("td", {}, t.idle),
        h("td", {}, usd(run.cost)), h("td", {}, person(run.created_by, members)));
    }))));
}

function runPage(main, runId) {
  const head = h("h1", {}, "Run");
  const facts = h("div");
  const history = h("div");
  const sandbox = h("div");
  const artifacts = h("div", { id: "artifacts" });
  const capture = h("div");
  main.append(head, facts, h("h2", {}, "State history"), history, h("h2", {}, "Sandbox"), sandbox,
    h("h2", {}, "Artifacts"), capture, artifacts);
  live("corral/sandbox_runs:get", { sandbox_run_id: runId }, (run, error) => {
    if (error) return problem(facts, error);
    if (!run) return problem(facts, "This run does not exist, or it is not in one of your workspaces.");
    currentWorkspace = run.workspace_id;
    const t = runTimes(run);
    const line = statusLine("cancel-status");
    const ended = ["succeeded", "failed", "canceled"].includes(run.status);
    fill(head, "Run ", h("code", {}, run._id.slice(-8)), " ", h("span", { class: `state ${run.status}`, id: "run-status" }, run.status));
    fill(facts, h("dl", { class: "facts" },
      h("dt", {}, "workspace"), h("dd", {}, h("a", { href: `#/w/${run.workspace_id}` }, "open")),
      h("dt", {}, "template"), h("dd", {}, run.template ?? "—"),
      h("dt", {}, "duration"), h("dd", {}, t.duration),
      h("dt", {}, "idle"), h("dd", {}, t.idle),
      h("dt", {}, "limits"), h("dd", {}, `${span(run.max_duration_ms)} at most, idle ${span(run.idle_timeout_ms)}`),
      h("dt", {}, "cost"), h("dd", {}, usd(run.cost)),
      run.error && h("dt", {}, "error"), run.error && h("dd", { class: "error" }, `${run.error.code}: ${run.error.message}`)),
      ended ? null : h("button", { type: "button", id: "cancel-run", onclick: () => act(line,
        () => client.mutation("corral/sandbox_runs:cancel", { sandbox_run_id: runId }), "Canceled.").catch(() => {}) }, "Cancel run"),
      line);
    fill(history, h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "status"), h("th", {}, "at"), h("th", {}, "why"))),
      h("tbody", {}, (run.history ?? []).map((e) => h("tr", {}, h("td", {}, h("span", { class: `state ${e.status}` }, e.status)), h("td", {}, when(e.at)), h("td", {}, e.reason || ""))))));
    const box = run.sandbox;
    if (box) {
      fill(sandbox, h("dl", { class: "facts" },
        h("dt", {}, "id"), h("dd", {}, h("code", {}, box.sandbox_id)),
        h("dt", {}, "state"), h("dd", {}, h("span", { class: `state ${box.state}`, id: "sandbox-state" }, box.state)),
        h("dt", {}, "last activity"), h("dd", {}, when(box.last_activity)),
        h("dt", {}, "ends"), h("dd", {}, when(box.end_at))));
    } else fill(sandbox, h("p", { class: "muted" }, run.status === "booting" ? "Booting…" : run.sandbox_id ? h("code", {}, run.sandbox_id) : "No sandbox."));
    fill(capture, run.status === "running" ? captureForm(runId) : null);
  });
  live("corral/artifacts:list_by_run", { sandbox_run_id: runId, paginationOpts: { numItems: PAGE, cursor: null } }, (result, error) => {
    if (error) return problem(artifacts, error);
    if (!result.page.length) return fill(artifacts, h("p", { class: "muted" }, "No artifact captured yet."));
    fill(artifacts, h("ul", { class: "cards" }, result.page.map((a) => h("li", {},
      h("strong", {}, a.title), " ", h("span", { class: `state ${a.review_state}` }, a.review_state), " ",
      h("span", { class: "muted" }, `${a.type} · ${a.content_type} · ${a.size} bytes`), " ", download(a)))));
  });
}

function captureForm(runId) {
  const line = statusLine("capture-status");
  const path = field(`capture-${runId}`, { required: true, placeholder: "/home/user/report.md", "aria-label": "path in the sandbox" });
  return h("form", { class: "inline", onsubmit: async (e) => {
    e.preventDefault();
    try { await act(line, () => client.action("corral/artifacts:capture", { sandbox_run_id: runId, path: path.value }), "Captured: it waits for review."); clearDraft(`capture-${runId}`); } catch { /* shown */ }
  } }, h("label", { for: `capture-${runId}` }, "Capture a file"), path, h("button", { type: "submit" }, "Capture"), line);
}

// An artifact's bytes reach members only through the download action (never a public URL).
async function artifactBlob(a) {
  const found = await client.action("corral/artifacts:download", { artifact_id: a._id });
  return new Blob([found.data], { type: found.content_type || "application/octet-stream" });
}

function download(a) {
  const line = h("span", { class: "status", role: "status" });
  return h("span", {}, h("button", { type: "button", class: "quiet", onclick: async () => {
    try {
      const url = URL.createObjectURL(await act(line, () => artifactBlob(a)));
      h("a", { href: url, download: a.title }).click();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch { /* shown */ }
  } }, "Download"), " ", line);
}

// -- review
const KEYWORDS = /\b(def|class|return|import|from|if|else|elif|for|while|function|const|let|var|async|await|try|except|catch|new|true|false|null|None|True|False)\b/g;
function highlight(text) {
  const pre = h("pre", { class: "code" });
  const pattern = /("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|#[^\n]*|\/\/[^\n]*|\b\d+(?:\.\d+)?\b|\b[A-Za-z_]\w*\b)/g;
  let at = 0;
  for (const m of text.matchAll(pattern)) {
    pre.append(text.slice(at, m.index));
    const token = m[0];
    let cls = null;
    if (token.startsWith('"') || token.startsWith("'")) cls = "tok-str";
    else if (token.startsWith("#") || token.startsWith("//")) cls = "tok-com";
    else if (/^\d/.test(token)) cls = "tok-num";
    else if (token.match(KEYWORDS)) cls = "tok-kw";
    pre.append(cls ? h("span", { class: cls }, token) : token);
    at = m.index + token.length;
  }
  pre.append(text.slice(at));
  return pre;
}

function preview(a) {
  if (a.type === "image" || (a.content_type ?? "").startsWith("image/")) {
    const img = h("img", { alt: a.title, class: "preview-image" });
    artifactBlob(a).then((blob) => { img.src = URL.createObjectURL(blob); }).catch((error) => img.replaceWith(h("p", { class: "error" }, errorText(error))));
    return img;
  }
  if (typeof a.preview_text === "string") {
    return a.type === "code" ? highlight(a.preview_text) : h("pre", { class: "text" }, a.preview_text);
  }
  return h("p", {}, "No preview for this kind of file: ", download(a));
}

function reviewPage(main, workspaceId) {
  currentWorkspace = workspaceId;
  const queue = h("div", { id: "queue" }, h("p", { class: "muted" }, "Loading…"));
  main.append(h("h1", {}, "Review"),
    h("p", { class: "muted", id: "shortcuts" }, "Keys: j / k next and previous, a approve, r reject, c comment."), queue);
  let items = [];
  let selected = 0;
  function draw() {
    if (!items.length) return fill(queue, h("p", { class: "muted" }, "Nothing waits for review."));
    selected = Math.min(selected, items.length - 1);
    fill(queue, ...items.map((a, i) => {
      const line = statusLine(`review-status-${a._id}`);
      const comment = field(`comment-${a._id}`, { tag: "textarea", rows: 2, placeholder: "comment (optional)", "aria-label": `comment on ${a.title}`, class: "comment" });
      const decide = (review_state) => act(line, () => client.mutation("corral/artifacts:update_review_state",
        { artifact_id: a._id, review_state, ...(comment.value ? { comment: comment.value } : {}) }), `${review_state}.`)
        .then(() => clearDraft(`comment-${a._id}`)).catch(() => {});
      const card = h("article", { class: `review card${i === selected ? " selected" : ""}`, tabindex: "0", "data-artifact": a._id,
        "aria-label": `${a.title}, ${a.type}`, onfocus: () => { selected = i; mark(); } },
        h("h2", {}, a.title, " ", h("span", { class: "muted" }, `${a.type} · ${a.size} bytes`)),
        a.sandbox_path && h("p", { class: "muted" }, h("code", {}, a.sandbox_path), " · ", h("a", { href: `#/run/${a.sandbox_run_id}` }, "its run")),
        preview(a), comment,
        h("div", { class: "inline" },
          h("button", { type: "button", class: "approve", onclick: () => decide("approved") }, "Approve (a)"),
          h("button", { type: "button", class: "reject", onclick: () => decide("rejected") }, "Reject (r)"), line));
      card.decide = decide;
      card.comment = comment;
      return card;
    }));
    mark();
  }
  function mark() {
    [...queue.querySelectorAll("article.review")].forEach((el, i) => el.classList.toggle("selected", i === selected));
  }
  pagedList(queue, "corral/artifacts:list_pending", { workspace_id: workspaceId }, (_box, list) => {
    const focused = document.activeElement?.closest?.("article.review")?.dataset.artifact;
    const onCard = !document.activeElement || document.activeElement === document.body || focused;
    items = list;
    draw();
    const again = focused && queue.querySelector(`article[data-artifact="${focused}"]`);
    if (onCard) (again || queue.querySelectorAll("article.review")[selected])?.focus();
  }, { more: "Show more artifacts" });
  const onKey = (e) => {
    if (route().page !== "review") return document.removeEventListener("keydown", onKey);
    if (e.target.matches?.("input, textarea, select") || e.ctrlKey || e.metaKey || e.altKey) return;
    const cards = [...queue.querySelectorAll("article.review")];
    if (!cards.length) return;
    if (e.key === "j" || e.key === "k") {
      selected = Math.max(0, Math.min(cards.length - 1, selected + (e.key === "j" ? 1 : -1)));
      cards[selected].focus();
    } else if (e.key === "a") cards[selected].decide("approved");
    else if (e.key === "r") cards[selected].decide("rejected");
    else if (e.key === "c") { e.preventDefault(); cards[selected].comment.focus(); }
    else return;
    e.preventDefault();
  };
  document.addEventListener("keydown", onKey);
  stops.push(() => document.removeEventListener("keydown", onKey));
}

// -- audit
function auditPage(main, workspaceId) {
  currentWorkspace = workspaceId;
  const box = h("div", { id: "audit" }, h("p", { class: "muted" }, "Loading…"));
  main.append(h("h1", {}, "Audit log"), h("p", { class: "muted" }, "Every privileged act in this workspace, newest first. Owners and admins only."), box);
  let members = [];
  const entries = pagedList(box, "corral/audit:list", { workspace_id: workspaceId }, (_box, page) => draw(page), { more: "Show more entries" });
  live("corral/workspace_members:list_members", { workspace_id: workspaceId }, (list) => { members = list ?? []; entries.redraw(); });
  function draw(page) {
    if (!page.length) return fill(box, h("p", { class: "muted" }, "Nothing yet."));
    const show = (v) => (v === null || v === undefined ? "—" : JSON.stringify(v));
    fill(box, h("table", { class: "audit" }, h("thead", {}, h("tr", {}, ["when", "who", "did", "to", "before", "after"].map((c) => h("th", {}, c)))),
      h("tbody", {}, page.map((e) => h("tr", {}, h("td", {}, when(e.at)), h("td", { title: e.actor }, person(e.actor, members)),
        h("td", {}, h("code", {}, e.action)), h("td", { class: "wrap", title: e.target }, e.target === workspaceId ? "this workspace" : e.target.includes("|") ? person(e.target, members) : e.target),
        h("td", { class: "wrap" }, show(e.before)), h("td", { class: "wrap" }, show(e.after)))))));
  }
}

// -- operator: every sandbox and runner of the node (corral/operator:*), live; refused to anyone else
function e2bLines(key) {
  return [`export E2B_API_URL=${origin}/e2b`, `export E2B_SANDBOX_URL=${origin}/envd`, `export E2B_API_KEY=${key}`].join("\n");
}

function operatorPage(main) {
  currentWorkspace = null;
  const sandboxes = h("div", { id: "operator-sandboxes" }, h("p", { class: "muted" }, "Loading…"));
  const runners = h("div", { id: "operator-runners" }, h("p", { class: "muted" }, "Loading…"));
  main.append(h("h1", {}, "Operator"),
    h("p", { class: "muted" }, "Every sandbox of this node, whoever owns it, and the runners that host them. For the node's operators only."),
    h("section", { "aria-labelledby": "sandboxes-h" }, h("h2", { id: "sandboxes-h" }, "Sandboxes"), sandboxes),
    h("section", { "aria-labelledby": "runners-h", class: "operator-only", hidden: true }, h("h2", { id: "runners-h" }, "Runners"), runners),
    h("section", { "aria-labelledby": "connect-h", class: "operator-only", hidden: true }, h("h2", { id: "connect-h" }, "Connect"),
      h("p", {}, "Convex clients: ", h("code", {}, `new ConvexClient("${origin}")`), ". The E2B SDK, with a key from ",
        h("code", {}, "corral api-key create"), " or a workspace's API keys:"),
      h("pre", {}, e2bLines("e2b_…"))));
  const sandboxRow = (b) => h("tr", { "data-sandbox": b.sandbox_id },
    h("td", {}, h("code", {}, b.sandbox_id)),
    h("td", {}, h("span", { class: `state ${b.state}` }, b.state + (b.state === "paused" && b.paused_reason ? ` (${b.paused_reason})` : ""))),
    h("td", {}, b.template), h("td", {}, b.runner),
    h("td", { class: b.owner.startsWith("workspace|") ? null : "wrap", title: b.owner }, b.owner.startsWith("workspace|") ? h("a", { href: `#/w/${b.owner.split("|")[1]}` }, "a workspace") : person(b.owner)),
    h("td", {}, when(b.started_at)), h("td", {}, b.state === "running" ? when(b.end_at) : "—"), h("td", {}, when(b.last_activity)));
  const sandboxTable = (list) => h("table", { class: "sandboxes" },
    h("thead", {}, h("tr", {}, ["sandbox", "state", "template", "runner", "owner", "started", "ends", "last activity"].map((c) => h("th", {}, c)))),
    h("tbody", {}, list.map(sandboxRow)));
  live("corral/operator:sandboxes", {}, (found, error) => {
    for (const section of main.querySelectorAll(".operator-only")) section.hidden = Boolean(error);
    if (error) return problem(sandboxes, error);
    const c = found.counts;
    fill(sandboxes, 
      h("p", { class: "muted", id: "sandbox-counts" }, `${c.running ?? 0} running, ${c.paused ?? 0} paused, ${c.lost ?? 0} lost, ${c.killed}${found.killed_capped ? "+" : ""} killed`),
      found.sandboxes.length ? sandboxTable(found.sandboxes) : h("p", { class: "muted" }, "No running or paused sandbox."),
      found.more ? h("p", {}, `… and ${found.more} more.`) : null,
      found.killed.length ? h("details", {}, h("summary", {}, `latest killed (${found.killed.length})`), sandboxTable(found.killed)) : null);
  });
  live("corral/operator:runners", {}, (found, error) => {
    if (error) return problem(runners, error);
    if (!found.length) return fill(runners, h("p", { class: "muted" }, "No runner has registered."));
    fill(runners, h("table", { class: "runners" },
      h("thead", {}, h("tr", {}, ["runner", "state", "capacity", "sandboxes", "labels", "templates", "last heartbeat"].map((c) => h("th", {}, c)))),
      h("tbody", {}, found.map((r) => h("tr", { "data-runner": r.name },
        h("td", {}, h("code", {}, r.name)), h("td", {}, h("span", { class: `state ${r.state === "up" ? "running" : "lost"}` }, r.state)),
        h("td", {}, String(r.capacity)), h("td", {}, String(r.sandboxes)), h("td", {}, (r.labels ?? []).join(", ") || "—"),
        h("td", {}, (r.templates ?? []).join(", ") || "—"), h("td", {}, when(r.last_heartbeat)))))));
  });
}

// -- start
async function start() {
  const match = location.hash.match(/^#login=(.+)$/);
  if (match) {
    history.replaceState(null, "", location.pathname + "#/"); // the ticket works once: keep it out of history
    try { await signInWith(decodeURIComponent(match[1])); } catch (error) { state.ended = null; state.notice = errorText(error); }
  } else if (session()) {
    client.setAuth(fetchToken);
  }
  window.addEventListener("hashchange", render);
  render();
}
start();
