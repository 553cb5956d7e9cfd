"""The safetensors header reader on real files written by the test."""

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models_registry.safetensors import (
    FLUX,
    MAX_STORED_VALUE_CHARS,
    SD2,
    SD3,
    SD15,
    SDXL,
    SafetensorsError,
    read_header,
    read_safetensors_info,
)
from tests.models_registry.safetensors_files import SD15_TENSORS, SDXL_LORA_TENSORS, SDXL_TENSORS, write_safetensors


def test_reads_metadata_and_tensors_without_the_weights(tmp_path):
    path = write_safetensors(tmp_path / "m.safetensors", tensors={"a": 4, "b": 12}, metadata={"format": "pt"})
    metadata, tensors = read_header(path)
    assert metadata == {"format": "pt"}
    assert set(tensors) == {"a", "b"}
    assert tensors["b"]["data_offsets"] == [4, 16]


def test_reads_only_the_header_bytes(tmp_path, monkeypatch):
    """A reader that asked for the whole file would need far more than 8 + header bytes."""
    path = write_safetensors(tmp_path / "big.safetensors", tensors={"w": 200_000})
    reads = []
    real_open = type(path).open

    def spying_open(self, *args, **kwargs):
        handle = real_open(self, *args, **kwargs)
        real_read = handle.read

        class Spy:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                handle.close()

            def read(self, n=-1):
                reads.append(n)
                return real_read(n)

            def seek(self, *args):
                return handle.seek(*args)

        return Spy()

    monkeypatch.setattr(type(path), "open", spying_open)
    info = read_safetensors_info(path)
    assert info.tensor_count == 1
    assert all(n != -1 for n in reads)
    assert sum(reads) == 8 + info.header_bytes < 1000


