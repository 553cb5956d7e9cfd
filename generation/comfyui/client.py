"""HTTP and websocket client for one ComfyUI backend: the only module that builds ComfyUI URLs.

Transport errors and 5xx are retried a bounded number of times with backoff and then raised
as :class:`BackendUnavailable`; a 400 is never retried. ``submit`` never sends the same
``prompt_id`` twice blindly: ComfyUI does not de-duplicate ids, so after a transport error it
first asks ``/queue`` and ``/history`` whether the first attempt arrived.
"""

import contextlib
import dataclasses
import io
import json
import mimetypes
import threading
import time
import uuid
from dataclasses import dataclass
from urllib.parse import quote, urlencode, urlsplit

import requests
import websocket
from django.conf import settings

from generation.comfyui import events as ev
from generation.comfyui.errors import (
    BackendUnavailable,
    OutputMissing,
    PromptUnknown,
    UploadRejected,
    WorkflowRejected,
)
from generation.comfyui.object_info import ObjectInfo

VIEW_CHUNK_SIZE = 64 * 1024
UPLOAD_CHUNK_SIZE = 256 * 1024
PREVIEW_FEATURE_FLAGS = json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
_object_info_cache = {}  # base_url -> (expires_at, ObjectInfo)
_object_info_lock = threading.Lock()


@dataclass(frozen=True)
class QueueSnapshot:
    running: list
    pending: list

    def __contains__(self, prompt_id):
        return prompt_id in self.running or prompt_id in self.pending


@dataclass(frozen=True)
class Location:
    """Where a prompt is: ``pending``, ``running``, ``finished`` (with its history entry) or ``unknown``."""

    state: str
    history: dict | None = None


def clear_object_info_cache():
    with _object_info_lock:
        _object_info_cache.clear()


