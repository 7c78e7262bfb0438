// Account page: the Copy button beside a new API token's key, which is shown this once.
(function () {
  "use strict";

  const button = document.getElementById("copy-token");
  const key = document.getElementById("new-token");
  if (!button || !key) return;
  const status = document.getElementById("copy-token-status");

  // Where the clipboard cannot be written (no permission, a page not served over HTTPS), the key is selected instead,
  // ready for the keyboard's own copy.
  function select() {
    const range = document.createRange();
    range.selectNodeContents(key);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    status.textContent = "Selected: copy it with Ctrl+C (⌘C on a Mac).";
  }

  button.hidden = false;
  button.addEventListener("click", function () {
    status.textContent = "";
    const text = key.textContent.trim();
    if (!navigator.clipboard || !navigator.clipboard.writeText) {
      select();
      return;
    }
    navigator.clipboard.writeText(text).then(function () { status.textContent = "Copied."; }, select);
  });
})();
