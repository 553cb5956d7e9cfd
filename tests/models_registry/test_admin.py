"""The AvailableModel admin through Django's test client, as a staff user."""

from datetime import timedelta

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from models_registry import tasks
from models_registry.models import AvailableModel, ModelType, RegistryJob
from models_registry.services import refresh_models
from tests.models_registry.safetensors_files import SD15_TENSORS, write_safetensors

CHANGELIST = "admin:models_registry_availablemodel_changelist"


@pytest.fixture
def admin_client_(client, staff_user):
    client.force_login(staff_user)
    return client


@pytest.fixture
def models_dir(tmp_path, settings):
    root = tmp_path / "models"
    write_safetensors(root / "checkpoints" / "good.safetensors", tensors=SD15_TENSORS,
                      metadata={"ss_resolution": "512"})
    (root / "checkpoints" / "bad.safetensors").write_bytes(b"\xff" * 20)
    (root / "loras").mkdir()
    (root / "upscale_models").mkdir()  # every ComfyUI models/ folder has one
    settings.COMFYUI_MODELS_DIR = str(root)
    settings.COMFYUI_CHECKPOINTS_DIRS = settings.COMFYUI_LORAS_DIRS = settings.COMFYUI_UPSCALE_MODELS_DIRS = []
    settings.COMFYUI_BACKENDS = []
    return root


@pytest.fixture
def enqueued(monkeypatch):
    """What the admin hands to Django-Q: ``[(task function, args)]`` (run them to play the worker)."""
    calls = []
    monkeypatch.setattr(tasks, "async_task", lambda func, *args, **kwargs: calls.append((func, args)))
    return calls


def run_enqueued(enqueued):
    """Run what was enqueued, and what that enqueues, like a worker would."""
    while enqueued:
        func, args = enqueued.pop(0)
        func(*args)


def refresh_state(client):
    return client.get(reverse(CHANGELIST)).context["refresh_state"]


def messages_of(response):
    return [str(m) for m in get_messages(response.wsgi_request)]


def post_action(client, action, models):
    return client.post(reverse(CHANGELIST), {"action": action, "_selected_action": [m.pk for m in models]},
                       follow=True)


def test_changelist_filters_search_and_refresh_button(admin_client_, checkpoint, lora):
    response = admin_client_.get(reverse(CHANGELIST))
    assert response.status_code == 200
    body = response.content.decode()
    assert "Refresh from ComfyUI" in body
    for parameter in ("type__exact", "is_active__exact", "is_present__exact", "base_architecture"):
        assert parameter in body
    response = admin_client_.get(reverse(CHANGELIST), {"type__exact": "lora"})
    assert list(response.context["cl"].result_list) == [lora]
    response = admin_client_.get(reverse(CHANGELIST), {"q": "sd15"})
    assert list(response.context["cl"].result_list) == [checkpoint]


def test_bulk_disable_and_enable(admin_client_, checkpoint, lora):
    response = post_action(admin_client_, "disable_models", [checkpoint, lora])
    assert "2 model(s) disabled." in messages_of(response)
    assert not AvailableModel.objects.filter(is_active=True).exists()
    response = post_action(admin_client_, "enable_models", [lora])
    assert "1 model(s) enabled." in messages_of(response)
    assert list(AvailableModel.objects.filter(is_active=True)) == [lora]


def test_health_check_reports_per_model(admin_client_, db, models_dir):
    refresh_models()
    good = AvailableModel.objects.get(name="good.safetensors")
    bad = AvailableModel.objects.get(name="bad.safetensors")
    gone = AvailableModel.objects.create(name="gone.safetensors", type=ModelType.CHECKPOINT,
                                         file_path=str(models_dir / "gone.safetensors"))
    messages = messages_of(post_action(admin_client_, "check_health", [good, bad, gone]))
    assert any(m.startswith("checkpoint:good.safetensors: file present, header readable") for m in messages)
    assert any(m.startswith("checkpoint:bad.safetensors: header unreadable") for m in messages)
    assert any(m.startswith("checkpoint:gone.safetensors: file") and "missing" in m for m in messages)


