"""img2img, inpaint, hires and upscale: graphs equal to the recorded ones, sizes, and their validation."""

import pytest

from generation.errors import ParamsInvalid
from generation.models import InputImage
from generation.services import prepare_submission
from generation.workflows import InputFile, get_workflow
from models_registry.models import AvailableModel, ModelType
from tests.generation.comfyui.conftest import recorded

SAMPLER = {"steps": 3, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal"}


def recorded_graph(name):
    return recorded(name)["request"]["json"]["prompt"]


def body(**params):
    return {"prompt": "a lighthouse, watercolor", "negative_prompt": "blurry",
            "checkpoint_model": "tiny-sd15-random.safetensors", "lora_models": [], "batch_size": 1, **params}


def test_img2img_graph_is_the_recorded_one():
    params = body(input_image="x", sampler_params={**SAMPLER, "seed": 5, "denoise": 0.6})
    graph = get_workflow("img2img").build(params, files={"input_image": InputFile("wf-input.png", 64, 64)},
                                          filename_prefix="proto/img2img")
    expected = recorded_graph("prompt-accepted-img2img.json")
    assert graph == expected and list(graph) == list(expected)


def test_inpaint_graph_is_the_recorded_one_and_a_mask_image_replaces_the_alpha():
    params = body(input_image="x", grow_mask_by=6, sampler_params={**SAMPLER, "seed": 6, "denoise": 1.0})
    workflow = get_workflow("inpaint")
    graph = workflow.build(params, files={"input_image": InputFile("wf-rgba.png", 64, 64)},
                           filename_prefix="proto/inpaint")
    assert graph == recorded_graph("prompt-accepted-inpaint.json")
    masked = workflow.build({**params, "mask_image": "m"}, filename_prefix="p", files={
        "input_image": InputFile("a.png", 64, 64), "mask_image": InputFile("mask-a.png", 64, 64)})
    assert masked["13"] == {"class_type": "LoadImageMask", "inputs": {"image": "mask-a.png", "channel": "red"}}
    assert masked["12"]["inputs"]["mask"] == ["13", 0]


def test_hires_graph_is_the_recorded_two_pass_graph_without_its_extra_image_scale():
    params = body(width=64, height=64, sampler_params={**SAMPLER, "steps": 2, "seed": 7, "denoise": 1.0},
                  hires={"scale": 1.5, "denoise": 0.5, "steps": 2, "upscale_method": "nearest-exact"})
    graph = get_workflow("hires").build(params, files={}, filename_prefix="proto/hires")
    expected = recorded_graph("prompt-accepted-hires-two-pass.json")
    expected.pop("15")  # the recording also scaled the decoded image by 2; ours outputs scale × size
    expected["9"]["inputs"]["images"] = ["8", 0]
    assert graph == expected


def test_hires_progress_weighs_both_passes_by_their_steps():
    params = body(width=64, height=64, sampler_params={**SAMPLER, "steps": 30, "seed": 1, "denoise": 1.0},
                  hires={"scale": 2.0, "denoise": 0.5, "steps": 10, "upscale_method": "nearest-exact"})
    workflow = get_workflow("hires")
    weights = workflow.progress_weights(workflow.build(params, files={}, filename_prefix="p"))
    assert weights["3"] == pytest.approx(3 * weights["14"]) and weights["3"] + weights["14"] == pytest.approx(0.85)


def test_img2img_batch_repeats_the_latent():
    params = body(input_image="x", batch_size=3, sampler_params={**SAMPLER, "seed": 5, "denoise": 0.6})
    graph = get_workflow("img2img").build(params, files={"input_image": InputFile("i.png", 64, 64)},
                                          filename_prefix="p")
    assert graph["13"] == {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["12", 0], "amount": 3}}
    assert graph["3"]["inputs"]["latent_image"] == ["13", 0]


@pytest.mark.parametrize("model", [None, "4x-UltraSharp.pth"])
def test_upscale_graph_with_and_without_a_model(model):
    workflow = get_workflow("upscale")
    params = {"input_image": "x", "scale_by": 2.5, "upscale_model": model or ""}
    graph = workflow.build(params, files={"input_image": InputFile("i.png", 100, 61)}, filename_prefix="p")
    if model:
        assert graph["2"]["inputs"]["model_name"] == model
        assert graph["4"]["inputs"] | {"image": None} == {"image": None, "upscale_method": "lanczos", "width": 250,
                                                          "height": 152, "crop": "disabled"}
    else:
        assert graph["4"]["class_type"] == "ImageScaleBy" and graph["4"]["inputs"]["scale_by"] == 2.5
    assert workflow.output_nodes(graph) == ["9"]


# --- validation through the submit (registry, input images, sizes) ---------------------------------


def errors_of(user, data):
    with pytest.raises(ParamsInvalid) as caught:
        prepare_submission(user=user, data=data)
    return caught.value.fields


