"""Pieces several workflow modules assemble: parameter declarations and graph fragments.

Nothing here picks node ids or decides which parameters a workflow has; each workflow module
chooses its own and passes them in.
"""

from generation.pngmeta import a1111_text
from generation.workflows.fields import Choice, Integer, Loras, ModelChoice, Number, Seed, Text
from models_registry.models import ModelType

SAMPLER_GROUP = "sampler_params"
SIZE_PRESETS = [(512, 512), (768, 768), (1024, 1024), (832, 1216), (1216, 832), (896, 1152), (1152, 896),
                (512, 768), (768, 512)]


def prompt_fields():
    return [
        Text("prompt", label="Prompt", required=True, placeholder="What should the image show?"),
        Text("negative_prompt", label="Negative prompt", placeholder="What should it avoid?"),
    ]


def checkpoint_fields():
    return [ModelChoice("checkpoint_model", label="Checkpoint", model_type=ModelType.CHECKPOINT), Loras()]


def size_fields(*, width=512, height=512):
    return [
        Integer("width", label="Width", default=width, source=("EmptyLatentImage", "width"), multiple_of=8),
        Integer("height", label="Height", default=height, source=("EmptyLatentImage", "height"), multiple_of=8),
        Integer("batch_size", label="Batch size", default=1, minimum=1, cap="MAX_BATCH_SIZE",
                help="Images per request"),
    ]


def sampler_fields(group=SAMPLER_GROUP, *, denoise=1.0, steps=20, advanced=True, with_seed=True,
                   with_names=True, main=()):
    """Seed, steps, CFG, sampler, scheduler and denoise of one KSampler, under ``group``; the form
    tucks them under "Advanced" (``advanced``) except those named in ``main`` (e.g. ``("denoise",)``)."""
    fields = []
    if with_seed:
        fields.append(Seed(f"{group}.seed", advanced=advanced))
    fields += [
        Integer(f"{group}.steps", label="Steps", default=steps, source=("KSampler", "steps"), cap="MAX_STEPS",
                advanced=advanced),
        Number(f"{group}.cfg", label="CFG scale", default=7.0, source=("KSampler", "cfg"), step=0.1,
               advanced=advanced),
    ]
    if with_names:
        fields += [
            Choice(f"{group}.sampler_name", label="Sampler", default="euler", source=("KSampler", "sampler_name"),
                   advanced=advanced),
            Choice(f"{group}.scheduler", label="Scheduler", default="normal", source=("KSampler", "scheduler"),
                   advanced=advanced),
        ]
    fields.append(Number(f"{group}.denoise", label="Denoise", default=denoise, source=("KSampler", "denoise"),
                         step=0.01, advanced=advanced))
    for item in fields:
        if item.path[-1] in main:
            item.advanced = False
            if item.path[-1] == "denoise":
                item.help = "How much of the input changes: 0 keeps it, 1 re-draws it entirely"
    return fields


def check_pixels(errors, ctx, *, width, height, path="width", what="width × height"):
    """The output-size limit (``MAX_PIXELS``), reported at ``path``."""
    limit = ctx.limits["MAX_PIXELS"]
    if width and height and width * height > limit:
        errors.add(path, f"{what} must not exceed {limit} pixels.")
        return False
    return True


# --- graph fragments --------------------------------------------------------------------------------


def load_checkpoint(graph, node_id, *, checkpoint, loras, first_lora_id):
    """CheckpointLoaderSimple, then LoraLoader × n chained (each takes the previous model and clip).

    Returns ``(model, clip, vae)`` links. LoRA nodes get ids ``first_lora_id``, +1, …
    """
    graph[node_id] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}}
    model, clip = [node_id, 0], [node_id, 1]
    for index, lora in enumerate(loras or ()):
        lora_id = str(first_lora_id + index)
        graph[lora_id] = {"class_type": "LoraLoader",
                          "inputs": {"model": model, "clip": clip, "lora_name": lora["name"],
                                     "strength_model": float(lora.get("strength_model", 1.0)),
                                     "strength_clip": float(lora.get("strength_clip", 1.0))}}
        model, clip = [lora_id, 0], [lora_id, 1]
    return model, clip, [node_id, 2]


