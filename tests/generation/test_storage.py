import datetime
import io
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.core.files.storage import default_storage

from generation.storage import (
    StorageWriteFailed,
    delete_request_files,
    image_path,
    is_safe_name,
    save_exact,
    spooled_png,
    thumbnail_path,
)

EST = datetime.timezone(datetime.timedelta(hours=-5))
SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui-protocol" / "txt2img-sample.png"


def _request(**overrides):
    fields = {"pk": uuid.UUID("12345678-1234-5678-1234-567812345678"), "user_id": 7,
              "created_at": datetime.datetime(2026, 3, 9, 23, 30, tzinfo=EST),
              "outputs": [], "thumbnails": []}
    fields.update(overrides)
    return SimpleNamespace(**fields)


def test_paths_follow_the_layout_in_utc():
    request = _request()
    assert image_path(request, 0) == "generations/7/2026/03/10/12345678-1234-5678-1234-567812345678_0.png"
    assert thumbnail_path(request, 2, "small", "webp") == (
        "generations/7/2026/03/10/thumbs/12345678-1234-5678-1234-567812345678_2_small.webp")


@pytest.mark.parametrize("name, safe", [
    ("generations/7/2026/03/10/x_0.png", True),
    ("generations/7/../../etc/passwd", False),
    ("/generations/7/x.png", False),
    ("generations/7//x.png", False),
    ("generations\\7\\x.png", False),
    ("other/7/x.png", False),
    ("generations/7/./x.png", False),
    ("generations/7/x\x00.png", False),
    ("", False),
    (None, False),
])
def test_is_safe_name(name, safe):
    assert is_safe_name(name) is safe


def test_save_exact_overwrites_instead_of_renaming(_media_root):
    name = "generations/1/2026/01/01/a_0.png"
    assert save_exact(name, b"first") == name
    assert save_exact(name, b"second") == name
    assert default_storage.open(name).read() == b"second"
    assert sorted((_media_root / "generations/1/2026/01/01").iterdir()) == [_media_root / name]


def test_save_exact_wraps_storage_errors(_media_root):
    (_media_root / "generations").mkdir(parents=True)
    (_media_root / "generations" / "1").write_bytes(b"a file where a folder must go")
    with pytest.raises(StorageWriteFailed, match="Could not store generations/1/"):
        save_exact("generations/1/2026/01/01/a_0.png", b"data")


def test_spooled_png_adds_parameters():
    from PIL import Image

    data = SAMPLE.read_bytes()
    with spooled_png([data[:10], data[10:]], {"parameters": "hello"}) as spool:
        assert Image.open(io.BytesIO(spool.read())).text["parameters"] == "hello"


def test_delete_request_files_ignores_missing_and_unsafe(_media_root):
    save_exact("generations/1/2026/01/01/a_0.png", b"x")
    save_exact("generations/1/2026/01/01/thumbs/a_0_small.webp", b"x")
    outside = _media_root / "keep.txt"
    outside.write_bytes(b"keep")
    request = _request(outputs=["generations/1/2026/01/01/a_0.png", "generations/1/2026/01/01/gone_1.png"],
                       thumbnails=[{"small": "generations/1/2026/01/01/thumbs/a_0_small.webp"}, {"x": "../keep.txt"}])
    assert delete_request_files(request) == 0
    assert not default_storage.exists("generations/1/2026/01/01/a_0.png")
    assert not default_storage.exists("generations/1/2026/01/01/thumbs/a_0_small.webp")
    assert outside.exists()