@pytest.mark.django_db
def test_img2img_output_is_the_input_size_rounded_down_to_eight(user, checkpoint, stored_input):
    image = stored_input(user, 101, 67)
    submission = prepare_submission(user=user, data=body(workflow="img2img", input_image=str(image.pk)))
    assert (submission.summary.width, submission.summary.height) == (96, 64)
    assert submission.params["sampler_params"]["denoise"] == 0.6  # img2img's default
    assert submission.workflow.input_files(submission.params) == {"input_image": str(image.pk)}


@pytest.mark.django_db
def test_an_input_of_another_user_is_exactly_like_an_unknown_one(user, other_user, checkpoint, stored_input):
    theirs = stored_input(other_user)
    for reference in (str(theirs.pk), "00000000-0000-0000-0000-000000000000", "not-an-id", 7):
        assert errors_of(user, body(workflow="img2img", input_image=reference))["input_image"] in (
            ["No such input image."], ["Expected an input id or {\"request\": id, \"index\": n}."])
    assert errors_of(user, body(workflow="img2img"))["input_image"] == ["This field is required."]


@pytest.mark.django_db
def test_a_previous_result_can_be_the_input_but_only_ones_own(user, other_user, checkpoint, make_generation):
    mine = make_generation(user, "completed", images=1)
    theirs = make_generation(other_user, "completed", images=1)
    submission = prepare_submission(user=user, data=body(workflow="img2img",
                                                         input_image={"request": str(mine.pk), "index": 0}))
    assert submission.prepared_inputs["input_image"].width == 64
    for reference in ({"request": str(theirs.pk), "index": 0}, {"request": str(mine.pk), "index": 5},
                      {"request": str(mine.pk)}):
        assert "input_image" in errors_of(user, body(workflow="img2img", input_image=reference))


@pytest.mark.django_db
def test_parameters_of_another_workflow_are_unknown_fields(user, checkpoint, stored_input):
    image = stored_input(user)
    errors = errors_of(user, body(workflow="img2img", input_image=str(image.pk), width=512,
                                  hires={"scale": 2}))
    assert errors == {"width": ["Unknown field."], "hires": ["Unknown field."]}


@pytest.mark.django_db
def test_inpaint_needs_a_mask_of_the_same_size_or_transparency(user, checkpoint, stored_input):
    opaque = stored_input(user, 64, 48)
    holed = stored_input(user, 64, 48, transparent_box=(8, 8, 24, 24))
    small_mask = stored_input(user, 32, 48, kind=InputImage.Kind.MASK, color=(255, 255, 255))
    mask = stored_input(user, 64, 48, kind=InputImage.Kind.MASK, color=(255, 255, 255))
    assert "no transparent area" in errors_of(user, body(workflow="inpaint", input_image=str(opaque.pk)))[
        "input_image"][0]
    assert "must be the input image's size" in errors_of(user, body(
        workflow="inpaint", input_image=str(opaque.pk), mask_image=str(small_mask.pk)))["mask_image"][0]
    assert prepare_submission(user=user, data=body(workflow="inpaint", input_image=str(holed.pk)))
    ok = prepare_submission(user=user, data=body(workflow="inpaint", input_image=str(opaque.pk),
                                                 mask_image=str(mask.pk)))
    assert set(ok.workflow.input_files(ok.params)) == {"input_image", "mask_image"}


@pytest.mark.django_db
def test_hires_output_is_scale_times_the_size_within_the_pixel_limit(user, checkpoint, settings):
    submission = prepare_submission(user=user, data=body(workflow="hires", width=512, height=768,
                                                         hires={"scale": 1.5}))
    assert (submission.summary.width, submission.summary.height) == (768, 1152)
    assert "hires.scale" in errors_of(user, body(workflow="hires", hires={"scale": 4.5}))
    settings.GENERATION = {**settings.GENERATION, "MAX_PIXELS": 512 * 512}
    assert "hires.scale" in errors_of(user, body(workflow="hires", width=512, height=512, hires={"scale": 2}))


@pytest.mark.django_db
def test_upscale_limits_and_models(user, stored_input, settings):
    image = stored_input(user, 100, 60)
    plain = prepare_submission(user=user, data={"workflow": "upscale", "input_image": str(image.pk)})
    assert (plain.summary.width, plain.summary.height, plain.summary.prompt) == (200, 120, "")
    assert plain.requirements.as_json()["models"] == {}
    assert errors_of(user, {"workflow": "upscale", "input_image": str(image.pk), "upscale_model": "x.pth"}) == {
        "upscale_model": ["'x.pth' is not an available upscale model."]}
    AvailableModel.objects.create(name="4x-UltraSharp.pth", type=ModelType.UPSCALE_MODEL)
    with_model = prepare_submission(user=user, data={"workflow": "upscale", "input_image": str(image.pk),
                                                     "upscale_model": "4x-UltraSharp.pth", "scale_by": 4})
    assert with_model.requirements.as_json()["models"] == {"upscale_models": ["4x-UltraSharp.pth"]}
    settings.GENERATION = {**settings.GENERATION, "MAX_UPSCALE_PIXELS": 300 * 200}
    assert "scale_by" in errors_of(user, {"workflow": "upscale", "input_image": str(image.pk), "scale_by": 4})
