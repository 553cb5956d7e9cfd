"""``manage.py refresh_models``: output, options and exit codes."""

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from models_registry.models import AvailableModel
from tests.models_registry.safetensors_files import SD15_TENSORS, write_safetensors

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def models_dir(tmp_path, settings):
    root = tmp_path / "models"
    write_safetensors(root / "checkpoints" / "a" / "sd15.safetensors", tensors=SD15_TENSORS)
    write_safetensors(root / "loras" / "l.safetensors")
    (root / "loras" / "corrupt.safetensors").write_bytes(b"\x00" * 3)
    (root / "upscale_models").mkdir()  # every ComfyUI models/ folder has one
    settings.COMFYUI_MODELS_DIR = str(root)
    settings.COMFYUI_CHECKPOINTS_DIRS = settings.COMFYUI_LORAS_DIRS = settings.COMFYUI_UPSCALE_MODELS_DIRS = []
    settings.COMFYUI_BACKENDS = []
    return root


def run(*args):
    out, err = StringIO(), StringIO()
    call_command("refresh_models", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_prints_a_short_summary_and_reports_the_corrupt_file(db, models_dir):
    out, err = run()
    assert out.strip() == "3 seen, 3 added, 0 updated, 0 missing, 1 unreadable, 0 errors"
    assert err.strip().splitlines() == ["unreadable: lora:corrupt.safetensors: too short to be safetensors (3 bytes)"]
    assert AvailableModel.objects.count() == 3


def test_verbose_lists_each_change(db, models_dir):
    out, _ = run("-v", "2")
    assert "added: checkpoint:a/sd15.safetensors" in out.splitlines()


def test_dry_run_saves_nothing(db, models_dir):
    out, _ = run("--dry-run")
    assert out.startswith("dry run, nothing saved: 3 seen, 3 added")
    assert not AvailableModel.objects.exists()


def test_hash_option(db, models_dir):
    out, _ = run("--hash")
    assert out.strip().endswith(", 3 hashed")
    assert AvailableModel.objects.exclude(sha256="").count() == 3


def test_models_dir_option_overrides_the_setting(db, models_dir, settings):
    settings.COMFYUI_MODELS_DIR = ""
    out, _ = run("--source", "folders", "--models-dir", str(models_dir))
    assert out.startswith("3 seen, 3 added")


def test_missing_folder_fails_without_losing_anything(db, models_dir, tmp_path):
    run()
    with pytest.raises(CommandError, match=r"^refresh_models: nothing refreshed: .*does not exist"):
        run("--models-dir", str(tmp_path / "absent"))
    assert AvailableModel.objects.filter(is_present=True).count() == 3


def test_backend_down_fails(db, models_dir):
    with pytest.raises(CommandError, match="did not list"):
        run("--source", "api", "--url", "http://127.0.0.1:9")


def test_bad_source_is_refused_by_the_parser(db, models_dir):
    with pytest.raises(CommandError, match="invalid choice"):
        run("--source", "ftp")


@pytest.mark.parametrize("args, message", [
    (["--source", "api", "--url", "not a url"], "is not an http(s) URL"),
    (["--source", "folders", "--models-dir", "/nonexistent/genonaut-models"], "does not exist"),
])
def test_real_process_exits_non_zero_with_one_line(tmp_path, args, message):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "genonaut.settings", "DEBUG": "1", "COMFYUI_URL": "",
           "COMFYUI_MODELS_DIR": "", "GENONAUT_DATA_DIR": str(tmp_path),
           "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    proc = subprocess.run([sys.executable, "manage.py", "refresh_models", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("CommandError: refresh_models:")
