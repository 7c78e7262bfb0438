// Result page: poll the prediction's JSON while it is queued or running, then show the answer in place.
(function () {
  "use strict";

  // Rounded down as classifier.views.confidence_percent does: rounded to the nearest, a confidence just below the
  // "not sure" threshold would read as the threshold itself.
  function percentFloor(confidence) { return Math.floor(confidence * 100 + 1e-9); }
  // The bars' percentages to a tenth, rounded down the same way (classifier.views.probability_percent).
  function tenthsFloor(probability) { return (Math.floor(probability * 1000 + 1e-8) / 10).toFixed(1); }
  const root = document.getElementById("result");
  if (!root) return;
  // Reached from the upload page, or by the redirect that answers a drawing taken (the address the browser sends as
  // where it came from may be left out), a drawing sent from there was taken: static/js/upload.js, which keeps it in
  // this tab until it is answered, must not bring it back.
  try {
    const navigation = performance.getEntriesByType("navigation")[0];
    const fromUpload = document.referrer && new URL(document.referrer).pathname === root.dataset.uploadPage;
    if (fromUpload || (navigation && navigation.redirectCount > 0)) sessionStorage.removeItem("upload-drawing");
  } catch (error) { /* storage off */ }
  const url = root.dataset.jsonUrl;
  const POLL_MS = 300;
  const MAX_POLL_MS = 5000;
  let delay = POLL_MS;

  function byId(id) { return document.getElementById(id); }

  // "a 7", but "an 8", as classifier.views.digit_with_article says it.
  function digitWithArticle(digit) { return (digit === 8 ? "an " : "a ") + digit; }

  // Delete leads to a confirmation page (for browsers without JavaScript); here the question is asked in place.
  const deleteLink = byId("delete-upload");
  if (deleteLink) {
    deleteLink.addEventListener("click", function (event) {
      event.preventDefault();
      if (window.confirm(deleteLink.dataset.confirm)) byId("delete-confirmed").submit();
    });
  }

  function render(data) {
    root.dataset.status = data.status;
    const badge = byId("status-badge");
    badge.className = "badge badge-" + data.status;
    badge.textContent = data.status === "pending" ? "queued" : data.status;
    byId("status-note").textContent =
      data.status === "pending" ? "Waiting for a worker…" : data.status === "running" ? "Recognising…" : "";
    byId("spinner").hidden = data.finished;
    // While no worker takes predictions the page says so, and screen readers hear it once; the polls go on.
    const stalled = byId("stalled-note");
    if (data.queue_stalled && stalled.hidden) byId("verdict-announcement").textContent = stalled.dataset.note;
    stalled.hidden = !data.queue_stalled;
    stalled.textContent = data.queue_stalled ? stalled.dataset.note : "";
    byId("spinner-text").textContent =
      data.status === "running" ? "The model is looking at your image…" : "Your image is waiting in the queue…";
    const failed = data.status === "failed";
    byId("error-box").hidden = !failed;
    byId("error-text").textContent = data.error || "";
    byId("no-digit-advice").hidden = !data.no_digit;
    byId("retry-form").hidden = Boolean(data.no_digit);
    byId("bars-section").hidden = failed;
    if (failed) byId("model-input-placeholder").textContent = "nothing";
    byId("fact-checkpoint").textContent = data.checkpoint_id ? "checkpoint " + data.checkpoint_id : "–";
    const answer = data.status === "done" ? "Read as " + data.digit + " · " : failed ? "Failed · " : "";
    document.title = answer + document.title.replace(/^(Read as \d|Failed) · /, "");
    if (data.status !== "done") return;

    byId("verdict").hidden = false;
    byId("digit").textContent = data.digit;
    byId("confidence").textContent = percentFloor(data.confidence) + "% confident";
    byId("not-sure").hidden = !data.low_confidence;
    byId("several-digits").hidden = !data.several_digits;
    document.querySelectorAll("#bars .bar-row").forEach(function (row) {
      const digit = parseInt(row.dataset.digit, 10);
      const percent = tenthsFloor(data.probabilities[digit]);
      row.querySelector(".bar-fill").style.width = percent + "%";
      row.querySelector(".bar-value").textContent = percent + "%";
      row.classList.toggle("top", digit === data.digit);
    });
    if (data.input_image_url) {
      const img = byId("model-input");
      img.src = data.input_image_url;
      img.hidden = false;
      byId("model-input-placeholder").hidden = true;
    }
    if (data.compute_ms !== null) {
      byId("fact-timing").textContent =
        "queued " + Math.round(data.queue_ms) + " ms · computed " + data.compute_ms.toFixed(1) + " ms on " + data.device;
    }
    byId("feedback").hidden = false;
  }

  // What screen readers say once the answer is in: the verdict and the notices shown with it, or why there is none.
  function announce(data) {
    let said;
    if (data.status === "done") {
      said = ["It is " + digitWithArticle(data.digit) + ", " + percentFloor(data.confidence) + "% confident."];
      ["not-sure", "several-digits"].forEach(function (id) {
        const notice = byId(id);
        if (notice && !notice.hidden) said.push(notice.textContent.trim());
      });
      said = said.join(" ");
    } else {
      said = "Could not recognise this image. " + (data.error || "");
    }
    byId("verdict-announcement").textContent = said.trim();
  }

  // While the status stays the same the pauses grow, to one every few seconds: a prediction can wait in the queue
  // for minutes (a stopped worker, the broker down). A hidden tab waits until it is shown again.
  function schedule(ms) {
    setTimeout(function () {
      if (document.hidden) {
        document.addEventListener("visibilitychange", poll, { once: true });
      } else {
        poll();
      }
    }, ms);
  }

  function stop(note) {
    byId("spinner").hidden = true;
    byId("stalled-note").hidden = true;
    byId("status-note").textContent = note;
  }

  function poll() {
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.redirected) return { ended: true };  // sent to the log-in page
        if (response.status === 404) return { gone: true };
        const json = (response.headers.get("Content-Type") || "").includes("application/json");
        // Anything else (a 5xx, a proxy's error page while the site restarts) is worth another try.
        if (!response.ok || !json) throw new Error("HTTP " + response.status);
        return response.json().then(function (data) { return { data: data }; });
      })
      .then(function (answer) {
        if (answer.ended) {
          stop("Your session has ended: reload the page and log in again to see the result.");
          return;
        }
        if (answer.gone) {
          stop("This prediction no longer exists: it was deleted.");
          return;
        }
        const data = answer.data;
        delay = data.status === root.dataset.status ? Math.min(delay * 1.5, MAX_POLL_MS) : POLL_MS;
        render(data);
        if (data.finished) {
          announce(data);
        } else {
          schedule(delay);
        }
      })
      .catch(function () {
        // Back off while the server is unreachable or failing, but keep trying.
        delay = Math.min(delay * 2, MAX_POLL_MS);
        schedule(delay);
      });
  }

  if (root.dataset.status === "pending" || root.dataset.status === "running") {
    schedule(POLL_MS);
  }
})();
