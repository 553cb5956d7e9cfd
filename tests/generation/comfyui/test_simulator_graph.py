"""The simulator's dataflow: the sizes, batches and step counts ComfyUI's own node code gives."""

import hashlib
import io
from types import SimpleNamespace

import pytest
from PIL import Image

from generation.comfyui.object_info import recorded_object_info
from generation.comfyui.simulator_graph import Graph, NodeFailed, Renderer, preview_jpeg, upscale_factor

CKPT = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15-random.safetensors"}}
TEXT = {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["ckpt", 1]}}


def stored(data):
    return SimpleNamespace(data=data, digest=hashlib.sha256(data).hexdigest())


def png(size, mode="RGB", frames=1):
    buffer = io.BytesIO()
    pictures = [Image.new(mode, size, (10 * i, 20, 30) if mode == "RGB" else (10 * i, 20, 30, 0))
                for i in range(frames)]
    pictures[0].save(buffer, format="PNG", save_all=frames > 1, append_images=pictures[1:])
    return buffer.getvalue()


FILES = {("input", "photo.png"): stored(png((70, 50))), ("input", "rgba.png"): stored(png((33, 17), "RGBA")),
         ("input", "anim.png"): stored(png((24, 16), frames=3)), ("input", "text.png"): stored(b"not an image"),
         ("output", "earlier_00001_.png"): stored(png((48, 40)))}


def graph(nodes, **kwargs):
    prompt = {"ckpt": CKPT, "pos": TEXT, **nodes}
    return Graph(prompt, catalogue=recorded_object_info().data, files=lambda folder, path: FILES.get((folder, path)),
                 **kwargs)


def size(value):
    return value.width, value.height, value.batch


def sampler(latent, **inputs):
    return {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 4, "cfg": 7, "sampler_name": "euler",
                                                  "scheduler": "normal", "denoise": 1.0, "model": ["ckpt", 0],
                                                  "positive": ["pos", 0], "negative": ["pos", 0],
                                                  "latent_image": latent, **inputs}}


def test_empty_latent_and_latent_upscale_round_like_comfyui():
    g = graph({"e": {"class_type": "EmptyLatentImage", "inputs": {"width": 100, "height": 70, "batch_size": 2}},
               "by": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["e", 0], "upscale_method": "bislerp",
                                                                 "scale_by": 1.5}},
               "w0": {"class_type": "LatentUpscale", "inputs": {"samples": ["e", 0], "upscale_method": "area",
                                                               "width": 0, "height": 200, "crop": "disabled"}},
               "small": {"class_type": "LatentUpscale", "inputs": {"samples": ["e", 0], "upscale_method": "area",
                                                                  "width": 16, "height": 24, "crop": "disabled"}}})
    assert size(g.value("e", 0)) == (96, 64, 2)  # latent of 12x8
    assert size(g.value("by", 0)) == (144, 96, 2)  # round(12*1.5)=18, round(8*1.5)=12
    assert size(g.value("w0", 0)) == (296, 200, 2)  # width = round(12 * 200 / 8) = 300 pixels -> 37 latent
    assert size(g.value("small", 0)) == (64, 64, 2)  # LatentUpscale's minimum of 64


def test_load_image_reads_the_real_size_frames_and_alpha_mask():
    g = graph({"rgb": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
               "rgba": {"class_type": "LoadImage", "inputs": {"image": "rgba.png"}},
               "anim": {"class_type": "LoadImage", "inputs": {"image": "anim.png"}},
               "out": {"class_type": "LoadImage", "inputs": {"image": "earlier_00001_.png [output]"}},
               "mask": {"class_type": "LoadImageMask", "inputs": {"image": "rgba.png", "channel": "alpha"}},
               "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["rgb", 0], "vae": ["ckpt", 2]}},
               "inp": {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["rgba", 0], "vae": ["ckpt", 2],
                                                                       "mask": ["rgba", 1], "grow_mask_by": 6}}})
    assert size(g.value("rgb", 0)) == (70, 50, 1) and size(g.value("rgb", 1)) == (64, 64, 1)  # no alpha: 64² zeros
    assert size(g.value("rgba", 1)) == (33, 17, 1) and size(g.value("anim", 0)) == (24, 16, 3)
    assert size(g.value("out", 0)) == (48, 40, 1) and size(g.value("mask", 0)) == (33, 17, 1)
    assert size(g.value("enc", 0)) == (64, 48, 1) and size(g.value("inp", 0)) == (32, 16, 1)


