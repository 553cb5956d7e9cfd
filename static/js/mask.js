/* Genonaut — the inpaint mask painter. Plain JavaScript, no build step.
 *
 * A canvas at the input image's own size lies over its preview; the person paints the area to
 * repaint (brush size, erase, clear). The painting is sent as the mask field's file when the form is
 * submitted: a PNG of the input's size, white where painted and black elsewhere (ComfyUI's
 * LoadImageMask reads white as "repaint"). Nothing painted sends no mask (the input's transparent
 * area is repainted then). Without JavaScript the field is a plain file input for a mask image.
 *
 * The image comes from inputs.js: its field element holds genonautImage and announces changes with
 * "genonaut:image-changed"; a new image clears the painting (a mask must have the image's size). */
(function () {
  "use strict";

  var PAINT = "rgb(255, 45, 120)";  // shown at half opacity over the image (CSS); exported as white

  function setupMaskField(field) {
    var imageField = document.getElementById(field.getAttribute("data-paints-over"));
    if (!imageField) return;
    var form = field.closest("form");
    var stage = imageField.querySelector("[data-image-stage]");
    var preview = imageField.querySelector("[data-image-preview]");
    var tools = field.querySelector("[data-mask-tools]");
    var status = field.querySelector("[data-mask-status]");
    var value = field.querySelector("[data-image-value]");
    var fileInput = field.querySelector('input[type="file"]');
    var maskPreview = field.querySelector("[data-image-preview]");
    var brush = field.querySelector("[data-mask-brush]");
    var brushValue = field.querySelector("[data-mask-brush-value]");
    var modes = Array.prototype.slice.call(field.querySelectorAll("[data-mask-mode]"));

    var canvas = document.createElement("canvas");
    canvas.className = "mask-canvas";
    canvas.hidden = true;
    canvas.setAttribute("aria-label", "Mask: paint over the part of the image to repaint");
    canvas.setAttribute("role", "img");
    var cursor = document.createElement("div");
    cursor.className = "mask-cursor";
    cursor.hidden = true;
    stage.appendChild(canvas);
    stage.appendChild(cursor);
    var context = canvas.getContext("2d");

    var erasing = false;
    var painted = false;   // the canvas holds paint
    var dirty = false;     // the painting changed since it was last put into the file input
    var stroke = null;     // the pointer painting now: {id, x, y}

    tools.hidden = false;
    maskPreview.hidden = true;  // the painting shows the mask now

    function say(text) { status.textContent = text; }

    function setMode(mode) {
      erasing = mode === "erase";
      modes.forEach(function (button) {
        button.setAttribute("aria-pressed", String(button.getAttribute("data-mask-mode") === mode));
      });
    }

    function brushPixels() {
      return Number(brush.value) || 40;
    }

    /* Screen pixels to the canvas's (the image's) pixels; the preview may be stretched a little
     * (a very tall image at the least width), so each axis has its own ratio. */
    function scale() {
      var box = canvas.getBoundingClientRect();
      return box.width ? canvas.width / box.width : 1;
    }

    function pointOf(event) {
      var box = canvas.getBoundingClientRect();
      return { x: (event.clientX - box.left) * (box.width ? canvas.width / box.width : 1),
               y: (event.clientY - box.top) * (box.height ? canvas.height / box.height : 1) };
    }

    function moveCursor(event) {
      var box = stage.getBoundingClientRect();
      var size = brushPixels();
      cursor.style.width = size + "px";
      cursor.style.height = size + "px";
      cursor.style.left = (event.clientX - box.left - size / 2) + "px";
      cursor.style.top = (event.clientY - box.top - size / 2) + "px";
      cursor.classList.toggle("erasing", erasing);
    }

    function draw(from, to) {
      context.globalCompositeOperation = erasing ? "destination-out" : "source-over";
      context.strokeStyle = PAINT;
      context.fillStyle = PAINT;
      context.lineCap = "round";
      context.lineJoin = "round";
      context.lineWidth = brushPixels() * scale();
      context.beginPath();
      if (from.x === to.x && from.y === to.y) {
        context.arc(to.x, to.y, context.lineWidth / 2, 0, Math.PI * 2);
        context.fill();
      } else {
        context.moveTo(from.x, from.y);
        context.lineTo(to.x, to.y);
        context.stroke();
      }
    }

    function hasPaint() {
      var pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
      for (var i = 3; i < pixels.length; i += 4) if (pixels[i]) return true;
      return false;
    }

    function changed() {
      dirty = true;
      painted = hasPaint();
      value.value = "";  // a mask given before is replaced by the painting (or by none)
      say(painted ? "Painted: the white area of the mask will be repainted." : "Nothing painted: no mask is sent.");
    }

    canvas.addEventListener("pointerdown", function (event) {
      if (event.button !== 0 || canvas.hidden) return;
      event.preventDefault();
      canvas.setPointerCapture(event.pointerId);
      var point = pointOf(event);
      stroke = { id: event.pointerId, x: point.x, y: point.y };
      draw(point, point);
    });
    canvas.addEventListener("pointermove", function (event) {
      moveCursor(event);
      if (!stroke || stroke.id !== event.pointerId) return;
      var point = pointOf(event);
      draw(stroke, point);
      stroke.x = point.x;
      stroke.y = point.y;
    });
    function endStroke(event) {
      if (!stroke || stroke.id !== event.pointerId) return;
      stroke = null;
      changed();
    }
    canvas.addEventListener("pointerup", endStroke);
    canvas.addEventListener("pointercancel", endStroke);
    canvas.addEventListener("pointerenter", function (event) { cursor.hidden = false; moveCursor(event); });
    canvas.addEventListener("pointerleave", function () { cursor.hidden = true; });

    modes.forEach(function (button) {
      button.addEventListener("click", function () { setMode(button.getAttribute("data-mask-mode")); });
    });
    brush.addEventListener("input", function () { brushValue.textContent = brush.value + " px"; });
    field.querySelector("[data-mask-clear]").addEventListener("click", function () {
      context.clearRect(0, 0, canvas.width, canvas.height);
      fileInput.value = "";
      changed();
    });

    /* A new input image: the canvas takes its size, and any painting or earlier mask is dropped. */
    function resetTo(image) {
      stroke = null;
      if (!image.src || !preview.naturalWidth) {
        canvas.hidden = true;
        tools.classList.add("disabled");
        say("Choose the input image first, then paint over the part to repaint.");
        return false;
      }
      canvas.width = preview.naturalWidth;
      canvas.height = preview.naturalHeight;
      canvas.hidden = false;
      tools.classList.remove("disabled");
      painted = false;
      return true;
    }

    /* Show a mask image (one given before, or a file chosen for the mask) as paint, so it can be edited. */
    function load(src, fromFile) {
      var image = new Image();
      image.addEventListener("load", function () {
        if (image.naturalWidth !== canvas.width || image.naturalHeight !== canvas.height) {
          // not sent: it could only be refused (a mask must have its image's size)
          value.value = "";
          fileInput.value = "";
          say("That mask is " + image.naturalWidth + " × " + image.naturalHeight + "; a mask must have the image's " +
              "size, " + canvas.width + " × " + canvas.height + ". Paint one, or choose another file.");
          return;
        }
        var scratch = document.createElement("canvas");
        scratch.width = canvas.width;
        scratch.height = canvas.height;
        var scratchContext = scratch.getContext("2d");
        scratchContext.drawImage(image, 0, 0);
        var pixels;
        try {
          pixels = scratchContext.getImageData(0, 0, scratch.width, scratch.height);
        } catch (error) {  // an image from another origin (S3): kept as it is, shown beside
          maskPreview.hidden = false;
          say("A mask was given; painting replaces it.");
          return;
        }
        var data = pixels.data;
        for (var i = 0; i < data.length; i += 4) {
          var white = data[i] >= 128 && data[i + 3] >= 128;  // red channel, as LoadImageMask reads it
          data[i] = 255; data[i + 1] = 45; data[i + 2] = 120; data[i + 3] = white ? 255 : 0;
        }
        context.clearRect(0, 0, canvas.width, canvas.height);
        context.putImageData(pixels, 0, 0);
        painted = hasPaint();
        dirty = false;  // the posted mask is that file (or the mask given before), unchanged
        say(fromFile ? "Mask file loaded: paint or erase to change it." : "The mask given before: paint or erase to change it.");
      });
      image.src = src;
    }

    function onImage(detail) {
      if (!resetTo(detail)) return;
      if (maskWasGiven) {
        maskWasGiven = false;
        load(maskPreview.getAttribute("src"), false);
      } else {
        value.value = "";
        fileInput.value = "";
        dirty = false;
        say("Paint over the part of the image to repaint.");
      }
    }

    var maskWasGiven = !!value.value && !!maskPreview.getAttribute("src");
    imageField.addEventListener("genonaut:image-changed", function (event) { onImage(event.detail); });
    onImage(imageField.genonautImage || { src: "", file: null });

    fileInput.addEventListener("change", function () {
      var file = fileInput.files && fileInput.files[0];
      if (!file || canvas.hidden) return;
      var reader = new FileReader();
      reader.addEventListener("load", function () { load(reader.result, true); });
      reader.readAsDataURL(file);
    });

    /* Submitting: a changed painting becomes the mask file (white = repaint) first. */
    form.addEventListener("submit", function (event) {
      if (!dirty || canvas.hidden) return;
      event.preventDefault();
      var submitter = event.submitter;
      dirty = false;
      if (!painted) {
        fileInput.value = "";
        form.requestSubmit(submitter);
        return;
      }
      var pixels = context.getImageData(0, 0, canvas.width, canvas.height);
      var data = pixels.data;
      for (var i = 0; i < data.length; i += 4) {
        var on = data[i + 3] >= 128 ? 255 : 0;
        data[i] = on; data[i + 1] = on; data[i + 2] = on; data[i + 3] = 255;
      }
      var out = document.createElement("canvas");
      out.width = canvas.width;
      out.height = canvas.height;
      out.getContext("2d").putImageData(pixels, 0, 0);
      out.toBlob(function (blob) {
        var transfer = new DataTransfer();
        transfer.items.add(new File([blob], "mask.png", { type: "image/png" }));
        fileInput.files = transfer.files;
        form.requestSubmit(submitter);
      }, "image/png");
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.slice.call(document.querySelectorAll("[data-mask-field]")).forEach(setupMaskField);
  });
})();
