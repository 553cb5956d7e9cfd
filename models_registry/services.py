"""Writes to the model registry: refresh from ComfyUI's folders and API, hash on demand, enable/disable.

Invariants kept here:

- A refresh never deletes a row. A model that was not seen is marked ``is_present=False``, and
  only when every source that covers its type answered completely — a folder that could not be
  read or a backend that did not answer never makes registered models look gone.
- Admin-owned fields (``is_active``, ``display_name``, ``description``) are never overwritten.
- ``backends`` holds, per model, the backends whose last listing of its folder held it: a backend
  that did not answer keeps what it said last time, one that answered replaces it, one no longer
  configured (nor asked) is dropped. ``None`` until some backend listing of its folder was read.
- Hashing reads whole files, so it happens only on demand and is cached by path, size and mtime.
"""

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from models_registry.models import COMFYUI_FOLDERS, AvailableModel, ModelType
from models_registry.safetensors import NATIVE_RESOLUTION, SafetensorsError, read_safetensors_info

logger = logging.getLogger(__name__)

MODEL_EXTENSIONS = frozenset({".safetensors", ".ckpt", ".pt", ".pth", ".bin"})
SOURCES = ("folders", "api", "both")
HASH_CHUNK_BYTES = 1024 * 1024


class RefreshFailed(Exception):
    """Nothing could be refreshed (no source configured, or every source failed)."""


class ModelFileMissing(Exception):
    """The model has no local file to read (remote only, or the file is gone)."""


@dataclass
class RefreshResult:
    """What a refresh did (or, with ``dry_run``, would do). Lists hold ``type:name`` labels."""

    dry_run: bool = False
    added: list = field(default_factory=list)
    updated: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unreadable: list = field(default_factory=list)  # "type:name: reason"
    errors: list = field(default_factory=list)  # sources that failed: folders, backends
    hashed: list = field(default_factory=list)
    seen: int = 0
    sources_ok: int = 0

    def summary(self):
        prefix = "dry run, nothing saved: " if self.dry_run else ""
        text = (f"{prefix}{self.seen} seen, {len(self.added)} added, {len(self.updated)} updated, "
                f"{len(self.missing)} missing, {len(self.unreadable)} unreadable, {len(self.errors)} errors")
        return text + (f", {len(self.hashed)} hashed" if self.hashed else "")


@dataclass
class _Found:
    """One model seen by one source during a scan."""

    name: str
    type: str
    path: Path | None = None
    size: int | None = None
    mtime: float | None = None


@dataclass
class _Scan:
    found: dict = field(default_factory=dict)  # (type, name) → _Found
    complete: dict = field(default_factory=dict)  # type → False when a source for it failed
    problems: list = field(default_factory=list)
    unreadable: list = field(default_factory=list)
    sources_ok: int = 0
    asked: list = field(default_factory=list)  # backend URLs asked for their listings
    listings: dict = field(default_factory=dict)  # type → {url: set of names} for the listings that answered

    def add(self, item):
        # the first source wins, like ComfyUI which takes the first folder holding a name
        existing = self.found.get((item.type, item.name))
        if existing is None or (existing.path is None and item.path is not None):
            self.found[(item.type, item.name)] = item

    def incomplete(self, model_type, problem):
        self.complete[model_type] = False
        self.problems.append(problem)


def model_folders(models_dir=None):
    """The folders to scan per type: ``<COMFYUI_MODELS_DIR>/<ComfyUI's folder>`` plus the extra lists."""
    models_dir = settings.COMFYUI_MODELS_DIR if models_dir is None else models_dir
    extra = {ModelType.CHECKPOINT: settings.COMFYUI_CHECKPOINTS_DIRS, ModelType.LORA: settings.COMFYUI_LORAS_DIRS,
             ModelType.UPSCALE_MODEL: settings.COMFYUI_UPSCALE_MODELS_DIRS}
    return {model_type: ([Path(models_dir) / folder] if models_dir else []) + [Path(p) for p in extra[model_type]]
            for model_type, folder in COMFYUI_FOLDERS.items()}


def backend_urls():
    return [backend["url"] for backend in settings.COMFYUI_BACKENDS]


