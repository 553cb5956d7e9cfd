"""Reading what a ``.safetensors`` file says about itself — from its header only.

The format is an 8-byte little-endian header length, a JSON header (tensor name → dtype, shape,
data offsets, plus an optional ``__metadata__`` object of strings), then the raw tensor bytes.
We read the first 8 + N bytes and never touch the weights, so a multi-gigabyte checkpoint costs
one small read. Training tools (kohya sd-scripts, the Stability "modelspec") put the base model,
training tags and resolution into ``__metadata__``; where they did not, the tensor names still
tell the architecture apart.
"""

import json
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# The safetensors spec caps the header at 100 MB; real headers are kilobytes to a few megabytes.
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_TRIGGER_WORDS = 10
# Long metadata values (tag frequencies, dataset dirs) are trimmed before they are stored.
MAX_STORED_VALUE_CHARS = 2000
MAX_STORED_KEYS = 200

SD15, SD2, SDXL, SD3, FLUX = "SD1.5", "SD2", "SDXL", "SD3", "Flux"
# Native resolution of each family: what a user should pick when the file does not say.
NATIVE_RESOLUTION = {SD15: (512, 512), SD2: (768, 768), SDXL: (1024, 1024), SD3: (1024, 1024),
                     FLUX: (1024, 1024)}


