// The ascend-webhooks dashboard: a client of the REST API (/v1), nothing more.
//
// Every value that comes from the API (event payloads, descriptions, URLs, ids) is put on the
// page as text (DOM nodes and textContent), never parsed as HTML: payloads are written by
// whoever publishes events. The token lives in sessionStorage (this tab only) and is sent as a
// bearer token; it never goes into a URL. Routing is by the hash, so a reload keeps the place.
"use strict";

(() => {
  const TOKEN_KEY = "ascend-webhooks.token";
  const PAGE_SIZE = 25;
  // A view with pending deliveries looks again by itself: every REFRESH_MS while an attempt
  // may be under way (from SOON_MS before it is due to FLIGHT_MS after: an attempt may take
  // 15 s, its default timeout), else every SLOW_REFRESH_MS at most, since a delivery may stay
  // pending for hours on the retry schedule.
  const REFRESH_MS = 1500;
  const SLOW_REFRESH_MS = 10000;
  const SOON_MS = 10000;
  const FLIGHT_MS = 30000;
  // The API is served by the same process as this page, beside /dashboard/.
  const API = location.pathname.replace(/dashboard\/[^/]*$/, "") + "v1";
  const STATUSES = ["pending", "succeeded", "failed"];
  const NOT_A_TOKEN =
    "This is not a valid token: a token is printable ASCII only, with no typographic “…” or " +
    "line break in it. Enter a valid token to go on.";

  const main = document.getElementById("main");
  const nav = document.getElementById("nav");
  const signOutButton = document.getElementById("sign-out");

  let session = null; // {admin: boolean, org: string | null} once the token is known good
  let loginMessage = null; // why the sign-in form is shown again: {kind: "ok" | "error", text}
  let flash = null; // a notice for the next view: {kind: "ok" | "error", text}
  let revealed = null; // a key secret just issued: shown once, on the next keys view
  let renderSeq = 0;
  let refreshTimer = null;
  let shown = null; // the view on the page: {hash, data: the JSON it shows, changedAt: ms}
  const orgNames = new Map();

  class ApiError extends Error {
    constructor(status, title, detail) {
      super(detail ? `${title}: ${detail}` : title);
      this.status = status;
      this.title = title;
      this.detail = detail;
    }
  }

  class Unauthorized extends Error {}

  // ---- the API ---------------------------------------------------------------------------

  function path(...parts) {
    return API + "/" + parts.map(segment).join("/");
  }

  // An event id may be "." or "..": as a path segment the URL parser resolves it away, even
  // written %2E. Encoded twice (%252E) it stays; the API decodes that second level for ids,
  // which never hold a "%" of their own.
  function segment(part) {
    const encoded = encodeURIComponent(part);
    return encoded === "." || encoded === ".." ? encoded.replace(/\./g, "%252E") : encoded;
  }

  function withQuery(url, params) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value !== null && value !== undefined && value !== "") query.set(key, value);
    }
    const text = query.toString();
    return text ? `${url}?${text}` : url;
  }

  // Anything else cannot go in a header: fetch() throws a TypeError, which would read as the
  // service not answering.
  function sendable(token) {
    return /^[\x20-\x7e]+$/.test(token);
  }

  async function api(method, url, body) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!sendable(token)) {
      endSession(NOT_A_TOKEN); // as a 401 would: a token kept in the tab is not asked again
      throw new Unauthorized();
    }
    const headers = { Authorization: `Bearer ${token}` };
    const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (err) {
      throw new ApiError(0, "The service did not answer", String((err && err.message) || err));
    }
    const text = await response.text();
    let doc = null;
    if (text) {
      try {
        doc = JSON.parse(text);
      } catch {
        doc = null;
      }
    }
    const detail = doc && typeof doc.detail === "string" ? doc.detail : "";
    if (response.status === 401) {
      endSession(
        `The API refused this token (401${detail ? ": " + detail : ""}). ` +
          "Enter a valid token to go on.",
      );
      throw new Unauthorized();
    }
    if (!response.ok) {
      const title = doc && typeof doc.title === "string" ? doc.title : `HTTP ${response.status}`;
      throw new ApiError(response.status, title, detail);
    }
    return doc;
  }

  // Who the token is: an admin token may list admin tokens; an organization's token gets 403.
  async function identify() {
    try {
      await api("GET", path("tokens"));
      return { admin: true, org: null };
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 403) throw err;
    }
    const orgs = await api("GET", withQuery(path("organizations"), { limit: 1 }));
    const org = orgs.data.length ? orgs.data[0] : null;
    if (org) orgNames.set(org.id, org.name);
    return { admin: false, org: org ? org.id : null };
  }

  async function orgName(org) {
    if (!orgNames.has(org)) {
      const found = await api("GET", path("organizations", org));
      orgNames.set(org, found.name);
    }
    return orgNames.get(org);
  }

  // ---- building the page -----------------------------------------------------------------

  // An element: props are attributes ("class", booleans) or listeners ("onclick"); children
  // are nodes or strings, and strings always become text nodes.
  function h(tag, props, ...children) {
    const element = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
      else if (value === true) element.setAttribute(key, "");
      else element.setAttribute(key, String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      element.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return element;
  }

  function href(...parts) {
    return "#/" + parts.map((part) => encodeURIComponent(part)).join("/");
  }

  function time(iso) {
    if (!iso) return h("span", { class: "muted" }, "—");
    const text = String(iso).replace("T", " ").replace(/\.\d+/, "").replace(/Z$/, " UTC");
    return h("time", { datetime: iso, title: iso }, text);
  }

  function statusBadge(status) {
    const known = STATUSES.includes(status) ? status : "unknown";
    return h("span", { class: `badge status-${known}` }, String(status));
  }

  function problemNode(err) {
    if (err instanceof ApiError) {
      return h(
        "div",
        { class: "notice error", role: "alert" },
        h("strong", {}, err.title),
        err.detail ? ` — ${err.detail}` : "",
      );
    }
    return h("div", { class: "notice error", role: "alert" }, String((err && err.message) || err));
  }

  function table(headings, rows, empty) {
    if (!rows.length) return h("p", { class: "muted empty" }, empty);
    return h(
      "table",
      {},
      h("thead", {}, h("tr", {}, headings.map((heading) => h("th", { scope: "col" }, heading)))),
      h("tbody", {}, rows),
    );
  }

  function pager(base, params, nextCursor) {
    const links = [];
    if (params.after) {
      links.push(h("a", { href: "#" + withQuery(base, { ...params, after: null }) }, "« First page"));
    }
    if (nextCursor) {
      links.push(
        h("a", { href: "#" + withQuery(base, { ...params, after: nextCursor }), rel: "next" }, "Next page »"),
      );
    }
    return links.length ? h("nav", { class: "pager", "aria-label": "Pages" }, links) : null;
  }

  function heading(text, ...actions) {
    return h(
      "div",
      { class: "heading" },
      h("h1", {}, text),
      h("div", { class: "actions" }, actions),
    );
  }

  function refreshButton() {
    return h("button", { type: "button", class: "secondary", onclick: () => render() }, "Refresh");
  }

  // Runs a button's or form's action; a failure is shown in `area`, the view stays.
  async function act(control, area, action) {
    control.disabled = true;
    area.replaceChildren();
    try {
      await action();
    } catch (err) {
      if (!(err instanceof Unauthorized)) area.replaceChildren(problemNode(err));
    } finally {
      control.disabled = false;
    }
  }

  function field(label, input, hint) {
    return h("label", { class: "field" }, h("span", {}, label), input, hint ? h("small", {}, hint) : null);
  }

  // ---- views -----------------------------------------------------------------------------

  async function organizationsView(params) {
    const page = await api(
      "GET",
      withQuery(path("organizations"), { limit: PAGE_SIZE, after: params.after }),
    );
    for (const org of page.data) orgNames.set(org.id, org.name);
    const rows = page.data.map((org) =>
      h(
        "tr",
        { "data-id": org.id },
        h("td", { class: "name" }, h("a", { href: href("orgs", org.id, "events") }, org.name)),
        h("td", { class: "mono" }, org.id),
        h("td", {}, time(org.created_at)),
      ),
    );
    const errors = h("div", { class: "errors" });
    const name = h("input", { name: "name", required: true, maxlength: 200, autocomplete: "off" });
    const form = h(
      "form",
      {
        class: "card inline",
        onsubmit: (event) => {
          event.preventDefault();
          act(form.querySelector("button"), errors, async () => {
            const org = await api("POST", path("organizations"), { name: name.value });
            flash = { kind: "ok", text: `Organization “${org.name}” created.` };
            location.hash = href("orgs", org.id, "endpoints");
          });
        },
      },
      h("h2", {}, "New organization"),
      field("Name", name),
      h("button", { type: "submit" }, "Create organization"),
    );
    return {
      name: "organizations",
      title: "Organizations",
      node: [
        heading("Organizations", refreshButton()),
        errors,
        table(["Name", "Id", "Created"], rows, "No organization yet."),
        pager("/orgs", params, page.next_cursor),
        form,
      ],
    };
  }

  async function endpointsView(org, params) {
    const page = await api(
      "GET",
      withQuery(path("organizations", org, "endpoints"), { limit: 100, after: params.after }),
    );
    const errors = h("div", { class: "errors" });
    const rows = page.data.map((endpoint) => {
      const toggle = h(
        "button",
        {
          type: "button",
          class: "secondary",
          onclick: () =>
            act(toggle, errors, async () => {
              await api("PATCH", path("organizations", org, "endpoints", endpoint.id), {
                enabled: !endpoint.enabled,
              });
              flash = { kind: "ok", text: `Endpoint ${endpoint.enabled ? "disabled" : "enabled"}.` };
              await render();
            }),
        },
        endpoint.enabled ? "Disable" : "Enable",
      );
      const remove = h(
        "button",
        {
          type: "button",
          class: "danger",
          onclick: () => {
            if (!window.confirm(`Delete the endpoint ${endpoint.url}? Its pending deliveries fail.`)) {
              return;
            }
            act(remove, errors, async () => {
              await api("DELETE", path("organizations", org, "endpoints", endpoint.id));
              flash = { kind: "ok", text: "Endpoint deleted." };
              await render();
            });
          },
        },
        "Delete",
      );
      return h(
        "tr",
        { "data-id": endpoint.id },
        h("td", { class: "url" }, h("span", { class: "mono" }, endpoint.url), h("div", { class: "muted mono" }, endpoint.id)),
        h("td", { class: "types" }, endpoint.event_types ? endpoint.event_types.join(", ") : h("span", { class: "muted" }, "all types")),
        h("td", { class: "description" }, endpoint.description || ""),
        h("td", {}, h("span", { class: endpoint.enabled ? "badge on" : "badge off" }, endpoint.enabled ? "enabled" : "disabled")),
        h(
          "td",
          {},
          h(
            "div",
            { class: "row-actions" },
            h("a", { href: "#" + withQuery(`/orgs/${encodeURIComponent(org)}/deliveries`, { endpoint_id: endpoint.id }) }, "Deliveries"),
            toggle,
            remove,
          ),
        ),
      );
    });
    const url = h("input", { name: "url", required: true, autocomplete: "off", inputmode: "url", placeholder: "https://hooks.example.com/ascend" });
    const types = h("input", { name: "event_types", autocomplete: "off", placeholder: "invoice.paid, payout.paid" });
    const description = h("input", { name: "description", autocomplete: "off", maxlength: 500 });
    const form = h(
      "form",
      {
        class: "card",
        onsubmit: (event) => {
          event.preventDefault();
          act(form.querySelector("button"), errors, async () => {
            const list = types.value.split(",").map((type) => type.trim()).filter(Boolean);
            const body = { url: url.value.trim(), event_types: list.length ? list : null };
            if (description.value.trim()) body.description = description.value.trim();
            await api("POST", path("organizations", org, "endpoints"), body);
            flash = { kind: "ok", text: "Endpoint created." };
            await render();
          });
        },
      },
      h("h2", {}, "New endpoint"),
      field("URL", url),
      field("Event types", types, "Comma-separated; leave empty for every type."),
      field("Description", description),
      h("button", { type: "submit" }, "Create endpoint"),
    );
    return {
      name: "endpoints",
      title: "Endpoints",
      node: [
        heading("Endpoints", refreshButton()),
        errors,
        table(["URL", "Event types", "Description", "Status", ""], rows, "No endpoint yet: events are stored but sent nowhere."),
        pager(`/orgs/${encodeURIComponent(org)}/endpoints`, params, page.next_cursor),
        form,
      ],
    };
  }

  function deliveryCounts(deliveries) {
    if (!deliveries.length) return h("span", { class: "muted" }, "none");
    const counts = new Map();
    for (const delivery of deliveries) counts.set(delivery.status, (counts.get(delivery.status) || 0) + 1);
    return [...counts].map(([status, count]) => [statusBadge(status), count > 1 ? ` ×${count} ` : " "]);
  }

  async function eventsView(org, params) {
    const type = params.type || "";
    const page = await api(
      "GET",
      withQuery(path("organizations", org, "events"), { limit: PAGE_SIZE, after: params.after, type }),
    );
    const rows = page.data.map((event) =>
      h(
        "tr",
        { "data-id": event.id },
        h("td", { class: "id" }, h("a", { href: href("orgs", org, "events", event.id), class: "mono" }, event.id)),
        h("td", { class: "mono types" }, event.type),
        h("td", {}, time(event.created_at)),
        h("td", {}, deliveryCounts(event.deliveries)),
      ),
    );
    const base = `/orgs/${encodeURIComponent(org)}/events`;
    const typeInput = h("input", { name: "type", value: type, autocomplete: "off", placeholder: "invoice.paid" });
    const filter = h(
      "form",
      {
        class: "filter",
        role: "search",
        onsubmit: (event) => {
          event.preventDefault();
          location.hash = withQuery(base, { type: typeInput.value.trim() });
        },
      },
      field("Type", typeInput),
      h("button", { type: "submit", class: "secondary" }, "Filter"),
      type ? h("a", { href: "#" + base }, "Clear") : null,
    );
    return {
      name: "events",
      title: "Events",
      refresh: false,
      node: [
        heading("Events", refreshButton()),
        filter,
        table(["Id", "Type", "Created", "Deliveries"], rows, type ? `No event of type ${type}.` : "No event yet."),
        pager(base, { type, after: params.after }, page.next_cursor),
      ],
    };
  }

  async function endpointUrls(org) {
    const urls = new Map();
    try {
      const page = await api("GET", withQuery(path("organizations", org, "endpoints"), { limit: 200 }));
      for (const endpoint of page.data) urls.set(endpoint.id, endpoint.url);
    } catch (err) {
      if (err instanceof Unauthorized) throw err; // else: ids only
    }
    return urls;
  }

  function endpointCell(urls, id) {
    return h("td", { class: "url" }, h("span", { class: "mono" }, urls.get(id) || id), urls.has(id) ? h("div", { class: "muted mono" }, id) : null);
  }

  async function eventView(org, id) {
    const [event, urls] = await Promise.all([
      api("GET", path("organizations", org, "events", id)),
      endpointUrls(org),
    ]);
    const rows = event.deliveries.map((delivery) =>
      h(
        "tr",
        { "data-id": delivery.id },
        h("td", {}, h("a", { href: href("orgs", org, "deliveries", delivery.id), class: "mono" }, delivery.id)),
        endpointCell(urls, delivery.endpoint_id),
        h("td", {}, statusBadge(delivery.status)),
      ),
    );
    return {
      name: "event",
      title: `Event ${event.id}`,
      refresh: event.deliveries.some((delivery) => delivery.status === "pending"),
      data: [event, [...urls]],
      times: [Date.parse(event.created_at)],
      node: [
        heading(`Event ${event.id}`, refreshButton()),
        h(
          "dl",
          { class: "facts" },
          h("dt", {}, "Type"), h("dd", { class: "mono" }, event.type),
          h("dt", {}, "Created"), h("dd", {}, time(event.created_at)),
          h("dt", {}, "Ordering key"), h("dd", { class: "mono" }, event.ordering_key || "—"),
        ),
        h("h2", {}, "Payload data"),
        h("pre", { class: "payload" }, JSON.stringify(event.data, null, 2)),
        h("h2", {}, "Deliveries"),
        table(["Delivery", "Endpoint", "Status"], rows, "No delivery: no enabled endpoint took this type."),
      ],
    };
  }

  async function deliveriesView(org, params) {
    const status = STATUSES.includes(params.status) ? params.status : "";
    const query = { limit: PAGE_SIZE, after: params.after, status, endpoint_id: params.endpoint_id };
    const [page, urls] = await Promise.all([
      api("GET", withQuery(path("organizations", org, "deliveries"), query)),
      endpointUrls(org),
    ]);
    const rows = page.data.map((delivery) =>
      h(
        "tr",
        { "data-id": delivery.id },
        h("td", {}, h("a", { href: href("orgs", org, "deliveries", delivery.id), class: "mono" }, delivery.id)),
        h("td", { class: "id" }, h("a", { href: href("orgs", org, "events", delivery.event_id), class: "mono" }, delivery.event_id)),
        endpointCell(urls, delivery.endpoint_id),
        h("td", {}, statusBadge(delivery.status)),
        h("td", { class: "number" }, String(delivery.attempt_count)),
        h("td", {}, time(delivery.updated_at)),
      ),
    );
    const base = `/orgs/${encodeURIComponent(org)}/deliveries`;
    const select = h(
      "select",
      { name: "status" },
      h("option", { value: "" }, "any status"),
      STATUSES.map((value) => h("option", { value, selected: value === status }, value)),
    );
    const filter = h(
      "form",
      {
        class: "filter",
        role: "search",
        onsubmit: (event) => {
          event.preventDefault();
          location.hash = withQuery(base, { status: select.value, endpoint_id: params.endpoint_id });
        },
      },
      field("Status", select),
      params.endpoint_id ? h("span", { class: "muted" }, `endpoint ${params.endpoint_id}`) : null,
      h("button", { type: "submit", class: "secondary" }, "Filter"),
      status || params.endpoint_id ? h("a", { href: "#" + base }, "Clear") : null,
    );
    return {
      name: "deliveries",
      title: "Deliveries",
      node: [
        heading("Deliveries", refreshButton()),
        filter,
        table(["Delivery", "Event", "Endpoint", "Status", "Attempts", "Updated"], rows, "No delivery here."),
        pager(base, { status, endpoint_id: params.endpoint_id, after: params.after }, page.next_cursor),
      ],
    };
  }

  async function deliveryView(org, id) {
    const [delivery, urls] = await Promise.all([
      api("GET", path("organizations", org, "deliveries", id)),
      endpointUrls(org),
    ]);
    const errors = h("div", { class: "errors" });
    const actions = [refreshButton()];
    if (delivery.status === "failed") {
      const retry = h(
        "button",
        {
          type: "button",
          onclick: () =>
            act(retry, errors, async () => {
              await api("POST", path("organizations", org, "deliveries", id, "retry"));
              flash = { kind: "ok", text: "Retry scheduled: the delivery is pending again." };
              await render();
            }),
        },
        "Retry",
      );
      actions.unshift(retry);
    }
    const rows = delivery.attempts.map((attempt) =>
      h(
        "tr",
        { "data-number": attempt.number },
        h("td", { class: "number" }, String(attempt.number)),
        h("td", {}, time(attempt.started_at)),
        h("td", { class: "number" }, attempt.status_code === null ? "—" : String(attempt.status_code)),
        h("td", { class: attempt.error ? "mono failure" : "mono" }, attempt.error || "ok"),
        h("td", { class: "number" }, `${Number(attempt.duration_ms).toFixed(1)} ms`),
        h("td", {}, attempt.response_excerpt ? h("code", { class: "excerpt" }, attempt.response_excerpt) : ""),
      ),
    );
    return {
      name: "delivery",
      title: `Delivery ${delivery.id}`,
      refresh: delivery.status === "pending",
      data: [delivery, [...urls]],
      times: [Date.parse(delivery.updated_at), Date.parse(delivery.next_attempt_at)],
      node: [
        heading(`Delivery ${delivery.id}`, actions),
        errors,
        h(
          "dl",
          { class: "facts" },
          h("dt", {}, "Status"), h("dd", { id: "delivery-status" }, statusBadge(delivery.status)),
          h("dt", {}, "Event"), h("dd", {}, h("a", { href: href("orgs", org, "events", delivery.event_id), class: "mono" }, delivery.event_id)),
          h("dt", {}, "Endpoint"), h("dd", { class: "mono" }, urls.get(delivery.endpoint_id) || delivery.endpoint_id),
          h("dt", {}, "Attempts"), h("dd", {}, String(delivery.attempt_count)),
          h("dt", {}, "Next attempt"), h("dd", {}, time(delivery.next_attempt_at)),
          h("dt", {}, "Created"), h("dd", {}, time(delivery.created_at)),
          h("dt", {}, "Updated"), h("dd", {}, time(delivery.updated_at)),
        ),
        h("h2", {}, "Attempts"),
        table(["#", "Started", "Status code", "Error", "Duration", "Response"], rows, "No attempt yet."),
      ],
    };
  }

  async function keysView(org) {
    const page = await api("GET", withQuery(path("organizations", org, "keys"), { limit: 200 }));
    const errors = h("div", { class: "errors" });
    const shown = revealed && revealed.org === org ? revealed : null;
    revealed = null;
    const rows = page.data.map((key) => {
      const state = key.revoked_at ? "revoked" : key.active ? "signing" : "standby";
      const buttons = [];
      if (state === "standby") {
        const activate = h(
          "button",
          {
            type: "button",
            class: "secondary",
            onclick: () =>
              act(activate, errors, async () => {
                await api("POST", path("organizations", org, "keys", key.id, "activate"));
                flash = { kind: "ok", text: `Key ${key.id} signs from now on.` };
                await render();
              }),
          },
          "Activate",
        );
        buttons.push(activate);
      }
      if (state !== "revoked") {
        const revoke = h(
          "button",
          {
            type: "button",
            class: "danger",
            onclick: () => {
              if (!window.confirm(`Revoke the key ${key.id} for good?`)) return;
              act(revoke, errors, async () => {
                await api("DELETE", path("organizations", org, "keys", key.id));
                flash = { kind: "ok", text: `Key ${key.id} revoked.` };
                await render();
              });
            },
          },
          "Revoke",
        );
        buttons.push(revoke);
      }
      return h(
        "tr",
        { "data-id": key.id },
        h("td", { class: "mono" }, key.id),
        h("td", {}, h("span", { class: `badge key-${state}` }, state)),
        h("td", {}, time(key.created_at)),
        h("td", {}, time(key.activated_at)),
        h("td", {}, time(key.revoked_at)),
        h("td", {}, h("div", { class: "row-actions" }, buttons)),
      );
    });
    const issue = h(
      "button",
      {
        type: "button",
        onclick: () =>
          act(issue, errors, async () => {
            const key = await api("POST", path("organizations", org, "keys"));
            revealed = { org, id: key.id, secret: key.secret };
            await render();
          }),
      },
      "Issue a key",
    );
    return {
      name: "keys",
      title: "Webhook keys",
      node: [
        heading("Webhook keys", issue),
        errors,
        shown
          ? h(
              "div",
              { class: "notice secret", role: "status" },
              h("p", {}, `New key ${shown.id}. Copy its secret now: it is not shown again.`),
              h("code", { id: "new-secret", class: "mono" }, shown.secret),
            )
          : null,
        h(
          "p",
          { class: "muted" },
          "Receivers verify signatures with a key's secret. The first key signs at once; a later key waits for Activate, so receivers can learn it first.",
        ),
        table(["Key", "State", "Created", "Activated", "Revoked", ""], rows, "No key yet: deliveries wait until one exists."),
      ],
    };
  }

  // ---- routing ---------------------------------------------------------------------------

  function parseHash() {
    const raw = location.hash.replace(/^#/, "") || "/";
    const at = raw.indexOf("?");
    const route = at < 0 ? raw : raw.slice(0, at);
    const params = Object.fromEntries(new URLSearchParams(at < 0 ? "" : raw.slice(at + 1)));
    let segments;
    try {
      segments = route.split("/").filter(Boolean).map((part) => decodeURIComponent(part));
    } catch {
      segments = ["not-found"];
    }
    return { segments, params };
  }

  function home() {
    if (session.admin) return href("orgs");
    return session.org ? href("orgs", session.org, "endpoints") : null;
  }

  async function route({ segments, params }) {
    const [first, org, section, id, extra] = segments;
    if (!first || (first === "orgs" && !org && !session.admin)) {
      const target = home();
      if (target === null) throw new ApiError(404, "Not Found", "this token sees no organization");
      location.replace(target);
      return null;
    }
    if (first === "orgs" && !org) return organizationsView(params);
    if (first !== "orgs" || extra !== undefined) throw new ApiError(404, "Not Found", "no such page");
    if (!section) {
      location.replace(href("orgs", org, "endpoints"));
      return null;
    }
    const name = await orgName(org); // a 404 here: not an organization this token sees
    let view = null;
    if (section === "endpoints" && !id) view = await endpointsView(org, params);
    else if (section === "events" && !id) view = await eventsView(org, params);
    else if (section === "events") view = await eventView(org, id);
    else if (section === "deliveries" && !id) view = await deliveriesView(org, params);
    else if (section === "deliveries") view = await deliveryView(org, id);
    else if (section === "keys" && !id) view = await keysView(org);
    else throw new ApiError(404, "Not Found", "no such page");
    view.org = { id: org, name, section };
    return view;
  }

  // The organization of a page that failed, for its navigation: only one this token has seen,
  // so a page of another organization (a 404) shows no links into it.
  function orgOf({ segments }) {
    const [first, org, section] = segments;
    if (first !== "orgs" || !org || !orgNames.has(org)) return null;
    return { id: org, name: orgNames.get(org), section };
  }

  function errorView(err, place) {
    return {
      name: "error",
      title: "Error",
      org: orgOf(place),
      node: [heading("Error", refreshButton()), problemNode(err)],
    };
  }

  function renderNav(org) {
    const links = [];
    if (session && session.admin) {
      links.push(h("a", { href: href("orgs"), "aria-current": org ? null : "page" }, "Organizations"));
    }
    if (org) {
      links.push(h("span", { class: "org", title: org.id }, org.name));
      for (const [section, label] of [
        ["endpoints", "Endpoints"],
        ["events", "Events"],
        ["deliveries", "Deliveries"],
        ["keys", "Keys"],
      ]) {
        links.push(
          h("a", { href: href("orgs", org.id, section), "aria-current": org.section === section ? "page" : null }, label),
        );
      }
    }
    nav.replaceChildren(...links);
  }

  function show(view) {
    const notice = flash ? h("div", { class: `notice ${flash.kind}`, role: "status" }, flash.text) : null;
    flash = null;
    main.replaceChildren(...[notice, view.node].flat(Infinity).filter(Boolean));
    main.dataset.view = view.name;
    document.title = `${view.title} · ascend-webhooks`;
    renderNav(view.org || null);
    signOutButton.hidden = false;
  }

  // Text the user is selecting in the page, to copy it: a rebuild would drop the selection.
  function selecting() {
    const selection = window.getSelection();
    return Boolean(
      selection && !selection.isCollapsed && selection.rangeCount && selection.getRangeAt(0).intersectsNode(main),
    );
  }

  // How soon a view with pending deliveries looks again, by the times (ms) something changed or
  // is due: a delivery's updated_at and next_attempt_at, the last change this page saw. That
  // last is how an attempt in flight shows: a claimed delivery's next_attempt_at becomes its
  // lease's end, a minute ahead by default.
  function refreshDelay(times) {
    const now = Date.now();
    let delay = SLOW_REFRESH_MS;
    for (const at of times) {
      const wait = at - now; // NaN for a time not known: no rule matches
      if (wait <= SOON_MS && wait >= -FLIGHT_MS) return REFRESH_MS;
      if (wait > SOON_MS) delay = Math.min(delay, Math.max(REFRESH_MS, wait - SOON_MS));
    }
    return delay;
  }

  function scheduleRefresh(seq, delay) {
    refreshTimer = setTimeout(() => {
      if (seq !== renderSeq) return;
      if (selecting()) scheduleRefresh(seq, REFRESH_MS); // it looks once the selection is gone
      else render(true);
    }, delay);
  }

  // `background`: a look the view takes by itself, which the user did not ask for.
  async function render(background = false) {
    const seq = ++renderSeq;
    clearTimeout(refreshTimer);
    if (!sessionStorage.getItem(TOKEN_KEY)) {
      showLogin();
      return;
    }
    const place = parseHash();
    const hash = location.hash;
    if (!background) main.setAttribute("aria-busy", "true");
    try {
      if (!session) session = await identify();
      const view = await route(place);
      if (seq !== renderSeq || view === null) return;
      const data = JSON.stringify(view.data === undefined ? null : view.data);
      const before = shown && shown.hash === hash ? shown : null;
      const changed = !before || before.data !== data;
      // A look of its own rebuilds the page for a change only, and not under a selection.
      const held = background && (!changed || selecting());
      if (!held) {
        show(view);
        shown = { hash, data, changedAt: !before ? NaN : changed ? Date.now() : before.changedAt };
      }
      if (view.refresh) {
        const waiting = held && changed; // shown once the selection is gone
        scheduleRefresh(seq, waiting ? REFRESH_MS : refreshDelay([...view.times, shown.changedAt]));
      }
    } catch (err) {
      if (err instanceof Unauthorized || seq !== renderSeq) return;
      if (background && selecting()) {
        scheduleRefresh(seq, REFRESH_MS);
        return;
      }
      shown = null;
      show(errorView(err, place));
    } finally {
      if (seq === renderSeq) main.removeAttribute("aria-busy");
    }
  }

  // ---- signing in and out ----------------------------------------------------------------

  function showLogin() {
    renderSeq++; // a view still loading must not replace the form
    clearTimeout(refreshTimer);
    shown = null;
    session = null;
    orgNames.clear();
    nav.replaceChildren();
    signOutButton.hidden = true;
    const input = h("input", {
      id: "token",
      name: "token",
      type: "password",
      required: true,
      autocomplete: "off",
      spellcheck: "false",
    });
    const form = h(
      "form",
      {
        class: "card login",
        onsubmit: (event) => {
          event.preventDefault();
          const token = input.value.trim();
          if (!token) return;
          if (!sendable(token)) {
            loginMessage = { kind: "error", text: NOT_A_TOKEN };
            showLogin();
            return;
          }
          sessionStorage.setItem(TOKEN_KEY, token);
          loginMessage = null;
          render();
        },
      },
      h("h1", {}, "Sign in"),
      loginMessage
        ? h(
            "div",
            { class: `notice ${loginMessage.kind}`, role: loginMessage.kind === "error" ? "alert" : "status", id: "login-message" },
            loginMessage.text,
          )
        : null,
      h(
        "p",
        {},
        "Paste an API token: the admin token, or an organization's token. It stays in this browser tab " +
          "(sessionStorage) and is sent to the API only, as a bearer token.",
      ),
      h("label", { class: "field" }, h("span", {}, "API token"), input),
      h("button", { type: "submit" }, "Sign in"),
    );
    main.replaceChildren(form);
    main.dataset.view = "login";
    main.removeAttribute("aria-busy");
    document.title = "Sign in · ascend-webhooks";
    input.focus();
  }

  function endSession(text, kind = "error") {
    sessionStorage.removeItem(TOKEN_KEY);
    loginMessage = { kind, text };
    showLogin();
  }

  signOutButton.addEventListener("click", () => endSession("Signed out.", "ok"));
  window.addEventListener("hashchange", () => render());
  render();
})();