def refresh_models(*, source="both", dry_run=False, hash_files=False, folders=None, backends=None):
    """Scan the configured sources and upsert :class:`AvailableModel`; return a :class:`RefreshResult`.

    ``source`` is ``folders`` (ComfyUI's model folders mounted here), ``api`` (ask each backend's
    ``/models/{folder}``) or ``both`` (whichever is configured). ``folders`` ({type: [paths]}) and
    ``backends`` ([urls]) override the settings. With ``dry_run`` the same work is done inside a
    transaction that is rolled back. Raises :class:`RefreshFailed` when no source could be read;
    a corrupt file or an unreadable folder is reported in the result, never raised.
    """
    if source not in SOURCES:
        raise RefreshFailed(f"unknown source {source!r} (use one of {', '.join(SOURCES)})")
    folders = model_folders() if folders is None else folders
    backends = backend_urls() if backends is None else backends
    use_folders = source in ("folders", "both") and any(folders.values())
    use_api = source in ("api", "both") and bool(backends)
    if source == "folders" and not use_folders:
        raise RefreshFailed("no model folders configured (set COMFYUI_MODELS_DIR or COMFYUI_CHECKPOINTS_DIRS)")
    if source == "api" and not use_api:
        raise RefreshFailed("no ComfyUI backend configured (set COMFYUI_URL)")
    if not (use_folders or use_api):
        raise RefreshFailed("nothing to refresh from: set COMFYUI_MODELS_DIR and/or COMFYUI_URL")

    scan = _Scan(complete={t: True for t in ModelType.values})
    if use_folders:
        _scan_folders(scan, folders)
    if use_api:
        scan.asked = list(backends)
        for url in backends:
            _ask_backend(scan, url)
    if not scan.sources_ok:
        raise RefreshFailed("; ".join(scan.problems) or "no source could be read")

    result = RefreshResult(dry_run=dry_run, errors=list(scan.problems), unreadable=list(scan.unreadable),
                           seen=len(scan.found), sources_ok=scan.sources_ok)
    with transaction.atomic():
        _lock_registry()
        _apply(scan, result)
        if dry_run:
            transaction.set_rollback(True)
    if hash_files and not dry_run:
        for model in AvailableModel.objects.filter(is_present=True).exclude(file_path=""):
            try:
                if not _hash_is_fresh(model):
                    hash_model(model)
                    result.hashed.append(f"{model.type}:{model.name}")
            except (ModelFileMissing, OSError) as exc:
                result.unreadable.append(f"{model.type}:{model.name}: cannot hash: {exc}")
    logger.info("refresh_models (%s): %s", source, result.summary())
    return result


# --- sources ---------------------------------------------------------------------------------------

def _scan_folders(scan, folders):
    for model_type, roots in folders.items():
        for root in roots:
            root = Path(root)
            if not root.is_dir():
                scan.incomplete(model_type, f"{model_type} folder {root} does not exist or is not a folder")
                continue
            if not os.access(root, os.R_OK | os.X_OK):
                scan.incomplete(model_type, f"{model_type} folder {root} is not readable")
                continue
            scan.sources_ok += 1
            for path, name in _walk(root, scan, model_type):
                _found_file(scan, model_type, path, name)


def _walk(root, scan, model_type):
    """Yield ``(path, name)`` for every model file under ``root``; ``name`` uses '/' like ComfyUI.

    Symlinked folders are followed (ComfyUI does) but each real folder is visited once, so a
    symlink loop ends. A subfolder that cannot be listed is reported and makes the scan incomplete.
    """
    visited = set()

    def on_error(exc):
        scan.incomplete(model_type, f"{model_type} folder {exc.filename} is not readable: {exc.strerror or exc}")

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for filename in sorted(filenames):
            if os.path.splitext(filename)[1].lower() in MODEL_EXTENSIONS:
                path = Path(dirpath) / filename
                yield path, path.relative_to(root).as_posix()


def _found_file(scan, model_type, path, name):
    try:
        stat = path.stat()
    except OSError as exc:  # e.g. a dangling symlink
        scan.unreadable.append(f"{model_type}:{name}: cannot stat: {exc.strerror or exc}")
        return
    scan.add(_Found(name=name, type=model_type, path=path.absolute(), size=stat.st_size, mtime=stat.st_mtime))


