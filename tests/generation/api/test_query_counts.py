"""Queries per submit and per list page stay constant (not per row): the guard behind the API benchmark.

The submit test runs in real transactions, so its count includes what runs on commit
(pending → queued and the wake-up) before the answer is built, as in production.
"""

import pytest
from django.db.models import Count, Q
from django.urls import reverse

from generation.api.serializers import GenerationRequestSerializer
from generation.models import GenerationRequest
from generation.selectors import queue_position, queue_positions
from generation.states import Status

GENERATE = "/api/v1/comfyui/generate/"
LIST = "/api/v1/comfyui/"


@pytest.fixture
def one_backend(settings):
    settings.COMFYUI_BACKENDS = [{"url": "http://127.0.0.1:9", "capacity": 2}]


def submit(api, params):
    response = api.post(GENERATE, params, format="json")
    assert response.status_code == 201, response.content
    return response.json()


@pytest.mark.django_db(transaction=True)
def test_a_submit_costs_a_fixed_number_of_queries(api, valid_params, one_backend, django_assert_num_queries):
    for _ in range(3):  # the broker now holds a wake-up per configured slot, as under load
        submit(api, valid_params)
    # token, submit-throttle upsert (counted in the database: it holds across web processes),
    # checkpoint, backends' capabilities (can any run it?), BEGIN, user lock, active count,
    # requirement set (insert if new), insert, COMMIT, then BEGIN, pending → queued, its live event (with
    # its NOTIFY, one statement), COMMIT, broker queue size, queue position, reachable backends (its waiting
    # reason)
    with django_assert_num_queries(17):
        body = submit(api, valid_params)
    assert body["status"] == "queued" and body["queue_position"] == 4
    row = GenerationRequest.objects.get(pk=body["id"])
    # the answer mirrors the row without reading it back
    assert body["queued_at"] == GenerationRequestSerializer(row).data["queued_at"]
    assert body["updated_at"] == GenerationRequestSerializer(row).data["updated_at"]


@pytest.mark.parametrize("waiting", [0, 5, 20])
def test_a_list_page_costs_the_same_however_many_rows_wait(api, user, other_user, make_generation, waiting,
                                                           django_assert_num_queries):
    for _ in range(3):
        make_generation(other_user, Status.QUEUED)
    for index in range(25):
        make_generation(user, Status.COMPLETED if index < 25 - waiting else Status.QUEUED)  # newest wait
    # token, the page, and the queue positions of its waiting rows and the reachable backends (only when some wait)
    with django_assert_num_queries(4 if waiting else 2):
        body = api.get(LIST).json()
    assert len(body["results"]) == 20


def test_batched_queue_positions_equal_one_by_one(user, other_user, make_user, make_generation):
    third = make_user("carol")
    rows = [make_generation(owner, status) for owner, status in [
        (other_user, Status.QUEUED), (user, Status.QUEUED), (third, Status.PENDING), (user, Status.PENDING),
        (other_user, Status.QUEUED), (user, Status.RUNNING), (user, Status.QUEUED), (third, Status.QUEUED),
        (user, Status.COMPLETED), (other_user, Status.QUEUED), (user, Status.QUEUED)]]
    batched = queue_positions(rows)
    for row in rows:
        assert batched.get(row.pk) == queue_position(row) == one_by_one(row)
    mine = [row for row in rows if row.user == user]
    assert [batched.get(row.pk) for row in mine] == [2, 6, None, 8, None, 9]


def one_by_one(request):
    """The former per-row computation (two queries a row), kept as the reference."""
    if request.status not in (Status.PENDING, Status.QUEUED):
        return None
    waiting = GenerationRequest.objects.filter(status__in=[Status.PENDING, Status.QUEUED])
    k = waiting.filter(user_id=request.user_id, created_at__lt=request.created_at).count()
    others = (waiting.exclude(user_id=request.user_id).values("user_id")
              .annotate(n=Count("id"), older=Count("id", filter=Q(created_at__lt=request.created_at))))
    return 1 + k + sum(min(row["n"], k + (1 if row["older"] else 0)) for row in others)


def test_the_list_shows_queue_positions(api, user, other_user, make_generation):
    make_generation(other_user, Status.QUEUED)
    first, second = make_generation(user, Status.QUEUED), make_generation(user, Status.QUEUED)
    positions = {row["id"]: row["queue_position"] for row in api.get(LIST).json()["results"]}
    assert positions == {str(first.pk): 2, str(second.pk): 3}


def test_the_representation_has_every_documented_field(api, user, make_generation):
    original = make_generation(user, Status.COMPLETED, images=2)
    rows = [
        original,
        make_generation(user, Status.QUEUED, regenerated_from=original,
                        params={"lora_models": [{"name": "tiny-lora.safetensors", "strength_model": 0.5,
                                                 "strength_clip": 1}]}),
        make_generation(user, Status.RUNNING, progress=0.25, current_node="3", current_step=5, total_steps=20),
        make_generation(user, Status.FAILED, error="boom", error_detail={"type": "execution", "node_id": "3"},
                        webhook_url="http://127.0.0.1:1/hook"),
        make_generation(user, Status.CANCELLED, params={"sampler_params": {"seed": 7, "steps": 4}}),
    ]
    request = api.get(LIST).wsgi_request
    for row in rows:
        row = GenerationRequest.objects.select_related("user").get(pk=row.pk)
        document = GenerationRequestSerializer(context={"request": request}).to_representation(row)
        assert set(GenerationRequestSerializer.Meta.fields) <= set(document)
        assert document["workflow"] == {"slug": "txt2img", "version": 1, "name": "Text to image"}
        # v1 clients read the parameters at the top level too
        for key in ("negative_prompt", "lora_models", "sampler_params"):
            assert document[key] == document["params"][key]


def test_image_links_match_reverse(api, user, make_generation):
    row = make_generation(user, Status.COMPLETED, images=1)
    image = api.get(f"{LIST}{row.pk}/").json()["images"][0]
    assert image["url"].endswith(reverse("generation-image", kwargs={"pk": row.pk, "index": 0}))
    for size, url in image["thumbnails"].items():
        assert url.endswith(reverse("generation-thumbnail", kwargs={"pk": row.pk, "index": 0, "size": size}))
    assert set(image["thumbnails"]) == {"small", "medium", "large"}
