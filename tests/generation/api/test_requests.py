"""The request endpoints: submit, read, list, cancel, delete, regenerate."""

import datetime
import json
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from generation.idempotency import IdempotencyRecord
from generation.models import GenerationRequest
from generation.states import Status

GENERATE = "/api/v1/comfyui/generate/"
LIST = "/api/v1/comfyui/"


def detail(request_id):
    return f"/api/v1/comfyui/{request_id}/"


# --- submit ---------------------------------------------------------------------------------------


def test_submit_answers_201_with_the_request(api, valid_params, user):
    response = api.post(GENERATE, valid_params, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] in {"pending", "queued"}
    assert body["prompt"] == "a lighthouse at dusk"
    assert body["sampler_params"] == valid_params["sampler_params"]
    assert body["progress"] == {"fraction": 0.0, "current_node": "", "step": 0, "total_steps": 0}
    assert body["queue_position"] == 1
    assert body["images"] == [] and body["error"] == ""
    assert response["Location"].endswith(detail(body["id"]))
    row = GenerationRequest.objects.get(pk=body["id"])
    assert row.user == user and row.width == 64


def test_submit_defaults_and_random_seed(api, checkpoint):
    response = api.post(GENERATE, {"prompt": "a cat", "checkpoint_model": checkpoint.name}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["width"], body["height"], body["batch_size"]) == (512, 512, 1)
    sampler = body["sampler_params"]
    assert sampler["steps"] == 20 and sampler["sampler_name"] == "euler" and 0 <= sampler["seed"] < 2**53


