"""inpaint: repaint part of an input image from a prompt.

The area to repaint is ``mask_image`` (white = repaint, the input's size) or, without one, the
input's transparent pixels. Node ids mirror the recorded graph (``prompt-accepted-inpaint.json``):
``4`` CheckpointLoaderSimple (→ ``20``… LoraLoader) → ``6``/``7`` CLIPTextEncode → ``11`` LoadImage
(its MASK output is where alpha is 0) or ``13`` LoadImageMask (red channel of the mask) →
``12`` VAEEncodeForInpaint (``grow_mask_by``) → ``3`` KSampler → ``8`` VAEDecode → ``9`` SaveImage.
"""

from generation.workflows import common
from generation.workflows.base import Summary, Workflow
from generation.workflows.fields import Image, Integer, Parameters

CHECKPOINT, POSITIVE, NEGATIVE, LOAD, ENCODE, MASK, REPEAT, SAMPLER, DECODE, SAVE = (
    "4", "6", "7", "11", "12", "13", "14", "3", "8", "9")
FIRST_LORA = 20


class Inpaint(Workflow):
    slug = "inpaint"
    version = 1
    name = "Inpaint"
    description = "Repaint the masked (or transparent) part of an image from a prompt."
    parameters = Parameters([
        Image("input_image", label="Input image"),
        Image("mask_image", label="Mask", required=False, mask=True,
              help="White = repaint, the input's size. Without a mask, the input's transparent area is repainted."),
        *common.prompt_fields(),
        *common.checkpoint_fields(),
        Integer("grow_mask_by", label="Grow mask by", default=6, source=("VAEEncodeForInpaint", "grow_mask_by"),
                help="Pixels added around the mask so the repainted area blends in"),
        Integer("batch_size", label="Batch size", default=1, minimum=1, cap="MAX_BATCH_SIZE",
                help="Variations per request"),
        *common.sampler_fields(denoise=1.0),
    ], groups={common.SAMPLER_GROUP: "Sampler"})

    def check(self, params, ctx, errors):
        if not common.check_input_size(errors, ctx, "input_image"):
            return
        image, mask = ctx.prepared["input_image"], ctx.prepared.get("mask_image")
        if mask is not None:
            if (mask.width, mask.height) != (image.width, image.height):
                errors.add("mask_image", f"The mask is {mask.width} × {mask.height}; it must be the input image's "
                                         f"size, {image.width} × {image.height}.")
        elif not image.has_transparency:
            errors.add("input_image", "The image has no transparent area to repaint; give a mask_image "
                                      "(white = repaint) or an image with transparency.")

    def summary(self, params, ctx):
        width, height = common.encoded_size(ctx.prepared["input_image"])
        return Summary(prompt=params["prompt"], checkpoint_model=params["checkpoint_model"], width=width,
                       height=height, batch_size=params["batch_size"])

    def build(self, params, *, files, filename_prefix):
        graph = {}
        model, vae, positive, negative, loras = common.checkpoint_and_prompts(
            graph, params, checkpoint_id=CHECKPOINT, first_lora_id=FIRST_LORA, positive_id=POSITIVE,
            negative_id=NEGATIVE)
        image, alpha_mask = common.load_image(graph, LOAD, file=files["input_image"])
        mask = alpha_mask
        if params.get("mask_image"):
            graph[MASK] = {"class_type": "LoadImageMask",
                           "inputs": {"image": files["mask_image"].name, "channel": "red"}}
            mask = [MASK, 0]
        graph[ENCODE] = {"class_type": "VAEEncodeForInpaint", "inputs": {
            "pixels": image, "vae": list(vae), "mask": mask, "grow_mask_by": int(params["grow_mask_by"])}}
        latent = [ENCODE, 0]
        if params["batch_size"] > 1:
            graph[REPEAT] = {"class_type": "RepeatLatentBatch", "inputs": {"samples": latent,
                                                                           "amount": int(params["batch_size"])}}
            latent = [REPEAT, 0]
        samples = common.ksampler(graph, SAMPLER, sampler=params[common.SAMPLER_GROUP], model=model,
                                  positive=positive, negative=negative, latent=latent)
        common.decode_and_save(graph, decode_id=DECODE, save_id=SAVE, samples=samples, vae=vae,
                               filename_prefix=filename_prefix)
        graph.update(loras)
        return graph

    def a1111_parameters(self, params):
        return common.diffusion_text(params, size=None, extra=[("Mask blur", params["grow_mask_by"])])


WORKFLOW = Inpaint()