def encode_prompts(graph, *, positive_id, negative_id, clip, prompt, negative_prompt):
    graph[positive_id] = {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": list(clip)}}
    graph[negative_id] = {"class_type": "CLIPTextEncode", "inputs": {"text": negative_prompt or "", "clip": list(clip)}}
    return [positive_id, 0], [negative_id, 0]


def checkpoint_and_prompts(graph, params, *, checkpoint_id, first_lora_id, positive_id, negative_id):
    """The head of every checkpoint workflow: the checkpoint, its LoRA chain (:func:`load_checkpoint`) and
    the two prompts (:func:`encode_prompts`), from the ``checkpoint_model``, ``lora_models``, ``prompt`` and
    ``negative_prompt`` parameters, at the node ids the workflow gives. Returns ``(model, vae, positive,
    negative, loras)``; the LoRA nodes are taken out of ``graph`` and returned, for the caller to add last
    (where the recorded graphs have them)."""
    model, clip, vae = load_checkpoint(graph, checkpoint_id, checkpoint=params["checkpoint_model"],
                                       loras=params["lora_models"], first_lora_id=first_lora_id)
    loras = {node_id: graph.pop(node_id) for node_id in list(graph) if node_id != checkpoint_id}
    positive, negative = encode_prompts(graph, positive_id=positive_id, negative_id=negative_id, clip=clip,
                                        prompt=params["prompt"], negative_prompt=params["negative_prompt"])
    return model, vae, positive, negative, loras


def ksampler(graph, node_id, *, sampler, model, positive, negative, latent, seed=None):
    """A KSampler node from a validated sampler group (``seed`` overrides the group's, if given)."""
    graph[node_id] = {"class_type": "KSampler", "inputs": {
        "seed": int(sampler["seed"] if seed is None else seed),
        "steps": int(sampler["steps"]),
        "cfg": float(sampler["cfg"]),
        "sampler_name": sampler["sampler_name"],
        "scheduler": sampler["scheduler"],
        "denoise": float(sampler["denoise"]),
        "model": list(model),
        "positive": list(positive),
        "negative": list(negative),
        "latent_image": list(latent),
    }}
    return [node_id, 0]


def decode_and_save(graph, *, decode_id, save_id, samples, vae, filename_prefix):
    graph[decode_id] = {"class_type": "VAEDecode", "inputs": {"samples": list(samples), "vae": list(vae)}}
    graph[save_id] = {"class_type": "SaveImage",
                      "inputs": {"filename_prefix": filename_prefix, "images": [decode_id, 0]}}


def save(graph, *, save_id, images, filename_prefix):
    graph[save_id] = {"class_type": "SaveImage", "inputs": {"filename_prefix": filename_prefix, "images": list(images)}}


def load_image(graph, node_id, *, file):
    """LoadImage of an uploaded input (an :class:`InputFile`; outputs: IMAGE 0, MASK 1 = where alpha is 0)."""
    graph[node_id] = {"class_type": "LoadImage", "inputs": {"image": file.name}}
    return [node_id, 0], [node_id, 1]


def encoded_size(image):
    """The size VAEEncode works at: the image cropped to multiples of 8."""
    return image.width // 8 * 8, image.height // 8 * 8


def check_input_size(errors, ctx, path):
    """An input image must be at least 16 pixels a side once cropped to multiples of 8."""
    width, height = encoded_size(ctx.prepared[path])
    if min(width, height) < 16:
        errors.add(path, "The image is too small: at least 16 × 16 pixels are needed.")
        return False
    return True


# --- A1111 text ---------------------------------------------------------------------------------------


def sampler_pairs(sampler, *, prefix=""):
    return [
        (f"{prefix}Steps", sampler.get("steps")),
        (f"{prefix}Sampler", sampler.get("sampler_name")),
        (f"{prefix}Schedule type", sampler.get("scheduler")),
        (f"{prefix}CFG scale", sampler.get("cfg")),
    ]


def diffusion_text(params, *, size, extra=(), denoise=True):
    """The A1111 ``parameters`` text of a checkpoint workflow (prompt, sampler, model, LoRAs);
    ``size`` None leaves the size out (an image-to-image result has its input's size)."""
    sampler = params.get(SAMPLER_GROUP) or {}
    pairs = [*sampler_pairs(sampler), ("Seed", sampler.get("seed")),
             ("Size", f"{size[0]}x{size[1]}" if size else None), ("Model", params.get("checkpoint_model"))]
    if denoise:
        pairs.append(("Denoising strength", sampler.get("denoise")))
    pairs += list(extra)
    if (params.get("batch_size") or 1) > 1:
        pairs.append(("Batch size", params["batch_size"]))
    return a1111_text(prompt=params.get("prompt", ""), negative_prompt=params.get("negative_prompt", ""),
                      pairs=pairs, loras=params.get("lora_models") or [])
