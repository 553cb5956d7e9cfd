"""Parameter definitions: one declaration per workflow that validates, documents and renders.

A workflow lists its parameters as :class:`Field` objects with dotted names
(``prompt``, ``sampler_params.steps``, ``hires.scale``). :class:`Parameters` turns that list into
the validator (errors keyed by the same dotted paths), the JSON Schema (OpenAPI and
``GET /api/v1/comfyui/workflows/``), the server-rendered form (each kind has a template in
``templates/generation/fields/``) and the request detail (labels and shown values).

Ranges and option lists come from ComfyUI's ``object_info`` (``source=(node class, input)``; the
recorded 0.8.0 catalogue unless the caller passes a backend's), capped by ``settings.GENERATION``
limits (``cap="MAX_STEPS"``). Seeds, models, LoRA lists and input images are kinds of their own,
so random seeds, model references and input files are found generically, without knowing any
particular workflow.
"""

import math
import secrets
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import DatabaseError

from generation.comfyui.object_info import recorded_object_info
from models_registry.models import COMFYUI_FOLDERS, ModelType, offered_models

MISSING = object()  # an input that was not sent at all (``None`` was sent)

SEED_MAX = 18446744073709551615  # ComfyUI's sampler seeds are unsigned 64-bit ints
RANDOM_SEED = -1
RANDOM_SEED_BOUND = 2**53  # drawn seeds stay exact in JavaScript too

MODEL_FOLDERS = COMFYUI_FOLDERS


def draw_seed():
    """A random seed: the one place seeds are drawn."""
    return secrets.randbelow(RANDOM_SEED_BOUND)


def offered_names(model_type):
    """Names for a schema's ``enum``, or ``None`` when the registry cannot be read (``manage.py check``
    builds the OpenAPI schema without a database): the schema then documents a plain string."""
    try:
        return list(offered_models(model_type).values_list("name", flat=True))
    except DatabaseError:
        return None


class Errors:
    """Problems found while validating, keyed by dotted field path."""

    def __init__(self):
        self.fields = {}

    def add(self, path, message):
        self.fields.setdefault(path, []).append(message)

    def __bool__(self):
        return bool(self.fields)


@dataclass
class Context:
    """What validation may consult.

    ``object_info`` gives ranges and choices; ``user`` owns input images; ``prepared`` collects
    what image fields resolved (``{path: PreparedInput}``) so a workflow's cross-field checks can
    compare sizes and the caller can store new inputs once everything is valid.
    """

    user: Any = None
    object_info: Any = None
    prepared: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)  # path -> AvailableModel resolved by model fields

    def __post_init__(self):
        if self.object_info is None:
            self.object_info = recorded_object_info()

    @property
    def limits(self):
        return settings.GENERATION


# --- value checks shared by the kinds ----------------------------------------------------------


def _number(errors, path, value, *, kind, minimum, maximum, multiple_of=None):
    if isinstance(value, bool) or value is None or value == "":
        errors.add(path, "This field must be a number." if value is not None else "This field may not be null.")
        return None
    if kind is int and isinstance(value, str) and not _is_ascii_integer(value):
        errors.add(path, "A valid integer is required.")
        return None
    if kind is float and isinstance(value, str) and not value.strip().isascii():
        errors.add(path, "A valid number is required.")
        return None
    try:
        number = int(value) if kind is int else float(value)
    except (TypeError, ValueError, OverflowError):
        errors.add(path, f"A valid {'integer' if kind is int else 'number'} is required.")
        return None
    if kind is int and isinstance(value, float) and not value.is_integer():
        errors.add(path, "A valid integer is required.")
        return None
    if kind is float and not math.isfinite(number):
        errors.add(path, "A valid number is required.")
        return None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        errors.add(path, f"Must be between {minimum} and {maximum}.")
        return None
    if multiple_of and number % multiple_of:
        errors.add(path, f"Must be a multiple of {multiple_of}.")
        return None
    return number


def _is_ascii_integer(text):
    text = text.strip()
    digits = text[1:] if text[:1] == "-" else text
    return digits.isascii() and digits.isdigit()


def _text(errors, path, value, *, required, max_length):
    if value is None or value is MISSING:
        value = ""
    if not isinstance(value, str):
        errors.add(path, "Not a valid string.")
        return None
    value = value.strip()
    if required and not value:
        errors.add(path, "This field is required.")
        return None
    if "\x00" in value:
        errors.add(path, "Null characters are not allowed.")
        return None
    if len(value) > max_length:
        errors.add(path, f"Ensure this field has no more than {max_length} characters.")
        return None
    return value


