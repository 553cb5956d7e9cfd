"""Every workflow's Generate form in a real headless Chromium, submitted to a real qcluster and the
simulator until the images are there; the image drop zone, paste, the inpaint mask painter, an image
kept across a form shown again with errors, and "use as input" from History and the viewer."""

import base64
import io
import re

import pytest
from django.core.files.storage import default_storage
from PIL import Image
from playwright.sync_api import expect

from generation.models import GenerationRequest, InputImage
from generation.states import Status
from tests.plugins.browser import log_in, screenshot
from tests.plugins.generation_rows import image_bytes

pytestmark = [pytest.mark.browser, pytest.mark.integration]

REQUEST_URL = re.compile(r"/requests/([0-9a-f-]{36})/$")

# a file put into the page as a drop or a paste would carry it (bytes travel as base64)
_FILE_EVENT = """([selector, kind, name, type, data]) => {
  const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, {type}));
  const target = document.querySelector(selector);
  if (kind === "drop") {
    for (const event of ["dragenter", "dragover", "drop"]) {
      target.dispatchEvent(new DragEvent(event, {dataTransfer: transfer, bubbles: true, cancelable: true}));
    }
  } else {
    target.dispatchEvent(new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true, cancelable: true}));
  }
}"""


def drop_file(page, selector, data, *, name="dropped.png", mime="image/png"):
    page.evaluate(_FILE_EVENT, [selector, "drop", name, mime, base64.b64encode(data).decode()])


def paste_file(page, data, *, selector="body", name="pasted.png", mime="image/png"):
    page.evaluate(_FILE_EVENT, [selector, "paste", name, mime, base64.b64encode(data).decode()])


def preview_size(page, field_id="id_input_image-field"):
    """The natural size of the image a field's preview shows, once it has loaded."""
    preview = page.locator(f"#{field_id} [data-image-preview]")
    expect(preview).to_be_visible()
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=preview.element_handle())
    return preview.evaluate("img => [img.naturalWidth, img.naturalHeight]")


def paint(page, points):
    """Drag the mouse over the mask canvas through ``points`` (fractions of its width and height)."""
    box = page.locator(".mask-canvas").bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=6)
    page.mouse.up()


def stored_image(path):
    with default_storage.open(path) as handle:
        return Image.open(io.BytesIO(handle.read())).copy()


def fill_prompt(page, prompt, *, steps=3):
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_text("Advanced settings").click()
    page.get_by_label("Seed").fill("77")
    page.get_by_label("Steps", exact=True).fill(str(steps))


def submit_and_wait(page, wait_for_request):
    page.get_by_role("button", name="Generate").click()
    page.wait_for_url(REQUEST_URL)
    request_id = REQUEST_URL.search(page.url).group(1)
    expect(page.locator('.live[data-status="completed"]')).to_be_visible(timeout=40_000)
    row = wait_for_request(request_id, "completed", timeout=5)
    page.wait_for_function("() => [...document.querySelectorAll('.image-grid img')]"
                           ".every(img => img.complete && img.naturalWidth > 0)")
    return row


def _txt2img(page):
    fill_prompt(page, "a lighthouse at dusk")
    page.get_by_label("Width").fill("64")
    page.get_by_label("Height").fill("48")
    return (64, 48)


def _hires(page):
    fill_prompt(page, "a lighthouse, refined")
    page.get_by_label("Width").fill("64")
    page.get_by_label("Height").fill("64")
    page.get_by_label("Upscale by").fill("2")
    page.get_by_label("Second pass steps").fill("2")
    return (128, 128)


def _img2img(page, tmp_path):
    source = tmp_path / "photo.png"
    source.write_bytes(image_bytes(96, 72, color=(40, 120, 200)))
    page.get_by_label("Input image").set_input_files(str(source))  # the file chooser
    assert preview_size(page) == [96, 72]
    expect(page.locator("#id_input_image-field [data-image-info]")).to_contain_text("photo.png · 96 × 72")
    fill_prompt(page, "the same photo, as a painting")
    page.get_by_label("Denoise").fill("0.5")
    return (96, 72)


def _inpaint(page, tmp_path):
    drop_file(page, "#id_input_image-field [data-drop-zone]", image_bytes(128, 96, color=(90, 160, 90)))
    assert preview_size(page) == [128, 96]
    expect(page.locator(".mask-canvas")).to_be_visible()
    paint(page, [(0.1, 0.2), (0.5, 0.2), (0.5, 0.4)])
    expect(page.locator("[data-mask-status]")).to_contain_text("Painted")
    fill_prompt(page, "a red door in the wall")
    return (128, 96)


def _upscale(page, tmp_path):
    paste_file(page, image_bytes(80, 60, color=(200, 80, 40)))
    assert preview_size(page) == [80, 60]
    page.get_by_label("Scale by").fill("2")
    return (160, 120)


