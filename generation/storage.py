"""Storage layout of generated files, and the only code that writes or deletes them.

Everything goes through Django's default storage (local files by default, S3 through
django-storages), at paths derived from the request alone:

    generations/<user_id>/<yyyy>/<mm>/<dd>/<request_id>_<n>.<png|webp|gif|mp4|webm>   (n = 0, 1, … per output)
    generations/<user_id>/<yyyy>/<mm>/<dd>/thumbs/<request_id>_<n>_<size>.<webp|jpg>

The date is the request's creation date (UTC), so every attempt of a request writes the same
names: a retried job overwrites its own earlier files instead of leaving duplicates.
"""

import logging
import posixpath
import tempfile
from contextlib import contextmanager
from datetime import UTC

from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from generation.pngmeta import insert_text_chunks

logger = logging.getLogger(__name__)

ROOT = "generations"
ROOTS = (ROOT, "inputs")  # generated files, and input images (generation.inputs)
_SPOOL_BYTES = 8 * 1024 * 1024  # images up to this size stay in memory while they are stored


class StorageWriteFailed(Exception):
    """Writing an image or thumbnail to storage failed (disk full, permissions, S3 error)."""


def request_folder(request):
    created = (request.created_at or timezone.now()).astimezone(UTC)
    return f"{ROOT}/{request.user_id}/{created:%Y}/{created:%m}/{created:%d}"


# what output files may be, by their first bytes (ComfyUI's SaveImage writes PNG; other save nodes
# write animated WebP/PNG, GIF, video); the extension and whether Pillow can make thumbnails of it
OUTPUT_KINDS = {"png": True, "webp": True, "gif": True, "mp4": False, "webm": False}


def output_kind(head):
    """``"png"``, ``"webp"``, ``"gif"``, ``"mp4"``, ``"webm"`` from a file's first bytes, or ``None``."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    return None


def image_path(request, index, extension="png"):
    return f"{request_folder(request)}/{request.pk}_{index}.{extension}"


def thumbnail_path(request, index, size, extension):
    return f"{request_folder(request)}/thumbs/{request.pk}_{index}_{size}.{extension}"


def is_safe_name(name):
    """Whether ``name`` is a storage path we could have written: relative, under ``generations/`` or
    ``inputs/``, with no ``..``, backslash or NUL. Serving code checks this before opening anything."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name or name.startswith("/"):
        return False
    parts = name.split("/")
    return parts[0] in ROOTS and all(part not in ("", ".", "..") for part in parts) and (
        posixpath.normpath(name) == name)


@contextmanager
def spooled_png(chunks, texts):
    """The PNG from ``chunks`` with ``texts`` inserted as text chunks, in a temporary file
    (memory up to 8 MB, then disk) positioned at 0. Never holds a large image whole in memory."""
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
        for piece in insert_text_chunks(chunks, texts):
            spool.write(piece)
        spool.seek(0)
        yield spool


@contextmanager
def spooled_output(chunks, texts):
    """An output file from ``chunks`` in a temporary file positioned at 0, and its kind
    (:func:`output_kind`): a PNG gets ``texts`` as text chunks, other kinds are kept as they are.
    Raises :class:`~generation.pngmeta.NotAPng` for bytes of no known kind."""
    chunks = iter(chunks)
    head = b""
    for piece in chunks:
        head += piece
        if len(head) >= 16:
            break
    kind = output_kind(head)
    if kind is None:
        from generation.pngmeta import NotAPng

        raise NotAPng("the output is not an image or video file Genonaut knows (PNG, WebP, GIF, MP4, WebM)")
    everything = _prepend(head, chunks)
    if kind == "png":
        with spooled_png(everything, texts) as spool:
            yield spool, kind
        return
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
        for piece in everything:
            spool.write(piece)
        spool.seek(0)
        yield spool, kind


def _prepend(head, chunks):
    yield head
    yield from chunks


def save_exact(name, content):
    """Save ``content`` (a file object or bytes) at exactly ``name``, replacing what is there.

    Django's storages pick another name when one is taken; we delete first so a retry overwrites.
    Raises :class:`StorageWriteFailed` on any storage error.
    """
    if isinstance(content, bytes):
        content = ContentFile(content)
    elif not isinstance(content, File):
        content = File(content, name=posixpath.basename(name))
    try:
        if default_storage.exists(name):
            default_storage.delete(name)
        saved = default_storage.save(name, content)
    except Exception as exc:  # OSError locally; botocore errors on S3: all mean "not stored"
        raise StorageWriteFailed(f"Could not store {name}: {exc}") from exc
    if saved != name:  # another writer raced us to the name; keep ours out of the way
        delete_files([saved])
        raise StorageWriteFailed(f"Could not store {name}: the name was taken while writing")
    return saved


def open_stored(name):
    """Open a stored file we wrote, for reading (``OSError`` if it cannot be)."""
    if not is_safe_name(name):
        raise OSError(f"not a Genonaut storage path: {name!r}")
    try:
        return default_storage.open(name, "rb")
    except OSError:
        raise
    except Exception as exc:  # S3 and other remote storages raise their own errors
        raise OSError(str(exc)) from exc


def delete_files(names):
    """Delete storage paths, ignoring missing files; return how many could not be deleted."""
    failures = 0
    for name in names:
        if not is_safe_name(name):
            logger.warning("refusing to delete %r: not a generation path", name)
            continue
        try:
            default_storage.delete(name)
        except Exception:
            failures += 1
            logger.exception("could not delete %s", name)
    return failures


def request_file_names(request):
    """Every storage path the row references (images and thumbnails)."""
    names = list(request.outputs or [])
    for entry in request.thumbnails or []:
        if isinstance(entry, dict):
            names.extend(entry.values())
    return [name for name in names if isinstance(name, str)]


def delete_request_files(request):
    """Delete every file the request references (used by delete and by retention)."""
    return delete_files(request_file_names(request))


def attempt_file_names(request):
    """Every path an attempt of ``request`` could have written, referenced or not: what a worker
    killed mid-store, or still storing when the job was failed elsewhere, may have left behind."""
    from django.conf import settings

    names = []
    for index in range(request.batch_size):
        names.extend(image_path(request, index, extension) for extension in OUTPUT_KINDS)
        for size in settings.GENERATION["THUMBNAIL_SIZES"]:
            names.extend(thumbnail_path(request, index, size, extension) for extension in ("webp", "jpg"))
    return names


def delete_unreferenced_files(request):
    """Delete the files an attempt may have written that the row does not reference."""
    keep = set(request_file_names(request))
    return delete_files([name for name in attempt_file_names(request) if name not in keep])
