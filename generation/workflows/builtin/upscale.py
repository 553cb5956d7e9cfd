"""upscale: an input image made ``scale_by`` times larger, with an upscale model or Lanczos.

With ``upscale_model`` (a model the registry offers): ``1`` LoadImage → ``2`` UpscaleModelLoader →
``3`` ImageUpscaleWithModel (the model's own factor) → ``4`` ImageScale to exactly ``scale_by`` ×
the input (Lanczos) → ``9`` SaveImage. Without: ``1`` LoadImage → ``4`` ImageScaleBy (Lanczos) →
``9`` SaveImage. No checkpoint, no prompt.
"""

from generation.pngmeta import a1111_text
from generation.workflows.base import Summary, Workflow
from generation.workflows.fields import Image, ModelChoice, Number, Parameters
from models_registry.models import ModelType

LOAD, LOADER, MODEL_UPSCALE, SCALE, SAVE = "1", "2", "3", "4", "9"
METHOD = "lanczos"


class Upscale(Workflow):
    slug = "upscale"
    version = 1
    name = "Upscale"
    description = "Make an image larger, with an upscale model when one is chosen, else Lanczos."
    parameters = Parameters([
        Image("input_image", label="Input image"),
        Number("scale_by", label="Scale by", default=2.0, minimum=1.0, maximum=4.0, source=("ImageScaleBy", "scale_by"),
               step=0.05),
        ModelChoice("upscale_model", label="Upscale model", model_type=ModelType.UPSCALE_MODEL, required=False,
                    help="Leave empty for a plain Lanczos resize"),
    ])

    @staticmethod
    def output_size(image, scale_by):
        """ImageScaleBy's rounding, used for the model path's exact ImageScale too."""
        return round(image.width * scale_by), round(image.height * scale_by)

    def check(self, params, ctx, errors):
        width, height = self.output_size(ctx.prepared["input_image"], params["scale_by"])
        limit = ctx.limits["MAX_UPSCALE_PIXELS"]
        if width * height > limit:
            errors.add("scale_by", f"The result would be {width} × {height}; at most {limit} pixels are allowed.")
        elif max(width, height) > 16384:
            errors.add("scale_by", f"The result would be {width} × {height}; ComfyUI's limit is 16384 a side.")
        elif min(width, height) < 16:
            errors.add("input_image", "The image is too small: the result must be at least 16 pixels a side.")

    def summary(self, params, ctx):
        width, height = self.output_size(ctx.prepared["input_image"], params["scale_by"])
        return Summary(width=width, height=height, batch_size=1)

    def build(self, params, *, files, filename_prefix):
        image = files["input_image"]
        graph = {LOAD: {"class_type": "LoadImage", "inputs": {"image": image.name}}}
        if params.get("upscale_model"):
            width, height = self.output_size(image, params["scale_by"])
            graph[LOADER] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": params["upscale_model"]}}
            graph[MODEL_UPSCALE] = {"class_type": "ImageUpscaleWithModel",
                                    "inputs": {"upscale_model": [LOADER, 0], "image": [LOAD, 0]}}
            graph[SCALE] = {"class_type": "ImageScale", "inputs": {
                "image": [MODEL_UPSCALE, 0], "upscale_method": METHOD, "width": width, "height": height,
                "crop": "disabled"}}
        else:
            graph[SCALE] = {"class_type": "ImageScaleBy", "inputs": {
                "image": [LOAD, 0], "upscale_method": METHOD, "scale_by": float(params["scale_by"])}}
        graph[SAVE] = {"class_type": "SaveImage", "inputs": {"filename_prefix": filename_prefix, "images": [SCALE, 0]}}
        return graph

    def a1111_parameters(self, params):
        upscaler = params.get("upscale_model") or "Lanczos"
        return a1111_text(prompt="", pairs=[("Postprocess upscale by", params["scale_by"]),
                                            ("Postprocess upscaler", upscaler)])


WORKFLOW = Upscale()
