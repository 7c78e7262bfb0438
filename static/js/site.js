// Every page: times are sent in the server's time zone, named ("2026-12-03 12:10 UTC"); here they are rewritten into
// the reader's own zone, named as the browser names it ("2026-12-03 07:10 EST"). Without JavaScript the server's
// text stays, which is right too, only in another zone.
(function () {
  "use strict";

  function pad(number) { return String(number).padStart(2, "0"); }

  function zoneName(date) {
    const part = new Intl.DateTimeFormat(undefined, { timeZoneName: "short" })
      .formatToParts(date)
      .find(function (p) { return p.type === "timeZoneName"; });
    return part ? part.value : "";
  }

  function localise(element) {
    const date = new Date(element.getAttribute("datetime"));
    if (isNaN(date.getTime())) return;
    const text = date.getFullYear() + "-" + pad(date.getMonth() + 1) + "-" + pad(date.getDate()) + " " +
      pad(date.getHours()) + ":" + pad(date.getMinutes());
    const zone = zoneName(date);
    // The server's text stays at hand, on hover.
    if (!element.title) element.title = element.textContent.trim();
    element.textContent = zone ? text + " " + zone : text;
  }

  document.querySelectorAll("time[data-local][datetime]").forEach(localise);
})();

// A form sent back for a correction (a wrong password, a name taken) opens the page at its top, where on a phone the
// field to correct may be out of view: the first such field takes the keyboard, which brings it into view. Not on a
// page that put the keyboard somewhere itself (autofocus), nor for a filter read from an address (a GET form).
(function () {
  "use strict";

  const invalid = document.querySelector("form[method=post] [aria-invalid=true]");
  if (!invalid) return;
  function take() {
    if (document.activeElement === null || document.activeElement === document.body) invalid.focus();
  }
  take();
  // A form sent back to its own section (its address ends #delete-heading, so that without JavaScript the page opens
  // there): the browser moves to that heading after this script has run, and leaves the keyboard nowhere.
  if (location.hash) window.addEventListener("load", function () { setTimeout(take, 0); });
})();

// A signed-in page shown again from the browser's memory (Back, after logging out) would show what only its owner may
// see, to whoever uses the computer next: it is hidden until the server says the session still holds, and reloaded,
// which leads to the log-in page, when it does not.
(function () {
  "use strict";

  if (!document.body.hasAttribute("data-signed-in")) return;
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) return;
    const root = document.documentElement;
    root.style.visibility = "hidden";
    // HEAD asks the page's own address, answered without its body; signed out, it is a redirect to the log-in page.
    fetch(window.location.href, { method: "HEAD", credentials: "same-origin", cache: "no-store", redirect: "manual" })
      .then(function (response) {
        if (response.type === "opaqueredirect") {
          window.location.reload();
        } else {
          root.style.visibility = "";
        }
      }, function () {
        root.style.visibility = "";  // the server is out of reach: whether the session holds is not known
      });
  });
})();
