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

  window.spinforge = { csrf: csrf };
})();
