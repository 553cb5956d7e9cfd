"""hires: txt2img, then a latent upscale and a second sampler pass for detail (A1111's "hires fix").

Node ids follow the recorded two-pass graph (``prompt-accepted-hires-two-pass.json``): ``4``
CheckpointLoaderSimple (→ ``20``… LoraLoader) → ``6``/``7`` CLIPTextEncode → ``5`` EmptyLatentImage
→ ``3`` KSampler → ``13`` LatentUpscaleBy (``hires.scale``) → ``14`` KSampler (``hires.steps``,
``hires.denoise``, the same seed) → ``8`` VAEDecode → ``9`` SaveImage. The results are
``hires.scale`` × the size (LatentUpscaleBy rounds to a multiple of 8).
"""

from generation.workflows import common
from generation.workflows.base import Summary, Workflow
from generation.workflows.fields import Choice, Integer, Number, Parameters

CHECKPOINT, POSITIVE, NEGATIVE, LATENT, SAMPLER, UPSCALE, SECOND, DECODE, SAVE = (
    "4", "6", "7", "5", "3", "13", "14", "8", "9")
FIRST_LORA = 20
GROUP = "hires"


def upscaled(size, scale):
    """LatentUpscaleBy's rounding: on the latent (1/8 of the pixels), then back to pixels."""
    return round(size / 8 * scale) * 8


class HiresFix(Workflow):
    slug = "hires"
    version = 1
    name = "Hires fix"
    description = "Text to image, then upscaled and refined by a second sampler pass for more detail."
    parameters = Parameters([
        *common.prompt_fields(),
        *common.checkpoint_fields(),
        *common.size_fields(),
        Number(f"{GROUP}.scale", label="Upscale by", default=1.5, minimum=1.0, maximum=4.0,
               source=("LatentUpscaleBy", "scale_by"), step=0.05, help="The results are this many times the size"),
        Number(f"{GROUP}.denoise", label="Second pass denoise", default=0.5, source=("KSampler", "denoise"),
               step=0.01, help="How much the second pass may change"),
        Integer(f"{GROUP}.steps", label="Second pass steps", default=10, source=("KSampler", "steps"),
                cap="MAX_STEPS"),
        Choice(f"{GROUP}.upscale_method", label="Latent upscale method", default="nearest-exact",
               source=("LatentUpscaleBy", "upscale_method"), advanced=True),
        *common.sampler_fields(),
    ], groups={common.SAMPLER_GROUP: "Sampler", GROUP: "Second pass"})

    def check(self, params, ctx, errors):
        if not common.check_pixels(errors, ctx, width=params["width"], height=params["height"]):
            return
        width, height = self._output_size(params)
        common.check_pixels(errors, ctx, width=width, height=height, path=f"{GROUP}.scale",
                            what="The upscaled width × height")

    def _output_size(self, params):
        scale = params[GROUP]["scale"]
        return upscaled(params["width"], scale), upscaled(params["height"], scale)

    def summary(self, params, ctx):
        width, height = self._output_size(params)
        return Summary(prompt=params["prompt"], checkpoint_model=params["checkpoint_model"], width=width,
                       height=height, batch_size=params["batch_size"])

    def build(self, params, *, files, filename_prefix):
        graph = {}
        model, vae, positive, negative, loras = common.checkpoint_and_prompts(
            graph, params, checkpoint_id=CHECKPOINT, first_lora_id=FIRST_LORA, positive_id=POSITIVE,
            negative_id=NEGATIVE)
        graph[LATENT] = {"class_type": "EmptyLatentImage", "inputs": {
            "width": int(params["width"]), "height": int(params["height"]), "batch_size": int(params["batch_size"])}}
        sampler, second = params[common.SAMPLER_GROUP], params[GROUP]
        first = common.ksampler(graph, SAMPLER, sampler=sampler, model=model, positive=positive, negative=negative,
                                latent=[LATENT, 0])
        graph[UPSCALE] = {"class_type": "LatentUpscaleBy", "inputs": {
            "samples": first, "upscale_method": second["upscale_method"], "scale_by": float(second["scale"])}}
        samples = common.ksampler(graph, SECOND, sampler={**sampler, "steps": second["steps"],
                                                          "denoise": second["denoise"]},
                                  model=model, positive=positive, negative=negative, latent=[UPSCALE, 0])
        common.decode_and_save(graph, decode_id=DECODE, save_id=SAVE, samples=samples, vae=vae,
                               filename_prefix=filename_prefix)
        graph.update(loras)
        return graph

    def a1111_parameters(self, params):
        second = params[GROUP]
        return common.diffusion_text(params, size=(params["width"], params["height"]), extra=[
            ("Hires upscale", second["scale"]), ("Hires steps", second["steps"]),
            ("Hires upscaler", f"Latent ({second['upscale_method']})"),
            ("Denoising strength", second["denoise"])], denoise=False)


WORKFLOW = HiresFix()
