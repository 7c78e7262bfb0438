// Upload page: file picking with drag and drop, and a drawing canvas exported as PNG.
(function () {
  "use strict";

  // --- files ---------------------------------------------------------------
  const fileForm = document.getElementById("file-form");
  const input = document.getElementById("id_files");
  const dropzone = document.getElementById("dropzone");
  const list = document.getElementById("file-list");
  const fileError = document.getElementById("file-error");
  const fileSubmit = document.getElementById("file-submit");
  const maxFiles = parseInt(fileForm.dataset.maxFiles, 10);
  const maxBytes = parseInt(fileForm.dataset.maxBytes, 10);

  // The formats the server reads, known as it knows them: by the first bytes of a file, never by its name or the
  // type the browser gives it (a phone's JPEG may be called photo.heic, a picture saved from a chat app anything).
  // A dropped file passes no picker's filter: one the server would refuse is named here, before the whole selection
  // is sent and refused with it.
  const SIGNATURES = [
    [0, "\x89PNG\r\n\x1a\n"],
    [0, "\xff\xd8\xff"],  // JPEG
    [0, "GIF87a"],
    [0, "GIF89a"],
    [0, "RIFF", 8, "WEBP"],
    [0, "BM"],
  ];
  const SIGNATURE_BYTES = 12;

  function isReadable(bytes) {
    return SIGNATURES.some(function (signature) {
      for (let part = 0; part < signature.length; part += 2) {
        const at = signature[part];
        const text = signature[part + 1];
        for (let i = 0; i < text.length; i++) {
          if (bytes[at + i] !== text.charCodeAt(i)) return false;
        }
      }
      return true;
    });
  }

  // What each chosen file's first bytes say: true for a format the server reads, false for any other; a file not
  // read yet, or that could not be read, is left to the server to judge.
  const readable = new WeakMap();

  function sniff(file) {
    if (readable.has(file) || !file.size || !Blob.prototype.arrayBuffer) return Promise.resolve();
    return file.slice(0, SIGNATURE_BYTES).arrayBuffer().then(function (buffer) {
      readable.set(file, isReadable(new Uint8Array(buffer)));
    }, function () { /* unreadable here (gone from the disk since): the server says what it gets */ });
  }

  // Files chosen are read before they are listed; a selection changed meanwhile makes an earlier reading moot.
  let reading = 0;

  function afterReading(then) {
    const turn = ++reading;
    Promise.all(Array.from(input.files || []).map(sniff)).then(function () {
      if (turn === reading) then();
    });
  }

  function describe(size) {
    if (size === 0) return "0 bytes";
    return size > 1048576 ? (size / 1048576).toFixed(1) + " MB" : Math.max(1, Math.round(size / 1024)) + " KB";
  }

  // Where the files the server refused stood in the selection it was sent: they stay chosen, marked, until the
  // selection changes or they are left out.
  let refusedByServer = [];
  // Every file refused, by the server or by this page (too large, not an image): where each stands in the selection.
  let refused = [];
  // While the files are on their way, the selection stays as it was sent.
  let sending = false;
  const leaveOut = document.getElementById("file-leave-out");
  const progress = document.getElementById("file-progress");
  const announcement = document.getElementById("upload-announcement");

  // How the upload goes, for screen readers: a few steps, each said once, never every move of the progress bar.
  function announce(text) {
    announcement.textContent = text;
  }

  // Leaving files out rebuilds the selection, which takes a DataTransfer of one's own (not in every browser).
  const canLeaveOut = (function () {
    try {
      return Boolean(new DataTransfer().items);
    } catch (error) {
      return false;
    }
  })();

  function marked(item) {
    item.className = "refused";
    const note = document.createElement("span");
    note.className = "visually-hidden";
    note.textContent = " (refused)";
    item.appendChild(note);
  }

  function refresh() {
    const files = Array.from(input.files || []);
    list.replaceChildren();
    const problems = [];
    refused = [];
    let refusedHere = 0;
    files.forEach(function (file, index) {
      const item = document.createElement("li");
      item.textContent = file.name + " · " + describe(file.size);
      const count = problems.length;
      if (file.size === 0) {
        problems.push("“" + file.name + "” is empty.");  // as the server says it
      } else if (file.size > maxBytes) {
        problems.push("“" + file.name + "” is larger than " + describe(maxBytes) + ".");
      } else if (readable.get(file) === false) {
        problems.push("“" + file.name + "” is not a PNG, JPEG, GIF, WEBP or BMP image.");
      }
      refusedHere += problems.length - count;
      if (problems.length > count || refusedByServer.indexOf(index) !== -1) {
        marked(item);
        refused.push(index);
      }
      list.appendChild(item);
    });
    // The list scrolls only a few rows high: the first refused file is brought into it, not left below its fold.
    const first = list.querySelector(".refused");
    if (first) list.scrollTop += first.getBoundingClientRect().top - list.getBoundingClientRect().top;
    if (files.length > maxFiles) {
      problems.unshift("Too many files: choose at most " + maxFiles + " at once.");
    }
    fileError.hidden = problems.length === 0;
    fileError.textContent = problems.join(" ");
    // Pressable with nothing chosen, to say what is missing (see the submit handler): a disabled button is skipped by
    // the keyboard and left unsaid by screen readers until a file is chosen.
    fileSubmit.disabled = problems.length > 0;
    fileSubmit.removeAttribute("aria-disabled");
    // What the button would send: all the files once the server refused some (they may have been mended on disk
    // since), but not those this page refuses, which must be left out before anything is sent.
    const sent = files.length - refusedHere;
    fileSubmit.textContent = sent > 1 ? "Upload " + sent + " images and predict" : "Upload and predict";
    leaveOut.hidden = !canLeaveOut || !refused.length || refused.length >= files.length;
    leaveOut.textContent = refused.length > 1 ? "Leave out the " + refused.length + " refused files"
      : "Leave out the refused file";
  }

  // A new selection, summed up for screen readers ("3 images chosen, 1 refused"); the list shows each file.
  const summary = document.getElementById("file-summary");

  function selectionChanged(then) {
    refusedByServer = [];
    document.getElementById("file-note").hidden = true;  // the files not sent are chosen again, or others
    afterReading(function () {
      refresh();
      const chosen = list.children.length;
      const refused = list.querySelectorAll(".refused").length;
      summary.textContent = (chosen ? chosen + (chosen > 1 ? " images" : " image") : "No images") + " chosen" +
        (refused ? ", " + refused + " refused" : "");
      if (then) then();
    });
  }

  input.addEventListener("change", function () { selectionChanged(); });
  ["dragenter", "dragover"].forEach(function (name) {
    dropzone.addEventListener(name, function (event) {
      event.preventDefault();
      dropzone.classList.add("dragging");
    });
  });
  ["dragleave", "drop"].forEach(function (name) {
    dropzone.addEventListener(name, function (event) {
      event.preventDefault();
      dropzone.classList.remove("dragging");
    });
  });
  dropzone.addEventListener("drop", function (event) {
    if (!sending && event.dataTransfer && event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      selectionChanged();
    }
  });
  // Files dropped beside the box are not taken, and the browser would open them in a tab of their own: the pointer
  // says they cannot be dropped there instead.
  ["dragover", "drop"].forEach(function (name) {
    window.addEventListener(name, function (event) {
      if (dropzone.contains(event.target) || !event.dataTransfer) return;
      if (Array.prototype.indexOf.call(event.dataTransfer.types, "Files") === -1) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = "none";
    });
  });
  // The answer to a refused upload (its errors, from the page the server sent back) in place of the last one.
  function showRefusal(box) {
    const old = document.getElementById("upload-errors");
    if (old) {
      old.replaceWith(box);
    } else {
      document.querySelector(".upload-grid").before(box);
    }
    sending = false;
    input.disabled = false;
    // Marked only when the server read as many files as were sent: it drops one whose name it cannot use.
    const sent = Number(box.dataset.filesReceived) === input.files.length;
    refusedByServer = sent ? (box.dataset.refusedFiles || "").split(" ").filter(Boolean).map(Number) : [];
    progress.hidden = true;
    announce("");  // the refusal, which takes the focus, says what happened
    refresh();
    box.focus();
  }

  function refusalBox(paragraphs) {
    const box = document.createElement("div");
    box.className = "errors";
    box.id = "upload-errors";
    box.setAttribute("role", "alert");
    box.tabIndex = -1;
    paragraphs.forEach(function (text) {
      const line = document.createElement("p");
      line.textContent = text;
      box.appendChild(line);
    });
    return box;
  }

  // How many files a sending that ended on another page held (see answered), said once when this page opens again.
  const FILES_NOT_SENT_KEY = "upload-files-not-sent";

  function sayFilesNotSent() {
    let count = 0;
    try {
      count = parseInt(sessionStorage.getItem(FILES_NOT_SENT_KEY), 10);
      sessionStorage.removeItem(FILES_NOT_SENT_KEY);
    } catch (error) { /* storage off */ }
    if (!(count > 0) || document.getElementById("upload-errors")) return;
    const note = document.getElementById("file-note");
    note.textContent = (count > 1 ? "Your " + count + " images were" : "Your image was") +
      " not uploaded, as your session had ended: choose " + (count > 1 ? "them" : "it") + " again.";
    note.hidden = false;
  }

  // The page's own address: the form names no other.
  function target() {
    return fileForm.action.split("#")[0];
  }

  function answered(request) {
    const type = request.getResponseHeader("Content-Type") || "";
    if (request.status === 200 && type.indexOf("application/json") === 0) {
      window.location.assign(JSON.parse(request.responseText).location);
      return;
    }
    if (request.responseURL && request.responseURL !== target()) {
      // Sent somewhere else (a session that ended leads to the log-in page): go there, as the form would have. Nothing
      // was stored, and no page gets chosen files back: this page says so once it is opened again in this tab.
      try {
        sessionStorage.setItem(FILES_NOT_SENT_KEY, String(input.files.length));
      } catch (error) { /* storage off or full: only not said */ }
      window.location.assign(request.responseURL);
      return;
    }
    if (type.indexOf("text/plain") === 0) {
      // The site's own short answers (a request too large is refused before anything reads it).
      showRefusal(refusalBox([request.responseText.trim().slice(0, 500), "Nothing was uploaded."]));
      return;
    }
    const page = new DOMParser().parseFromString(request.responseText, "text/html");
    const box = page.getElementById("upload-errors");
    // A form that expired comes back with a fresh security code: taken, the files can be sent again as they are.
    const code = page.querySelector("input[name=csrfmiddlewaretoken]");
    const renewed = code !== null && request.status === 403;
    if (code) {
      document.querySelectorAll("input[name=csrfmiddlewaretoken]").forEach(function (field) {
        field.value = code.value;
      });
    }
    if (box) {
      showRefusal(document.importNode(box, true));
      return;
    }
    // Another page of the site's: what it says, in this page, less what only a reloaded page could do.
    const said = Array.from(page.querySelectorAll("main h1, main p:not(.reload-advice)")).filter(function (node) {
      return !node.querySelector("a");
    }).map(function (node) {
      return node.textContent.replace(/\s+/g, " ").trim();
    }).filter(Boolean);
    if (renewed) said.push("The form has been renewed: send the files again.");
    if (!said.length && request.status >= 500) {
      // Not the site's answer (a proxy's timeout): the server may have stored the upload all the same.
      said.push("The server did not answer in time (" + request.status + ").",
        "The images may have been stored: look in your history before sending them again.");
    }
    showRefusal(refusalBox(said.length ? said : ["The server refused the upload (" + request.status + "). Nothing was uploaded."]));
  }

  // Sent from here rather than by the browser: a refused upload keeps the files chosen, to send again once the
  // refused ones are left out, and a long upload shows how far it has got. Without this script the form is sent as
  // it is, and the page comes back with the errors.
  fileForm.addEventListener("submit", function (event) {
    event.preventDefault();
    if (sending) return;  // the button, left pressable while the files are on their way (see below)
    if (!input.files || !input.files.length) {
      fileError.textContent = "Choose at least one image first.";
      fileError.hidden = false;
      // The file control names the message as its description: focused, it is read with it.
      input.focus();
      return;
    }
    forgetDrawing();
    const count = input.files.length;
    // The quarter of the upload last announced: 25%, 50% and 75% are said, each once.
    let quarter = 0;
    const request = new XMLHttpRequest();
    request.open("POST", target());
    request.setRequestHeader("X-Requested-With", "XMLHttpRequest");
    request.upload.addEventListener("progress", function (progressEvent) {
      if (!progressEvent.lengthComputable) return;
      const percent = Math.floor((100 * progressEvent.loaded) / progressEvent.total);
      progress.hidden = false;
      progress.value = percent;
      fileSubmit.textContent = "Uploading… " + percent + "%";
      const reached = Math.floor(percent / 25);
      if (reached > quarter && reached < 4) {
        quarter = reached;
        announce(25 * reached + "% uploaded");
      }
    });
    request.upload.addEventListener("load", function () {
      fileSubmit.textContent = "Checking the images…";
      announce("Uploaded; checking the " + (count > 1 ? "images…" : "image…"));
    });
    request.addEventListener("load", function () { answered(request); });
    request.addEventListener("error", function () {
      showRefusal(refusalBox([
        "The connection to the server was lost before it answered.",
        "The images may have been stored: look in your history before sending them again.",
      ]));
    });
    request.send(new FormData(fileForm));
    sending = true;
    input.disabled = true;
    // Only marked disabled: a disabled button would drop the keyboard's focus to the page's start.
    fileSubmit.setAttribute("aria-disabled", "true");
    leaveOut.hidden = true;
    fileSubmit.textContent = "Uploading…";
    announce(count > 1 ? "Uploading " + count + " images…" : "Uploading the image…");
  });

  leaveOut.addEventListener("click", function () {
    const kept = new DataTransfer();
    Array.from(input.files).forEach(function (file, index) {
      if (refused.indexOf(index) === -1) kept.items.add(file);
    });
    input.files = kept.files;
    const box = document.getElementById("upload-errors");
    if (box) box.remove();
    // Focused once the files left are listed, and the button enabled for them.
    selectionChanged(function () { fileSubmit.focus(); });
  });
  refresh();
  // Files the browser kept chosen across a reload are judged once read.
  afterReading(refresh);
  sayFilesNotSent();

  // --- canvas --------------------------------------------------------------
  const canvas = document.getElementById("draw-canvas");
  const ctx = canvas.getContext("2d");
  const canvasForm = document.getElementById("canvas-form");
  const canvasField = document.getElementById("id_canvas");
  const canvasSubmit = document.getElementById("canvas-submit");
  const hint = document.getElementById("canvas-hint");
  const canvasError = document.getElementById("canvas-error");
  const canvasNote = document.getElementById("canvas-note");
  // The drawing's own pixels (280 a side): its strokes are kept, and sent, in them whatever the screen.
  const SIZE = canvas.width;
  // Screen pixels per CSS pixel: the canvas holds a pixel of its own for each, else a high-density screen (a phone, a
  // laptop's) would stretch its pixels and show the ink blurred.
  let density = 1;
  let dirty = false;
  // One stroke at a time, by the pointer that began it: a second finger or a resting palm would otherwise join its
  // points to the stroke's and paint a solid wedge between them.
  let pointerId = null;
  let last = null;
  // Every stroke's points (canvas pixels), for the image that is sent: see exported().
  let strokes = [];
  let stroke = null;

  function setup() {
    ctx.setTransform(density, 0, 0, density, 0, 0);
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    // A brush about a tenth of the canvas, like a pen stroke in a 28x28 MNIST digit.
    ctx.lineWidth = SIZE / 12;
    ctx.strokeStyle = "#111";
    ctx.fillStyle = "#111";
  }

  // As many canvas pixels as the screen shows it with, again whenever that changes (the page zoomed, the window moved
  // to another screen); resizing a canvas wipes it, so the strokes are drawn again.
  function fitToScreen() {
    density = window.devicePixelRatio || 1;
    canvas.width = canvas.height = Math.round(SIZE * density);
    setup();
    redraw();
    const query = window.matchMedia && window.matchMedia("(resolution: " + density + "dppx)");
    if (query && query.addEventListener) query.addEventListener("change", refitToScreen, { once: true });
  }

  function refitToScreen() {
    if ((window.devicePixelRatio || 1) !== density) fitToScreen();
  }
  // Zooming the page resizes it too, which some browsers say before the density's change.
  window.addEventListener("resize", refitToScreen);

  // Where the pointer is, in the drawing's pixels: measured from the picture's own corner, inside the canvas's border.
  function point(event) {
    const rect = canvas.getBoundingClientRect();
    return {
      x: (event.clientX - rect.left - canvas.clientLeft) * (SIZE / canvas.clientWidth),
      y: (event.clientY - rect.top - canvas.clientTop) * (SIZE / canvas.clientHeight),
    };
  }

  function dot(p) {
    ctx.beginPath();
    ctx.arc(p.x, p.y, ctx.lineWidth / 2, 0, Math.PI * 2);
    ctx.fill();
  }

  canvas.addEventListener("pointerdown", function (event) {
    event.preventDefault();
    // Only the main button (a finger, a pen's tip) draws: a right click is for the menu, a pen's eraser is no ink.
    if (event.button !== 0 || !event.isPrimary || pointerId !== null) return;
    canvas.setPointerCapture(event.pointerId);
    pointerId = event.pointerId;
    last = point(event);
    dot(last);
    stroke = [last];
    strokes.push(stroke);
    drawn();
  });
  canvas.addEventListener("pointermove", function (event) {
    if (event.pointerId !== pointerId) return;
    event.preventDefault();
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    (events.length ? events : [event]).forEach(function (e) {
      const p = point(e);
      ctx.beginPath();
      ctx.moveTo(last.x, last.y);
      ctx.lineTo(p.x, p.y);
      ctx.stroke();
      last = p;
      stroke.push(p);
    });
  });
  function stop(event) {
    if (event.pointerId !== pointerId) return;
    pointerId = null;
    last = null;
    stroke = null;
  }
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);
  // The capture can end without a release on the canvas (released off it once the capture was gone): the stroke ends
  // then, or the canvas would wait for its release for ever, taking no other stroke and no Undo.
  canvas.addEventListener("lostpointercapture", stop);

  // The buttons and the hint follow whether anything is drawn; what was said of the drawing before it changed goes.
  function drawn() {
    dirty = strokes.length > 0;
    hint.hidden = dirty;
    undoButton.disabled = !dirty;
    canvasError.hidden = true;
    canvasNote.hidden = true;
  }

  // The strokes on screen again, as they were drawn: a dot where each began, then its segments.
  function redraw() {
    ctx.clearRect(0, 0, SIZE, SIZE);
    strokes.forEach(function (points) {
      dot(points[0]);
      ctx.beginPath();
      ctx.moveTo(points[0].x, points[0].y);
      points.slice(1).forEach(function (p) { ctx.lineTo(p.x, p.y); });
      ctx.stroke();
    });
  }

  function undo() {
    if (pointerId !== null || !strokes.length) return;  // not while a stroke is being drawn
    strokes.pop();
    redraw();
    drawn();
    // A disabled button drops the keyboard's focus to the page's start: keep it among the drawing's buttons.
    if (undoButton.disabled && document.activeElement === undoButton) clearButton.focus();
  }

  const undoButton = document.getElementById("canvas-undo");
  const clearButton = document.getElementById("canvas-clear");
  undoButton.addEventListener("click", undo);
  document.addEventListener("keydown", function (event) {
    // Ctrl+Z (Cmd+Z on a Mac) takes back the last stroke, unless a text field has the keyboard.
    if ((event.ctrlKey || event.metaKey) && !event.shiftKey && event.key.toLowerCase() === "z" &&
        !event.target.closest("input, textarea, select, [contenteditable]")) {
      event.preventDefault();
      undo();
    }
  });
  clearButton.addEventListener("click", function () {
    // Pressed while a stroke is drawn (a second finger on the button, Enter with the mouse held), the stroke goes on
    // from where the pointer is, as the drawing: its ink keeps being kept, and shown, from there.
    stroke = pointerId !== null ? [last] : null;
    strokes = stroke ? [stroke] : [];
    redraw();
    drawn();
  });

  // The drawing as it is sent: the same strokes, redrawn with a pen in proportion to the drawing's size. The server
  // crops to the ink and scales it to 20 pixels, so a digit drawn small in the fixed on-screen brush would arrive as a
  // blob with its loops closed (a small "0" read as an 8). MNIST's strokes are about a ninth of the digit's height:
  // a full-size drawing (~200 px) keeps the on-screen width, and the pen never gets wider than what was shown.
  const PEN_PER_EXTENT = 0.115;

  // How far the strokes reach, across or down (canvas pixels between the pen's centres).
  function extentOf(drawing) {
    let minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
    drawing.forEach(function (points) {
      points.forEach(function (p) {
        minX = Math.min(minX, p.x);
        minY = Math.min(minY, p.y);
        maxX = Math.max(maxX, p.x);
        maxY = Math.max(maxY, p.y);
      });
    });
    return Math.max(maxX - minX, maxY - minY);
  }

  // A drawing reaching less than a ruled line's height of the canvas is no digit (a tap, a slip of the pen): the server
  // crops a picture to its ink and scales that up, so the model would read such a scribble as some digit, and could
  // say so confidently.
  const MIN_EXTENT = 28;

  function exported() {
    const extent = extentOf(strokes);
    const width = Math.min(ctx.lineWidth, Math.max(2, PEN_PER_EXTENT * extent));
    const out = document.createElement("canvas");
    out.width = SIZE;
    out.height = SIZE;
    const octx = out.getContext("2d");
    octx.lineCap = "round";
    octx.lineJoin = "round";
    octx.lineWidth = width;
    octx.strokeStyle = ctx.strokeStyle;
    octx.fillStyle = ctx.fillStyle;
    strokes.forEach(function (points) {
      // A dot where every stroke begins, as on screen: a tap is a stroke of one point.
      octx.beginPath();
      octx.arc(points[0].x, points[0].y, width / 2, 0, Math.PI * 2);
      octx.fill();
      if (points.length > 1) {
        octx.beginPath();
        octx.moveTo(points[0].x, points[0].y);
        points.slice(1).forEach(function (p) {
          octx.lineTo(p.x, p.y);
        });
        octx.stroke();
      }
    });
    return out.toDataURL("image/png");
  }

  // A drawing the server sends back (too many uploads a minute, the storage allowance used up, the service down)
  // would be lost with the page: its strokes wait in this tab's storage for the answer, and come back when the
  // answer is the upload page with its errors.
  const DRAWING_KEY = "upload-drawing";

  function keepDrawing() {
    try {
      sessionStorage.setItem(DRAWING_KEY, JSON.stringify(strokes));
    } catch (error) { /* storage off or full: the drawing is only not kept */ }
  }

  function forgetDrawing() {
    try {
      sessionStorage.removeItem(DRAWING_KEY);
    } catch (error) { /* storage off */ }
  }

  // The drawing is forgotten once it is answered: here when it is refused, and by the result page it leads to when it
  // is taken (static/js/result.js). One still kept when this page opens without a refusal never got an answer of its
  // own: its sending ended on another page (the log-in page after the session ended, a form that had expired).
  function restoreDrawing() {
    let kept = null;
    try {
      kept = JSON.parse(sessionStorage.getItem(DRAWING_KEY) || "null");
    } catch (error) { /* storage off, or not ours */ }
    forgetDrawing();
    if (!Array.isArray(kept)) return;
    strokes = kept.filter(function (points) { return Array.isArray(points) && points.length; });
    if (!strokes.length) return;
    redraw();
    drawn();
    if (!document.getElementById("upload-errors")) {
      canvasNote.textContent = "Your drawing was not sent: it is back on the canvas to send again.";
      canvasNote.hidden = false;
    }
  }

  // The button stays pressable with nothing drawn, to say so: a disabled one is skipped by the keyboard and left
  // unsaid by screen readers.
  canvasForm.addEventListener("submit", function (event) {
    if (!dirty) {
      event.preventDefault();
      canvasError.textContent = "Draw a digit first.";
      canvasError.hidden = false;
      canvasError.focus();
      return;
    }
    if (extentOf(strokes) < MIN_EXTENT) {
      event.preventDefault();
      canvasError.textContent = "This drawing is too small to be read as a digit: draw it larger.";
      canvasError.hidden = false;
      return;
    }
    // Dark strokes on transparency; the server's preprocessing handles either polarity.
    canvasField.value = exported();
    keepDrawing();
    canvasSubmit.disabled = true;
    canvasSubmit.textContent = "Sending…";
  });

  fitToScreen();
  restoreDrawing();

  // Coming back with the Back button restores the page as it was sent: buttons disabled, saying "Sending…".
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) return;
    forgetDrawing();  // sent and answered: a later refusal of files must not bring it back
    progress.hidden = true;
    announce("");
    sending = false;
    input.disabled = false;
    refresh();
    canvasSubmit.disabled = false;
    canvasSubmit.textContent = "Predict drawing";
  });
})();
