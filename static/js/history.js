// History page: confirm deletions, and keep queued or running rows up to date without a reload.
(function () {
  "use strict";
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });

  function update(row, data) {
    row.dataset.status = data.status;
    const badge = row.querySelector(".js-status");
    badge.className = "badge badge-" + data.status + " js-status";
    badge.textContent = data.status === "pending" ? "queued" : data.status;
    if (data.status === "done") {
      row.querySelector(".js-digit").textContent = data.digit;
      const conf = row.querySelector(".js-confidence");
      conf.textContent = Math.round(data.confidence * 100) + "%" + (data.low_confidence ? " · not sure" : "");
      conf.classList.toggle("low", data.low_confidence);
    }
  }

  // Pauses grow while nothing changes, to one every few seconds; a hidden tab waits until it is shown again.
  const FIRST_MS = 700;
  const MAX_MS = 5000;
  let delay = FIRST_MS;

  function schedule() {
    setTimeout(function () {
      if (document.hidden) {
        document.addEventListener("visibilitychange", poll, { once: true });
      } else {
        poll();
      }
    }, delay);
  }

  function poll() {
    const open = Array.from(document.querySelectorAll(".history-item[data-json-url]")).filter(function (row) {
      return row.dataset.status === "pending" || row.dataset.status === "running";
    });
    if (!open.length) return;
    let changed = false;
    let ended = false;
    Promise.all(open.map(function (row) {
      return fetch(row.dataset.jsonUrl, { credentials: "same-origin", cache: "no-store" })
        .then(function (r) {
          if (r.redirected) {
            ended = true;  // sent to the log-in page: no row can be updated any more
          } else if (r.status === 404) {
            row.removeAttribute("data-json-url");  // deleted meanwhile: nothing left to wait for
          } else if (r.ok) {
            return r.json();
          }
          return null;
        })
        .then(function (data) {
          if (!data) return;
          changed = changed || data.status !== row.dataset.status;
          update(row, data);
        })
        .catch(function () {});
    })).then(function () {
      if (ended) return;
      delay = changed ? FIRST_MS : Math.min(delay * 1.5, MAX_MS);
      schedule();
    });
  }
  schedule();
})();