def shown(value, limit=80):
    """A value as echoed in an error message: long input is cut, never repeated in full."""
    text = repr(value) if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= limit else text[:limit - 1] + "…'"


# --- the kinds ------------------------------------------------------------------------------------


class Field:
    """One parameter. ``name`` is its dotted path; ``default`` MISSING makes it required."""

    kind = "field"
    widget = "text"  # the template under templates/generation/fields/

    def __init__(self, name, *, label, help="", default=MISSING, advanced=False, placeholder=""):
        self.name = name
        self.path = tuple(name.split("."))
        self.label = label
        self.help = help
        self.default = default
        self.advanced = advanced
        self.placeholder = placeholder

    @property
    def required(self):
        return self.default is MISSING

    @property
    def html_name(self):
        return self.name

    @property
    def html_id(self):
        return "id_" + self.name.replace(".", "-")

    @property
    def error_key(self):
        """The errors list is ``err-<error_key>`` (what ``aria-describedby`` names)."""
        return self.name.replace(".", "-")

    def initial(self, ctx):
        """The value a blank form shows."""
        return "" if self.default is MISSING else self.default

    def clean(self, raw, ctx, errors):
        """Return the validated value (``raw`` is MISSING when absent); add problems to ``errors``."""
        raise NotImplementedError

    def schema(self, ctx):
        raise NotImplementedError

    def from_form(self, post):
        """This field's raw value in a posted form (``MISSING`` if the form has no such control)."""
        return post.get(self.html_name, MISSING)

    def form_value(self, value):
        """How a stored value is shown back in the form."""
        return "" if value is None else value

    def display(self, value):
        """A stored value for people (request detail, image viewer)."""
        return "" if value is None else str(value)

    def model_references(self, value):
        """``[(model type, name)]`` this value makes the graph load."""
        return [(model_type, name) for _, model_type, name in self.model_reference_paths(value)]

    def model_reference_paths(self, value):
        """``[(field path, model type, name)]``: the model references with the input that names each."""
        return []

    def input_references(self, value):
        """Input image ids this value names."""
        return []

    def _schema_base(self, schema):
        schema = {"title": self.label, **schema}
        if self.help:
            schema["description"] = self.help
        if self.default is not MISSING and self.default is not None:
            schema["default"] = self.default
        return schema


class Text(Field):
    kind = "text"

    def __init__(self, name, *, label, multiline=True, required=False, max_length="MAX_PROMPT_LENGTH", **kwargs):
        kwargs.setdefault("default", MISSING if required else "")
        super().__init__(name, label=label, **kwargs)
        self.widget = "textarea" if multiline else "text"
        self.max_length_key = max_length

    def max_length(self, ctx):
        return ctx.limits[self.max_length_key] if isinstance(self.max_length_key, str) else self.max_length_key

    def clean(self, raw, ctx, errors):
        value = _text(errors, self.name, raw, required=self.required, max_length=self.max_length(ctx))
        return value

    def schema(self, ctx):
        schema = {"type": "string", "maxLength": self.max_length(ctx)}
        if self.required:
            schema["minLength"] = 1
        return self._schema_base(schema)


