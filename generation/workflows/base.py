"""The one small interface every workflow type implements.

A workflow is a named, versioned kind of ComfyUI graph with its own parameters. Everything that
knows a node id or a parameter of a workflow lives in that workflow's module; the rest of
Genonaut (services, runner, dispatcher, API, forms) talks to it only through :class:`Workflow`:

- ``parameters``: the one definition that validates, documents (JSON Schema) and renders (form);
- ``check(params, ctx, errors)``: cross-field rules (sizes, masks);
- ``summary(params, ctx)``: the few values stored in real columns for history lists, filters and
  dispatch (:class:`Summary`);
- ``build(params, files=…, filename_prefix=…)``: the API-format graph (``files`` maps each input
  image parameter to an :class:`InputFile`: its name on the chosen backend and its size);
- ``input_files(params)``, ``model_references(params)``, ``requirements(params)``: what the graph
  needs on a backend (files to upload, model files, node classes);
- ``output_nodes(graph)``, ``progress_weights(graph)``: where results appear and how per-node
  progress adds up to one fraction;
- ``a1111_parameters(params)``: the PNG ``parameters`` text;
- ``regenerate_data(params, same_seed=…)``: the body that submits the same thing again.
"""

import hashlib
import json
from dataclasses import dataclass

from generation.comfyui.errors import WorkflowRejected
from generation.comfyui.validation import validate_prompt
from generation.errors import ParamsInvalid
from generation.workflows.fields import MODEL_FOLDERS, Errors

# Nodes whose outputs are results (what the runner downloads), and nodes that report step progress.
OUTPUT_NODE_CLASSES = frozenset({"SaveImage", "SaveAnimatedWEBP", "SaveAnimatedPNG", "SaveWEBM", "SaveVideo"})
STEPPED_NODE_CLASSES = frozenset({"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced",
                                  "ImageUpscaleWithModel"})
STEPPED_SHARE = 0.85  # of the progress bar: stepped nodes (sampling) dominate a run's time
PLACEHOLDER_FILE = "genonaut/placeholder.png"
# loader inputs that name a file of a model folder a backend lists (its capabilities)
LOADER_INPUTS = {("CheckpointLoaderSimple", "ckpt_name"): "checkpoints", ("LoraLoader", "lora_name"): "loras",
                 ("LoraLoaderModelOnly", "lora_name"): "loras", ("UpscaleModelLoader", "model_name"): "upscale_models"}


@dataclass(frozen=True)
class InputFile:
    """An input image as a graph sees it: its name in the backend's ``input/`` folder, and its size."""

    name: str
    width: int
    height: int


@dataclass(frozen=True)
class Summary:
    """What history lists, filters and dispatch read from real columns."""

    prompt: str = ""  # the text people search and recognise a request by ("" when there is none)
    checkpoint_model: str = ""  # "" when the graph loads no checkpoint (affinity is neutral then)
    width: int = 0  # of the results
    height: int = 0
    batch_size: int = 1  # images produced


@dataclass(frozen=True)
class Requirements:
    """What a backend must have to run a request: node classes and model files by ComfyUI folder."""

    nodes: tuple
    models: tuple  # ((folder, (names…)), …), sorted

    @classmethod
    def of(cls, nodes, models):
        folders = {}
        for folder, name in models:
            folders.setdefault(folder, set()).add(name)
        return cls(tuple(sorted(set(nodes))),
                   tuple((folder, tuple(sorted(names))) for folder, names in sorted(folders.items())))

    def as_json(self):
        return {"nodes": list(self.nodes), "models": {folder: list(names) for folder, names in self.models}}

    @property
    def key(self):
        """sha256 of the canonical JSON: equal requirements share one ``RequirementSet`` row."""
        canonical = json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @classmethod
    def from_json(cls, data):
        data = data or {}
        return cls.of(data.get("nodes", ()), [(folder, name) for folder, names in (data.get("models") or {}).items()
                                              for name in names])

    def missing_on(self, node_classes, model_lists):
        """Human names of what a backend with ``node_classes`` and ``model_lists`` ({folder: names}) lacks."""
        missing = [f"node {name}" for name in self.nodes if name not in node_classes]
        for folder, names in self.models:
            have = set(model_lists.get(folder) or ())
            missing += [f"{folder} {name}" for name in names if name not in have]
        return missing


