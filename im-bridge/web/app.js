// The chat page: MQTT over WebSocket (mqtt.js) for what the server pushes, the
// HTTP API for everything else. The rules are the client library's: a
// conversation's messages are shown once each, in seq order; a push that skips a
// seq makes the page fetch the gap over HTTP before showing it; every
// (re)connection, and every resync event (the server may have missed pushes), is
// followed by a sync of the heads; sends carry a client_msg_id
// and are retried with it, so a retry never makes a second message.
"use strict";

(() => {
  const { api, el, $, claims, time, sleep, ApiError } = imqtt;

  const PAGE = 50; // messages per history page
  const SESSION_KEY = "imqtt.session";

  const S = {
    token: null,
    uid: null,
    device: null,
    mqtt: null,
    info: null,
    convs: new Map(), // conv -> {conv, head, cursor, last_ts}
    groups: new Map(), // gid -> group summary
    contacts: [],
    presence: new Map(), // uid -> "online" | "offline"
    watching: new Set(), // presence/{uid} subscribed
    open: null, // the conversation on screen
    acks: new Map(), // conv -> seq waiting to be acked
    ackTimer: null,
    sendCounter: 0,
    outboxes: new Map(), // conv -> the promise of its last send
    wake: [], // sends waiting to retry, woken when the connection is back
    lastWatchCheck: 0,
    editing: null, // {seq} of the own message the composer is editing
  };

  // ---- sign-in ----------------------------------------------------------

  function showLogin(message) {
    $("#app").hidden = true;
    $("#login").hidden = false;
    $("#login-error").textContent = message || "";
  }

  function saveSession(token) {
    const c = claims(token);
    if (!c || typeof c.sub !== "string") throw new Error("this is not a JWT with a user (sub)");
    localStorage.setItem(SESSION_KEY, JSON.stringify({ token, uid: c.sub }));
    return c.sub;
  }

  function loadSession() {
    try {
      const s = JSON.parse(localStorage.getItem(SESSION_KEY) || "null");
      if (!s || !s.token) return null;
      const c = claims(s.token);
      if (!c || (c.exp && c.exp * 1000 < Date.now())) return null;
      return s;
    } catch (e) {
      return null;
    }
  }

  function deviceId() {
    // One per tab (and kept across reloads of it): two tabs are two devices, and
    // neither takes the other's connection over.
    let d = sessionStorage.getItem("imqtt.device");
    if (!d) {
      const rnd = new Uint8Array(6);
      crypto.getRandomValues(rnd);
      d = "web-" + Array.from(rnd, (b) => b.toString(16).padStart(2, "0")).join("");
      sessionStorage.setItem("imqtt.device", d);
    }
    return d;
  }

  async function signIn(signUp) {
    const user = $("#login-user").value.trim();
    const password = $("#login-password").value;
    $("#login-error").textContent = "";
    try {
      if (signUp) await api("POST", "/v1/accounts", { body: { user, password } });
      const t = await api("POST", "/v1/tokens", { body: { user, password } });
      saveSession(t.token);
      $("#login-password").value = "";
      await start();
    } catch (e) {
      $("#login-error").textContent = describe(e);
    }
  }

  function describe(e) {
    if (e instanceof ApiError) return e.status ? `${e.message} (${e.code})` : e.message;
    return e && e.message ? e.message : String(e);
  }

  function logout(message) {
    if (S.mqtt) S.mqtt.end(true);
    S.mqtt = null;
    localStorage.removeItem(SESSION_KEY);
    S.open = null;
    S.convs.clear();
    S.groups.clear();
    S.presence.clear();
    S.watching.clear();
    showLogin(message);
  }

  // ---- HTTP with the session's token --------------------------------------

  async function call(method, path, body) {
    try {
      return await api(method, path, { token: S.token, body });
    } catch (e) {
      if (e.status === 401) logout("Your session has ended; log in again.");
      throw e;
    }
  }

  // ---- starting -----------------------------------------------------------

  async function start() {
    const s = loadSession();
    if (!s) return showLogin();
    S.token = s.token;
    S.uid = s.uid;
    S.device = deviceId();
    $("#login").hidden = true;
    $("#app").hidden = false;
    $("#me").textContent = S.uid;
    setState("connecting", "connecting…");
    try {
      S.info = await api("GET", "/v1/server");
    } catch (e) {
      setState("offline", "server unreachable");
      return;
    }
    await Promise.allSettled([loadGroups(), loadConversations(), loadContacts()]);
    connect();
  }

  function mqttUrl() {
    const m = S.info.mqtt;
    const secure = location.protocol === "https:";
    const port = secure ? m.wss_port || m.ws_port : m.ws_port;
    if (!port) return null;
    const scheme = secure && m.wss_port ? "wss" : "ws";
    return `${scheme}://${location.hostname}:${port}${m.ws_path}`;
  }

  function setState(state, text) {
    const e = $("#conn-state");
    e.dataset.state = state;
    e.textContent = text;
  }

  // ---- MQTT -----------------------------------------------------------------

  function connect() {
    const url = mqttUrl();
    if (!url) {
      setState("offline", "this server has no MQTT over WebSocket");
      return;
    }
    const client = mqtt.connect(url, {
      protocolVersion: 5,
      clientId: S.device,
      username: S.uid,
      password: S.token,
      clean: true,
      keepalive: 30,
      reconnectPeriod: 1000,
      connectTimeout: 10000,
      resubscribe: false,
    });
    S.mqtt = client;
    client.on("connect", () => {
      if (S.mqtt !== client) return;
      setState("online", "online");
      for (const wake of S.wake.splice(0)) wake();
      S.watching.clear();
      const topics = [`users/${S.uid}/inbox`, `users/${S.uid}/events`];
      for (const gid of S.groups.keys()) topics.push(`groups/${gid}`);
      client.subscribe(topics, { qos: 1 }, async () => {
        // Everything pushed from here on arrives; what came before is fetched.
        await syncAll();
        watchPresence();
      });
    });
    client.on("reconnect", () => S.mqtt === client && setState("reconnecting", "reconnecting…"));
    client.on("offline", () => S.mqtt === client && setState("reconnecting", "offline, reconnecting…"));
    client.on("error", (err) => {
      if (S.mqtt !== client) return;
      // CONNACK "not authorized" (5.0: 0x87; 3.1.1: 5): the token is no good.
      if (err && (err.code === 135 || err.code === 5 || err.code === 134)) {
        logout("The server refused this session's token; log in again.");
      }
    });
    client.on("message", (topic, payload) => {
      if (S.mqtt !== client) return;
      let msg;
      try {
        msg = JSON.parse(new TextDecoder().decode(payload));
      } catch (e) {
        return;
      }
      if (topic.startsWith("presence/")) onPresence(msg);
      else if (topic === `users/${S.uid}/events`) onEvent(msg);
      else onPush(msg);
    });
  }

  function subscribe(topic) {
    if (S.mqtt && S.mqtt.connected) S.mqtt.subscribe(topic, { qos: 1 });
  }

  function unsubscribe(topic) {
    if (S.mqtt && S.mqtt.connected) S.mqtt.unsubscribe(topic);
  }

  // ---- conversations ----------------------------------------------------------

  function conv(id) {
    let c = S.convs.get(id);
    if (!c) {
      c = { conv: id, head: 0, cursor: 0, last_ts: 0 };
      S.convs.set(id, c);
    }
    return c;
  }

  function peerOf(convId) {
    if (convId.startsWith("dm:")) {
      const [, a, b] = convId.split(":");
      return a === S.uid ? b : a;
    }
    return null;
  }

  function dmWith(uid) {
    return S.uid < uid ? `dm:${S.uid}:${uid}` : `dm:${uid}:${S.uid}`;
  }

  function title(convId) {
    if (convId.startsWith("dm:")) return peerOf(convId);
    if (convId.startsWith("group:")) {
      const gid = convId.slice(6);
      const g = S.groups.get(gid);
      return g && g.name ? `${g.name}` : gid;
    }
    if (convId.startsWith("sys:")) return "Notices";
    return convId;
  }

  async function loadConversations() {
    const list = await call("GET", "/v1/conversations");
    for (const s of list.conversations) {
      const c = conv(s.conv);
      c.head = Math.max(c.head, s.head);
      c.cursor = Math.max(c.cursor, s.cursor);
      c.last_ts = Math.max(c.last_ts, s.last_ts);
    }
    renderConversations();
    watchPresence();
  }

  async function loadGroups() {
    const list = await call("GET", "/v1/groups");
    const now = new Set();
    for (const g of list.groups) {
      now.add(g.id);
      if (!S.groups.has(g.id)) subscribe(`groups/${g.id}`);
      S.groups.set(g.id, g);
      conv(`group:${g.id}`);
    }
    for (const gid of [...S.groups.keys()]) {
      if (!now.has(gid)) dropGroup(gid);
    }
    renderConversations();
  }

  function dropGroup(gid) {
    S.groups.delete(gid);
    S.convs.delete(`group:${gid}`);
    unsubscribe(`groups/${gid}`);
    if (S.open && S.open.conv === `group:${gid}`) {
      closeChat();
      $("#side-error").textContent = `You are no longer in ${gid}.`;
    }
  }

  function unread(c) {
    return Math.max(0, c.head - c.cursor);
  }

  function renderConversations() {
    const ul = $("#conversations");
    const items = [...S.convs.values()].sort((a, b) => b.last_ts - a.last_ts || a.conv.localeCompare(b.conv));
    ul.replaceChildren(
      ...items.map((c) => {
        const peer = peerOf(c.conv);
        const n = unread(c);
        return el(
          "li",
          {
            class: "conv" + (S.open && S.open.conv === c.conv ? " current" : ""),
            dataset: { conv: c.conv },
            onclick: () => openChat(c.conv),
          },
          peer ? dot(peer) : el("span", { class: "kind", text: c.conv.startsWith("group:") ? "#" : "!" }),
          el("span", { class: "name", text: title(c.conv) }),
          el("span", { class: "when", text: time(c.last_ts) }),
          n > 0 ? el("span", { class: "unread", text: String(n), "aria-label": `${n} unread` }) : null,
        );
      }),
    );
    $("#no-convs").hidden = items.length > 0;
  }

  // ---- presence -----------------------------------------------------------------

  function dot(uid) {
    const status = S.presence.get(uid);
    return el("span", {
      class: "dot",
      dataset: { user: uid, status: status || "unknown" },
      title: status ? `${uid} is ${status}` : `${uid}'s presence is not shared with you`,
    });
  }

  function renderDots(uid) {
    const status = S.presence.get(uid) || "unknown";
    for (const d of document.querySelectorAll(".dot[data-user]")) {
      if (d.dataset.user === uid) {
        d.dataset.status = status;
        d.title = `${uid} is ${status}`;
      }
    }
  }

  function onPresence(p) {
    if (!p || typeof p.user !== "string") return;
    S.presence.set(p.user, p.status === "online" ? "online" : "offline");
    renderDots(p.user);
  }

  // The people whose presence the page shows: direct peers, contacts, and the
  // members of the open group. Only those the server says are visible are
  // watched (a refused subscription would tell nothing).
  async function watchPresence(extra) {
    const want = new Set(extra || []);
    for (const c of S.convs.keys()) {
      const p = peerOf(c);
      if (p) want.add(p);
    }
    for (const u of S.contacts) want.add(u);
    want.delete(S.uid);
    const ask = [...want].filter((u) => !S.watching.has(u)).slice(0, 500);
    if (ask.length === 0) return;
    S.lastWatchCheck = Date.now();
    let list;
    try {
      list = await call("GET", `/v1/presence?users=${encodeURIComponent(ask.join(","))}`);
    } catch (e) {
      return;
    }
    for (const p of list.presence) {
      onPresence(p);
      if (S.mqtt && S.mqtt.connected && !S.watching.has(p.user)) {
        S.watching.add(p.user);
        subscribe(`presence/${p.user}`);
      }
    }
  }

  async function loadContacts() {
    const list = await call("GET", "/v1/contacts");
    S.contacts = list.contacts;
    renderContacts();
  }

  function renderContacts() {
    $("#contacts").replaceChildren(
      ...S.contacts.map((u) =>
        el(
          "li",
          { dataset: { user: u } },
          dot(u),
          el("span", { class: "name", text: u }),
          el("button", {
            type: "button",
            class: "quiet",
            text: "Remove",
            onclick: async () => {
              try {
                await call("DELETE", `/v1/contacts/${encodeURIComponent(u)}`);
                await loadContacts();
              } catch (e) {
                $("#side-error").textContent = describe(e);
              }
            },
          }),
        ),
      ),
    );
  }

  // ---- what the server pushes ---------------------------------------------------

  function onPush(m) {
    if (!m || typeof m.conv !== "string") return;
    if (typeof m.seq !== "number") {
      // A qos 0 live message: not stored, shown only if its chat is open.
      if (S.open && S.open.conv === m.conv) appendLive(m);
      return;
    }
    onMessage(m);
  }

  function onEvent(e) {
    if (!e || typeof e.type !== "string") return;
    switch (e.type) {
      case "sync": // a message too large to push was stored: pull it
        announce(e.conv, e.seq, 0);
        break;
      case "read": // the other party of a direct chat has read up to seq
        onRead(e);
        break;
      case "resync":
        // The server's node was cut off from its cluster and may have lost
        // pushes (and membership events) meanwhile; the connection is up and
        // subscribed, so the catch-up of a reconnection covers what is missing.
        syncAll();
        break;
      case "member_added":
      case "member_removed":
      case "group_deleted":
        loadGroups().then(() => {
          if (e.type === "member_added" && e.user === S.uid) loadConversations();
          if (S.open && S.open.conv === `group:${e.group}` && !$("#group-info").hidden) showMembers();
        });
        break;
      default:
        break;
    }
  }

  // A stored message arrived (pushed, or answered to our own send).
  function onMessage(m) {
    if (m.conv.startsWith("group:") && !S.groups.has(m.conv.slice(6))) {
      // A group the page has not seen yet (just added), or has left: the group
      // list decides.
      loadGroups().then(() => S.groups.has(m.conv.slice(6)) && onMessage(m), () => {});
      return;
    }
    const known = S.convs.has(m.conv);
    const c = conv(m.conv);
    c.head = Math.max(c.head, m.seq);
    c.last_ts = Math.max(c.last_ts, m.ts || 0);
    // My own messages (from any of my devices) are read.
    if (m.from === S.uid) c.cursor = Math.max(c.cursor, m.seq);
    const o = S.open;
    if (o && o.conv === m.conv) {
      if (!o.ready) {
        // The first page is on its way; the fill after it takes this in.
        if (m.seq > o.hi) o.early.set(m.seq, m);
      } else if (m.seq === o.hi + 1 && !o.filling) {
        append(m);
      } else if (m.seq > o.hi) {
        o.early.set(m.seq, m);
        fill(o);
      }
      markRead(o);
    }
    renderConversations();
    if (!known && peerOf(m.conv)) watchPresence();
  }

  // A seq exists in conv (a sync hint): fetch it if its chat is open.
  function announce(convId, seq, ts) {
    const c = conv(convId);
    c.head = Math.max(c.head, seq);
    c.last_ts = Math.max(c.last_ts, ts || Date.now());
    if (S.open && S.open.conv === convId && seq > S.open.hi) fill(S.open);
    renderConversations();
  }

  // After every (re)connection and on a resync event: heads, groups, and the
  // open chat's gap.
  async function syncAll() {
    try {
      await loadGroups();
      await loadConversations();
      if (S.open) {
        const c = conv(S.open.conv);
        if (c.head > S.open.hi) await fill(S.open);
      }
    } catch (e) {
      if (e.status !== 401) setTimeout(syncAll, 2000);
    }
  }

  // ---- the open chat ------------------------------------------------------------

  async function openChat(convId) {
    S.open = {
      conv: convId,
      lo: 0, // the lowest seq shown (0: none yet)
      hi: 0, // the highest seq shown
      ready: false, // the first page is shown
      hasOlder: false,
      loadingOlder: false,
      filling: null, // the running gap fill
      early: new Map(), // pushes that came before the gap below them was filled
      pending: new Map(), // client_msg_id -> element of a send not yet confirmed
    };
    const o = S.open;
    document.body.classList.add("chat-open");
    $("#chat").hidden = false;
    $("#chat-title").textContent = title(convId);
    $("#chat-error").textContent = "";
    $("#messages").replaceChildren();
    $("#group-info").hidden = true;
    const isGroup = convId.startsWith("group:");
    $("#members-button").hidden = !isGroup;
    $("#composer").hidden = convId.startsWith("sys:");
    const peer = peerOf(convId);
    const chatDot = $("#chat-dot");
    chatDot.hidden = !peer;
    if (peer) {
      chatDot.dataset.user = peer;
      chatDot.dataset.status = S.presence.get(peer) || "unknown";
      if (!S.watching.has(peer)) watchPresence([peer]);
    } else {
      delete chatDot.dataset.user;
    }
    renderConversations();
    const c = conv(convId);
    $("#history-state").textContent = "loading…";
    try {
      // The newest page first; a stale head is caught up by the fill after it.
      const page = c.head > 0
        ? await call("GET", `/v1/conversations/${encodeURIComponent(convId)}/messages?before=${c.head + 1}&limit=${PAGE}`)
        : await call("GET", `/v1/conversations/${encodeURIComponent(convId)}/messages?after=0&limit=${PAGE}`);
      if (S.open !== o) return;
      for (const m of page.messages) append(m);
      o.hasOlder = c.head > 0 ? page.has_more : false;
      if (o.lo === 0) o.lo = o.hi + 1;
      o.ready = true;
      await fill(o);
    } catch (e) {
      if (S.open === o) {
        $("#chat-error").textContent = describe(e);
        o.ready = true;
      }
    }
    if (S.open !== o) return;
    historyState(o);
    scrollToEnd();
    markRead(o);
    if (peer) {
      call("GET", `/v1/conversations/${encodeURIComponent(convId)}/reads`).then((r) => {
        for (const x of r.reads || []) if (x.user === peer) onRead({ conv: convId, user: peer, seq: x.seq });
      }, () => {});
    }
    $("#text").focus();
    // A tall screen may show the whole first page with nothing to scroll.
    const sc = $("#scroller");
    if (o.hasOlder && sc.scrollHeight <= sc.clientHeight) loadOlder();
  }

  function closeChat() {
    stopEdit();
    S.open = null;
    document.body.classList.remove("chat-open");
    $("#chat").hidden = true;
    renderConversations();
  }

  function historyState(o) {
    $("#history-state").textContent = o.hasOlder
      ? "scroll up for older messages"
      : o.hi === 0
        ? "no messages yet"
        : "the beginning of the conversation";
  }

  // Fetches everything after what is shown, in order; one fill at a time.
  function fill(o) {
    if (o.filling) {
      o.again = true;
      return o.filling;
    }
    o.filling = (async () => {
      try {
        do {
          o.again = false;
          for (;;) {
            const page = await call(
              "GET",
              `/v1/conversations/${encodeURIComponent(o.conv)}/messages?after=${o.hi}&limit=200`,
            );
            if (S.open !== o) return;
            for (const m of page.messages) if (m.seq > o.hi) append(m);
            if (!page.has_more) break;
          }
          // Pushes held back are now below hi (shown by the fetch) or next.
          for (const seq of [...o.early.keys()].sort((a, b) => a - b)) {
            const m = o.early.get(seq);
            o.early.delete(seq);
            if (seq === o.hi + 1) append(m);
            else if (seq > o.hi) o.again = true;
          }
        } while (o.again && S.open === o);
      } catch (e) {
        // Offline: the next connection's sync fills it.
      } finally {
        o.filling = null;
        if (S.open === o) {
          historyState(o);
          markRead(o);
        }
      }
    })();
    return o.filling;
  }

  function bodyText(body) {
    return body && typeof body.text === "string" ? body.text : JSON.stringify(body);
  }

  function messageItem(m) {
    if (m.kind) {
      // An edit or a recall: it changes the message it names and shows nothing
      // of its own (its place keeps the seqs contiguous).
      return el("li", { class: "revision", hidden: true, dataset: { seq: String(m.seq), kind: m.kind, ref: String(m.ref) } });
    }
    const mine = m.from === S.uid;
    const li = el(
      "li",
      {
        class: "msg" + (mine ? " mine" : "") + (m.recalled ? " recalled" : ""),
        dataset: { seq: String(m.seq), state: "stored", edited: m.edited_ts ? "yes" : "no" },
        title: `#${m.seq}`,
      },
      !mine || m.conv.startsWith("group:") ? el("span", { class: "from", text: m.from }) : null,
      el("span", { class: "body", text: m.recalled ? "message recalled" : bodyText(m.body) }),
      el("span", { class: "meta", text: `${time(m.ts)} · #${m.seq}` }),
    );
    // One's own messages can be edited and recalled (the server says when not).
    if (mine && !m.recalled && !m.conv.startsWith("sys:")) {
      li.append(el("span", { class: "actions" },
        el("button", { type: "button", class: "quiet edit", text: "edit", onclick: () => startEdit(m.seq, li) }),
        el("button", { type: "button", class: "quiet recall", text: "recall", onclick: () => recall(m.seq) })));
    }
    return li;
  }

  // An edit or a recall arrived: the message it names, if shown, becomes what
  // history now says of it.
  function applyRevision(m) {
    const li = $(`#messages li.msg[data-seq="${m.ref}"]`);
    if (!li) return;
    if (m.kind === "edit" && !li.classList.contains("recalled")) {
      li.querySelector(".body").textContent = bodyText(m.body);
      li.dataset.edited = "yes";
    } else if (m.kind === "recall") {
      li.classList.add("recalled");
      li.querySelector(".body").textContent = "message recalled";
      li.querySelector(".actions")?.remove();
      if (S.editing && S.editing.seq === m.ref) stopEdit();
    }
  }

  // The other party's read position in the open direct chat: its ticks.
  function renderTicks(o) {
    if (!o) return;
    const read = conv(o.conv).peerRead || 0;
    for (const li of document.querySelectorAll("#messages li.msg.mine[data-seq]")) {
      li.classList.toggle("read", Number(li.dataset.seq) <= read);
    }
  }

  function onRead(e) {
    if (e.user === S.uid || typeof e.seq !== "number") return;
    const c = conv(e.conv);
    c.peerRead = Math.max(c.peerRead || 0, e.seq);
    if (S.open && S.open.conv === e.conv) renderTicks(S.open);
  }

  function append(m) {
    const o = S.open;
    if (!o || m.conv !== o.conv || m.seq <= o.hi) return;
    const atEnd = nearEnd();
    if (o.lo === 0) o.lo = m.seq;
    const wasEmpty = o.hi === 0;
    o.hi = m.seq;
    if (wasEmpty && o.ready) historyState(o);
    const li = messageItem(m);
    // Confirmed: the element shown at send time gives way to the stored one.
    const p = m.client_msg_id && m.from === S.uid ? o.pending.get(m.client_msg_id) : null;
    if (p) {
      o.pending.delete(m.client_msg_id);
      p.remove();
    }
    const firstPending = $("#messages li.pending");
    $("#messages").insertBefore(li, firstPending);
    if (m.kind) applyRevision(m);
    else if (m.from === S.uid) renderTicks(o);
    if (atEnd || m.from === S.uid) scrollToEnd();
  }

  function appendLive(m) {
    const text = m.body && typeof m.body.text === "string" ? m.body.text : JSON.stringify(m.body);
    $("#messages").append(
      el("li", { class: "msg live", dataset: { state: "live" } },
        el("span", { class: "from", text: m.from }),
        el("span", { class: "body", text }),
        el("span", { class: "meta", text: "live" })),
    );
    scrollToEnd();
  }

  function nearEnd() {
    const s = $("#scroller");
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }

  function scrollToEnd() {
    const s = $("#scroller");
    s.scrollTop = s.scrollHeight;
  }

  async function loadOlder() {
    const o = S.open;
    if (!o || !o.hasOlder || o.loadingOlder || o.lo <= 1) return;
    o.loadingOlder = true;
    $("#history-state").textContent = "loading older messages…";
    const s = $("#scroller");
    const before = s.scrollHeight;
    try {
      const page = await call(
        "GET",
        `/v1/conversations/${encodeURIComponent(o.conv)}/messages?before=${o.lo}&limit=${PAGE}`,
      );
      if (S.open !== o) return;
      const older = page.messages.filter((m) => m.seq < o.lo);
      const first = $("#messages").firstChild;
      for (const m of older) $("#messages").insertBefore(messageItem(m), first);
      if (older.length > 0) o.lo = older[0].seq;
      o.hasOlder = page.has_more && older.length > 0;
      s.scrollTop += s.scrollHeight - before; // keep the reader's place
    } catch (e) {
      $("#chat-error").textContent = describe(e);
    } finally {
      o.loadingOlder = false;
      if (S.open === o) historyState(o);
    }
  }

  // ---- acks ---------------------------------------------------------------------

  function markRead(o) {
    if (!o || o.hi === 0 || document.visibilityState !== "visible") return;
    const c = conv(o.conv);
    if (o.hi <= c.cursor) return;
    c.cursor = o.hi;
    S.acks.set(o.conv, o.hi);
    renderConversations();
    if (!S.ackTimer) S.ackTimer = setTimeout(flushAcks, 500);
  }

  async function flushAcks() {
    S.ackTimer = null;
    if (S.acks.size === 0) return;
    const cursors = Object.fromEntries(S.acks);
    S.acks.clear();
    try {
      await call("POST", "/v1/ack", { cursors });
    } catch (e) {
      if (e.transient) {
        for (const [k, v] of Object.entries(cursors)) {
          if (!S.acks.has(k) || S.acks.get(k) < v) S.acks.set(k, v);
        }
        if (!S.ackTimer) S.ackTimer = setTimeout(flushAcks, 3000);
      }
    }
  }

  // ---- sending ------------------------------------------------------------------

  async function send(text) {
    const o = S.open;
    if (!o || !text.trim()) return;
    const id = `${S.device}-${Date.now().toString(36)}-${++S.sendCounter}`;
    const body = { text };
    const req = { body, client_msg_id: id };
    if (o.conv.startsWith("group:")) req.group = o.conv.slice(6);
    else req.to = peerOf(o.conv);
    const li = el(
      "li",
      { class: "msg mine pending", dataset: { state: "sending", cmid: id } },
      el("span", { class: "body", text }),
      el("span", { class: "meta", text: "sending…" }),
    );
    o.pending.set(id, li);
    $("#messages").append(li);
    scrollToEnd();
    // One conversation's sends go one after the other, so that what was typed
    // in order (offline, say) is stored in that order.
    const prev = S.outboxes.get(o.conv) || Promise.resolve();
    const done = prev.then(() => deliver(req, li, id, body));
    S.outboxes.set(o.conv, done);
    done.finally(() => {
      if (S.outboxes.get(o.conv) === done) S.outboxes.delete(o.conv);
    });
  }

  // ---- editing and recalling one's own messages ----------------------------------

  function startEdit(seq, li) {
    S.editing = { seq };
    const t = $("#text");
    t.value = li.querySelector(".body").textContent;
    $("#editing").hidden = false;
    $("#editing-what").textContent = `Editing #${seq}`;
    t.focus();
  }

  function stopEdit() {
    S.editing = null;
    $("#editing").hidden = true;
  }

  function revisionPath(seq) {
    return `/v1/conversations/${encodeURIComponent(S.open.conv)}/messages/${seq}`;
  }

  // The answer to an edit or recall is the revision's place; it is applied as
  // the push of it would be (which, arriving too, changes nothing more).
  function revised(r, kind, ref, body) {
    const o = S.open;
    onMessage({ id: r.id, conv: r.conv, seq: r.seq, ts: r.ts, from: S.uid, to: peerOf(o.conv) || o.conv.slice(6), qos: 1, kind, ref, body });
  }

  async function edit(seq, text) {
    stopEdit();
    if (!S.open || !text.trim()) return;
    const body = { text };
    try {
      const client_msg_id = `${S.device}-${Date.now().toString(36)}-${++S.sendCounter}`;
      revised(await call("PATCH", revisionPath(seq), { body, client_msg_id }), "edit", seq, body);
    } catch (e) {
      $("#chat-error").textContent = `not edited: ${describe(e)}`;
    }
  }

  async function recall(seq) {
    if (!S.open) return;
    try {
      revised(await call("DELETE", revisionPath(seq)), "recall", seq, undefined);
    } catch (e) {
      $("#chat-error").textContent = `not recalled: ${describe(e)}`;
    }
  }

  async function deliver(req, li, id, body) {
    // Retried with the same client_msg_id until the server answers: a retry of a
    // send that was stored returns the original, never a second message.
    for (let attempt = 0; ; attempt++) {
      try {
        const r = await call("POST", "/v1/messages", req);
        onMessage({ id: r.id, conv: r.conv, seq: r.seq, ts: r.ts, from: S.uid, to: req.to || req.group, client_msg_id: id, qos: 1, body });
        return;
      } catch (e) {
        if (!e.transient || attempt >= 30) {
          li.dataset.state = "failed";
          li.querySelector(".meta").textContent = `not sent: ${describe(e)}`;
          return;
        }
        li.querySelector(".meta").textContent = "sending… (retrying)";
        const wait = e.retryAfter ? e.retryAfter * 1000 : Math.min(5000, 250 * 2 ** attempt);
        // A connection that comes back cuts the wait short.
        await Promise.race([sleep(wait * (0.75 + Math.random() / 2)), new Promise((r) => S.wake.push(r))]);
      }
    }
  }

  // ---- groups -------------------------------------------------------------------

  async function showMembers() {
    const o = S.open;
    if (!o || !o.conv.startsWith("group:")) return;
    const gid = o.conv.slice(6);
    let g;
    try {
      g = await call("GET", `/v1/groups/${encodeURIComponent(gid)}`);
    } catch (e) {
      $("#chat-error").textContent = describe(e);
      return;
    }
    const me = g.members.find((m) => m.user === S.uid);
    const manager = me && (me.role === "owner" || me.role === "admin");
    $("#members").replaceChildren(
      ...g.members.map((m) =>
        el(
          "li",
          { dataset: { user: m.user } },
          dot(m.user),
          el("span", { class: "name", text: m.user }),
          el("span", { class: "role", text: m.role }),
          manager && m.user !== S.uid
            ? el("button", {
                type: "button",
                class: "quiet",
                text: "Remove",
                onclick: () => groupCall("DELETE", `/v1/groups/${encodeURIComponent(gid)}/members/${encodeURIComponent(m.user)}`),
              })
            : null,
        ),
      ),
    );
    $("#add-member").hidden = !(manager || g.open);
    $("#group-info").hidden = false;
    watchPresence(g.members.map((m) => m.user));
  }

  async function groupCall(method, path, body) {
    try {
      await call(method, path, body);
      await showMembers();
    } catch (e) {
      $("#chat-error").textContent = describe(e);
    }
  }

  // ---- wiring -------------------------------------------------------------------

  $("#login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn(false);
  });
  $("#signup-button").addEventListener("click", () => {
    if ($("#login-form").reportValidity()) signIn(true);
  });
  $("#token-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      saveSession($("#token-input").value.trim());
      $("#token-input").value = "";
      await start();
    } catch (err) {
      $("#login-error").textContent = describe(err);
    }
  });
  $("#logout").addEventListener("click", () => logout());
  $("#open-dm").addEventListener("submit", (e) => {
    e.preventDefault();
    const u = $("#dm-user").value.trim();
    if (!u) return;
    if (u === S.uid) {
      $("#side-error").textContent = "That is you.";
      return;
    }
    $("#dm-user").value = "";
    $("#side-error").textContent = "";
    openChat(dmWith(u));
  });
  $("#create-group").addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = $("#group-name").value.trim();
    const users = $("#group-members").value.split(/[\s,]+/).filter(Boolean);
    try {
      const g = await call("POST", "/v1/groups", { name });
      if (users.length) await call("POST", `/v1/groups/${encodeURIComponent(g.id)}/members`, { users });
      $("#group-name").value = "";
      $("#group-members").value = "";
      $("#side-error").textContent = "";
      await loadGroups();
      openChat(`group:${g.id}`);
    } catch (err) {
      $("#side-error").textContent = describe(err);
    }
  });
  $("#add-contact").addEventListener("submit", async (e) => {
    e.preventDefault();
    const u = $("#contact-user").value.trim();
    try {
      await call("PUT", `/v1/contacts/${encodeURIComponent(u)}`);
      $("#contact-user").value = "";
      $("#side-error").textContent = "";
      await loadContacts();
      watchPresence([u]);
    } catch (err) {
      $("#side-error").textContent = describe(err);
    }
  });
  $("#members-button").addEventListener("click", () => {
    if ($("#group-info").hidden) showMembers();
    else $("#group-info").hidden = true;
  });
  $("#add-member").addEventListener("submit", (e) => {
    e.preventDefault();
    const o = S.open;
    const u = $("#member-user").value.trim();
    $("#member-user").value = "";
    if (o) groupCall("POST", `/v1/groups/${encodeURIComponent(o.conv.slice(6))}/members`, { users: [u] });
  });
  $("#leave-group").addEventListener("click", async () => {
    const o = S.open;
    if (!o) return;
    const gid = o.conv.slice(6);
    try {
      await call("DELETE", `/v1/groups/${encodeURIComponent(gid)}/members/${encodeURIComponent(S.uid)}`);
      dropGroup(gid);
      renderConversations();
    } catch (err) {
      $("#chat-error").textContent = describe(err);
    }
  });
  $("#back").addEventListener("click", closeChat);
  $("#composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const t = $("#text");
    const text = t.value;
    t.value = "";
    if (S.editing) edit(S.editing.seq, text);
    else send(text);
  });
  $("#cancel-edit").addEventListener("click", () => {
    stopEdit();
    $("#text").value = "";
  });
  $("#text").addEventListener("keydown", (e) => {
    if (e.key === "Escape" && S.editing) {
      stopEdit();
      $("#text").value = "";
    }
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("#composer").requestSubmit();
    }
  });
  $("#scroller").addEventListener("scroll", () => {
    if ($("#scroller").scrollTop < 60) loadOlder();
  });
  document.addEventListener("visibilitychange", () => markRead(S.open));
  // Presence a user shares later (a new contact, a new co-member) is found by
  // asking again now and then.
  setInterval(() => {
    if (S.uid && Date.now() - S.lastWatchCheck > 20000) watchPresence();
  }, 5000);

  start();
})();