def test_submit_with_lora(api, valid_params, lora):
    valid_params["lora_models"] = [{"name": lora.name, "strength_model": 0.5, "strength_clip": 0.75}]
    response = api.post(GENERATE, valid_params, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["lora_models"] == [{"name": lora.name, "strength_model": 0.5, "strength_clip": 0.75}]


@pytest.mark.parametrize(("change", "field"), [
    ({"prompt": ""}, "prompt"),
    ({"width": 65}, "width"),
    ({"height": 10**30}, "height"),
    ({"batch_size": 0}, "batch_size"),
    ({"checkpoint_model": "nope.safetensors"}, "checkpoint_model"),
    ({"sampler_params": {"steps": "many"}}, "sampler_params.steps"),
    ({"sampler_params": {"cfg": 1e6}}, "sampler_params.cfg"),
    ({"sampler_params": {"sampler_name": "bogus"}}, "sampler_params.sampler_name"),
    ({"sampler_params": {"seed": 2**64}}, "sampler_params.seed"),
    ({"lora_models": [{"name": "missing.safetensors"}]}, "lora_models.0.name"),
    ({"lora_models": "x"}, "lora_models"),
    ({"webhook_url": "ftp://example.com/hook"}, "webhook_url"),
    ({"unexpected": 1}, "unexpected"),
])
def test_submit_rejects_invalid_parameters_naming_the_field(api, valid_params, change, field):
    response = api.post(GENERATE, {**valid_params, **change}, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert field in error["fields"], error
    assert GenerationRequest.objects.count() == 0


def test_submit_with_inactive_checkpoint_is_refused(api, valid_params, checkpoint):
    checkpoint.is_active = False
    checkpoint.save()
    response = api.post(GENERATE, valid_params, format="json")
    assert response.status_code == 400
    assert "checkpoint_model" in response.json()["error"]["fields"]


def test_idempotency_key_replays_the_original_with_its_status(api, valid_params):
    first = api.post(GENERATE, valid_params, format="json", HTTP_IDEMPOTENCY_KEY="abc-123")
    # the same body, keys in another order and other spacing: the same call
    reordered = json.dumps(dict(reversed(list(valid_params.items()))), indent=4)
    again = api.post(GENERATE, reordered, content_type="application/json", HTTP_IDEMPOTENCY_KEY="abc-123")
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"] and again["Location"] == first["Location"]
    assert "Idempotent-Replayed" not in first and again["Idempotent-Replayed"] == "true"
    assert GenerationRequest.objects.count() == 1


def test_idempotency_key_reused_with_another_body_is_refused(api, valid_params):
    first = api.post(GENERATE, valid_params, format="json", HTTP_IDEMPOTENCY_KEY="abc-123")
    other = api.post(GENERATE, {**valid_params, "prompt": "something else"}, format="json",
                     HTTP_IDEMPOTENCY_KEY="abc-123")
    assert first.status_code == 201
    assert other.status_code == 422
    error = other.json()["error"]
    assert error["code"] == "idempotency_key_reused" and list(error["fields"]) == ["Idempotency-Key"]
    assert GenerationRequest.objects.count() == 1


def test_idempotency_keys_are_per_operation(api, user, valid_params, make_generation):
    original = make_generation(user, Status.COMPLETED)
    submitted = api.post(GENERATE, valid_params, format="json", HTTP_IDEMPOTENCY_KEY="shared")
    regenerated = api.post(f"{detail(original.pk)}regenerate/", {}, format="json", HTTP_IDEMPOTENCY_KEY="shared")
    assert submitted.status_code == regenerated.status_code == 201
    assert "Idempotent-Replayed" not in regenerated
    assert regenerated.json()["id"] not in (submitted.json()["id"], str(original.pk))
    assert regenerated.json()["regenerated_from"] == str(original.pk)


def test_a_refused_call_stores_no_key(api, valid_params):
    refused = api.post(GENERATE, {**valid_params, "width": 3}, format="json", HTTP_IDEMPOTENCY_KEY="retry-me")
    fixed = api.post(GENERATE, valid_params, format="json", HTTP_IDEMPOTENCY_KEY="retry-me")
    assert refused.status_code == 400 and fixed.status_code == 201 and "Idempotent-Replayed" not in fixed


def test_an_expired_key_is_free_again(api, valid_params, settings):
    first = api.post(GENERATE, valid_params, format="json", HTTP_IDEMPOTENCY_KEY="old")
    IdempotencyRecord.objects.update(created_at=timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEY_HOURS,
                                                                           seconds=1))
    again = api.post(GENERATE, {**valid_params, "prompt": "new"}, format="json", HTTP_IDEMPOTENCY_KEY="old")
    assert again.status_code == 201 and again.json()["id"] != first.json()["id"]
    assert "Idempotent-Replayed" not in again


def test_idempotency_keys_are_per_user(client_for, user, other_user, valid_params):
    mine = client_for(user).post(GENERATE, valid_params, format="json", HTTP_IDEMPOTENCY_KEY="k")
    theirs = client_for(other_user).post(GENERATE, valid_params, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]


def test_overlong_idempotency_key_is_a_field_error(api, valid_params):
    response = api.post(GENERATE, valid_params, format="json", HTTP_IDEMPOTENCY_KEY="k" * 256)
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["error"]["fields"]


# --- read -----------------------------------------------------------------------------------------


def test_detail_shows_progress_backend_and_timestamps(api, user, make_generation):
    request = make_generation(user, Status.RUNNING, progress=0.25, current_node="3", current_step=5, total_steps=20)
    body = api.get(detail(request.pk)).json()
    assert body["status"] == "running"
    assert body["progress"] == {"fraction": 0.25, "current_node": "3", "step": 5, "total_steps": 20}
    assert body["backend"] == "http://127.0.0.1:9"
    assert body["queue_position"] is None
    assert body["started_at"] and body["created_at"] and body["finished_at"] is None


def test_detail_of_a_failed_request_has_error_and_detail(api, user, make_generation):
    request = make_generation(user, Status.FAILED, error="KSampler: out of memory",
                           error_detail={"node_id": "3", "exception_type": "torch.OutOfMemoryError"})
    body = api.get(detail(request.pk)).json()
    assert body["error"] == "KSampler: out of memory"
    assert body["error_detail"]["exception_type"] == "torch.OutOfMemoryError"


def test_detail_of_a_completed_request_links_images_and_thumbnails(api, user, make_generation):
    request = make_generation(user, Status.COMPLETED, images=2)
    body = api.get(detail(request.pk)).json()
    assert [image["index"] for image in body["images"]] == [0, 1]
    first = body["images"][0]
    assert first["url"] == f"http://testserver/api/v1/comfyui/{request.pk}/images/0/"
    assert first["download_url"].endswith("/images/0/?download=1")
    assert set(first["thumbnails"]) == {"small", "medium", "large"}
    assert first["thumbnails"]["small"].endswith(f"/api/v1/comfyui/{request.pk}/images/0/thumbnail/small/")
    assert api.get(first["url"]).status_code == 200
    assert api.get(first["thumbnails"]["medium"]).status_code == 200


def test_queue_position_while_waiting(api, user, other_user, make_generation):
    make_generation(other_user, Status.QUEUED)
    mine = make_generation(user, Status.QUEUED)
    assert api.get(detail(mine.pk)).json()["queue_position"] == 2


def test_unknown_and_malformed_ids_answer_json_404(api):
    for path in (detail(uuid.uuid4()), "/api/v1/comfyui/not-a-uuid/", "/api/v1/comfyui/../../etc/passwd"):
        response = api.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


# --- list -----------------------------------------------------------------------------------------


def _ids(response):
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["results"]]