class Workflow:
    """Base class of every workflow type (built-in modules and operator templates)."""

    slug = ""
    version = 1
    name = ""
    description = ""
    parameters = None  # a fields.Parameters

    def __repr__(self):
        return f"<Workflow {self.slug} v{self.version}>"

    # --- validation ---------------------------------------------------------------------------

    def validate(self, data, ctx):
        """Raw input (API JSON or form data, without ``workflow``) → params; raises ``ParamsInvalid``
        with every problem keyed by dotted path."""
        if not isinstance(data, dict):
            raise ParamsInvalid({"non_field_errors": ["Expected a JSON object."]})
        errors = Errors()
        params = self.parameters.clean(data, ctx, errors)
        if not errors:
            self.check(params, ctx, errors)
        if errors:
            raise ParamsInvalid(errors.fields)
        return params

    def check(self, params, ctx, errors):
        """Rules across fields (override); add problems to ``errors``."""

    def summary(self, params, ctx):
        raise NotImplementedError

    # --- the graph ----------------------------------------------------------------------------

    def build(self, params, *, files, filename_prefix):
        raise NotImplementedError

    def input_files(self, params):
        """``{parameter path: input image id}`` the graph loads (uploaded to the backend at dispatch)."""
        return self.parameters.input_references(params)

    def model_references(self, params):
        """``[(model type, name)]`` of the model files the graph loads."""
        return self.parameters.model_references(params)

    def requirements(self, params):
        """The graph's node classes, and the model files its loaders name (parameters and fixed values)."""
        graph = self.build(params, files={path: InputFile(PLACEHOLDER_FILE, 512, 512)
                                          for path in self.input_files(params)},
                           filename_prefix="genonaut/requirements")
        models = [(MODEL_FOLDERS[model_type], name) for model_type, name in self.model_references(params)]
        models += [(folder, node["inputs"][name]) for node in graph.values()
                   for (class_type, name), folder in LOADER_INPUTS.items()
                   if node.get("class_type") == class_type and isinstance(node.get("inputs", {}).get(name), str)]
        return Requirements.of({node["class_type"] for node in graph.values()}, models)

    def output_nodes(self, graph):
        """Ids of the nodes whose outputs are the request's results, in result order."""
        return sorted((node_id for node_id, node in graph.items() if node.get("class_type") in OUTPUT_NODE_CLASSES),
                      key=_node_order)

    def progress_weights(self, graph):
        """``{node id: weight}``: stepped nodes share most of the bar by their step counts, the rest
        share what is left equally. The runner adds each node's done fraction times its weight."""
        stepped = {node_id: float(max(1, int(node.get("inputs", {}).get("steps", 20))
                                      if isinstance(node.get("inputs", {}).get("steps", 20), int) else 20))
                   for node_id, node in graph.items() if node.get("class_type") in STEPPED_NODE_CLASSES}
        others = [node_id for node_id in graph if node_id not in stepped]
        if not stepped:
            return {node_id: 1.0 / len(graph) for node_id in graph}
        total = sum(stepped.values())
        weights = {node_id: STEPPED_SHARE * steps / total for node_id, steps in stepped.items()}
        for node_id in others:
            weights[node_id] = (1 - STEPPED_SHARE) / len(others)
        if not others:
            weights = {node_id: weight / STEPPED_SHARE for node_id, weight in weights.items()}
        return weights

    # --- what people see -------------------------------------------------------------------------

    def a1111_parameters(self, params):
        raise NotImplementedError

    def detail_rows(self, params):
        return self.parameters.rows(params)

    def schema(self, ctx):
        return self.parameters.schema(ctx)

    def seed(self, params):
        seeds = self.parameters.seeds(params)
        return seeds[0] if seeds else None

    def regenerate_data(self, params, *, same_seed):
        """The submit body that asks for the same thing again (a new random seed unless ``same_seed``)."""
        data = params if same_seed else self.parameters.with_new_seeds(params)
        return {key: value for key, value in data.items()}


def _node_order(node_id):
    return (0, int(node_id), "") if str(node_id).isdigit() else (1, 0, str(node_id))


def check_graph(graph, object_info, *, backend=""):
    """Validate ``graph`` against a backend's ``object_info`` exactly as ComfyUI would.

    Raises :class:`WorkflowRejected` with ComfyUI's ``error``/``node_errors`` body when the graph
    would be refused, including a partial acceptance (a request wants every output it asked for).
    """
    result = validate_prompt(graph, object_info)
    if not result.ok or result.node_errors:
        error = result.error or {"type": "prompt_outputs_failed_validation",
                                 "message": "Prompt outputs failed validation", "details": "", "extra_info": {}}
        raise WorkflowRejected(error, result.node_errors, backend=backend)
    return result