class SafetensorsError(Exception):
    """The file is not a readable safetensors file; ``reason`` says why in one line."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class SafetensorsInfo:
    """What the header says. Fields are empty/None when the file does not tell."""

    header_bytes: int
    tensor_count: int
    metadata: dict = field(default_factory=dict)
    base_architecture: str = ""
    trigger_words: list = field(default_factory=list)
    resolution: tuple | None = None  # (width, height) from the metadata

    def stored_metadata(self):
        """``metadata`` trimmed for storage: long values are cut, huge headers keep their first keys."""
        trimmed = {}
        for key in sorted(self.metadata)[:MAX_STORED_KEYS]:
            value = self.metadata[key]
            trimmed[key] = value if len(value) <= MAX_STORED_VALUE_CHARS else value[:MAX_STORED_VALUE_CHARS] + "…"
        return trimmed


def read_header(path, *, max_header_bytes=MAX_HEADER_BYTES):
    """Return ``(metadata, tensors)`` from the header of ``path``; raise :class:`SafetensorsError`.

    ``metadata`` maps strings to strings; ``tensors`` maps tensor names to their
    ``{dtype, shape, data_offsets}``. Offsets are checked against the file size, so a truncated
    file is reported as corrupt rather than accepted.
    """
    _, metadata, tensors = _read(Path(path), max_header_bytes)
    return metadata, tensors


def _read(path, max_header_bytes):
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(0)
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise SafetensorsError(path, f"too short to be safetensors ({size} bytes)")
            (length,) = struct.unpack("<Q", prefix)
            if length == 0 or length > max_header_bytes:
                raise SafetensorsError(path, f"header length {length} is outside 1..{max_header_bytes} bytes")
            if 8 + length > size:
                raise SafetensorsError(path, f"header length {length} runs past the end of the file ({size} bytes)")
            raw = handle.read(length)
    except OSError as exc:
        raise SafetensorsError(path, f"cannot read: {exc.strerror or exc}") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise SafetensorsError(path, f"header is not valid JSON ({exc.__class__.__name__})") from exc
    if not isinstance(header, dict):
        raise SafetensorsError(path, "header is not a JSON object")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise SafetensorsError(path, "__metadata__ is not an object")
    metadata = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}

    data_size = size - 8 - length
    for name, spec in header.items():
        if not isinstance(spec, dict) or not {"dtype", "shape", "data_offsets"} <= set(spec):
            raise SafetensorsError(path, f"tensor {name!r} lacks dtype/shape/data_offsets")
        offsets = spec["data_offsets"]
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_size):
            raise SafetensorsError(path, f"tensor {name!r} has data offsets {offsets!r} outside the file")
    return length, metadata, header


def read_safetensors_info(path, *, max_header_bytes=MAX_HEADER_BYTES):
    """Read the header of ``path`` and interpret it (architecture, trigger words, resolution)."""
    length, metadata, tensors = _read(Path(path), max_header_bytes)
    return SafetensorsInfo(
        header_bytes=length,
        tensor_count=len(tensors),
        metadata=metadata,
        base_architecture=detect_architecture(metadata, tensors),
        trigger_words=trigger_words(metadata),
        resolution=resolution(metadata),
    )


# --- interpretation --------------------------------------------------------------------------

# modelspec.architecture values, e.g. "stable-diffusion-xl-v1-base/lora", "flux-1-dev".
_MODELSPEC_PATTERNS = [
    (re.compile(r"flux"), FLUX),
    (re.compile(r"stable-diffusion-(v3|3)"), SD3),
    (re.compile(r"stable-diffusion-xl|sdxl"), SDXL),
    (re.compile(r"stable-diffusion-v2|stable-diffusion-2"), SD2),
    (re.compile(r"stable-diffusion-v1|stable-diffusion-1"), SD15),
]
# kohya's ss_base_model_version, e.g. "sd_v1", "sd_v2", "sdxl_base_v1-0", "flux1", "sd3".
_BASE_VERSION_PATTERNS = [
    (re.compile(r"flux"), FLUX),
    (re.compile(r"sd3|sd_3"), SD3),
    (re.compile(r"sdxl"), SDXL),
    (re.compile(r"sd_v2|sd2"), SD2),
    (re.compile(r"sd_v1|sd1"), SD15),
]
# The base checkpoint's file name (kohya's ss_sd_model_name), e.g. "v1-5-pruned-emaonly.safetensors".
_BASE_NAME_PATTERNS = [
    (re.compile(r"flux"), FLUX),
    (re.compile(r"sd3|sd_3|stable-diffusion-3"), SD3),
    (re.compile(r"sdxl|sd_xl|xl_base|pony|illustrious"), SDXL),
    (re.compile(r"v2-|v2_|sd2|768-v|512-base-ema"), SD2),
    (re.compile(r"v1-5|v1-4|sd15|sd_v1|sd-v1|sd1"), SD15),
]


def _first_match(value, patterns):
    value = (value or "").lower()
    if not value:
        return ""
    for pattern, label in patterns:
        if pattern.search(value):
            return label
    return ""


def detect_architecture(metadata, tensors):
    """Base family (SD1.5, SD2, SDXL, SD3, Flux) from the metadata, else from tensor names; "" if unknown."""
    label = (_first_match(metadata.get("modelspec.architecture"), _MODELSPEC_PATTERNS)
             or _first_match(metadata.get("ss_base_model_version"), _BASE_VERSION_PATTERNS))
    if label:
        return label
    if metadata.get("ss_v2", "").lower() == "true":
        return SD2
    return _first_match(metadata.get("ss_sd_model_name"), _BASE_NAME_PATTERNS) or _architecture_from_tensors(tensors)


def _architecture_from_tensors(tensors):
    names = list(tensors)

    def has(*fragments):
        return any(any(fragment in name for fragment in fragments) for name in names)

    if has("double_blocks.", "single_blocks.", "lora_unet_double_blocks", "single_transformer_blocks."):
        return FLUX
    if has("joint_blocks.", "lora_unet_joint_blocks"):
        return SD3
    # SDXL: two text encoders (conditioner.embedders.1 in checkpoints, te1/te2 in kohya LoRAs).
    if has("conditioner.embedders.1.", "lora_te2_", "lora_te1_"):
        return SDXL
    if has("cond_stage_model.model.transformer.resblocks"):  # OpenCLIP text encoder
        return SD2
    if has("cond_stage_model.transformer.text_model", "lora_unet_down_blocks_", "lora_te_text_model"):
        return SD15
    return ""


def trigger_words(metadata, *, limit=MAX_TRIGGER_WORDS):
    """Words that activate a LoRA: the declared trigger phrase, else the most frequent training tags."""
    declared = metadata.get("modelspec.trigger_phrase", "").strip()
    if declared:
        words = [word.strip() for word in declared.split(",") if word.strip()]
        return list(dict.fromkeys(words))[:limit]
    raw = metadata.get("ss_tag_frequency")
    if not raw:
        return []
    try:
        frequency = json.loads(raw)
    except (ValueError, RecursionError):
        return []
    if not isinstance(frequency, dict):
        return []
    counts = Counter()
    for tags in frequency.values():  # one {tag: count} per dataset folder
        if isinstance(tags, dict):
            for tag, count in tags.items():
                if isinstance(count, int | float) and str(tag).strip():
                    counts[str(tag).strip()] += count
    # most frequent first; ties keep alphabetical order so the result is stable
    return [tag for tag, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]]


def resolution(metadata):
    """``(width, height)`` the model was trained at, from modelspec.resolution or ss_resolution."""
    for key in ("modelspec.resolution", "ss_resolution"):
        numbers = [int(n) for n in re.findall(r"\d+", metadata.get(key, ""))]
        if len(numbers) == 1 and 64 <= numbers[0] <= 16384:
            return numbers[0], numbers[0]
        if len(numbers) == 2 and all(64 <= n <= 16384 for n in numbers):
            return numbers[0], numbers[1]
    return None