@pytest.mark.parametrize("name, exception", [("text.png", "PIL.UnidentifiedImageError"),
                                             ("gone.png", "FileNotFoundError")])
def test_a_file_loadimage_cannot_read_fails_the_node(name, exception):
    g = graph({"load": {"class_type": "LoadImage", "inputs": {"image": name}}})
    with pytest.raises(NodeFailed) as caught:
        g.outputs("load")
    assert caught.value.exception_type == exception


def test_image_scaling_and_upscale_models():
    g = graph({"img": {"class_type": "EmptyImage", "inputs": {"width": 90, "height": 60, "batch_size": 1,
                                                              "color": 0}},
               "w0": {"class_type": "ImageScale", "inputs": {"image": ["img", 0], "upscale_method": "lanczos",
                                                             "width": 0, "height": 45, "crop": "disabled"}},
               "by": {"class_type": "ImageScaleBy", "inputs": {"image": ["img", 0], "upscale_method": "lanczos",
                                                               "scale_by": 1.25}},
               "mp": {"class_type": "ImageScaleToTotalPixels", "inputs": {"image": ["img", 0], "megapixels": 0.25,
                                                                          "upscale_method": "area",
                                                                          "resolution_steps": 8}},
               "x2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "RealESRGAN_x2plus.pth"}},
               "up": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["x2", 0],
                                                                        "image": ["img", 0]}},
               "crop": {"class_type": "ImageCrop", "inputs": {"image": ["img", 0], "width": 50, "height": 50,
                                                              "x": 60, "y": 20}},
               "pad": {"class_type": "ImagePadForOutpaint", "inputs": {"image": ["img", 0], "left": 8, "top": 0,
                                                                       "right": 16, "bottom": 8, "feathering": 0}}})
    assert size(g.value("w0", 0)) == (68, 45, 1)  # round(90 * 45 / 60) = round(67.5) = 68
    assert size(g.value("by", 0)) == (112, 75, 1)  # round(112.5) = 112, like Python
    assert size(g.value("mp", 0)) == (624, 416, 1)  # sqrt(0.25 MiB / 5400) = 6.967: round(78.4) * 8, round(52.3) * 8
    assert size(g.value("up", 0)) == (180, 120, 1) and size(g.value("crop", 0)) == (30, 40, 1)
    assert size(g.value("pad", 0)) == (114, 68, 1) and size(g.value("pad", 1)) == (114, 68, 1)


@pytest.mark.parametrize("name, factor", [("4x-UltraSharp.pth", 4), ("RealESRGAN_x2plus.pth", 2),
                                          ("upscalers/2x_NMKD-Siax.pth", 2), ("ESRGAN_4x.pth", 4),
                                          ("RealESRGAN_x4plus_anime_6B.pth", 4), ("8x_NMKD-Superscale.pt", 8),
                                          ("swinir.pth", 4)])
def test_upscale_factor_is_read_from_the_model_name(name, factor):
    assert upscale_factor(name) == factor


def test_every_sampler_counts_its_own_steps():
    nodes = {"e": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
             "k": sampler(["e", 0], steps=7),
             "k0": sampler(["e", 0], denoise=0.0),
             "adv": {"class_type": "KSamplerAdvanced", "inputs": {
                 "model": ["ckpt", 0], "add_noise": "enable", "noise_seed": 3, "steps": 20, "cfg": 7,
                 "sampler_name": "euler", "scheduler": "normal", "positive": ["pos", 0], "negative": ["pos", 0],
                 "latent_image": ["e", 0], "start_at_step": 5, "end_at_step": 12,
                 "return_with_leftover_noise": "disable"}},
             "sched": {"class_type": "BasicScheduler", "inputs": {"model": ["ckpt", 0], "scheduler": "karras",
                                                                  "steps": 9, "denoise": 0.5}},
             "split": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["sched", 0], "step": 3}},
             "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 11}},
             "guider": {"class_type": "CFGGuider", "inputs": {"model": ["ckpt", 0], "positive": ["pos", 0],
                                                              "negative": ["pos", 0], "cfg": 5}},
             "select": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
             "custom": {"class_type": "SamplerCustom", "inputs": {
                 "model": ["ckpt", 0], "add_noise": True, "noise_seed": 4, "cfg": 7, "positive": ["pos", 0],
                 "negative": ["pos", 0], "sampler": ["select", 0], "sigmas": ["split", 1], "latent_image": ["e", 0]}},
             "advanced": {"class_type": "SamplerCustomAdvanced", "inputs": {
                 "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["select", 0], "sigmas": ["sched", 0],
                 "latent_image": ["e", 0]}}}
    g = graph(nodes)
    steps = {node: g.sampler_steps(node) for node in ("k", "k0", "adv", "custom", "advanced", "e")}
    assert steps == {"k": 7, "k0": 0, "adv": 7, "custom": 6, "advanced": 9, "e": None}
    assert g.sampled("advanced").content[3:5] == (11, "a lighthouse")  # seed from RandomNoise, text via the guider


