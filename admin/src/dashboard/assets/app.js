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

  // A folder chosen in the browser, packed as a .tar.gz here (ustar, then CompressionStream):
  // node_modules and .git are left out, as the CLI leaves them out.
  const enc = new TextEncoder();
  function octal(n, width) {
    return n.toString(8).padStart(width - 1, "0") + "\0";
  }
  function header(path, size, dir) {
    const h = new Uint8Array(512);
    let name = enc.encode(path);
    let prefix = new Uint8Array(0);
    if (name.length > 100) {
      // Split at a slash: prefix (155 bytes at most) / name (100 at most).
      const cut = path.lastIndexOf("/", path.length - 1);
      let at = -1;
      for (let i = cut; i > 0; i = path.lastIndexOf("/", i - 1)) {
        if (enc.encode(path.slice(i + 1)).length > 100) break;
        if (enc.encode(path.slice(0, i)).length <= 155) { at = i; break; }
      }
      if (at < 0) throw new Error("a path is too long for a tar archive: " + path);
      prefix = enc.encode(path.slice(0, at));
      name = enc.encode(path.slice(at + 1));
    }
    const put = function (bytes, at) { h.set(bytes, at); };
    put(name, 0);
    put(enc.encode(octal(dir ? 0o755 : 0o644, 8)), 100);
    put(enc.encode(octal(0, 8)), 108);
    put(enc.encode(octal(0, 8)), 116);
    put(enc.encode(octal(size, 12)), 124);
    put(enc.encode(octal(Math.floor(Date.now() / 1000), 12)), 136);
    put(enc.encode("        "), 148);
    h[156] = dir ? 0x35 : 0x30;
    put(enc.encode("ustar\0" + "00"), 257);
    put(prefix, 345);
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += h[i];
    put(enc.encode(sum.toString(8).padStart(6, "0") + "\0 "), 148);
    return h;
  }
  // files: [{ path, blob }], paths relative to the app's folder.
  async function pack(files) {
    const parts = [];
    const dirs = new Set();
    for (const f of files) {
      const segs = f.path.split("/");
      for (let i = 1; i < segs.length; i++) {
        const d = segs.slice(0, i).join("/") + "/";
        if (!dirs.has(d)) { dirs.add(d); parts.push(header(d, 0, true)); }
      }
      parts.push(header(f.path, f.blob.size, false));
      parts.push(new Uint8Array(await f.blob.arrayBuffer()));
      const pad = (512 - (f.blob.size % 512)) % 512;
      if (pad) parts.push(new Uint8Array(pad));
    }
    parts.push(new Uint8Array(1024));
    const gz = new Blob(parts).stream().pipeThrough(new CompressionStream("gzip"));
    return new Response(gz).blob();
  }
  // The files of an <input webkitdirectory>, without the chosen folder's own name.
  function folderFiles(list) {
    const out = [];
    for (const file of list) {
      const segs = (file.webkitRelativePath || file.name).split("/").slice(1);
      if (segs.some(function (s) { return s === "node_modules" || s === ".git"; })) continue;
      if (segs.length) out.push({ path: segs.join("/"), blob: file });
    }
    return out;
  }
  window.spinforge = { pack: pack };

  // The deploy page: upload the archive, then stream the build's log to its end.
  const form = document.getElementById("deploy");
  if (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      const app = form.elements.app.value;
      const option = form.elements.app.selectedOptions[0];
      const folder = form.elements.folder.files;
      let file = form.elements.file.files[0];
      const git = form.elements.git.value.trim();
      const button = form.querySelector("button");
      const status = document.getElementById("deploy-status");
      const log = document.getElementById("build-log");
      const result = document.getElementById("deploy-result");
      const say = function (text) { status.textContent = text; };
      if ((file ? 1 : 0) + (git ? 1 : 0) + (folder.length ? 1 : 0) !== 1) {
        say("Choose a .tar.gz, a folder or give a git URL (one of them).");
        return;
      }
      button.disabled = true;
      result.textContent = "";
      let packed = Promise.resolve(file);
      if (folder.length) {
        say("Packing " + folder.length + " files…");
        packed = pack(folderFiles(folder));
      }
      packed.then(function (archive) {
        file = archive;
        say(file ? "Uploading " + (file.name || "the folder") + "…" : "Asking for a build from git…");
        return fetch("/ui/apps/" + encodeURIComponent(app) + "/deploy", {
          method: "POST",
          credentials: "same-origin",
          headers: {
            "Content-Type": file ? "application/gzip" : "application/json",
            "X-CSRF-Token": csrf,
          },
          body: file ? file : JSON.stringify({ source: git }),
        });
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
