"""Generation parameters: defaults, ranges and validation — the one place that says what is valid.

Ranges and option lists come from ComfyUI's ``object_info`` (the recorded 0.8.0 catalogue by
default); checkpoint and LoRA names come from the model registry (active and present). At
dispatch time the workflow builder checks the graph again against the chosen backend's live
``object_info``.
"""

import secrets
from dataclasses import asdict, dataclass, field, fields

from django.conf import settings

from generation.comfyui.object_info import recorded_object_info
from generation.errors import ParamsInvalid
from models_registry.models import AvailableModel, ModelType

SEED_MAX = 18446744073709551615  # ComfyUI's KSampler seed is an unsigned 64-bit int
RANDOM_SEED = -1

SAMPLER_DEFAULTS = {"seed": RANDOM_SEED, "steps": 20, "cfg": 7.0, "sampler_name": "euler",
                    "scheduler": "normal", "denoise": 1.0}
SIZE_PRESETS = [(512, 512), (768, 768), (1024, 1024), (832, 1216), (1216, 832), (896, 1152), (1152, 896),
                (512, 768), (768, 512)]


@dataclass
class LoraParams:
    name: str
    strength_model: float = 1.0
    strength_clip: float = 1.0


@dataclass
class GenerationParams:
    """Validated parameters, with the random seed already drawn."""

    prompt: str
    checkpoint_model: str
    negative_prompt: str = ""
    lora_models: list = field(default_factory=list)
    width: int = 512
    height: int = 512
    batch_size: int = 1
    sampler_params: dict = field(default_factory=lambda: dict(SAMPLER_DEFAULTS))
    webhook_url: str = ""
    checkpoint: AvailableModel | None = None

    def as_fields(self):
        """Keyword arguments for ``GenerationRequest(...)``."""
        # not asdict(): it deep-copies every value, the checkpoint model instance included
        return {item.name: getattr(self, item.name) for item in fields(self)}


class _Errors:
    def __init__(self):
        self.fields = {}

    def add(self, name, message):
        self.fields.setdefault(name, []).append(message)


def _number(errors, name, value, *, kind, minimum, maximum, multiple_of=None):
    if isinstance(value, bool) or value is None or value == "":
        errors.add(name, "This field must be a number." if value is not None else "This field may not be null.")
        return None
    try:
        number = int(value) if kind is int else float(value)
    except (TypeError, ValueError, OverflowError):
        errors.add(name, f"A valid {'integer' if kind is int else 'number'} is required.")
        return None
    if kind is int and isinstance(value, float) and not value.is_integer():
        errors.add(name, "A valid integer is required.")
        return None
    if kind is int and isinstance(value, str) and not value.strip().lstrip("-").isdigit():
        errors.add(name, "A valid integer is required.")
        return None
    if kind is float and number != number:  # NaN
        errors.add(name, "A valid number is required.")
        return None
    if number < minimum or number > maximum:
        errors.add(name, f"Must be between {minimum} and {maximum}.")
        return None
    if multiple_of and number % multiple_of:
        errors.add(name, f"Must be a multiple of {multiple_of}.")
        return None
    return number


def _text(errors, name, value, *, required, max_length):
    if value is None:
        value = ""
    if not isinstance(value, str):
        errors.add(name, "Not a valid string.")
        return None
    value = value.strip()
    if required and not value:
        errors.add(name, "This field is required.")
        return None
    if "\x00" in value:
        errors.add(name, "Null characters are not allowed.")
        return None
    if len(value) > max_length:
        errors.add(name, f"Ensure this field has no more than {max_length} characters.")
        return None
    return value


def offered_models(model_type):
    """Models users may choose: active and present on the last refresh."""
    return AvailableModel.objects.filter(type=model_type, is_active=True, is_present=True)


def validate_params(data, *, object_info=None):
    """Check raw input (API JSON or form data) and return :class:`GenerationParams`.

    Raises :class:`ParamsInvalid` with every problem, keyed by field path
    (``sampler_params.steps``, ``lora_models.1.name``), so callers can show each at its field.
    """
    info = object_info or recorded_object_info()
    limits = settings.GENERATION
    errors = _Errors()
    if not isinstance(data, dict):
        raise ParamsInvalid({"non_field_errors": ["Expected a JSON object."]})
    known = {"prompt", "negative_prompt", "checkpoint_model", "lora_models", "width", "height", "batch_size",
             "sampler_params", "webhook_url"}
    for name in sorted(set(data) - known):
        errors.add(name, "Unknown field.")

    prompt = _text(errors, "prompt", data.get("prompt"), required=True, max_length=limits["MAX_PROMPT_LENGTH"])
    negative = _text(errors, "negative_prompt", data.get("negative_prompt"), required=False,
                     max_length=limits["MAX_PROMPT_LENGTH"])

    checkpoint = None
    checkpoint_name = data.get("checkpoint_model")
    if not isinstance(checkpoint_name, str) or not checkpoint_name.strip():
        errors.add("checkpoint_model", "This field is required.")
    else:
        checkpoint = offered_models(ModelType.CHECKPOINT).filter(name=checkpoint_name.strip()).first()
        if checkpoint is None:
            errors.add("checkpoint_model", f"{checkpoint_name!r} is not an available checkpoint.")

    size_spec = info.input("EmptyLatentImage", "width")
    width = _number(errors, "width", data.get("width", 512), kind=int, minimum=size_spec.minimum,
                    maximum=size_spec.maximum, multiple_of=size_spec.step or 8)
    height = _number(errors, "height", data.get("height", 512), kind=int, minimum=size_spec.minimum,
                     maximum=size_spec.maximum, multiple_of=size_spec.step or 8)
    if width and height and width * height > limits["MAX_PIXELS"]:
        errors.add("width", f"width × height must not exceed {limits['MAX_PIXELS']} pixels.")
    batch_size = _number(errors, "batch_size", data.get("batch_size", 1), kind=int, minimum=1,
                         maximum=limits["MAX_BATCH_SIZE"])

    loras = _validate_loras(errors, data.get("lora_models"), info=info, max_loras=limits["MAX_LORAS"])
    sampler = _validate_sampler(errors, data.get("sampler_params"), info=info)
    webhook = _validate_webhook(errors, data.get("webhook_url"))

    if errors.fields:
        raise ParamsInvalid(errors.fields)
    return GenerationParams(prompt=prompt, negative_prompt=negative, checkpoint_model=checkpoint.name,
                            checkpoint=checkpoint, lora_models=loras, width=width, height=height,
                            batch_size=batch_size, sampler_params=sampler, webhook_url=webhook)


