// Openloop dashboard: the only script. Pages work without it; it makes them live.
//
// - `data-live-events` + `data-live-src` (a table body): when the event stream says
//   `changed`, fetch the rows again and swap them in (at most every 300 ms).
// - `data-log-events` (a <pre>): append each `log` event as a line; a `status` event updates
//   the page's own status badge (`[data-live-status]`); `end` reloads the page to show the outcome.
// - `form[data-confirm]`: asks before submitting (cancel, shutdown, revoke).
"use strict";

function liveTable(el) {
  const events = new EventSource(el.dataset.liveEvents);
  let timer = null;
  events.addEventListener("changed", () => {
    if (timer !== null) return;
    timer = setTimeout(async () => {
      timer = null;
      try {
        const resp = await fetch(el.dataset.liveSrc, { credentials: "same-origin" });
        if (resp.ok && !resp.redirected) el.innerHTML = await resp.text();
      } catch (_) {
        // The next change tries again.
      }
    }, 300);
  });
  window.addEventListener("pagehide", () => events.close());
}

function logLine(data, format) {
  const line = document.createElement("div");
  if (format === "json") {
    const entry = JSON.parse(data);
    line.className = "log " + entry.stream;
    const when = new Date(entry.ts_ms).toISOString().slice(11, 19);
    const level = entry.level ? entry.level + " " : "";
    line.textContent = when + " " + entry.stream + " " + level + entry.message;
  } else {
    line.className = "log";
    line.textContent = data;
  }
  return line;
}

function logTail(el) {
  const events = new EventSource(el.dataset.logEvents);
  const format = el.dataset.logFormat || "text";
  events.addEventListener("log", (e) => {
    const atBottom = el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
    el.querySelector(".empty-log")?.remove();
    el.appendChild(logLine(e.data, format));
    if (atBottom) el.scrollTop = el.scrollHeight;
  });
  events.addEventListener("status", (e) => {
    const view = JSON.parse(e.data);
    document.querySelectorAll("[data-live-status]").forEach((b) => {
      b.textContent = view.status;
      b.className = "badge " + view.status;
    });
  });
  events.addEventListener("end", () => {
    events.close();
    window.location.reload();
  });
  window.addEventListener("pagehide", () => events.close());
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live-events]").forEach(liveTable);
  document.querySelectorAll("[data-log-events]").forEach(logTail);
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (e) => {
      if (!window.confirm(form.dataset.confirm)) e.preventDefault();
    });
  });
});