def test_custom_nodes_behave_like_their_stock_class_or_pass_shapes_through():
    catalogue = {**recorded_object_info().data,
                 "Shrink": {"output": ["IMAGE"]}, "Opaque": {"output": ["IMAGE", "LATENT", "MASK", "INT"]}}
    prompt = {"img": {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 24, "batch_size": 2,
                                                             "color": 0}},
              "shrink": {"class_type": "Shrink", "inputs": {"image": ["img", 0], "scale_by": 0.5,
                                                            "upscale_method": "area"}},
              "opaque": {"class_type": "Opaque", "inputs": {"pixels": ["shrink", 0]}}}
    g = Graph(prompt, catalogue=catalogue, files=lambda *_: None, aliases={"Shrink": "ImageScaleBy"})
    assert size(g.value("shrink", 0)) == (20, 12, 2)
    image, latent, mask, number = g.outputs("opaque")
    assert size(image) == size(mask) == (20, 12, 2) and size(latent) == (16, 8, 2) and number is None


def test_values_beyond_max_pixels_fail_like_running_out_of_memory():
    g = graph({"e": {"class_type": "EmptyLatentImage", "inputs": {"width": 4096, "height": 4096,
                                                                  "batch_size": 4}}}, max_pixels=32 * 1024 * 1024)
    with pytest.raises(NodeFailed) as caught:
        g.outputs("e")
    assert caught.value.exception_type == "torch.OutOfMemoryError"


def test_img2img_pixels_come_from_the_input_and_the_seed():
    def render(seed, denoise):
        g = graph({"load": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
                   "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["load", 0], "vae": ["ckpt", 2]}},
                   "k": sampler(["enc", 0], seed=seed, denoise=denoise),
                   "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["k", 0], "vae": ["ckpt", 2]}}})
        return Renderer(g.read).image(g.value("dec", 0), 0)

    original = Image.open(io.BytesIO(FILES[("input", "photo.png")].data)).convert("RGB").resize((64, 48))
    assert render(1, 0.5).size == (64, 48)
    assert render(1, 0.5).tobytes() == render(1, 0.5).tobytes() != render(2, 0.5).tobytes()

    def distance(a, b):
        return sum(abs(x - y) for x, y in zip(a.tobytes(), b.tobytes(), strict=True))

    assert distance(render(1, 0.2), original) < distance(render(1, 0.8), original)


def test_previews_are_jpegs_fitted_into_the_preview_size_that_sharpen():
    g = graph({"e": {"class_type": "EmptyLatentImage", "inputs": {"width": 768, "height": 512, "batch_size": 1}},
               "k": sampler(["e", 0])})
    renderer = Renderer(g.read)
    frames = [preview_jpeg(renderer, g.sampled("k"), step=step, steps=4, max_size=512) for step in range(1, 5)]
    pictures = [Image.open(io.BytesIO(frame)) for frame in frames]
    assert {(p.format, p.size) for p in pictures} == {("JPEG", (512, 341))}
    final = pictures[-1].convert("L").tobytes()
    distance = [sum(abs(a - b) for a, b in zip(p.convert("L").tobytes(), final, strict=True)) for p in pictures]
    assert distance == sorted(distance, reverse=True) and distance[-1] == 0 < distance[0]
