// SpinForge dashboard: a little progressive enhancement over server-rendered pages. Text from
// the server (log lines) is only ever set as textContent, never parsed as HTML.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]');
  window.spinforge = { csrf: csrf ? csrf.content : "" };

  // Buttons that change something important ask first.
  document.addEventListener("submit", function (ev) {
    const form = ev.target;
    const ask = form.getAttribute("data-confirm");
    if (ask && !window.confirm(ask)) ev.preventDefault();
  });
})();
