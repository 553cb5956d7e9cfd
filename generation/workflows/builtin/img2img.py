"""img2img: an input image re-drawn from a prompt; ``sampler_params.denoise`` says how much changes.

Node ids mirror the recorded graph (``prompt-accepted-img2img.json``): ``4`` CheckpointLoaderSimple
(→ ``20``, ``21``, … LoraLoader, chained) → ``6``/``7`` CLIPTextEncode → ``11`` LoadImage → ``12``
VAEEncode → (``13`` RepeatLatentBatch for a batch) → ``3`` KSampler → ``8`` VAEDecode → ``9``
SaveImage. VAEEncode crops the image to multiples of 8, so the results have the input's size
rounded down to a multiple of 8.
"""

from generation.workflows import common
from generation.workflows.base import Summary, Workflow
from generation.workflows.fields import Image, Integer, Parameters

CHECKPOINT, POSITIVE, NEGATIVE, LOAD, ENCODE, REPEAT, SAMPLER, DECODE, SAVE = (
    "4", "6", "7", "11", "12", "13", "3", "8", "9")
FIRST_LORA = 20


class ImageToImage(Workflow):
    slug = "img2img"
    version = 1
    name = "Image to image"
    description = "Re-draw an input image from a prompt; denoise sets how much of it changes."
    parameters = Parameters([
        Image("input_image", label="Input image"),
        *common.prompt_fields(),
        *common.checkpoint_fields(),
        Integer("batch_size", label="Batch size", default=1, minimum=1, cap="MAX_BATCH_SIZE",
                help="Variations of the image per request"),
        *common.sampler_fields(denoise=0.6, main=("denoise",)),
    ], groups={common.SAMPLER_GROUP: "Sampler"})

    def check(self, params, ctx, errors):
        common.check_input_size(errors, ctx, "input_image")

    def summary(self, params, ctx):
        width, height = common.encoded_size(ctx.prepared["input_image"])
        return Summary(prompt=params["prompt"], checkpoint_model=params["checkpoint_model"], width=width,
                       height=height, batch_size=params["batch_size"])

    def build(self, params, *, files, filename_prefix):
        graph = {}
        model, vae, positive, negative, loras = common.checkpoint_and_prompts(
            graph, params, checkpoint_id=CHECKPOINT, first_lora_id=FIRST_LORA, positive_id=POSITIVE,
            negative_id=NEGATIVE)
        image, _ = common.load_image(graph, LOAD, file=files["input_image"])
        graph[ENCODE] = {"class_type": "VAEEncode", "inputs": {"pixels": image, "vae": list(vae)}}
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
        return common.diffusion_text(params, size=None)


WORKFLOW = ImageToImage()
