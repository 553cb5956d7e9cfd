import io
from pathlib import Path

import pytest
from PIL import Image

from generation.pngmeta import NotAPng, insert_text_chunks
from generation.workflows import get_workflow

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui-protocol" / "txt2img-sample.png"


def _request(**overrides):
    fields = {"prompt": "a lighthouse, at dusk", "negative_prompt": "blurry", "width": 64, "height": 64,
              "batch_size": 1, "checkpoint_model": "styles/tiny-sd15-random.safetensors",
              "lora_models": [{"name": "tiny-lora.safetensors", "strength_model": 0.8, "strength_clip": 0.7}],
              "sampler_params": {"seed": 42, "steps": 4, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
                                 "denoise": 1.0}}
    fields.update(overrides)
    return fields


def a1111_parameters(params):
    return get_workflow("txt2img").a1111_parameters(params)


def _chunks(data, size):
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("piece", [1, 7, 33, 4096])
def test_insert_keeps_comfyui_chunks_and_pixels(piece):
    original = SAMPLE.read_bytes()
    text = a1111_parameters(_request())
    data = b"".join(insert_text_chunks(_chunks(original, piece), {"parameters": text}))
    before, after = Image.open(io.BytesIO(original)), Image.open(io.BytesIO(data))
    assert after.text["parameters"] == text
    for key, value in before.text.items():  # ComfyUI's prompt/workflow chunks are untouched
        assert after.text[key] == value
    assert "prompt" in after.text
    assert after.tobytes() == before.tobytes()
    assert len(data) == len(original) + 12 + len("parameters") + 1 + len(text.encode("latin-1"))


def test_non_latin1_text_becomes_itxt():
    original = SAMPLE.read_bytes()
    text = a1111_parameters(_request(prompt="灯台 au crépuscule"))
    data = b"".join(insert_text_chunks([original], {"parameters": text}))
    assert b"iTXt" in data
    assert Image.open(io.BytesIO(data)).text["parameters"] == text


def test_not_a_png_is_refused():
    with pytest.raises(NotAPng):
        list(insert_text_chunks([b"GIF89a" + b"\0" * 64], {"parameters": "x"}))
    with pytest.raises(NotAPng):
        list(insert_text_chunks([b"\x89PNG"], {"parameters": "x"}))


def test_a1111_parameters_format():
    text = a1111_parameters(_request())
    prompt_line, negative_line, settings_line = text.split("\n")
    assert prompt_line == "a lighthouse, at dusk <lora:tiny-lora:0.8>"
    assert negative_line == "Negative prompt: blurry"
    assert settings_line.startswith("Steps: 4, Sampler: euler, Schedule type: normal, CFG scale: 7.0, Seed: 42, "
                                    "Size: 64x64, Model: tiny-sd15-random, ")
    assert 'Lora weights: "tiny-lora: 0.8/0.7"' in settings_line


def test_a1111_parameters_without_negative_or_loras():
    text = a1111_parameters(_request(negative_prompt="", lora_models=[]))
    assert text.split("\n")[0] == "a lighthouse, at dusk"
    assert "Negative prompt" not in text and "<lora:" not in text