class _Ranged(Field):
    number_type = float

    def __init__(self, name, *, label, source=None, minimum=None, maximum=None, cap=None, step=None,
                 multiple_of=None, **kwargs):
        super().__init__(name, label=label, **kwargs)
        self.source = source
        self._minimum, self._maximum = minimum, maximum
        self.cap = cap
        self._step = step
        self._multiple_of = multiple_of

    def _spec(self, ctx):
        return ctx.object_info.input(*self.source) if self.source else None

    def bounds(self, ctx):
        """``(minimum, maximum)``: the explicit ones, else the backend's, capped by the settings limit."""
        spec = self._spec(ctx)
        minimum = self._minimum if self._minimum is not None else (spec.minimum if spec else None)
        maximum = self._maximum if self._maximum is not None else (spec.maximum if spec else None)
        if spec and spec.minimum is not None and minimum is not None:
            minimum = max(minimum, spec.minimum)
        if spec and spec.maximum is not None and maximum is not None:
            maximum = min(maximum, spec.maximum)
        if self.cap:
            maximum = min(maximum, ctx.limits[self.cap]) if maximum is not None else ctx.limits[self.cap]
        return minimum, maximum

    def multiple_of(self, ctx):
        if self._multiple_of:
            return self._multiple_of
        return None

    def step(self, ctx):
        if self._step is not None:
            return self._step
        if self.number_type is int:
            return self.multiple_of(ctx) or 1
        spec = self._spec(ctx)
        return (spec.step if spec and spec.step else None) or 0.01

    def clean(self, raw, ctx, errors):
        value = self.default if raw is MISSING else raw
        if value is MISSING:
            errors.add(self.name, "This field is required.")
            return None
        minimum, maximum = self.bounds(ctx)
        return _number(errors, self.name, value, kind=self.number_type, minimum=minimum, maximum=maximum,
                       multiple_of=self.multiple_of(ctx))

    def schema(self, ctx):
        minimum, maximum = self.bounds(ctx)
        schema = {"type": "integer" if self.number_type is int else "number"}
        if minimum is not None:
            schema["minimum"] = minimum
        if maximum is not None:
            schema["maximum"] = maximum
        if self.multiple_of(ctx):
            schema["multipleOf"] = self.multiple_of(ctx)
        return self._schema_base(schema)


class Integer(_Ranged):
    kind = "integer"
    widget = "number"
    number_type = int


class Number(_Ranged):
    kind = "number"
    widget = "number"
    number_type = float

    def clean(self, raw, ctx, errors):
        value = super().clean(raw, ctx, errors)
        return None if value is None else float(value)


class Choice(Field):
    """One of a list: given here, or a combo input's options in ``object_info``."""

    kind = "choice"
    widget = "select"

    def __init__(self, name, *, label, source=None, choices=None, **kwargs):
        super().__init__(name, label=label, **kwargs)
        self.source = source
        self._choices = tuple(choices) if choices else None

    def choices(self, ctx):
        if self._choices is not None:
            return self._choices
        return tuple(ctx.object_info.choices(*self.source))

    def clean(self, raw, ctx, errors):
        value = self.default if raw is MISSING else raw
        if value is MISSING or value in (None, ""):
            errors.add(self.name, "This field is required.")
            return None
        if not isinstance(value, str) or value not in self.choices(ctx):
            option = self.path[-1] if self.source else "allowed"
            errors.add(self.name, f"{shown(value)} is not one of the backend's {option} options."
                       if self.source else f"{shown(value)} is not one of the allowed options.")
            return None
        return value

    def schema(self, ctx):
        return self._schema_base({"type": "string", "enum": list(self.choices(ctx))})


class Boolean(Field):
    kind = "boolean"
    widget = "checkbox"

    def __init__(self, name, *, label, default=False, **kwargs):
        super().__init__(name, label=label, default=bool(default), **kwargs)

    def clean(self, raw, ctx, errors):
        value = self.default if raw in (MISSING, None, "") else raw
        if isinstance(value, str) and value.lower() in ("true", "on", "1", "yes", "false", "off", "0", "no"):
            value = value.lower() in ("true", "on", "1", "yes")
        if not isinstance(value, bool):
            errors.add(self.name, "Must be true or false.")
            return None
        return value

    def from_form(self, post):
        return "on" if post.get(self.html_name) else "off"

    def schema(self, ctx):
        return self._schema_base({"type": "boolean"})


class Seed(Field):
    """A sampler seed: ``-1`` (the default) draws a random one, stored so the image can be reproduced."""

    kind = "seed"
    widget = "seed"

    def __init__(self, name, *, label="Seed", **kwargs):
        kwargs.setdefault("default", RANDOM_SEED)
        kwargs.setdefault("help", "-1 or empty for a random seed; the seed used is stored with the request.")
        super().__init__(name, label=label, **kwargs)

    def initial(self, ctx):
        return ""

    def clean(self, raw, ctx, errors):
        value = RANDOM_SEED if raw in (MISSING, "", None) else raw
        if value in (RANDOM_SEED, "-1"):
            return draw_seed()
        return _number(errors, self.name, value, kind=int, minimum=0, maximum=SEED_MAX)

    def schema(self, ctx):
        return self._schema_base({"type": "integer", "minimum": RANDOM_SEED, "maximum": SEED_MAX})

    def form_value(self, value):
        return "" if value in (None, RANDOM_SEED) else value