def test_list_shows_only_my_requests_newest_first(api, user, other_user, make_generation):
    old = make_generation(user, Status.COMPLETED)
    new = make_generation(user, Status.QUEUED)
    make_generation(other_user, Status.QUEUED)
    assert _ids(api.get(LIST)) == [str(new.pk), str(old.pk)]


def test_list_pages_forward_and_back_with_a_cursor(api, user, make_generation):
    made = [make_generation(user, Status.COMPLETED) for _ in range(7)]
    expected = [str(r.pk) for r in reversed(made)]
    first = api.get(LIST, {"page_size": 3}).json()
    assert [r["id"] for r in first["results"]] == expected[:3] and first["previous"] is None
    second = api.get(first["next"]).json()
    assert [r["id"] for r in second["results"]] == expected[3:6]
    third = api.get(second["next"]).json()
    assert [r["id"] for r in third["results"]] == expected[6:] and third["next"] is None
    back = api.get(third["previous"]).json()
    assert [r["id"] for r in back["results"]] == expected[3:6]


def test_list_orders_by_created_or_updated_both_ways(api, user, make_generation):
    a, b, c = (make_generation(user, Status.COMPLETED) for _ in range(3))
    GenerationRequest.objects.filter(pk=a.pk).update(updated_at=timezone.now() + datetime.timedelta(minutes=5))
    assert _ids(api.get(LIST, {"ordering": "created_at"})) == [str(a.pk), str(b.pk), str(c.pk)]
    assert _ids(api.get(LIST, {"ordering": "-created_at"})) == [str(c.pk), str(b.pk), str(a.pk)]
    assert _ids(api.get(LIST, {"ordering": "-updated_at"}))[0] == str(a.pk)
    assert _ids(api.get(LIST, {"ordering": "updated_at"}))[-1] == str(a.pk)


def test_list_filters_by_status_checkpoint_workflow_dates_and_search(api, user, make_generation):
    queued = make_generation(user, Status.QUEUED, prompt="a red fox in snow", workflow_slug="hires")
    running = make_generation(user, Status.RUNNING, prompt="a blue whale")
    failed = make_generation(user, Status.FAILED, prompt="a red car", checkpoint_model="other.safetensors")
    GenerationRequest.objects.filter(pk=failed.pk).update(created_at=timezone.now() - datetime.timedelta(days=3))
    assert set(_ids(api.get(LIST, {"status": "queued,running"}))) == {str(queued.pk), str(running.pk)}
    assert set(_ids(api.get(f"{LIST}?status=queued&status=failed"))) == {str(queued.pk), str(failed.pk)}
    assert _ids(api.get(LIST, {"checkpoint": "other.safetensors"})) == [str(failed.pk)]
    assert _ids(api.get(LIST, {"search": "RED"})) == [str(queued.pk), str(failed.pk)]
    assert _ids(api.get(LIST, {"search": "red snow"})) == [str(queued.pk)]
    two_days_ago = (timezone.now() - datetime.timedelta(days=2)).date().isoformat()
    assert str(failed.pk) not in _ids(api.get(LIST, {"created_after": two_days_ago}))
    assert _ids(api.get(LIST, {"created_before": two_days_ago})) == [str(failed.pk)]
    assert _ids(api.get(LIST, {"workflow": "hires"})) == [str(queued.pk)]


@pytest.mark.parametrize("query", [
    {"status": "done"}, {"ordering": "prompt"}, {"page_size": "0"}, {"page_size": "x"}, {"page_size": "101"},
    {"created_after": "yesterday"}, {"created_before": "0001-01-01T00:00:00+05:00"}, {"cursor": "garbage"},
    {"cursor": "cD1ub3QtYS1kYXRl"},  # base64 of "p=not-a-date"
    {"search": "a\x00b"}, {"user": "alice"}, {"workflow": "x" * 65},
])
def test_list_rejects_bad_query_parameters(api, user, query):
    response = api.get(LIST, query)
    assert response.status_code == 400, (query, response.content)
    assert response.json()["error"]["fields"]


def test_staff_list_everyone_and_filter_by_user(client_for, staff_user, user, other_user, make_generation):
    mine = make_generation(user)
    theirs = make_generation(other_user)
    staff = client_for(staff_user)
    assert set(_ids(staff.get(LIST))) == {str(mine.pk), str(theirs.pk)}
    assert _ids(staff.get(LIST, {"user": other_user.username})) == [str(theirs.pk)]
    assert _ids(staff.get(LIST, {"user": str(user.pk)})) == [str(mine.pk)]
    assert staff.get(LIST, {"user": "nobody"}).status_code == 400


# --- cancel, delete, regenerate ---------------------------------------------------------------------


