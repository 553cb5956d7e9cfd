"""Refreshing the registry from a real folder tree and from a real HTTP server; hashing; health."""

import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from generation.models import GenerationRequest
from models_registry import services
from models_registry.models import AvailableModel, ModelType
from models_registry.services import RefreshFailed, check_models_health, hash_model, refresh_models
from tests.concurrency import run_concurrently
from tests.models_registry.safetensors_files import SD15_TENSORS, SDXL_LORA_TENSORS, SDXL_TENSORS, write_safetensors

PROTOCOL = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui-protocol"

CKPT, LORA, UPSCALE = ModelType.CHECKPOINT, ModelType.LORA, ModelType.UPSCALE_MODEL


@pytest.fixture
def models_dir(tmp_path, settings):
    """A ComfyUI models/ folder: subfolders, several extensions, a corrupt file, a non-model file."""
    root = tmp_path / "models"
    write_safetensors(root / "checkpoints" / "sd15.safetensors", tensors=SD15_TENSORS,
                      metadata={"ss_resolution": "(512, 768)"})
    write_safetensors(root / "checkpoints" / "xl" / "base.safetensors", tensors=SDXL_TENSORS)
    (root / "checkpoints" / "old.CKPT").write_bytes(b"pickle-ish bytes")
    (root / "checkpoints" / "put_checkpoints_here").write_text("")
    (root / "checkpoints" / "notes.txt").write_text("not a model")
    write_safetensors(root / "loras" / "style" / "tiny.safetensors", tensors=SDXL_LORA_TENSORS,
                      metadata={"ss_tag_frequency": json.dumps({"10_tiny": {"tinystyle": 9, "glow": 2}})})
    (root / "loras" / "broken.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{nope")
    (root / "upscale_models").mkdir()  # every ComfyUI models/ folder has one
    settings.COMFYUI_MODELS_DIR = str(root)
    settings.COMFYUI_CHECKPOINTS_DIRS = []
    settings.COMFYUI_LORAS_DIRS = []
    settings.COMFYUI_UPSCALE_MODELS_DIRS = []
    settings.COMFYUI_BACKENDS = []
    return root


def names(model_type):
    return sorted(AvailableModel.objects.filter(type=model_type).values_list("name", flat=True))


def test_first_refresh_registers_every_model_file(db, models_dir):
    result = refresh_models()
    assert names(CKPT) == ["old.CKPT", "sd15.safetensors", "xl/base.safetensors"]
    assert names(LORA) == ["broken.safetensors", "style/tiny.safetensors"]
    assert sorted(result.added) == ["checkpoint:old.CKPT", "checkpoint:sd15.safetensors",
                                    "checkpoint:xl/base.safetensors", "lora:broken.safetensors",
                                    "lora:style/tiny.safetensors"]
    assert result.updated == [] and result.missing == [] and result.errors == []
    assert len(result.unreadable) == 1 and result.unreadable[0].startswith("lora:broken.safetensors: ")
    assert result.summary().startswith("5 seen, 5 added, 0 updated, 0 missing, 1 unreadable, 0 errors")

    sd15 = AvailableModel.objects.get(name="sd15.safetensors")
    assert sd15.base_architecture == "SD1.5"
    assert (sd15.recommended_width, sd15.recommended_height) == (512, 768)
    assert sd15.file_path == str(models_dir / "checkpoints" / "sd15.safetensors")
    assert sd15.size_bytes == (models_dir / "checkpoints" / "sd15.safetensors").stat().st_size
    assert sd15.is_present and sd15.is_active and sd15.last_seen is not None
    assert sd15.sha256 == ""  # hashing is on demand only
    xl = AvailableModel.objects.get(name="xl/base.safetensors")
    assert xl.base_architecture == "SDXL" and (xl.recommended_width, xl.recommended_height) == (1024, 1024)
    tiny = AvailableModel.objects.get(name="style/tiny.safetensors")
    assert tiny.trigger_words == ["tinystyle", "glow"] and tiny.base_architecture == "SDXL"
    assert "ss_tag_frequency" in tiny.metadata
    broken = AvailableModel.objects.get(name="broken.safetensors")
    assert "JSON" in broken.header_error and broken.is_present


