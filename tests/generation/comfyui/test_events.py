"""Typed events from websocket frames: the recorded binary preview frames of both layouts."""

import base64
import io
import json
import struct

import pytest
from PIL import Image

from generation.comfyui import events as ev
from tests.generation.comfyui.conftest import recorded


def binary_frames(name):
    return [frame["_binary_frame"] for frame in recorded(name) if "_binary_frame" in frame]


def test_legacy_preview_frames_parse_without_prompt_or_node():
    frames = binary_frames("ws-previews-legacy.jsonl")
    assert len(frames) == 4
    for frame in frames:
        preview = ev.parse_binary_frame(base64.b64decode(frame["base64"]))
        assert isinstance(preview, ev.Preview)
        assert (preview.prompt_id, preview.node, preview.image_type) == (None, None, "image/jpeg")
        assert preview.data.hex().startswith(frame["image_magic_hex"])
        assert Image.open(io.BytesIO(preview.data)).size == (512, 512)


def test_preview_frames_with_metadata_name_their_prompt_and_node():
    frames = binary_frames("ws-previews-with-metadata.jsonl")
    assert len(frames) == 4
    for frame in frames:
        raw = base64.b64decode(frame["base64"])
        preview = ev.parse_binary_frame(raw)
        assert preview.prompt_id == frame["metadata"]["prompt_id"]
        assert (preview.node, preview.image_type) == ("3", "image/jpeg")
        assert len(preview.data) == frame["length"] - 8 - struct.unpack(">I", raw[4:8])[0]
        assert Image.open(io.BytesIO(preview.data)).format == "JPEG"


def test_a_preview_is_a_frozen_event():
    preview = ev.Preview("p", "3", "image/png", b"x")
    assert (preview.prompt_id, preview.node, preview.image_type, preview.data) == ("p", "3", "image/png", b"x")
    with pytest.raises(AttributeError):
        preview.data = b"y"


def metadata_frame(metadata, image=b"\xff\xd8image"):
    body = json.dumps(metadata).encode()
    return struct.pack(">II", 4, len(body)) + body + image


@pytest.mark.parametrize("frame", [
    b"", b"\x00\x00\x00\x01", struct.pack(">II", 3, 0) + b"text",  # too short; TEXT (3) is not a preview
    struct.pack(">II", 2, 1) + b"unencoded", struct.pack(">II", 1, 7) + b"unknown image type",
    struct.pack(">II", 4, 999) + b"{}", struct.pack(">II", 4, 5) + b"nojsn",
    metadata_frame(["not", "an", "object"]), metadata_frame({"prompt_id": "p", "image_type": "image/gif"}),
])
def test_other_or_malformed_binary_frames_are_not_previews(frame):
    assert ev.parse_binary_frame(frame) is None


def test_png_previews_are_recognised_in_both_layouts():
    assert ev.parse_binary_frame(struct.pack(">II", 1, 2) + b"\x89PNG").image_type == "image/png"
    preview = ev.parse_binary_frame(metadata_frame({"prompt_id": "p", "node_id": 14, "image_type": "image/png"}))
    assert (preview.prompt_id, preview.node, preview.image_type) == ("p", "14", "image/png")
