"""Reading ComfyUI's ``/object_info``: input types, ranges and option lists.

ComfyUI describes each input as ``[TYPE, {options}]``, or for a choice either
``[[choice, …], {options}]`` (classic) or ``["COMBO", {"options": [choice, …]}]`` (newer
servers). Everything that needs a range or a list of choices asks this module, so both
shapes are handled in one place.
"""

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

RECORDED_OBJECT_INFO = Path(__file__).with_name("recorded") / "object_info-full.json"
# model folder -> the loader input that lists it (the folder names are ComfyUI's, as in /models/<folder>)
MODEL_LIST_INPUTS = {
    "checkpoints": ("CheckpointLoaderSimple", "ckpt_name"),
    "loras": ("LoraLoader", "lora_name"),
    "upscale_models": ("UpscaleModelLoader", "model_name"),
}


@dataclass(frozen=True)
class InputSpec:
    """One input of one node class: its type, its choices (for combos) and its options."""

    name: str
    type: str
    choices: tuple | None
    options: dict
    required: bool

    @property
    def minimum(self):
        return self.options.get("min")

    @property
    def maximum(self):
        return self.options.get("max")

    @property
    def step(self):
        return self.options.get("step")

    @property
    def default(self):
        return self.options.get("default")


def parse_input_spec(name, spec, *, required=True):
    """Normalise one ``/object_info`` input entry into an :class:`InputSpec`."""
    kind = spec[0] if spec else None
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(kind, list):
        return InputSpec(name, "COMBO", tuple(kind), options, required)
    if kind == "COMBO":
        return InputSpec(name, "COMBO", tuple(options.get("options", ())), options, required)
    return InputSpec(name, str(kind), None, options, required)


class ObjectInfo:
    """A backend's node catalogue (the parsed body of ``GET /object_info``).

    ``fetched_at`` is the wall-clock time (epoch seconds) the client fetched it, None for the
    recorded catalogue. Treat it as read-only: the client shares one instance between callers.
    """

    def __init__(self, data, *, fetched_at=None):
        self.data = data
        self.fetched_at = fetched_at

    def has_node(self, class_type):
        return class_type in self.data

    @cached_property
    def node_classes(self):
        """Every node class the backend offers (stock and custom)."""
        return frozenset(self.data)

    def model_lists(self):
        """``{"checkpoints": [...], "loras": [...], "upscale_models": [...]}`` from the loaders' option lists.

        A backend without the loader node (or without the input) has an empty list for that folder.
        """
        lists = {}
        for folder, (class_type, name) in MODEL_LIST_INPUTS.items():
            inputs = self.inputs(class_type) if self.has_node(class_type) else {}
            lists[folder] = list(inputs[name].choices or ()) if name in inputs else []
        return lists

    @cached_property
    def capabilities_digest(self):
        """A hex digest of :attr:`node_classes` and :meth:`model_lists`: equal digests, equal capabilities.

        Lets a caller record a backend's capabilities only when they changed (the digest ignores
        ranges, descriptions and the input-file lists, which change with every upload).
        """
        lists = {folder: sorted(names) for folder, names in self.model_lists().items()}
        payload = json.dumps({"nodes": sorted(self.node_classes), "models": lists}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def node(self, class_type):
        return self.data[class_type]

    def inputs(self, class_type):
        """All inputs of a node class, required first, as ``{name: InputSpec}``."""
        node = self.data[class_type]
        specs = {}
        for section, required in (("required", True), ("optional", False)):
            for name, spec in (node.get("input", {}).get(section) or {}).items():
                specs[name] = parse_input_spec(name, spec, required=required)
        return specs

    def input(self, class_type, name):
        return self.inputs(class_type)[name]

    def choices(self, class_type, name):
        return self.input(class_type, name).choices or ()

    def is_output_node(self, class_type):
        return bool(self.data.get(class_type, {}).get("output_node"))

    def output_types(self, class_type):
        return list(self.data.get(class_type, {}).get("output", []))

    @property
    def checkpoints(self):
        return tuple(self.model_lists()["checkpoints"])

    @property
    def loras(self):
        return tuple(self.model_lists()["loras"])

    @property
    def upscale_models(self):
        return tuple(self.model_lists()["upscale_models"])

    @property
    def samplers(self):
        return self.choices("KSampler", "sampler_name")

    @property
    def schedulers(self):
        return self.choices("KSampler", "scheduler")


@lru_cache(maxsize=1)
def recorded_object_info():
    """The ``/object_info`` recorded from ComfyUI 0.8.0 (all 423 stock nodes): offline ranges and lists."""
    return ObjectInfo(json.loads(RECORDED_OBJECT_INFO.read_text()))