def test_second_refresh_changes_nothing_but_still_reports_the_corrupt_file(db, models_dir):
    refresh_models()
    first_seen = dict(AvailableModel.objects.values_list("name", "last_seen"))
    result = refresh_models()
    assert result.added == [] and result.updated == [] and result.missing == []
    assert all(seen > first_seen[name] for name, seen in AvailableModel.objects.values_list("name", "last_seen"))
    assert [u.split(":")[1] for u in result.unreadable] == ["broken.safetensors"]


def test_removed_file_is_marked_missing_then_present_again(db, models_dir):
    refresh_models()
    moved = models_dir / "checkpoints" / "sd15.safetensors"
    kept = moved.read_bytes()
    moved.unlink()
    result = refresh_models()
    assert result.missing == ["checkpoint:sd15.safetensors"]
    model = AvailableModel.objects.get(name="sd15.safetensors")
    assert not model.is_present and model.base_architecture == "SD1.5"  # kept, just not offered
    assert "sd15.safetensors" not in names_offered(CKPT)
    moved.write_bytes(kept)
    result = refresh_models()
    assert result.updated == ["checkpoint:sd15.safetensors"] and result.missing == []
    assert AvailableModel.objects.get(name="sd15.safetensors").is_present


def names_offered(model_type):
    from models_registry.models import offered_models

    return set(offered_models(model_type).values_list("name", flat=True))


def test_referenced_model_that_vanished_is_kept_with_its_requests(db, models_dir, user):
    refresh_models()
    model = AvailableModel.objects.get(name="sd15.safetensors")
    request = GenerationRequest.objects.create(user=user, prompt="a cat", checkpoint_model=model.name,
                                               checkpoint=model)
    (models_dir / "checkpoints" / "sd15.safetensors").unlink()
    result = refresh_models()
    assert result.missing == ["checkpoint:sd15.safetensors"]
    request.refresh_from_db()
    assert request.checkpoint_id == model.pk
    assert AvailableModel.objects.filter(pk=model.pk, is_present=False).exists()


def test_changed_file_is_reread_and_its_hash_cache_dropped(db, models_dir):
    refresh_models()
    model = AvailableModel.objects.get(name="xl/base.safetensors")
    hash_model(model)
    path = models_dir / "checkpoints" / "xl" / "base.safetensors"
    write_safetensors(path, tensors=SDXL_TENSORS, metadata={"modelspec.resolution": "896x1152"})
    os.utime(path, (1_000_000, 1_000_000))
    result = refresh_models()
    assert result.updated == ["checkpoint:xl/base.safetensors"]
    model.refresh_from_db()
    assert (model.recommended_width, model.recommended_height) == (896, 1152)
    assert model.sha256  # still cached, but stale: the next hash_model recomputes
    assert hash_model(model) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_admin_fields_survive_a_refresh(db, models_dir):
    refresh_models()
    AvailableModel.objects.filter(name="old.CKPT").update(is_active=False, description="legacy", display_name="Old",
                                                          base_architecture="SD1.5")
    refresh_models()
    old = AvailableModel.objects.get(name="old.CKPT")
    assert (old.is_active, old.description, old.display_name, old.base_architecture) == (False, "legacy", "Old",
                                                                                          "SD1.5")


def test_dry_run_reports_but_saves_nothing(db, models_dir):
    result = refresh_models(dry_run=True)
    assert len(result.added) == 5 and result.dry_run
    assert result.summary().startswith("dry run, nothing saved: ")
    assert not AvailableModel.objects.exists()
    refresh_models()
    (models_dir / "loras" / "style" / "tiny.safetensors").unlink()
    result = refresh_models(dry_run=True)
    assert result.missing == ["lora:style/tiny.safetensors"]
    assert AvailableModel.objects.get(name="style/tiny.safetensors").is_present


def test_extra_folders_are_scanned_and_the_first_folder_wins(db, models_dir, tmp_path, settings):
    extra = tmp_path / "extra_ckpts"
    write_safetensors(extra / "sd15.safetensors", tensors=SDXL_TENSORS)  # same name as in models/checkpoints
    write_safetensors(extra / "more" / "flux.safetensors", tensors={"double_blocks.0.img_attn.qkv.weight": 4})
    settings.COMFYUI_CHECKPOINTS_DIRS = [str(extra)]
    refresh_models(source="folders")
    assert "more/flux.safetensors" in names(CKPT)
    assert AvailableModel.objects.get(name="more/flux.safetensors").base_architecture == "Flux"
    assert AvailableModel.objects.get(name="sd15.safetensors").base_architecture == "SD1.5"


