"""Shared fixtures. Fixtures that start real servers live in ``tests/plugins/`` (one module each)."""

import pytest
from django.contrib.auth import get_user_model

from models_registry.models import AvailableModel, ModelType

pytest_plugins = ["tests.plugins.simulator", "tests.plugins.cluster", "tests.plugins.browser",
                  "tests.plugins.generation_rows", "tests.plugins.pgbouncer", "tests.plugins.gunicorn"]


@pytest.fixture(autouse=True)
def _media_root(settings, tmp_path):
    """Every test stores files in its own folder."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.STORAGES = {**settings.STORAGES,
                         "default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                                     "OPTIONS": {"location": str(tmp_path / "media")}}}
    return settings.MEDIA_ROOT


@pytest.fixture(autouse=True)
def _live_hub():
    """The web process's live-event listener, when a test opened a stream, stops with the test (it holds
    a database connection and a cursor into the test's events)."""
    yield
    from generation.live.bus import hub

    if hub._thread is not None:
        hub.stop()


@pytest.fixture
def make_user(db):
    def make(username="alice", *, password="pw-correct-horse", is_staff=False):
        user = get_user_model().objects.create_user(username=username, password=password, is_staff=is_staff,
                                                    is_superuser=is_staff)
        user.raw_password = password
        return user

    return make


@pytest.fixture
def user(make_user):
    return make_user("alice")


@pytest.fixture
def other_user(make_user):
    return make_user("mallory")


@pytest.fixture
def staff_user(make_user):
    return make_user("staff", is_staff=True)


@pytest.fixture
def checkpoint(db):
    """The checkpoint the simulator and the recorded object_info know."""
    return AvailableModel.objects.create(name="tiny-sd15-random.safetensors", type=ModelType.CHECKPOINT,
                                         description="Tiny SD1.5 test checkpoint", base_architecture="SD1.5")


@pytest.fixture
def lora(db):
    return AvailableModel.objects.create(name="tiny-lora.safetensors", type=ModelType.LORA,
                                         trigger_words=["tinystyle"])


@pytest.fixture
def valid_params(checkpoint):
    return {"prompt": "a lighthouse at dusk", "negative_prompt": "blurry", "checkpoint_model": checkpoint.name,
            "width": 64, "height": 64, "batch_size": 1,
            "sampler_params": {"seed": 42, "steps": 4, "cfg": 7.0, "sampler_name": "euler",
                               "scheduler": "normal", "denoise": 1.0}}


@pytest.fixture
def reachable_backend(db, settings):
    """The configured backends in rotation and known to have answered (capabilities not read: able to
    run anything), so a waiting request only waits for its turn."""
    from django.utils import timezone

    from generation.models import BackendState

    for backend in settings.COMFYUI_BACKENDS:
        BackendState.objects.update_or_create(url=backend["url"], defaults={
            "capacity": backend["capacity"], "is_healthy": True, "last_ok_at": timezone.now()})
    return settings.COMFYUI_BACKENDS
