"""The text-to-image graph Genonaut sends, in ComfyUI's API format.

Node ids mirror the recorded txt2img graph (``prompt-accepted-txt2img-lora.json``):
``4`` CheckpointLoaderSimple → ``10``, ``11``, … LoraLoader (chained: each takes the previous
model and clip) → ``6``/``7`` CLIPTextEncode (positive/negative) → ``5`` EmptyLatentImage →
``3`` KSampler → ``8`` VAEDecode → ``9`` SaveImage. No other module builds ComfyUI graphs.
"""

import secrets

from generation.comfyui.errors import WorkflowRejected
from generation.comfyui.validation import validate_prompt

CHECKPOINT_NODE_ID = "4"
LATENT_NODE_ID = "5"
POSITIVE_NODE_ID = "6"
NEGATIVE_NODE_ID = "7"
SAMPLER_NODE_ID = "3"
DECODE_NODE_ID = "8"
SAVE_NODE_ID = "9"
FIRST_LORA_NODE_ID = 10
RANDOM_SEED = -1
SEED_MAX = 18446744073709551615  # KSampler's seed is an unsigned 64-bit int


def _lora_fields(lora):
    if isinstance(lora, dict):
        return lora["name"], lora.get("strength_model", 1.0), lora.get("strength_clip", 1.0)
    return lora.name, lora.strength_model, lora.strength_clip


def build_workflow(*, prompt, negative_prompt, checkpoint_model, lora_models, width, height, batch_size,
                   sampler_params, filename_prefix):
    """Return the API-format graph for one request.

    ``lora_models`` holds ``{name, strength_model, strength_clip}`` dicts (or objects with those
    attributes), applied in order. A seed of ``-1`` is replaced by a random one, which the returned
    graph records (store the graph to reproduce the image). ``filename_prefix`` must be unique per
    request: SaveImage numbers files per prefix, and a ``/`` in it becomes ComfyUI's subfolder.
    """
    seed = int(sampler_params.get("seed", RANDOM_SEED))
    if seed == RANDOM_SEED:
        seed = secrets.randbelow(SEED_MAX + 1)
    model, clip = [CHECKPOINT_NODE_ID, 0], [CHECKPOINT_NODE_ID, 1]
    graph = {
        CHECKPOINT_NODE_ID: {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint_model}},
    }
    loras = {}
    for index, lora in enumerate(lora_models or ()):
        name, strength_model, strength_clip = _lora_fields(lora)
        node_id = str(FIRST_LORA_NODE_ID + index)
        loras[node_id] = {"class_type": "LoraLoader",
                          "inputs": {"model": model, "clip": clip, "lora_name": name,
                                     "strength_model": float(strength_model), "strength_clip": float(strength_clip)}}
        model, clip = [node_id, 0], [node_id, 1]
    graph[POSITIVE_NODE_ID] = {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": list(clip)}}
    graph[NEGATIVE_NODE_ID] = {"class_type": "CLIPTextEncode",
                               "inputs": {"text": negative_prompt or "", "clip": list(clip)}}
    graph[LATENT_NODE_ID] = {"class_type": "EmptyLatentImage",
                             "inputs": {"width": int(width), "height": int(height), "batch_size": int(batch_size)}}
    graph[SAMPLER_NODE_ID] = {"class_type": "KSampler", "inputs": {
        "seed": seed,
        "steps": int(sampler_params.get("steps", 20)),
        "cfg": float(sampler_params.get("cfg", 7.0)),
        "sampler_name": sampler_params.get("sampler_name", "euler"),
        "scheduler": sampler_params.get("scheduler", "normal"),
        "denoise": float(sampler_params.get("denoise", 1.0)),
        "model": list(model),
        "positive": [POSITIVE_NODE_ID, 0],
        "negative": [NEGATIVE_NODE_ID, 0],
        "latent_image": [LATENT_NODE_ID, 0],
    }}
    graph[DECODE_NODE_ID] = {"class_type": "VAEDecode",
                             "inputs": {"samples": [SAMPLER_NODE_ID, 0], "vae": [CHECKPOINT_NODE_ID, 2]}}
    graph[SAVE_NODE_ID] = {"class_type": "SaveImage",
                           "inputs": {"filename_prefix": filename_prefix, "images": [DECODE_NODE_ID, 0]}}
    graph.update(loras)
    return graph


def workflow_seed(workflow):
    """The seed a built graph uses (after ``-1`` was replaced)."""
    return workflow[SAMPLER_NODE_ID]["inputs"]["seed"]


def check_workflow(workflow, object_info, *, backend=""):
    """Validate ``workflow`` against a backend's ``object_info`` exactly as ComfyUI would.

    Raises :class:`WorkflowRejected` with ComfyUI's ``error``/``node_errors`` body when the graph
    would be refused, including a partial acceptance (our graph has one output, so any node
    error means no image).
    """
    result = validate_prompt(workflow, object_info)
    if not result.ok or result.node_errors:
        error = result.error or {"type": "prompt_outputs_failed_validation",
                                 "message": "Prompt outputs failed validation", "details": "", "extra_info": {}}
        raise WorkflowRejected(error, result.node_errors, backend=backend)
    return result