def test_refresh_button_records_the_request_and_a_worker_runs_it(admin_client_, staff_user, db, models_dir,
                                                                 enqueued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client_.post(reverse("admin:models_registry_availablemodel_refresh"), follow=True)
    assert response.redirect_chain[-1][0] == reverse(CHANGELIST)
    assert messages_of(response)[0].startswith("Refresh requested: a worker runs it")
    assert not AvailableModel.objects.exists()  # nothing scanned in the web request
    job = RegistryJob.objects.get()
    assert (job.kind, job.status, job.requested_by) == ("refresh", "requested", staff_user)
    assert enqueued == [(tasks.refresh_registry, (job.pk,))]
    level, headline, _ = refresh_state(admin_client_)
    assert level == "info" and headline.startswith("Refresh under way (requested by staff at ")
    assert "waiting for a worker" in headline

    # a second click while it is under way asks for nothing new
    messages = messages_of(admin_client_.post(reverse("admin:models_registry_availablemodel_refresh"), follow=True))
    assert messages[0].startswith("A refresh is already under way (requested by staff at ")
    assert RegistryJob.objects.count() == 1 and len(enqueued) == 1

    run_enqueued(enqueued)
    job.refresh_from_db()
    assert job.status == "done" and job.started_at and job.finished_at
    assert AvailableModel.objects.get(name="good.safetensors").recommended_width == 512
    level, headline, lines = refresh_state(admin_client_)
    assert level == "success"
    assert headline.endswith(": 2 seen, 2 added, 0 updated, 0 missing, 1 unreadable, 0 errors.")
    assert "Added: checkpoint:bad.safetensors, checkpoint:good.safetensors" in lines
    assert any("bad.safetensors" in line and "Added" not in line for line in lines)  # the unreadable header


def test_refresh_that_could_do_nothing_shows_why(admin_client_, db, settings, tmp_path, enqueued,
                                                 django_capture_on_commit_callbacks):
    settings.COMFYUI_MODELS_DIR = str(tmp_path / "absent")
    settings.COMFYUI_BACKENDS = []
    with django_capture_on_commit_callbacks(execute=True):
        admin_client_.post(reverse("admin:models_registry_availablemodel_refresh"))
    run_enqueued(enqueued)
    level, headline, _ = refresh_state(admin_client_)
    assert level == "error" and "nothing refreshed" in headline and "does not exist" in headline


def test_a_refresh_no_worker_finished_is_shown_abandoned_and_replaced(admin_client_, db, models_dir, settings,
                                                                      enqueued, django_capture_on_commit_callbacks):
    long_ago = timezone.now() - timedelta(seconds=settings.Q_ROLE_OPTIONS["housekeeping"]["timeout"] + 1)
    stuck = RegistryJob.objects.create(kind="refresh", status="running", requested_at=long_ago, started_at=long_ago)
    assert "abandoned" in refresh_state(admin_client_)[1]
    with django_capture_on_commit_callbacks(execute=True):
        admin_client_.post(reverse("admin:models_registry_availablemodel_refresh"))
    stuck.refresh_from_db()
    assert stuck.status == "failed" and stuck.summary.startswith("abandoned")
    assert RegistryJob.objects.filter(status="requested").count() == 1 and len(enqueued) == 1


def test_refresh_needs_post_and_staff(client, admin_client_, user, db, models_dir, enqueued):
    url = reverse("admin:models_registry_availablemodel_refresh")
    assert admin_client_.get(url).status_code == 405
    client.logout()
    client.force_login(user)  # not staff: the admin sends them to its login page
    response = client.post(url)
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert not AvailableModel.objects.exists() and not RegistryJob.objects.exists() and enqueued == []


def test_hash_action_hands_the_files_to_a_worker(admin_client_, staff_user, db, models_dir, enqueued,
                                                  django_capture_on_commit_callbacks):
    refresh_models()
    good = AvailableModel.objects.get(name="good.safetensors")
    bad = AvailableModel.objects.get(name="bad.safetensors")
    remote = AvailableModel.objects.create(name="remote.safetensors", type=ModelType.LORA)
    with django_capture_on_commit_callbacks(execute=True):
        messages = messages_of(post_action(admin_client_, "compute_hash", [good, bad, remote]))
    assert messages[0].startswith("Hashing 2 model(s) in a worker")
    assert any(m.startswith("lora:remote.safetensors: cannot hash: no local file") for m in messages)
    good.refresh_from_db()
    assert good.sha256 == ""  # not in the web request
    jobs = {job.model.name: job for job in RegistryJob.objects.filter(kind="hash")}
    assert set(jobs) == {"good.safetensors", "bad.safetensors"}
    assert all(job.requested_by == staff_user and job.status == "requested" for job in jobs.values())
    assert enqueued == [(tasks.hash_models, ([jobs["bad.safetensors"].pk, jobs["good.safetensors"].pk],))]

    def column(model):
        response = admin_client_.get(reverse(CHANGELIST))
        row = next(m for m in response.context["cl"].result_list if m.pk == model.pk)
        return str(response.context["cl"].model_admin.hash_state(row))

    assert column(good).startswith("waiting for a worker since ")
    messages = messages_of(post_action(admin_client_, "compute_hash", [good]))
    assert messages == ["Already being hashed: checkpoint:good.safetensors"]

    run_enqueued(enqueued)  # one file per task: the first task enqueued the second
    good.refresh_from_db()
    assert good.sha256 and RegistryJob.objects.get(pk=jobs["good.safetensors"].pk).summary == f"sha256 {good.sha256}"
    assert RegistryJob.objects.get(pk=jobs["bad.safetensors"].pk).status == "done"  # hashing needs no valid header
    assert good.sha256[:12] in column(good)
    body = admin_client_.get(reverse("admin:models_registry_availablemodel_change", args=[good.pk])).content.decode()
    assert good.sha256[:12] in body


def test_change_page_shows_metadata_and_keeps_name_read_only(admin_client_, db, models_dir):
    refresh_models()
    good = AvailableModel.objects.get(name="good.safetensors")
    url = reverse("admin:models_registry_availablemodel_change", args=[good.pk])
    response = admin_client_.get(url)
    assert response.status_code == 200
    assert "ss_resolution" in response.content.decode()
    assert "name" not in response.context["adminform"].form.fields
    data = {"display_name": "Good one", "description": "", "is_active": "", "base_architecture": "SD1.5",
            "trigger_words": "", "recommended_width": "512", "recommended_height": "512"}
    response = admin_client_.post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    good.refresh_from_db()
    assert (good.display_name, good.is_active, good.name) == ("Good one", False, "good.safetensors")


def test_trigger_words_are_edited_one_per_line(admin_client_, lora):
    url = reverse("admin:models_registry_availablemodel_change", args=[lora.pk])
    page = admin_client_.get(url).content.decode()
    textarea = page[page.index('name="trigger_words"'):]
    assert '"tinystyle"' not in page and textarea[:textarea.index("</textarea>")].endswith(">\ntinystyle")
    data = {"display_name": "", "description": "", "is_active": "on", "base_architecture": "",
            "recommended_width": "", "recommended_height": "",
            "trigger_words": "  watercolor \r\n\r\nink wash, soft\r\nwatercolor\r\n"}
    response = admin_client_.post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    lora.refresh_from_db()
    assert lora.trigger_words == ["watercolor", "ink wash, soft"]  # trimmed, blank lines and repeats dropped
    response = admin_client_.post(url, {**data, "trigger_words": "x" * 101})
    assert response.status_code == 200 and "At most 100 characters a line" in response.content.decode()
    lora.refresh_from_db()
    assert lora.trigger_words == ["watercolor", "ink wash, soft"]


def test_changelist_shows_and_filters_by_backend(admin_client_, db, settings):
    gpu1, gpu2, gone = "http://gpu1:8188", "http://gpu2:8188", "http://gone:8188"
    settings.COMFYUI_BACKENDS = [{"url": gpu1, "capacity": 2}, {"url": gpu2, "capacity": 2}]
    both = AvailableModel.objects.create(name="both.safetensors", type=ModelType.CHECKPOINT, backends=[gpu1, gpu2])
    only2 = AvailableModel.objects.create(name="two.safetensors", type=ModelType.CHECKPOINT, backends=[gpu2])
    none = AvailableModel.objects.create(name="none.safetensors", type=ModelType.LORA, backends=[])
    stale = AvailableModel.objects.create(name="stale.safetensors", type=ModelType.LORA, backends=[gone])
    unknown = AvailableModel.objects.create(name="4x.pth", type=ModelType.UPSCALE_MODEL, backends=None)

    body = admin_client_.get(reverse(CHANGELIST)).content.decode()
    assert "on backend" in body and "gpu1:8188" in body and "not known" in body
    assert "gone:8188 (not configured)" in body

    def listed(**query):
        return set(admin_client_.get(reverse(CHANGELIST), query).context["cl"].result_list)

    assert listed(backend=gpu1) == {both}
    assert listed(backend=gpu2) == {both, only2}
    assert listed(backend="none") == {none, stale}
    assert listed(backend="unknown") == {unknown}
    assert listed(type__exact="upscale_model") == {unknown}


def test_add_page_renders_the_read_only_states(admin_client_, db):
    response = admin_client_.get(reverse("admin:models_registry_availablemodel_add"))
    assert response.status_code == 200
    assert "not known" in response.content.decode()  # on backends, before any refresh
