// The operator's page: polls GET /v1/admin/stats every second (rates are the
// difference of two answers) and GET /v1/admin/cluster (the live nodes), looks
// users up and disconnects them. Needs a token
// with the admin role; the server answers 403 to any other.
"use strict";

(() => {
  const { api, el, $, bytes, claims, ApiError } = imqtt;
  const KEY = "imqtt.admin-token";
  let token = sessionStorage.getItem(KEY);
  let last = null;
  let timer = null;
  let shownUser = null;

  function fail(e) {
    $("#error").textContent =
      e instanceof ApiError && e.status === 403
        ? "This token is not an admin token (403 forbidden)."
        : e instanceof ApiError && e.status === 401
          ? `The server refused the token (${e.code}).`
          : e.message || String(e);
  }

  function uptime(s) {
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${s % 60}s`;
  }

  function rate(now, prev, key) {
    if (!prev || now.ts <= prev.ts) return "–";
    const r = ((now[key] - prev[key]) * 1000) / (now.ts - prev.ts);
    return r >= 100 ? Math.round(r).toLocaleString() : r.toFixed(1);
  }

  async function poll() {
    timer = null;
    if (!token) return;
    try {
      const s = await api("GET", "/v1/admin/stats", { token });
      $("#error").textContent = "";
      $("#dashboard").hidden = false;
      $("#token-form").hidden = true;
      $("#forget").hidden = false;
      $("#conn-state").textContent = `as ${claims(token)?.sub ?? "?"}`;
      $("#s-connections").textContent = s.connections.toLocaleString();
      $("#s-sessions").textContent = s.sessions.toLocaleString();
      $("#s-subscriptions").textContent = s.subscriptions.toLocaleString();
      $("#s-stored").textContent = s.messages_stored.toLocaleString();
      $("#s-drops").textContent = s.queue_drops.toLocaleString();
      $("#s-store").textContent = bytes(s.store_bytes);
      $("#s-memory").textContent = bytes(s.resident_bytes);
      $("#s-uptime").textContent = uptime(s.uptime_s);
      $("#s-stored-rate").textContent = rate(s, last, "messages_stored");
      $("#s-delivered-rate").textContent = rate(s, last, "deliveries");
      $("#s-version").textContent = `imqtt ${s.version}`;
      last = s;
      const c = await api("GET", "/v1/admin/cluster", { token });
      $("#nodes").replaceChildren(
        ...c.nodes.map((n) =>
          el("tr", {},
            el("td", { text: n.node }),
            el("td", { text: n.connections.toLocaleString() }),
            el("td", { text: n.sessions.toLocaleString() }),
            el("td", { text: uptime(n.uptime_s) }),
            el("td", { text: `${Math.max(0, Math.round((Date.now() - n.last_seen_ms) / 1000))} s ago` }),
          ),
        ),
      );
    } catch (e) {
      fail(e);
      if (e.status === 401 || e.status === 403) {
        $("#dashboard").hidden = true;
        $("#token-form").hidden = false;
        return;
      }
    }
    timer = setTimeout(poll, 1000);
  }

  async function lookup(uid) {
    try {
      const u = await api("GET", `/v1/admin/users/${encodeURIComponent(uid)}`, { token });
      shownUser = u.user;
      $("#user").hidden = false;
      $("#u-name").textContent = u.user;
      $("#u-status").dataset.status = u.presence.status;
      $("#u-status-text").textContent = u.presence.status;
      $("#u-account").textContent = u.account ? "built-in account" : "no built-in account";
      $("#u-devices").textContent = u.presence.devices.length ? u.presence.devices.join(", ") : "none connected";
      $("#u-groups").textContent = u.groups.length ? u.groups.join(", ") : "none";
      $("#u-convs").replaceChildren(
        ...u.conversations.map((c) =>
          el("tr", {},
            el("td", { text: c.conv }),
            el("td", { text: String(c.head) }),
            el("td", { text: String(c.cursor) }),
            el("td", { text: String(c.unread) }),
            el("td", { text: c.last_ts ? new Date(c.last_ts).toLocaleString() : "" })),
        ),
      );
      $("#error").textContent = "";
    } catch (e) {
      $("#user").hidden = true;
      shownUser = null;
      fail(e);
    }
  }

  $("#token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("#token-input").value.trim();
    $("#token-input").value = "";
    sessionStorage.setItem(KEY, token);
    last = null;
    if (timer) clearTimeout(timer);
    poll();
  });
  $("#forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    token = null;
    last = null;
    if (timer) clearTimeout(timer);
    timer = null;
    $("#dashboard").hidden = true;
    $("#forget").hidden = true;
    $("#token-form").hidden = false;
    $("#conn-state").textContent = "";
  });
  $("#lookup").addEventListener("submit", (e) => {
    e.preventDefault();
    lookup($("#lookup-user").value.trim());
  });
  $("#disconnect").addEventListener("click", async () => {
    if (!shownUser) return;
    try {
      const r = await api("POST", `/v1/admin/users/${encodeURIComponent(shownUser)}/disconnect`, { token });
      $("#u-result").textContent = `closed ${r.disconnected} connection${r.disconnected === 1 ? "" : "s"}`;
      setTimeout(() => lookup(shownUser), 300);
    } catch (e) {
      fail(e);
    }
  });

  if (token) poll();
})();
