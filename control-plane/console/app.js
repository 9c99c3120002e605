// unitgate console: a page over the control plane's API (/v1/...), no framework.
//
// Rules this file keeps (control-plane/src/console.rs tests some of them):
// - every string from the API is inserted as text (textContent, text nodes), never as HTML;
// - handlers are attached with addEventListener (the Content-Security-Policy refuses inline ones);
// - the token lives in sessionStorage only and leaves the page only in the Authorization header;
// - reads are GETs, every change is a POST the operator confirmed in a dialog.
"use strict";

(function () {
  const TOKEN_KEY = "unitgate-console-token";
  const POLL_MS = 1000; // GET /v1/status at most once a second
  const PLANNED_STEPS = ["freeze", "converge_freeze", "replication", "switch", "converge_switch",
    "unfreeze", "converge_unfreeze"];
  const EMERGENCY_STEPS = ["emergency_switch", "converge_emergency"];

  const state = {
    token: null,
    operator: false,
    status: null,
    table: null,
    tableVersion: -1,
    flips: [],
    flipsVersion: -1,
    flipsAt: 0,
    selected: new Set(),
    detailId: null,
    detail: null,
    tab: "overview",
    timer: null,
    audit: [],
    auditAt: 0,
    generation: 0,
  };

  // ---- small helpers ---------------------------------------------------------------------

  function $(id) {
    return document.getElementById(id);
  }

  // An element; children that are not nodes become text nodes. Attribute names are literals
  // of this file; event handlers go through `on: {event: fn}`.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [key, value] of Object.entries(attrs)) {
        if (value === undefined || value === null || value === false) continue;
        if (key === "on") {
          for (const [event, fn] of Object.entries(value)) el.addEventListener(event, fn);
        } else if (key === "text") {
          el.textContent = String(value);
        } else if (key === "checked" || key === "disabled" || key === "selected" || key === "value") {
          el[key] = value;
        } else {
          el.setAttribute(key, value === true ? "" : String(value));
        }
      }
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function show(el, visible) {
    el.hidden = !visible;
  }

  function fmtTime(ms) {
    if (!ms) return "";
    const d = new Date(ms);
    const pad = (n) => String(n).padStart(2, "0");
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function fmtUtc(ms) {
    if (!ms) return "";
    return new Date(ms).toISOString().slice(0, 19).replace("T", " ") + " UTC";
  }

  // What is left until `ms`: "4 min 05 s left", or that the deadline passed.
  function fmtLeft(ms) {
    const left = ms - Date.now();
    if (left <= 0) return "deadline passed";
    const s = Math.ceil(left / 1000);
    const hours = Math.floor(s / 3600);
    const minutes = Math.floor((s % 3600) / 60);
    const seconds = String(s % 60).padStart(2, "0");
    return (hours ? hours + " h " + String(minutes).padStart(2, "0") + " min " : minutes ? minutes + " min " : "") +
      seconds + " s left";
  }

  // Counts down every deadline on the page ([data-deadline-ms]) once a second, between polls.
  function tickDeadlines() {
    for (const el of document.querySelectorAll("[data-deadline-ms]")) {
      el.textContent = fmtLeft(Number(el.dataset.deadlineMs));
    }
  }

  function fmtDuration(ms) {
    if (ms === undefined || ms === null || ms < 0) return "";
    if (ms < 1000) return ms + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
    return Math.floor(ms / 60000) + " min " + Math.round((ms % 60000) / 1000) + " s";
  }

  function slotCount() {
    return (state.table && state.table.slots && state.table.slots.count) || 10000;
  }

  function share(slots) {
    return (100 * slots / slotCount()).toFixed(1) + "%";
  }

  function badge(text, cls) {
    return h("span", { class: "badge " + (cls || "") }, text);
  }

  function notice(text) {
    const el = $("notice");
    el.textContent = text;
    show(el, !!text);
  }

  function banner(text) {
    const el = $("banner");
    el.textContent = text || "";
    show(el, !!text);
  }

  // ---- the API ---------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // One call; JSON in and out. A 401 signs out with the reason.
  async function api(method, path, body) {
    const token = state.token;
    if (!token) throw new ApiError(401, "unauthorized", "not signed in");
    const headers = { "Authorization": "Bearer " + token, "Accept": "application/json" };
    const init = { method: method, headers: headers, cache: "no-store", credentials: "omit",
      referrerPolicy: "no-referrer" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, "network", "the control plane cannot be reached");
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null;
    }
    if (response.status === 401) {
      if (state.token === token) {
        signOut("The token is not valid: the control plane refused it (401 Unauthorized). Check it and sign in again.");
      }
      throw new ApiError(401, "unauthorized", "the token is not valid");
    }
    if (!response.ok) {
      const message = (data && data.message) || ("HTTP " + response.status);
      throw new ApiError(response.status, (data && data.error) || "", message);
    }
    return data;
  }

  function notAvailable(e) {
    return e instanceof ApiError && (e.status === 404 || e.status === 405) &&
      (e.code === "not_found" || e.code === "method_not_allowed" || e.code === "");
  }

  function describe(e, what) {
    if (notAvailable(e)) return what + ": not available on this control plane.";
    if (e instanceof ApiError && e.status === 403) return what + ": this token's role may not do that (" + e.message + ").";
    return what + ": " + (e && e.message ? e.message : String(e));
  }

  // ---- sign-in ---------------------------------------------------------------------------

  async function signIn(token) {
    state.generation += 1;
    state.token = token;
    const error = $("signin-error");
    show(error, false);
    let status;
    try {
      status = await api("GET", "/v1/status");
    } catch (e) {
      if (e.status === 401) return; // signOut showed why
      state.token = null;
      error.textContent = e.status === 403
        ? "This token may not read the control plane's status (a gateway token?). Use a viewer, operator or admin token."
        : "Cannot sign in: " + e.message;
      show(error, true);
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    // There is no whoami: an operator call that changes nothing (planning an empty table)
    // tells the roles apart. A viewer's refused probe is audited like any refused call.
    state.operator = false;
    try {
      await api("POST", "/v1/table/plan", {});
      state.operator = true;
    } catch (e) {
      state.operator = e.status !== 403 && e.status !== 401 && e.status !== 0 && e.status < 500;
    }
    if (!state.token) return;
    $("token").value = "";
    show($("signin"), false);
    show($("app"), true);
    show($("signout"), true);
    const who = $("who");
    who.textContent = state.operator ? "operator" : "viewer (read only)";
    who.className = "badge " + (state.operator ? "warn" : "");
    show(who, true);
    state.status = status;
    schedule(0);
  }

  function signOut(reason) {
    state.generation += 1;
    state.token = null;
    state.operator = false;
    sessionStorage.removeItem(TOKEN_KEY);
    if (state.timer) clearTimeout(state.timer);
    state.timer = null;
    Object.assign(state, { status: null, table: null, tableVersion: -1, flips: [], flipsVersion: -1,
      detailId: null, detail: null, audit: [] });
    state.selected.clear();
    for (const id of ["regions", "running", "flip-detail", "past", "gateways", "audit", "dryrun-result", "multi-bar"]) {
      $(id).replaceChildren();
    }
    const dialog = $("confirm-dialog");
    if (dialog.open) dialog.close();
    show($("app"), false);
    show($("signout"), false);
    show($("who"), false);
    show($("version-in-force"), false);
    $("live").textContent = "";
    banner("");
    notice("");
    show($("signin"), true);
    const error = $("signin-error");
    error.textContent = reason || "";
    show(error, !!reason);
  }

  // ---- polling ---------------------------------------------------------------------------

  function schedule(delay) {
    if (state.timer) clearTimeout(state.timer);
    const generation = state.generation;
    state.timer = setTimeout(() => tick(generation), delay);
  }

  async function tick(generation) {
    if (!state.token || generation !== state.generation) return;
    const started = Date.now();
    try {
      const status = await api("GET", "/v1/status");
      if (generation !== state.generation) return;
      state.status = status;
      if (status.version !== state.tableVersion) {
        // Slot ranges and the regions' order; no table stored yet is a 404.
        try {
          const stored = await api("GET", "/v1/table");
          state.table = stored && stored.table ? stored.table : null;
        } catch (e) {
          if (e.status !== 404) throw e;
          state.table = null;
        }
        state.tableVersion = status.version;
      }
      const running = status.units.some((u) => u.flip) || state.flips.some((f) => f.state === "running");
      if (running || state.tab === "operations" || status.version !== state.flipsVersion ||
          Date.now() - state.flipsAt > 10000) {
        state.flips = (await api("GET", "/v1/flips")) || [];
        state.flipsVersion = status.version;
        state.flipsAt = Date.now();
      }
      if (!state.detailId) {
        const live = state.flips.filter((f) => f.state === "running");
        if (live.length) state.detailId = live[live.length - 1].id;
      }
      if (state.detailId && (!state.detail || state.detail.id !== state.detailId || state.detail.state === "running")) {
        await loadDetail();
      }
      if (state.tab === "audit" && Date.now() - state.auditAt > 5000) await loadAudit();
      if (generation !== state.generation) return;
      banner("");
      render();
      $("live").textContent = "live, updated " + fmtTime(Date.now());
    } catch (e) {
      if (generation !== state.generation || e.status === 401) return;
      banner("Cannot read the control plane: " + e.message + " (retrying)");
    }
    if (generation === state.generation) schedule(Math.max(0, POLL_MS - (Date.now() - started)));
  }

  async function loadDetail() {
    const id = state.detailId;
    try {
      const flip = await api("GET", "/v1/flips/" + encodeURIComponent(id));
      if (state.detailId === id) state.detail = flip;
    } catch (e) {
      if (e.status === 401) return;
      if (state.detailId === id) state.detail = { id: id, missing: describe(e, "Operation " + id) };
    }
  }

  async function loadAudit() {
    try {
      state.audit = (await api("GET", "/v1/audit?limit=1000")) || [];
      state.auditAt = Date.now();
      banner("");
    } catch (e) {
      if (e.status !== 401) banner(describe(e, "Audit log"));
    }
    renderAudit();
  }

  // ---- the model -------------------------------------------------------------------------

  function regions() {
    const names = [];
    const add = (name) => {
      if (name && !names.includes(name)) names.push(name);
    };
    if (state.table && Array.isArray(state.table.regions)) state.table.regions.forEach((r) => add(r.name));
    if (state.status) {
      state.status.units.forEach((u) => add(u.region));
      state.status.gateways.forEach((g) => add(g.region));
    }
    return names;
  }

  function unitStatus(name) {
    return state.status ? state.status.units.find((u) => u.name === name) : null;
  }

  function slotRanges(name) {
    const unit = state.table && Array.isArray(state.table.units) ? state.table.units.find((u) => u.name === name) : null;
    if (!unit || !Array.isArray(unit.slots)) return "";
    return unit.slots.map((r) => (r[0] === r[1] ? String(r[0]) : r[0] + "-" + r[1])).join(", ");
  }

  // The units an operation moves: `units` when the record has it, else its one unit.
  function flipUnits(flip) {
    if (Array.isArray(flip.units) && flip.units.length) return flip.units;
    return flip.unit ? [{ unit: flip.unit, from: flip.from, to: flip.to }] : [];
  }

  function movesText(flip) {
    const moves = flipUnits(flip).map((m) => m.unit + " " + m.from + " -> " + m.to).join(", ");
    return flip.operation ? flip.operation + ": " + moves : moves;
  }

  // ---- rendering -------------------------------------------------------------------------

  function render() {
    const status = state.status;
    if (!status) return;
    const version = $("version-in-force");
    version.textContent = "version in force: " + status.version;
    show(version, true);
    renderOverview();
    renderOperations();
    renderGateways();
    if (state.tab === "audit") renderAudit();
    const select = $("dry-region");
    const names = regions();
    if (select.options.length !== names.length) {
      const current = select.value;
      select.replaceChildren(...names.map((n) => h("option", { value: n, selected: n === current }, n)));
    }
  }

  function gatewayRow(g, version) {
    const badges = [];
    if (g.diverged) badges.push(badge("diverged", "bad"));
    if (g.stale) badges.push(badge("stale", "bad"));
    if (!g.stale && !g.diverged) {
      badges.push(g.applied_version === version ? badge("current", "ok") : badge("behind", "warn"));
    }
    if (g.rejected) badges.push(badge("refused v" + (g.rejected.version === null || g.rejected.version === undefined ? "?" : g.rejected.version), "bad"));
    return h("tr", { "data-gateway": g.id },
      h("td", { class: "mono" }, g.id),
      h("td", null, "v" + g.applied_version),
      h("td", null, badges),
      h("td", { class: "muted" }, fmtTime(g.last_seen_ms)));
  }

  function renderOverview() {
    const status = state.status;
    const container = $("regions");
    const cards = regions().map((region) => {
      const units = status.units.filter((u) => u.region === region);
      const gateways = status.gateways.filter((g) => g.region === region);
      const slots = units.reduce((n, u) => n + u.slots, 0);
      const head = h("div", { class: "card-head" },
        h("h3", { class: "grow" }, region),
        badge(units.length + (units.length === 1 ? " unit, " : " units, ") + share(slots) + " of users"));
      if (state.operator) {
        head.append(
          h("button", { type: "button", class: "action", "data-action": "evacuate", "data-region": region,
            on: { click: () => openEvacuate(region) } }, "Evacuate…"),
          h("button", { type: "button", class: "action", "data-action": "restore", "data-region": region,
            on: { click: () => openRestore(region) } }, "Restore…"));
      }
      const gatewayTable = gateways.length
        ? h("table", { class: "gateways" },
          h("thead", null, h("tr", null, h("th", null, "gateway"), h("th", null, "applied"), h("th", null, ""), h("th", null, "last seen"))),
          h("tbody", null, gateways.map((g) => gatewayRow(g, status.version))))
        : h("p", { class: "muted" }, "No gateway seen in this region.");
      const unitRows = units.map((u) => {
        const flipping = !!u.flip;
        const stateCell = h("td", null,
          flipping ? badge("flipping", "state-flipping") : null, " ",
          badge(u.state, "state-" + u.state),
          u.locked ? [" ", h("span", { class: "badge bad", title: u.locked }, "locked")] : null,
          flipping ? [" ", h("button", { type: "button", class: "clickable mono", "data-flip": u.flip,
            on: { click: () => selectFlip(u.flip) } }, u.flip)] : null);
        const row = h("tr", { "data-unit": u.name, "data-region": u.region, "data-state": flipping ? "flipping" : u.state });
        if (state.operator) {
          row.append(h("td", null, h("input", { type: "checkbox", class: "select-unit", "data-unit": u.name,
            "aria-label": "select " + u.name, checked: state.selected.has(u.name),
            on: { change: (ev) => toggleSelected(u.name, ev.target.checked) } })));
        }
        row.append(
          h("td", null, u.center ? h("span", { class: "center", title: "center unit" }, "★ ") : null, h("strong", null, u.name)),
          h("td", { class: "mono" }, slotRanges(u.name)),
          h("td", null, share(u.slots)),
          stateCell,
          h("td", { class: "muted" }, u.standby ? "standby " + u.standby : ""));
        if (state.operator) {
          row.append(h("td", null, h("button", { type: "button", class: "action", "data-action": "flip",
            "data-unit": u.name, disabled: flipping, on: { click: () => openFlip([u.name]) } }, "Flip…")));
        }
        return row;
      });
      const unitTable = units.length
        ? h("table", { class: "units" },
          h("thead", null, h("tr", null, state.operator ? h("th", null, "") : null,
            h("th", null, "unit"), h("th", null, "slots"), h("th", null, "users"), h("th", null, "state"),
            h("th", null, ""), state.operator ? h("th", null, "") : null)),
          h("tbody", null, unitRows))
        : h("p", { class: "muted" }, "No unit lives here.");
      return h("div", { class: "card", "data-region": region }, head, unitTable, gatewayTable);
    });
    container.replaceChildren(...cards);
    renderMultiBar();
  }

  function toggleSelected(name, on) {
    if (on) state.selected.add(name);
    else state.selected.delete(name);
    renderMultiBar();
  }

  function renderMultiBar() {
    const bar = $("multi-bar");
    if (!state.operator || state.selected.size === 0) {
      bar.replaceChildren();
      show(bar, false);
      return;
    }
    const names = [...state.selected].filter((n) => unitStatus(n));
    bar.replaceChildren(
      h("span", null, names.length + " selected: " + names.join(", ")),
      h("button", { type: "button", class: "action", id: "multi-flip", on: { click: () => openFlip(names) } },
        "Flip selected units…"),
      h("button", { type: "button", on: { click: () => { state.selected.clear(); render(); } } }, "Clear selection"));
    show(bar, true);
  }

  function outcomeBadge(flipState) {
    const cls = { running: "state-flipping", succeeded: "ok", rolled_back: "warn", failed: "bad" }[flipState] || "";
    return badge(flipState, cls);
  }

  function renderOperations() {
    const running = state.flips.filter((f) => f.state === "running");
    $("running").replaceChildren(running.length
      ? h("ul", null, running.map((f) => h("li", null,
        h("button", { type: "button", class: "clickable mono", "data-flip": f.id, on: { click: () => selectFlip(f.id) } }, f.id),
        " ", f.mode, " ", movesText(f), " — step ",
        f.steps.length ? f.steps[f.steps.length - 1].name : "starting")))
      : h("p", { class: "muted" }, "No operation is running."));
    renderDetail();
    const past = state.flips.filter((f) => f.state !== "running").slice().reverse().slice(0, 200);
    $("past").replaceChildren(past.length
      ? h("table", { id: "past-table" },
        h("thead", null, h("tr", null, ["operation", "moves", "mode", "outcome", "reason", "by", "started", "took"]
          .map((t) => h("th", null, t)))),
        h("tbody", null, past.map((f) => h("tr", { "data-flip": f.id },
          h("td", null, h("button", { type: "button", class: "clickable mono", on: { click: () => selectFlip(f.id) } }, f.id)),
          h("td", null, movesText(f)),
          h("td", null, f.mode),
          h("td", null, outcomeBadge(f.state), f.error ? h("div", { class: "muted" }, f.error) : null),
          h("td", { class: "reason" }, f.reason),
          h("td", null, f.actor),
          h("td", { class: "muted" }, fmtTime(f.created_at_ms)),
          h("td", { class: "muted" }, f.finished_at_ms ? fmtDuration(f.finished_at_ms - f.created_at_ms) : "")))))
      : h("p", { class: "muted" }, "No operation has ended yet."));
  }

  function selectFlip(id) {
    state.detailId = id;
    state.detail = null;
    switchTab("operations");
    schedule(0);
  }

  function convergedText(version) {
    // A status read before this version was stored says nothing about it yet.
    if (!state.status || state.status.version < version) return "";
    const gateways = (state.status ? state.status.gateways : []).filter((g) => !g.stale);
    const done = gateways.filter((g) => g.applied_version >= version && !g.diverged).length;
    return done + "/" + gateways.length + " gateways applied v" + version;
  }

  function renderDetail() {
    const el = $("flip-detail");
    const flip = state.detail;
    if (!state.detailId) {
      el.replaceChildren(h("p", { class: "muted" }, "Pick an operation below or in the overview."));
      return;
    }
    if (!flip) {
      el.replaceChildren(h("p", { class: "muted" }, "Loading " + state.detailId + "…"));
      return;
    }
    if (flip.missing) {
      el.replaceChildren(h("p", { class: "error" }, flip.missing));
      return;
    }
    const moves = flipUnits(flip);
    const check = flip.replication_check || {};
    // Waiting for an operator's confirmation: until when (the record says so while it waits).
    const waiting = flip.state === "running" && !!check.confirm && !flip.confirmed && !flip.cancel_requested &&
      typeof flip.confirm_by_ms === "number";
    const deadline = waiting
      ? h("div", { class: "deadline", id: "confirm-deadline", "data-confirm-by": flip.confirm_by_ms },
        "Waits for a confirmation until ",
        h("strong", { class: "deadline-local" }, fmtTime(flip.confirm_by_ms)), " (local time, ",
        h("span", { class: "deadline-utc mono" }, fmtUtc(flip.confirm_by_ms)), "), then rolls back: ",
        h("span", { class: "countdown", "data-deadline-ms": flip.confirm_by_ms }, fmtLeft(flip.confirm_by_ms)))
      : null;
    const steps = flip.steps.map((s) => {
      const cls = s.outcome === "ok" ? "ok" : s.outcome === "failed" ? "failed" : "running";
      const took = s.finished_at_ms ? fmtDuration(s.finished_at_ms - s.started_at_ms)
        : "running for " + fmtDuration(Date.now() - s.started_at_ms);
      return h("li", { class: cls, "data-step": s.name },
        h("strong", null, s.name), " ", badge(s.outcome, cls === "failed" ? "bad" : cls === "ok" ? "ok" : "state-flipping"),
        s.version ? [" ", h("span", { class: "muted" }, convergedText(s.version))] : null,
        " ", h("span", { class: "muted" }, took),
        s.detail ? h("div", { class: "reason muted" }, s.detail) : null,
        deadline && cls === "running" && s.name === "replication" ? deadline : null);
    });
    if (deadline && !flip.steps.some((s) => s.name === "replication" && s.outcome !== "ok" && s.outcome !== "failed")) {
      // The step is not in the record yet: show the deadline on its own line.
      steps.push(h("li", { class: "running", "data-step": "confirmation" }, deadline));
    }
    if (flip.state === "running" && !flip.steps.some((s) => s.name === "rollback")) {
      const order = flip.mode === "emergency" ? EMERGENCY_STEPS : PLANNED_STEPS;
      const done = new Set(flip.steps.map((s) => s.name));
      for (const name of order.filter((n) => !done.has(n))) {
        steps.push(h("li", { class: "pending muted", "data-step": name }, name, " (to come)"));
      }
    }
    const actions = [];
    if (state.operator && flip.state === "running") {
      if (check.confirm && !flip.confirmed) {
        actions.push(h("button", { type: "button", class: "action", "data-action": "confirm",
          on: { click: () => signal(flip.id, "confirm") } }, "Confirm: the data caught up"));
      }
      if (waiting) {
        actions.push(h("button", { type: "button", class: "action", "data-action": "extend",
          on: { click: () => openExtend(flip.id) } }, "Extend…"));
      }
      if (!flip.cancel_requested) {
        actions.push(h("button", { type: "button", class: "action danger", "data-action": "cancel",
          on: { click: () => signal(flip.id, "cancel") } }, "Cancel (roll back)"));
      }
    }
    el.replaceChildren(h("div", { class: "card", id: "flip-card", "data-flip": flip.id, "data-state": flip.state },
      h("div", { class: "card-head" }, h("h3", { class: "grow mono" }, flip.id), flip.operation ? badge(flip.operation) : null,
        outcomeBadge(flip.state), badge(flip.mode)),
      h("table", { class: "plan" }, h("tbody", null, moves.map((m) => h("tr", null,
        h("td", null, h("strong", null, m.unit)), h("td", null, m.from + " -> " + m.to),
        h("td", { class: "muted" }, unitStatus(m.unit) ? share(unitStatus(m.unit).slots) + " of users" : "")))))
      ,
      h("p", null, "Reason: ", h("span", { class: "reason", id: "flip-reason" }, flip.reason)),
      h("p", { class: "muted" }, "By " + flip.actor + ", started " + fmtTime(flip.created_at_ms) +
        (flip.finished_at_ms ? ", ended " + fmtTime(flip.finished_at_ms) : "") +
        (check.confirm ? "; waits for an operator's confirmation" + (flip.confirmed ? " (confirmed)" : "") : "") +
        (check.delay_s ? "; waits " + check.delay_s + " s for replication" : "") +
        (check.url ? "; probes " + check.url : "") +
        (flip.cancel_requested ? "; cancel requested" : "")),
      flip.error ? h("p", { class: "error" }, flip.error) : null,
      h("ol", { class: "timeline" }, steps),
      actions.length ? h("div", { class: "bar" }, actions) : null));
  }

  // Give the operators more time to confirm: POST /v1/flips/{id}/extend {seconds}.
  function openExtend(id) {
    const flip = state.detail && state.detail.id === id ? state.detail : null;
    const minutes = h("input", { id: "dlg-minutes", type: "number", min: "1", max: "1440", step: "1", value: "10", required: true });
    openDialog("Extend the wait of " + id, "Extend", (body) => {
      body.append(
        h("p", null, "Waits for a confirmation until ",
          h("strong", null, flip && flip.confirm_by_ms ? fmtTime(flip.confirm_by_ms) : "?"),
          flip && flip.confirm_by_ms ? " (" + fmtUtc(flip.confirm_by_ms) + ")" : "",
          ". Without one by then, the operation rolls back."),
        field("Add minutes (1 to 1440)", minutes));
    }, async () => {
      const n = Number(minutes.value);
      if (!Number.isInteger(n) || n < 1 || n > 1440) {
        const e = new Error("");
        e.userMessage = "Give a whole number of minutes from 1 to 1440.";
        throw e;
      }
      try {
        await api("POST", "/v1/flips/" + encodeURIComponent(id) + "/extend", { seconds: n * 60 });
      } catch (e) {
        if (notAvailable(e)) e.userMessage = "Extending a wait is not available on this control plane.";
        throw e;
      }
      notice("The wait of " + id + " was extended by " + n + " min.");
      schedule(0);
    });
  }

  async function signal(id, what) {
    try {
      await api("POST", "/v1/flips/" + encodeURIComponent(id) + "/" + what);
      notice((what === "confirm" ? "Confirmed " : "Cancel requested for ") + id + ".");
    } catch (e) {
      if (e.status !== 401) banner(describe(e, what === "confirm" ? "Confirm" : "Cancel"));
    }
    schedule(0);
  }

  function renderGateways() {
    const status = state.status;
    const rows = status.gateways.slice().sort((a, b) => (a.region + a.id).localeCompare(b.region + b.id));
    $("gateways").replaceChildren(rows.length
      ? h("table", { id: "gateways-table" },
        h("thead", null, h("tr", null, ["gateway", "region", "applied", "state", "digest", "last seen", "refused"]
          .map((t) => h("th", null, t)))),
        h("tbody", null, rows.map((g) => h("tr", { "data-gateway": g.id },
          h("td", { class: "mono" }, g.id),
          h("td", null, g.region),
          h("td", null, "v" + g.applied_version),
          h("td", null, g.diverged ? badge("diverged", "bad") : null, g.stale ? badge("stale", "bad") : null,
            !g.stale && !g.diverged ? (g.applied_version === status.version ? badge("current", "ok") : badge("behind", "warn")) : null),
          h("td", { class: "mono" }, g.digest ? g.digest.slice(0, 19) : ""),
          h("td", { class: "muted" }, fmtTime(g.last_seen_ms)),
          h("td", { class: "reason" }, g.rejected ? "v" + g.rejected.version + ": " + g.rejected.error : "")))))
      : h("p", { class: "muted" }, "No gateway has been seen."));
  }

  function renderAudit() {
    const actor = $("audit-actor").value.trim().toLowerCase();
    const target = $("audit-target").value.trim().toLowerCase();
    const action = $("audit-action").value;
    const select = $("audit-action");
    const kinds = [...new Set(state.audit.map((e) => e.action))].sort();
    if (select.options.length !== kinds.length + 1) {
      select.replaceChildren(h("option", { value: "" }, "any"),
        ...kinds.map((k) => h("option", { value: k, selected: k === action }, k)));
    }
    const entries = state.audit.filter((e) =>
      (!actor || e.actor.toLowerCase().includes(actor)) &&
      (!target || e.target.toLowerCase().includes(target) || (e.flip || "").toLowerCase().includes(target)) &&
      (!action || e.action === action)).slice().reverse();
    $("audit").replaceChildren(entries.length
      ? h("table", { id: "audit-table" },
        h("thead", null, h("tr", null, ["when", "actor", "action", "target", "outcome", "status", "versions", "reason", "detail"]
          .map((t) => h("th", null, t)))),
        h("tbody", null, entries.map((e) => h("tr", null,
          h("td", { class: "muted" }, fmtTime(e.at_ms)),
          h("td", null, e.actor),
          h("td", { class: "mono" }, e.action),
          h("td", null, e.target, e.flip ? h("div", { class: "muted mono" }, e.flip) : null),
          h("td", null, badge(e.outcome, e.outcome === "ok" ? "ok" : e.outcome === "refused" ? "warn" : "bad")),
          h("td", null, e.status || ""),
          h("td", null, (e.version_before !== undefined ? "v" + e.version_before : "") +
            (e.version_after !== undefined ? " -> v" + e.version_after : "")),
          h("td", { class: "reason" }, e.reason || ""),
          h("td", { class: "reason muted" }, e.detail || "")))))
      : h("p", { class: "muted" }, state.auditAt ? "No entry matches." : "Loading…"));
  }

  // ---- dialogs ---------------------------------------------------------------------------

  let dialogSubmit = null;

  // Open the confirmation dialog: `build(body)` fills it, `submit()` runs on Start and returns
  // a promise; an error keeps the dialog open and shows why.
  function openDialog(title, startLabel, build, submit) {
    const dialog = $("confirm-dialog");
    $("confirm-title").textContent = title;
    $("confirm-go").textContent = startLabel;
    const body = $("confirm-body");
    body.replaceChildren();
    build(body);
    const error = $("confirm-error");
    show(error, false);
    dialogSubmit = async () => {
      $("confirm-go").disabled = true;
      try {
        await submit();
        dialog.close();
      } catch (e) {
        if (e.status === 401) return;
        error.textContent = e.userMessage || describe(e, title);
        show(error, true);
      } finally {
        $("confirm-go").disabled = false;
      }
    };
    dialog.showModal();
  }

  function field(label, input) {
    return h("label", null, label + " ", input);
  }

  function checkControls() {
    const kind = h("select", { id: "dlg-check" },
      h("option", { value: "none" }, "none: switch when the freeze is applied"),
      h("option", { value: "confirm" }, "wait for an operator's confirmation"),
      h("option", { value: "delay" }, "wait a fixed delay"));
    const seconds = h("input", { id: "dlg-delay", type: "number", min: "0", max: "3600", value: "5" });
    const timeout = h("input", { id: "dlg-timeout", type: "number", min: "1", max: "86400", placeholder: "60" });
    return {
      nodes: [field("Replication check", kind), field("Delay (s)", seconds), field("Confirmation timeout (s)", timeout)],
      kind: kind,
      value: () => {
        const t = timeout.value ? Number(timeout.value) : undefined;
        if (kind.value === "confirm") return { confirm: true, timeout_s: t };
        if (kind.value === "delay") return { delay_s: Number(seconds.value || 0) };
        return undefined;
      },
    };
  }

  function planTable(moves, mode) {
    const rows = moves.map((m) => {
      const unit = unitStatus(m.unit);
      const same = m.to && m.to === m.from;
      return h("tr", { "data-unit": m.unit },
        h("td", null, h("strong", null, m.unit), unit && unit.center ? " (center)" : ""),
        h("td", null, m.from + " -> " + (m.to || "?"), same ? h("span", { class: "error" }, " already there") : null),
        h("td", null, unit ? share(unit.slots) + " of users" : ""),
        h("td", { class: "muted" }, mode === "planned" ? "writes freeze" : "no freeze"));
    });
    const slots = moves.reduce((n, m) => n + ((unitStatus(m.unit) || {}).slots || 0), 0);
    const names = moves.map((m) => m.unit).join(", ");
    return [
      h("table", { class: "plan", id: "dlg-plan" }, h("tbody", null, rows)),
      h("p", { id: "dlg-summary" }, share(slots) + " of users move. ",
        mode === "planned"
          ? "Planned: writes of " + names + " are refused (503) from the freeze until the unfreeze; reads keep flowing; any failure rolls back."
          : "Emergency: switches at once without waiting for replication and without a freeze; writes not yet replicated may be lost."),
    ];
  }

  function openFlip(names) {
    const units = names.map(unitStatus).filter(Boolean);
    if (!units.length) return;
    const multi = units.length > 1;
    const target = h("select", { id: "dlg-to" },
      h("option", { value: "" }, multi ? "each to its standby" : "its standby" + (units[0].standby ? " (" + units[0].standby + ")" : "")),
      regions().map((r) => h("option", { value: r }, r)));
    const mode = h("select", { id: "dlg-mode" }, h("option", { value: "planned" }, "planned"), h("option", { value: "emergency" }, "emergency"));
    const reason = h("input", { id: "dlg-reason", type: "text", required: true, maxlength: "1000" });
    const check = checkControls();
    const plan = h("div", { id: "dlg-plan-box" });
    const moves = () => units.map((u) => ({ unit: u.name, from: u.region, to: target.value || u.standby || "" }));
    const refresh = () => plan.replaceChildren(...planTable(moves(), mode.value));
    const title = multi ? "Flip " + units.length + " units" : "Flip " + units[0].name;
    openDialog(title, "Start flip", (body) => {
      body.append(plan, field("To", target), field("Mode", mode), ...check.nodes, field("Reason", reason));
      target.addEventListener("change", refresh);
      mode.addEventListener("change", refresh);
      refresh();
    }, async () => {
      const list = moves();
      const missing = list.find((m) => !m.to);
      if (missing) {
        const e = new Error("");
        e.userMessage = missing.unit + " has no standby: choose a region.";
        throw e;
      }
      const body = { mode: mode.value, reason: reason.value };
      if (mode.value === "planned") {
        const c = check.value();
        if (c) body.replication_check = c;
      }
      let accepted;
      if (!multi) {
        body.to = list[0].to;
        accepted = await api("POST", "/v1/units/" + encodeURIComponent(list[0].unit) + "/flip", body);
      } else {
        body.units = list.map((m) => m.unit);
        if (target.value) body.to = target.value;
        else body.placement = Object.fromEntries(list.map((m) => [m.unit, m.to]));
        try {
          accepted = await api("POST", "/v1/flips", body);
        } catch (e) {
          if (notAvailable(e)) e.userMessage = "Multi-unit flips are not available on this control plane.";
          throw e;
        }
      }
      started(accepted, title);
    });
  }

  function started(accepted, what) {
    state.selected.clear();
    if (accepted && accepted.id) {
      notice(what + ": started as " + accepted.id + ".");
      selectFlip(accepted.id);
    } else {
      notice(what + ": accepted.");
      schedule(0);
    }
  }

  function openEvacuate(region) {
    const units = state.status.units.filter((u) => u.region === region);
    const target = h("select", { id: "dlg-to" }, h("option", { value: "" }, "each unit to its standby (or by capacity)"),
      regions().filter((r) => r !== region).map((r) => h("option", { value: r }, r)));
    const mode = h("select", { id: "dlg-mode" }, h("option", { value: "planned" }, "planned"), h("option", { value: "emergency" }, "emergency"));
    const reason = h("input", { id: "dlg-reason", type: "text", required: true, maxlength: "1000" });
    const check = checkControls();
    const plan = h("div", { id: "dlg-plan-box" });
    const refresh = () => plan.replaceChildren(...(units.length
      ? planTable(units.map((u) => ({ unit: u.name, from: region, to: target.value || u.standby || "" })), mode.value)
      : [h("p", { class: "muted" }, "No unit lives in " + region + ".")]));
    openDialog("Evacuate " + region, "Start evacuation", (body) => {
      body.append(plan, field("To", target), field("Mode", mode), ...check.nodes, field("Reason", reason));
      target.addEventListener("change", refresh);
      mode.addEventListener("change", refresh);
      refresh();
    }, async () => {
      const body = { mode: mode.value, reason: reason.value };
      if (target.value) body.to = target.value;
      if (mode.value === "planned") {
        const c = check.value();
        if (c) body.replication_check = c;
      }
      let accepted;
      try {
        accepted = await api("POST", "/v1/regions/" + encodeURIComponent(region) + "/evacuate", body);
      } catch (e) {
        if (notAvailable(e)) e.userMessage = "Region evacuation is not available on this control plane.";
        throw e;
      }
      started(accepted, "Evacuation of " + region);
    });
  }

  function openRestore(region) {
    const reason = h("input", { id: "dlg-reason", type: "text", required: true, maxlength: "1000" });
    const check = checkControls();
    openDialog("Restore " + region, "Start restore", (body) => {
      body.append(
        h("p", null, "Puts back, as one planned flip, the units the last evacuation of " + region +
          " moved: their writes freeze from the freeze until the unfreeze."),
        ...check.nodes,
        field("Reason", reason));
    }, async () => {
      let accepted;
      const body = { reason: reason.value };
      const c = check.value();
      if (c) body.replication_check = c;
      try {
        accepted = await api("POST", "/v1/regions/" + encodeURIComponent(region) + "/restore", body);
      } catch (e) {
        if (notAvailable(e)) e.userMessage = "Region restore is not available on this control plane.";
        throw e;
      }
      started(accepted, "Restore of " + region);
    });
  }

  // ---- dry run ---------------------------------------------------------------------------

  // One row of the dry run's answer: a label and its value (text), named for tests and scripts.
  function dryRow(name, label, ...value) {
    return h("tr", { "data-field": name }, h("th", null, label), h("td", null, value));
  }

  function orNone(value) {
    return value === undefined || value === null || value === "" ? "—" : String(value);
  }

  const ACTION_TEXT = {
    forward: "forward: the request is served",
    write_frozen: "write_frozen: a write to a frozen unit is refused (503)",
    missing_key: "missing_key: no routing key found, refused (400)",
    no_route: "no_route: no route matches (404)",
  };

  function renderDecision(answer) {
    const d = (answer && answer.decision) || {};
    const version = answer && answer.version !== undefined ? answer.version : d.table_version;
    const via = Array.isArray(d.forward_via) && d.forward_via.length ? " via " + d.forward_via.join(", ") : "";
    const forwarded = d.cross_region
      ? h("span", null, badge("forwarded", "warn"), " " + orNone(d.entry_region) + " -> " + orNone(d.region) + via)
      : h("span", null, badge("local", "ok"), d.region ? " served in " + d.region + ", where it enters" : "");
    const notes = Array.isArray(answer && answer.notes) ? answer.notes : [];
    return [
      h("p", null, "Against version ", h("strong", { id: "dryrun-version" }, orNone(version)), " of the table:"),
      h("table", { class: "plan decision", id: "dryrun-decision", "data-unit": orNone(d.unit),
        "data-region": orNone(d.region), "data-forwarded": d.cross_region ? "yes" : "no", "data-version": orNone(version) },
      h("tbody", null,
        dryRow("unit", "unit", h("strong", null, orNone(d.unit)), d.unit_state ? " (" + d.unit_state + ")" : ""),
        dryRow("slot", "slot", orNone(d.slot), d.pinned ? " (pinned)" : "",
          d.key !== undefined && d.key !== null ? h("span", { class: "muted" }, " key " + d.key + (d.key_source ? " from " + d.key_source : "")) : null),
        dryRow("region", "served in", h("strong", null, orNone(d.region))),
        dryRow("forwarded", "forwarded", forwarded),
        dryRow("action", "action", h("span", { class: "mono" }, ACTION_TEXT[d.action] || orNone(d.action))),
        dryRow("route", "route", orNone(d.route), d.class ? " (class " + d.class + ")" : "", d.service ? ", service " + d.service : ""),
        dryRow("entry", "enters", orNone(d.entry_region)))),
      notes.length
        ? h("ul", { id: "dryrun-notes", class: "notes" }, notes.map((n) => h("li", null, n)))
        : null,
      h("details", null, h("summary", null, "The whole decision"), h("pre", null, JSON.stringify(d, null, 2))),
    ];
  }

  async function dryRun() {
    const out = $("dryrun-result");
    const user = $("dry-user").value.trim();
    const body = {
      method: $("dry-method").value,
      path: $("dry-path").value,
    };
    if (user) body.user = user;
    if ($("dry-region").value) body.entry_region = $("dry-region").value;
    out.replaceChildren(h("p", { class: "muted" }, "Asking…"));
    try {
      const answer = await api("POST", "/v1/explain", body);
      out.replaceChildren(...renderDecision(answer).filter(Boolean));
      // An answer from a newer table than the page shows: read the status now.
      if (answer && state.status && answer.version !== state.status.version) schedule(0);
    } catch (e) {
      if (e.status === 401) return;
      out.replaceChildren(h("p", { class: "error" }, notAvailable(e)
        ? "The dry run is not available on this control plane."
        : e instanceof ApiError && e.status === 409 ? "No table is stored yet: there is nothing to explain against."
          : describe(e, "Dry run")));
    }
  }

  // ---- tabs and start --------------------------------------------------------------------

  function switchTab(tab) {
    state.tab = tab;
    for (const button of document.querySelectorAll("#tabs .tab")) {
      button.classList.toggle("selected", button.dataset.tab === tab);
    }
    for (const panel of document.querySelectorAll(".tab-panel")) {
      show(panel, panel.id === "tab-" + tab);
    }
    if (tab === "audit") {
      state.auditAt = 0;
      loadAudit();
    }
  }

  function start() {
    $("signin-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const token = $("token").value.trim();
      if (token) signIn(token);
    });
    $("signout").addEventListener("click", () => signOut(""));
    for (const button of document.querySelectorAll("#tabs .tab")) {
      button.addEventListener("click", () => {
        switchTab(button.dataset.tab);
        schedule(0);
      });
    }
    $("confirm-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      if (dialogSubmit) dialogSubmit();
    });
    $("confirm-cancel").addEventListener("click", () => $("confirm-dialog").close());
    for (const id of ["audit-actor", "audit-target"]) $(id).addEventListener("input", renderAudit);
    $("audit-action").addEventListener("change", renderAudit);
    $("audit-refresh").addEventListener("click", loadAudit);
    $("audit-filter").addEventListener("submit", (ev) => ev.preventDefault());
    $("dryrun-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      dryRun();
    });
    setInterval(tickDeadlines, 1000);
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) signIn(saved);
  }

  start();
})();
