"""Registry jobs: the web request records a refresh or a hash and a worker does it; one active job per
refresh / per model, re-deliveries are no-ops, abandoned jobs are replaced, failures are recorded."""

import threading
import time
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from models_registry import jobs, tasks
from models_registry.models import AvailableModel, ModelType, RegistryJob
from models_registry.services import refresh_models
from tests.concurrency import run_concurrently
from tests.models_registry.safetensors_files import SD15_TENSORS, write_safetensors


@pytest.fixture
def models_dir(tmp_path, settings):
    root = tmp_path / "models"
    write_safetensors(root / "checkpoints" / "a.safetensors", tensors=SD15_TENSORS)
    (root / "loras").mkdir()
    (root / "upscale_models").mkdir()
    settings.COMFYUI_MODELS_DIR = str(root)
    settings.COMFYUI_CHECKPOINTS_DIRS = settings.COMFYUI_LORAS_DIRS = settings.COMFYUI_UPSCALE_MODELS_DIRS = []
    settings.COMFYUI_BACKENDS = []
    return root


@pytest.fixture
def enqueued(monkeypatch):
    calls = []
    monkeypatch.setattr(tasks, "async_task", lambda func, *args, **kwargs: calls.append((func, args)))
    return calls


def test_a_refresh_is_enqueued_once_on_commit(db, staff_user, enqueued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job, created = jobs.request_refresh(user=staff_user)
    assert created and enqueued == []  # the worker must find the row: nothing is sent before the commit
    for callback in callbacks:
        callback()
    assert enqueued == [(tasks.refresh_registry, (job.pk,))]
    again, created = jobs.request_refresh(user=None)
    assert again == job and not created


def test_the_worker_runs_it_once(db, staff_user, models_dir, enqueued):
    job, _ = jobs.request_refresh(user=staff_user)
    assert tasks.refresh_registry(job.pk).startswith("1 seen, 1 added")
    job.refresh_from_db()
    assert job.status == "done" and job.details["added"] == ["checkpoint:a.safetensors"]
    assert job.details["problems"] == [] and job.started_at <= job.finished_at
    assert tasks.refresh_registry(job.pk) == "not requested any more"  # a re-delivered task
    assert AvailableModel.objects.count() == 1


def test_an_unexpected_error_fails_the_job_and_reaches_django_q(db, staff_user, models_dir, enqueued, monkeypatch):
    def broken(**kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(jobs.services, "refresh_models", broken)
    job, _ = jobs.request_refresh(user=staff_user)
    with pytest.raises(ZeroDivisionError):
        tasks.refresh_registry(job.pk)
    job.refresh_from_db()
    assert job.status == "failed" and job.summary == "internal error: ZeroDivisionError: boom"
    _, created = jobs.request_refresh(user=staff_user)
    assert created  # a failed job does not block the next one


def test_an_abandoned_running_job_is_replaced_and_its_late_task_does_nothing(db, staff_user, settings, enqueued):
    job, _ = jobs.request_refresh(user=staff_user)
    assert jobs.claim(job.pk, "refresh") is not None  # a worker took it, then died
    RegistryJob.objects.filter(pk=job.pk).update(
        started_at=timezone.now() - timedelta(seconds=settings.Q_ROLE_OPTIONS["housekeeping"]["timeout"] + 1))
    new, created = jobs.request_refresh(user=staff_user)
    job.refresh_from_db()
    assert created and new != job
    assert job.status == "failed" and "abandoned" in job.summary
    assert tasks.refresh_registry(job.pk) == "not requested any more"


def test_hash_jobs_one_file_per_task_and_the_rest_handed_on(db, staff_user, models_dir, tmp_path, enqueued):
    refresh_models()
    a = AvailableModel.objects.get(name="a.safetensors")
    other = tmp_path / "b.safetensors"
    other.write_bytes(b"b" * 1000)
    b = AvailableModel.objects.create(name="b.safetensors", type=ModelType.CHECKPOINT, file_path=str(other))
    requested, already, impossible = jobs.request_hashes(models=[a, b], user=staff_user)
    assert len(requested) == 2 and already == [] and impossible == []
    ids = [job.pk for job in requested]
    tasks.hash_models(ids)
    assert enqueued == [(tasks.hash_models, (ids[1:],))]
    a.refresh_from_db()
    assert a.sha256 and RegistryJob.objects.get(pk=ids[0]).details == {"sha256": a.sha256}
    assert RegistryJob.objects.get(pk=ids[1]).status == "requested"
    other.unlink()  # the second file vanished before its turn
    tasks.hash_models(ids[1:])
    failed = RegistryJob.objects.get(pk=ids[1])
    assert failed.status == "failed" and failed.summary.startswith("cannot hash: ")


def test_only_the_newest_finished_jobs_are_kept(db, staff_user, models_dir, enqueued):
    for _ in range(jobs.KEEP_FINISHED + 3):
        job, _ = jobs.request_refresh(user=staff_user)
        tasks.refresh_registry(job.pk)
    assert RegistryJob.objects.count() == jobs.KEEP_FINISHED
    assert jobs.latest_refresh() == job


@pytest.mark.django_db(transaction=True)
def test_two_staff_asking_at_once_get_one_refresh(staff_user, enqueued):
    barrier = threading.Barrier(2)
    answers = []

    def ask():
        try:
            barrier.wait(timeout=10)
            answers.append(jobs.request_refresh(user=staff_user))
        finally:
            connections.close_all()

    run_concurrently([ask] * 2)
    assert sorted(created for _, created in answers) == [False, True]
    assert answers[0][0] == answers[1][0]
    assert RegistryJob.objects.count() == 1


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_the_admin_button_is_run_by_a_real_worker_cluster(client, staff_user, simulator, cluster_factory, settings):
    settings.COMFYUI_MODELS_DIR = ""
    cluster_factory([simulator.url])
    client.force_login(staff_user)
    client.post("/admin/models_registry/availablemodel/refresh/")
    job = RegistryJob.objects.get()
    deadline = timezone.now() + timedelta(seconds=30)
    while RegistryJob.objects.get(pk=job.pk).status in RegistryJob.ACTIVE:
        assert timezone.now() < deadline, "no worker ran the refresh"
        time.sleep(0.1)
    job.refresh_from_db()
    assert job.status == "done", job.summary
    assert "checkpoint:tiny-sd15-random.safetensors" in job.details["added"]
    assert AvailableModel.objects.get(name="tiny-sd15-random.safetensors").backends == [simulator.url]
    page = client.get("/admin/models_registry/availablemodel/").content.decode()
    assert "Last refresh finished at" in page and job.summary in page