@pytest.mark.parametrize("metadata, tensors, expected", [
    ({"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}, {}, SDXL),
    ({"modelspec.architecture": "stable-diffusion-v1/lora"}, {}, SD15),
    ({"modelspec.architecture": "flux-1-dev"}, {}, FLUX),
    ({"modelspec.architecture": "stable-diffusion-v3-medium"}, {}, SD3),
    ({"ss_base_model_version": "sdxl_base_v1-0"}, {}, SDXL),
    ({"ss_base_model_version": "sd_v1"}, {}, SD15),
    ({"ss_base_model_version": "sd_v2"}, {}, SD2),
    ({"ss_v2": "True"}, {}, SD2),
    ({"ss_sd_model_name": "v1-5-pruned-emaonly.safetensors"}, {}, SD15),
    ({"ss_sd_model_name": "sd_xl_base_1.0.safetensors"}, {}, SDXL),
    ({}, SD15_TENSORS, SD15),
    ({}, SDXL_TENSORS, SDXL),
    ({}, SDXL_LORA_TENSORS, SDXL),
    ({}, {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": 4}, SD15),
    ({}, {"double_blocks.0.img_attn.qkv.weight": 4}, FLUX),
    ({}, {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": 4}, SD3),
    ({}, {"cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": 4}, SD2),
    ({}, {"some.unknown.weight": 4}, ""),
])
def test_base_architecture(tmp_path, metadata, tensors, expected):
    path = write_safetensors(tmp_path / "m.safetensors", tensors=tensors or {"x": 2}, metadata=metadata)
    assert read_safetensors_info(path).base_architecture == expected


def test_metadata_wins_over_tensor_names(tmp_path):
    path = write_safetensors(tmp_path / "m.safetensors", tensors=SD15_TENSORS,
                             metadata={"modelspec.architecture": "stable-diffusion-xl-v1-base"})
    assert read_safetensors_info(path).base_architecture == SDXL


def test_trigger_words_are_the_most_frequent_training_tags(tmp_path):
    frequency = {"10_mystyle": {"mystyle": 40, "1girl": 25, "outdoors": 3},
                 "5_extra": {"1girl": 20, "night": 30, "": 99}}
    path = write_safetensors(tmp_path / "l.safetensors",
                             metadata={"ss_tag_frequency": json.dumps(frequency)})
    info = read_safetensors_info(path)
    assert info.trigger_words[:4] == ["1girl", "mystyle", "night", "outdoors"]


def test_declared_trigger_phrase_wins(tmp_path):
    path = write_safetensors(tmp_path / "l.safetensors", metadata={
        "modelspec.trigger_phrase": "tinystyle, glowing , tinystyle",
        "ss_tag_frequency": json.dumps({"d": {"other": 5}})})
    assert read_safetensors_info(path).trigger_words == ["tinystyle", "glowing"]


def test_unparseable_tag_frequency_gives_no_trigger_words(tmp_path):
    path = write_safetensors(tmp_path / "l.safetensors", metadata={"ss_tag_frequency": "{not json"})
    assert read_safetensors_info(path).trigger_words == []


@pytest.mark.parametrize("metadata, expected", [
    ({"ss_resolution": "(512, 768)"}, (512, 768)),
    ({"ss_resolution": "[1024, 1024]"}, (1024, 1024)),
    ({"ss_resolution": "768"}, (768, 768)),
    ({"modelspec.resolution": "1024x1024", "ss_resolution": "(512, 512)"}, (1024, 1024)),
    ({"ss_resolution": "garbage"}, None),
    ({}, None),
])
def test_resolution(tmp_path, metadata, expected):
    path = write_safetensors(tmp_path / "m.safetensors", metadata=metadata)
    assert read_safetensors_info(path).resolution == expected


def test_stored_metadata_trims_long_values(tmp_path):
    path = write_safetensors(tmp_path / "m.safetensors", metadata={"long": "x" * 10_000, "short": "y"})
    stored = read_safetensors_info(path).stored_metadata()
    assert stored["short"] == "y"
    assert len(stored["long"]) == MAX_STORED_VALUE_CHARS + 1


def _raw(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("content, reason", [
    (b"", "too short"),
    (b"\x01\x02", "too short"),
    (struct.pack("<Q", 0), "outside"),
    (struct.pack("<Q", 10**12) + b"{}", "outside"),
    (struct.pack("<Q", 64) + b"{}", "past the end"),
    (struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc", "not valid JSON"),
    (struct.pack("<Q", 9) + b"{not json", "not valid JSON"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    (struct.pack("<Q", 22) + b'{"__metadata__": [1] }', "__metadata__"),
    (struct.pack("<Q", 14) + b'{"t": {"a":1}}', "lacks dtype"),
])
def test_corrupt_files_raise_a_typed_error(tmp_path, content, reason):
    path = _raw(tmp_path / "bad.safetensors", content)
    with pytest.raises(SafetensorsError) as caught:
        read_safetensors_info(path)
    assert reason in caught.value.reason
    assert caught.value.path == str(path)


def test_absurdly_nested_header_is_corrupt_not_a_crash(tmp_path):
    nested = b"[" * 100_000 + b"]" * 100_000
    path = _raw(tmp_path / "deep.safetensors", struct.pack("<Q", len(nested)) + nested)
    with pytest.raises(SafetensorsError, match="not valid JSON"):
        read_header(path)
    deep_tags = "[" * 100_000 + "]" * 100_000
    path = write_safetensors(tmp_path / "tags.safetensors", metadata={"ss_tag_frequency": deep_tags})
    assert read_safetensors_info(path).trigger_words == []


def test_truncated_weights_are_corrupt(tmp_path):
    path = write_safetensors(tmp_path / "t.safetensors", tensors={"w": 64})
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(SafetensorsError, match="outside the file"):
        read_header(path)


def test_header_limit_is_enforced(tmp_path):
    path = write_safetensors(tmp_path / "m.safetensors", metadata={"k": "v" * 500})
    with pytest.raises(SafetensorsError, match="outside"):
        read_header(path, max_header_bytes=100)


def test_missing_file_is_a_typed_error(tmp_path):
    with pytest.raises(SafetensorsError, match="cannot read"):
        read_header(tmp_path / "absent.safetensors")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200), flip=st.integers(min_value=0, max_value=10_000), byte=st.integers(0, 255))
def test_any_bytes_give_info_or_a_typed_error(tmp_path, data, flip, byte):
    """Whatever is on disk — random bytes, or a valid file with one byte changed — never crashes the reader."""
    valid = write_safetensors(tmp_path / "valid.safetensors", tensors={"a": 3},
                              metadata={"ss_tag_frequency": json.dumps({"d": {"x": 1}})}).read_bytes()
    mutated = bytearray(valid)
    mutated[flip % len(mutated)] = byte
    for content in (data, struct.pack("<Q", len(data)) + data, bytes(mutated)):
        path = _raw(tmp_path / "fuzz.safetensors", content)
        try:
            info = read_safetensors_info(path)
        except SafetensorsError:
            continue
        assert isinstance(info.trigger_words, list) and isinstance(info.base_architecture, str)