def test_cancel_a_queued_request(api, user, make_generation):
    request = make_generation(user, Status.QUEUED)
    response = api.post(f"{detail(request.pk)}cancel/")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled" and response.json()["finished_at"]


def test_cancel_a_running_request_with_an_unreachable_backend_still_cancels(api, user, make_generation):
    request = make_generation(user, Status.RUNNING, comfyui_prompt_id=str(uuid.uuid4()))
    response = api.post(f"{detail(request.pk)}cancel/")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "cancelled"


def test_cancel_is_idempotent_for_a_cancelled_request(api, user, make_generation):
    request = make_generation(user, Status.CANCELLED)
    response = api.post(f"{detail(request.pk)}cancel/")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"


@pytest.mark.parametrize("status", [Status.COMPLETED, Status.FAILED])
def test_cancel_a_finished_request_is_409(api, user, make_generation, status):
    request = make_generation(user, status)
    response = api.post(f"{detail(request.pk)}cancel/")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "not_cancellable"
    request.refresh_from_db()
    assert request.status == status


def test_delete_an_active_request_cancels_it(api, user, make_generation):
    request = make_generation(user, Status.PENDING)
    response = api.delete(detail(request.pk))
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert GenerationRequest.objects.filter(pk=request.pk).exists()


def test_delete_a_finished_request_removes_it_and_its_files(api, user, make_generation, _media_root):
    request = make_generation(user, Status.COMPLETED, images=2)
    files = [_media_root / name for name in request.outputs] + [
        _media_root / name for thumbs in request.thumbnails for name in thumbs.values()]
    assert all(path.exists() for path in files)
    response = api.delete(detail(request.pk))
    assert response.status_code == 204 and response.content == b""
    assert not GenerationRequest.objects.filter(pk=request.pk).exists()
    assert not any(path.exists() for path in files)


@pytest.mark.parametrize("same_seed", [True, False])
def test_regenerate(api, user, make_generation, same_seed):
    original = make_generation(user, Status.COMPLETED, images=1)
    response = api.post(f"{detail(original.pk)}regenerate/", {"same_seed": same_seed}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["id"] != str(original.pk) and body["regenerated_from"] == str(original.pk)
    assert body["prompt"] == original.prompt and body["status"] in {"pending", "queued"}
    assert (body["sampler_params"]["seed"] == 42) is same_seed or body["sampler_params"]["seed"] == 42


def test_regenerate_rejects_a_non_boolean(api, user, make_generation):
    original = make_generation(user, Status.COMPLETED)
    response = api.post(f"{detail(original.pk)}regenerate/", {"same_seed": {"x": 1}}, format="json")
    assert response.status_code == 400
    assert "same_seed" in response.json()["error"]["fields"]


def test_regenerate_honours_an_idempotency_key(api, user, make_generation):
    original = make_generation(user, Status.COMPLETED)
    url = f"{detail(original.pk)}regenerate/"
    first = api.post(url, {}, format="json", HTTP_IDEMPOTENCY_KEY="again-1")
    second = api.post(url, {}, format="json", HTTP_IDEMPOTENCY_KEY="again-1")
    assert first.status_code == second.status_code == 201 and first.json()["id"] == second.json()["id"]
    assert second["Idempotent-Replayed"] == "true"
    assert GenerationRequest.objects.filter(regenerated_from=original).count() == 1
    # the same key for another body, or for regenerating another request, is a different call
    assert api.post(url, {"same_seed": True}, format="json", HTTP_IDEMPOTENCY_KEY="again-1").status_code == 422
    other = make_generation(user, Status.COMPLETED)
    response = api.post(f"{detail(other.pk)}regenerate/", {}, format="json", HTTP_IDEMPOTENCY_KEY="again-1")
    assert response.status_code == 422 and "Idempotency-Key" in response.json()["error"]["fields"]


def test_a_waiting_request_says_why_it_waits(api, user, make_generation, settings):
    from django.utils import timezone

    from generation.models import BackendState

    waiting = make_generation(user, Status.QUEUED)
    body = api.get(detail(waiting.pk)).json()
    assert body["waiting_reason"]["code"] == "no_backend_reachable" and body["queue_position"] == 1
    BackendState.objects.create(url=settings.COMFYUI_BACKENDS[0]["url"], last_ok_at=timezone.now())
    assert api.get(detail(waiting.pk)).json()["waiting_reason"] is None
    listed = api.get("/api/v1/comfyui/").json()["results"][0]
    assert listed["id"] == str(waiting.pk) and listed["waiting_reason"] is None
    assert api.get(detail(make_generation(user, Status.COMPLETED).pk)).json()["waiting_reason"] is None
