// Kiln admin: live fragments from the SSE stream, confirmations, select-all. No framework, no build.
(function () {
  "use strict";

  // A live element: <div data-live="URL?fragment=x" data-live-actions="node. noderole.state"
  //                      data-live-subjects="node:5 node_role:12">
  // An event whose action matches one of the actions (a prefix when it ends in ".") and, when
  // subjects are given, whose subject is one of them, re-fetches URL and swaps the element.
  function matches(el, ev) {
    var actions = (el.getAttribute("data-live-actions") || "").split(/\s+/).filter(Boolean);
    var okAction = actions.length === 0 || actions.some(function (a) {
      return a.slice(-1) === "." ? ev.action.indexOf(a) === 0 : ev.action === a;
    });
    if (!okAction) return false;
    var subjects = (el.getAttribute("data-live-subjects") || "").split(/\s+/).filter(Boolean);
    return subjects.length === 0 || subjects.indexOf(ev.subject_type + ":" + ev.subject_id) >= 0;
  }

  // Keyed by element id: a swap replaces the element, the id stays, so a refresh queued during a
  // fetch still runs on the fresh element (and picks up changes the first fetch may have missed).
  var timers = {};
  var busy = {};

  function refresh(id) {
    var el = document.getElementById(id);
    if (!el) return;
    if (busy[id]) { schedule(id, 300); return; }
    busy[id] = true;
    fetch(el.getAttribute("data-live"), { credentials: "same-origin", headers: { "X-Requested-With": "kiln" } })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); throw new Error("logged out"); }
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (html) {
        var box = document.createElement("div");
        box.innerHTML = html.trim();
        var fresh = box.firstElementChild;
        var current = document.getElementById(id);
        if (!fresh || !current) return;
        keepState(current, fresh);
        current.replaceWith(fresh);
        fresh.dispatchEvent(new CustomEvent("kiln:updated", { bubbles: true }));
      })
      .catch(function () { /* the next event retries */ })
      .finally(function () { busy[id] = false; });
  }

  // Keep what the operator is doing across a swap: ticked boxes and open <details>.
  function keepState(old, fresh) {
    old.querySelectorAll("input[type=checkbox][name]:checked").forEach(function (box) {
      var same = fresh.querySelector('input[type=checkbox][name="' + box.name + '"][value="' + box.value + '"]');
      if (same) same.checked = true;
    });
    old.querySelectorAll("details[id][open]").forEach(function (d) {
      var same = fresh.querySelector("details#" + CSS.escape(d.id));
      if (same) same.open = true;
    });
  }

  function schedule(id, delay) {
    if (timers[id]) return;
    timers[id] = setTimeout(function () { timers[id] = null; refresh(id); }, delay);
  }

  function onEvent(ev) {
    document.querySelectorAll("[data-live][id]").forEach(function (el) {
      if (matches(el, ev)) schedule(el.id, 150);
    });
  }

  var lastId = 0;

  function setDot(state, title) {
    var dot = document.getElementById("live-dot");
    if (dot) { dot.className = "live-dot " + state; dot.title = title; }
  }

  // The server keeps a bounded number of streams (each holds one of its threads). When it refuses
  // (503) or the stream cannot be had, the page polls the events list instead and stays live.
  function poll() {
    var url = document.body.getAttribute("data-events");
    fetch(url + "?limit=500&since=" + lastId, { credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (page) {
        setDot("up", "live (polling)");
        page.items.forEach(function (ev) { lastId = Math.max(lastId, ev.id); onEvent(ev); });
      })
      .catch(function () { setDot("down", "reconnecting"); })
      .finally(function () { setTimeout(poll, 2000); });
  }

  function connect() {
    var url = document.body.getAttribute("data-stream");
    if (!url) return;
    lastId = parseInt(document.body.getAttribute("data-last-event") || "0", 10);
    if (!window.EventSource) { poll(); return; }
    var source = new EventSource(url + "?since=" + lastId);
    source.addEventListener("open", function () { setDot("up", "live"); });
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) { poll(); } else { setDot("down", "reconnecting"); }
    });
    source.addEventListener("kiln", function (msg) {
      try {
        var ev = JSON.parse(msg.data);
        lastId = Math.max(lastId, ev.id);
        onEvent(ev);
      } catch (e) { /* a malformed message is dropped */ }
    });
  }

  // Forms with data-confirm ask first; buttons with data-confirm too.
  document.addEventListener("submit", function (e) {
    var form = e.target;
    var text = form.getAttribute("data-confirm");
    if (text && !window.confirm(text)) e.preventDefault();
  });

  // A "select all" checkbox ticks every box named by its data-select-all.
  document.addEventListener("change", function (e) {
    var t = e.target;
    if (t.matches && t.matches("input[data-select-all]")) {
      document.querySelectorAll('input[type=checkbox][name="' + t.getAttribute("data-select-all") + '"]')
        .forEach(function (box) { if (!box.disabled) box.checked = t.checked; });
    }
  });

  document.addEventListener("DOMContentLoaded", connect);
})();