class ModelChoice(Field):
    """A model file from the registry (active and present), by its ComfyUI name."""

    kind = "model"
    widget = "model"

    def __init__(self, name, *, label, model_type, required=True, **kwargs):
        kwargs.setdefault("default", MISSING if required else "")
        super().__init__(name, label=label, **kwargs)
        self.model_type = model_type

    @property
    def type_label(self):
        return ModelType(self.model_type).label

    def options(self):
        return list(offered_models(self.model_type))

    def clean(self, raw, ctx, errors):
        value = "" if raw in (MISSING, None) else raw
        if not isinstance(value, str) or not value.strip():
            if self.required or not isinstance(value, str):
                errors.add(self.name, "This field is required." if self.required or value in ("", None)
                           else "Not a valid string.")
            return ""
        model = offered_models(self.model_type).filter(name=value.strip()).first()
        if model is None:
            errors.add(self.name, f"{shown(value)} is not an available {self.type_label.lower()}.")
            return None
        ctx.models[self.name] = model
        return model.name

    def schema(self, ctx):
        names = offered_names(self.model_type)
        schema = {"type": "string"}
        if names is not None:
            schema["enum"] = names if self.required else ["", *names]
        return self._schema_base(schema)

    def model_reference_paths(self, value):
        return [(self.name, self.model_type, value)] if value else []


class Loras(Field):
    """LoRAs applied in order: ``[{name, strength_model, strength_clip}]``."""

    kind = "loras"
    widget = "loras"
    KEYS = ("name", "strength_model", "strength_clip")

    def __init__(self, name="lora_models", *, label="LoRAs", **kwargs):
        kwargs.setdefault("default", [])
        super().__init__(name, label=label, **kwargs)

    def strength_bounds(self, ctx):
        spec = ctx.object_info.input("LoraLoader", "strength_model")
        return spec.minimum, spec.maximum

    def options(self):
        return list(offered_models(ModelType.LORA))

    def clean(self, raw, ctx, errors):
        if raw in (MISSING, None, ""):
            return []
        if not isinstance(raw, list):
            errors.add(self.name, "Expected a list of {name, strength_model, strength_clip}.")
            return []
        max_loras = ctx.limits["MAX_LORAS"]
        if len(raw) > max_loras:
            errors.add(self.name, f"At most {max_loras} LoRAs.")
            return []
        minimum, maximum = self.strength_bounds(ctx)
        names = [item.get("name") for item in raw if isinstance(item, dict)]
        offered = set(offered_models(ModelType.LORA).filter(name__in=[n for n in names if isinstance(n, str)])
                      .values_list("name", flat=True))
        loras, seen = [], set()
        for index, item in enumerate(raw):
            prefix = f"{self.name}.{index}"
            if not isinstance(item, dict):
                errors.add(prefix, "Expected an object {name, strength_model, strength_clip}.")
                continue
            for key in sorted(set(item) - set(self.KEYS)):
                errors.add(f"{prefix}.{key}", "Unknown field.")
            name = item.get("name")
            if not isinstance(name, str) or not name:
                errors.add(f"{prefix}.name", "This field is required.")
                continue
            if name not in offered:
                errors.add(f"{prefix}.name", f"{shown(name)} is not an available LoRA.")
                continue
            if name in seen:
                errors.add(f"{prefix}.name", f"{shown(name)} is listed twice.")
                continue
            seen.add(name)
            strengths = {key: _number(errors, f"{prefix}.{key}", item.get(key, 1.0), kind=float,
                                      minimum=minimum, maximum=maximum) for key in ("strength_model", "strength_clip")}
            loras.append({"name": name, **{k: None if v is None else float(v) for k, v in strengths.items()}})
        return loras

    def schema(self, ctx):
        minimum, maximum = self.strength_bounds(ctx)
        strength = {"type": "number", "minimum": minimum, "maximum": maximum, "default": 1.0}
        names = offered_names(ModelType.LORA)
        name = {"type": "string"} if names is None else {"type": "string", "enum": names}
        item = {"type": "object", "additionalProperties": False, "required": ["name"],
                "properties": {"name": name, "strength_model": strength,
                               "strength_clip": strength}}
        return self._schema_base({"type": "array", "maxItems": ctx.limits["MAX_LORAS"], "items": item})

    def from_form(self, post):
        if not hasattr(post, "getlist"):
            return post.get(self.html_name, MISSING)
        return [{"name": name, **{key: post.get(self.strength_name(name, key), "1.0")
                                  for key in ("strength_model", "strength_clip")}}
                for name in post.getlist(self.html_name)]

    def strength_name(self, lora_name, key):
        """HTML name of one LoRA's strength input (``key`` is ``strength_model`` or ``strength_clip``)."""
        return f"{self.name}.{key}.{lora_name}"

    def display(self, value):
        return ", ".join(f"{item['name']} ({item.get('strength_model')}/{item.get('strength_clip')})"
                         for item in value or []) or "none"

    def model_reference_paths(self, value):
        return [(f"{self.name}.{index}.name", ModelType.LORA, item["name"]) for index, item in enumerate(value or [])]


