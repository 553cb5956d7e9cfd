"""What the simulator's nodes compute: sizes and batches through a graph, and placeholder pixels.

The simulator runs no model. It evaluates a graph as a dataflow of *shapes* over the stock node
types it knows, with ComfyUI's own size rules (VAEEncode crops to multiples of 8, LatentUpscaleBy
rounds like Python, ImageUpscaleWithModel multiplies by the model's factor, LoadImage reads the
uploaded file's real size and frames…), so outputs have the sizes a real server would produce.
Each image carries a *recipe* for its pixels (a seeded placeholder, an uploaded file, a blend of
the two by ``denoise``, a masked composite) that is rendered only when an output node saves, so
results are deterministic, differ per seed and show their input. Node types it does not know pass
shapes through (their first input of the same kind, or a size from ``width``/``height`` inputs).
"""

import hashlib
import io
import math
import random
import re
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFilter, ImageOps, ImageSequence, UnidentifiedImageError

from generation.comfyui.validation import annotated_path

SAMPLERS = frozenset({"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"})
CHECKPOINT_INPUT = "ckpt_name"  # every checkpoint loader names its file so
DEFAULT_UPSCALE_FACTOR = 4
DEFAULT_SIZE = 512  # what a node with no size of its own produces
DEFAULT_SIGMAS = 21  # a SIGMAS of unknown origin: ComfyUI's default 20 steps
MASK_FALLBACK = 64  # LoadImage's mask for an image without alpha is 64x64 zeros
EMPTY_GRAY = (46, 46, 46)  # what an all-zero latent decodes to, roughly
_UPSCALE_FACTOR_PATTERNS = (re.compile(r"(?<![a-z0-9])(\d+)x(?![a-z])"), re.compile(r"(?<![a-z0-9])x(\d+)"))


class NodeFailed(Exception):
    """A node raised while running: ComfyUI's ``execution_error`` with this exception type and message."""

    def __init__(self, exception_type, exception_message):
        super().__init__(exception_message)
        self.exception_type = exception_type
        self.exception_message = exception_message


@dataclass(frozen=True)
class Pixels:
    """An IMAGE, LATENT or MASK: size in pixels (a latent's is 8× its own), batch size, content recipe."""

    kind: str
    width: int
    height: int
    batch: int
    content: tuple


@dataclass(frozen=True)
class Sigmas:
    """A SIGMAS value: how many sigmas (steps + 1) and how strongly they denoise."""

    count: int
    strength: float = 1.0


@dataclass(frozen=True)
class SourceFile:
    """What LoadImage needs of an uploaded file: its bytes' digest, size, frame count, alpha."""

    folder: str
    path: str
    digest: str
    width: int
    height: int
    frames: int
    has_alpha: bool


@dataclass(frozen=True)
class Text:
    """A CONDITIONING or GUIDER: what the placeholder writes on the image."""

    text: str


@dataclass(frozen=True)
class Seed:
    """A NOISE: the seed of the placeholder."""

    seed: int


@dataclass(frozen=True)
class UpscaleModel:
    factor: int


def upscale_factor(model_name):
    """An upscale model's factor from its name (``4x-UltraSharp.pth`` 4, ``RealESRGAN_x2plus.pth`` 2; else 4)."""
    base = model_name.rsplit("/", 1)[-1].lower()
    for pattern in _UPSCALE_FACTOR_PATTERNS:
        match = pattern.search(base)
        if match and 1 <= int(match.group(1)) <= 16:
            return int(match.group(1))
    return DEFAULT_UPSCALE_FACTOR


