"""The Generate form: turns posted fields into the submit payload and puts errors back at their fields.

Validation is not repeated here: :func:`generation.params.validate_params` is the one place that
says what is valid. This module only knows the form's shape — which HTML field carries which
parameter — so a ``ParamsInvalid`` path such as ``sampler_params.steps`` or ``lora_models.1.name``
can be shown next to the control that produced it, with everything the person typed kept.
"""

from django.conf import settings

from generation.comfyui.object_info import recorded_object_info
from generation.params import RANDOM_SEED, SAMPLER_DEFAULTS, SIZE_PRESETS, offered_models
from models_registry.models import ModelType

TEXT_FIELDS = ("prompt", "negative_prompt", "checkpoint_model")
SIZE_FIELDS = ("width", "height", "batch_size")
SAMPLER_FIELDS = ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise")
ADVANCED_FIELDS = frozenset(SAMPLER_FIELDS)
LORA_FIELD = "lora"  # checkbox, one per offered LoRA, value = its name


def strength_field(name, which):
    """HTML name of one LoRA's strength input (``which`` is ``model`` or ``clip``)."""
    return f"strength_{which}__{name}"


DEFAULTS = {"prompt": "", "negative_prompt": "", "checkpoint_model": "", "width": 512, "height": 512,
            "batch_size": 1, **{key: value for key, value in SAMPLER_DEFAULTS.items()}, "seed": ""}


class GenerateForm:
    """The values shown in the Generate form, the choices it offers, and its errors.

    ``values`` maps every HTML field to what is shown (typed text is kept verbatim);
    ``loras`` maps each chosen LoRA's name to ``{strength_model, strength_clip}``;
    ``errors`` maps HTML field names (and LoRA names in ``lora_errors``) to messages.
    """

    def __init__(self, data=None, *, initial=None):
        self.is_bound = data is not None
        self.errors = {}
        self.lora_errors = {}
        self.non_field_errors = []
        self.values = {**DEFAULTS, **(initial or {})}
        self.loras = {}
        if initial and initial.get("lora_models"):
            self.loras = {item["name"]: {"strength_model": item.get("strength_model", 1.0),
                                         "strength_clip": item.get("strength_clip", 1.0)}
                          for item in initial["lora_models"] if isinstance(item, dict) and "name" in item}
        self.values.pop("lora_models", None)
        if self.is_bound:
            self.values = {name: data.get(name, "") for name in (*TEXT_FIELDS, *SIZE_FIELDS, *SAMPLER_FIELDS)}
            self.loras = {name: {"strength_model": data.get(strength_field(name, "model"), "1.0"),
                                 "strength_clip": data.get(strength_field(name, "clip"), "1.0")}
                          for name in data.getlist(LORA_FIELD) if name}

    @classmethod
    def from_request(cls, request, *, same_seed=True):
        """A form pre-filled with an earlier request's parameters ("use these settings")."""
        sampler = {**SAMPLER_DEFAULTS, **(request.sampler_params or {})}
        if not same_seed:
            sampler["seed"] = ""
        return cls(initial={"prompt": request.prompt, "negative_prompt": request.negative_prompt,
                            "checkpoint_model": request.checkpoint_model, "width": request.width,
                            "height": request.height, "batch_size": request.batch_size,
                            "lora_models": request.lora_models, **sampler})

    def to_data(self):
        """The payload for :func:`generation.services.submit_generation` (values as typed)."""
        seed = str(self.values.get("seed", "")).strip()
        return {
            "prompt": self.values["prompt"],
            "negative_prompt": self.values["negative_prompt"],
            "checkpoint_model": self.values["checkpoint_model"],
            "width": self.values["width"],
            "height": self.values["height"],
            "batch_size": self.values["batch_size"],
            "lora_models": [{"name": name, **strengths} for name, strengths in self.loras.items()],
            "sampler_params": {
                "seed": seed if seed else RANDOM_SEED,
                **{key: self.values[key] for key in SAMPLER_FIELDS if key != "seed"},
            },
        }

    def add_params_errors(self, fields):
        """Place each ``ParamsInvalid.fields`` entry at the control it came from."""
        chosen = list(self.loras)
        for path, messages in fields.items():
            head, _, rest = path.partition(".")
            if head in (*TEXT_FIELDS, *SIZE_FIELDS):
                self.errors.setdefault(head, []).extend(messages)
            elif head == "sampler_params" and rest in SAMPLER_FIELDS:
                self.errors.setdefault(rest, []).extend(messages)
            elif head == "lora_models" and rest.split(".")[0].isdigit() and int(rest.split(".")[0]) < len(chosen):
                index, _, key = rest.partition(".")
                label = {"strength_model": "Model strength: ", "strength_clip": "CLIP strength: "}.get(key, "")
                self.lora_errors.setdefault(chosen[int(index)], []).extend(label + m for m in messages)
            elif head == "lora_models":
                self.errors.setdefault("lora_models", []).extend(messages)
            else:
                self.non_field_errors.extend(f"{path}: {m}" if path != "non_field_errors" else m for m in messages)

    @property
    def has_errors(self):
        return bool(self.errors or self.lora_errors or self.non_field_errors)

    @property
    def advanced_open(self):
        """Keep "Advanced" open when one of its fields has an error or differs from the defaults."""
        if any(name in ADVANCED_FIELDS for name in self.errors):
            return True
        return any(str(self.values.get(k, "")) != str(DEFAULTS[k]) for k in SAMPLER_FIELDS)

    # --- choices ---------------------------------------------------------------------------

    @property
    def checkpoints(self):
        return list(offered_models(ModelType.CHECKPOINT))

    def lora_rows(self):
        """One row per offered LoRA (plus any chosen one no longer offered, so its error shows)."""
        offered = list(offered_models(ModelType.LORA))
        names = {model.name for model in offered}
        rows = [{"model": model, "name": model.name, "chosen": model.name in self.loras,
                 "strengths": self.loras.get(model.name, {"strength_model": 1.0, "strength_clip": 1.0}),
                 "errors": self.lora_errors.get(model.name, [])} for model in offered]
        rows += [{"model": None, "name": name, "chosen": True, "strengths": strengths,
                  "errors": self.lora_errors.get(name, [])}
                 for name, strengths in self.loras.items() if name not in names]
        return rows

    @property
    def samplers(self):
        return recorded_object_info().samplers

    @property
    def schedulers(self):
        return recorded_object_info().schedulers

    @property
    def size_presets(self):
        return [{"width": w, "height": h, "label": f"{w} × {h}"} for w, h in SIZE_PRESETS]

    @property
    def limits(self):
        info = recorded_object_info()
        strength = info.input("LoraLoader", "strength_model")
        size = info.input("EmptyLatentImage", "width")
        ks = info.inputs("KSampler")
        limits = settings.GENERATION
        return {"max_batch": limits["MAX_BATCH_SIZE"], "max_prompt": limits["MAX_PROMPT_LENGTH"],
                "size_min": size.minimum, "size_max": size.maximum, "size_step": size.step or 8,
                "steps_max": min(ks["steps"].maximum, limits["MAX_STEPS"]),
                "cfg_max": ks["cfg"].maximum, "strength_min": strength.minimum, "strength_max": strength.maximum}