def test_missing_extra_folder_is_reported_and_blocks_marking_missing(db, models_dir, tmp_path, settings):
    refresh_models()
    settings.COMFYUI_LORAS_DIRS = [str(tmp_path / "nowhere")]
    (models_dir / "loras" / "style" / "tiny.safetensors").unlink()
    result = refresh_models()
    assert any("nowhere" in e and "does not exist" in e for e in result.errors)
    assert result.missing == []  # a lora source failed: absence proves nothing
    assert AvailableModel.objects.get(name="style/tiny.safetensors").is_present


def test_unreadable_subfolder_is_reported_not_a_crash(db, models_dir, monkeypatch):
    refresh_models()
    locked = models_dir / "checkpoints" / "xl"
    real_scandir = os.scandir

    def scandir(path="."):
        # chmod 000 does not stop root (the CI user), so refuse the listing the way the kernel would
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    (models_dir / "checkpoints" / "sd15.safetensors").unlink()
    result = refresh_models()
    assert any(str(locked) in e and "not readable" in e for e in result.errors)
    assert AvailableModel.objects.get(name="xl/base.safetensors").is_present
    # checkpoints were not fully listed, so the deleted sd15 is not marked missing
    assert result.missing == []


def test_symlink_loop_ends(db, models_dir):
    (models_dir / "checkpoints" / "xl" / "loop").symlink_to(models_dir / "checkpoints")
    result = refresh_models()
    assert result.seen == 5
    (models_dir / "checkpoints" / "dangling.safetensors").symlink_to(models_dir / "nothing-here")
    result = refresh_models()
    assert any(u.startswith("checkpoint:dangling.safetensors: cannot stat") for u in result.unreadable)


def test_nothing_configured_or_every_source_failing_raises(db, settings, tmp_path):
    settings.COMFYUI_MODELS_DIR = ""
    settings.COMFYUI_CHECKPOINTS_DIRS = settings.COMFYUI_LORAS_DIRS = settings.COMFYUI_UPSCALE_MODELS_DIRS = []
    settings.COMFYUI_BACKENDS = []
    with pytest.raises(RefreshFailed, match="nothing to refresh"):
        refresh_models()
    with pytest.raises(RefreshFailed, match="no model folders"):
        refresh_models(source="folders")
    with pytest.raises(RefreshFailed, match="no ComfyUI backend"):
        refresh_models(source="api")
    settings.COMFYUI_MODELS_DIR = str(tmp_path / "absent")
    with pytest.raises(RefreshFailed, match="does not exist"):
        refresh_models()
    with pytest.raises(RefreshFailed, match="unknown source"):
        refresh_models(source="everywhere")


# --- the API source, against a real HTTP server ------------------------------------------------------

class FakeComfyModels(BaseHTTPRequestHandler):
    """Serves ``GET /models/{folder}`` in ComfyUI's recorded shape; ``listing`` is set per test."""

    listing = {}
    status = 200

    def do_GET(self):
        folder = self.path.removeprefix("/models/")
        if self.status != 200:
            body, status = b"oops", self.status
        elif folder in self.listing:
            body, status = json.dumps(self.listing[folder]).encode(), 200
        else:
            body, status = b"", 404
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def comfy_models_server_factory():
    """``factory(listing)``: a ComfyUI-shaped ``/models/{folder}`` server on a free loopback port."""
    started = []

    def factory(listing):
        handler = type("Handler", (FakeComfyModels,), {"listing": listing})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        server.url = f"http://127.0.0.1:{server.server_address[1]}"
        server.handler = handler
        started.append((server, thread))
        return server

    yield factory
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def comfy_models_server(comfy_models_server_factory):
    recorded = json.loads((PROTOCOL / "misc-get-endpoints-idle.json").read_text())
    return comfy_models_server_factory({"checkpoints": list(recorded["/models/checkpoints"]["body"]),
                                        "loras": list(recorded["/models/loras"]["body"])})


