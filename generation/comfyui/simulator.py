"""A ComfyUI-compatible server for development and tests — never a production fallback.

It speaks the protocol recorded from ComfyUI 0.8.0 (``tests/fixtures/comfyui-protocol/``):
``POST /prompt`` validated with :mod:`generation.comfyui.validation` (the same code the
workflow builder uses), one prompt at a time in ascending ``number`` order, per-step
``progress`` frames from every sampler node (and latent previews when a prompt asks for them),
``/history``, ``/queue``, ``/interrupt``, ``/upload/image``, ``/upload/mask``, ``/view``,
``/object_info``, ``/system_stats``, ``/models`` and ``/ws``, every route also under ``/api``.
Graphs of stock nodes execute as a dataflow of sizes (:mod:`generation.comfyui.simulator_graph`),
so outputs have the sizes a real server gives; images are deterministic placeholders derived
from the seed, the prompt and the input images.

Faults for tests are set by option, environment (``SIMULATOR_FAULTS``) or at run time through
the control API under ``/_simulator/`` (not a ComfyUI route): see ``docs/simulator.md``.
"""

import asyncio
import contextlib
import copy
import hashlib
import io
import json
import logging
import mimetypes
import posixpath
import random
import string
import struct
import time
import uuid
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from email.utils import formatdate
from functools import lru_cache
from pathlib import Path

from aiohttp import WSMsgType, web
from PIL import Image, PngImagePlugin

from generation.comfyui.object_info import RECORDED_OBJECT_INFO, parse_input_spec
from generation.comfyui.simulator_graph import (
    CHECKPOINT_INPUT,
    SAMPLERS,
    Graph,
    NodeFailed,
    Renderer,
    preview_jpeg,
    render_placeholder,
)
from generation.comfyui.validation import ANNOTATIONS, file_exists_check, validate_prompt

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINTS = ("tiny-sd15-random.safetensors", "sdxl-base-1.0.safetensors", "dreamshaper-8.safetensors",
                       "fake.safetensors")
DEFAULT_LORAS = ("tiny-lora.safetensors", "styles/watercolor.safetensors", "detail-tweaker.safetensors")
DEFAULT_UPSCALE_MODELS = ("4x-UltraSharp.pth", "RealESRGAN_x2plus.pth")
FAILING_CHECKPOINTS = ("fake.safetensors",)  # listed (validation passes) but fails to load, like the recording
MODEL_FOLDERS = ("checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
                 "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models",
                 "latent_upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers",
                 "model_patches", "audio_encoders")
FAULT_DEFAULTS = {
    "execution_error_rate": 0.0,  # share of executions that fail in their first sampler with execution_error
    "view_delay": 0.0,  # seconds added to every /view
    "view_fail_rate": 0.0,  # share of /view answered with HTTP 500
    "drop_websockets": False,  # while true: every socket is closed, new ones right after their first frame
    "ws_drop_rate": 0.0,  # share of execution frames that close the socket instead of being sent
    "refuse_connections": 0.0,  # seconds: stop listening (connections refused), then listen again
    "prompt_delay": 0.0,  # seconds before POST /prompt answers, after the prompt is queued (client timeouts)
    "stall_rate": 0.0,  # share of executions that hang (running, silent) until interrupted or this is set to 0
    "stall_at_step": 1,  # a stalling execution hangs after this many steps of its first sampler
    "upload_failures": 0,  # the next N uploads answer HTTP 500 (counts down), for retry paths
}
VIEW_TYPES = ("output", "input", "temp")
SERVER_ERROR_BODY = "500 Internal Server Error\n\nServer got itself in trouble"
MAX_UPLOAD_SIZE = 104857600  # ComfyUI's --max-upload-size default (100 MB)
SERVER_FEATURES = {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD_SIZE,
                   "extension": {"manager": {"supports_v4": True}}}
PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA, JPEG = 1, 4, 1  # ComfyUI's binary event and image types
RECENT_PREVIEWS = 256  # send times kept for the stats (bench/live_bench.py times frame → client with them)
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' blob:; "
                           "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self'; "
                           "connect-src 'self'; frame-src 'self'; object-src 'self';")  # as /view sends it
SAVE_NODES = frozenset({"SaveImage", "PreviewImage", "SaveAnimatedWEBP", "SaveAnimatedPNG"})
WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}
CUSTOM_NODE_MODULE = "custom_nodes.genonaut_simulator"
_SYSTEM_STATS = Path(__file__).with_name("recorded") / "system_stats.json"


@dataclass
class SimulatorOptions:
    step_time: float = 0.05  # seconds per sampler step
    load_time: float = 2.0  # seconds to load a checkpoint other than the loaded one
    node_time: float = 0.0  # seconds for every other executed node
    checkpoints: tuple = DEFAULT_CHECKPOINTS
    loras: tuple = DEFAULT_LORAS
    upscale_models: tuple = DEFAULT_UPSCALE_MODELS
    failing_checkpoints: tuple = FAILING_CHECKPOINTS
    custom_nodes: tuple = ()  # node class specs added to /object_info (see custom_node_entry)
    removed_nodes: tuple = ()  # stock node classes this server does not have
    history_max: int = 10000  # ComfyUI's MAXIMUM_HISTORY_SIZE
    max_files: int = 2000  # rendered images kept in memory for /view (oldest dropped)
    preview_size: int = 512  # ComfyUI's --preview-size: latent previews fit in this square
    max_pixels: int = 32 * 1024 * 1024  # one value's pixels (batch included) beyond which a node runs out of memory
    seed: int | None = None  # seeds the fault dice, for reproducible runs
    faults: dict = field(default_factory=dict)


@dataclass
class QueueItem:
    number: float
    prompt_id: str
    prompt: dict
    extra_data: dict
    outputs: list
    sequence: int

    def as_list(self):
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


@dataclass
class StoredFile:
    data: bytes
    etag: str
    last_modified: str
    digest: str


class _Interrupted(Exception):
    pass


def _now_ms():
    return int(time.time() * 1000)


def _frame(kind, data):
    return json.dumps({"type": kind, "data": data})


def encode_png(image, *, prompt, extra_pnginfo):
    """PNG bytes with ``prompt`` and each ``extra_pnginfo`` key as tEXt chunks, as ComfyUI's SaveImage does."""
    metadata = PngImagePlugin.PngInfo()
    if prompt is not None:
        metadata.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        metadata.add_text(key, json.dumps(value))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=metadata, compress_level=1)
    return buffer.getvalue()


