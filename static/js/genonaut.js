/* Genonaut — small enhancements over server-rendered pages. Plain JavaScript, no build step.
 * Every page works without it; with it: LoRA sliders, trigger words, size presets, seed randomise,
 * grid/list memory, History filters applied as they change, copy buttons and delete confirmation.
 * Page-specific parts live beside it: inputs.js and mask.js (Generate), viewer.js, and live.js (pages
 * that update themselves from server-sent events: the request card, History, Backends). */
(function () {
  "use strict";

  var VIEW_KEY = "genonaut.historyView";
  var SEARCH_DELAY_MS = 350;  // typing pauses this long before the search is applied

  function all(selector, root) {
    return Array.prototype.slice.call((root || document).querySelectorAll(selector));
  }

  /* LoRA rows: slider and number stay in step; a row's inputs are enabled only when it is chosen. */
  function setupLoraRow(row) {
    var toggle = row.querySelector("[data-lora-toggle]");
    all("input[data-sync]", row).forEach(function (range) {
      var number = document.getElementById(range.getAttribute("data-sync"));
      if (!number) return;
      range.addEventListener("input", function () { number.value = range.value; });
      number.addEventListener("input", function () { if (number.value !== "") range.value = number.value; });
    });
    function refresh() {
      row.classList.toggle("chosen", toggle.checked);
      all(".strengths input", row).forEach(function (input) { input.disabled = !toggle.checked; });
    }
    toggle.addEventListener("change", refresh);
    refresh();
  }

  /* Insert a trigger word at the caret of its target textarea. */
  function insertWord(button) {
    var target = document.getElementById(button.getAttribute("data-target"));
    if (!target) return;
    var word = button.getAttribute("data-insert");
    var start = target.selectionStart != null ? target.selectionStart : target.value.length;
    var end = target.selectionEnd != null ? target.selectionEnd : start;
    var before = target.value.slice(0, start);
    var after = target.value.slice(end);
    var sepBefore = before && !/[\s,]$/.test(before) ? ", " : "";
    var sepAfter = after && !/^[\s,]/.test(after) ? ", " : "";
    target.value = before + sepBefore + word + sepAfter + after;
    var caret = (before + sepBefore + word).length;
    target.focus();
    target.setSelectionRange(caret, caret);
  }

  function setupSizePreset(select) {
    var width = document.getElementById("id_width");
    var height = document.getElementById("id_height");
    if (!width || !height) return;
    function match() {
      var value = width.value + "x" + height.value;
      var found = all("option", select).some(function (o) { return o.value === value; });
      select.value = found ? value : "";
    }
    select.addEventListener("change", function () {
      if (!select.value) return;
      var parts = select.value.split("x");
      width.value = parts[0];
      height.value = parts[1];
    });
    width.addEventListener("input", match);
    height.addEventListener("input", match);
    match();
  }

  function randomSeed() {
    // 53 bits: exact in JavaScript numbers and in JSON, well inside ComfyUI's 64-bit range
    var words = new Uint32Array(2);
    window.crypto.getRandomValues(words);
    return (words[0] & 0x1fffff) * 4294967296 + words[1];
  }

  function setupCheckpointDescription(select) {
    var target = document.getElementById(select.getAttribute("data-describe"));
    select.addEventListener("change", function () {
      var option = select.options[select.selectedIndex];
      target.textContent = option ? option.getAttribute("data-description") || "" : "";
    });
  }

  /* History layout, remembered in this browser. */
  function storedView() {
    try { return window.localStorage.getItem(VIEW_KEY) === "list" ? "list" : "grid"; } catch (e) { return "grid"; }
  }

  function applyView(view) {
    var container = document.querySelector("[data-view-container]");
    if (container) {
      container.classList.toggle("view-grid", view === "grid");
      container.classList.toggle("view-list", view === "list");
    }
    all(".view-toggle [data-view]").forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.getAttribute("data-view") === view));
    });
  }

  function setupViewToggle() {
    var buttons = all(".view-toggle [data-view]");
    if (!buttons.length) return;
    applyView(storedView());
    buttons.forEach(function (button) {
      button.addEventListener("click", function () {
        var view = button.getAttribute("data-view");
        try { window.localStorage.setItem(VIEW_KEY, view); } catch (e) { /* storage disabled */ }
        applyView(view);
      });
    });
  }

  /* History filters: applied as they change (no Apply button). The results part of the page is
   * fetched again and swapped in, so typing in the search box keeps its focus; the address bar
   * follows (a reload or a shared link shows the same). Other scripts may re-scan the tiles on
   * the "genonaut:history-updated" event. */
  function setupLiveFilters(form) {
    var results = document.getElementById(form.getAttribute("data-live-filters"));
    if (!results) return;
    var timer = null;
    var pending = null;

    function url() {
      var params = new URLSearchParams();
      new FormData(form).forEach(function (value, name) { if (value !== "") params.append(name, value); });
      var query = params.toString();
      return form.action + (query ? "?" + query : "");
    }

    function apply() {
      clearTimeout(timer);
      var target = url();
      if (pending) pending.abort();
      pending = new AbortController();
      form.setAttribute("aria-busy", "true");
      fetch(target, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" }, signal: pending.signal })
        .then(function (response) {
          if (!response.ok || response.redirected) throw new Error("status " + response.status);
          return response.text();
        })
        .then(function (html) {
          var page = new DOMParser().parseFromString(html, "text/html");
          var fresh = page.getElementById(results.id);
          if (!fresh) throw new Error("no results in the page");
          results.innerHTML = fresh.innerHTML;
          all("[data-filter]", form).forEach(function (field) {  // each filter's own error, if any
            var twin = page.querySelector('#' + form.id + ' [data-filter="' + field.getAttribute("data-filter") + '"]');
            var errors = field.querySelector(".field-errors");
            var freshErrors = twin && twin.querySelector(".field-errors");
            field.classList.toggle("has-error", !!freshErrors);
            if (errors) errors.remove();
            if (freshErrors) field.appendChild(freshErrors);
          });
          window.history.replaceState(null, "", target);
          applyView(storedView());
          form.removeAttribute("aria-busy");
          document.dispatchEvent(new CustomEvent("genonaut:history-updated"));
        })
        .catch(function (error) {
          if (error.name === "AbortError") return;
          window.location.href = target;  // the page itself, the plain way
        });
    }

    form.addEventListener("change", function (event) {
      if (event.target.type !== "search") apply();
    });
    form.addEventListener("input", function (event) {
      if (event.target.type !== "search") return;
      clearTimeout(timer);
      timer = setTimeout(apply, SEARCH_DELAY_MS);
    });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      apply();
    });
  }

  function copyText(source, status) {
    var text = source.value || source.textContent;
    function done(ok) { if (status) status.textContent = ok ? "Copied to the clipboard." : "Select the text and copy it."; }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { done(true); }, function () { fallback(); });
    } else {
      fallback();
    }
    function fallback() {
      source.focus();
      source.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      done(ok);
    }
  }

  document.addEventListener("click", function (event) {
    var insert = event.target.closest("[data-insert]");
    if (insert) { insertWord(insert); return; }
    var seedButton = event.target.closest("[data-randomise-seed]");
    if (seedButton) {
      var seed = document.getElementById(seedButton.getAttribute("data-randomise-seed"));
      seed.value = String(randomSeed());
      seed.dispatchEvent(new Event("input", { bubbles: true }));
      return;
    }
    var copy = event.target.closest("[data-copy]");
    if (copy) {
      copyText(document.getElementById(copy.getAttribute("data-copy")), document.querySelector(".copy-status"));
    }
  });

  /* Delete confirmation: the server deletes only with confirm=yes, which is added here. */
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute("data-confirm");
    if (!question) return;
    if (!window.confirm(question)) { event.preventDefault(); return; }
    if (!form.querySelector("input[name=confirm]")) {
      var input = document.createElement("input");
      input.type = "hidden";
      input.name = "confirm";
      input.value = "yes";
      form.appendChild(input);
    }
  });

  /* Previous/next image with the arrow keys (not while typing). */
  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    if (/^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName)) return;
    var link = document.querySelector('a[data-key="' + event.key + '"]');
    if (link) window.location.href = link.href;
  });

  /* A form restored by the Back button is a new form: give it a new idempotency key. */
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) return;
    all("input[name=idempotency_key]").forEach(function (input) {
      var bytes = new Uint8Array(16);
      window.crypto.getRandomValues(bytes);
      input.value = Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
    });
  });

  document.addEventListener("DOMContentLoaded", function () {
    all("[data-lora-row]").forEach(setupLoraRow);
    all("[data-size-preset]").forEach(setupSizePreset);
    all("select[data-describe]").forEach(setupCheckpointDescription);
    all("form[data-live-filters]").forEach(setupLiveFilters);
    setupViewToggle();
  });
})();