def test_api_source_registers_what_the_backend_lists(db, settings, comfy_models_server):
    settings.COMFYUI_MODELS_DIR = ""
    settings.COMFYUI_BACKENDS = [{"url": comfy_models_server.url, "capacity": 1}]
    result = refresh_models(source="api")
    assert names(CKPT) == ["fake.safetensors", "tiny-sd15-random.safetensors"]
    assert names(LORA) == ["tiny-lora.safetensors"]
    assert len(result.added) == 3 and result.errors == []
    assert AvailableModel.objects.get(name="fake.safetensors").file_path == ""

    comfy_models_server.handler.listing = {"checkpoints": ["tiny-sd15-random.safetensors"], "loras": []}
    result = refresh_models(source="api")
    assert sorted(result.missing) == ["checkpoint:fake.safetensors", "lora:tiny-lora.safetensors"]


def test_backend_down_keeps_everything_registered(db, settings, comfy_models_server):
    settings.COMFYUI_MODELS_DIR = ""
    refresh_models(source="api", backends=[comfy_models_server.url])
    comfy_models_server.handler.status = 500
    with pytest.raises(RefreshFailed, match="did not list"):
        refresh_models(source="api", backends=[comfy_models_server.url])
    assert AvailableModel.objects.filter(is_present=True).count() == 3


def test_one_backend_down_other_up_reports_and_marks_nothing_missing(db, settings, comfy_models_server,
                                                                     models_dir):
    refresh_models(backends=[comfy_models_server.url])
    # folder models + API models, unioned
    assert "tiny-lora.safetensors" in names(LORA) and "style/tiny.safetensors" in names(LORA)
    down = "http://127.0.0.1:9"
    result = refresh_models(backends=[comfy_models_server.url, down])
    assert any(down in e for e in result.errors)
    comfy_models_server.handler.listing = {"checkpoints": [], "loras": []}
    result = refresh_models(backends=[down])
    assert result.missing == []
    assert AvailableModel.objects.filter(is_present=False).count() == 0


def test_bad_url_is_refused(db, settings):
    settings.COMFYUI_MODELS_DIR = ""
    with pytest.raises(RefreshFailed, match="not an http"):
        refresh_models(source="api", backends=["ftp://example"])


# --- hashing and health --------------------------------------------------------------------------------

def test_hash_is_computed_once_and_cached_by_size_and_mtime(db, models_dir, monkeypatch):
    refresh_models()
    model = AvailableModel.objects.get(name="sd15.safetensors")
    path = Path(model.file_path)
    assert hash_model(model) == hashlib.sha256(path.read_bytes()).hexdigest()
    model.refresh_from_db()
    assert model.hashed_size == path.stat().st_size

    opened = []
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: opened.append(self) or real_open(self, *a, **k))
    assert hash_model(model) == model.sha256
    assert opened == []  # cached: the file was not read again
    assert hash_model(model, force=True) == model.sha256 and opened == [path]


def test_refresh_with_hash_hashes_stale_local_files_only(db, models_dir):
    result = refresh_models(hash_files=True)
    assert len(result.hashed) == 5
    assert refresh_models(hash_files=True).hashed == []
    assert refresh_models(hash_files=True, dry_run=True).hashed == []


def test_hash_of_remote_only_model_is_refused(db):
    model = AvailableModel.objects.create(name="remote.safetensors", type=CKPT)
    with pytest.raises(services.ModelFileMissing):
        hash_model(model)


def test_health_check_reports_each_model(db, models_dir, comfy_models_server):
    refresh_models()
    remote = AvailableModel.objects.create(name="tiny-lora.safetensors", type=LORA)
    unknown = AvailableModel.objects.create(name="gone.safetensors", type=LORA)
    (models_dir / "checkpoints" / "sd15.safetensors").unlink()
    models = list(AvailableModel.objects.order_by("type", "name"))
    reports = {r.model.name: r for r in check_models_health(models, backends=[comfy_models_server.url])}
    assert reports["xl/base.safetensors"].ok and "header readable" in reports["xl/base.safetensors"].message
    assert reports["old.CKPT"].ok
    assert not reports["sd15.safetensors"].ok and "missing" in reports["sd15.safetensors"].message
    assert not reports["broken.safetensors"].ok and "header unreadable" in reports["broken.safetensors"].message
    assert reports[remote.name].ok and comfy_models_server.url in reports[remote.name].message
    assert not reports[unknown.name].ok and "not listed" in reports[unknown.name].message