def encode_animated(frames, *, fmt, fps, prompt, extra_pnginfo, lossless=True, quality=80, method=4,
                    compress_level=4):
    """One animated WebP or PNG of ``frames``, with the metadata SaveAnimatedWEBP / SaveAnimatedPNG write.

    WebP: EXIF Model (0x0110) ``prompt:<json>`` and Make (0x010f) downwards ``<key>:<json>``;
    APNG: ``comf`` chunks after the image data.
    """
    buffer = io.BytesIO()
    duration = max(1, int(1000.0 / fps))
    if fmt == "WEBP":
        exif = frames[0].getexif()
        if prompt is not None:
            exif[0x0110] = f"prompt:{json.dumps(prompt)}"
        for tag, (key, value) in zip(range(0x010F, 0, -1), (extra_pnginfo or {}).items(), strict=False):
            exif[tag] = f"{key}:{json.dumps(value)}"
        frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], duration=duration,
                       exif=exif, lossless=lossless, quality=quality, method=method)
    else:
        metadata = PngImagePlugin.PngInfo()
        chunks = ([("prompt", prompt)] if prompt is not None else []) + list((extra_pnginfo or {}).items())
        for key, value in chunks:
            metadata.add(b"comf", key.encode("latin-1") + b"\0" + json.dumps(value).encode("latin-1"),
                         after_idat=True)
        frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:], duration=duration,
                       pnginfo=metadata, compress_level=compress_level)
    return buffer.getvalue()


def check_faults(faults):
    """Raise ValueError naming an unknown fault or a value of the wrong type."""
    if not isinstance(faults, dict):
        raise ValueError("faults must be a JSON object")
    unknown = sorted(set(faults) - set(FAULT_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown faults: {', '.join(unknown)}")
    for name, value in faults.items():
        if isinstance(FAULT_DEFAULTS[name], bool):
            if not isinstance(value, bool):
                raise ValueError(f"fault {name} must be true or false")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"fault {name} must be a number >= 0")
        elif isinstance(FAULT_DEFAULTS[name], int) and value != int(value):
            raise ValueError(f"fault {name} must be a whole number")


def custom_node_entry(spec):
    """The ``/object_info`` entry of a node class a test defines; raises ValueError naming what is wrong.

    ``spec``: ``{"class": "GenonautTestNode", "inputs": {"image": "IMAGE", "strength": ["FLOAT", {…}]},
    "optional": {…}, "outputs": ["IMAGE"], "output_names": […], "output_node": false,
    "behaves_like": "ImageScaleBy", "category": …, "display_name": …}``. An input is a type name
    or an ``/object_info`` entry (``[TYPE, {options}]``, ``[[choices], {…}]``). ``behaves_like``
    names the stock node whose semantics it runs with (default: outputs derived from the inputs).
    """
    if not isinstance(spec, dict) or not isinstance(spec.get("class"), str) or not spec["class"]:
        raise ValueError('a custom node needs a "class" name')
    name = spec["class"]
    sections = {}
    for section, key in (("required", "inputs"), ("optional", "optional")):
        entries = spec.get(key) or {}
        if not isinstance(entries, dict):
            raise ValueError(f"{name}: {key!r} must map input names to types")
        sections[section] = {}
        for input_name, kind in entries.items():
            entry = [kind, {}] if isinstance(kind, str) else kind
            if not (isinstance(entry, list) and entry and isinstance(entry[0], (str, list))):
                raise ValueError(f"{name}: input {input_name!r} must be a type name or [type, options]")
            sections[section][input_name] = entry
    outputs = spec.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(kind, str) for kind in outputs):
        raise ValueError(f"{name}: 'outputs' must be a list of type names")
    output_names = spec.get("output_names") or outputs
    if len(output_names) != len(outputs):
        raise ValueError(f"{name}: 'output_names' must name every output")
    return {"input": {key: value for key, value in sections.items() if value or key == "required"},
            "input_order": {key: list(value) for key, value in sections.items() if value or key == "required"},
            "output": outputs, "output_is_list": [False] * len(outputs), "output_name": list(output_names),
            "name": name, "display_name": spec.get("display_name", name), "description": spec.get("description", ""),
            "python_module": CUSTOM_NODE_MODULE, "category": spec.get("category", "genonaut/simulated"),
            "output_node": bool(spec.get("output_node", False))}


@lru_cache(maxsize=1)
def _recorded_catalogue():
    """The recorded 0.8.0 ``/object_info`` (shared, never modified: instances copy what they change)."""
    return json.loads(RECORDED_OBJECT_INFO.read_text())


@lru_cache(maxsize=1)
def _listed_inputs():
    """``(class, section, input) -> folder`` for every option list a server fills from a folder.

    Found in the recording: every input listing the recorded checkpoints or LoRAs (ComfyUI fills
    them all from the same folder), plus the upscale model loader and the file loaders.
    """
    data = _recorded_catalogue()
    recorded = {folder: parse_input_spec(name, data[cls]["input"]["required"][name]).choices
                for folder, (cls, name) in {"checkpoints": ("CheckpointLoaderSimple", "ckpt_name"),
                                            "loras": ("LoraLoader", "lora_name")}.items()}
    found = {}
    for class_type, node in data.items():
        for section in ("required", "optional"):
            for name, spec in (node.get("input", {}).get(section) or {}).items():
                choices = parse_input_spec(name, spec).choices
                for folder, listed in recorded.items():
                    if choices and choices == listed:
                        found[(class_type, section, name)] = folder
    found.update({("UpscaleModelLoader", "required", "model_name"): "upscale_models",
                  ("LoadImage", "required", "image"): "input:image",
                  ("LoadImageMask", "required", "image"): "input:image",
                  ("LoadLatent", "required", "latent"): "input:latent",
                  ("LoadVideo", "required", "file"): "input:video"})
    return found


def _with_choices(spec, choices):
    """An input entry with its option list replaced, in the shape it had (``[[…], {…}]`` or ``COMBO``)."""
    options = dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if spec[0] == "COMBO":
        return ["COMBO", {**options, "options": list(choices)}]
    return [list(choices), options] if len(spec) > 1 else [list(choices)]


def _content_kind(name):
    """What ComfyUI's ``filter_files_content_types`` calls a file: ``image``, ``video``, … by its extension."""
    if name.endswith(".latent"):
        return "latent"
    if name.lower().endswith(".webp"):
        return "image"
    kind = mimetypes.guess_type(name)[0]
    return kind.split("/", 1)[0] if kind else None


def _annotated(filename, kind):
    """ComfyUI's ``annotated_filepath`` for /view and masks: ``name [output]`` names its folder itself."""
    for suffix, annotated in ANNOTATIONS:
        if filename.endswith(suffix):
            return filename[: -len(suffix) - 1], annotated
    return filename, kind


def _stored(data):
    now = time.time()
    return StoredFile(data, f'"{int(now * 1e9):x}-{len(data):x}"', formatdate(now, usegmt=True),
                      hashlib.sha256(data).hexdigest())


def _folder_path(subfolder, filename):
    """The normalised path of ``subfolder/filename`` inside a ComfyUI folder, None when it leaves it."""
    path = posixpath.normpath(posixpath.join(posixpath.normpath(subfolder or "."), filename))
    if path in (".", "..") or path.startswith(("/", "../")):
        return None
    return path


@lru_cache(maxsize=1)
def _example_png():
    """ComfyUI ships ``input/example.png``; the recorded LoadImage list names it."""
    buffer = io.BytesIO()
    render_placeholder(text="example", seed=0, width=512, height=512, index=0).save(buffer, format="PNG")
    return buffer.getvalue()


