"""End to end on a real cluster (qcluster subprocess, ORM broker on the test database) and a real simulator."""

import io

import pytest
from django.core.files.storage import default_storage
from PIL import Image

from generation.services import submit_generation

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_batch_of_four_end_to_end(simulator, cluster_factory, wait_for_request, user, valid_params):
    cluster_factory([simulator.url])
    request, _ = submit_generation(user=user, data={**valid_params, "batch_size": 4})
    row = wait_for_request(request.pk, "completed", "failed", timeout=20)
    assert row.status == "completed", row.error
    assert row.progress == 1.0 and row.attempts == 1 and row.error == ""
    assert len(row.outputs) == 4 and len(row.thumbnails) == 4
    assert row.workflow["9"]["inputs"]["filename_prefix"] == f"genonaut/{row.pk}_a1"
    for index, (path, thumbs) in enumerate(zip(row.outputs, row.thumbnails, strict=True)):
        assert path.endswith(f"/{row.pk}_{index}.png") and path.startswith(f"generations/{user.pk}/")
        with default_storage.open(path) as handle:
            image = Image.open(io.BytesIO(handle.read()))
        assert image.size == (64, 64)
        assert "Steps: 4, Sampler: euler" in image.text["parameters"]
        assert image.text["parameters"].startswith("a lighthouse at dusk\nNegative prompt: blurry\n")
        assert "prompt" in image.text  # ComfyUI's own chunk is kept
        assert set(thumbs) == {"small", "medium", "large"}
        assert all(default_storage.exists(name) for name in thumbs.values())
    assert simulator.submissions(row.comfyui_prompt_id) == 1