@pytest.mark.integration
def test_api_source_against_the_simulator(db, settings, simulator):
    settings.COMFYUI_MODELS_DIR = ""
    settings.COMFYUI_BACKENDS = [{"url": simulator.url, "capacity": 1}]
    result = refresh_models(source="api")
    assert result.errors == [] and result.sources_ok == 3  # checkpoints, loras, upscale_models
    assert "styles/watercolor.safetensors" in names(LORA)
    assert backends_of(LORA, "styles/watercolor.safetensors") == [simulator.url]
    assert "tiny-sd15-random.safetensors" in names(CKPT)
    simulator.configure(checkpoints=["tiny-sd15-random.safetensors"], loras=[])
    result = refresh_models(source="api")
    assert "lora:styles/watercolor.safetensors" in result.missing
    assert names_offered(CKPT) == {"tiny-sd15-random.safetensors"} and names_offered(LORA) == set()


@pytest.mark.django_db(transaction=True)
def test_concurrent_refreshes_register_each_model_once(models_dir):
    from django.db import connections

    barrier = threading.Barrier(2)
    results, errors = [], []

    def refresh():
        try:
            barrier.wait(timeout=10)
            results.append(refresh_models())
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connections.close_all()

    run_concurrently([refresh] * 2)
    assert errors == []
    assert sorted(len(r.added) for r in results) == [0, 5]
    assert AvailableModel.objects.count() == 5


# --- upscale models ----------------------------------------------------------------------------------

def test_upscale_models_are_scanned_from_their_folder_and_extra_folders(db, models_dir, tmp_path, settings):
    (models_dir / "upscale_models" / "4x-UltraSharp.pth").write_bytes(b"pickled esrgan weights")
    write_safetensors(models_dir / "upscale_models" / "esrgan" / "RealESRGAN_x4plus.safetensors",
                      tensors={"conv_first.weight": 4})
    extra = tmp_path / "more-upscalers"
    (extra / "2x-Lanczos-ish.pt").parent.mkdir()
    (extra / "2x-Lanczos-ish.pt").write_bytes(b"weights")
    settings.COMFYUI_UPSCALE_MODELS_DIRS = [str(extra)]
    result = refresh_models(source="folders")
    assert names(UPSCALE) == ["2x-Lanczos-ish.pt", "4x-UltraSharp.pth", "esrgan/RealESRGAN_x4plus.safetensors"]
    assert "upscale_model:4x-UltraSharp.pth" in result.added
    model = AvailableModel.objects.get(type=UPSCALE, name="esrgan/RealESRGAN_x4plus.safetensors")
    assert model.header_error == "" and model.is_present and model.backends is None  # no backend asked
    (models_dir / "upscale_models" / "4x-UltraSharp.pth").unlink()
    assert refresh_models(source="folders").missing == ["upscale_model:4x-UltraSharp.pth"]


def test_upscale_models_are_discovered_from_a_backend(db, settings, comfy_models_server_factory):
    settings.COMFYUI_MODELS_DIR = ""
    server = comfy_models_server_factory({"checkpoints": ["base.safetensors"], "loras": [],
                                          "upscale_models": ["4x-UltraSharp.pth"]})
    settings.COMFYUI_BACKENDS = [{"url": server.url, "capacity": 1}]
    result = refresh_models(source="api")
    assert result.sources_ok == 3 and result.errors == []
    assert names(UPSCALE) == ["4x-UltraSharp.pth"]
    assert AvailableModel.objects.get(type=UPSCALE).backends == [server.url]


def test_a_backend_without_the_upscale_folder_lists_none(db, settings, comfy_models_server_factory):
    """ComfyUI answers 404 for a folder it does not have: an empty listing, not a failure."""
    settings.COMFYUI_MODELS_DIR = ""
    server = comfy_models_server_factory({"checkpoints": ["base.safetensors"], "loras": []})
    result = refresh_models(source="api", backends=[server.url])
    assert result.errors == [] and names(UPSCALE) == []


# --- which backend has which model ---------------------------------------------------------------------

def backends_of(model_type, name):
    return AvailableModel.objects.get(type=model_type, name=name).backends


