"""Serving stored images and thumbnails to their owner — shared by the API and the UI.

An image is addressed by (request id, index, thumbnail size), never by a path from the client:
the stored path comes from the row, and on local storage it is re-checked, after resolving
symlinks, to lie inside the storage root. Others' requests answer 404 like unknown ones.

Local files get ``ETag``/``Last-Modified``/``Cache-Control: private``, answer conditional
requests with 304 and single ``Range`` requests with 206 (416 when unsatisfiable). Remote
storage (S3 through django-storages) answers a redirect to a short-lived signed URL.
"""

import hashlib
import os
import re

from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import FileSystemStorage, storages
from django.http import FileResponse, Http404, HttpResponse, HttpResponseRedirect, JsonResponse, StreamingHttpResponse
from django.utils.cache import patch_vary_headers
from django.utils.http import http_date, parse_http_date_safe

from generation.selectors import request_for_user
from generation.storage import is_safe_name

CACHE_CONTROL = "private, max-age=3600"
CONTENT_TYPES = {".png": "image/png", ".webp": "image/webp", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                 ".gif": "image/gif", ".mp4": "video/mp4", ".webm": "video/webm"}
_CHUNK = 64 * 1024
_RANGE = re.compile(r"^bytes=(\d{0,18})-(\d{0,18})$")  # bounded: no 5000-digit int parsing


def image_response(request, *, request_id, index, size=None, download=False):
    """The response for image ``index`` of ``request_id`` (its ``size`` thumbnail if given).

    Raises ``Http404`` when the caller may not see the request, or the image or file does not exist.
    """
    generation = request_for_user(user=request.user, request_id=request_id)
    if generation is None:
        raise Http404("No such request.")
    name = stored_name(generation, index=index, size=size)
    extension = os.path.splitext(name)[1].lower()
    filename = download_name(generation, index=index, size=size, extension=extension)
    return stored_file_response(request, name, filename=filename, download=download)


def input_image_response(request, *, record, download=False):
    """The stored PNG of an input image (the caller has checked ``record`` is theirs)."""
    return stored_file_response(request, record.path, filename=f"genonaut-input-{record.pk.hex[:8]}.png",
                                download=download)


def stored_file_response(request, name, *, filename, download=False):
    """Serve the stored file ``name`` (a path from a row, never from the client)."""
    extension = os.path.splitext(name)[1].lower()
    content_type = CONTENT_TYPES.get(extension, "application/octet-stream")
    disposition = f'{"attachment" if download else "inline"}; filename="{filename}"'
    storage = storages["default"]
    if not isinstance(storage, FileSystemStorage):
        return _redirect_to_signed_url(storage, name, disposition=disposition, content_type=content_type)
    path = safe_local_path(storage, name)
    return _file_response(request, path, content_type=content_type, disposition=disposition)


def stored_name(generation, *, index, size=None):
    """The storage name of an image or thumbnail, from the row only; ``Http404`` if there is none."""
    outputs = generation.outputs or []
    if not isinstance(index, int) or not 0 <= index < len(outputs):
        raise Http404("No such image.")
    if size is None:
        name = outputs[index]
    else:
        thumbnails = generation.thumbnails or []
        per_image = thumbnails[index] if index < len(thumbnails) and isinstance(thumbnails[index], dict) else {}
        name = per_image.get(size)
    if not isinstance(name, str) or not name:
        raise Http404("No such image.")
    return name


def download_name(generation, *, index, size=None, extension=".png"):
    """``genonaut-<first 8 hex of the id>-<n>[-<size>].<ext>``: short, unique enough, filesystem-safe."""
    suffix = f"-{size}" if size else ""
    return f"genonaut-{generation.pk.hex[:8]}-{index}{suffix}{extension or '.png'}"


