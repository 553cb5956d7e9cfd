/* Genonaut — the image viewer: zoom, pan and full screen. Plain JavaScript, no build step.
 * Without it the image is shown fitted to the page, with a link to the full-size file.
 *
 * "Fit" shows the whole image; zooming (buttons, + / − / 0 keys, Ctrl+wheel or a pinch, a click on
 * the image to toggle fit ↔ 100 %) sizes it from its own pixels, and the stage scrolls; dragging pans.
 * Full screen puts the stage alone on the screen (Esc leaves). */
(function () {
  "use strict";

  var STEPS = [0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8];
  var DRAG_THRESHOLD = 4;  // pixels a press may move and still count as a click

  function setup(root) {
    var stage = root.querySelector("[data-zoom-stage]");
    var image = stage.querySelector("img");
    var level = root.querySelector("[data-zoom-level]");
    var toolbar = root.querySelector("[data-zoom-toolbar]");
    var fullscreenButton = root.querySelector("[data-fullscreen]");
    var zoom = null;  // null: fit; else screen pixels per image pixel
    var drag = null;

    toolbar.hidden = false;
    if (!document.fullscreenEnabled || !root.requestFullscreen) fullscreenButton.hidden = true;

    /* Where the picture itself is on the screen and its scale: in "fit" the element may be larger
     * than the picture it shows (object-fit: contain centres it). */
    function picture() {
      var box = image.getBoundingClientRect();
      var width = image.naturalWidth || 1;
      var height = image.naturalHeight || 1;
      var scale = zoom === null ? Math.min(box.width / width, box.height / height) : zoom;
      return { left: box.left + (box.width - width * scale) / 2, top: box.top + (box.height - height * scale) / 2,
               scale: scale };
    }

    /* Zoom to ``scale`` (null: fit), keeping the picture's point under (x, y) — stage coordinates,
     * the stage's centre by default — where it is. */
    function apply(scale, x, y) {
      var stageBox = stage.getBoundingClientRect();
      var anchorX = x === undefined ? stageBox.width / 2 : x;
      var anchorY = y === undefined ? stageBox.height / 2 : y;
      var before = picture();
      var pointX = (stageBox.left + anchorX - before.left) / before.scale;
      var pointY = (stageBox.top + anchorY - before.top) / before.scale;
      zoom = scale;
      root.classList.toggle("zoomed", zoom !== null);
      root.classList.toggle("magnified", zoom !== null && zoom > 1);  // image pixels shown as squares
      if (zoom === null) {
        image.style.width = "";
        image.style.height = "";
      } else {
        image.style.width = Math.round(image.naturalWidth * zoom) + "px";
        image.style.height = Math.round(image.naturalHeight * zoom) + "px";
        stage.scrollLeft = pointX * zoom + image.offsetLeft - anchorX;
        stage.scrollTop = pointY * zoom + image.offsetTop - anchorY;
      }
      level.textContent = zoom === null ? "Fit" : Math.round(zoom * 100) + "%";
      image.setAttribute("data-scale", zoom === null ? "fit" : String(zoom));
    }

    function step(direction, x, y) {
      var scale = picture().scale;
      var next = direction > 0
        ? STEPS.filter(function (s) { return s > scale + 1e-6; })[0]
        : STEPS.filter(function (s) { return s < scale - 1e-6; }).pop();
      if (next !== undefined) apply(next, x, y);
    }

    function toggle(x, y) {
      apply(zoom === null ? 1 : null, x, y);
    }

    root.querySelector("[data-zoom-in]").addEventListener("click", function () { step(1); });
    root.querySelector("[data-zoom-out]").addEventListener("click", function () { step(-1); });
    root.querySelector("[data-zoom-fit]").addEventListener("click", function () { apply(null); });
    root.querySelector("[data-zoom-actual]").addEventListener("click", function () { apply(1); });

    stage.addEventListener("wheel", function (event) {
      if (!event.ctrlKey && !event.metaKey) return;  // plain wheel scrolls the page; Ctrl+wheel and pinch zoom
      event.preventDefault();
      var box = stage.getBoundingClientRect();
      step(event.deltaY < 0 ? 1 : -1, event.clientX - box.left, event.clientY - box.top);
    }, { passive: false });

    stage.addEventListener("pointerdown", function (event) {
      if (event.button !== 0) return;
      drag = { id: event.pointerId, x: event.clientX, y: event.clientY, left: stage.scrollLeft, top: stage.scrollTop,
               moved: false, onImage: event.target === image };
      stage.setPointerCapture(event.pointerId);
    });
    stage.addEventListener("pointermove", function (event) {
      if (!drag || drag.id !== event.pointerId) return;
      var dx = event.clientX - drag.x;
      var dy = event.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > DRAG_THRESHOLD) drag.moved = true;
      if (drag.moved && zoom !== null) {
        stage.scrollLeft = drag.left - dx;
        stage.scrollTop = drag.top - dy;
        stage.classList.add("panning");
      }
    });
    function release(event) {
      if (!drag || drag.id !== event.pointerId) return;
      var wasClick = !drag.moved && event.type === "pointerup" && drag.onImage;
      drag = null;
      stage.classList.remove("panning");
      if (wasClick) {
        var box = stage.getBoundingClientRect();
        toggle(event.clientX - box.left, event.clientY - box.top);
      }
    }
    stage.addEventListener("pointerup", release);
    stage.addEventListener("pointercancel", release);

    document.addEventListener("keydown", function (event) {
      if (event.altKey || event.ctrlKey || event.metaKey) return;
      if (/^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName)) return;
      if (event.key === "+" || event.key === "=") { step(1); event.preventDefault(); }
      else if (event.key === "-") { step(-1); event.preventDefault(); }
      else if (event.key === "0") { apply(null); event.preventDefault(); }
      else if (event.key === "f" && !fullscreenButton.hidden) { toggleFullscreen(); event.preventDefault(); }
    });

    function toggleFullscreen() {
      if (document.fullscreenElement) document.exitFullscreen();
      else root.requestFullscreen().catch(function () { fullscreenButton.hidden = true; });
    }
    fullscreenButton.addEventListener("click", toggleFullscreen);
    document.addEventListener("fullscreenchange", function () {
      var on = document.fullscreenElement === root;
      fullscreenButton.textContent = on ? "Exit full screen" : "Full screen";
      fullscreenButton.setAttribute("aria-pressed", String(on));
      if (zoom === null) apply(null);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.slice.call(document.querySelectorAll("[data-zoom]")).forEach(setup);
  });
})();
