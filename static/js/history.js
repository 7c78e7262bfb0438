// History page: confirm deletions, tick rows to delete together, and keep queued or running rows up to date without
// a reload.
(function () {
  "use strict";

  // Rounded down as classifier.views.confidence_percent does: rounded to the nearest, a confidence just below the
  // "not sure" threshold would read as the threshold itself.
  function percentFloor(confidence) { return Math.floor(confidence * 100 + 1e-9); }

  // A Delete link leads to a confirmation page (for browsers without JavaScript); here the question is asked in place
  // and the deletion sent at once. "Delete all" names its own form, which holds the filters and the count's bound.
  const deleteForm = document.getElementById("delete-confirmed");
  document.querySelectorAll("a[data-confirm]").forEach(function (link) {
    link.addEventListener("click", function (event) {
      event.preventDefault();
      if (!window.confirm(link.dataset.confirm)) return;
      const form = link.dataset.confirmForm ? document.getElementById(link.dataset.confirmForm) : deleteForm;
      if (form === deleteForm) form.action = link.pathname;
      form.submit();
    });
  });

  // The filters say what the list holds: a page shown again from the browser's memory (Back) would keep a choice made
  // but not sent, over the list of the filters it was sent with.
  const filters = document.getElementById("filters");
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) filters.reset();
  });

  // Ticked rows: "Select all on this page" becomes a checkbox (a link that reloads the page without JavaScript), the
  // button says how many it deletes, and the question is asked in place of the confirmation page.
  const bulkForm = document.getElementById("bulk-delete");
  if (bulkForm) {
    const boxes = Array.from(bulkForm.querySelectorAll("input[name=upload]"));
    const selectAll = document.getElementById("select-all");
    const button = document.getElementById("delete-selected");
    const note = document.getElementById("bulk-delete-note");
    const ticked = function () { return boxes.filter(function (box) { return box.checked; }).length; };
    const uploads = function (count) { return count + " upload" + (count === 1 ? "" : "s"); };

    const refresh = function () {
      const count = ticked();
      selectAll.checked = count > 0 && count === boxes.length;
      selectAll.indeterminate = count > 0 && count < boxes.length;
      button.textContent = count ? "Delete " + count + " selected" : "Delete selected";
      if (count) note.textContent = "";
    };

    document.getElementById("select-all-box").hidden = false;
    document.getElementById("select-all-link").hidden = true;
    selectAll.addEventListener("change", function () {
      boxes.forEach(function (box) { box.checked = selectAll.checked; });
      refresh();
    });
    boxes.forEach(function (box) { box.addEventListener("change", refresh); });
    refresh();
    // Back brings the rows ticked on the page left back ticked, after this script ran: the button counts them again.
    window.addEventListener("pageshow", refresh);

    bulkForm.addEventListener("submit", function (event) {
      event.preventDefault();
      const count = ticked();
      const confirmed = document.getElementById("bulk-confirmed");
      confirmed.value = "";
      if (!count) {
        // Shown beside the button, and said through the page's one live region.
        note.textContent = "Select the uploads to delete first.";
        document.getElementById("history-announcement").textContent = note.textContent;
        return;
      }
      if (!window.confirm("Delete " + uploads(count) + " and " + (count === 1 ? "its" : "their") +
                          " images? This cannot be undone.")) return;
      confirmed.value = "1";
      bulkForm.submit();
    });
  }

  // Why a row failed, shortened as the template's truncatechars:100 does; the result page has the whole text.
  const REASON_CHARS = 100;
  function reasonText(data) {
    const error = data.error.length > REASON_CHARS ? data.error.slice(0, REASON_CHARS - 1) + "…" : data.error;
    return data.no_digit ? error + " Try another picture." : error;
  }

  function update(row, data) {
    row.dataset.status = data.status;
    const badge = row.querySelector(".js-status");
    badge.className = "badge badge-" + data.status + " js-status";
    badge.textContent = data.status === "pending" ? "queued" : data.status;
    const reason = row.querySelector(".js-reason");
    reason.hidden = !(data.status === "failed" && data.error);
    if (!reason.hidden) {
      reason.textContent = reasonText(data);
      reason.title = data.error;
    }
    if (data.status === "done") {
      const digit = row.querySelector(".js-digit");
      digit.textContent = data.digit;
      digit.removeAttribute("aria-hidden");
      row.querySelector(".js-digit-label").hidden = false;
      const conf = row.querySelector(".js-confidence");
      conf.textContent = percentFloor(data.confidence) + "%" + (data.low_confidence ? " · not sure" : "");
      conf.classList.toggle("low", data.low_confidence);
    }
  }

  function waiting(row) { return row.dataset.status === "pending" || row.dataset.status === "running"; }

  // Screen readers hear one summary per poll in which rows finished, counted over the rows that were waiting when
  // the page opened ("2 read: 2 of 4 uploads read, 2 still waiting."): a message per row would be a flood in a batch.
  // Only this page's rows are polled: where there are more pages, the count says "on this page".
  const announcement = document.getElementById("history-announcement");
  const watched = Array.from(document.querySelectorAll(".history-item[data-json-url]")).filter(waiting);

  function announce(read, failed) {
    // A row deleted meanwhile (its address dropped) no longer counts.
    const rows = watched.filter(function (row) { return row.hasAttribute("data-json-url"); });
    const done = rows.filter(function (row) { return row.dataset.status === "done"; }).length;
    const left = rows.filter(waiting).length;
    const news = [];
    if (read) news.push(read + (done > read ? " more" : "") + " read");
    if (failed) news.push(failed + " failed");
    announcement.textContent = news.join(", ") + ": " + done + " of " + rows.length + " upload" +
      (rows.length === 1 ? "" : "s") + (announcement.dataset.scope || "") + " read" +
      (left ? ", " + left + " still waiting" : "") + ".";
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

  // While no worker takes predictions the page says so, as the result page does, and screen readers hear it once.
  const stalledNote = document.getElementById("history-stalled");

  function showStalled(stalled) {
    if (stalled && stalledNote.hidden) announcement.textContent = stalledNote.dataset.note;
    stalledNote.hidden = !stalled;
    stalledNote.textContent = stalled ? stalledNote.dataset.note : "";
  }

  // Polls sent to the log-in page stop, and the page says why its rows no longer change, as the result page does.
  const endedNote = document.getElementById("history-ended");

  function showEnded() {
    if (stalledNote) showStalled(false);
    endedNote.hidden = false;
    announcement.textContent = endedNote.textContent;
  }

  // One request a poll for every row still waiting, not one a row: a batch's page would otherwise send twenty at
  // once, each a request the site answers beside the worker reading them.
  const listUrl = document.getElementById("history-list") &&
    document.getElementById("history-list").dataset.predictionsUrl;

  function poll() {
    const open = Array.from(document.querySelectorAll(".history-item[data-json-url]")).filter(waiting);
    if (!open.length) return;
    let changed = false;
    let ended = false;
    let read = 0;
    let failed = 0;
    let answered = 0;
    let stalled = false;
    const query = open.map(function (row) { return "id=" + encodeURIComponent(row.dataset.predictionId); });
    fetch(listUrl + "?" + query.join("&"), { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.redirected) {
          ended = true;  // sent to the log-in page: no row can be updated any more
        } else if (r.ok) {
          return r.json();
        }
        return null;  // a restarting site (a proxy's 502): asked again at the next poll
      })
      .then(function (data) {
        if (!data) return;
        const answers = new Map(data.predictions.map(function (p) { return [String(p.id), p]; }));
        open.forEach(function (row) {
          const answer = answers.get(row.dataset.predictionId);
          if (!answer) {
            row.removeAttribute("data-json-url");  // deleted meanwhile: nothing left to wait for
            return;
          }
          answered += 1;
          stalled = stalled || Boolean(answer.queue_stalled);
          changed = changed || answer.status !== row.dataset.status;
          if (answer.status === "done") read += 1;
          if (answer.status === "failed") failed += 1;
          update(row, answer);
        });
      })
      .catch(function () {})
      .then(function () {
        if (answered && stalledNote) showStalled(stalled);
        if (read || failed) announce(read, failed);
        if (ended) {
          showEnded();
          return;
        }
        delay = changed ? FIRST_MS : Math.min(delay * 1.5, MAX_MS);
        schedule();
      });
  }
  schedule();
})();