def _ask_backend(scan, url):
    from generation.comfyui.client import ComfyUIClient
    from generation.comfyui.errors import ComfyUIError

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        for model_type in ModelType.values:
            scan.complete[model_type] = False
        scan.problems.append(f"ComfyUI URL {url!r} is not an http(s) URL")
        return
    client = ComfyUIClient(url, retries=1)  # someone is waiting for the listing: fail fast, report it
    for model_type, folder in COMFYUI_FOLDERS.items():
        try:
            names = client.models(folder)
        except (ComfyUIError, OSError, ValueError) as exc:
            # one line per backend: the next folder would fail the same way, and counts as unknown
            for other in ModelType.values:
                scan.complete[other] = False
            scan.problems.append(f"ComfyUI at {url} did not list {folder}: {exc}")
            return
        scan.sources_ok += 1
        names = {name for name in names if isinstance(name, str) and name}
        scan.listings.setdefault(model_type, {})[url] = names
        for name in names:
            scan.add(_Found(name=name, type=model_type))
    _record_capabilities(url, client)


def _record_capabilities(url, client):
    """What dispatch reads: the backend's node classes and model lists (its ``/object_info``)."""
    from generation.backends import refresh_capabilities, sync_backends
    from generation.comfyui.errors import ComfyUIError

    try:
        sync_backends()
        refresh_capabilities(url, client)
    except (ComfyUIError, OSError, ValueError) as exc:  # dispatch checks the live object_info anyway
        logger.warning("ComfyUI at %s did not answer /object_info; its capabilities stay as they were: %s", url, exc)


# --- applying a scan -------------------------------------------------------------------------------

_REFRESH_LOCK = 0x6D6F64656C73  # an arbitrary constant naming "the registry refresh" advisory lock


def _lock_registry():
    """Serialise refreshes (admin button, command, start-up) so two never insert the same new name.

    PostgreSQL: a transaction-level advisory lock. SQLite serialises writers on its own.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_REFRESH_LOCK])


_TRACKED = ("is_present", "file_path", "size_bytes", "file_mtime", "header_error", "metadata", "base_architecture",
            "trigger_words", "recommended_width", "recommended_height", "backends")


def _tracked(model):
    return [getattr(model, name) for name in _TRACKED]


def _apply(scan, result):
    now = timezone.now()
    existing = {(m.type, m.name): m for m in AvailableModel.objects.select_for_update()}
    unchanged = []  # the common case on a re-scan: only last_seen moves, in one UPDATE below
    for key, item in sorted(scan.found.items()):
        label = f"{item.type}:{item.name}"
        model = existing.get(key) or AvailableModel(name=item.name, type=item.type)
        before = _tracked(model)
        model.is_present = True
        model.last_seen = now
        model.backends = _presence(model, scan)
        if item.path is not None:
            _apply_file(model, item)
            if model.header_error:
                result.unreadable.append(f"{label}: {model.header_error}")
        if key in existing and _tracked(model) == before:
            unchanged.append(model.pk)
            continue
        model.save()
        (result.updated if key in existing else result.added).append(label)
    for start in range(0, len(unchanged), 500):
        AvailableModel.objects.filter(pk__in=unchanged[start:start + 500]).update(last_seen=now)

    for key, model in sorted(existing.items()):
        if key in scan.found:
            continue
        changes = {}
        presence = _presence(model, scan)
        if presence != model.backends:
            changes["backends"] = presence
        # a source for this type that failed means absence proves nothing
        if model.is_present and scan.complete.get(model.type, False):
            changes["is_present"] = False
            result.missing.append(f"{model.type}:{model.name}")
        if changes:
            AvailableModel.objects.filter(pk=model.pk).update(**changes, updated_at=now)


def _presence(model, scan):
    """The model's ``backends`` after this scan (the rules are in the module docstring)."""
    listings = scan.listings.get(model.type)
    if not listings:
        return model.backends  # no backend listing of its folder was read: what we knew stands
    configured = set(backend_urls())
    on = {url for url, names in listings.items() if model.name in names}
    carried = {url for url in model.backends or () if url not in listings and (url in scan.asked or url in configured)}
    if not (on or carried) and model.backends is None and set(scan.asked) - set(listings):
        return None  # the backends that answered lack it; the ones that did not might have it
    return sorted(on | carried)