def safe_local_path(storage, name):
    """The real path of ``name`` inside ``storage``'s root, or ``Http404``.

    Refuses names we could not have written (absolute, ``..``, backslash, NUL, outside
    ``generations/``: :func:`generation.storage.is_safe_name`) outright, then resolves
    symlinks and checks the result is still a regular file under the (resolved) root.
    """
    if not is_safe_name(name):
        raise Http404("No such image.")
    root = os.path.realpath(storage.location)
    try:
        joined = storage.path(name)
    except (SuspiciousFileOperation, ValueError):
        raise Http404("No such image.")
    real = os.path.realpath(joined)
    if os.path.commonpath([root, real]) != root or not os.path.isfile(real):
        raise Http404("No such image.")
    return real


def _redirect_to_signed_url(storage, name, *, disposition, content_type):
    try:
        url = storage.url(name, parameters={"ResponseContentDisposition": disposition,
                                            "ResponseContentType": content_type},
                          expire=getattr(settings, "AWS_QUERYSTRING_EXPIRE", 300))
    except TypeError:  # a remote storage without signed-URL parameters
        url = storage.url(name)
    response = HttpResponseRedirect(url)
    response["Cache-Control"] = "private, no-store"
    return response


def _etag(path, stat):
    digest = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    return f'"{digest}"'


def _not_modified(request, *, etag, mtime):
    if_none_match = request.META.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or etag in tags
    since = parse_http_date_safe(request.META.get("HTTP_IF_MODIFIED_SINCE", ""))
    return since is not None and mtime <= since


def _range(request, *, etag, last_modified, length):
    """``(start, end)`` inclusive for a satisfiable single range, ``None`` to send everything,
    or ``False`` when unsatisfiable (416)."""
    header = request.META.get("HTTP_RANGE")
    if not header:
        return None
    if_range = request.META.get("HTTP_IF_RANGE")
    if if_range is not None and if_range.strip() not in (etag, last_modified):
        return None  # the client's copy is stale: it gets the whole new file
    match = _RANGE.match(header.strip().replace(" ", ""))
    if match is None:
        return None  # multiple ranges or another unit: a 200 with everything is a valid answer
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        suffix = int(last)
        if suffix == 0 or length == 0:
            return False
        return max(0, length - suffix), length - 1
    start = int(first)
    if last and int(last) < start:
        return None  # syntactically invalid: ignore the header
    if start >= length:
        return False
    return start, min(int(last) if last else length - 1, length - 1)


def _file_response(request, path, *, content_type, disposition):
    stat = os.stat(path)
    etag = _etag(path, stat)
    mtime = int(stat.st_mtime)
    last_modified = http_date(mtime)
    headers = {"ETag": etag, "Last-Modified": last_modified, "Cache-Control": CACHE_CONTROL,
               "Accept-Ranges": "bytes"}
    if _not_modified(request, etag=etag, mtime=mtime):
        response = HttpResponse(status=304)
    else:
        wanted = _range(request, etag=etag, last_modified=last_modified, length=stat.st_size)
        if wanted is False:
            response = JsonResponse({"error": {"code": "range_not_satisfiable",
                                               "message": "The requested range is outside the file.",
                                               "fields": {}}}, status=416)
            response["Content-Range"] = f"bytes */{stat.st_size}"
        elif wanted is None:
            response = FileResponse(open(path, "rb"), content_type=content_type)  # noqa: SIM115 (closed by Django)
            response["Content-Disposition"] = disposition
        else:
            start, end = wanted
            response = StreamingHttpResponse(_read_range(path, start, end), status=206, content_type=content_type)
            response["Content-Range"] = f"bytes {start}-{end}/{stat.st_size}"
            response["Content-Length"] = str(end - start + 1)
            response["Content-Disposition"] = disposition
    for key, value in headers.items():
        response[key] = value
    patch_vary_headers(response, ["Authorization", "Cookie"])
    return response


def _read_range(path, start, end):
    with open(path, "rb") as handle:
        handle.seek(start)
        remaining = end - start + 1
        while remaining > 0:
            chunk = handle.read(min(_CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk
