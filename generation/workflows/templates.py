"""Operator-defined workflows: a ComfyUI graph published as a form and an endpoint.

Staff give a graph (API format, or a saved workflow converted by :mod:`.importing`); it is checked
against the backends' ``/object_info``; parameters are **proposed** from it (prompt and negative
prompt from the text encoders feeding a sampler, the sampler's settings, the latent's size, loaders'
models, LoadImage's images) and staff confirm, rename, relabel, set defaults, limits and choices,
make one required, or expose any other widget input. The definition is a list of *specs*
(plain JSON, stored on an immutable :class:`~generation.models.WorkflowTemplateVersion`); each spec
becomes the same kind of :mod:`~generation.workflows.fields` parameter the built-ins use, so
validation, the JSON Schema, the form and the A1111 text come with it.

A spec: ``{"name", "label", "kind", "targets": [[node id, input], …], "default", "required",
"minimum", "maximum", "step", "multiple_of", "choices", "model_type", "mask", "multiline", "help",
"advanced"}`` — ``kind`` is one of :data:`KINDS`. Inputs no spec targets keep the graph's value.
"""

import copy
import re

from django.db import transaction
from django.db.models import Max

from generation.comfyui.errors import WorkflowRejected
from generation.pngmeta import a1111_text
from generation.workflows.base import OUTPUT_NODE_CLASSES, InputFile, Summary, Workflow, check_graph
from generation.workflows.fields import (
    Boolean,
    Choice,
    Image,
    Integer,
    ModelChoice,
    Number,
    Parameters,
    Seed,
    Text,
    shown,
)
from generation.workflows.importing import GraphRefused, import_graph
from models_registry.models import ModelType

KINDS = ("text", "integer", "number", "choice", "seed", "model", "image", "boolean")
SPEC_KEYS = {"name", "label", "kind", "targets", "default", "required", "minimum", "maximum", "step", "multiple_of",
             "choices", "model_type", "mask", "multiline", "help", "advanced"}
NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
RESERVED_NAMES = {"workflow", "webhook_url"}
SAMPLERS = {"KSampler": "seed", "KSamplerAdvanced": "noise_seed"}
SAMPLER_SETTINGS = ("steps", "cfg", "sampler_name", "scheduler", "denoise")
LATENTS = {"EmptyLatentImage", "EmptySD3LatentImage", "EmptyHunyuanLatentVideo"}
MODEL_LOADERS = {("CheckpointLoaderSimple", "ckpt_name"): (ModelType.CHECKPOINT, "checkpoint_model", "Checkpoint"),
                 ("LoraLoader", "lora_name"): (ModelType.LORA, "lora", "LoRA"),
                 ("LoraLoaderModelOnly", "lora_name"): (ModelType.LORA, "lora", "LoRA"),
                 ("UpscaleModelLoader", "model_name"): (ModelType.UPSCALE_MODEL, "upscale_model", "Upscale model")}
IMAGE_LOADERS = {("LoadImage", "image"): False, ("LoadImageMask", "image"): True}
SAVING_OUTPUTS = OUTPUT_NODE_CLASSES  # output nodes whose files are results (PreviewImage's are temporary)
LABELS = {"prompt": "Prompt", "negative_prompt": "Negative prompt", "seed": "Seed", "steps": "Steps",
          "cfg": "CFG scale", "sampler_name": "Sampler", "scheduler": "Scheduler", "denoise": "Denoise",
          "width": "Width", "height": "Height", "batch_size": "Batch size", "input_image": "Input image",
          "mask_image": "Mask"}


class TemplateInvalid(ValueError):
    """A graph or a definition staff gave cannot be saved; ``fields`` maps a path to messages."""

    def __init__(self, fields):
        self.fields = fields
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in fields.items()))


# --- the workflow a version stands for -----------------------------------------------------------


class TemplateWorkflow(Workflow):
    """A :class:`~generation.workflows.base.Workflow` built from one template version."""

    def __init__(self, template, version):
        self.template_id = template.pk
        self.slug = template.slug
        self.version = version.version
        self.name = template.name
        self.description = template.description or f"{template.name} (a graph published by staff)"
        self.graph = version.graph
        self.specs = version.parameters
        self.outputs = list(version.outputs)
        self.parameters = Parameters([field_of(spec, self.graph) for spec in self.specs])

    def summary(self, params, ctx):
        values = {spec["name"]: params.get(spec["name"]) for spec in self.specs}
        graph = self.graph
        latent = next((node["inputs"] for node in graph.values() if node.get("class_type") in LATENTS), {})
        image = next(iter(ctx.prepared.values()), None)
        width = _int(values.get("width"), latent.get("width"), image.width if image else None, 512)
        height = _int(values.get("height"), latent.get("height"), image.height if image else None, 512)
        batch = _int(values.get("batch_size"), latent.get("batch_size"), 1)
        checkpoint = values.get("checkpoint_model") if isinstance(values.get("checkpoint_model"), str) else None
        if checkpoint is None:
            checkpoint = next((node["inputs"].get("ckpt_name") for node in graph.values()
                               if node.get("class_type") == "CheckpointLoaderSimple"
                               and isinstance(node["inputs"].get("ckpt_name"), str)), "")
        prompt = values.get("prompt") if isinstance(values.get("prompt"), str) else ""
        return Summary(prompt=prompt, checkpoint_model=checkpoint, width=min(max(width, 16), 16384),
                       height=min(max(height, 16), 16384), batch_size=min(max(batch, 1), 64))

    def build(self, params, *, files, filename_prefix):
        graph = copy.deepcopy(self.graph)
        for node_id in [n for n, node in graph.items() if _is_output(node) and n not in self.outputs]:
            del graph[node_id]  # outputs staff did not pick are not run
        for spec in self.specs:
            value = params.get(spec["name"])
            if spec["kind"] == "image":
                if value is None:
                    continue
                value = files[spec["name"]].name
            for node_id, name in spec["targets"]:
                if node_id in graph:
                    graph[node_id]["inputs"][name] = value
        saving = [node_id for node_id in self.outputs if "filename_prefix" in graph.get(node_id, {}).get("inputs", {})]
        for node_id in saving:  # unique per request, and per output node when there are several
            graph[node_id]["inputs"]["filename_prefix"] = (filename_prefix if len(saving) == 1
                                                           else f"{filename_prefix}_n{node_id}")
        return graph

    def output_nodes(self, graph):
        return [node_id for node_id in self.outputs if node_id in graph]

    def a1111_parameters(self, params):
        get = params.get
        pairs = [("Steps", get("steps")), ("Sampler", get("sampler_name")), ("Schedule type", get("scheduler")),
                 ("CFG scale", get("cfg")), ("Seed", get("seed")),
                 ("Size", f"{get('width')}x{get('height')}" if get("width") and get("height") else None),
                 ("Model", get("checkpoint_model")), ("Denoising strength", get("denoise")),
                 ("Workflow", f"{self.name} v{self.version}")]
        return a1111_text(prompt=get("prompt") or "", negative_prompt=get("negative_prompt") or "", pairs=pairs)


def _int(*candidates):
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return candidates[-1]


def _is_output(node):
    return node.get("class_type") in SAVING_OUTPUTS or node.get("class_type") == "PreviewImage"


def field_of(spec, graph):
    """The :mod:`~generation.workflows.fields` parameter a spec stands for."""
    kind, name = spec["kind"], spec["name"]
    common = {"label": spec.get("label") or name, "help": spec.get("help") or "",
              "advanced": bool(spec.get("advanced"))}
    required = bool(spec.get("required"))
    default = spec.get("default")
    if kind == "text":  # a required text shows the graph's own as a hint
        return Text(name, required=required, multiline=spec.get("multiline", True),
                    **({"placeholder": str(default or "")[:200]} if required else {"default": default or ""}), **common)
    if kind in ("integer", "number"):
        cls = Integer if kind == "integer" else Number
        options = {"minimum": spec.get("minimum"), "maximum": spec.get("maximum"),
                   "multiple_of": spec.get("multiple_of"), "step": spec.get("step")}
        return cls(name, **({} if required or default is None else {"default": default}), **options, **common)
    if kind == "choice":
        return Choice(name, choices=spec.get("choices") or [],
                      **({} if required or default is None else {"default": default}), **common)
    if kind == "seed":
        return Seed(name, **common)
    if kind == "model":
        return ModelChoice(name, model_type=spec["model_type"], required=required, **common)
    if kind == "image":
        return Image(name, required=required, mask=bool(spec.get("mask")), **common)
    if kind == "boolean":
        return Boolean(name, default=bool(default), **common)
    raise ValueError(f"unknown parameter kind {kind!r}")


# --- proposing a definition from a graph -----------------------------------------------------------


def widget_inputs(graph, object_info):
    """Every input of the graph that holds a value (not a link): ``[{node, class_type, input, value, …}]``."""
    found = []
    for node_id, node in sorted(graph.items(), key=lambda item: _order(item[0])):
        class_type = node.get("class_type")
        specs = object_info.inputs(class_type) if object_info.has_node(class_type) else {}
        for name, value in node.get("inputs", {}).items():
            if isinstance(value, list) and len(value) == 2 and not isinstance(value[0], (int, float)):
                continue  # a link
            spec = specs.get(name)
            found.append({"node": node_id, "class_type": class_type, "input": name, "value": value,
                          "type": spec.type if spec else type(value).__name__,
                          "title": (node.get("_meta") or {}).get("title", "")})
    return found


def _order(node_id):
    return (0, int(node_id), "") if str(node_id).isdigit() else (1, 0, str(node_id))


def propose(graph, object_info):
    """The proposed definition of ``graph``: ``{"parameters": [specs], "outputs": [node ids]}``."""
    specs, taken = [], set()

    def add(name, spec, node_id):
        label = spec.pop("label", None) or LABELS.get(name, name.replace("_", " ").capitalize())
        if name in taken:  # a second sampler, loader or image: named after its node
            name, label = f"{name}_{node_id}", f"{label} (node {node_id})"
        taken.add(name)
        specs.append({**spec, "name": name, "label": label})

    for node_id, node in sorted(graph.items(), key=lambda item: _order(item[0])):
        class_type, inputs = node.get("class_type"), node.get("inputs", {})
        if class_type in SAMPLERS:
            for role in ("positive", "negative"):
                source = inputs.get(role)
                text_node = graph.get(source[0]) if isinstance(source, list) else None
                if text_node and text_node.get("class_type") == "CLIPTextEncode" and isinstance(
                        text_node["inputs"].get("text"), str):
                    name = "prompt" if role == "positive" else "negative_prompt"
                    if not any(spec["targets"] == [[source[0], "text"]] for spec in specs):
                        add(name, {"kind": "text", "targets": [[source[0], "text"]],
                                   "default": text_node["inputs"]["text"], "required": role == "positive"},
                            source[0])
            seed_input = SAMPLERS[class_type]
            if isinstance(inputs.get(seed_input), int):
                add("seed", {"kind": "seed", "targets": [[node_id, seed_input]], "advanced": True}, node_id)
            for name in SAMPLER_SETTINGS:
                if name in inputs and not isinstance(inputs[name], list):
                    add(name, _value_spec(object_info, class_type, name, inputs[name], node_id, advanced=True),
                        node_id)
        elif class_type in LATENTS:
            for name in ("width", "height", "batch_size"):
                if isinstance(inputs.get(name), int):
                    add(name, _value_spec(object_info, class_type, name, inputs[name], node_id), node_id)
        for (loader, name), (model_type, param, label) in MODEL_LOADERS.items():
            if class_type == loader and isinstance(inputs.get(name), str):
                add(param, {"kind": "model", "model_type": model_type, "targets": [[node_id, name]],
                            "required": model_type == ModelType.CHECKPOINT, "label": label}, node_id)
        for (loader, name), is_mask in IMAGE_LOADERS.items():
            if class_type == loader and isinstance(inputs.get(name), str):
                add("mask_image" if is_mask else "input_image",
                    {"kind": "image", "targets": [[node_id, name]], "required": not is_mask, "mask": is_mask},
                    node_id)
    outputs = [node_id for node_id, node in sorted(graph.items(), key=lambda item: _order(item[0]))
               if node.get("class_type") in SAVING_OUTPUTS]
    return {"parameters": [_complete(spec) for spec in specs], "outputs": outputs}


def _value_spec(object_info, class_type, name, value, node_id, *, advanced=False):
    """A spec for a plain value input, with limits and choices from the catalogue."""
    spec_info = object_info.inputs(class_type).get(name) if object_info.has_node(class_type) else None
    spec = {"targets": [[node_id, name]], "default": value, "advanced": advanced}
    if spec_info is None:
        spec["kind"] = "number" if isinstance(value, float) else "integer" if isinstance(value, int) else "text"
        return spec
    if spec_info.type == "COMBO":
        spec.update(kind="choice", choices=list(spec_info.choices or ()))
    elif spec_info.type == "INT":
        spec.update(kind="integer", minimum=spec_info.minimum, maximum=spec_info.maximum)
        if name in ("width", "height"):
            spec["multiple_of"] = 8
    elif spec_info.type == "FLOAT":
        spec.update(kind="number", minimum=spec_info.minimum, maximum=spec_info.maximum, step=spec_info.step)
    elif spec_info.type == "BOOLEAN":
        spec.update(kind="boolean")
    else:
        spec.update(kind="text", multiline=bool(spec_info.options.get("multiline")))
    return spec


def _complete(spec):
    full = {"label": spec.get("name"), "help": "", "required": False, "advanced": False, "default": None,
            "minimum": None, "maximum": None, "step": None, "multiple_of": None, "choices": None,
            "model_type": None, "mask": False, "multiline": spec.get("kind") == "text"}
    return {**full, **spec}


# --- checking what staff give ------------------------------------------------------------------------


def check_definition(graph, specs, outputs, object_info):
    """Refuse a definition that could not run: names, kinds, targets, outputs, and the graph with the
    defaults applied validated like ComfyUI. Returns the normalised specs; raises :class:`TemplateInvalid`."""
    problems = {}

    def problem(path, message):
        problems.setdefault(path, []).append(message)

    if not isinstance(specs, list):
        raise TemplateInvalid({"parameters": ["Expected a list of parameters."]})
    normalised, names, targeted = [], set(), set()
    for index, spec in enumerate(specs):
        path = f"parameters.{index}"
        if not isinstance(spec, dict):
            problem(path, "Expected an object.")
            continue
        for key in sorted(set(spec) - SPEC_KEYS):
            problem(f"{path}.{key}", "Unknown field.")
        name = spec.get("name")
        if not isinstance(name, str) or not NAME.match(name) or name in RESERVED_NAMES:
            problem(f"{path}.name", "Lower-case letters, digits and _ (starting with a letter), up to 48; "
                                    "not workflow or webhook_url.")
        elif name in names:
            problem(f"{path}.name", f"{name!r} is used twice.")
        names.add(name)
        if spec.get("kind") not in KINDS:
            problem(f"{path}.kind", f"One of {', '.join(KINDS)}.")
            continue
        targets = spec.get("targets")
        if not isinstance(targets, list) or not targets:
            problem(f"{path}.targets", "Expected a list of [node id, input name].")
            continue
        for target in targets:
            if (not isinstance(target, list) or len(target) != 2 or str(target[0]) not in graph
                    or not isinstance(target[1], str)):
                problem(f"{path}.targets", f"{shown(target)} is not [node id, input] of a node in the graph.")
                continue
            key = (str(target[0]), target[1])
            if key in targeted:
                problem(f"{path}.targets", f"Node {key[0]} input {key[1]!r} is set by another parameter too.")
            targeted.add(key)
            if isinstance(graph[key[0]]["inputs"].get(key[1]), list):
                problem(f"{path}.targets", f"Node {key[0]} input {key[1]!r} is a link, not a value.")
        if spec["kind"] == "model" and spec.get("model_type") not in ModelType.values:
            problem(f"{path}.model_type", f"One of {', '.join(ModelType.values)}.")
        if spec["kind"] == "choice" and not (isinstance(spec.get("choices"), list) and spec["choices"]):
            problem(f"{path}.choices", "A choice needs a list of options.")
        normalised.append(_complete({**spec, "targets": [[str(t[0]), t[1]] for t in targets if isinstance(t, list)
                                                          and len(t) == 2]}))
    if not isinstance(outputs, list) or not outputs:
        problem("outputs", "Pick at least one output node.")
    else:
        for node_id in outputs:
            node = graph.get(str(node_id))
            if node is None or node.get("class_type") not in SAVING_OUTPUTS:
                problem("outputs", f"{shown(node_id)} is not a node of the graph that saves files.")
    if problems:
        raise TemplateInvalid(problems)
    _check_with_defaults(graph, normalised, [str(n) for n in outputs], object_info)
    return normalised


def _check_with_defaults(graph, specs, outputs, object_info):
    """The graph as a request with every default would send it, validated like ComfyUI."""
    values = {}
    for spec in specs:
        if spec["kind"] == "seed":
            values[spec["name"]] = 0
        elif spec["kind"] == "image":
            values[spec["name"]] = "placeholder"
        elif spec["kind"] == "model" or spec.get("required") or spec.get("default") is None:
            values[spec["name"]] = graph[spec["targets"][0][0]]["inputs"].get(spec["targets"][0][1])
        else:
            values[spec["name"]] = spec["default"]
    workflow = _Draft(graph, specs, outputs)
    files = {spec["name"]: InputFile("genonaut/placeholder.png", 512, 512) for spec in specs if spec["kind"] == "image"}
    built = workflow.build(values, files=files, filename_prefix="genonaut/check")
    try:
        check_graph(built, object_info)
    except WorkflowRejected as exc:
        raise TemplateInvalid({"graph": [exc.message]}) from exc


class _Draft(TemplateWorkflow):
    def __init__(self, graph, specs, outputs):  # no row yet: only what build() needs
        self.graph, self.specs, self.outputs = graph, specs, outputs


# --- the lifecycle: create, edit (a new version), delete ------------------------------------------


def catalogue():
    """The union of the configured backends' ``object_info`` (a node class one backend has is
    usable: dispatch sends the request there), or the recorded stock catalogue when none answers."""
    from generation import backends
    from generation.comfyui.errors import ComfyUIError
    from generation.comfyui.object_info import ObjectInfo, recorded_object_info

    merged = {}
    for url in backends.configured_urls():
        try:
            info = backends.client_for(url).object_info()
        except ComfyUIError:
            continue
        backends.note_object_info(url, info)
        for class_type, node in info.data.items():
            merged.setdefault(class_type, node)
    return ObjectInfo(merged) if merged else recorded_object_info()


def slug_from(name):
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60] or "workflow"


def create_template(*, name, graph, user, slug=None, description=""):
    """Import ``graph``, propose its definition and save it as version 1 (disabled until staff enable
    it). Returns the template. Raises :class:`TemplateInvalid` (nothing saved)."""
    from generation.models import WorkflowTemplate
    from generation.workflows import get_builtin

    problems = {}
    if not isinstance(name, str) or not name.strip() or len(name) > 120:
        problems["name"] = ["A name of 1 to 120 characters is required."]
    slug = slug or (slug_from(name) if isinstance(name, str) else "")
    if not isinstance(slug, str) or not re.match(r"^[a-z0-9][a-z0-9_-]{0,63}$", slug):
        problems["slug"] = ["Lower-case letters, digits, - and _, up to 64."]
    elif get_builtin(slug) is not None or WorkflowTemplate.objects.filter(slug=slug).exists():
        problems["slug"] = [f"{slug!r} is taken; choose another slug."]
    if problems:
        raise TemplateInvalid(problems)
    info = catalogue()
    try:
        imported = import_graph(graph, info)
    except GraphRefused as exc:
        raise TemplateInvalid({"graph": exc.problems}) from exc
    proposal = propose(imported.graph, info)
    specs = check_definition(imported.graph, proposal["parameters"], proposal["outputs"], info)
    with transaction.atomic():
        template = WorkflowTemplate.objects.create(slug=slug, name=name.strip(), description=description or "",
                                                   created_by=user)
        template.versions.create(version=1, graph=imported.graph, parameters=specs, outputs=proposal["outputs"],
                                 source_format=imported.source_format, notes=imported.notes, created_by=user)
    return template


def new_version(*, template, user, parameters=None, outputs=None, graph=None):
    """Save an edited definition as the next version (the old ones stay: requests name them).
    Unchanged → the current version is returned. Raises :class:`TemplateInvalid` (nothing saved)."""
    current = template.versions.order_by("-version").first()
    info = catalogue()
    source_format, notes = current.source_format, current.notes
    new_graph = current.graph
    if graph is not None:
        try:
            imported = import_graph(graph, info)
        except GraphRefused as exc:
            raise TemplateInvalid({"graph": exc.problems}) from exc
        new_graph, source_format, notes = imported.graph, imported.source_format, imported.notes
    if parameters is None:
        parameters = current.parameters if graph is None else propose(new_graph, info)["parameters"]
    if outputs is None:
        outputs = current.outputs if graph is None else propose(new_graph, info)["outputs"]
    outputs = [str(node_id) for node_id in outputs] if isinstance(outputs, list) else outputs
    specs = check_definition(new_graph, parameters, outputs, info)
    if new_graph == current.graph and specs == current.parameters and outputs == current.outputs:
        return current
    with transaction.atomic():
        number = (template.versions.aggregate(last=Max("version"))["last"] or 0) + 1
        version = template.versions.create(version=number, graph=new_graph, parameters=specs, outputs=outputs,
                                           source_format=source_format, notes=notes, created_by=user)
        template.save(update_fields=["updated_at"])
    return version


class TemplateInUse(Exception):
    """Requests ran this template (or version): it can be disabled, not deleted."""


def delete_version(version):
    from generation.models import GenerationRequest

    if GenerationRequest.objects.filter(workflow_slug=version.template.slug, workflow_version=version.version).exists():
        raise TemplateInUse(f"Requests ran {version}: it cannot be deleted.")
    if version.template.versions.count() == 1:
        raise TemplateInUse("A template keeps at least one version; delete the template instead.")
    version.delete()


def delete_template(template):
    from generation.models import GenerationRequest

    if GenerationRequest.objects.filter(workflow_slug=template.slug).exists():
        raise TemplateInUse(f"Requests ran {template.slug!r}: disable it instead of deleting it.")
    template.delete()


def update_template(*, template, user, parameters=None, outputs=None, graph=None, groups=None, **fields):
    """Staff's edit: plain fields in place; a changed definition or graph as a new version.
    Raises :class:`TemplateInvalid` (nothing saved)."""
    from django.contrib.auth.models import Group

    if groups is not None:
        found = list(Group.objects.filter(name__in=groups))
        unknown = sorted(set(groups) - {group.name for group in found})
        if unknown:
            raise TemplateInvalid({"groups": [f"No such group: {', '.join(unknown)}."]})
    with transaction.atomic():
        if parameters is not None or outputs is not None or graph is not None:
            new_version(template=template, user=user, parameters=parameters, outputs=outputs, graph=graph)
        for name, value in fields.items():
            setattr(template, name, value)
        template.save()
        if groups is not None:
            template.groups.set(found)
    return template


def runnable_on(graph):
    """URLs of the configured backends whose recorded node classes cover the graph (or not yet known)."""
    from generation import backends

    needed = {node.get("class_type") for node in graph.values()}
    return [row.url for row in backends.sync_backends()
            if row.capabilities_at is None or needed <= set(row.node_classes)]


def staff_document(template, *, ctx):
    """What staff see of a published workflow (API and admin)."""
    from generation.models import GenerationRequest

    latest = template.versions.order_by("-version").first()
    workflow = TemplateWorkflow(template, latest)
    used = set(GenerationRequest.objects.filter(workflow_slug=template.slug)
               .values_list("workflow_version", flat=True).distinct().order_by())
    return {
        "slug": template.slug, "version": latest.version, "name": template.name,
        "description": template.description, "is_enabled": template.is_enabled,
        "visibility": template.visibility, "groups": sorted(template.groups.values_list("name", flat=True)),
        "parameters": workflow.schema(ctx),
        "definition": {"parameters": latest.parameters, "outputs": latest.outputs},
        "widgets": widget_inputs(latest.graph, catalogue()),
        "versions": [{"version": row.version, "created_at": row.created_at.isoformat(), "in_use": row.version in used}
                     for row in template.versions.order_by("-version")],
        "runnable_on": runnable_on(latest.graph),
        "notes": list(latest.notes or []),
    }


# --- what the admin's editor shows and takes --------------------------------------------------------------


def editor_rows(version, object_info):
    """One row per value input of the graph, with the parameter that sets it (exposed) or the one
    it would become (``kind`` and limits from the catalogue), for the admin's definition table."""
    by_target = {(target[0], target[1]): spec for spec in version.parameters for target in spec["targets"]}
    rows = []
    for widget in widget_inputs(version.graph, object_info):
        key = (widget["node"], widget["input"])
        spec = by_target.get(key)
        if spec is None:
            spec = _complete({**_candidate(version.graph, widget, object_info), "name": _free_name(widget)})
        order = next((index for index, existing in enumerate(version.parameters) if existing is spec),
                     len(version.parameters))
        rows.append({**widget, "key": f"{widget['node']}:{widget['input']}", "exposed": key in by_target,
                     "spec": spec, "shared": len(spec["targets"]) > 1, "order": order})
    return rows


def _candidate(graph, widget, object_info):
    class_type, name = widget["class_type"], widget["input"]
    if (class_type, name) in MODEL_LOADERS:
        model_type, _, label = MODEL_LOADERS[(class_type, name)]
        return {"kind": "model", "model_type": model_type, "targets": [[widget["node"], name]], "label": label}
    if (class_type, name) in IMAGE_LOADERS:
        mask = IMAGE_LOADERS[(class_type, name)]
        return {"kind": "image", "mask": mask, "targets": [[widget["node"], name]], "required": not mask,
                "label": "Mask" if mask else "Input image"}
    if class_type in SAMPLERS and name == SAMPLERS[class_type]:
        return {"kind": "seed", "targets": [[widget["node"], name]], "label": "Seed"}
    spec = _value_spec(object_info, class_type, name, widget["value"], widget["node"])
    spec["label"] = LABELS.get(name, name.replace("_", " ").capitalize())
    return spec


def _free_name(widget):
    base = re.sub(r"[^a-z0-9_]", "_", widget["input"].lower()).strip("_") or "value"
    return f"{base if base[0].isalpha() else 'p_' + base}_{widget['node']}"[:48]


def specs_from_editor(rows, posted, outputs):
    """The definition the admin's table posts: ``posted`` maps ``<node>:<input>`` to
    ``{"exposed", "name", "label", "default", "minimum", "maximum", "required", "advanced", "help"}``
    (strings from the form); a parameter setting several inputs keeps all its targets."""
    specs, seen = [], set()
    for row in sorted(rows, key=lambda row: row["order"]):  # the definition's own order, new ones last
        values = posted.get(row["key"], {})
        if not values.get("exposed"):
            continue
        spec = dict(row["spec"])
        if id(row["spec"]) in seen:
            continue
        seen.add(id(row["spec"]))
        spec["name"] = values.get("name", spec["name"]).strip()
        spec["label"] = values.get("label", spec["label"]).strip() or spec["name"]
        spec["help"] = values.get("help", spec.get("help") or "").strip()
        spec["required"] = bool(values.get("required"))
        spec["advanced"] = bool(values.get("advanced"))
        for key in ("minimum", "maximum", "default"):
            if key in values:
                spec[key] = _typed(values[key], spec["kind"], fallback=spec.get(key))
        if spec["kind"] == "choice" and values.get("choices", "").strip():
            spec["choices"] = [item.strip() for item in values["choices"].split(",") if item.strip()]
        specs.append(spec)
    return specs, [str(node_id) for node_id in outputs]


def _typed(text, kind, *, fallback):
    text = (text or "").strip()
    if text == "":
        return None
    try:
        if kind == "integer":
            return int(text)
        if kind == "number":
            return float(text)
    except ValueError:
        return text  # check_definition reports it, naming the parameter
    if kind == "boolean":
        return text.lower() in ("1", "true", "yes", "on")
    return text


# --- a test run ------------------------------------------------------------------------------------------


def test_run(*, template, user):
    """Submit the latest version once with its defaults (the graph's own values where a parameter
    has no default; a grey placeholder for input images) as ``user``; return the request."""
    from generation import services
    from generation.workflows import get_workflow

    workflow = get_workflow(template.slug)
    version = template.versions.get(version=workflow.version)
    data = {"workflow": template.slug}
    for spec in version.parameters:
        target_node, target_input = spec["targets"][0]
        if spec["kind"] == "image":
            data[spec["name"]] = str(_placeholder_input(user, mask=bool(spec.get("mask"))).pk)
        elif spec["kind"] == "seed":
            continue  # random
        elif spec.get("default") is not None and not spec.get("required"):
            data[spec["name"]] = spec["default"]
        else:
            data[spec["name"]] = version.graph[target_node]["inputs"].get(target_input)
    request, _ = services.submit_generation(user=user, data=data, version=version.version)
    return request


def _placeholder_input(user, *, mask):
    import io

    from django.core.files.uploadedfile import SimpleUploadedFile
    from PIL import Image as PILImage

    from generation import inputs
    from generation.models import InputImage

    buffer = io.BytesIO()
    PILImage.new("RGB", (512, 512), (255, 255, 255) if mask else (128, 128, 128)).save(buffer, format="PNG")
    upload = SimpleUploadedFile("test-run.png", buffer.getvalue(), content_type="image/png")
    record, _ = inputs.store_upload(user=user, upload=upload,
                                    kind=InputImage.Kind.MASK if mask else InputImage.Kind.IMAGE)
    return record
