// Shared by the chat page and the operator's page: the HTTP API and DOM helpers.
// Text always goes into the page through textContent, never innerHTML: a message
// body, a user id or a group name can never become markup.
"use strict";

const imqtt = (() => {
  class ApiError extends Error {
    constructor(status, code, message, retryAfter) {
      super(message);
      this.status = status;
      this.code = code;
      this.retryAfter = retryAfter;
    }
    // Whether the same request may succeed later: the network, a timeout, a full
    // server, a rate limit.
    get transient() {
      return this.status === 0 || this.status === 408 || this.status === 429 || this.status >= 500;
    }
  }

  // Calls the HTTP API; resolves to the JSON answer (or null for 204), rejects
  // with an ApiError carrying the server's error code.
  async function api(method, path, { token, body, timeoutMs = 10000 } = {}) {
    const headers = {};
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), timeoutMs);
    let res;
    try {
      res = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: ctl.signal,
        cache: "no-store",
      });
    } catch (e) {
      throw new ApiError(0, "network", "the server cannot be reached");
    } finally {
      clearTimeout(timer);
    }
    if (res.status === 204) return null;
    let json = null;
    try {
      json = await res.json();
    } catch (e) {
      json = null;
    }
    if (!res.ok) {
      const err = (json && json.error) || {};
      const retry = Number(res.headers.get("Retry-After")) || 0;
      throw new ApiError(res.status, err.code || `http_${res.status}`, err.message || res.statusText, retry);
    }
    return json;
  }

  // el("li", {class: "x", dataset: {seq: 3}}, "text", child) builds an element.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "dataset") Object.assign(e.dataset, v);
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  const $ = (sel, root = document) => root.querySelector(sel);

  // The claims of a JWT, without checking it (the server does): for its `sub`
  // and `exp` only.
  function claims(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const json = atob(part + "=".repeat((4 - (part.length % 4)) % 4));
      return JSON.parse(json);
    } catch (e) {
      return null;
    }
  }

  function time(ms) {
    if (!ms) return "";
    const d = new Date(ms);
    const now = new Date();
    if (d.toDateString() === now.toDateString()) {
      return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    }
    return d.toLocaleDateString([], { month: "short", day: "numeric" });
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  return { ApiError, api, el, $, claims, time, bytes, sleep };
})();