class Simulator:
    """The state of one simulated ComfyUI process and its HTTP/websocket application."""

    def __init__(self, options=None):
        self.options = options or SimulatorOptions()
        for spec in self.options.custom_nodes:
            custom_node_entry(spec)  # a bad spec or fault fails here, not on the first request
        check_faults(self.options.faults or {})
        self._initial_options = copy.deepcopy(self.options)
        self.faults = {**FAULT_DEFAULTS, **(self.options.faults or {})}
        self.rng = random.Random(self.options.seed)
        self.server = None  # set by SimulatorServer, for refuse_connections
        self._worker_task = None
        self._object_info = None
        self.nudge = asyncio.Event()  # set when a hung prompt should look again (interrupt, faults changed)
        self.inputs = {"example.png": _stored(_example_png())}  # ComfyUI's input/ folder: path -> file
        self._reset_state(clear_stats=True)

    # --- state --------------------------------------------------------------------------

    def _reset_state(self, *, clear_stats):
        """Forget everything a ComfyUI process keeps in memory (queue, history, cache, loaded model)."""
        self.number = 0
        self.sequence = 0
        self.pending = []
        self.running = None
        self.history = {}
        self.sockets = {}
        self.files = OrderedDict()  # (type, path) -> file, for output and temp files
        self.counters = {}
        self.node_cache = {}  # node id -> input signature of the last run
        self.output_cache = {}  # output node id -> ui output of the last run
        self.loaded_checkpoint = None
        self.last_node_id = None
        self.running_client_id = None
        self.interrupt_requested = False
        self.stalled = None  # the prompt id a stall fault holds
        self.wakeup = asyncio.Event()
        if clear_stats:
            self.submissions = Counter()
            self.executions = Counter()
            self.rejected = 0
            self.checkpoint_loads = 0
            self.restarts = 0
            self.uploads = 0
            self.previews_sent = 0
            self.recent_previews = deque(maxlen=RECENT_PREVIEWS)  # [prompt id, epoch seconds when sent]

    def start(self):
        self._worker_task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self):
        if self._worker_task:
            self._worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker_task
        await self._close_sockets()

    async def restart(self):
        """Like a process restart: queue, history, cache, loaded model and sockets are gone (stats are kept).

        Files on disk stay: ``input/`` (uploads) and ``output/`` (and the output counters continue);
        temp files are deleted at start-up, as ComfyUI does.
        """
        await self.stop()
        files = OrderedDict((key, stored) for key, stored in self.files.items() if key[0] == "output")
        counters = {key: count for key, count in self.counters.items() if key[0] == "output"}
        self._reset_state(clear_stats=False)
        self.files, self.counters = files, counters
        self.restarts += 1
        self.start()

    async def reset(self):
        """A fresh simulator: initial options, no faults, files or statistics (tests call it between cases)."""
        await self.stop()
        self.options = copy.deepcopy(self._initial_options)
        self.faults = {**FAULT_DEFAULTS, **(self.options.faults or {})}
        self.rng = random.Random(self.options.seed)
        self._object_info = None
        self.inputs = {"example.png": _stored(_example_png())}
        self._reset_state(clear_stats=True)
        self.start()

    @property
    def queue_remaining(self):
        return len(self.pending) + (1 if self.running else 0)

    def configure(self, changes):
        """Change options at run time (the control API); raises ValueError for a bad value."""
        for name in ("step_time", "load_time", "node_time"):
            if name in changes:
                setattr(self.options, name, float(changes[name]))
        for name in ("checkpoints", "loras", "upscale_models", "failing_checkpoints", "removed_nodes"):
            if name in changes:
                if not isinstance(changes[name], list) or not all(isinstance(v, str) for v in changes[name]):
                    raise ValueError(f"{name} must be a list of names")
                setattr(self.options, name, tuple(changes[name]))
        if "custom_nodes" in changes:
            specs = changes["custom_nodes"]
            if not isinstance(specs, list):
                raise ValueError("custom_nodes must be a list of node specs")
            for spec in specs:
                custom_node_entry(spec)
            self.options.custom_nodes = tuple(specs)
        self._object_info = None

    def set_faults(self, changes):
        """Change faults at run time; raises ValueError naming an unknown fault or a wrong type."""
        check_faults(changes)
        self.faults.update(changes)
        self.nudge.set()

    def object_info(self):
        """The recorded ``/object_info`` with this server's models, input files and node classes."""
        if self._object_info is None:
            data = dict(_recorded_catalogue())
            lists = {"checkpoints": sorted(self.options.checkpoints), "loras": sorted(self.options.loras),
                     "upscale_models": sorted(self.options.upscale_models)}
            for kind in ("image", "latent", "video"):
                lists[f"input:{kind}"] = sorted(path for path in self.inputs
                                                if "/" not in path and _content_kind(path) == kind)
            for (class_type, section, name), folder in _listed_inputs().items():
                if class_type in data:
                    node = data[class_type] = copy.deepcopy(data[class_type])
                    spec = node["input"][section][name]
                    node["input"][section][name] = _with_choices(spec, lists[folder])
            for class_type in self.options.removed_nodes:
                data.pop(class_type, None)
            for spec in self.options.custom_nodes:
                data[spec["class"]] = custom_node_entry(spec)
            self._object_info = data
        return self._object_info

    @property
    def aliases(self):
        """Custom node class -> the stock class it behaves like."""
        return {spec["class"]: spec["behaves_like"] for spec in self.options.custom_nodes if spec.get("behaves_like")}

    def stats(self):
        return {"submissions": dict(self.submissions), "executions": dict(self.executions),
                "rejected": self.rejected, "loaded_checkpoint": self.loaded_checkpoint,
                "checkpoint_loads": self.checkpoint_loads, "restarts": self.restarts,
                "queue_remaining": self.queue_remaining, "running": self.running.prompt_id if self.running else None,
                "pending": [item.prompt_id for item in self.pending], "history_size": len(self.history),
                "websockets": len(self.sockets), "faults": dict(self.faults), "stalled": self.stalled,
                "uploads": self.uploads, "input_files": len(self.inputs), "previews_sent": self.previews_sent,
                "recent_previews": list(self.recent_previews),
                "step_time": self.options.step_time, "load_time": self.options.load_time}

    # --- files --------------------------------------------------------------------------

    def stored(self, folder, path):
        """The file at ``path`` in ComfyUI's ``input``, ``output`` or ``temp`` folder, or None."""
        return self.inputs.get(path) if folder == "input" else self.files.get((folder, path))

    def _file_exists(self, folder, path):
        return self.stored(folder, path) is not None

    def upload(self, data, *, filename, subfolder="", overwrite=False, folder="input"):
        """ComfyUI's ``image_upload``: the name it stored the file under, None when the path leaves the folder.

        Without ``overwrite`` an existing name keeps its file: the same bytes give the same name
        back, other bytes a new name (``name (1).png``).
        """
        path = _folder_path(subfolder, filename)
        if path is None:
            return None
        directory, _, base = path.rpartition("/")
        stem, extension = posixpath.splitext(base)
        name, counter = filename, 1
        digest = hashlib.sha256(data).hexdigest()
        while not overwrite and self.stored(folder, path) is not None:
            if self.stored(folder, path).digest == digest:
                return name
            name = f"{stem} ({counter}){extension}"
            path = posixpath.join(directory, name) if directory else name
            counter += 1
        self._put(folder, path, data)
        self.uploads += 1
        return name

    def _put(self, folder, path, data):
        stored = _stored(data)
        if folder == "input":
            if path not in self.inputs and "/" not in path:
                self._object_info = None  # LoadImage lists the files at the top of input/
            self.inputs[path] = stored
            return
        self.files[(folder, path)] = stored
        self.files.move_to_end((folder, path))
        while len(self.files) > self.options.max_files:
            self.files.popitem(last=False)

    def apply_mask(self, data, original_ref):
        """``/upload/mask``'s save: the original image with the uploaded image's alpha, or None to store nothing.

        As in ComfyUI, an original that cannot be found (or a ref that leaves its folder) stores nothing.
        """
        filename, kind = _annotated(str(original_ref.get("filename") or ""), original_ref.get("type", "output"))
        if not filename or filename[0] == "/" or ".." in filename or kind not in VIEW_TYPES:
            return None
        path = _folder_path(original_ref.get("subfolder", ""), filename)
        original = self.stored(kind, path) if path else None
        if original is None:
            return None
        with Image.open(io.BytesIO(original.data)) as image, Image.open(io.BytesIO(data)) as mask:
            metadata = PngImagePlugin.PngInfo()
            for key, value in getattr(image, "text", {}).items():
                metadata.add_text(key, value)
            combined = image.convert("RGBA")
            combined.putalpha(mask.convert("RGBA").getchannel("A"))
            buffer = io.BytesIO()
            combined.save(buffer, format="PNG", pnginfo=metadata, compress_level=4)
        return buffer.getvalue()

    # --- websocket messaging ------------------------------------------------------------

    def _drop_dice(self):
        return self.faults["drop_websockets"] or (self.faults["ws_drop_rate"]
                                                  and self.rng.random() < self.faults["ws_drop_rate"])

    async def _socket_to_send_on(self, sid):
        """The socket of ``sid``, or ``None``: there is none, or the fault dice dropped it just now."""
        socket = self.sockets.get(sid) if sid else None
        if socket is None:
            return None
        if self._drop_dice():
            self.sockets.pop(sid, None)
            await socket.close()
            return None
        return socket

    async def _send(self, kind, data, sid):
        socket = await self._socket_to_send_on(sid)
        if socket is None:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await socket.send_str(_frame(kind, data))

    def _wants_metadata(self, sid):
        socket = self.sockets.get(sid) if sid else None
        return bool(socket is not None and socket.get("feature_flags", {}).get("supports_preview_metadata"))

    async def _send_preview(self, sid, prompt_id, node_id, jpeg):
        """One binary preview frame: type 4 with metadata when the socket asked for it, else legacy type 1."""
        socket = await self._socket_to_send_on(sid)
        if socket is None:
            return
        if self._wants_metadata(sid):
            metadata = json.dumps({"node_id": node_id, "prompt_id": prompt_id, "display_node_id": node_id,
                                   "parent_node_id": None, "real_node_id": node_id,
                                   "image_type": "image/jpeg"}).encode()
            frame = struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(metadata)) + metadata + jpeg
        else:
            frame = struct.pack(">II", PREVIEW_IMAGE, JPEG) + jpeg
        with contextlib.suppress(ConnectionError, RuntimeError):
            sent_at = time.time()
            await socket.send_bytes(frame)
            self.previews_sent += 1
            self.recent_previews.append([prompt_id, sent_at])

    async def _broadcast_status(self):
        message = _frame("status", {"status": {"exec_info": {"queue_remaining": self.queue_remaining}}})
        for socket in list(self.sockets.values()):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await socket.send_str(message)

    async def _close_sockets(self):
        sockets, self.sockets = list(self.sockets.values()), {}
        for socket in sockets:
            with contextlib.suppress(Exception):
                await socket.close()

    # --- queue --------------------------------------------------------------------------

    def submit(self, body):
        """Handle a ``POST /prompt`` body: ``(status, json)`` exactly as ComfyUI answers."""
        if "number" in body:
            number = float(body["number"])
        else:
            number = -self.number if body.get("front") else self.number
            self.number += 1
        if "prompt" not in body:
            error = {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided",
                     "extra_info": {}}
            self.rejected += 1
            return 400, {"error": error, "node_errors": {}}
        prompt = body["prompt"]
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        result = validate_prompt(prompt, self.object_info(), body.get("partial_execution_targets"),
                                 custom_checks=file_exists_check(self._file_exists))
        extra_data = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        if not result.ok:
            self.rejected += 1
            return 400, result.body()
        extra_data["create_time"] = _now_ms()
        self.sequence += 1
        self.pending.append(QueueItem(number, prompt_id, prompt, extra_data, result.outputs, self.sequence))
        self.submissions[prompt_id] += 1
        self.wakeup.set()
        return 200, {"prompt_id": prompt_id, "number": number, "node_errors": result.node_errors}

    def _take_next(self):
        if not self.pending:
            return None
        item = min(self.pending, key=lambda entry: (entry.number, entry.sequence))
        self.pending.remove(item)
        return item

    def delete_pending(self, prompt_ids):
        before = len(self.pending)
        self.pending = [item for item in self.pending if item.prompt_id not in set(prompt_ids)]
        return before != len(self.pending)

    def interrupt(self, prompt_id=None):
        if self.running and (prompt_id is None or prompt_id == self.running.prompt_id):
            self.interrupt_requested = True
            self.nudge.set()

    def history_page(self, *, max_items=None, offset=-1):
        """ComfyUI's ``get_history``: oldest first; ``max_items`` alone gives the newest N."""
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        out = {}
        for position, key in enumerate(self.history):
            if position >= offset:
                out[key] = self.history[key]
                if max_items is not None and len(out) >= max_items:
                    break
        return out

    def _store_history(self, item, *, outputs, status_str, messages, meta):
        if item.prompt_id not in self.history:
            while len(self.history) >= self.options.history_max:
                self.history.pop(next(iter(self.history)))
        self.history[item.prompt_id] = {
            "prompt": item.as_list(), "outputs": outputs,
            "status": {"status_str": status_str, "completed": status_str == "success", "messages": messages},
            "meta": meta}

    # --- execution ----------------------------------------------------------------------

    async def _worker(self):
        while True:
            item = self._take_next()
            if item is None:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            self.running = item
            self.interrupt_requested = False
            await self._broadcast_status()
            try:
                await self._execute(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in the simulator must not stop the queue
                logger.exception("simulator failed executing %s", item.prompt_id)
                error = {"prompt_id": item.prompt_id, "node_id": None, "node_type": None, "executed": [],
                         "exception_message": str(exc), "exception_type": type(exc).__name__, "traceback": [],
                         "current_inputs": {}, "current_outputs": [], "timestamp": _now_ms()}
                await self._send("execution_error", error, item.extra_data.get("client_id"))
                self._store_history(item, outputs={}, status_str="error", messages=[["execution_error", error]],
                                    meta={})
            self.running = None
            self.running_client_id = None
            self.last_node_id = None
            self.stalled = None
            await self._broadcast_status()
            await self._send("executing", {"node": None, "prompt_id": item.prompt_id},
                             item.extra_data.get("client_id"))

    @staticmethod
    def _execution_order(prompt, outputs, catalogue, cached=()):
        """The order ComfyUI's ExecutionList runs nodes: a ready node feeding an output soonest goes first."""
        pending, blocking, needs = {}, {}, {}
        for output_id in outputs:
            stack = [output_id]
            while stack:
                node_id = stack.pop()
                if node_id in pending:
                    continue
                pending[node_id] = True
                blocking.setdefault(node_id, set())
                needs.setdefault(node_id, set())
                for value in prompt[node_id].get("inputs", {}).values():
                    if isinstance(value, list) and len(value) == 2 and value[0] in prompt and value[0] not in cached:
                        stack.append(value[0])
                        needs[node_id].add(value[0])
                        blocking.setdefault(value[0], set()).add(node_id)

        def is_output(node_id):
            return catalogue[prompt[node_id]["class_type"]].get("output_node") is True

        def pick(ready):
            for node_id in ready:
                if is_output(node_id):
                    return node_id
            for node_id in ready:
                if any(is_output(b) for b in blocking[node_id]):
                    return node_id
            for node_id in ready:
                if any(is_output(b2) for b in blocking[node_id] for b2 in blocking[b]):
                    return node_id
            return ready[0]

        order, done = [], set()
        while pending:
            node_id = pick([n for n in pending if needs[n] <= done])  # validation refuses cycles
            del pending[node_id]
            done.add(node_id)
            order.append(node_id)
        return order

    @staticmethod
    def _signatures(prompt, order, graph):
        """Each node's cache key: class, widget values, upstream keys and the bytes of the files it reads."""
        signatures = {}
        for node_id in order:
            node = prompt[node_id]
            parts = [node["class_type"], graph.file_signature(node_id)]
            for name, value in sorted(node.get("inputs", {}).items()):
                if isinstance(value, list) and len(value) == 2 and value[0] in signatures:
                    parts.append((name, signatures[value[0]], value[1]))
                else:
                    parts.append((name, json.dumps(value, sort_keys=True)))
            signatures[node_id] = hashlib.sha1(repr(parts).encode()).hexdigest()
        return signatures

    async def _execute(self, item):
        prompt, prompt_id, sid = item.prompt, item.prompt_id, item.extra_data.get("client_id")
        self.executions[prompt_id] += 1
        self.running_client_id = sid
        catalogue = self.object_info()
        graph = Graph(prompt, catalogue=catalogue, files=self.stored, aliases=self.aliases,
                      max_pixels=self.options.max_pixels)
        messages = []

        async def announce(kind, data, keep=False):
            if keep:
                messages.append([kind, data])
            await self._send(kind, data, sid)

        await announce("execution_start", {"prompt_id": prompt_id, "timestamp": _now_ms()}, keep=True)
        signatures = self._signatures(prompt, self._execution_order(prompt, item.outputs, catalogue), graph)
        cached = [node_id for node_id in prompt if self.node_cache.get(node_id) == signatures.get(node_id)
                  and (not catalogue[prompt[node_id]["class_type"]].get("output_node")
                       or node_id in self.output_cache)]
        cached_outputs = [node_id for node_id in item.outputs if node_id in cached]
        order = self._execution_order(prompt, [o for o in item.outputs if o not in cached], catalogue, cached)
        await announce("execution_cached", {"nodes": cached, "prompt_id": prompt_id, "timestamp": _now_ms()},
                       keep=True)
        run = _Run(item, graph, announce,
                   fail=bool(self.faults["execution_error_rate"]
                             and self.rng.random() < self.faults["execution_error_rate"]),
                   stall=bool(self.faults["stall_rate"] and self.rng.random() < self.faults["stall_rate"]),
                   previews=item.extra_data.get("preview_method") not in (None, "", "none"),
                   renderer=Renderer(graph.read))
        executed, outputs, meta = [], {}, {}
        current = None
        try:
            for node_id in cached_outputs:  # cached outputs are announced again with their earlier files
                ui = self.output_cache[node_id]
                await announce("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                            "prompt_id": prompt_id})
                outputs[node_id] = ui
                meta[node_id] = {"node_id": node_id, "display_node": node_id, "parent_node": None,
                                 "real_node_id": node_id}
                await announce("progress_state", run.node_state(node_id, 1, 1, "finished"))
            if run.stall and not any(graph.behaviour(node_id) in SAMPLERS for node_id in order):
                await self._hang(prompt_id)  # nothing to hang in: it hangs before its first node
            for node_id in order:
                class_type = prompt[node_id]["class_type"]
                if self.interrupt_requested:
                    raise _Interrupted()
                current = (node_id, class_type)
                self.last_node_id = node_id
                await announce("progress_state", run.node_state(node_id, 0.0, 1.0, "running"))
                await announce("executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id})
                try:
                    ui, final_state = await self._run_node(run, node_id)
                except (NodeFailed, _Interrupted, asyncio.CancelledError):
                    raise
                except Exception as exc:  # an input the simulator cannot handle fails that node, as it would
                    logger.exception("simulated node %s (%s) failed", node_id, class_type)
                    raise NodeFailed(type(exc).__name__, str(exc))
                executed.append(node_id)
                if ui is not None:
                    await announce("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                                "prompt_id": prompt_id})
                    outputs[node_id] = ui
                    self.output_cache[node_id] = ui
                    meta[node_id] = {"node_id": node_id, "display_node": node_id, "parent_node": None,
                                     "real_node_id": node_id}
                await announce("progress_state", run.node_state(node_id, *final_state, "finished"))
                self.node_cache[node_id] = signatures[node_id]
        except _Interrupted:
            node_id, class_type = current or (None, None)
            await announce("execution_interrupted", {"prompt_id": prompt_id, "node_id": node_id,
                                                     "node_type": class_type, "executed": executed,
                                                     "timestamp": _now_ms()}, keep=True)
            self._store_history(item, outputs={}, status_str="error", messages=messages, meta={})
            return
        except NodeFailed as failure:
            node_id, class_type = current
            self.node_cache.pop(node_id, None)
            inputs = {name: [value] for name, value in prompt[node_id].get("inputs", {}).items()
                      if not isinstance(value, list)}
            await announce("execution_error", {
                "prompt_id": prompt_id, "node_id": node_id, "node_type": class_type, "executed": executed,
                "exception_message": failure.exception_message, "exception_type": failure.exception_type,
                "traceback": [f'  File "<SIMULATOR>/generation/comfyui/simulator.py", in {class_type}\n'],
                "current_inputs": inputs, "current_outputs": list(reversed(order)), "timestamp": _now_ms()},
                keep=True)
            self._store_history(item, outputs={}, status_str="error", messages=messages, meta={})
            return
        # ComfyUI's cache keeps only the nodes of the last prompt
        self.node_cache = {node_id: signatures[node_id] for node_id in signatures}
        self.output_cache = {node_id: ui for node_id, ui in self.output_cache.items() if node_id in outputs}
        await announce("execution_success", {"prompt_id": prompt_id, "timestamp": _now_ms()}, keep=True)
        self._store_history(item, outputs=outputs, status_str="success", messages=messages, meta=meta)

    async def _pause(self, seconds):
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def _hang(self, prompt_id):
        """The stall fault: no frame, no progress, until interrupted or ``stall_rate`` is set back to 0."""
        self.stalled = prompt_id
        while self.faults["stall_rate"] and not self.interrupt_requested:
            self.nudge.clear()
            await self.nudge.wait()
        self.stalled = None
        if self.interrupt_requested:
            raise _Interrupted()

    async def _run_node(self, run, node_id):
        """Simulate one node; returns (ui output or None, (value, max) of its final progress state)."""
        graph = run.graph
        inputs = run.item.prompt[node_id].get("inputs", {})
        kind = graph.behaviour(node_id)
        if isinstance(inputs.get(CHECKPOINT_INPUT), str):
            await self._load_checkpoint(inputs[CHECKPOINT_INPUT])
        steps = graph.sampler_steps(node_id)
        if steps is not None:
            return None, await self._sample(run, node_id, steps)
        graph.outputs(node_id)  # sizes, files and memory are checked when the node runs, as in ComfyUI
        await self._pause(self.options.node_time)
        if kind in SAVE_NODES:
            return await self._save(run, node_id, kind), (1.0, 1.0)
        return None, (1.0, 1.0)

    async def _load_checkpoint(self, name):
        if name in self.options.failing_checkpoints:
            raise NodeFailed("safetensors._safetensors_rust.SafetensorError",
                             "Error while deserializing header: header too large\n")
        if name not in self.options.checkpoints:
            raise NodeFailed("FileNotFoundError", f"Model in folder 'checkpoints' with filename '{name}' not found.")
        if name != self.loaded_checkpoint:
            await self._pause(self.options.load_time)
            self.loaded_checkpoint = name
            self.checkpoint_loads += 1

    async def _sample(self, run, node_id, steps):
        """A sampler's steps: per step ``progress_state`` and ``progress`` (and a preview), in the recorded order."""
        prompt_id, sid = run.item.prompt_id, run.item.extra_data.get("client_id")
        latent = run.graph.sampled(node_id)
        fail_at = self.rng.randint(1, steps) if run.fail and steps and not run.failed_once else None
        run.failed_once = run.failed_once or fail_at is not None
        stall_after = max(1, min(int(self.faults["stall_at_step"]), steps)) if run.stall and steps else None
        loop = asyncio.get_running_loop()
        for step in range(1, steps + 1):
            await self._pause(self.options.step_time)
            if self.interrupt_requested:
                raise _Interrupted()
            if step == fail_at:
                raise NodeFailed("RuntimeError", "Simulated failure (execution_error_rate fault)")
            await run.announce("progress_state", run.node_state(node_id, step, steps, "running"))
            progress = {"value": step, "max": steps, "prompt_id": prompt_id, "node": node_id}
            if not run.previews:
                await run.announce("progress", progress)
            else:
                jpeg = await loop.run_in_executor(None, lambda step=step: preview_jpeg(
                    run.renderer, latent, step=step, steps=steps, max_size=self.options.preview_size))
                if self._wants_metadata(sid):  # recorded: the frame with metadata comes before "progress"
                    await self._send_preview(sid, prompt_id, node_id, jpeg)
                    await run.announce("progress", progress)
                else:
                    await run.announce("progress", progress)
                    await self._send_preview(sid, prompt_id, node_id, jpeg)
            if step == stall_after:
                run.stall = False
                await self._hang(prompt_id)
        return steps, steps

    # --- outputs ------------------------------------------------------------------------

    def _next_counter(self, key):
        self.counters[key] = self.counters.get(key, 0) + 1
        return self.counters[key]

    async def _save(self, run, node_id, kind):
        """SaveImage / PreviewImage (a PNG per batch item) or SaveAnimatedWEBP / SaveAnimatedPNG (one file)."""
        inputs = run.graph.inputs(node_id)
        images = run.graph.images(node_id)
        if images is None:
            raise NodeFailed("TypeError", "'NoneType' object is not subscriptable")
        if kind == "PreviewImage":
            subfolder, folder = "", "temp"
            base = "ComfyUI_temp_" + "".join(self.rng.choice(string.ascii_lowercase) for _ in range(5))
        else:
            prefix = str(inputs.get("filename_prefix", "ComfyUI"))
            subfolder, _, base = prefix.rpartition("/")
            if _folder_path(subfolder, "x") is None or prefix.startswith("/"):
                raise NodeFailed("Exception", "**** ERROR: Saving image outside the output folder is not allowed."
                                              f"\n full_output_folder: {subfolder}\n         output_dir: output")
            folder = "output"
        extra_pnginfo = run.item.extra_data.get("extra_pnginfo") if folder == "output" else None
        prompt = run.item.prompt
        loop = asyncio.get_running_loop()
        saved = []
        if kind in ("SaveAnimatedWEBP", "SaveAnimatedPNG"):
            counter = self._next_counter((folder, subfolder, base))
            extension, fmt = ("webp", "WEBP") if kind == "SaveAnimatedWEBP" else ("png", "PNG")
            options = {"fps": float(inputs.get("fps", 6.0))}
            if fmt == "WEBP":
                options.update(lossless=bool(inputs.get("lossless", True)), quality=int(inputs.get("quality", 80)),
                               method=WEBP_METHODS.get(inputs.get("method"), 4))
            else:
                options["compress_level"] = int(inputs.get("compress_level", 4))
            filename = f"{base}_{counter:05}_.{extension}"
            data = await loop.run_in_executor(None, lambda: encode_animated(
                [run.renderer.image(images, index) for index in range(images.batch)], fmt=fmt, prompt=prompt,
                extra_pnginfo=extra_pnginfo, **options))
            self._put(folder, posixpath.join(subfolder, filename) if subfolder else filename, data)
            saved.append({"filename": filename, "subfolder": subfolder, "type": folder})
            return {"images": saved, "animated": [True]} if images.batch > 1 else {"images": saved}
        for index in range(images.batch):
            counter = self._next_counter((folder, subfolder, base))
            filename = f"{base.replace('%batch_num%', str(index))}_{counter:05}_.png"
            data = await loop.run_in_executor(None, lambda index=index: encode_png(
                run.renderer.image(images, index), prompt=prompt, extra_pnginfo=extra_pnginfo))
            self._put(folder, posixpath.join(subfolder, filename) if subfolder else filename, data)
            saved.append({"filename": filename, "subfolder": subfolder, "type": folder})
        return {"images": saved}


@dataclass
class _Run:
    """One execution's state: the graph, how to announce frames, the fault dice already thrown."""

    item: QueueItem
    graph: Graph
    announce: object
    fail: bool
    stall: bool
    previews: bool
    renderer: Renderer
    failed_once: bool = False
    states: dict = field(default_factory=dict)

    def node_state(self, node_id, value, maximum, state):
        """A ``progress_state`` payload: every node's state so far, this one updated."""
        prompt_id = self.item.prompt_id
        self.states[node_id] = {"value": value, "max": maximum, "state": state, "node_id": node_id,
                                "prompt_id": prompt_id, "display_node_id": node_id, "parent_node_id": None,
                                "real_node_id": node_id}
        return {"prompt_id": prompt_id, "nodes": copy.deepcopy(self.states)}


class SimulatorServer:
    """Runs a :class:`Simulator`'s aiohttp application on ``host:port`` (port 0 picks a free one)."""

    def __init__(self, simulator, host="127.0.0.1", port=0):
        self.simulator = simulator
        self.host = host
        self.port = port
        self.runner = None
        self.site = None
        self.refusing_until = 0.0
        self.tasks = set()  # background tasks (outages), kept referenced until done
        simulator.server = self

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    async def start(self):
        self.runner = web.AppRunner(build_app(self.simulator), access_log=None, handle_signals=False)
        await self.runner.setup()
        await self._listen()
        self.simulator.start()

    async def _listen(self):
        self.site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True)
        await self.site.start()
        self.port = self.site._server.sockets[0].getsockname()[1]

    def schedule_outage(self, seconds, *, delay=0.0):
        """Start :meth:`refuse_for` in the background (``delay`` lets a control reply go out first)."""

        async def outage():
            await asyncio.sleep(delay)
            await self.refuse_for(seconds)

        task = asyncio.get_running_loop().create_task(outage())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def refuse_for(self, seconds):
        """Stop listening (new connections are refused) and drop sockets for ``seconds``, then listen again."""
        self.refusing_until = time.monotonic() + seconds
        await self.site.stop()
        await self.simulator._close_sockets()
        await asyncio.sleep(seconds)
        self.refusing_until = 0.0
        self.simulator.faults["refuse_connections"] = 0.0
        await self._listen()

    @property
    def refusing(self):
        return time.monotonic() < self.refusing_until

    async def stop(self):
        await self.simulator.stop()
        if self.runner:
            await self.runner.cleanup()


# --- HTTP application ------------------------------------------------------------------------


def _empty(status=200):
    return web.Response(status=status)


async def _json_body(request):
    """The request's JSON object, or ``{}`` for an empty body (ComfyUI's POSTs accept both)."""
    raw = await request.read()
    if not raw.strip():
        return {}
    return json.loads(raw)


def _file_response(request, stored, filename):
    """A stored file as ComfyUI's FileResponse serves it: type by extension, ETag, Last-Modified, ranges."""
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if content_type in ("text/html", "application/xhtml+xml", "text/javascript", "text/css"):
        content_type = "application/octet-stream"  # ComfyUI forces these to download
    headers = {"Content-Disposition": f'filename="{filename}"', "Content-Security-Policy": CONTENT_SECURITY_POLICY,
               "Etag": stored.etag, "Last-Modified": stored.last_modified, "Accept-Ranges": "bytes"}
    data, status = stored.data, 200
    if "Range" in request.headers:
        try:
            start, stop, _ = request.http_range.indices(len(data))
        except ValueError:
            start = stop = 0
        if start >= stop:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
        data, status = data[start:stop], 206
    return web.Response(body=data, status=status, content_type=content_type, headers=headers)


def build_app(simulator):
    sim = simulator
    routes = web.RouteTableDef()

    @web.middleware
    async def refuse_old_connections(request, handler):
        if sim.server is not None and sim.server.refusing:  # keep-alive connections opened before the outage
            request.transport.close()
            return _empty(503)
        return await handler(request)

    @routes.get("/ws")
    async def websocket(request):
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        sim.sockets[sid] = socket  # like ComfyUI, a newer socket with the same sid takes over the frames
        try:
            await socket.send_str(_frame("status", {"status": {"exec_info": {"queue_remaining": sim.queue_remaining}},
                                                    "sid": sid}))
            if sim.faults["drop_websockets"]:
                await socket.close()
                return socket
            if sim.running_client_id == sid and sim.last_node_id is not None:
                await socket.send_str(_frame("executing", {"node": sim.last_node_id}))
            first_message = True
            async for message in socket:
                if message.type == WSMsgType.ERROR:
                    break
                if message.type != WSMsgType.TEXT or not first_message:
                    continue
                try:  # like ComfyUI, only a socket's first (JSON) message can declare feature flags
                    data = json.loads(message.data)
                except ValueError:
                    continue
                first_message = False
                if isinstance(data, dict) and data.get("type") == "feature_flags":
                    socket["feature_flags"] = data.get("data") if isinstance(data.get("data"), dict) else {}
                    await socket.send_str(_frame("feature_flags", SERVER_FEATURES))
        finally:
            if sim.sockets.get(sid) is socket:
                del sim.sockets[sid]
        return socket

    @routes.post("/prompt")
    async def post_prompt(request):
        try:
            body = await _json_body(request)
        except ValueError:
            return web.Response(status=500, text=SERVER_ERROR_BODY)
        status, payload = sim.submit(body)
        if status == 200:
            await sim._broadcast_status()
        if sim.faults["prompt_delay"]:
            await asyncio.sleep(sim.faults["prompt_delay"])
        return web.json_response(payload, status=status)

    @routes.get("/prompt")
    async def get_prompt(request):
        return web.json_response({"exec_info": {"queue_remaining": sim.queue_remaining}})

    @routes.get("/queue")
    async def get_queue(request):
        running = [sim.running.as_list()] if sim.running else []
        return web.json_response({"queue_running": running,
                                  "queue_pending": [item.as_list() for item in sim.pending]})

    @routes.post("/queue")
    async def post_queue(request):
        body = await _json_body(request)
        changed = False
        if body.get("clear"):
            changed = bool(sim.pending)
            sim.pending = []
        if "delete" in body:
            changed = sim.delete_pending(body["delete"]) or changed
        if changed:
            await sim._broadcast_status()
        return _empty()

    @routes.post("/interrupt")
    async def post_interrupt(request):
        try:
            body = await _json_body(request)
        except ValueError:
            body = {}
        sim.interrupt((body or {}).get("prompt_id"))
        return _empty()

    @routes.get("/history")
    async def get_history(request):
        max_items = request.query.get("max_items")
        offset = int(request.query.get("offset", -1))
        return web.json_response(sim.history_page(max_items=int(max_items) if max_items is not None else None,
                                                  offset=offset))

    @routes.get("/history/{prompt_id}")
    async def get_history_entry(request):
        prompt_id = request.match_info["prompt_id"]
        entry = sim.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry else {})

    @routes.post("/history")
    async def post_history(request):
        body = await _json_body(request)
        if body.get("clear"):
            sim.history.clear()
        for prompt_id in body.get("delete", []):
            sim.history.pop(prompt_id, None)
        return _empty()

    @routes.post("/upload/image")
    async def upload_image(request):
        return await _upload(request)

    @routes.post("/upload/mask")
    async def upload_mask(request):
        return await _upload(request, mask=True)

    async def _upload(request, *, mask=False):
        """ComfyUI's ``image_upload``: any bytes are kept; a path leaving the folder or no file is a bare 400."""
        post = await request.post()
        if sim.faults["upload_failures"]:
            sim.faults["upload_failures"] -= 1
            return web.Response(status=500, text=SERVER_ERROR_BODY)
        image = post.get("image")
        if not isinstance(image, web.FileField) or not image.filename:
            return _empty(400)
        folder, subfolder = post.get("type") or "input", post.get("subfolder", "")
        if folder not in VIEW_TYPES or not isinstance(subfolder, str):
            return _empty(400)
        data = image.file.read()
        if mask:
            try:
                original_ref = json.loads(post.get("original_ref"))
                data = sim.apply_mask(data, original_ref) if isinstance(original_ref, dict) else None
            except (TypeError, ValueError, OSError):  # ComfyUI answers these with its plain 500
                return web.Response(status=500, text=SERVER_ERROR_BODY)
        name = sim.upload(data, filename=image.filename, subfolder=subfolder, folder=folder,
                          overwrite=post.get("overwrite") in ("true", "1")) if data is not None else image.filename
        if name is None:
            return _empty(400)
        return web.json_response({"name": name, "subfolder": subfolder, "type": folder})

    @routes.get("/view")
    async def view(request):
        filename = request.query.get("filename")
        if not filename:
            return _empty(404)
        filename, kind = _annotated(filename, request.query.get("type", "output"))
        subfolder = request.query.get("subfolder", "")
        if not filename or filename[0] == "/" or ".." in filename or kind not in VIEW_TYPES:
            return _empty(400)
        if ".." in subfolder.split("/") or subfolder.startswith("/"):
            return _empty(403)
        if sim.faults["view_delay"]:
            await asyncio.sleep(sim.faults["view_delay"])
        if sim.faults["view_fail_rate"] and sim.rng.random() < sim.faults["view_fail_rate"]:
            return web.Response(status=500, text=SERVER_ERROR_BODY)
        filename = posixpath.basename(filename)
        stored = sim.stored(kind, _folder_path(subfolder, filename) or "")
        if stored is None:
            return _empty(404)
        preview = request.query.get("preview")
        if preview:
            fmt, _, quality = preview.partition(";")
            if fmt in ("webp", "jpeg"):
                image = Image.open(io.BytesIO(stored.data)).convert("RGB")
                buffer = io.BytesIO()
                image.save(buffer, format=fmt.upper(), quality=int(quality or 90))
                return web.Response(body=buffer.getvalue(), content_type=f"image/{fmt}",
                                    headers={"Content-Disposition": f'filename="{filename}"'})
        return _file_response(request, stored, filename)

    @routes.get("/object_info")
    async def object_info(request):
        return web.json_response(sim.object_info())

    @routes.get("/object_info/{node_class}")
    async def object_info_node(request):
        node_class = request.match_info["node_class"]
        catalogue = sim.object_info()
        return web.json_response({node_class: catalogue[node_class]} if node_class in catalogue else {})

    @routes.get("/system_stats")
    async def system_stats(request):
        data = json.loads(_SYSTEM_STATS.read_text())
        data["system"]["argv"] = ["manage.py", "comfyui_simulator", "--port", str(request.url.port or "")]
        return web.json_response(data)

    @routes.get("/models")
    async def model_folders(request):
        return web.json_response(list(MODEL_FOLDERS))

    @routes.get("/models/{folder}")
    async def model_folder(request):
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return _empty(404)
        files = {"checkpoints": sim.options.checkpoints, "loras": sim.options.loras,
                 "upscale_models": sim.options.upscale_models}.get(folder, ())
        return web.json_response(sorted(files))

    @routes.get("/embeddings")
    async def embeddings(request):
        return web.json_response([])

    @routes.get("/features")
    async def features(request):
        return web.json_response(SERVER_FEATURES)

    # --- control API (not ComfyUI): faults, restart, statistics ---------------------------

    @routes.get("/_simulator/stats")
    async def control_stats(request):
        return web.json_response(sim.stats())

    @routes.get("/_simulator/inputs")
    async def control_inputs(request):
        return web.json_response(sorted(sim.inputs))

    @routes.get("/_simulator/faults")
    async def control_get_faults(request):
        return web.json_response(sim.faults)

    @routes.post("/_simulator/faults")
    async def control_set_faults(request):
        body = await _json_body(request)
        try:
            sim.set_faults(body)
        except ValueError as exc:
            return web.json_response({"error": str(exc), "known": sorted(FAULT_DEFAULTS)}, status=400)
        if body.get("drop_websockets"):
            await sim._close_sockets()
        if body.get("refuse_connections") and sim.server is not None:
            sim.server.schedule_outage(float(body["refuse_connections"]), delay=0.01)  # answer first
        return web.json_response(sim.faults)

    @routes.post("/_simulator/config")
    async def control_config(request):
        body = await _json_body(request)
        try:
            sim.configure(body)
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(sim.stats())

    @routes.post("/_simulator/drop_websockets")
    async def control_drop_websockets(request):
        count = len(sim.sockets)
        await sim._close_sockets()
        return web.json_response({"dropped": count})

    @routes.post("/_simulator/restart")
    async def control_restart(request):
        await sim.restart()
        return web.json_response(sim.stats())

    @routes.post("/_simulator/reset")
    async def control_reset(request):
        await sim.reset()
        return web.json_response(sim.stats())

    app = web.Application(middlewares=[refuse_old_connections], client_max_size=MAX_UPLOAD_SIZE)
    app.add_routes(routes)
    # ComfyUI serves every route under /api too
    for route in list(routes):
        if not route.path.startswith("/_simulator"):
            app.router.add_route(route.method, "/api" + route.path, route.handler)
    return app


async def serve(options, *, host="127.0.0.1", port=0, on_ready=None, stop_event=None):
    """Run a simulator until ``stop_event`` is set (or forever); ``on_ready(url)`` once it listens."""
    server = SimulatorServer(Simulator(options), host, port)
    await server.start()
    if server.simulator.faults.get("refuse_connections"):
        server.schedule_outage(float(server.simulator.faults["refuse_connections"]))
    if on_ready:
        on_ready(server.url)
    try:
        await (stop_event.wait() if stop_event else asyncio.Event().wait())
    finally:
        await server.stop()