def _apply_file(model, item):
    """Copy what the file (and, when it is new or changed, its header) says onto ``model``."""
    path = str(item.path)
    file_changed = (model.file_path != path or model.size_bytes != item.size or model.file_mtime != item.mtime)
    if model.file_path and model.file_path != path:
        model.sha256, model.hashed_size, model.hashed_mtime = "", None, None  # the cache is per path
    model.file_path, model.size_bytes, model.file_mtime = path, item.size, item.mtime
    if item.path.suffix.lower() != ".safetensors":
        model.header_error = ""
        return
    header_known = bool(model.metadata or model.header_error or model.base_architecture)
    if header_known and not file_changed:
        return
    try:
        info = read_safetensors_info(item.path)
    except SafetensorsError as exc:
        model.header_error = exc.reason
        return
    model.header_error = ""
    model.metadata = info.stored_metadata()
    # what the header does not say keeps what staff may have entered by hand
    model.base_architecture = info.base_architecture or model.base_architecture
    model.trigger_words = info.trigger_words or model.trigger_words
    size = info.resolution or NATIVE_RESOLUTION.get(model.base_architecture)
    if size and (info.resolution or not model.recommended_width):
        model.recommended_width, model.recommended_height = size


# --- hashing, health, enable/disable ------------------------------------------------------------

def _hash_is_fresh(model):
    stat = Path(model.file_path).stat()
    return bool(model.sha256) and model.hashed_size == stat.st_size and model.hashed_mtime == stat.st_mtime


def hash_model(model, *, force=False):
    """Return the file's SHA-256, computing it only when the cache (path, size, mtime) is stale.

    Raises :class:`ModelFileMissing` when there is no local file to read.
    """
    if not model.file_path:
        raise ModelFileMissing(f"{model.name} has no local file (seen only through the ComfyUI API)")
    path = Path(model.file_path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise ModelFileMissing(f"{path}: {exc.strerror or exc}") from exc
    if not force and model.sha256 and model.hashed_size == stat.st_size and model.hashed_mtime == stat.st_mtime:
        return model.sha256
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    model.sha256, model.hashed_size, model.hashed_mtime = digest.hexdigest(), stat.st_size, stat.st_mtime
    AvailableModel.objects.filter(pk=model.pk).update(sha256=model.sha256, hashed_size=stat.st_size,
                                                       hashed_mtime=stat.st_mtime)
    return model.sha256


@dataclass(frozen=True)
class HealthReport:
    model: AvailableModel
    ok: bool
    message: str


def check_models_health(models, *, backends=None):
    """Check each model: its file is there and its header reads, or (remote only) a backend lists it.

    Returns one :class:`HealthReport` per model; never raises for a bad model.
    """
    backends = backend_urls() if backends is None else backends
    listings = {}  # folder → set of names, or an error string
    reports = []
    for model in models:
        if model.file_path:
            reports.append(_check_file(model))
        else:
            reports.append(_check_remote(model, backends, listings))
    return reports


def _check_file(model):
    path = Path(model.file_path)
    if not path.is_file():
        return HealthReport(model, False, f"file {path} is missing")
    if path.suffix.lower() != ".safetensors":
        return HealthReport(model, True, f"file present ({path.stat().st_size} bytes; header not checked)")
    try:
        info = read_safetensors_info(path)
    except SafetensorsError as exc:
        return HealthReport(model, False, f"header unreadable: {exc.reason}")
    return HealthReport(model, True, f"file present, header readable ({info.tensor_count} tensors)")


def _check_remote(model, backends, listings):
    from generation.comfyui.client import ComfyUIClient
    from generation.comfyui.errors import ComfyUIError

    folder = COMFYUI_FOLDERS[model.type]
    if not backends:
        return HealthReport(model, False, "no local file and no ComfyUI backend configured")
    problems = []
    for url in backends:
        key = (url, folder)
        if key not in listings:
            try:
                listings[key] = set(ComfyUIClient(url, retries=1).models(folder))
            except (ComfyUIError, OSError, ValueError) as exc:
                listings[key] = f"{url} did not answer: {exc}"
        if isinstance(listings[key], set):
            if model.name in listings[key]:
                return HealthReport(model, True, f"listed by ComfyUI at {url}")
            problems.append(f"not listed by {url}")
        else:
            problems.append(listings[key])
    return HealthReport(model, False, "; ".join(problems))


def set_models_active(models, *, active):
    """Offer (or stop offering) the given models to users; return how many changed."""
    ids = [m.pk for m in models]
    return AvailableModel.objects.filter(pk__in=ids).exclude(is_active=active).update(
        is_active=active, updated_at=timezone.now())