def describe_file(folder, path, data, digest):
    """Decode ``data``'s header like LoadImage would; raises :class:`NodeFailed` when it is not an image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            frames = 1 if image.format == "MPO" else getattr(image, "n_frames", 1)
            width, height = image.size
            if image.getexif().get(0x0112) in (5, 6, 7, 8):  # exif_transpose turns these by 90°
                width, height = height, width
            has_alpha = "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info)
    except Image.DecompressionBombError as exc:
        raise NodeFailed("PIL.Image.DecompressionBombError", str(exc))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        kind = "PIL.UnidentifiedImageError" if isinstance(exc, UnidentifiedImageError) else type(exc).__name__
        raise NodeFailed(kind, f"cannot identify image file '<COMFYUI_DIR>/{folder}/{path}'")
    return SourceFile(folder, path, digest, width, height, frames, has_alpha)


class Graph:
    """The values of one prompt's nodes, computed on demand and kept for the run.

    ``catalogue`` is the server's ``/object_info`` (output types of nodes without a rule here),
    ``files(folder, path)`` gives a stored file (``.data``, ``.digest``) or None, ``aliases`` maps
    a custom node class to the stock class it behaves like, ``max_pixels`` bounds one value's
    pixels (batch included): more is the out-of-memory error a real server would give. The bytes
    of every file read are kept, so rendering later sees what was validated even if it is
    overwritten meanwhile.
    """

    def __init__(self, prompt, *, catalogue, files, aliases=None, max_pixels=None):
        self.prompt = prompt
        self.catalogue = catalogue
        self.files = files
        self.aliases = aliases or {}
        self.max_pixels = max_pixels
        self._outputs = {}
        self._sources = {}

    def source(self, name):
        """The file a loader names, described like LoadImage sees it (raises :class:`NodeFailed`)."""
        location = annotated_path(name)
        stored = self.files(*location) if location else None
        if stored is None:
            raise NodeFailed("FileNotFoundError", f"[Errno 2] No such file or directory: '<COMFYUI_DIR>/input/{name}'")
        key = (*location, stored.digest)
        if key not in self._sources:
            self._sources[key] = (describe_file(*location, stored.data, stored.digest), stored.data)
        return self._sources[key][0]

    def read(self, folder, path, digest):
        """The bytes of a file :meth:`source` described."""
        return self._sources[(folder, path, digest)][1]

    def behaviour(self, node_id):
        """The class whose semantics a node has (its own, or the stock class a custom node behaves like)."""
        class_type = self.prompt[node_id]["class_type"]
        return self.aliases.get(class_type, class_type)

    def inputs(self, node_id):
        """The node's inputs with links replaced by the linked outputs' values."""
        resolved = {}
        for name, value in (self.prompt[node_id].get("inputs") or {}).items():
            if isinstance(value, list) and len(value) == 2 and value[0] in self.prompt:
                resolved[name] = self.value(value[0], value[1])
            elif isinstance(value, dict) and "__value__" in value:
                resolved[name] = value["__value__"]
            else:
                resolved[name] = value
        return resolved

    def value(self, node_id, slot):
        outputs = self.outputs(node_id)
        return outputs[slot] if isinstance(slot, int) and 0 <= slot < len(outputs) else None

    def outputs(self, node_id):
        """Every output of ``node_id`` (memoised); raises :class:`NodeFailed` like the real node would."""
        if node_id not in self._outputs:
            inputs = self.inputs(node_id)
            handler = HANDLERS.get(self.behaviour(node_id), _passthrough)
            outputs = tuple(handler(self, node_id, inputs))
            for value in outputs:
                if isinstance(value, Pixels) and self.max_pixels and \
                        value.width * value.height * value.batch > self.max_pixels:
                    raise NodeFailed("torch.OutOfMemoryError",
                                     f"Allocation on device would exceed allowed memory. (out of memory) "
                                     f"[{value.batch}x{value.width}x{value.height} {value.kind}]")
            self._outputs[node_id] = outputs
        return self._outputs[node_id]

    def declared_outputs(self, node_id):
        return self.catalogue.get(self.prompt[node_id]["class_type"], {}).get("output", ())

    # --- what the executor asks ---------------------------------------------------------

    def sampler_steps(self, node_id):
        """How many ``progress`` frames a sampler node sends (its own ``max``), None for other nodes."""
        kind = self.behaviour(node_id)
        if kind not in SAMPLERS:
            return None
        inputs = self.inputs(node_id)
        if kind == "KSampler":
            return 0 if _float(inputs.get("denoise"), 1.0) <= 0 else _int(inputs.get("steps"), 1)
        if kind == "KSamplerAdvanced":
            steps = _int(inputs.get("steps"), 1)
            last = min(_int(inputs.get("end_at_step"), steps), steps)
            start = _int(inputs.get("start_at_step"), 0)
            return last - start if start < last else 0
        sigmas = inputs.get("sigmas")
        return max(0, sigmas.count - 1) if isinstance(sigmas, Sigmas) else 0

    def sampled(self, node_id):
        """The LATENT a sampler produces (its preview shows this forming)."""
        return self.value(node_id, 0)

    def images(self, node_id, name="images"):
        """The IMAGE an output node saves, or None when the input is not an image."""
        value = self.inputs(node_id).get(name)
        return value if isinstance(value, Pixels) else None

    def file_signature(self, node_id):
        """The digests of the files a node names (part of its cache key, like LoadImage's IS_CHANGED)."""
        digests = []
        for value in (self.prompt[node_id].get("inputs") or {}).values():
            location = annotated_path(value) if isinstance(value, str) else None
            stored = self.files(*location) if location else None
            if stored is not None:
                digests.append(stored.digest)
        return tuple(digests)


# --- value helpers ---------------------------------------------------------------------------


def _int(value, default):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _float(value, default):
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _first(inputs, kind):
    for value in inputs.values():
        if isinstance(value, Pixels) and value.kind == kind:
            return value
    return None


def _text(inputs):
    """The prompt text a CONDITIONING/GUIDER stands for: a text input, or the first linked conditioning."""
    texts = [value for name, value in inputs.items() if isinstance(value, str) and name.startswith("text")]
    if texts:
        return " ".join(texts)
    for name in ("positive", "conditioning", "conditioning_to", "guider", "cond"):
        if isinstance(inputs.get(name), Text):
            return inputs[name].text
    for value in inputs.values():
        if isinstance(value, Text):
            return value.text
    return ""


def _latent(width, height, batch, content):
    return Pixels("LATENT", max(8, width // 8 * 8), max(8, height // 8 * 8), batch, content)


def _crop8(pixels, content=None):
    """VAEEncode's crop of an image to multiples of 8 (centred), as a latent."""
    return Pixels("LATENT", pixels.width // 8 * 8, pixels.height // 8 * 8, pixels.batch,
                  pixels.content if content is None else content)


def _unmasked(content):
    """A latent's pixels without its noise mask: ``(base, mask)``."""
    if content[0] == "masked":
        return content[1], content[2]
    return content, None


# --- node semantics --------------------------------------------------------------------------


def _empty_latent(graph, node_id, inputs):
    return (_latent(_int(inputs.get("width"), DEFAULT_SIZE), _int(inputs.get("height"), DEFAULT_SIZE),
                    _int(inputs.get("batch_size"), 1), ("empty",)),)


def _empty_image(graph, node_id, inputs):
    return (Pixels("IMAGE", _int(inputs.get("width"), DEFAULT_SIZE), _int(inputs.get("height"), DEFAULT_SIZE),
                   _int(inputs.get("batch_size"), 1), ("color", _int(inputs.get("color"), 0))),)


def _load_image(graph, node_id, inputs):
    source = graph.source(inputs.get("image"))
    image = Pixels("IMAGE", source.width, source.height, source.frames, ("file", source.folder, source.path,
                                                                         source.digest))
    if source.has_alpha:
        mask = Pixels("MASK", source.width, source.height, source.frames, ("alpha_mask", image.content))
    else:
        mask = Pixels("MASK", MASK_FALLBACK, MASK_FALLBACK, 1, ("solid", 0.0))
    return image, mask


def _load_image_mask(graph, node_id, inputs):
    source = graph.source(inputs.get("image"))
    channel = str(inputs.get("channel", "alpha"))[:1].upper()
    content = ("file", source.folder, source.path, source.digest)
    return (Pixels("MASK", source.width, source.height, source.frames, ("channel", content, channel)),)


def _vae_encode(graph, node_id, inputs):
    pixels = _first(inputs, "IMAGE") or Pixels("IMAGE", DEFAULT_SIZE, DEFAULT_SIZE, 1, ("empty",))
    return (_crop8(pixels),)


def _vae_encode_inpaint(graph, node_id, inputs):
    pixels = _first(inputs, "IMAGE") or Pixels("IMAGE", DEFAULT_SIZE, DEFAULT_SIZE, 1, ("empty",))
    mask = inputs.get("mask")
    mask_content = mask.content if isinstance(mask, Pixels) else ("solid", 0.0)
    return (_crop8(pixels, ("masked", pixels.content, mask_content)),)


def _inpaint_conditioning(graph, node_id, inputs):
    latent = _vae_encode_inpaint(graph, node_id, inputs)[0]
    if not inputs.get("noise_mask", True):
        latent = Pixels("LATENT", latent.width, latent.height, latent.batch, _unmasked(latent.content)[0])
    return inputs.get("positive"), inputs.get("negative"), latent


def _set_noise_mask(graph, node_id, inputs):
    samples, mask = inputs.get("samples"), inputs.get("mask")
    if not isinstance(samples, Pixels):
        return (None,)
    mask_content = mask.content if isinstance(mask, Pixels) else ("solid", 0.0)
    return (Pixels("LATENT", samples.width, samples.height, samples.batch,
                   ("masked", _unmasked(samples.content)[0], mask_content)),)


def _vae_decode(graph, node_id, inputs):
    latent = _first(inputs, "LATENT") or Pixels("LATENT", DEFAULT_SIZE, DEFAULT_SIZE, 1, ("empty",))
    return (Pixels("IMAGE", latent.width, latent.height, latent.batch, _unmasked(latent.content)[0]),)


def _sampler(graph, node_id, inputs):
    kind = graph.behaviour(node_id)
    latent = inputs.get("latent_image")
    if not isinstance(latent, Pixels):
        latent = Pixels("LATENT", DEFAULT_SIZE, DEFAULT_SIZE, 1, ("empty",))
    if kind == "KSampler":
        seed, strength = _int(inputs.get("seed"), 0), _float(inputs.get("denoise"), 1.0)
    elif kind == "KSamplerAdvanced":
        steps = max(1, _int(inputs.get("steps"), 1))
        seed, strength = _int(inputs.get("noise_seed"), 0), max(0.0, 1 - _int(inputs.get("start_at_step"), 0) / steps)
    elif kind == "SamplerCustom":
        sigmas = inputs.get("sigmas")
        seed = _int(inputs.get("noise_seed"), 0) if inputs.get("add_noise", True) else 0
        strength = sigmas.strength if isinstance(sigmas, Sigmas) else 1.0
    else:
        sigmas, noise = inputs.get("sigmas"), inputs.get("noise")
        seed = noise.seed if isinstance(noise, Seed) else 0
        strength = sigmas.strength if isinstance(sigmas, Sigmas) else 1.0
    if graph.sampler_steps(node_id) == 0:
        return latent, latent  # no step to run: ComfyUI hands the latent back
    base, mask = _unmasked(latent.content)
    text = _text({"positive": inputs.get("positive"), "guider": inputs.get("guider")})
    sampled = Pixels("LATENT", latent.width, latent.height, latent.batch,
                     ("sample", None if base == ("empty",) else base, mask, seed, text, min(1.0, strength)))
    return sampled, sampled


def _latent_upscale(graph, node_id, inputs):
    samples = _first(inputs, "LATENT")
    if samples is None:
        return (None,)
    width, height = _int(inputs.get("width"), 0), _int(inputs.get("height"), 0)
    lw, lh = samples.width // 8, samples.height // 8
    if width == 0 and height == 0:
        return (samples,)
    if width == 0:
        height = max(64, height)
        width = max(64, round(lw * height / lh))
    elif height == 0:
        width = max(64, width)
        height = max(64, round(lh * width / lw))
    else:
        width, height = max(64, width), max(64, height)
    return (Pixels("LATENT", width // 8 * 8, height // 8 * 8, samples.batch, samples.content),)


def _latent_upscale_by(graph, node_id, inputs):
    samples = _first(inputs, "LATENT")
    if samples is None:
        return (None,)
    scale = _float(inputs.get("scale_by"), 1.0)
    lw, lh = round(samples.width // 8 * scale), round(samples.height // 8 * scale)
    return (Pixels("LATENT", max(1, lw) * 8, max(1, lh) * 8, samples.batch, samples.content),)


def _image_scale(graph, node_id, inputs):
    image = _first(inputs, "IMAGE")
    if image is None:
        return (None,)
    width, height = _int(inputs.get("width"), 0), _int(inputs.get("height"), 0)
    if width == 0 and height == 0:
        return (image,)
    if width == 0:
        width = max(1, round(image.width * height / image.height))
    elif height == 0:
        height = max(1, round(image.height * width / image.width))
    return (Pixels("IMAGE", width, height, image.batch, image.content),)


def _image_scale_by(graph, node_id, inputs):
    image = _first(inputs, "IMAGE")
    if image is None:
        return (None,)
    scale = _float(inputs.get("scale_by"), 1.0)
    return (Pixels("IMAGE", max(1, round(image.width * scale)), max(1, round(image.height * scale)), image.batch,
                   image.content),)


def _image_scale_to_pixels(graph, node_id, inputs):
    image = _first(inputs, "IMAGE")
    if image is None:
        return (None,)
    steps = max(1, _int(inputs.get("resolution_steps"), 1))
    scale = math.sqrt(_float(inputs.get("megapixels"), 1.0) * 1024 * 1024 / (image.width * image.height))
    width = max(steps, round(image.width * scale / steps) * steps)
    height = max(steps, round(image.height * scale / steps) * steps)
    return (Pixels("IMAGE", width, height, image.batch, image.content),)


def _upscale_model_loader(graph, node_id, inputs):
    return (UpscaleModel(upscale_factor(str(inputs.get("model_name", "")))),)


def _upscale_with_model(graph, node_id, inputs):
    image, model = _first(inputs, "IMAGE"), inputs.get("upscale_model")
    if image is None:
        return (None,)
    factor = model.factor if isinstance(model, UpscaleModel) else DEFAULT_UPSCALE_FACTOR
    return (Pixels("IMAGE", image.width * factor, image.height * factor, image.batch, image.content),)


def _image_crop(graph, node_id, inputs):
    image = _first(inputs, "IMAGE")
    if image is None:
        return (None,)
    x = min(_int(inputs.get("x"), 0), image.width - 1)
    y = min(_int(inputs.get("y"), 0), image.height - 1)
    width = min(x + _int(inputs.get("width"), image.width), image.width) - x
    height = min(y + _int(inputs.get("height"), image.height), image.height) - y
    return (Pixels("IMAGE", width, height, image.batch, ("crop", image.content, x, y, image.width, image.height)),)


def _pad_for_outpaint(graph, node_id, inputs):
    image = _first(inputs, "IMAGE")
    if image is None:
        return None, None
    sides = tuple(_int(inputs.get(name), 0) for name in ("left", "top", "right", "bottom"))
    width, height = image.width + sides[0] + sides[2], image.height + sides[1] + sides[3]
    geometry = (*sides, image.width, image.height)
    return (Pixels("IMAGE", width, height, image.batch, ("pad", image.content, *geometry)),
            Pixels("MASK", width, height, 1, ("pad_mask", *geometry)))


def _repeat_batch(graph, node_id, inputs):
    value = next((v for v in inputs.values() if isinstance(v, Pixels)), None)
    if value is None:
        return (None,)
    return (Pixels(value.kind, value.width, value.height, value.batch * max(1, _int(inputs.get("amount"), 1)),
                   value.content),)


def _batch(graph, node_id, inputs):
    first = inputs.get("image1", inputs.get("samples1"))
    second = inputs.get("image2", inputs.get("samples2"))
    if not (isinstance(first, Pixels) and isinstance(second, Pixels)):
        return (first if isinstance(first, Pixels) else second,)
    return (Pixels(first.kind, first.width, first.height, first.batch + second.batch,
                   ("concat", first.content, first.batch, second.content)),)


def _image_to_mask(graph, node_id, inputs):
    image = _first(inputs, "IMAGE")
    if image is None:
        return (None,)
    channel = str(inputs.get("channel", "red"))[:1].upper()
    return (Pixels("MASK", image.width, image.height, image.batch, ("channel", image.content, channel)),)


def _mask_to_image(graph, node_id, inputs):
    mask = _first(inputs, "MASK")
    if mask is None:
        return (None,)
    return (Pixels("IMAGE", mask.width, mask.height, mask.batch, ("gray", mask.content)),)


def _solid_mask(graph, node_id, inputs):
    return (Pixels("MASK", _int(inputs.get("width"), DEFAULT_SIZE), _int(inputs.get("height"), DEFAULT_SIZE), 1,
                   ("solid", _float(inputs.get("value"), 1.0))),)


def _invert_mask(graph, node_id, inputs):
    mask = _first(inputs, "MASK")
    return (Pixels("MASK", mask.width, mask.height, mask.batch, ("invert", mask.content)) if mask else None,)


def _text_encode(graph, node_id, inputs):
    return (Text(_text(inputs)),)


def _guider(graph, node_id, inputs):
    return (Text(_text(inputs)),)


def _random_noise(graph, node_id, inputs):
    return (Seed(_int(inputs.get("noise_seed"), 0)),)


def _split_sigmas(graph, node_id, inputs):
    sigmas = inputs.get("sigmas")
    if not isinstance(sigmas, Sigmas):
        return None, None
    step = _int(inputs.get("step"), 0)
    return (Sigmas(min(step + 1, sigmas.count), sigmas.strength),
            Sigmas(max(sigmas.count - step, 0), sigmas.strength * max(0, sigmas.count - 1 - step)
                   / max(1, sigmas.count - 1)))


def _passthrough(graph, node_id, inputs):
    """A node the simulator has no rule for: each output is derived from the inputs by its type."""
    values = []
    for kind in graph.declared_outputs(node_id):
        if kind in ("IMAGE", "LATENT", "MASK"):
            values.append(_derived_pixels(kind, inputs))
        elif kind in ("CONDITIONING", "GUIDER"):
            values.append(Text(_text(inputs)))
        elif kind == "SIGMAS":
            if "steps" in inputs:
                denoise = _float(inputs.get("denoise"), 1.0)
                values.append(Sigmas(_int(inputs["steps"], 1) + 1 if denoise > 0 else 0, min(1.0, denoise)))
            else:
                values.append(next((v for v in inputs.values() if isinstance(v, Sigmas)), Sigmas(DEFAULT_SIGMAS)))
        elif kind == "NOISE":
            values.append(Seed(_int(inputs.get("noise_seed", inputs.get("seed")), 0)))
        elif kind == "UPSCALE_MODEL":
            values.append(UpscaleModel(DEFAULT_UPSCALE_FACTOR))
        else:
            values.append(None)
    return values


def _derived_pixels(kind, inputs):
    same = _first(inputs, kind)
    if same is not None:
        return same
    for other in ("IMAGE", "LATENT", "MASK"):
        source = _first(inputs, other)
        if source is not None:
            if kind == "LATENT":
                return _crop8(source)
            content = ("channel", source.content, "R") if kind == "MASK" and other == "IMAGE" else source.content
            return Pixels(kind, source.width, source.height, source.batch, content)
    width, height = _int(inputs.get("width"), DEFAULT_SIZE), _int(inputs.get("height"), DEFAULT_SIZE)
    batch = _int(inputs.get("batch_size", inputs.get("length")), 1)
    if kind == "LATENT":
        return _latent(width, height, batch, ("empty",))
    return Pixels(kind, width, height, batch, ("empty",) if kind == "IMAGE" else ("solid", 0.0))


HANDLERS = {
    "EmptyLatentImage": _empty_latent,
    "EmptySD3LatentImage": _empty_latent,
    "EmptyImage": _empty_image,
    "LoadImage": _load_image,
    "LoadImageOutput": _load_image,
    "LoadImageMask": _load_image_mask,
    "VAEEncode": _vae_encode,
    "VAEEncodeTiled": _vae_encode,
    "VAEEncodeForInpaint": _vae_encode_inpaint,
    "InpaintModelConditioning": _inpaint_conditioning,
    "SetLatentNoiseMask": _set_noise_mask,
    "VAEDecode": _vae_decode,
    "VAEDecodeTiled": _vae_decode,
    "KSampler": _sampler,
    "KSamplerAdvanced": _sampler,
    "SamplerCustom": _sampler,
    "SamplerCustomAdvanced": _sampler,
    "LatentUpscale": _latent_upscale,
    "LatentUpscaleBy": _latent_upscale_by,
    "ImageScale": _image_scale,
    "ImageScaleBy": _image_scale_by,
    "ImageScaleToTotalPixels": _image_scale_to_pixels,
    "UpscaleModelLoader": _upscale_model_loader,
    "ImageUpscaleWithModel": _upscale_with_model,
    "ImageCrop": _image_crop,
    "ImagePadForOutpaint": _pad_for_outpaint,
    "RepeatLatentBatch": _repeat_batch,
    "RepeatImageBatch": _repeat_batch,
    "ImageBatch": _batch,
    "LatentBatch": _batch,
    "ImageToMask": _image_to_mask,
    "MaskToImage": _mask_to_image,
    "SolidMask": _solid_mask,
    "InvertMask": _invert_mask,
    "CLIPTextEncode": _text_encode,
    "CFGGuider": _guider,
    "BasicGuider": _guider,
    "DualCFGGuider": _guider,
    "RandomNoise": _random_noise,
    "SplitSigmas": _split_sigmas,
}


# --- pixels ----------------------------------------------------------------------------------


def render_placeholder(*, text, seed, width, height, index, color=None):
    """A deterministic, visibly seed-dependent RGB image for (text, seed, size, batch index)."""
    digest = hashlib.sha256(f"{text}\x00{seed}\x00{index}".encode()).digest()
    rng = random.Random(digest)
    if color is not None:
        return Image.new("RGB", (width, height), ((color >> 16) & 255, (color >> 8) & 255, color & 255))
    small_w, small_h = max(1, min(width, 64)), max(1, min(height, 64))
    image = Image.new("RGB", (small_w, small_h), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.randrange(small_w), rng.randrange(small_h)
        x1, y1 = x0 + rng.randrange(1, small_w + 1), y0 + rng.randrange(1, small_h + 1)
        fill = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    if (small_w, small_h) != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    if width >= 48 and height >= 16:
        ImageDraw.Draw(image).text((4, 4), f"seed {seed} #{index}\n{text[:40]}", fill=(255, 255, 255))
    return image


class Renderer:
    """Draws recipes at a size; ``read(folder, path, digest) -> bytes`` gives the files they reference."""

    def __init__(self, read):
        self.read = read
        self._memo = {}

    def image(self, pixels, index):
        """Batch item ``index`` of an IMAGE as an RGB picture of its size."""
        return self.render(pixels.content, pixels.width, pixels.height, index, "RGB")

    def render(self, content, width, height, index, mode):
        key = (content, width, height, index, mode)
        if key not in self._memo:
            self._memo[key] = self._draw(content, max(1, width), max(1, height), index, mode)
        return self._memo[key]

    def _draw(self, content, width, height, index, mode):
        kind = content[0]
        size = (width, height)
        if kind == "empty":
            return Image.new(mode, size, EMPTY_GRAY if mode == "RGB" else 0)
        if kind == "color":
            color = content[1]
            return Image.new("RGB", size, ((color >> 16) & 255, (color >> 8) & 255, color & 255)).convert(mode)
        if kind == "solid":
            return Image.new("L", size, round(255 * min(1.0, max(0.0, content[1])))).convert(mode)
        if kind == "file":
            frame = self._frame(content, index, "RGBA" if mode == "RGBA" else "RGB")
            return frame.resize(size, Image.Resampling.BILINEAR).convert(mode)
        if kind == "alpha_mask":  # LoadImage's mask: 1 where the picture is transparent
            alpha = self._frame(content[1], index, "RGBA").getchannel("A")
            return ImageOps.invert(alpha).resize(size, Image.Resampling.BILINEAR).convert(mode)
        if kind == "channel":
            source = self.render(content[1], width, height, index, "RGBA")
            channel = source.getchannel(content[2] if content[2] in "RGBA" else "R")
            return (ImageOps.invert(channel) if content[2] == "A" else channel).convert(mode)
        if kind == "gray":
            return self.render(content[1], width, height, index, "L").convert(mode)
        if kind == "invert":
            return ImageOps.invert(self.render(content[1], width, height, index, "L")).convert(mode)
        if kind == "masked":
            return self.render(content[1], width, height, index, mode)
        if kind == "sample":
            return self._sample(content, size, index).convert(mode)
        if kind == "crop":
            _, base, x, y, base_w, base_h = content
            picture = self.render(base, base_w, base_h, index, mode)
            return picture.crop((x, y, x + width, y + height))
        if kind == "pad":
            _, base, left, top, _right, _bottom, base_w, base_h = content
            canvas = Image.new(mode, size, (127, 127, 127) if mode == "RGB" else 127)
            canvas.paste(self.render(base, base_w, base_h, index, mode), (left, top))
            return canvas
        if kind == "pad_mask":
            _, left, top, _right, _bottom, base_w, base_h = content
            canvas = Image.new("L", size, 255)
            canvas.paste(0, (left, top, left + base_w, top + base_h))
            return canvas.convert(mode)
        if kind == "concat":
            _, first, first_batch, second = content
            if index < first_batch:
                return self.render(first, width, height, index, mode)
            return self.render(second, width, height, index - first_batch, mode)
        raise ValueError(f"unknown pixel recipe {kind!r}")

    def _frame(self, content, index, mode):
        _, folder, path, digest = content
        with Image.open(io.BytesIO(self.read(folder, path, digest))) as image:
            frames = list(ImageSequence.Iterator(image))
            frame = frames[index % len(frames)]
            return ImageOps.exif_transpose(frame).convert(mode)

    def _sample(self, content, size, index):
        _, base, mask, seed, text, strength = content
        placeholder = render_placeholder(text=text, seed=seed, width=size[0], height=size[1], index=index)
        if base is None:
            return placeholder
        original = self.render(base, size[0], size[1], index, "RGB")
        mixed = Image.blend(original, placeholder, max(0.0, min(1.0, strength)))
        if mask is None:
            return mixed
        return Image.composite(mixed, original, self.render(mask, size[0], size[1], index, "L"))


def preview_jpeg(renderer, latent, *, step, steps, max_size):
    """JPEG bytes of a sampler's preview at ``step`` of ``steps``: its result, noisy and blurred early on.

    Sized like ComfyUI's (the image's aspect, fitted into ``max_size``²), quality 95 as it sends them.
    """
    done = step / steps if steps else 1.0
    small = contain(latent.width, latent.height, 64)
    target = contain(latent.width, latent.height, max_size)
    picture = renderer.render(latent.content, *small, 0, "RGB")
    noise_seed = content_seed(latent.content) * 100003 + step
    noise = Image.frombytes("RGB", small, random.Random(noise_seed).randbytes(small[0] * small[1] * 3))
    picture = Image.blend(noise, picture, min(1.0, 0.25 + 0.75 * done))
    if done < 1:
        picture = picture.filter(ImageFilter.GaussianBlur(radius=3 * (1 - done)))
    buffer = io.BytesIO()
    picture.resize(target, Image.Resampling.BILINEAR).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def contain(width, height, box):
    """``ImageOps.contain``'s size: ``width``×``height`` scaled to fit a ``box``² square, aspect kept."""
    if width >= height:
        return box, max(1, round(height / width * box))
    return max(1, round(width / height * box)), box


def content_seed(content):
    """A stable integer for a recipe (the seed of a sampler's preview noise)."""
    return int.from_bytes(hashlib.sha256(repr(content).encode()).digest()[:6], "big")