def _validate_loras(errors, raw, *, info, max_loras):
    if raw in (None, ""):
        return []
    if not isinstance(raw, list):
        errors.add("lora_models", "Expected a list of {name, strength_model, strength_clip}.")
        return []
    if len(raw) > max_loras:
        errors.add("lora_models", f"At most {max_loras} LoRAs.")
        return []
    strength = info.input("LoraLoader", "strength_model")
    names = [item.get("name") for item in raw if isinstance(item, dict)]
    offered = set(offered_models(ModelType.LORA).filter(name__in=[n for n in names if isinstance(n, str)])
                  .values_list("name", flat=True))
    loras, seen = [], set()
    for index, item in enumerate(raw):
        prefix = f"lora_models.{index}"
        if not isinstance(item, dict):
            errors.add(prefix, "Expected an object {name, strength_model, strength_clip}.")
            continue
        for name in sorted(set(item) - {"name", "strength_model", "strength_clip"}):
            errors.add(f"{prefix}.{name}", "Unknown field.")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            errors.add(f"{prefix}.name", "This field is required.")
            continue
        if name not in offered:
            errors.add(f"{prefix}.name", f"{name!r} is not an available LoRA.")
            continue
        if name in seen:
            errors.add(f"{prefix}.name", f"{name!r} is listed twice.")
            continue
        seen.add(name)
        values = {}
        for key in ("strength_model", "strength_clip"):
            values[key] = _number(errors, f"{prefix}.{key}", item.get(key, 1.0), kind=float,
                                  minimum=strength.minimum, maximum=strength.maximum)
        loras.append(asdict(LoraParams(name=name, **values)))
    return loras


def _validate_sampler(errors, raw, *, info):
    if raw in (None, ""):
        raw = {}
    if not isinstance(raw, dict):
        errors.add("sampler_params", "Expected an object {seed, steps, cfg, sampler_name, scheduler, denoise}.")
        return {}
    for name in sorted(set(raw) - set(SAMPLER_DEFAULTS)):
        errors.add(f"sampler_params.{name}", "Unknown field.")
    values = {**SAMPLER_DEFAULTS, **{k: v for k, v in raw.items() if k in SAMPLER_DEFAULTS}}
    ks = info.inputs("KSampler")
    out = {}
    seed = values["seed"]
    if seed in (RANDOM_SEED, "-1"):
        out["seed"] = secrets.randbelow(2**53)  # random seeds stay exact in JavaScript too
    else:
        out["seed"] = _number(errors, "sampler_params.seed", seed, kind=int, minimum=0, maximum=SEED_MAX)
    out["steps"] = _number(errors, "sampler_params.steps", values["steps"], kind=int,
                           minimum=ks["steps"].minimum,
                           maximum=min(ks["steps"].maximum, settings.GENERATION["MAX_STEPS"]))
    out["cfg"] = _number(errors, "sampler_params.cfg", values["cfg"], kind=float,
                         minimum=ks["cfg"].minimum, maximum=ks["cfg"].maximum)
    out["denoise"] = _number(errors, "sampler_params.denoise", values["denoise"], kind=float,
                             minimum=ks["denoise"].minimum, maximum=ks["denoise"].maximum)
    for key in ("sampler_name", "scheduler"):
        value = values[key]
        if value not in ks[key].choices:
            errors.add(f"sampler_params.{key}", f"{value!r} is not one of the backend's {key} options.")
            out[key] = None
        else:
            out[key] = value
    return out


def _validate_webhook(errors, raw):
    if raw in (None, ""):
        return ""
    from generation.webhooks import WebhookUrlRefused, check_webhook_url

    if not isinstance(raw, str):
        errors.add("webhook_url", "Not a valid string.")
        return ""
    try:
        return check_webhook_url(raw)
    except WebhookUrlRefused as exc:
        errors.add("webhook_url", str(exc))
        return ""
