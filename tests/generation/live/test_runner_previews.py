"""Latent previews in the job runner: asked for per prompt, read from the socket's binary frames (both
recorded layouts), kept as the request's latest at a bounded rate, announced, and discarded at the end."""

import base64
import io

import pytest
import requests
from PIL import Image

from generation.comfyui import events as ev
from generation.dispatcher import claim_next
from generation.live import bus, previews
from generation.runner import Job, JobRunner, run_job
from generation.states import Status
from tests.generation.comfyui.conftest import recorded
from tests.generation.test_runner import _job, _queued

pytestmark = pytest.mark.integration


def recorded_previews(layout):
    frames = [f["_binary_frame"] for f in recorded(f"ws-previews-{layout}.jsonl") if "_binary_frame" in f]
    return [ev.parse_binary_frame(base64.b64decode(frame["base64"])) for frame in frames]


@pytest.fixture
def announced(monkeypatch):
    messages = []
    real = bus.publish

    def publish(message):
        messages.append(message)
        real(message)

    monkeypatch.setattr(bus, "publish", publish)
    return messages


@pytest.mark.django_db
@pytest.mark.parametrize("layout", ["legacy", "with-metadata"])
def test_recorded_frames_become_the_requests_latest_preview(layout, settings, user, make_generation, announced):
    settings.LIVE = {**settings.LIVE, "PREVIEW_INTERVAL": 0}
    request = make_generation(user, Status.RUNNING)
    frames = recorded_previews(layout)
    prompt_id = frames[0].prompt_id or "legacy-prompt"
    runner = JobRunner(Job(request.pk, 1, "http://127.0.0.1:9", prompt_id, None))
    runner.request = request
    for frame in frames:  # the client names a legacy frame's prompt after the execution frames before it
        runner.keep_preview(frame if frame.prompt_id else ev.Preview(prompt_id, None, frame.image_type, frame.data))
    runner.keep_preview(ev.Preview("another-prompt", "3", "image/jpeg", b"\xff\xd8not ours"))
    latest = previews.latest(request.pk)
    assert latest.number == len(frames) == 4
    assert latest.data == frames[-1].data and Image.open(io.BytesIO(latest.data)).size == (512, 512)
    assert [m["n"] for m in announced if m["k"] == "preview"] == [1, 2, 3, 4]


@pytest.mark.django_db
def test_previews_are_kept_at_most_once_per_interval(settings, user, make_generation, announced):
    settings.LIVE = {**settings.LIVE, "PREVIEW_INTERVAL": 60}
    request = make_generation(user, Status.RUNNING)
    runner = JobRunner(Job(request.pk, 1, "http://127.0.0.1:9", "p", None))
    runner.request = request
    for _ in range(5):
        runner.keep_preview(ev.Preview("p", "3", "image/jpeg", b"\xff\xd8frame"))
    assert previews.latest(request.pk).number == 1 and len(announced) == 1


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["latent2rgb", "none"])
def test_a_run_asks_for_previews_and_keeps_them_until_it_ends(method, settings, simulator, user, valid_params,
                                                               monkeypatch, announced):
    settings.COMFYUI_BACKENDS = [{"url": simulator.url, "capacity": 2}]
    settings.GENERATION = {**settings.GENERATION, "HEARTBEAT_SECONDS": 0.05}
    settings.LIVE = {**settings.LIVE, "PREVIEW_METHOD": method, "PREVIEW_INTERVAL": 0}
    simulator.configure(step_time=0.05)
    kept = []
    real_store = previews.store
    monkeypatch.setattr(previews, "store", lambda *args: kept.append(args) or real_store(*args))
    request = _queued(user, valid_params)
    before = simulator.stats()["previews_sent"]
    job = _job(claim_next())
    run_job(job)
    history = requests.get(f"{simulator.url}/history/{job.prompt_id}", timeout=5).json()
    extra_data = history[job.prompt_id]["prompt"][3]
    request.refresh_from_db()
    assert request.status == Status.COMPLETED
    sent = simulator.stats()["previews_sent"] - before
    if method == "none":
        assert "preview_method" not in extra_data and sent == 0 and not kept
        return
    assert extra_data["preview_method"] == "latent2rgb"
    assert sent == valid_params["sampler_params"]["steps"] and len(kept) == sent
    assert all(Image.open(io.BytesIO(data)).format == "JPEG" for _, _, _, data in kept)
    progress = [m for m in announced if m["k"] == "progress"]
    assert progress and all(m["u"] == user.pk and m["r"] == str(request.pk) for m in progress)


@pytest.mark.django_db
def test_a_finished_requests_preview_is_discarded(user, make_generation, django_capture_on_commit_callbacks):
    from generation import lifecycle

    request = make_generation(user, Status.RUNNING)
    previews.store(request.pk, user.pk, "image/jpeg", b"\xff\xd8")
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.transition(request.pk, Status.COMPLETED, expect={Status.RUNNING})
    assert previews.latest(request.pk) is None