class Image(Field):
    """An input image: an id from ``POST /api/v1/comfyui/inputs/``, ``{"request": id, "index": n}`` (one
    of the caller's own finished images), or a URL in the sibling ``<name>_url`` (fetched with the
    webhook SSRF rules). The stored value is always the input's id."""

    kind = "image"
    widget = "image"

    def __init__(self, name, *, label, required=True, mask=False, **kwargs):
        kwargs.setdefault("default", MISSING if required else None)
        super().__init__(name, label=label, **kwargs)
        self.is_mask = mask
        self.widget = "mask" if mask else "image"  # a mask is painted over its image in the form

    @property
    def url_name(self):
        return f"{self.name}_url"

    def clean(self, raw, ctx, errors, *, url=MISSING):
        from generation import inputs

        if raw in (MISSING, None, "") and url in (MISSING, None, ""):
            if self.required:
                errors.add(self.name, "This field is required.")
            return None
        if raw not in (MISSING, None, "") and url not in (MISSING, None, ""):
            errors.add(self.name, f"Give {self.name} or {self.url_name}, not both.")
            return None
        try:
            if url not in (MISSING, None, ""):
                prepared = inputs.prepare_from_url(url, user=ctx.user, is_mask=self.is_mask)
            else:
                prepared = inputs.prepare_reference(raw, user=ctx.user, is_mask=self.is_mask)
        except inputs.InputRefused as exc:
            errors.add(self.url_name if url not in (MISSING, None, "") else self.name, str(exc))
            return None
        ctx.prepared[self.name] = prepared
        return str(prepared.id)

    def schema(self, ctx):
        reference = {"oneOf": [
            {"type": "string", "format": "uuid", "description": "An id from POST /api/v1/comfyui/inputs/"},
            {"type": "object", "additionalProperties": False, "required": ["request", "index"],
             "properties": {"request": {"type": "string", "format": "uuid"},
                            "index": {"type": "integer", "minimum": 0}},
             "description": "One of your own finished images"},
        ]}
        if not self.required:
            reference["oneOf"].append({"type": "null"})
        return self._schema_base(reference)

    def from_form(self, post):
        """The form carries an input id, or ``<request id>/<n>`` for one of the person's results.

        Its file input shares the name: an empty one is posted as "" beside the carried value."""
        raw = post.get(self.html_name, MISSING)
        if hasattr(post, "getlist"):
            given = [value for value in post.getlist(self.html_name) if value]
            raw = given[-1] if given else raw
        if isinstance(raw, str) and "/" in raw:
            request_id, _, index = raw.partition("/")
            if index.isascii() and index.isdigit():
                return {"request": request_id, "index": int(index)}
        return raw

    def form_value(self, value):
        if isinstance(value, dict):
            return f"{value.get('request')}/{value.get('index')}"
        return "" if value is None else value

    def url_schema(self):
        return {"type": "string", "format": "uri", "maxLength": 2000,
                "description": f"Instead of {self.name}: an http(s) URL of the image (public addresses only)"}

    def input_references(self, value):
        return [value] if value else []


# --- the definition -------------------------------------------------------------------------------