class ComfyUIClient:
    """One ComfyUI server at ``base_url``; safe to share between threads for HTTP calls."""

    def __init__(self, base_url, timeout=None, retries=2, *, backoff=0.2):
        self.base_url = base_url.rstrip("/")
        self.timeout = settings.COMFYUI_TIMEOUT if timeout is None else timeout
        self.retries = retries
        self.backoff = backoff
        self.session = requests.Session()
        # Backends are addressed directly; reading proxy/netrc settings on every call costs ~1 ms.
        self.session.trust_env = False

    def __repr__(self):
        return f"ComfyUIClient({self.base_url!r})"

    # --- HTTP plumbing ------------------------------------------------------------------

    def url(self, path, **query):
        query = {k: v for k, v in query.items() if v is not None}
        return f"{self.base_url}{path}" + (f"?{urlencode(query)}" if query else "")

    def _request(self, method, path, *, json_body=None, query=None, stream=False, retries=None):
        attempts = 1 + (self.retries if retries is None else retries)
        last = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self.session.request(method, self.url(path, **(query or {})), json=json_body,
                                                timeout=self.timeout, stream=stream)
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code >= 500:
                last = f"HTTP {response.status_code} from {path}"
                response.close()
                continue
            return response
        raise BackendUnavailable(f"{self.base_url} unavailable ({last})", backend=self.base_url)

    def _json(self, method, path, **kwargs):
        response = self._request(method, path, **kwargs)
        if response.status_code != 200:
            raise BackendUnavailable(f"{method} {path} answered HTTP {response.status_code}", backend=self.base_url)
        try:
            return response.json()
        except ValueError:
            raise BackendUnavailable(f"{method} {path} answered a body that is not JSON", backend=self.base_url)

    # --- prompts ------------------------------------------------------------------------

    def submit(self, workflow, *, prompt_id, client_id, extra_data=None):
        """``POST /prompt`` with our ``prompt_id``; returns ``{"prompt_id", "number"}``.

        Raises :class:`WorkflowRejected` on a 400 or on a 200 with ``node_errors`` (our graph has a
        single output, so a partial acceptance produces nothing), :class:`BackendUnavailable`
        after the retries.
        """
        body = {"prompt": workflow, "client_id": client_id, "prompt_id": prompt_id}
        if extra_data:
            body["extra_data"] = extra_data
        last = None
        for attempt in range(1 + self.retries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
                with contextlib.suppress(BackendUnavailable):
                    if self.locate(prompt_id).state != "unknown":  # the earlier attempt did arrive
                        return {"prompt_id": prompt_id, "number": None}
            try:
                response = self.session.post(self.url("/prompt"), json=body, timeout=self.timeout)
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code >= 500:
                last = f"HTTP {response.status_code} from /prompt"
                continue
            return self._accepted(response)
        raise BackendUnavailable(f"{self.base_url} unavailable ({last})", backend=self.base_url)

    def _accepted(self, response):
        try:
            data = response.json()
        except ValueError:
            raise BackendUnavailable(f"POST /prompt answered HTTP {response.status_code} without JSON",
                                     backend=self.base_url)
        if response.status_code == 400 or data.get("error"):
            raise WorkflowRejected(data.get("error"), data.get("node_errors"), backend=self.base_url)
        if response.status_code != 200:
            raise BackendUnavailable(f"POST /prompt answered HTTP {response.status_code}", backend=self.base_url)
        if data.get("node_errors"):
            # Accepted partially: ComfyUI may run it anyway; take it off the queue, nothing useful comes out.
            with contextlib.suppress(BackendUnavailable):
                self.delete_from_queue([data["prompt_id"]])
            raise WorkflowRejected({"type": "prompt_outputs_failed_validation",
                                    "message": "Prompt outputs failed validation", "details": "",
                                    "extra_info": {}}, data["node_errors"], backend=self.base_url)
        return {"prompt_id": data["prompt_id"], "number": data.get("number")}

    def history(self, prompt_id):
        """The finished history entry of ``prompt_id``, or None while pending/running/unknown."""
        data = self._json("GET", f"/history/{prompt_id}")
        return data.get(prompt_id) or None

    def history_page(self, *, max_items=None, offset=None):
        return self._json("GET", "/history", query={"max_items": max_items, "offset": offset})

    def queue(self):
        data = self._json("GET", "/queue")
        return QueueSnapshot(running=[item[1] for item in data.get("queue_running", [])],
                             pending=[item[1] for item in data.get("queue_pending", [])])

    def locate(self, prompt_id):
        """Ask ``/history`` then ``/queue`` (then ``/history`` again, for a prompt that just finished)."""
        entry = self.history(prompt_id)
        if entry:
            return Location("finished", entry)
        snapshot = self.queue()
        if prompt_id in snapshot.running:
            return Location("running")
        if prompt_id in snapshot.pending:
            return Location("pending")
        entry = self.history(prompt_id)
        return Location("finished", entry) if entry else Location("unknown")

    def delete_from_queue(self, prompt_ids):
        """Remove pending prompts (a running one is untouched: use :meth:`interrupt`)."""
        self._request("POST", "/queue", json_body={"delete": list(prompt_ids)}).close()

    def interrupt(self, prompt_id=None):
        """Interrupt ``prompt_id`` if it is the running one (ComfyUI ignores it otherwise), or whatever runs."""
        self._request("POST", "/interrupt", json_body={"prompt_id": prompt_id} if prompt_id else {}).close()

    # --- input files --------------------------------------------------------------------

    def upload_image(self, data, *, name, subfolder="", overwrite=True, image_type="input"):
        """``POST /upload/image``: store ``data`` (bytes or a binary file object) as ``subfolder/name``.

        Returns ComfyUI's reply ``{"name", "subfolder", "type"}``; ``name`` differs from the one
        sent when the backend renamed it (same name, other bytes, ``overwrite`` false). The body is
        streamed from ``data``, never copied whole; a file object is read from its current position
        and rewound for a retry (a stream that cannot seek is sent once). A 4xx raises
        :class:`UploadRejected`; transport errors and 5xx are retried, then :class:`BackendUnavailable`.
        """
        source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
        fields = {"type": image_type, "subfolder": subfolder, "overwrite": "true" if overwrite else "false"}
        try:
            start = source.tell() if source.seekable() else None
        except (AttributeError, OSError):
            start = None
        attempts = 1 + (self.retries if start is not None else 0)
        last = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
                source.seek(start)
            body = _MultipartBody(fields, "image", name, source, _remaining(source, start))
            try:
                response = self.session.post(self.url("/upload/image"), data=body.stream(),
                                             headers={"Content-Type": body.content_type}, timeout=self.timeout)
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code >= 500:
                last = f"HTTP {response.status_code} from /upload/image"
                continue
            if 400 <= response.status_code < 500:
                raise UploadRejected(status=response.status_code, name=name, subfolder=subfolder,
                                     backend=self.base_url)
            try:
                reply = response.json()
            except ValueError:
                reply = None
            if response.status_code != 200 or not isinstance(reply, dict) or "name" not in reply:
                raise BackendUnavailable(f"POST /upload/image answered HTTP {response.status_code} without "
                                         "the file's name", backend=self.base_url)
            return reply
        raise BackendUnavailable(f"{self.base_url} unavailable ({last})", backend=self.base_url)

    # --- catalogue ----------------------------------------------------------------------

    def object_info(self, *, refresh=False):
        """The backend's node catalogue, cached per base URL for ``COMFYUI_OBJECT_INFO_TTL`` seconds.

        Every caller gets the same instance until it expires; a fresh fetch is a new instance
        with a new ``fetched_at``. To act only when a backend's capabilities changed, compare
        ``info.capabilities_digest`` with the one recorded last time.
        """
        now = time.monotonic()
        with _object_info_lock:
            cached = _object_info_cache.get(self.base_url)
        if cached and cached[0] > now and not refresh:
            return cached[1]
        info = ObjectInfo(self._json("GET", "/object_info"), fetched_at=time.time())
        with _object_info_lock:
            _object_info_cache[self.base_url] = (now + settings.COMFYUI_OBJECT_INFO_TTL, info)
        return info

    def system_stats(self):
        return self._json("GET", "/system_stats")

    def models(self, folder):
        """File names ComfyUI has in a model folder (``checkpoints``, ``loras``, …); [] for an unknown folder."""
        response = self._request("GET", f"/models/{folder}")
        if response.status_code == 404:
            return []
        if response.status_code != 200:
            raise BackendUnavailable(f"GET /models/{folder} answered HTTP {response.status_code}",
                                     backend=self.base_url)
        return response.json()

    @contextlib.contextmanager
    def view(self, filename, subfolder="", type="output"):
        """Stream one output file: ``with client.view(...) as chunks: for chunk in chunks: ...``."""
        response = self._request("GET", "/view", query={"filename": filename, "subfolder": subfolder, "type": type},
                                 stream=True)
        try:
            if response.status_code in (400, 403, 404):
                raise OutputMissing(f"/view {subfolder}/{filename} ({type}) answered HTTP {response.status_code}",
                                    backend=self.base_url)
            if response.status_code != 200:
                raise BackendUnavailable(f"/view answered HTTP {response.status_code}", backend=self.base_url)
            yield response.iter_content(VIEW_CHUNK_SIZE)
        except requests.RequestException as exc:
            raise BackendUnavailable(f"/view interrupted: {exc}", backend=self.base_url)
        finally:
            response.close()

    # --- websocket ----------------------------------------------------------------------

    def websocket_url(self, client_id):
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{parts.netloc}{parts.path}/ws?{urlencode({'clientId': client_id})}"

    @contextlib.contextmanager
    def event_stream(self, client_id, previews=False, **options):
        """Open ``/ws`` for ``client_id`` (before submitting, so no event is missed) and close it after.

        With ``previews`` the socket declares ``supports_preview_metadata`` on every (re)connect, so
        ComfyUI sends previews with their prompt id. ``options`` go to :class:`EventStream`
        (``poll_interval``, ``unavailable_grace``, …).
        """
        stream = EventStream(self, client_id, previews=previews, **options)
        stream.connect(raise_errors=False)
        try:
            yield stream
        finally:
            stream.close()


class EventStream:
    """Typed events for one ``client_id``; see :meth:`follow`."""

    def __init__(self, client, client_id, *, previews=False, poll_interval=5.0, reconnect_delay=0.2,
                 max_reconnect_delay=5.0, unavailable_grace=5.0):
        self.client = client
        self.previews = previews
        self.server_features = None  # the server's feature_flags answer on the current socket
        self._executing_prompt = None  # prompt of the last execution frame: owner of legacy previews
        self.unavailable_grace = unavailable_grace
        self._unavailable_since = None
        self.client_id = client_id
        self.poll_interval = poll_interval
        self.reconnect_delay = reconnect_delay
        self.max_reconnect_delay = max_reconnect_delay
        self.socket = None
        self._buffered = []  # frames read while connecting, handed out first
        self.reconnects = 0
        self._next_connect = 0.0
        self._delay = reconnect_delay

    @property
    def connected(self):
        return self.socket is not None

    def connect(self, *, raise_errors=True):
        """Open the socket and wait for its first frame (``status``).

        ComfyUI registers the client id before it sends that frame, so once it has arrived no
        frame for this client can be sent to nobody (submitting right after the handshake could race).
        """
        socket = None
        try:
            # ComfyUI sends JSON text frames; skipping the pure-Python UTF-8 check saves ~16 ms CPU a job
            # (json.loads rejects anything malformed anyway).
            socket = websocket.create_connection(self.client.websocket_url(self.client_id),
                                                 timeout=self.client.timeout, skip_utf8_validation=True)
            if self.previews:  # ComfyUI reads feature flags only from a socket's first message
                socket.send(PREVIEW_FEATURE_FLAGS)
            self._buffered = [socket.recv()]
            self.socket, self.server_features = socket, None
            self._delay = self.reconnect_delay
            return True
        except (OSError, websocket.WebSocketException) as exc:
            if socket is not None:
                with contextlib.suppress(Exception):
                    socket.close()
            self.socket = None
            self._next_connect = time.monotonic() + self._delay
            self._delay = min(self._delay * 2, self.max_reconnect_delay)
            if raise_errors:
                raise BackendUnavailable(f"websocket: {exc}", backend=self.client.base_url)
            return False

    def close(self):
        if self.socket is not None:
            with contextlib.suppress(Exception):
                self.socket.close()
            self.socket = None

    def _lost(self):
        self.close()
        self._next_connect = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, self.max_reconnect_delay)

    def _receive(self, timeout):
        """One parsed frame, None on timeout; drops the socket on any error."""
        self.socket.settimeout(max(timeout, 0.001))
        try:
            frame = self._buffered.pop(0) if self._buffered else self.socket.recv()
        except websocket.WebSocketTimeoutException:
            return None
        except (OSError, websocket.WebSocketException):
            self._lost()
            return None
        if not frame:  # the server closed the socket
            self._lost()
            return None
        if isinstance(frame, bytes):  # binary frames carry previews
            preview = ev.parse_binary_frame(frame)
            if preview is not None and preview.prompt_id is None:
                preview = dataclasses.replace(preview, prompt_id=self._executing_prompt)
            return preview
        try:
            message = json.loads(frame)
            if message.get("type") == "feature_flags":
                self.server_features = message.get("data") or {}
                return None
            event = ev.parse_event(message)
        except (ValueError, AttributeError):
            return None
        if event.prompt_id is not None and not isinstance(event, ev.Status):
            self._executing_prompt = event.prompt_id
        return event

    def _check_backend(self, prompt_id):
        """Ask ``/history`` + ``/queue``: the terminal event if finished, None if still queued/running.

        A backend that does not answer is tolerated for ``unavailable_grace`` seconds (None is
        returned meanwhile), so a short outage does not abandon a prompt that is still running there.
        """
        try:
            location = self.client.locate(prompt_id)
        except BackendUnavailable:
            now = time.monotonic()
            self._unavailable_since = self._unavailable_since or now
            if now - self._unavailable_since >= self.unavailable_grace:
                raise
            return None
        finally:
            self._last_check = time.monotonic()  # the interval to the next check counts from the answer
        self._unavailable_since = None
        if location.state == "finished":
            return ev.outcome_from_history(prompt_id, location.history)
        if location.state == "unknown":
            raise PromptUnknown(prompt_id, backend=self.client.base_url)
        return None

    def follow(self, prompt_id, idle_interval=0.5):
        """Yield events of ``prompt_id`` (and ``Status``/``Idle``) until it succeeds, fails or is interrupted.

        ``Preview`` events come with the sampler's frames; a legacy preview (no prompt id in the
        frame) is attributed to the prompt of the execution frames before it on this socket, which
        is the followed one when each prompt has its own client id (otherwise dropped until the
        socket has seen one).

        The terminal event (``ExecutionSuccess``, ``ExecutionError``, ``ExecutionInterruptedEvent``)
        is the last one yielded. Websocket frames are advisory: on socket loss the stream
        reconnects with backoff and meanwhile polls ``/history`` and ``/queue``; it also polls
        every ``poll_interval`` while connected, so a missed frame never hides a completion.
        Raises :class:`PromptUnknown` when the backend has neither queued nor finished the prompt, and
        :class:`BackendUnavailable` when it stopped answering for longer than ``unavailable_grace``.
        """
        self._last_check = float("-inf")  # the first quiet moment checks the backend (re-attachment, lost prompts)
        last_yield = time.monotonic()
        while True:
            now = time.monotonic()
            quiet = now - last_yield
            if self.socket is None:
                if now >= self._next_connect and self.connect(raise_errors=False):
                    self.reconnects += 1
                    # frames sent while we were away are gone
                    if (outcome := self._check_backend(prompt_id)) is not None:
                        yield outcome
                        return
                    continue
                if quiet >= idle_interval:
                    if now - self._last_check >= idle_interval and (
                            outcome := self._check_backend(prompt_id)) is not None:
                        yield outcome
                        return
                    last_yield = time.monotonic()
                    yield ev.Idle(prompt_id=prompt_id, connected=False)
                    continue
                time.sleep(max(0.005, min(idle_interval - quiet, self._next_connect - now, 0.05)))
                continue

            event = self._receive(idle_interval - quiet)
            if isinstance(event, ev.Preview) and event.prompt_id is None:
                event = dataclasses.replace(event, prompt_id=prompt_id)
            if event is not None and (isinstance(event, ev.Status) or event.prompt_id == prompt_id):
                if isinstance(event, ev.Executing) and event.node is None:
                    # The legacy "done" frame without a terminal frame before it: ask history what happened.
                    if (outcome := self._check_backend(prompt_id)) is not None:
                        yield outcome
                        return
                    continue
                last_yield = time.monotonic()
                yield event
                if isinstance(event, ev.TERMINAL):
                    return
                continue
            # nothing for us (a timeout, another prompt's frame, a lost socket)
            if self.socket is None or time.monotonic() - last_yield < idle_interval:
                continue
            if time.monotonic() - self._last_check >= self.poll_interval and (
                    outcome := self._check_backend(prompt_id)) is not None:
                yield outcome
                return
            last_yield = time.monotonic()
            yield ev.Idle(prompt_id=prompt_id, connected=True)


