/* Genonaut — image inputs of the Generate form: a drop zone with a preview, paste, remove.
 * Plain JavaScript, no build step. Without it the form still works: the file input posts the image.
 *
 * A chosen, dropped or pasted file is put into the field's own file input (so it is posted with the
 * form, like a file chosen by hand) and shown from a data: URL (the Content-Security-Policy allows
 * data: images, not blob:). The field element keeps the image it shows as field.genonautImage
 * ({src, file}: src "" when none; file null for an image the server sent) and announces each change as
 * the event "genonaut:image-changed" with the same detail, once the preview has loaded (its
 * naturalWidth/naturalHeight are the image's size); the mask painter (mask.js) follows it. */
(function () {
  "use strict";

  function all(selector, root) {
    return Array.prototype.slice.call((root || document).querySelectorAll(selector));
  }

  function isImage(file) {
    return file && /^image\//.test(file.type || "");
  }

  function describe(file, image) {
    var size = file.size >= 1048576 ? (file.size / 1048576).toFixed(1) + " MB" : Math.max(1, Math.round(file.size / 1024)) + " KB";
    return file.name + " · " + image.naturalWidth + " × " + image.naturalHeight + " · " + size;
  }

  function setupImageField(field) {
    var fileInput = field.querySelector('input[type="file"]');
    var value = field.querySelector("[data-image-value]");
    var preview = field.querySelector("[data-image-preview]");
    var hint = field.querySelector("[data-drop-hint]");
    var info = field.querySelector("[data-image-info]");
    var clear = field.querySelector("[data-image-clear]");
    var zone = field.querySelector("[data-drop-zone]");

    var shown = 0;  // which show() call the preview's load belongs to

    function announce(src, file) {
      field.genonautImage = { src: src, file: file || null };
      field.dispatchEvent(new CustomEvent("genonaut:image-changed", { detail: field.genonautImage }));
    }

    function show(src, file) {
      var call = ++shown;
      zone.classList.toggle("has-image", !!src);
      if (hint) hint.hidden = !!src;
      clear.hidden = !src;
      if (!src) {
        preview.hidden = true;
        preview.removeAttribute("src");
        info.textContent = "";
        announce("", null);
        return;
      }
      preview.addEventListener("load", function () {
        if (call !== shown) return;
        if (file) info.textContent = describe(file, preview);
        announce(src, file);
      }, { once: true });
      preview.addEventListener("error", function () {
        if (call === shown) info.textContent = "The browser cannot show this image; it is checked when you submit.";
      }, { once: true });
      preview.hidden = false;
      preview.src = src;
    }

    /* Take a file from a drop or a paste: it becomes the file input's file, replacing an earlier choice. */
    function take(file) {
      if (!isImage(file)) {
        info.textContent = "That is not an image file.";
        return false;
      }
      var transfer = new DataTransfer();
      transfer.items.add(file);
      fileInput.files = transfer.files;
      fileInput.dispatchEvent(new Event("change", { bubbles: true }));
      return true;
    }
    field.genonautTake = take;

    fileInput.addEventListener("change", function () {
      var file = fileInput.files && fileInput.files[0];
      if (!file) return;
      if (!isImage(file)) {
        info.textContent = "That is not an image file; choose a PNG, JPEG or WebP image.";
        fileInput.value = "";
        return;
      }
      value.value = "";  // the file replaces an image given before (an upload or a result)
      var reader = new FileReader();
      reader.addEventListener("load", function () { show(reader.result, file); });
      reader.addEventListener("error", function () { info.textContent = "The file could not be read."; });
      reader.readAsDataURL(file);
    });

    clear.addEventListener("click", function () {
      value.value = "";
      fileInput.value = "";
      show("", null);
      fileInput.focus();
    });

    zone.addEventListener("dragover", function (event) {
      if (!event.dataTransfer || Array.prototype.indexOf.call(event.dataTransfer.types, "Files") < 0) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragleave", function (event) {
      if (!zone.contains(event.relatedTarget)) zone.classList.remove("dragging");
    });
    zone.addEventListener("drop", function (event) {
      zone.classList.remove("dragging");
      var files = event.dataTransfer && event.dataTransfer.files;
      if (!files || !files.length) return;
      event.preventDefault();
      take(files[0]);
    });

    field.genonautImage = { src: "", file: null };
    if (!preview.hidden && preview.getAttribute("src")) {
      // an image the form carries already (uploaded before an error, or a result used as input)
      var src = preview.getAttribute("src");
      if (preview.complete && preview.naturalWidth) announce(src, null);
      else preview.addEventListener("load", function () { if (!shown) announce(src, null); }, { once: true });
    }
  }

  /* Paste an image anywhere on the page: it goes to the image field holding the focus, else the first. */
  function onPaste(event) {
    var data = event.clipboardData;
    if (!data) return;
    var file = null;
    Array.prototype.some.call(data.items || [], function (item) {
      if (item.kind === "file" && /^image\//.test(item.type)) { file = item.getAsFile(); return true; }
      return false;
    });
    if (!file) return;  // text pastes as usual
    var fields = all("[data-image-field]");
    var target = fields.filter(function (f) { return f.contains(document.activeElement); })[0] || fields[0];
    if (!target || !target.genonautTake) return;
    event.preventDefault();
    target.genonautTake(file);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var fields = all("[data-image-field]");
    fields.forEach(setupImageField);
    if (fields.length) document.addEventListener("paste", onPaste);
  });
})();
