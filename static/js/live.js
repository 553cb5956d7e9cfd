/* Genonaut — pages that update themselves from server-sent events (docs/api.md "Live events").
 * The request card, the History tiles and the staff Backends page each open one EventSource on the
 * same origin (the session cookie authenticates it). What changes the page's structure (a new status,
 * a finished request, a backend going down) is rendered by the server: the part is fetched once and
 * swapped in, so every state has one template. Progress, previews and load figures are set in place.
 * The card falls back to polling its partial once a second when EventSource is missing or fails. */
(function () {
  "use strict";

  var POLL_MS = 1000;
  var POLL_LIMIT_MS = 2 * 60 * 60 * 1000; // stop polling after two hours; a reload resumes
  var ERRORS_BEFORE_POLLING = 3;          // connection errors before any event: the stream does not work here
  var FIRST_EVENT_MS = 10000;             // the stream opens with the current state; silence means a buffering proxy
  var TILE_BATCH_MS = 150;                // status changes arriving together cost one tiles fetch
  var TERMINAL = ["completed", "failed", "cancelled"];

  function all(selector, root) {
    return Array.prototype.slice.call((root || document).querySelectorAll(selector));
  }

  function fetchHtml(url) {
    return fetch(url, { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.redirected) throw new Error("logged out");
        if (!response.ok) throw new Error("status " + response.status);
        return response.text();
      });
  }

  /* One EventSource; ``handlers`` maps event names to functions of the parsed data. ``onFailure`` runs
   * once when the stream cannot work: the server refused it (readyState CLOSED: 4xx, 204, not an event
   * stream) or it failed ERRORS_BEFORE_POLLING times before its first event. Once events have come, a
   * dropped connection is the browser's to resume (it reconnects with Last-Event-ID). */
  function listen(url, handlers, onFailure) {
    if (!window.EventSource || !url) {
      if (onFailure) onFailure();
      return null;
    }
    var source = new EventSource(url);
    var received = false;
    var errors = 0;
    var failed = false;
    function fail() {
      if (failed) return;
      failed = true;
      source.close();
      if (onFailure) onFailure();
    }
    Object.keys(handlers).forEach(function (name) {
      source.addEventListener(name, function (event) {
        received = true;
        var data;
        try { data = JSON.parse(event.data); } catch (e) { return; }
        handlers[name](data);
      });
    });
    source.addEventListener("error", function () {
      if (failed) return;
      errors += 1;
      if (source.readyState === EventSource.CLOSED || (!received && errors >= ERRORS_BEFORE_POLLING)) fail();
    });
    source.fail = fail;
    source.received = function () { return received; };
    return source;
  }

  function showProblem(container, text) {
    var note = container.querySelector(".poll-problem");
    if (!note) {
      note = document.createElement("p");
      note.className = "poll-problem";
      note.setAttribute("role", "status");
      container.appendChild(note);
    }
    note.textContent = text;
  }

  function isActive(container) {
    var live = container.querySelector(".live");
    return !!live && live.getAttribute("data-active") === "true";
  }

  function renderedStatus(container) {
    var live = container.querySelector(".live");
    return live ? live.getAttribute("data-status") : "";
  }

  /* The fallback: re-fetch the card's partial every second while the request is active. A 404 (deleted
   * elsewhere) or a redirect (logged out) stops it with a note; other failures keep it going. */
  function pollStatus(container) {
    var url = container.getAttribute("data-live-url");
    var started = Date.now();
    var busy = false;
    if (!isActive(container)) return;
    var timer = setInterval(function () {
      if (Date.now() - started > POLL_LIMIT_MS) { clearInterval(timer); return; }
      if (busy || document.hidden) return;
      busy = true;
      fetch(url, { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin", cache: "no-store" })
        .then(function (response) {
          if (response.status === 404) {
            clearInterval(timer);
            showProblem(container, "This request no longer exists (deleted in another window?).");
            return null;
          }
          if (response.redirected) {
            clearInterval(timer);
            showProblem(container, "You were logged out; reload the page to log in again.");
            return null;
          }
          if (!response.ok) throw new Error("status " + response.status);
          return response.text();
        })
        .then(function (html) {
          if (html === null) return;
          container.innerHTML = html;
          if (!isActive(container)) clearInterval(timer);
        })
        .catch(function () { showProblem(container, "Lost contact with the server; retrying…"); })
        .then(function () { busy = false; });
    }, POLL_MS);
  }

  /* The latest latent preview, beside the card. A frame is loaded off screen and shown when decoded,
   * so the picture never blanks; frames that arrive meanwhile are skipped for the newest one. */
  function previewFrame(frame) {
    var loading = false;
    var wanted = null;
    var image = null;
    function load() {
      if (loading || !wanted) return;
      var url = wanted;
      wanted = null;
      loading = true;
      var next = new Image();
      next.addEventListener("load", function () {
        loading = false;
        if (!frame.stopped) {
          if (!image) {
            image = document.createElement("img");
            image.className = "live-preview";
            image.alt = "Preview while sampling";
            frame.insertBefore(image, frame.firstChild);
          }
          image.src = url;
          frame.hidden = false;
        }
        load();
      });
      next.addEventListener("error", function () { loading = false; load(); }); // gone already, or not ours
      next.src = url;
    }
    return {
      show: function (url) { frame.stopped = false; wanted = url; load(); },
      hide: function () { frame.stopped = true; wanted = null; frame.hidden = true; }
    };
  }

  /* The request card: status changes re-render the partial, progress and previews arrive as events. */
  function followCard(container) {
    if (!isActive(container)) return;
    var frame = document.querySelector("[data-live-preview]");
    var preview = frame ? previewFrame(frame) : { show: function () {}, hide: function () {} };
    var lastProgress = null;
    var fetching = false;
    var again = false;
    var ended = false;
    var polling = false;

    function startPolling() {
      if (polling) return;
      polling = true;
      pollStatus(container);
    }

    function refresh() {
      if (fetching) { again = true; return; }
      fetching = true;
      fetchHtml(container.getAttribute("data-live-url"))
        .then(function (html) {
          container.innerHTML = html;
          if (renderedStatus(container) === "running") {
            if (lastProgress) setProgress(lastProgress);  // newer than the rendered row, perhaps
          } else {
            preview.hide();
          }
        })
        .catch(function () {
          // deleted elsewhere, logged out, or the server is away: polling says which, and retries
          again = false;
          ended = true;
          source.close();
          startPolling();
        })
        .then(function () {
          fetching = false;
          if (again) { again = false; refresh(); return; }
          // the stream has ended; a cancelled card may still be stopping its prompt on the backend
          if (ended && isActive(container)) startPolling();
        });
    }

    function setProgress(data) {
      var percent = Math.round(100 * (data.fraction || 0));
      var bar = container.querySelector(".live progress");
      var value = container.querySelector('[data-testid="percent"]');
      var step = container.querySelector("[data-live-step]");
      if (!bar || !step) return false;
      bar.value = percent;
      bar.textContent = percent + "%";
      if (value) value.textContent = percent + "%";
      // as the partial words it: "Step i / n · KSampler (3)", or the node alone before sampling starts
      var node = data.node ? " · " + data.node : "";
      if (data.total_steps) step.textContent = "Step " + data.step + " / " + data.total_steps + node;
      else if (data.node) step.textContent = "Starting on the backend…" + node;
      return true;
    }

    function finish() {
      ended = true;
      source.close();
      preview.hide();
      refresh();
    }

    var handlers = {
      status: function () { refresh(); },
      progress: function (data) {
        lastProgress = data;
        if (renderedStatus(container) !== "running" || !setProgress(data)) refresh();
      },
      preview: function (data) { if (data.url) preview.show(data.url); }
    };
    TERMINAL.forEach(function (name) { handlers[name] = finish; });
    var source = listen(container.getAttribute("data-events-url"), handlers, startPolling);
    if (!source) return;
    setTimeout(function () { if (!source.received() && !ended) source.fail(); }, FIRST_EVENT_MS);
  }

  /* History: progress is set on the tile; a new status or queue position, or the end, re-renders the
   * tile (batched: one fetch for the tiles that changed together). Requests not on the page are ignored. */
  function followHistory(results) {
    var tilesUrl = results.getAttribute("data-tiles-url");
    var due = {};
    var timer = null;
    var fetching = false;

    function tile(id) {
      return results.querySelector('[data-request-id="' + String(id).replace(/[^0-9a-f-]/gi, "") + '"]');
    }

    function schedule(id) {
      if (!tile(id)) return;
      due[id] = true;
      if (!timer && !fetching) timer = setTimeout(refresh, TILE_BATCH_MS);
    }

    function refresh() {
      timer = null;
      var ids = Object.keys(due);
      due = {};
      if (!ids.length) return;
      fetching = true;
      var query = ids.map(function (id) { return "id=" + encodeURIComponent(id); }).join("&") +
        "&next=" + encodeURIComponent(window.location.pathname + window.location.search);
      fetchHtml(tilesUrl + "?" + query)
        .then(function (html) {
          var page = new DOMParser().parseFromString(html, "text/html");
          all("[data-request-id]", page).forEach(function (fresh) {
            var old = tile(fresh.getAttribute("data-request-id"));
            if (old) old.replaceWith(document.importNode(fresh, true));
          });
          document.dispatchEvent(new CustomEvent("genonaut:history-updated", { detail: { requests: ids } }));
        })
        .catch(function () { /* the tiles stay as they were; the next change tries again */ })
        .then(function () {
          fetching = false;
          if (Object.keys(due).length) timer = setTimeout(refresh, TILE_BATCH_MS);
        });
    }

    function changed(data) {
      var card = tile(data.id);
      if (!card) return;
      var position = data.queue_position == null ? "" : String(data.queue_position);
      if (card.getAttribute("data-status") !== data.status ||
          (data.queue_position !== undefined && card.getAttribute("data-queue-position") !== position)) {
        schedule(data.id);
      }
    }

    function progress(data) {
      var card = tile(data.id);
      if (!card) return;
      var bar = card.querySelector("[data-tile-progress]");
      if (card.getAttribute("data-status") !== "running" || !bar) { schedule(data.id); return; }
      var percent = Math.round(100 * (data.fraction || 0));
      bar.value = percent;
      bar.textContent = percent + "%";
      var detail = card.querySelector("[data-tile-detail]");
      if (detail && data.total_steps) detail.textContent = "Step " + data.step + " / " + data.total_steps;
    }

    var handlers = { status: changed, progress: progress };
    TERMINAL.forEach(function (name) { handlers[name] = changed; });
    listen(results.getAttribute("data-events-url"), handlers, null);
  }

  /* Staff Backends page: load figures are set in place from each ``backends`` event; a change of health,
   * failures or checkpoint (or of the list of backends) re-renders the list from the page itself. */
  function followBackends(list) {
    var fetching = false;

    function when(value) { return value ? String(value).slice(0, 19).replace("T", " ") : "never"; }

    function set(panel, cell, text) {
      var element = panel.querySelector('[data-cell="' + cell + '"]');
      if (element && element.textContent !== text) element.textContent = text;
    }

    function reshaped(panel, backend) {
      var newest = backend.recent_failures && backend.recent_failures.length ? backend.recent_failures[0].request_id : "";
      return panel.getAttribute("data-healthy") !== String(!!backend.healthy) ||
        panel.getAttribute("data-failures") !== String(backend.consecutive_failures) ||
        panel.getAttribute("data-answered") !== String(!!backend.last_ok_at) ||
        panel.getAttribute("data-checkpoint") !== (backend.loaded_checkpoint || "") ||
        panel.getAttribute("data-newest-failure") !== String(newest || "");
    }

    function rerender() {
      if (fetching) return;
      fetching = true;
      fetchHtml(window.location.href)
        .then(function (html) {
          var fresh = new DOMParser().parseFromString(html, "text/html").querySelector(".backend-list");
          if (fresh) list.innerHTML = fresh.innerHTML;
        })
        .catch(function () { /* kept as it was; the next event tries again */ })
        .then(function () { fetching = false; });
    }

    listen(list.getAttribute("data-events-url"), {
      backends: function (backends) {
        var panels = all("[data-backend-url]", list);
        var structural = panels.length !== backends.length;
        backends.forEach(function (b) {
          var panel = panels.filter(function (p) { return p.getAttribute("data-backend-url") === b.url; })[0];
          if (!panel || reshaped(panel, b)) { structural = true; return; }
          set(panel, "capacity", b.capacity + " (" + b.free_slots + " free)");
          set(panel, "queue", b.running + " assigned · " + b.executing + " executing · " + b.waiting_on_backend +
            " waiting on ComfyUI · " + b.storing_outputs + " storing images");
          set(panel, "last-hour", b.completed_last_hour + " completed · " + b.failed_last_hour + " failed");
          set(panel, "all-time", b.jobs_completed + " completed · " + b.jobs_failed + " failed");
          set(panel, "last-ok", when(b.last_ok_at));
          set(panel, "last-checked", when(b.last_checked_at));
        });
        if (structural) rerender();
      }
    }, null);
  }

  document.addEventListener("DOMContentLoaded", function () {
    all("[data-live-url]").forEach(followCard);
    all("#history-results[data-events-url]").forEach(followHistory);
    all(".backend-list[data-events-url]").forEach(followBackends);
  });
})();
