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

  function poll() {
    const open = Array.from(document.querySelectorAll(".history-item[data-json-url]")).filter(function (row) {
      return row.dataset.status === "pending" || row.dataset.status === "running";
    });
    if (!open.length) return;
    Promise.all(open.map(function (row) {
      return fetch(row.dataset.jsonUrl, { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) { if (data) update(row, data); })
        .catch(function () {});
    })).then(function () { setTimeout(poll, 700); });
  }
  setTimeout(poll, 500);
})();