def _remaining(source, start):
    """Bytes left in ``source`` from ``start`` (None for a stream that cannot seek: sent chunked)."""
    if start is None:
        return None
    end = source.seek(0, io.SEEK_END)
    source.seek(start)
    return end - start


class _MultipartBody:
    """A ``multipart/form-data`` body whose file part is read from a file object in chunks."""

    def __init__(self, fields, file_field, filename, source, size):
        boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}"
        head = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'
                        .encode() for key, value in fields.items())
        part_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        escaped = filename.replace("\\", "\\\\").replace('"', '\\"')
        disposition = f'form-data; name="{file_field}"; filename="{escaped}"'
        if not filename.isascii():  # RFC 5987 form for names a plain header cannot carry
            disposition += f"; filename*=UTF-8''{quote(filename, safe='')}"
        head += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                 f"Content-Type: {part_type}\r\n\r\n").encode()
        self.head, self.tail = head, f"\r\n--{boundary}--\r\n".encode()
        self.source = source
        self.length = None if size is None else len(self.head) + size + len(self.tail)

    def stream(self):
        """What ``requests`` sends: a sized reader (Content-Length), or chunks when the size is unknown."""
        return _SizedReader(self.chunks(), self.length) if self.length is not None else self.chunks()

    def chunks(self):
        yield self.head
        while chunk := self.source.read(UPLOAD_CHUNK_SIZE):
            yield chunk
        yield self.tail


class _SizedReader:
    """A file-like view of chunks with a known total length (``requests`` then sets Content-Length)."""

    def __init__(self, chunks, length):
        self._chunks = chunks
        self._chunk = memoryview(b"")
        self.length = length

    def __len__(self):
        return self.length

    def __iter__(self):
        return self._chunks

    def read(self, size=-1):
        parts = []
        while size != 0:
            if not self._chunk:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._chunk = memoryview(chunk)
            piece = self._chunk if size < 0 else self._chunk[:size]
            self._chunk = self._chunk[len(piece):]
            parts.append(piece)
            size = size - len(piece) if size > 0 else size
        return b"".join(parts)
