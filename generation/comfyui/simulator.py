"""A ComfyUI-compatible server for development and tests — never a production fallback.

It speaks the protocol recorded from ComfyUI 0.8.0 (``tests/fixtures/comfyui-protocol/``):
``POST /prompt`` validated with :mod:`generation.comfyui.validation` (the same code the
workflow builder uses), one prompt at a time in ascending ``number`` order, per-step
``progress`` frames, ``/history``, ``/queue``, ``/interrupt``, ``/view``, ``/object_info``,
``/system_stats``, ``/models`` and ``/ws``, every route also under ``/api``. Images are
deterministic placeholders drawn with Pillow from (prompt, seed, size, batch index).

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
import random
import string
import time
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

from aiohttp import WSMsgType, web
from PIL import Image, ImageDraw, PngImagePlugin

from generation.comfyui.object_info import RECORDED_OBJECT_INFO
from generation.comfyui.validation import file_exists_check, validate_prompt

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINTS = ("tiny-sd15-random.safetensors", "sdxl-base-1.0.safetensors", "dreamshaper-8.safetensors",
                       "fake.safetensors")
DEFAULT_LORAS = ("tiny-lora.safetensors", "styles/watercolor.safetensors", "detail-tweaker.safetensors")
FAILING_CHECKPOINTS = ("fake.safetensors",)  # listed (validation passes) but fails to load, like the recording
MODEL_FOLDERS = ("checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
                 "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models",
                 "latent_upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers",
                 "model_patches", "audio_encoders")
FAULT_DEFAULTS = {
    "execution_error_rate": 0.0,  # share of executions that fail in KSampler with execution_error
    "view_delay": 0.0,  # seconds added to every /view
    "view_fail_rate": 0.0,  # share of /view answered with HTTP 500
    "drop_websockets": False,  # while true: every socket is closed, new ones right after their first frame
    "ws_drop_rate": 0.0,  # share of execution frames that close the socket instead of being sent
    "refuse_connections": 0.0,  # seconds: stop listening (connections refused), then listen again
    "prompt_delay": 0.0,  # seconds before POST /prompt answers, after the prompt is queued (client timeouts)
}
VIEW_TYPES = ("output", "input", "temp")
SERVER_ERROR_BODY = "500 Internal Server Error\n\nServer got itself in trouble"
_SYSTEM_STATS = Path(__file__).with_name("recorded") / "system_stats.json"


@dataclass
class SimulatorOptions:
    step_time: float = 0.05  # seconds per sampler step
    load_time: float = 2.0  # seconds to load a checkpoint other than the loaded one
    node_time: float = 0.0  # seconds for every other executed node
    checkpoints: tuple = DEFAULT_CHECKPOINTS
    loras: tuple = DEFAULT_LORAS
    failing_checkpoints: tuple = FAILING_CHECKPOINTS
    history_max: int = 10000  # ComfyUI's MAXIMUM_HISTORY_SIZE
    max_files: int = 2000  # rendered images kept in memory for /view (oldest dropped)
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


class _NodeFailed(Exception):
    def __init__(self, exception_type, exception_message):
        super().__init__(exception_message)
        self.exception_type = exception_type
        self.exception_message = exception_message


class _Interrupted(Exception):
    pass


def _now_ms():
    return int(time.time() * 1000)


def _frame(kind, data):
    return json.dumps({"type": kind, "data": data})


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


class Simulator:
    """The state of one simulated ComfyUI process and its HTTP/websocket application."""

    def __init__(self, options=None):
        self.options = options or SimulatorOptions()
        self._initial_options = copy.deepcopy(self.options)
        self.faults = {**FAULT_DEFAULTS, **(self.options.faults or {})}
        self.rng = random.Random(self.options.seed)
        self.server = None  # set by SimulatorServer, for refuse_connections
        self._worker_task = None
        self._reset_state(clear_stats=True)
        self._object_info = None

    # --- state --------------------------------------------------------------------------

    def _reset_state(self, *, clear_stats):
        """Forget everything a ComfyUI process keeps in memory (queue, history, cache, loaded model)."""
        self.number = 0
        self.sequence = 0
        self.pending = []
        self.running = None
        self.history = {}
        self.sockets = {}
        self.files = OrderedDict()
        self.counters = {}
        self.node_cache = {}  # node id -> input signature of the last run
        self.output_cache = {}  # output node id -> ui output of the last run
        self.loaded_checkpoint = None
        self.last_node_id = None
        self.running_client_id = None
        self.interrupt_requested = False
        self.wakeup = asyncio.Event()
        if clear_stats:
            self.submissions = Counter()
            self.executions = Counter()
            self.rejected = 0
            self.checkpoint_loads = 0
            self.restarts = 0

    def start(self):
        self._worker_task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self):
        if self._worker_task:
            self._worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker_task
        await self._close_sockets()

    async def restart(self):
        """Like a process restart: queue, history, cache, loaded model and sockets are gone (stats are kept)."""
        await self.stop()
        # output files stay on disk (and their counters continue); temp files are deleted at start-up
        files = OrderedDict((key, stored) for key, stored in self.files.items() if key[0] == "output")
        counters = {key: count for key, count in self.counters.items() if key[0] == "output"}
        self._reset_state(clear_stats=False)
        self.files, self.counters = files, counters
        self.restarts += 1
        self.start()

    async def reset(self):
        """A fresh simulator: initial options, no faults, no statistics (tests call it between cases)."""
        await self.stop()
        self.options = copy.deepcopy(self._initial_options)
        self.faults = {**FAULT_DEFAULTS, **(self.options.faults or {})}
        self.rng = random.Random(self.options.seed)
        self._object_info = None
        self._reset_state(clear_stats=True)
        self.start()

    @property
    def queue_remaining(self):
        return len(self.pending) + (1 if self.running else 0)

    def object_info(self):
        """The recorded ``/object_info`` with the model lists replaced by this simulator's models."""
        if self._object_info is None:
            data = json.loads(RECORDED_OBJECT_INFO.read_text())
            data["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] = sorted(self.options.checkpoints)
            data["LoraLoader"]["input"]["required"]["lora_name"][0] = sorted(self.options.loras)
            self._object_info = data
        return self._object_info

    def stats(self):
        return {"submissions": dict(self.submissions), "executions": dict(self.executions),
                "rejected": self.rejected, "loaded_checkpoint": self.loaded_checkpoint,
                "checkpoint_loads": self.checkpoint_loads, "restarts": self.restarts,
                "queue_remaining": self.queue_remaining, "running": self.running.prompt_id if self.running else None,
                "pending": [item.prompt_id for item in self.pending], "history_size": len(self.history),
                "websockets": len(self.sockets), "faults": dict(self.faults),
                "step_time": self.options.step_time, "load_time": self.options.load_time}

    # --- websocket messaging ------------------------------------------------------------

    async def _send(self, kind, data, sid):
        socket = self.sockets.get(sid) if sid else None
        if socket is None:
            return
        if self.faults["drop_websockets"] or (self.faults["ws_drop_rate"]
                                              and self.rng.random() < self.faults["ws_drop_rate"]):
            self.sockets.pop(sid, None)
            await socket.close()
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await socket.send_str(_frame(kind, data))

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

    def _file_exists(self, folder, path):
        subfolder, _, filename = path.rpartition("/")
        return (folder, subfolder, filename) in self.files

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
            except Exception as exc:  # a graph the simulator cannot run (or a bug) must not stop the queue
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
    def _signatures(prompt, order):
        signatures = {}
        for node_id in order:
            node = prompt[node_id]
            parts = [node["class_type"]]
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
        messages = []

        async def announce(kind, data, keep=False):
            if keep:
                messages.append([kind, data])
            await self._send(kind, data, sid)

        await announce("execution_start", {"prompt_id": prompt_id, "timestamp": _now_ms()}, keep=True)
        signatures = self._signatures(prompt, self._execution_order(prompt, item.outputs, catalogue))
        cached = [node_id for node_id in prompt if self.node_cache.get(node_id) == signatures.get(node_id)
                  and (not catalogue[prompt[node_id]["class_type"]].get("output_node")
                       or node_id in self.output_cache)]
        cached_outputs = [node_id for node_id in item.outputs if node_id in cached]
        order = self._execution_order(prompt, [o for o in item.outputs if o not in cached], catalogue, cached)
        await announce("execution_cached", {"nodes": cached, "prompt_id": prompt_id, "timestamp": _now_ms()},
                       keep=True)
        fail_now = self.faults["execution_error_rate"] and self.rng.random() < self.faults["execution_error_rate"]
        states, executed, outputs, meta = {}, [], {}, {}

        def node_state(node_id, value, maximum, state):
            states[node_id] = {"value": value, "max": maximum, "state": state, "node_id": node_id,
                               "prompt_id": prompt_id, "display_node_id": node_id, "parent_node_id": None,
                               "real_node_id": node_id}
            return {"prompt_id": prompt_id, "nodes": copy.deepcopy(states)}

        current = None
        try:
            for node_id in cached_outputs:  # cached outputs are announced again with their earlier files
                ui = self.output_cache[node_id]
                await announce("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                            "prompt_id": prompt_id})
                outputs[node_id] = ui
                meta[node_id] = {"node_id": node_id, "display_node": node_id, "parent_node": None,
                                 "real_node_id": node_id}
                await announce("progress_state", node_state(node_id, 1, 1, "finished"))
            for node_id in order:
                class_type = prompt[node_id]["class_type"]
                if self.interrupt_requested:
                    raise _Interrupted()
                current = (node_id, class_type)
                self.last_node_id = node_id
                await announce("progress_state", node_state(node_id, 0.0, 1.0, "running"))
                await announce("executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id})
                ui, final_state = await self._run_node(item, node_id, class_type, node_state, announce, fail_now)
                executed.append(node_id)
                if ui is not None:
                    await announce("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                                "prompt_id": prompt_id})
                    outputs[node_id] = ui
                    self.output_cache[node_id] = ui
                    meta[node_id] = {"node_id": node_id, "display_node": node_id, "parent_node": None,
                                     "real_node_id": node_id}
                await announce("progress_state", node_state(node_id, *final_state, "finished"))
                self.node_cache[node_id] = signatures[node_id]
        except _Interrupted:
            node_id, class_type = current or (None, None)
            await announce("execution_interrupted", {"prompt_id": prompt_id, "node_id": node_id,
                                                     "node_type": class_type, "executed": executed,
                                                     "timestamp": _now_ms()}, keep=True)
            self._store_history(item, outputs={}, status_str="error", messages=messages, meta={})
            return
        except _NodeFailed as failure:
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

    async def _run_node(self, item, node_id, class_type, node_state, announce, fail_now):
        """Simulate one node; returns (ui output or None, (value, max) of its final progress state)."""
        inputs = item.prompt[node_id].get("inputs", {})
        if class_type == "CheckpointLoaderSimple":
            name = inputs.get("ckpt_name")
            if name in self.options.failing_checkpoints:
                raise _NodeFailed("safetensors._safetensors_rust.SafetensorError",
                                  "Error while deserializing header: header too large\n")
            if name not in self.options.checkpoints:
                raise _NodeFailed("FileNotFoundError", f"Model in folder 'checkpoints' with filename '{name}' "
                                                       "not found.")
            if name != self.loaded_checkpoint:
                await self._pause(self.options.load_time)
                self.loaded_checkpoint = name
                self.checkpoint_loads += 1
            return None, (1.0, 1.0)
        if class_type == "KSampler":
            steps = int(inputs.get("steps", 1))
            fail_at = self.rng.randint(1, steps) if fail_now else None
            for step in range(1, steps + 1):
                await self._pause(self.options.step_time)
                if self.interrupt_requested:
                    raise _Interrupted()
                if step == fail_at:
                    raise _NodeFailed("RuntimeError", "Simulated failure (execution_error_rate fault)")
                await announce("progress_state", node_state(node_id, step, steps, "running"))
                await announce("progress", {"value": step, "max": steps, "prompt_id": item.prompt_id,
                                            "node": node_id})
            return None, (steps, steps)
        await self._pause(self.options.node_time)
        if class_type in ("SaveImage", "PreviewImage"):
            images = await self._save_images(item, node_id, class_type, inputs)
            return {"images": images}, (1.0, 1.0)
        return None, (1.0, 1.0)

    # --- images -------------------------------------------------------------------------

    def _image_spec(self, prompt, link):
        """Walk upstream from an IMAGE link to (text, seed, width, height, batch, color)."""
        spec = {"text": "", "seed": 0, "width": 64, "height": 64, "batch": 1, "color": None}
        pending, seen = [link], set()
        while pending:
            value = pending.pop()
            if not (isinstance(value, list) and len(value) == 2 and value[0] in prompt) or value[0] in seen:
                continue
            seen.add(value[0])
            node = prompt[value[0]]
            inputs, class_type = node.get("inputs", {}), node.get("class_type")
            if class_type in ("EmptyLatentImage", "EmptyImage"):
                spec["batch"] = int(inputs.get("batch_size", 1))
                if not spec.get("size_locked"):
                    spec["width"], spec["height"] = int(inputs.get("width", 64)), int(inputs.get("height", 64))
                if class_type == "EmptyImage":
                    spec["color"] = int(inputs.get("color", 0))
            elif class_type == "ImageScale" and not spec.get("size_locked"):
                spec["width"], spec["height"], spec["size_locked"] = int(inputs["width"]), int(inputs["height"]), True
            elif class_type == "KSampler":
                spec["seed"] = inputs.get("seed", 0)
                positive = inputs.get("positive")
                if isinstance(positive, list) and positive and positive[0] in prompt:
                    spec["text"] = str(prompt[positive[0]].get("inputs", {}).get("text", ""))
            pending.extend(v for v in inputs.values() if isinstance(v, list))
        return spec

    def _next_counter(self, key):
        self.counters[key] = self.counters.get(key, 0) + 1
        return self.counters[key]

    async def _save_images(self, item, node_id, class_type, inputs):
        spec = self._image_spec(item.prompt, inputs.get("images"))
        if class_type == "SaveImage":
            prefix = str(inputs.get("filename_prefix", "ComfyUI"))
            subfolder, _, base = prefix.rpartition("/")
            if ".." in subfolder.split("/") or prefix.startswith("/"):
                raise _NodeFailed("Exception", "**** ERROR: Saving image outside the output folder is not allowed."
                                               f"\n full_output_folder: {subfolder}\n         output_dir: output")
            kind = "output"
        else:
            subfolder, kind = "", "temp"
            base = "ComfyUI_temp_" + "".join(self.rng.choice(string.ascii_lowercase) for _ in range(5))
        extra_pnginfo = item.extra_data.get("extra_pnginfo") if class_type == "SaveImage" else None
        loop = asyncio.get_running_loop()
        images = []
        for index in range(spec["batch"]):
            counter = self._next_counter((kind, subfolder, base))
            filename = f"{base.replace('%batch_num%', str(index))}_{counter:05}_.png"
            data = await loop.run_in_executor(None, self._render, spec, index, item.prompt, extra_pnginfo)
            self._keep_file((kind, subfolder, filename), data)
            images.append({"filename": filename, "subfolder": subfolder, "type": kind})
        return images

    @staticmethod
    def _render(spec, index, prompt, extra_pnginfo):
        image = render_placeholder(text=spec["text"], seed=spec["seed"], width=spec["width"], height=spec["height"],
                                   index=index, color=spec["color"])
        return encode_png(image, prompt=prompt, extra_pnginfo=extra_pnginfo)

    def _keep_file(self, key, data):
        now = time.time()
        etag = f'"{int(now * 1e9):x}-{len(data):x}"'
        self.files[key] = StoredFile(data, etag, formatdate(now, usegmt=True))
        while len(self.files) > self.options.max_files:
            self.files.popitem(last=False)


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
            async for message in socket:
                if message.type == WSMsgType.ERROR:
                    break
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

    @routes.get("/view")
    async def view(request):
        filename = request.query.get("filename")
        if not filename:
            return _empty(404)
        kind = request.query.get("type", "output")
        subfolder = request.query.get("subfolder", "")
        if filename[0] == "/" or ".." in filename or kind not in VIEW_TYPES:
            return _empty(400)
        if ".." in subfolder.split("/") or subfolder.startswith("/"):
            return _empty(403)
        if sim.faults["view_delay"]:
            await asyncio.sleep(sim.faults["view_delay"])
        if sim.faults["view_fail_rate"] and sim.rng.random() < sim.faults["view_fail_rate"]:
            return web.Response(status=500, text=SERVER_ERROR_BODY)
        stored = sim.files.get((kind, subfolder, filename))
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
        return web.Response(body=stored.data, content_type="image/png",
                            headers={"Content-Disposition": f'filename="{filename}"', "Etag": stored.etag,
                                     "Last-Modified": stored.last_modified})

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
        files = {"checkpoints": sim.options.checkpoints, "loras": sim.options.loras}.get(folder, ())
        return web.json_response(sorted(files))

    @routes.get("/embeddings")
    async def embeddings(request):
        return web.json_response([])

    @routes.get("/features")
    async def features(request):
        return web.json_response({"supports_preview_metadata": True, "max_upload_size": 104857600,
                                  "extension": {"manager": {"supports_v4": True}}})

    # --- control API (not ComfyUI): faults, restart, statistics ---------------------------

    @routes.get("/_simulator/stats")
    async def control_stats(request):
        return web.json_response(sim.stats())

    @routes.get("/_simulator/faults")
    async def control_get_faults(request):
        return web.json_response(sim.faults)

    @routes.post("/_simulator/faults")
    async def control_set_faults(request):
        body = await _json_body(request)
        unknown = sorted(set(body) - set(FAULT_DEFAULTS))
        if unknown:
            return web.json_response({"error": f"unknown faults: {', '.join(unknown)}",
                                      "known": sorted(FAULT_DEFAULTS)}, status=400)
        sim.faults.update(body)
        if body.get("drop_websockets"):
            await sim._close_sockets()
        if body.get("refuse_connections") and sim.server is not None:
            sim.server.schedule_outage(float(body["refuse_connections"]), delay=0.01)  # answer first
        return web.json_response(sim.faults)

    @routes.post("/_simulator/config")
    async def control_config(request):
        body = await _json_body(request)
        for name in ("step_time", "load_time", "node_time"):
            if name in body:
                setattr(sim.options, name, float(body[name]))
        for name in ("checkpoints", "loras", "failing_checkpoints"):
            if name in body:
                setattr(sim.options, name, tuple(body[name]))
                sim._object_info = None
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

    app = web.Application(middlewares=[refuse_old_connections], client_max_size=64 * 1024 * 1024)
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