FILL = {"txt2img": _txt2img, "hires": _hires, "img2img": _img2img, "inpaint": _inpaint, "upscale": _upscale}


@pytest.mark.parametrize("slug", list(FILL))
def test_each_workflow_form_runs_to_completed_images(live_server, page, simulator, cluster_factory, wait_for_request,
                                                      user, checkpoint, tmp_path, slug):
    cluster_factory([simulator.url])
    log_in(page, live_server.url, user)
    page.locator(f'#workflow-choice a[data-workflow="{slug}"]').click()
    page.wait_for_url(re.compile(rf"workflow={slug}"))
    expect(page.locator(f'.workflow-option[aria-current="page"][data-workflow="{slug}"]')).to_be_visible()
    fill = FILL[slug]
    size = fill(page) if slug in ("txt2img", "hires") else fill(page, tmp_path)
    screenshot(page, f"generate-{slug}")

    row = submit_and_wait(page, wait_for_request)
    assert row.workflow_slug == slug and (row.width, row.height) == size
    assert stored_image(row.outputs[0]).size == size
    if slug != "txt2img" and slug != "hires":
        inputs = list(row.inputs.all())
        images = [i for i in inputs if i.kind == InputImage.Kind.IMAGE]
        assert len(images) == 1 and row.params["input_image"] == str(images[0].pk)
        # the request page shows the input image(s)
        for record in inputs:
            expect(page.locator(f'.input-images img[src="/api/v1/comfyui/inputs/{record.pk}/image/"]')).to_be_visible()
    if slug == "inpaint":
        mask_record = InputImage.objects.get(pk=row.params["mask_image"], kind=InputImage.Kind.MASK)
        mask = stored_image(mask_record.path).convert("L")
        assert mask.size == (128, 96)
        assert mask.getpixel((38, 19)) == 255 and mask.getpixel((64, 38)) == 255  # painted: repaint
        assert mask.getpixel((120, 90)) == 0 and mask.getpixel((5, 80)) == 0  # not painted: kept
    screenshot(page, f"request-{slug}")
    assert page.errors == []


def test_drop_zone_paste_and_remove_and_a_kept_image_after_errors(live_server, page, user, checkpoint):
    log_in(page, live_server.url, user)
    page.goto(f"{live_server.url}/?workflow=img2img")
    zone = page.locator("#id_input_image-field [data-drop-zone]")
    expect(zone.get_by_text("Drop an image here, or paste one (Ctrl+V)")).to_be_visible()
    # something that is not an image is turned away before it is posted
    drop_file(page, "#id_input_image-field [data-drop-zone]", b"plain text", name="notes.txt", mime="text/plain")
    expect(page.locator("#id_input_image-field [data-image-info]")).to_have_text("That is not an image file.")
    # paste: the image lands in the field and its file input
    paste_file(page, image_bytes(64, 64, color=(10, 200, 10)), name="clip.png")
    assert preview_size(page) == [64, 64]
    assert page.get_by_label("Input image").evaluate("input => input.files[0].name") == "clip.png"
    # a drop replaces it
    drop_file(page, "#id_input_image-field [data-drop-zone]", image_bytes(120, 80, color=(200, 10, 10)))
    assert preview_size(page) == [120, 80]
    assert page.get_by_label("Input image").evaluate("input => input.files[0].name") == "dropped.png"
    page.get_by_role("button", name="Remove input image").click()
    expect(page.locator("#id_input_image-field [data-image-preview]")).to_be_hidden()
    assert page.get_by_label("Input image").evaluate("input => input.files.length") == 0

    # submitted without a prompt: the form comes back with the error and the image it was given
    drop_file(page, "#id_input_image-field [data-drop-zone]", image_bytes(120, 80, color=(200, 10, 10)))
    assert preview_size(page) == [120, 80]
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#err-prompt")).to_contain_text("This field is required.")
    record = InputImage.objects.get(user=user)
    expect(page.locator("#id_input_image-field [data-image-preview]")).to_have_attribute(
        "src", f"/api/v1/comfyui/inputs/{record.pk}/image/")
    assert preview_size(page) == [120, 80]
    screenshot(page, "generate-image-kept-after-errors")
    page.get_by_label("Prompt", exact=True).fill("now with a prompt")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_url(REQUEST_URL)
    created = GenerationRequest.objects.get()
    assert created.params["input_image"] == str(record.pk) and InputImage.objects.count() == 1
    assert page.errors == []


