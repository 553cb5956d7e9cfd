"""Helpers for the ComfyUI tests: the recorded protocol samples."""

import json
from pathlib import Path

import pytest

PROTOCOL = Path(__file__).resolve().parents[2] / "fixtures" / "comfyui-protocol"


def recorded(name):
    """A recorded sample from ``tests/fixtures/comfyui-protocol/``."""
    path = PROTOCOL / name
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


@pytest.fixture
def recorded_object_info_data():
    return recorded("object_info-core.json")