def test_each_model_records_the_backends_that_list_it(db, settings, comfy_models_server_factory):
    settings.COMFYUI_MODELS_DIR = ""
    gpu1 = comfy_models_server_factory({"checkpoints": ["base.safetensors", "xl.safetensors"], "loras": ["ink"]})
    gpu2 = comfy_models_server_factory({"checkpoints": ["base.safetensors"], "loras": []})
    settings.COMFYUI_BACKENDS = [{"url": gpu1.url, "capacity": 1}, {"url": gpu2.url, "capacity": 1}]
    refresh_models(source="api")
    assert backends_of(CKPT, "base.safetensors") == sorted([gpu1.url, gpu2.url])
    assert backends_of(CKPT, "xl.safetensors") == [gpu1.url]
    assert backends_of(LORA, "ink") == [gpu1.url]

    # xl moves to gpu2: presence follows each backend's latest listing
    gpu1.handler.listing = {"checkpoints": ["base.safetensors"], "loras": ["ink"]}
    gpu2.handler.listing = {"checkpoints": ["base.safetensors", "xl.safetensors"], "loras": []}
    result = refresh_models(source="api")
    assert backends_of(CKPT, "xl.safetensors") == [gpu2.url]
    assert result.updated == ["checkpoint:xl.safetensors"]

    # gpu2 stops answering: what it said last time stands, gpu1's fresh listing still counts
    gpu2.handler.status = 500
    gpu1.handler.listing = {"checkpoints": [], "loras": ["ink"]}
    result = refresh_models(source="api")
    assert any(gpu2.url in problem for problem in result.errors)
    assert backends_of(CKPT, "xl.safetensors") == [gpu2.url]
    assert backends_of(CKPT, "base.safetensors") == [gpu2.url]
    assert AvailableModel.objects.get(name="base.safetensors").is_present  # a source failed: not marked missing


def test_a_model_no_backend_lists_any_more_is_on_none_then_gone(db, settings, comfy_models_server_factory):
    settings.COMFYUI_MODELS_DIR = ""
    gpu1 = comfy_models_server_factory({"checkpoints": ["base.safetensors", "old.safetensors"], "loras": []})
    refresh_models(source="api", backends=[gpu1.url])
    gpu1.handler.listing = {"checkpoints": ["base.safetensors"], "loras": []}
    result = refresh_models(source="api", backends=[gpu1.url])
    assert result.missing == ["checkpoint:old.safetensors"]
    old = AvailableModel.objects.get(name="old.safetensors")
    assert old.backends == [] and not old.is_present


def test_a_backend_removed_from_the_configuration_is_forgotten(db, settings, comfy_models_server_factory):
    settings.COMFYUI_MODELS_DIR = ""
    gpu1 = comfy_models_server_factory({"checkpoints": ["base.safetensors"], "loras": []})
    gpu2 = comfy_models_server_factory({"checkpoints": ["base.safetensors"], "loras": []})
    settings.COMFYUI_BACKENDS = [{"url": gpu1.url, "capacity": 1}, {"url": gpu2.url, "capacity": 1}]
    refresh_models(source="api")
    # asking one backend by hand (refresh_models --url) keeps what the other configured one said
    refresh_models(source="api", backends=[gpu1.url])
    assert backends_of(CKPT, "base.safetensors") == sorted([gpu1.url, gpu2.url])
    settings.COMFYUI_BACKENDS = [{"url": gpu1.url, "capacity": 1}]
    refresh_models(source="api")
    assert backends_of(CKPT, "base.safetensors") == [gpu1.url]


def test_folder_models_are_not_known_per_backend_until_a_listing_is_read(db, models_dir, comfy_models_server):
    refresh_models(source="folders")
    assert backends_of(CKPT, "sd15.safetensors") is None
    # the backend answers and does not list it: known to be on none (it would fail there)
    refresh_models(backends=[comfy_models_server.url])
    assert backends_of(CKPT, "sd15.safetensors") == []
    assert backends_of(CKPT, "tiny-sd15-random.safetensors") == [comfy_models_server.url]
    # a folders-only refresh reads no listing: per-backend presence is kept as it was
    refresh_models(source="folders")
    assert backends_of(CKPT, "tiny-sd15-random.safetensors") == [comfy_models_server.url]


def test_not_known_stays_not_known_while_a_backend_does_not_answer(db, models_dir, comfy_models_server):
    refresh_models(source="folders")
    result = refresh_models(backends=[comfy_models_server.url, "http://127.0.0.1:9"])
    assert result.errors
    assert backends_of(CKPT, "sd15.safetensors") is None  # the silent backend might have it