def test_mask_painter_brush_erase_clear_and_a_kept_mask(live_server, page, user, checkpoint, tmp_path):
    log_in(page, live_server.url, user)
    page.goto(f"{live_server.url}/?workflow=inpaint")
    expect(page.locator("[data-mask-status]")).to_contain_text("Choose the input image first")
    expect(page.locator("[data-mask-tools]")).to_have_class(re.compile("disabled"))
    drop_file(page, "#id_input_image-field [data-drop-zone]", image_bytes(200, 100, color=(60, 60, 160)))
    assert preview_size(page) == [200, 100]
    canvas = page.locator(".mask-canvas")
    assert canvas.evaluate("c => [c.width, c.height]") == [200, 100]  # the input's own size

    painted = "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;" \
              " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }"
    page.get_by_label("Brush size").fill("20")
    expect(page.locator("[data-mask-brush-value]")).to_have_text("20 px")
    paint(page, [(0.1, 0.5), (0.9, 0.5)])
    thin = canvas.evaluate(painted)
    page.get_by_role("button", name="Clear mask").click()
    assert canvas.evaluate(painted) == 0
    expect(page.locator("[data-mask-status]")).to_have_text("Nothing painted: no mask is sent.")
    page.get_by_label("Brush size").fill("60")
    paint(page, [(0.1, 0.5), (0.9, 0.5)])
    wide = canvas.evaluate(painted)
    assert wide > 2 * thin > 0
    page.get_by_role("button", name="Erase").click()
    expect(page.get_by_role("button", name="Erase")).to_have_attribute("aria-pressed", "true")
    paint(page, [(0.5, 0.1), (0.5, 0.9)])
    assert 0 < canvas.evaluate(painted) < wide
    page.get_by_role("button", name="Paint").click()
    screenshot(page, "generate-inpaint-mask")

    # an error elsewhere: the mask comes back, loaded into the painter
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#err-prompt")).to_contain_text("This field is required.")
    mask_record = InputImage.objects.get(user=user, kind=InputImage.Kind.MASK)
    expect(page.locator("[data-mask-status]")).to_have_text("The mask given before: paint or erase to change it.")
    assert page.locator('input[name="mask_image"][data-image-value]').input_value() == str(mask_record.pk)
    assert canvas.evaluate(painted) > 0
    stored = stored_image(mask_record.path).convert("L")
    assert stored.size == (200, 100) and stored.getpixel((30, 50)) == 255 and stored.getpixel((100, 50)) == 0
    # a new input image drops the mask (it had the old image's size)
    drop_file(page, "#id_input_image-field [data-drop-zone]", image_bytes(64, 64))
    assert preview_size(page) == [64, 64]
    assert canvas.evaluate("c => [c.width, c.height]") == [64, 64] and canvas.evaluate(painted) == 0
    assert page.locator('input[name="mask_image"][data-image-value]').input_value() == ""
    # a mask file: loaded into the painter when it fits, turned away when it does not
    wrong, right = tmp_path / "wrong.png", tmp_path / "right.png"
    wrong.write_bytes(image_bytes(32, 32, color=(255, 255, 255)))
    right.write_bytes(image_bytes(64, 64, mode="L", color=(255,)))
    mask_input = page.locator("#id_mask_image")
    mask_input.set_input_files(str(wrong))
    expect(page.locator("[data-mask-status]")).to_contain_text("That mask is 32 × 32; a mask must have the image's")
    assert mask_input.evaluate("input => input.files.length") == 0
    mask_input.set_input_files(str(right))
    expect(page.locator("[data-mask-status]")).to_have_text("Mask file loaded: paint or erase to change it.")
    assert canvas.evaluate(painted) == 64 * 64
    assert page.errors == []


def test_use_as_input_from_history_and_the_viewer(live_server, page, simulator, cluster_factory, wait_for_request,
                                                 user, make_generation):
    cluster_factory([simulator.url])
    source = make_generation(user, Status.COMPLETED, images=2)  # 64 × 48 images
    log_in(page, live_server.url, user)
    page.goto(f"{live_server.url}/history/")
    card = page.locator(f'[data-request-id="{source.pk}"]')
    expect(card.get_by_role("img")).to_have_count(2)  # every image of the batch
    card.get_by_text("Use as input").click()
    card.get_by_role("link", name="Upscale").click()
    page.wait_for_url(re.compile(r"workflow=upscale"))
    assert preview_size(page) == [64, 48]
    expect(page.locator("[data-image-info]")).to_have_text("A result of yours, used as input.")
    page.get_by_label("Scale by").fill("1.5")
    row = submit_and_wait(page, wait_for_request)
    assert (row.width, row.height) == (96, 72)
    assert InputImage.objects.get(user=user).source == f"request {source.pk} image 0"

    # from the viewer, the second image goes to inpaint, where a mask can be painted over it
    page.goto(f"{live_server.url}/requests/{source.pk}/images/1/")
    page.get_by_text("Use as input").click()
    page.get_by_role("link", name="Inpaint").click()
    page.wait_for_url(re.compile(r"workflow=inpaint"))
    assert preview_size(page) == [64, 48]
    expect(page.locator(".mask-canvas")).to_be_visible()
    assert page.locator('input[name="input_image"][data-image-value]').input_value() == f"{source.pk}/1"
    assert page.errors == []
