"""The server-rendered pages through Django's test client: every page, empty states, field
errors, POST actions, and 404 for another user's ids."""

import re

import pytest
from django.urls import reverse
from django.utils import timezone

from generation.models import GenerationRequest, RunState
from generation.states import Status
from models_registry.models import AvailableModel, ModelType

pytestmark = pytest.mark.django_db


@pytest.fixture
def second_lora(db):
    return AvailableModel.objects.create(name="styles/ink-lora.safetensors", type=ModelType.LORA,
                                         description="Ink wash", trigger_words=["inkwash", "sumi"])


@pytest.fixture
def login(client):
    def log_in(user):
        client.force_login(user)
        return client

    return log_in


def make_request(user, checkpoint, *, status=Status.QUEUED, outputs=0, prompt="a lighthouse at dusk", lora_models=(),
                 **fields):
    sampler = {"seed": 42, "steps": 4, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
    params = {"prompt": prompt, "negative_prompt": "", "checkpoint_model": checkpoint.name,
              "lora_models": list(lora_models), "width": 64, "height": 64, "batch_size": max(1, outputs),
              "sampler_params": sampler}
    return GenerationRequest.objects.create(
        user=user, prompt=prompt, checkpoint_model=checkpoint.name, checkpoint=checkpoint, status=status,
        width=64, height=64, batch_size=max(1, outputs), params=params,
        outputs=[f"generations/{user.pk}/2026/01/01/x_{n}.png" for n in range(outputs)],
        thumbnails=[{size: f"generations/{user.pk}/2026/01/01/thumbs/x_{n}_{size}.webp" for size in ("small", "medium")}
                    for n in range(outputs)],
        **fields)


SAMPLER_KEYS = ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise")


def form_post(checkpoint, **overrides):
    """A posted txt2img form; sampler settings given by their short names (``steps="6"``)."""
    data = {"workflow": "txt2img", "prompt": "a lighthouse at dusk", "negative_prompt": "blurry",
            "checkpoint_model": checkpoint.name, "width": "64", "height": "64", "batch_size": "1",
            "sampler_params.seed": "42", "sampler_params.steps": "4", "sampler_params.cfg": "7.0",
            "sampler_params.sampler_name": "euler", "sampler_params.scheduler": "normal",
            "sampler_params.denoise": "1.0"}
    for key, value in overrides.items():
        data[f"sampler_params.{key}" if key in SAMPLER_KEYS else "lora_models" if key == "lora" else key] = value
    return data


def strength(name, which):
    return f"lora_models.strength_{which}.{name}"


# --- access -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["generate", "history", "models", "backends-page"])
def test_pages_need_login(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login") + "?next=")


def test_login_page_and_logging_in(client, user):
    page = client.get(reverse("login"))
    assert page.status_code == 200
    assert b'<label for="id_username">Username</label>' in page.content
    response = client.post(reverse("login"), {"username": user.username, "password": user.raw_password})
    assert response.status_code == 302 and response["Location"] == "/"
    bad = client.post(reverse("login"), {"username": user.username, "password": "wrong"})
    assert bad.status_code == 200 and b"error-box" in bad.content


def test_logout_is_a_post(login, user):
    client = login(user)
    page = client.get(reverse("generate"))
    assert re.search(rb'<form class="nav-user" method="post" action="/accounts/logout/">', page.content)
    assert client.post(reverse("logout")).status_code == 302
    assert client.get(reverse("history")).status_code == 302


def test_nav_shows_staff_links_only_to_staff(login, user, staff_user):
    assert b'href="/admin/"' not in login(user).get(reverse("models")).content
    page = login(staff_user).get(reverse("models"))
    assert b'href="/admin/"' in page.content and b'href="/backends/"' in page.content


# --- generate ---------------------------------------------------------------------------------

def test_generate_page_offers_models_samplers_and_presets(login, user, checkpoint, lora):
    from generation.comfyui.object_info import recorded_object_info

    AvailableModel.objects.create(name="hidden.safetensors", type=ModelType.CHECKPOINT, is_active=False)
    html = login(user).get(reverse("generate")).content.decode()
    assert checkpoint.description in html
    assert "hidden.safetensors" not in html
    assert 'name="lora_models" value="tiny-lora.safetensors"' in html
    assert 'data-insert="tinystyle"' in html
    for sampler in recorded_object_info().samplers:
        assert f'<option value="{sampler}"' in html
    for scheduler in recorded_object_info().schedulers:
        assert f'<option value="{scheduler}"' in html
    assert '<option value="1024x1024">1024 × 1024</option>' in html
    assert 'data-randomise-seed="id_sampler_params-seed"' in html
    # every visible control is labelled
    ids = set(re.findall(r'<(?:input|select|textarea)[^>]*\bid="([^"]+)"', html))
    labelled = set(re.findall(r'<label for="([^"]+)"', html))
    assert ids - labelled == set()
    assert 'name="csrfmiddlewaretoken"' in html


def test_generate_without_checkpoints_says_what_to_do(login, user, staff_user):
    assert b"Ask an administrator" in login(user).get(reverse("generate")).content
    assert b"manage.py refresh_models" in login(staff_user).get(reverse("generate")).content


def test_submit_with_two_loras_and_advanced_settings(login, user, checkpoint, lora, second_lora):
    data = form_post(checkpoint, lora=[lora.name, second_lora.name], seed="1234", steps="6", cfg="5.5",
                     sampler_name="dpmpp_2m", scheduler="karras", denoise="0.8", width="96", height="128",
                     batch_size="2", idempotency_key="form-1")
    data[strength(lora.name, "model")] = "0.75"
    data[strength(lora.name, "clip")] = "0.5"
    data[strength(second_lora.name, "model")] = "1.25"
    data[strength(second_lora.name, "clip")] = "1"
    data[strength(checkpoint.name, "model")] = "9"  # a LoRA that was not ticked is ignored
    response = login(user).post(reverse("generate"), data)
    created = GenerationRequest.objects.get(user=user)
    assert response.status_code == 302 and response["Location"] == reverse("request-detail", args=[created.pk])
    assert created.params["lora_models"] == [
        {"name": lora.name, "strength_model": 0.75, "strength_clip": 0.5},
        {"name": second_lora.name, "strength_model": 1.25, "strength_clip": 1.0}]
    assert created.params["sampler_params"] == {"seed": 1234, "steps": 6, "cfg": 5.5, "sampler_name": "dpmpp_2m",
                                                "scheduler": "karras", "denoise": 0.8}
    assert (created.width, created.height, created.batch_size) == (96, 128, 2)
    # a double click re-posts the same form: no second request
    again = login(user).post(reverse("generate"), data)
    assert again["Location"] == response["Location"]
    assert GenerationRequest.objects.filter(user=user).count() == 1
    # the same rendered form, changed (Back button, edit, submit) is a new request
    changed = login(user).post(reverse("generate"), {**data, "prompt": "a different prompt"})
    assert changed["Location"] != response["Location"]
    assert GenerationRequest.objects.filter(user=user).count() == 2


def test_empty_seed_draws_a_random_one(login, user, checkpoint):
    login(user).post(reverse("generate"), form_post(checkpoint, seed=""))
    created = GenerationRequest.objects.get(user=user)
    assert isinstance(created.workflow.seed(created.params), int)


def test_field_errors_shown_at_their_fields_and_input_kept(login, user, checkpoint, lora):
    data = form_post(checkpoint, prompt="  ", negative_prompt="keep me", width="100", steps="0",
                     sampler_name="nope", lora=[lora.name])
    data[strength(lora.name, "model")] = "500"
    response = login(user).post(reverse("generate"), data)
    assert response.status_code == 400
    html = response.content.decode()
    assert not GenerationRequest.objects.exists()

    def error_after(field_id):
        match = re.search(rf'id="{field_id}".*?<ul class="field-errors"[^>]*>(.*?)</ul>', html, re.S)
        return match and match.group(1)

    assert "This field is required." in error_after("id_prompt")
    assert "multiple of 8" in error_after("id_width")
    assert "Must be between 1 and" in error_after("id_sampler_params-steps")
    assert "not one of the backend" in error_after("id_sampler_params-sampler_name")
    assert "Model strength: Must be between -100.0 and 100.0." in html
    assert 'id="id_width" name="width" value="100"' in html
    assert ">keep me</textarea>" in html
    assert re.search(rf'value="{lora.name}" id="lora-1" data-lora-toggle\s+checked', html)
    assert 'value="500"' in html
    assert '<details class="advanced" id="advanced" open>' in html
    assert 'aria-invalid="true" aria-describedby="err-sampler_params-steps"' in html


def test_too_many_active_requests_is_explained(login, user, checkpoint, settings):
    settings.GENERATION = {**settings.GENERATION, "MAX_ACTIVE_PER_USER": 1}
    make_request(user, checkpoint)
    response = login(user).post(reverse("generate"), form_post(checkpoint))
    assert response.status_code == 429
    assert b"unfinished requests" in response.content


def test_generate_prefilled_from_an_earlier_request(login, user, other_user, checkpoint, lora):
    earlier = make_request(user, checkpoint, prompt="reuse me",
                           lora_models=[{"name": lora.name, "strength_model": 0.3, "strength_clip": 0.4}])
    html = login(user).get(reverse("generate") + f"?from={earlier.pk}&seed=same").content.decode()
    assert ">reuse me</textarea>" in html and 'value="42"' in html and 'value="0.3"' in html
    fresh = login(user).get(reverse("generate") + f"?from={earlier.pk}").content.decode()
    assert 'name="sampler_params.seed" value=""' in fresh
    theirs = make_request(other_user, checkpoint, prompt="not yours")
    assert b"not yours" not in login(user).get(reverse("generate") + f"?from={theirs.pk}").content


# --- request card -----------------------------------------------------------------------------

def test_request_page_and_live_partial(login, user, checkpoint):
    running = make_request(user, checkpoint, status=Status.RUNNING, attempts=1,
                           graph={"3": {"class_type": "KSampler", "inputs": {}}})
    RunState.objects.create(request=running, attempt=1, progress=0.5, current_step=2, total_steps=4, current_node="3")
    client = login(user)
    page = client.get(reverse("request-detail", args=[running.pk]))
    assert page.status_code == 200
    assert b'data-live-url="/requests/' in page.content
    partial = client.get(reverse("request-status", args=[running.pk]))
    html = partial.content.decode()
    assert "<html" not in html and 'data-active="true"' in html
    assert "Step 2 / 4" in html and "KSampler (node 3)" in html and 'value="50"' in html
    assert f'action="/requests/{running.pk}/cancel/"' in html
    assert "no-cache" in partial["Cache-Control"]


def test_queued_request_shows_its_queue_position(login, user, checkpoint, reachable_backend):
    make_request(user, checkpoint)
    second = make_request(user, checkpoint)
    assert b"position 2 in the queue" in login(user).get(reverse("request-status", args=[second.pk])).content


def test_a_request_no_reachable_backend_can_run_says_so_instead_of_its_position(login, user, checkpoint):
    waiting = make_request(user, checkpoint)
    html = login(user).get(reverse("request-status", args=[waiting.pk])).content.decode()
    assert "Waiting: no backend is reachable" in html and "position 1" not in html
    assert 'data-active="true"' in html  # the card keeps following it: it starts once one answers


def test_generate_page_says_when_no_backend_is_reachable(login, user, checkpoint, settings):
    assert b"Waiting: no backend is reachable" in login(user).get(reverse("generate")).content
    from generation.models import BackendState

    BackendState.objects.create(url=settings.COMFYUI_BACKENDS[0]["url"], last_ok_at=timezone.now())
    assert b"no backend is reachable" not in login(user).get(reverse("generate")).content


def test_a_cancelled_card_follows_the_stop_on_the_backend(login, user, checkpoint):
    cancelled = make_request(user, checkpoint, status=Status.CANCELLED, backend="http://127.0.0.1:9",
                             comfyui_prompt_id="p", attempts=1, backend_stop="pending", finished_at=timezone.now())
    html = login(user).get(reverse("request-status", args=[cancelled.pk])).content.decode()
    assert "Stopping it on the backend" in html and 'data-active="true"' in html
    GenerationRequest.objects.filter(pk=cancelled.pk).update(backend_stop="unreachable")
    html = login(user).get(reverse("request-status", args=[cancelled.pk])).content.decode()
    assert "did not answer" in html and 'data-active="false"' in html


def test_completed_and_failed_cards(login, user, checkpoint):
    done = make_request(user, checkpoint, status=Status.COMPLETED, outputs=2)
    html = login(user).get(reverse("request-detail", args=[done.pk])).content.decode()
    assert 'data-active="false"' in html and "2 images ready" in html
    assert f"/api/v1/comfyui/{done.pk}/images/1/thumbnail/medium/" in html
    assert reverse("image-viewer", args=[done.pk, 1]) in html
    failed = make_request(user, checkpoint, status=Status.FAILED, error="KSampler: steps too high",
                          error_detail={"node_type": "KSampler", "exception_type": "ValueError"})
    html = login(user).get(reverse("request-detail", args=[failed.pk])).content.decode()
    assert "KSampler: steps too high" in html and "edit these settings" in html


def test_another_users_ids_answer_404(login, user, other_user, checkpoint):
    theirs = make_request(other_user, checkpoint, status=Status.COMPLETED, outputs=1)
    client = login(user)
    for name, args in [("request-detail", [theirs.pk]), ("request-status", [theirs.pk]),
                       ("request-delete", [theirs.pk]), ("image-viewer", [theirs.pk, 0])]:
        assert client.get(reverse(name, args=args)).status_code == 404, name
    for name in ("request-cancel", "request-regenerate", "request-delete"):
        assert client.post(reverse(name, args=[theirs.pk]), {"confirm": "yes", "seed": "same"}).status_code == 404
    assert client.get(f"/requests/{theirs.pk}x/").status_code == 404
    theirs.refresh_from_db()
    assert theirs.status == Status.COMPLETED
    assert GenerationRequest.objects.filter(user=user).count() == 0


def test_not_found_page_says_what_to_do(login, user, other_user, checkpoint, settings):
    settings.DEBUG = False
    theirs = make_request(other_user, checkpoint)
    response = login(user).get(reverse("request-detail", args=[theirs.pk]))
    assert response.status_code == 404
    assert b"belongs to someone else" in response.content and b"Go to your history" in response.content


def test_staff_may_open_anyones_request(login, user, staff_user, checkpoint):
    mine = make_request(user, checkpoint)
    assert login(staff_user).get(reverse("request-detail", args=[mine.pk])).status_code == 200


# --- actions ----------------------------------------------------------------------------------

def test_cancel_a_queued_request(login, user, checkpoint):
    queued = make_request(user, checkpoint)
    client = login(user)
    assert client.get(reverse("request-cancel", args=[queued.pk])).status_code == 405
    response = client.post(reverse("request-cancel", args=[queued.pk]))
    assert response.status_code == 302 and response["Location"] == reverse("request-detail", args=[queued.pk])
    queued.refresh_from_db()
    assert queued.status == Status.CANCELLED
    done = make_request(user, checkpoint, status=Status.COMPLETED)
    too_late = client.post(reverse("request-cancel", args=[done.pk]), follow=True)
    assert b"already completed" in too_late.content


def test_regenerate_same_and_new_seed(login, user, checkpoint):
    done = make_request(user, checkpoint, status=Status.COMPLETED, outputs=1)
    client = login(user)
    response = client.post(reverse("request-regenerate", args=[done.pk]), {"seed": "same"})
    same = GenerationRequest.objects.exclude(pk=done.pk).get()
    assert response["Location"] == reverse("request-detail", args=[same.pk])
    assert same.params["sampler_params"]["seed"] == 42 and same.regenerated_from_id == done.pk
    client.post(reverse("request-regenerate", args=[done.pk]), {"seed": "new"})
    new = GenerationRequest.objects.exclude(pk__in=[done.pk, same.pk]).get()
    assert new.prompt == done.prompt and new.params["sampler_params"]["steps"] == 4


def test_regenerate_with_a_retired_model_explains(login, user, checkpoint):
    done = make_request(user, checkpoint, status=Status.COMPLETED)
    AvailableModel.objects.filter(pk=checkpoint.pk).update(is_active=False)
    response = login(user).post(reverse("request-regenerate", args=[done.pk]), follow=True)
    assert b"Cannot regenerate" in response.content and b"not an available checkpoint" in response.content


def test_delete_needs_confirmation(login, user, checkpoint):
    done = make_request(user, checkpoint, status=Status.COMPLETED, outputs=1)
    client = login(user)
    page = client.get(reverse("request-delete", args=[done.pk]))
    assert page.status_code == 200 and b'name="confirm" value="yes"' in page.content
    unconfirmed = client.post(reverse("request-delete", args=[done.pk]))
    assert unconfirmed.status_code == 200 and GenerationRequest.objects.filter(pk=done.pk).exists()
    response = client.post(reverse("request-delete", args=[done.pk]),
                           {"confirm": "yes", "next": reverse("request-detail", args=[done.pk])})
    assert response.status_code == 302 and response["Location"] == reverse("history")
    assert not GenerationRequest.objects.filter(pk=done.pk).exists()


def test_delete_of_an_active_request_cancels_it(login, user, checkpoint):
    queued = make_request(user, checkpoint)
    login(user).post(reverse("request-delete", args=[queued.pk]), {"confirm": "yes"})
    queued.refresh_from_db()
    assert queued.status == Status.CANCELLED


def test_actions_refuse_a_foreign_next_url(login, user, checkpoint):
    queued = make_request(user, checkpoint)
    response = login(user).post(reverse("request-cancel", args=[queued.pk]), {"next": "https://evil.example/"})
    assert response["Location"] == reverse("request-detail", args=[queued.pk])


# --- history ----------------------------------------------------------------------------------

def test_history_empty_state(login, user):
    html = login(user).get(reverse("history")).content.decode()
    assert 'id="history-empty"' in html and "Generate your first image" in html


def test_history_pagination_filter_sort_and_ownership(login, user, other_user, checkpoint):
    for n in range(26):
        make_request(user, checkpoint, status=Status.COMPLETED if n % 2 else Status.FAILED, prompt=f"prompt {n:02}")
    make_request(other_user, checkpoint, prompt="someone else's")
    client = login(user)
    first = client.get(reverse("history")).content.decode()
    assert first.count('class="card"') == 24 and "Page 1 of 2" in first and "prompt 25" in first
    assert "someone else" not in first
    second = client.get(reverse("history") + "?page=2").content.decode()
    assert second.count('class="card"') == 2 and "prompt 00" in second
    failed = client.get(reverse("history") + "?status=failed").content.decode()
    assert failed.count('data-status="failed"') == 13 and 'data-status="completed"' not in failed
    oldest = client.get(reverse("history") + "?sort=oldest").content.decode()
    assert oldest.index("prompt 00") < oldest.index("prompt 01")
    assert 'data-view="list"' in first and "data-view-container" in first
    none = client.get(reverse("history") + "?status=running").content.decode()
    assert 'id="history-no-match"' in none and "Show all requests" in none
    assert client.get(reverse("history") + "?status=bogus&page=99&sort=x").status_code == 200


def test_history_page_queries_do_not_grow_with_the_page(login, user, checkpoint, django_assert_max_num_queries):
    for n in range(30):
        make_request(user, checkpoint, status=Status.COMPLETED, outputs=2, prompt=f"p{n}")
    client = login(user)
    with django_assert_max_num_queries(6):  # session, user, count, page (+ savepoints)
        assert client.get(reverse("history")).status_code == 200


def test_history_card_actions(login, user, checkpoint):
    done = make_request(user, checkpoint, status=Status.COMPLETED, outputs=1)
    html = login(user).get(reverse("history")).content.decode()
    assert f'action="/requests/{done.pk}/regenerate/"' in html
    assert f'action="/requests/{done.pk}/delete/"' in html and "data-confirm=" in html
    assert f"/api/v1/comfyui/{done.pk}/images/0/thumbnail/medium/" in html
    assert "64 × 64" in html and checkpoint.name in html


# --- image viewer -----------------------------------------------------------------------------

def test_image_viewer_navigation_and_parameters(login, user, checkpoint, lora):
    older = make_request(user, checkpoint, status=Status.COMPLETED, outputs=2, prompt="older")
    make_request(user, checkpoint, status=Status.FAILED, prompt="no images")
    newer = make_request(user, checkpoint, status=Status.COMPLETED, outputs=1, prompt="newer",
                         lora_models=[{"name": lora.name, "strength_model": 0.7, "strength_clip": 1.0}])
    client = login(user)
    html = client.get(reverse("image-viewer", args=[newer.pk, 0])).content.decode()
    assert "Image 1 of 1" in html
    assert f'href="{reverse("image-viewer", args=[older.pk, 0])}" rel="next"' in html
    assert 'rel="prev"' not in html
    assert f'href="/api/v1/comfyui/{newer.pk}/images/0/?download=1" download' in html
    assert "Steps: 4" in html and "&lt;lora:tiny-lora:0.7&gt;" in html
    assert "&quot;checkpoint_model&quot;: &quot;tiny-sd15-random.safetensors&quot;" in html
    assert 'data-copy="parameters-text"' in html
    middle = client.get(reverse("image-viewer", args=[older.pk, 0])).content.decode()
    assert f'href="{reverse("image-viewer", args=[newer.pk, 0])}" rel="prev"' in middle
    assert f'href="{reverse("image-viewer", args=[older.pk, 1])}" rel="next"' in middle
    assert client.get(reverse("image-viewer", args=[older.pk, 2])).status_code == 404


# --- models and backends ----------------------------------------------------------------------

def test_models_page_lists_offered_models_with_metadata(login, user, checkpoint, lora):
    AvailableModel.objects.filter(pk=checkpoint.pk).update(recommended_width=512, recommended_height=768,
                                                           size_bytes=2_000_000, sha256="ab" * 32)
    AvailableModel.objects.create(name="gone.safetensors", type=ModelType.LORA, is_present=False)
    html = login(user).get(reverse("models")).content.decode()
    assert "Tiny SD1.5 test checkpoint" in html and "512 × 768" in html and "tinystyle" in html
    assert "SD1.5" in html and "abababababab…" in html and "1.9\xa0MB" in html
    assert "gone.safetensors" not in html


def test_models_page_empty_state(login, user):
    html = login(user).get(reverse("models")).content.decode()
    assert "No checkpoints are offered yet" in html and "No LoRAs are offered yet" in html


def test_backends_page_is_staff_only(login, user, staff_user, settings):
    settings.COMFYUI_BACKENDS = [{"url": "http://127.0.0.1:9", "capacity": 2}]
    assert login(user).get(reverse("backends-page")).status_code == 404
    html = login(staff_user).get(reverse("backends-page")).content.decode()
    assert "http://127.0.0.1:9" in html and "Capacity" in html and "Queue depth" in html


def test_backends_page_explains_a_down_backend(login, staff_user, settings):
    from generation.models import BackendState

    settings.COMFYUI_BACKENDS = [{"url": "http://127.0.0.1:9", "capacity": 2}]
    BackendState.objects.create(url="http://127.0.0.1:9", is_healthy=False, consecutive_failures=3,
                                last_error="Connection refused")
    html = login(staff_user).get(reverse("backends-page")).content.decode()
    assert "Down · out of rotation" in html and "Connection refused" in html and "3 failures in a row" in html


def test_images_fall_back_to_the_full_image_without_thumbnails(login, user, checkpoint):
    done = make_request(user, checkpoint, status=Status.COMPLETED, outputs=1)
    GenerationRequest.objects.filter(pk=done.pk).update(thumbnails=[])
    html = login(user).get(reverse("request-detail", args=[done.pk])).content.decode()
    assert f'<img src="/api/v1/comfyui/{done.pk}/images/0/"' in html


def test_history_counts_only_a_few_pages_ahead(login, user, checkpoint, monkeypatch):
    from generation import views

    monkeypatch.setattr(views.LookaheadPaginator, "LOOKAHEAD_PAGES", 1)
    for n in range(24 * 4 + 1):
        make_request(user, checkpoint, status=Status.COMPLETED, prompt=f"prompt {n:03}")
    client = login(user)
    first = client.get(reverse("history")).content.decode()
    assert "Page 1 of 2+ · more than 48 requests" in first and 'rel="next"' in first
    third = client.get(reverse("history") + "?page=3").content.decode()
    assert "Page 3 of 4+ · more than 96 requests" in third and "prompt 048" in third
    last = client.get(reverse("history") + "?page=5").content.decode()
    assert "Page 5 of 5 · 97 requests" in last and "prompt 000" in last and 'rel="next"' not in last
    beyond = client.get(reverse("history") + "?page=9").content.decode()
    assert "Page 5 of 5 · 97 requests" in beyond


# --- history filters, tiles and "use as input" ------------------------------------------------

def _cards(html):
    return re.findall(r'<li class="card" data-request-id="([0-9a-f-]{36})"', html)


def test_history_filters_by_words_workflow_checkpoint_and_days(login, user, checkpoint):
    other = AvailableModel.objects.create(name="sdxl/other.safetensors", type=ModelType.CHECKPOINT)
    lighthouse = make_request(user, checkpoint, status=Status.COMPLETED, prompt="A Lighthouse at dusk, stormy sea")
    harbour = make_request(user, checkpoint, status=Status.FAILED, prompt="a harbour at dawn")
    sdxl = make_request(user, other, status=Status.COMPLETED, prompt="a lighthouse in fog")
    upscaled = make_request(user, checkpoint, status=Status.COMPLETED, prompt="", workflow_slug="upscale")
    GenerationRequest.objects.filter(pk=harbour.pk).update(created_at="2026-03-01T23:30:00Z")
    GenerationRequest.objects.filter(pk=sdxl.pk).update(created_at="2026-03-02T08:00:00Z")
    GenerationRequest.objects.filter(pk__in=[lighthouse.pk, upscaled.pk]).update(created_at="2026-03-05T12:00:00Z")
    client = login(user)

    def shown(**query):
        response = client.get(reverse("history"), query)
        assert response.status_code == 200
        return set(_cards(response.content.decode()))

    assert shown(search="lighthouse") == {str(lighthouse.pk), str(sdxl.pk)}
    assert shown(search="LIGHTHOUSE  stormy") == {str(lighthouse.pk)}  # every word, any case
    assert shown(workflow="upscale") == {str(upscaled.pk)}
    assert shown(checkpoint="sdxl/other.safetensors") == {str(sdxl.pk)}
    assert shown(date_from="2026-03-01", date_to="2026-03-01") == {str(harbour.pk)}  # both days inclusive
    assert shown(date_from="2026-03-02") == {str(sdxl.pk), str(lighthouse.pk), str(upscaled.pk)}
    assert shown(date_to="2026-03-02", status="completed") == {str(sdxl.pk)}
    html = client.get(reverse("history"), {"search": "lighthouse"}).content.decode()
    assert "2 matching requests" in html and "Clear filters" in html
    assert re.search(r'<input type="search" name="search" value="lighthouse"[^>]*id="id_search"', html)


def test_history_filter_mistakes_are_shown_and_ignored(login, user, checkpoint):
    make_request(user, checkpoint, status=Status.COMPLETED)
    client = login(user)
    html = client.get(reverse("history"), {"date_from": "2026-13-45", "workflow": "nope",
                                           "status": "bogus"}).content.decode()
    assert len(_cards(html)) == 1  # the mistaken filters are left out
    assert 'id="err-filter-date_from"' in html and "Enter a valid date." in html
    assert 'id="err-filter-workflow"' in html and 'id="err-filter-status"' in html
    backwards = client.get(reverse("history"), {"date_from": "2026-03-05", "date_to": "2026-03-01"}).content.decode()
    assert "Must not be before the start date." in backwards
    assert client.get(reverse("history"), {"date_from": "0001-01-01", "date_to": "9999-12-31"}).status_code == 200
    none = client.get(reverse("history"), {"search": "no such words"}).content.decode()
    assert 'id="history-no-match"' in none and "No request matches these filters." in none


def test_history_page_links_keep_the_filters(login, user, checkpoint):
    for n in range(26):
        make_request(user, checkpoint, status=Status.COMPLETED, prompt=f"castle {n:02}")
    html = login(user).get(reverse("history"), {"search": "castle", "sort": "oldest"}).content.decode()
    assert 'href="?search=castle&amp;sort=oldest&amp;page=2"' in html
    assert html.index("castle 00") < html.index("castle 01")


def test_history_tiles_show_every_image_and_what_unfinished_ones_wait_for(login, user, other_user, checkpoint):
    batch = make_request(user, checkpoint, status=Status.COMPLETED, outputs=3)
    make_request(other_user, checkpoint, status=Status.QUEUED)  # first in line: ours is second
    queued = make_request(user, checkpoint, status=Status.QUEUED)
    running = make_request(user, checkpoint, status=Status.RUNNING, attempts=1)
    RunState.objects.create(request=running, attempt=1, progress=0.4, current_step=8, total_steps=20)
    failed = make_request(user, checkpoint, status=Status.FAILED, error="ComfyUI refused: ckpt_name not in list")
    html = login(user).get(reverse("history")).content.decode()
    for n in range(3):
        assert f'href="/requests/{batch.pk}/images/{n}/"' in html
        assert f'src="/api/v1/comfyui/{batch.pk}/images/{n}/thumbnail/small/" alt="Image {n + 1} of 3"' in html
    tile = html[html.index(f'data-request-id="{queued.pk}"'):]
    assert "Position 2 in the queue" in tile[:tile.index("</li>")]
    tile = html[html.index(f'data-request-id="{running.pk}"'):]
    assert 'value="40" data-tile-progress' in tile and "Step 8 / 20" in tile[:tile.index("</li>")]
    tile = html[html.index(f'data-request-id="{failed.pk}"'):]
    assert "ckpt_name not in list" in tile[:tile.index("</li>")]


def test_use_as_input_from_history_and_the_viewer(login, user, staff_user, checkpoint):
    done = make_request(user, checkpoint, status=Status.COMPLETED, outputs=2)
    failed = make_request(user, checkpoint, status=Status.FAILED)
    html = login(user).get(reverse("history")).content.decode()
    for slug in ("img2img", "inpaint", "upscale"):
        assert f'href="/?workflow={slug}&amp;input={done.pk}%2F0"' in html
    assert f"input={failed.pk}" not in html and "workflow=hires&amp;input" not in html
    viewer = login(user).get(reverse("image-viewer", args=[done.pk, 1])).content.decode()
    assert f'href="/?workflow=inpaint&amp;input={done.pk}%2F1"' in viewer
    # staff may look at anyone's image, but only the owner's results can become an input
    assert "Use as input" not in login(staff_user).get(reverse("image-viewer", args=[done.pk, 1])).content.decode()


def test_use_as_input_fills_the_image_control(login, user, checkpoint):
    done = make_request(user, checkpoint, status=Status.COMPLETED, outputs=2)
    html = login(user).get(reverse("generate"), {"workflow": "upscale", "input": f"{done.pk}/1"}).content.decode()
    assert f'name="input_image" value="{done.pk}/1" data-image-value' in html
    assert f'src="/api/v1/comfyui/{done.pk}/images/1/"' in html and "A result of yours, used as input." in html


# --- input images in the Generate form ------------------------------------------------------------

def _upload(name="in.png", *, width=96, height=64, **options):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from tests.plugins.generation_rows import image_bytes

    return SimpleUploadedFile(name, image_bytes(width, height, **options), content_type="image/png")


def image_form(checkpoint, workflow="img2img", **overrides):
    data = {key: value for key, value in form_post(checkpoint).items()
            if key not in ("width", "height")}
    data.update({"workflow": workflow, "sampler_params.denoise": "0.6", **overrides})
    return data


def test_an_uploaded_image_survives_a_form_shown_again_with_errors(login, user, checkpoint):
    from generation.models import InputImage

    client = login(user)
    response = client.post(reverse("generate"), image_form(checkpoint, prompt="", input_image=_upload()))
    assert response.status_code == 400
    html = response.content.decode()
    record = InputImage.objects.get(user=user)
    assert f'name="input_image" value="{record.pk}" data-image-value' in html
    assert f'src="/api/v1/comfyui/inputs/{record.pk}/image/"' in html and "Uploaded earlier." in html
    assert "This field is required." in html and not GenerationRequest.objects.exists()
    # submitted again with the prompt: the stored image is used, not uploaded twice (the empty file
    # input is posted beside it under the same name, as browsers do)
    from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart

    body = encode_multipart(BOUNDARY, image_form(checkpoint, input_image=str(record.pk)))
    empty_file = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="input_image"; filename=""\r\n'
                  f"Content-Type: application/octet-stream\r\n\r\n\r\n").encode()
    body = body.replace(f"--{BOUNDARY}--".encode(), empty_file + f"--{BOUNDARY}--".encode())
    response = client.generic("POST", reverse("generate"), body, content_type=MULTIPART_CONTENT)
    created = GenerationRequest.objects.get()
    assert response.status_code == 302 and created.params["input_image"] == str(record.pk)
    assert (created.width, created.height) == (96, 64) and InputImage.objects.count() == 1


def test_an_inpaint_mask_posted_with_the_form(login, user, checkpoint):
    from generation.models import InputImage

    client = login(user)
    response = client.post(reverse("generate"), image_form(
        checkpoint, "inpaint", **{"sampler_params.denoise": "1.0"}, input_image=_upload(),
        mask_image=_upload("mask.png", color=(255, 255, 255))))
    assert response.status_code == 302
    created = GenerationRequest.objects.get()
    mask = InputImage.objects.get(kind=InputImage.Kind.MASK)
    assert created.params["mask_image"] == str(mask.pk) and (mask.width, mask.height) == (96, 64)
    detail = client.get(reverse("request-detail", args=[created.pk])).content.decode()
    assert f"/api/v1/comfyui/inputs/{mask.pk}/image/" in detail and "Mask · 96 × 64" in detail


@pytest.mark.parametrize("field, upload, message", [
    ("input_image", "text", "Not a readable image"),
    ("mask_image", "wrong size", "it must be the input image&#x27;s size, 96 × 64"),
])
def test_bad_images_are_explained_at_their_field(login, user, checkpoint, field, upload, message):
    from django.core.files.uploadedfile import SimpleUploadedFile

    files = {"input_image": _upload()}
    files[field] = (SimpleUploadedFile("notes.png", b"not an image at all", content_type="image/png")
                    if upload == "text" else _upload("mask.png", width=32, height=32))
    response = login(user).post(reverse("generate"), image_form(checkpoint, "inpaint", **files))
    assert response.status_code == 400
    html = response.content.decode()
    errors = html[html.index(f'id="err-{field}"'):]
    assert message in errors[:errors.index("</ul>")]
    assert not GenerationRequest.objects.exists()


def test_another_users_input_is_refused_like_an_unknown_one(login, user, other_user, checkpoint, stored_input):
    theirs = stored_input(other_user)
    response = login(user).post(reverse("generate"), image_form(checkpoint, input_image=str(theirs.pk)))
    html = response.content.decode()
    assert response.status_code == 400 and "No such input image." in html
    assert f"/api/v1/comfyui/inputs/{theirs.pk}/image/" not in html  # no preview of someone else's file


@pytest.mark.parametrize("slug", ["txt2img", "img2img", "inpaint", "hires", "upscale"])
def test_every_workflow_form_renders_its_parameters(login, user, checkpoint, lora, slug):
    from generation.workflows import get_workflow

    html = login(user).get(reverse("generate"), {"workflow": slug}).content.decode()
    for item in get_workflow(slug).parameters:
        assert f'name="{item.html_name}"' in html, item.name
    assert f'aria-current="page" data-workflow="{slug}"' in html
    assert ("data-mask-field" in html) == (slug == "inpaint")
    assert ('data-image-field' in html) == (slug in ("img2img", "inpaint", "upscale"))


def test_img2img_shows_denoise_outside_advanced(login, user, checkpoint):
    html = login(user).get(reverse("generate"), {"workflow": "img2img"}).content.decode()
    assert html.index('name="sampler_params.denoise"') < html.index('id="advanced"')
    assert "How much of the input changes" in html


# --- backends page ---------------------------------------------------------------------------------

def test_a_down_backend_alone_says_requests_wait(login, staff_user, settings):
    from generation.models import BackendState

    settings.COMFYUI_BACKENDS = [{"url": "http://127.0.0.1:9", "capacity": 2}]
    BackendState.objects.create(url="http://127.0.0.1:9", is_healthy=False, consecutive_failures=2,
                                last_error="x" * 2000, loaded_checkpoint="tiny-sd15-random.safetensors")
    html = login(staff_user).get(reverse("backends-page")).content.decode()
    assert "dispatched elsewhere" not in html and "go to the other backend" not in html
    assert "No other backend is in rotation: requests wait in the queue until one answers." in html
    assert "tiny-sd15-random" not in html and "not known: it has never answered" in html
    assert "x" * 600 not in html  # a huge error is cut (and wraps inside its box)


def test_a_down_backend_beside_a_healthy_one(login, staff_user, settings):
    from django.utils import timezone

    from generation.models import BackendState

    settings.COMFYUI_BACKENDS = [{"url": "http://127.0.0.1:9", "capacity": 2},
                                 {"url": "http://127.0.0.1:7", "capacity": 2}]
    BackendState.objects.create(url="http://127.0.0.1:9", is_healthy=False, consecutive_failures=1,
                                last_ok_at=timezone.now(), loaded_checkpoint="tiny-sd15-random.safetensors")
    BackendState.objects.create(url="http://127.0.0.1:7", is_healthy=True)
    html = login(staff_user).get(reverse("backends-page")).content.decode()
    assert "Meanwhile its jobs go to the other backend in rotation." in html
    assert "tiny-sd15-random.safetensors" in html  # it has answered before: what it last loaded is shown


# --- live pages (server-sent events; static/js/live.js) ---------------------------------------

def test_the_card_names_its_event_stream(login, user, checkpoint):
    running = make_request(user, checkpoint, status=Status.RUNNING, attempts=1)
    RunState.objects.create(request=running, attempt=1, progress=0.5, current_step=2, total_steps=4,
                            current_node="KSampler (3)")
    client = login(user)
    html = client.get(reverse("request-detail", args=[running.pk])).content.decode()
    assert f'data-events-url="/api/v1/comfyui/{running.pk}/events/"' in html
    assert "data-live-preview hidden" in html and "/static/js/live.js" in html
    assert "<span data-live-step>Step 2 / 4 · KSampler (3)</span>" in html  # what progress events rewrite


def test_history_names_its_event_stream_and_tile_positions(login, user, checkpoint, reachable_backend):
    queued = make_request(user, checkpoint)
    html = login(user).get(reverse("history")).content.decode()
    assert 'data-events-url="/api/v1/comfyui/events/"' in html and 'data-tiles-url="/history/tiles/"' in html
    assert f'data-request-id="{queued.pk}" data-status="queued" data-queue-position="1"' in html


def test_history_tiles_alone_for_own_ids(login, user, other_user, checkpoint):
    mine = make_request(user, checkpoint, status=Status.COMPLETED, outputs=1)
    waiting = make_request(user, checkpoint)
    theirs = make_request(other_user, checkpoint, status=Status.COMPLETED, outputs=1)
    response = login(user).get(reverse("history-tiles"), {
        "id": [str(mine.pk), str(waiting.pk), str(theirs.pk), "not-a-uuid"], "next": "/history/?status=completed"})
    html = response.content.decode()
    assert response.status_code == 200 and "<html" not in html and "no-cache" in response["Cache-Control"]
    assert f'data-request-id="{mine.pk}"' in html and f'data-request-id="{waiting.pk}"' in html
    assert str(theirs.pk) not in html
    assert f"/api/v1/comfyui/{mine.pk}/images/0/thumbnail/medium/" in html
    assert 'name="next" value="/history/?status=completed"' in html  # delete returns to the History page
    elsewhere = login(user).get(reverse("history-tiles"), {"id": str(mine.pk), "next": "https://evil.example/"})
    assert 'name="next" value="/history/"' in elsewhere.content.decode()


def test_history_tiles_cost_a_fixed_number_of_queries(login, user, checkpoint, django_assert_max_num_queries):
    ids = [str(make_request(user, checkpoint, status=Status.COMPLETED, outputs=2, prompt=f"p{n}").pk)
           for n in range(30)]
    client = login(user)
    with django_assert_max_num_queries(6):
        response = client.get(reverse("history-tiles"), {"id": ids})
    assert response.content.decode().count("data-request-id=") == 24  # at most a page of tiles at once


def test_backends_page_names_its_event_stream_and_cells(login, staff_user, settings):
    settings.COMFYUI_BACKENDS = [{"url": "http://127.0.0.1:9", "capacity": 2}]
    html = login(staff_user).get(reverse("backends-page")).content.decode()
    assert 'data-events-url="/api/v1/comfyui/backends/events/"' in html
    assert 'data-healthy="true" data-failures="0"' in html
    for cell in ("capacity", "queue", "last-hour", "all-time", "last-ok", "last-checked"):
        assert f'data-cell="{cell}"' in html


def test_video_outputs_play_in_a_video_element(login, user, checkpoint):
    done = make_request(user, checkpoint, status=Status.COMPLETED, outputs=1)
    GenerationRequest.objects.filter(pk=done.pk).update(outputs=[f"generations/{user.pk}/2026/01/01/x_0.mp4"],
                                                        thumbnails=[{}])
    client = login(user)
    viewer = client.get(reverse("image-viewer", args=[done.pk, 0])).content.decode()
    assert f'<video src="/api/v1/comfyui/{done.pk}/images/0/" controls' in viewer
    assert 'class="viewer-image">' in viewer  # no zoom for a video: it has its own controls
    for page in (reverse("history"), reverse("request-detail", args=[done.pk])):
        html = client.get(page).content.decode()
        assert f'<video src="/api/v1/comfyui/{done.pk}/images/0/" muted' in html