class Parameters:
    """A workflow's parameters: validate (dotted error paths), JSON Schema, form and detail rows.

    ``groups`` labels the objects that dotted names imply (``{"sampler_params": "Sampler"}``).
    """

    def __init__(self, fields, *, groups=None):
        self.fields = list(fields)
        self.groups = dict(groups or {})
        self.by_name = {f.name: f for f in self.fields}
        if len(self.by_name) != len(self.fields):
            raise ValueError("two parameters share a name")

    def __iter__(self):
        return iter(self.fields)

    def of_kind(self, kind):
        return [f for f in self.fields if f.kind == kind]

    # -- validation --

    def clean(self, data, ctx, errors):
        """Validate ``data`` (a dict of the workflow's parameters) into nested params."""
        known = self._known_keys()
        for key in sorted(set(data) - set(known[()]), key=str):
            errors.add(str(key), "Unknown field.")
        for prefix, names in known.items():
            if not prefix:
                continue
            group = _lookup(data, prefix)
            if group in (MISSING, None, ""):
                continue
            if not isinstance(group, dict):
                errors.add(".".join(prefix), "Expected an object {" + ", ".join(sorted(names)) + "}.")
                continue
            for key in sorted(set(group) - set(names), key=str):
                errors.add(".".join((*prefix, str(key))), "Unknown field.")
        params = {}
        for item in self.fields:
            raw = _lookup(data, item.path)
            if isinstance(item, Image):
                url = _lookup(data, (*item.path[:-1], item.url_name.rsplit(".", 1)[-1]))
                value = item.clean(raw, ctx, errors, url=url)
            else:
                value = item.clean(raw, ctx, errors)
            _store(params, item.path, value)
        return params

    def _known_keys(self):
        known = {(): set()}
        for item in self.fields:
            for depth in range(len(item.path)):
                prefix = item.path[:depth]
                known.setdefault(prefix, set()).add(item.path[depth])
            if isinstance(item, Image):
                known[item.path[:-1]].add(item.url_name.rsplit(".", 1)[-1])
        return known

    # -- description --

    def schema(self, ctx):
        """The JSON Schema of a request body's parameters (nested objects for groups)."""
        root = {"type": "object", "properties": {}, "required": [], "additionalProperties": False}
        for item in self.fields:
            node = root
            for depth, part in enumerate(item.path[:-1]):
                prefix = ".".join(item.path[:depth + 1])
                child = node["properties"].setdefault(part, {
                    "type": "object", "title": self.groups.get(prefix, part), "properties": {}, "required": [],
                    "additionalProperties": False})
                node = child
            node["properties"][item.path[-1]] = item.schema(ctx)
            if isinstance(item, Image):
                node["properties"][item.url_name.rsplit(".", 1)[-1]] = item.url_schema()
            if item.required and not isinstance(item, Image):
                node["required"].append(item.path[-1])
        _drop_empty_required(root)
        return root

    def rows(self, params):
        """``[(label, shown value)]`` for a request's detail."""
        rows = []
        for item in self.fields:
            value = _lookup(params, item.path)
            if value is MISSING:
                continue
            rows.append((item.label, item.display(value)))
        return rows

    def model_references(self, params):
        return [(model_type, name) for _, model_type, name in self.model_reference_paths(params)]

    def model_reference_paths(self, params):
        """``[(field path, model type, name)]`` of every model file ``params`` name."""
        refs = []
        for item in self.fields:
            value = _lookup(params, item.path)
            if value is not MISSING:
                refs.extend(item.model_reference_paths(value))
        return refs

    def input_references(self, params):
        """``{path: input id}`` of the input images ``params`` name."""
        found = {}
        for item in self.of_kind("image"):
            value = _lookup(params, item.path)
            if value not in (MISSING, None):
                found[item.name] = value
        return found

    def with_new_seeds(self, params):
        """``params`` with every seed set back to random (for "regenerate with a new seed")."""
        data = _deep_copy(params)
        for item in self.of_kind("seed"):
            if _lookup(data, item.path) is not MISSING:
                _store(data, item.path, RANDOM_SEED)
        return data

    def seeds(self, params):
        return [value for item in self.of_kind("seed") if (value := _lookup(params, item.path)) is not MISSING]


def lookup(data, name):
    """The value at dotted ``name`` in nested ``data``, or ``None``."""
    value = _lookup(data, tuple(name.split(".")))
    return None if value is MISSING else value


def _lookup(data, path):
    value = data
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def _store(data, path, value):
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def _deep_copy(value):
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _drop_empty_required(schema):
    if schema.get("type") == "object":
        if not schema.get("required"):
            schema.pop("required", None)
        for child in schema.get("properties", {}).values():
            _drop_empty_required(child)
