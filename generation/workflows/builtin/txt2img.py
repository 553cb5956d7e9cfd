"""txt2img: a prompt, a checkpoint with LoRAs, an empty latent, one sampler pass.

Node ids mirror the recorded graph (``prompt-accepted-txt2img-lora.json``): ``4``
CheckpointLoaderSimple → ``10``, ``11``, … LoraLoader (chained) → ``6``/``7`` CLIPTextEncode
(positive/negative) → ``5`` EmptyLatentImage → ``3`` KSampler → ``8`` VAEDecode → ``9`` SaveImage.
"""

from generation.workflows import common
from generation.workflows.base import Summary, Workflow
from generation.workflows.fields import Parameters

CHECKPOINT, POSITIVE, NEGATIVE, LATENT, SAMPLER, DECODE, SAVE = "4", "6", "7", "5", "3", "8", "9"
FIRST_LORA = 10


class TextToImage(Workflow):
    slug = "txt2img"
    version = 1
    name = "Text to image"
    description = "An image from a prompt: a checkpoint with optional LoRAs, one sampler pass."
    parameters = Parameters([
        *common.prompt_fields(),
        *common.checkpoint_fields(),
        *common.size_fields(),
        *common.sampler_fields(),
    ], groups={common.SAMPLER_GROUP: "Sampler"})

    def check(self, params, ctx, errors):
        common.check_pixels(errors, ctx, width=params["width"], height=params["height"])

    def summary(self, params, ctx):
        return Summary(prompt=params["prompt"], checkpoint_model=params["checkpoint_model"], width=params["width"],
                       height=params["height"], batch_size=params["batch_size"])

    def build(self, params, *, files, filename_prefix):
        graph = {}
        model, vae, positive, negative, loras = common.checkpoint_and_prompts(
            graph, params, checkpoint_id=CHECKPOINT, first_lora_id=FIRST_LORA, positive_id=POSITIVE,
            negative_id=NEGATIVE)
        graph[LATENT] = {"class_type": "EmptyLatentImage", "inputs": {
            "width": int(params["width"]), "height": int(params["height"]), "batch_size": int(params["batch_size"])}}
        samples = common.ksampler(graph, SAMPLER, sampler=params[common.SAMPLER_GROUP], model=model,
                                  positive=positive, negative=negative, latent=[LATENT, 0])
        common.decode_and_save(graph, decode_id=DECODE, save_id=SAVE, samples=samples, vae=vae,
                               filename_prefix=filename_prefix)
        graph.update(loras)  # LoRA nodes last, as in the recorded graph
        return graph

    def a1111_parameters(self, params):
        return common.diffusion_text(params, size=(params["width"], params["height"]))


WORKFLOW = TextToImage()
