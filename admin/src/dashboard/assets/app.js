// SpinForge dashboard: a little progressive enhancement over server-rendered pages. Text from
// the server (log lines) is only ever set as textContent, never parsed as HTML.
"use strict";
(function () {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : "";

  // Buttons that change something important ask first.
  document.addEventListener("submit", function (ev) {
    const ask = ev.target.getAttribute("data-confirm");
    if (ask && !window.confirm(ask)) ev.preventDefault();
  });

  // The live log tail: the API's log stream, as text.
  const MAX_LINES = 1000;
  function tail(pre) {
    const status = document.getElementById("log-status");
    const say = function (text) { if (status) status.textContent = text; };
    const src = new EventSource(pre.getAttribute("data-src"));
    let broke = false;
    src.onopen = function () {
      // A reconnect sends the tail again: start over rather than repeat it.
      if (broke) pre.textContent = "";
      broke = false;
      say("Live: new lines appear as the app writes them.");
    };
    src.onmessage = function (ev) {
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.appendChild(document.createTextNode(ev.data + "\n"));
      while (pre.childNodes.length > MAX_LINES) pre.removeChild(pre.firstChild);
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    };
    src.onerror = function () {
      broke = true;
      say("Disconnected: reconnecting…");
    };
  }
  const pre = document.querySelector("pre.log[data-src]");
  if (pre) tail(pre);

  // Live pages: the store's events (/ui/events) make the page fetch itself again and swap in
  // the parts marked data-live that changed. Bursts are coalesced; no polling.
  const FOCUSABLE = "a[href], button, input, select, textarea, [tabindex]";
  function live() {
    if (!document.querySelector("[data-live][id]")) return;
    const m = location.pathname.match(/^\/ui\/apps\/([^/]+)$/);
    const mine = m ? decodeURIComponent(m[1]) : null;
    let timer = null;
    let busy = false;
    let again = false;
    function refresh() {
      if (busy) { again = true; return; }
      busy = true;
      fetch(location.pathname, { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (r) {
          if (r.redirected || !r.ok) throw new Error("HTTP " + r.status);
          return r.text();
        })
        .then(function (text) {
          const doc = new DOMParser().parseFromString(text, "text/html");
          document.querySelectorAll("[data-live][id]").forEach(function (old) {
            const fresh = doc.getElementById(old.id);
            if (!fresh || fresh.innerHTML === old.innerHTML) return;
            // Keyboard users keep their place: focus goes to the same control in the new part.
            const active = document.activeElement;
            const at = active && old.contains(active)
              ? Array.prototype.indexOf.call(old.querySelectorAll(FOCUSABLE), active) : -1;
            const node = document.importNode(fresh, true);
            old.replaceWith(node);
            if (at >= 0) {
              const again = node.querySelectorAll(FOCUSABLE)[at];
              if (again) again.focus();
            }
          });
          document.documentElement.setAttribute("data-live-at", String(Date.now()));
        })
        .catch(function () {})
        .finally(function () {
          busy = false;
          if (again) { again = false; schedule(); }
        });
    }
    function schedule() {
      if (timer === null) timer = setTimeout(function () { timer = null; refresh(); }, 100);
    }
    const events = new EventSource("/ui/events");
    let broke = false;
    events.addEventListener("change", function (ev) {
      let d = {};
      try { d = JSON.parse(ev.data); } catch (e) { /* a change all the same */ }
      if (mine && d.app && d.app !== mine) return;
      schedule();
    });
    events.addEventListener("resync", schedule);
    events.onopen = function () {
      document.documentElement.setAttribute("data-live", "open");
      if (broke) schedule();
      broke = false;
    };
    events.onerror = function () { broke = true; };
  }
  live();

  // The deploy page: upload the archive, then stream the build's log to its end.
  const form = document.getElementById("deploy");
  if (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      const app = form.elements.app.value;
      const option = form.elements.app.selectedOptions[0];
      const file = form.elements.file.files[0];
      const git = form.elements.git.value.trim();
      const button = form.querySelector("button");
      const status = document.getElementById("deploy-status");
      const log = document.getElementById("build-log");
      const result = document.getElementById("deploy-result");
      const say = function (text) { status.textContent = text; };
      if (!file === !git) {
        say("Choose a .tar.gz or give a git URL (one of them).");
        return;
      }
      button.disabled = true;
      result.textContent = "";
      say(file ? "Uploading " + file.name + "…" : "Asking for a build from git…");
      fetch("/ui/apps/" + encodeURIComponent(app) + "/deploy", {
        method: "POST",
        credentials: "same-origin",
        headers: {
          "Content-Type": file ? "application/gzip" : "application/json",
          "X-CSRF-Token": csrf,
        },
        body: file ? file : JSON.stringify({ source: git }),
      })
        .then(function (r) {
          return r.json().then(function (j) { return { ok: r.ok, j: j }; },
            function () { return { ok: false, j: { detail: "HTTP " + r.status } }; });
        })
        .then(function (a) {
          if (!a.ok) throw new Error(a.j.detail || "the upload was refused");
          say("Building (" + a.j.build + ")…");
          log.hidden = false;
          log.textContent = "";
          const src = new EventSource("/ui/builds/" + encodeURIComponent(a.j.build) + "/log");
          src.onmessage = function (m) {
            log.appendChild(document.createTextNode(m.data + "\n"));
            log.scrollTop = log.scrollHeight;
          };
          src.addEventListener("end", function (m) {
            src.close();
            button.disabled = false;
            let end = {};
            try { end = JSON.parse(m.data); } catch (e) { /* shown as unknown */ }
            if (end.state === "succeeded") {
              say("Deployed: release " + end.release + " is served now.");
              const url = option ? option.getAttribute("data-url") : "";
              if (url && url.indexOf("https://") === 0) {
                result.textContent = "Live at ";
                const link = document.createElement("a");
                link.href = url;
                link.textContent = url;
                result.appendChild(link);
              }
            } else {
              say("The build " + (end.state || "ended") + (end.error ? ": " + end.error : "."));
            }
          });
          src.onerror = function () {
            if (src.readyState === EventSource.CLOSED) { button.disabled = false; say("The build log broke off."); }
          };
        })
        .catch(function (err) {
          button.disabled = false;
          say("Refused: " + err.message);
        });
    });
  }
})();
