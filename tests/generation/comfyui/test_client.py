"""ComfyUIClient against the simulator running as a real server on a free loopback port."""

import io
import socket
import time
import uuid

import pytest
from PIL import Image

from generation.comfyui import events as ev
from generation.comfyui.client import ComfyUIClient, clear_object_info_cache
from generation.comfyui.errors import (
    BackendUnavailable,
    ComfyUIError,
    ExecutionFailed,
    ExecutionInterrupted,
    OutputMissing,
    PromptUnknown,
    WorkflowRejected,
)
from generation.workflows import get_workflow
from tests.generation.comfyui.conftest import recorded

pytestmark = pytest.mark.integration


def txt2img(*, steps=3, checkpoint="tiny-sd15-random.safetensors", prefix="t/req", seed=7, batch_size=1, **kw):
    params = {"prompt": kw.get("prompt", "a lighthouse"), "negative_prompt": "", "checkpoint_model": checkpoint,
              "lora_models": kw.get("loras", []), "width": 64, "height": 64, "batch_size": batch_size,
              "sampler_params": {"seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler",
                                 "scheduler": "normal", "denoise": 1.0}}
    return get_workflow("txt2img").build(params, files={}, filename_prefix=prefix)


def ids():
    return str(uuid.uuid4()), str(uuid.uuid4())


def run(client, workflow, *, idle_interval=0.2, on_event=None):
    prompt_id, client_id = ids()
    seen = []
    with client.event_stream(client_id) as events:
        client.submit(workflow, prompt_id=prompt_id, client_id=client_id)
        for event in events.follow(prompt_id, idle_interval=idle_interval):
            seen.append(event)
            if on_event:
                on_event(event, prompt_id, events)
    return prompt_id, seen, events


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_success_follows_every_step_and_outputs_are_streamed(simulator):
    client = simulator.client()
    prompt_id, seen, _ = run(client, txt2img(steps=4, batch_size=2,
                                              loras=[{"name": "tiny-lora.safetensors", "strength_model": 0.8,
                                                      "strength_clip": 0.8}]))
    assert isinstance(seen[-1], ev.ExecutionSuccess)
    assert [e.value for e in seen if isinstance(e, ev.Progress)] == [1, 2, 3, 4]
    assert [e.node for e in seen if isinstance(e, ev.Executing)][-1] == "9"
    executed = [e for e in seen if isinstance(e, ev.Executed)]
    assert executed[0].node == "9" and len(executed[0].output["images"]) == 2
    assert client.locate(prompt_id).state == "finished"
    entry = client.history(prompt_id)
    images = entry["outputs"]["9"]["images"]
    assert [i["filename"] for i in images] == ["req_00001_.png", "req_00002_.png"]
    assert {i["subfolder"] for i in images} == {"t"}
    chunks = []
    with client.view(**images[0]) as stream:
        chunks.extend(stream)
    image = Image.open(io.BytesIO(b"".join(chunks)))
    assert image.size == (64, 64)
    assert '"class_type": "KSampler"' in image.text["prompt"]


def test_images_differ_per_seed_and_repeat_per_seed(simulator):
    client = simulator.client()

    def image_bytes(seed, prefix):
        prompt_id, _, _ = run(client, txt2img(seed=seed, prefix=prefix))
        (image,) = client.history(prompt_id)["outputs"]["9"]["images"]
        with client.view(**image) as stream:
            return Image.open(io.BytesIO(b"".join(stream))).convert("RGB").tobytes()

    assert image_bytes(1, "a") != image_bytes(2, "b")
    assert image_bytes(3, "c") == image_bytes(3, "d")


def test_rejected_workflow_raises_with_comfyui_body(simulator):
    client = simulator.client()
    with pytest.raises(WorkflowRejected) as caught:
        client.submit(txt2img(checkpoint="no-such.safetensors"), prompt_id=str(uuid.uuid4()), client_id="c")
    rejected = caught.value
    assert isinstance(rejected, ComfyUIError) and rejected.backend == simulator.url
    assert rejected.error["type"] == "prompt_outputs_failed_validation"
    assert rejected.node_errors["4"]["errors"][0]["type"] == "value_not_in_list"
    assert "CheckpointLoaderSimple (node 4) input 'ckpt_name'" in rejected.message
    assert simulator.stats()["rejected"] == 1  # a 400 is never retried


def test_partial_acceptance_is_a_rejection_and_is_taken_off_the_queue(simulator):
    client = simulator.client()
    graph = recorded("prompt-partial-one-output-invalid-200.json")["request"]["json"]["prompt"]
    simulator.configure(step_time=0.05)
    blocker, _ = ids()
    client.submit(txt2img(steps=40), prompt_id=blocker, client_id="c")
    prompt_id = str(uuid.uuid4())
    with pytest.raises(WorkflowRejected) as caught:
        client.submit(graph, prompt_id=prompt_id, client_id="c")
    assert caught.value.node_errors["2"]["errors"][0]["type"] == "value_not_in_list"
    assert "ImageScale (node 2) input 'upscale_method'" in caught.value.message
    assert prompt_id not in client.queue()
    client.interrupt()


def test_execution_error_is_typed(simulator):
    client = simulator.client()
    prompt_id, seen, _ = run(client, txt2img(checkpoint="fake.safetensors"))
    last = seen[-1]
    assert isinstance(last, ev.ExecutionError)
    error = last.to_error(backend=simulator.url)
    assert isinstance(error, ExecutionFailed)
    assert (error.node_id, error.node_type) == ("4", "CheckpointLoaderSimple")
    assert error.exception_type == "safetensors._safetensors_rust.SafetensorError"
    assert "header too large" in error.exception_message and error.traceback
    outcome = ev.outcome_from_history(prompt_id, client.history(prompt_id))
    assert outcome == ev.ExecutionError(prompt_id=prompt_id, node_id="4", node_type="CheckpointLoaderSimple",
                                        exception_type=error.exception_type,
                                        exception_message=last.exception_message, traceback=last.traceback)


def test_per_prompt_interrupt_stops_only_the_running_prompt(simulator):
    client = simulator.client()
    simulator.configure(step_time=0.02)
    waiting, _ = ids()

    def interrupt_after_first_step(event, prompt_id, events):
        if isinstance(event, ev.Progress) and event.value == 1:
            client.interrupt(prompt_id=waiting)  # not running: ignored, like ComfyUI
            client.submit(txt2img(steps=2, prefix="w"), prompt_id=waiting, client_id="other")
            client.interrupt(prompt_id=prompt_id)

    prompt_id, seen, _ = run(client, txt2img(steps=200), on_event=interrupt_after_first_step)
    last = seen[-1]
    assert isinstance(last, ev.ExecutionInterruptedEvent) and last.node_id == "3"
    assert isinstance(last.to_error(), ExecutionInterrupted)
    assert max(e.value for e in seen if isinstance(e, ev.Progress)) < 200
    history = client.history(prompt_id)
    assert history["status"]["status_str"] == "error" and history["status"]["messages"][-1][0] == \
        "execution_interrupted"
    simulator.wait_for(lambda s: s["executions"].get(waiting) == 1 and not s["running"])
    assert client.history(waiting)["status"]["status_str"] == "success"


def test_queue_delete_removes_a_pending_prompt(simulator):
    client = simulator.client()
    simulator.configure(step_time=0.02)
    running, pending = str(uuid.uuid4()), str(uuid.uuid4())
    client.submit(txt2img(steps=100), prompt_id=running, client_id="c")
    client.submit(txt2img(steps=1), prompt_id=pending, client_id="c")
    simulator.wait_for(lambda s: s["running"] == running)
    assert client.locate(pending).state == "pending" and client.locate(running).state == "running"
    client.delete_from_queue([pending, running])  # the running one is untouched
    assert client.queue().pending == [] and client.queue().running == [running]
    assert client.locate(pending).state == "unknown"
    client.interrupt()
    simulator.wait_for(lambda s: s["running"] is None)
    assert simulator.executions(pending) == 0 and client.history(pending) is None


def test_websocket_loss_mid_run_still_observes_completion(simulator):
    client = simulator.client()
    simulator.configure(step_time=0.01)
    dropped = []

    def drop_once(event, prompt_id, events):
        if isinstance(event, ev.Progress) and event.value == 2 and not dropped:
            dropped.append(simulator.drop_websockets())

    prompt_id, seen, events = run(client, txt2img(steps=30), idle_interval=0.05, on_event=drop_once)
    assert dropped == [1]
    assert isinstance(seen[-1], ev.ExecutionSuccess)
    assert events.reconnects >= 1
    assert simulator.executions(prompt_id) == 1


def test_completion_is_observed_by_polling_when_websockets_keep_failing(simulator):
    client = simulator.client()
    simulator.set_faults(drop_websockets=True)
    prompt_id, seen, _ = run(client, txt2img(steps=60), idle_interval=0.05)
    assert isinstance(seen[-1], ev.ExecutionSuccess)
    assert any(isinstance(e, ev.Idle) and not e.connected for e in seen)
    assert not any(isinstance(e, ev.Progress) for e in seen)


def test_prompt_lost_by_a_restart_raises_prompt_unknown(simulator):
    client = simulator.client()
    simulator.configure(step_time=0.02)

    def restart(event, prompt_id, events):
        if isinstance(event, ev.Progress) and event.value == 1:
            simulator.restart()

    with pytest.raises(PromptUnknown) as caught:
        run(client, txt2img(steps=100), idle_interval=0.05, on_event=restart)
    assert caught.value.backend == simulator.url


def test_unreachable_backend_raises_backend_unavailable_after_retries():
    client = ComfyUIClient(f"http://127.0.0.1:{free_port()}", timeout=1, retries=2, backoff=0.01)
    started = time.monotonic()
    for call in (client.queue, client.system_stats, client.object_info, lambda: client.history("x"),
                 lambda: client.submit({}, prompt_id="p", client_id="c")):
        with pytest.raises(BackendUnavailable):
            call()
    assert time.monotonic() - started < 5
    with client.event_stream("c", unavailable_grace=0) as events:
        assert not events.connected
        with pytest.raises(BackendUnavailable):
            next(events.follow("p", idle_interval=0.01))
    with client.event_stream("c", unavailable_grace=0.3) as events:
        started = time.monotonic()
        seen = []
        with pytest.raises(BackendUnavailable):
            seen.extend(events.follow("p", idle_interval=0.02))
        assert time.monotonic() - started >= 0.3
        assert seen and all(isinstance(e, ev.Idle) and not e.connected for e in seen)


def test_a_short_outage_mid_run_does_not_abandon_the_prompt(simulator):
    client = simulator.client(retries=0, timeout=1)
    simulator.configure(step_time=0.02)
    outage = []

    def refuse_once(event, prompt_id, events):
        if isinstance(event, ev.Progress) and event.value == 1 and not outage:
            outage.append(simulator.set_faults(refuse_connections=0.5))

    prompt_id, seen, events = run(client, txt2img(steps=60), idle_interval=0.05, on_event=refuse_once)
    assert isinstance(seen[-1], ev.ExecutionSuccess)
    assert any(isinstance(e, ev.Idle) and not e.connected for e in seen)
    assert simulator.executions(prompt_id) == 1


def test_server_errors_are_retried_then_raised(simulator):
    client = simulator.client(retries=2)
    prompt_id, _, _ = run(client, txt2img())
    (image,) = client.history(prompt_id)["outputs"]["9"]["images"]
    simulator.set_faults(view_fail_rate=1.0)
    with pytest.raises(BackendUnavailable, match="HTTP 500"), client.view(**image) as stream:
        b"".join(stream)
    simulator.set_faults(view_fail_rate=0.0)
    with pytest.raises(OutputMissing), client.view("nope_00001_.png", "t", "output") as stream:
        b"".join(stream)


def test_catalogue_calls(simulator, settings):
    client = simulator.client()
    clear_object_info_cache()
    settings.COMFYUI_OBJECT_INFO_TTL = 0
    expired = client.object_info()
    assert client.object_info() is not expired
    settings.COMFYUI_OBJECT_INFO_TTL = 60
    info = client.object_info()
    assert "sdxl-base-1.0.safetensors" in info.checkpoints and "styles/watercolor.safetensors" in info.loras
    assert client.object_info() is info  # cached per backend
    assert simulator.client().object_info() is info
    assert client.models("checkpoints") == sorted(info.checkpoints)
    assert client.models("nosuchfolder") == []
    assert client.system_stats()["system"]["comfyui_version"] == "0.8.0"


def test_resubmitting_a_known_prompt_id_is_not_deduplicated_by_comfyui(simulator):
    client = simulator.client()
    prompt_id, client_id = ids()
    first = client.submit(txt2img(), prompt_id=prompt_id, client_id=client_id)
    second = client.submit(txt2img(), prompt_id=prompt_id, client_id=client_id)
    assert second["number"] == first["number"] + 1
    simulator.wait_for(lambda s: s["executions"].get(prompt_id) == 2 and s["running"] is None)
    assert simulator.submissions(prompt_id) == 2


def test_a_submit_that_times_out_after_arriving_is_not_sent_twice(simulator):
    simulator.set_faults(prompt_delay=0.5)
    client = simulator.client(timeout=0.2, retries=2, backoff=0.05)
    prompt_id = str(uuid.uuid4())
    accepted = client.submit(txt2img(), prompt_id=prompt_id, client_id="c")
    assert accepted == {"prompt_id": prompt_id, "number": None}  # found on the backend, not resubmitted
    assert simulator.submissions(prompt_id) == 1


def test_idle_ticks_keep_coming_while_another_prompt_of_the_same_client_streams_frames(simulator):
    client = simulator.client()
    simulator.configure(step_time=0.01)
    first, second, client_id = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    with client.event_stream(client_id) as events:
        client.submit(txt2img(steps=60, prefix="first"), prompt_id=first, client_id=client_id)
        client.submit(txt2img(steps=2, prefix="second"), prompt_id=second, client_id=client_id)
        seen = list(events.follow(second, idle_interval=0.1))
    assert isinstance(seen[-1], ev.ExecutionSuccess) and seen[-1].prompt_id == second
    assert sum(isinstance(e, ev.Idle) for e in seen) >= 3  # heartbeats while the first one ran
    assert all(e.prompt_id in (None, second) for e in seen)


# --- input files ---------------------------------------------------------------------------------------

def png_bytes(size=(40, 24), color=(10, 200, 30)):
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def viewed(client, reply):
    with client.view(reply["name"], reply["subfolder"], reply["type"]) as stream:
        return b"".join(stream)


def test_upload_image_from_bytes_and_from_file_objects(simulator, tmp_path):
    client = simulator.client()
    data = png_bytes()
    assert client.upload_image(data, name="a.png") == {"name": "a.png", "subfolder": "", "type": "input"}
    assert viewed(client, client.upload_image(data, name="a.png", subfolder="genonaut/ab")) == data
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 100 + png_bytes((600, 400)) * 20)  # any bytes: ComfyUI does not check content
    with path.open("rb") as handle:
        handle.seek(100)  # read from the current position
        reply = client.upload_image(handle, name="big.png", subfolder="genonaut")
    assert viewed(client, reply) == path.read_bytes()[100:]

    def chunks():  # a stream that cannot seek is sent chunked, once
        yield data[:10]
        yield data[10:]

    class Unseekable(io.RawIOBase):
        def __init__(self):
            self.parts = chunks()

        def readable(self):
            return True

        def readinto(self, buffer):
            chunk = next(self.parts, b"")
            buffer[:len(chunk)] = chunk
            return len(chunk)

    reply = client.upload_image(io.BufferedReader(Unseekable()), name="streamed.png")
    assert viewed(client, reply) == data
    assert simulator.input_files() == ["a.png", "example.png", "genonaut/ab/a.png", "genonaut/big.png",
                                                "streamed.png"]


def test_upload_without_overwrite_keeps_the_other_file_and_returns_the_new_name(simulator):
    client = simulator.client()
    client.upload_image(png_bytes(color=(1, 1, 1)), name="same.png")
    assert client.upload_image(png_bytes(color=(1, 1, 1)), name="same.png", overwrite=False)["name"] == "same.png"
    renamed = client.upload_image(png_bytes(color=(2, 2, 2)), name="same.png", overwrite=False)
    assert renamed["name"] == "same (1).png"
    assert client.upload_image(png_bytes(color=(3, 3, 3)), name="same.png", overwrite=True)["name"] == "same.png"


@pytest.mark.parametrize("name, subfolder", [("../escape.png", ""), ("x.png", "../../outside"), ("", "")])
def test_a_refused_upload_raises_upload_rejected_without_retrying(simulator, name, subfolder):
    from generation.comfyui.errors import UploadRejected

    client = simulator.client(retries=3)
    with pytest.raises(UploadRejected) as caught:
        client.upload_image(png_bytes(), name=name, subfolder=subfolder)
    assert (caught.value.status, caught.value.name, caught.value.subfolder) == (400, name, subfolder)
    assert isinstance(caught.value, ComfyUIError) and caught.value.backend == simulator.url
    assert simulator.stats()["uploads"] == 0


def test_server_errors_on_upload_are_retried_from_the_start_of_the_file(simulator):
    client = simulator.client(retries=2)
    data = png_bytes((300, 200))
    simulator.set_faults(upload_failures=2)
    source = io.BytesIO(b"head" + data)
    source.seek(4)
    reply = client.upload_image(source, name="retried.png")  # two 500s, then stored
    assert viewed(client, reply) == data and simulator.stats()["uploads"] == 1
    simulator.set_faults(upload_failures=3)
    with pytest.raises(BackendUnavailable, match="HTTP 500"):
        client.upload_image(data, name="given-up.png")
    assert "given-up.png" not in simulator.input_files()


def test_an_unreachable_backend_makes_upload_raise_backend_unavailable():
    client = ComfyUIClient(f"http://127.0.0.1:{free_port()}", timeout=1, retries=2, backoff=0.01)
    with pytest.raises(BackendUnavailable):
        client.upload_image(png_bytes(), name="a.png")
    with pytest.raises(BackendUnavailable):
        client.upload_image(io.BytesIO(png_bytes()), name="a.png")


def test_an_uploaded_input_runs_in_img2img_and_the_image_has_its_size(simulator):
    client = simulator.client()
    reply = client.upload_image(png_bytes((100, 60)), name="0123abcd.png", subfolder="genonaut")
    graph = recorded("prompt-accepted-img2img.json")["request"]["json"]["prompt"]
    graph["11"]["inputs"]["image"] = f"{reply['subfolder']}/{reply['name']}"
    prompt_id, seen, _ = run(client, graph)
    assert isinstance(seen[-1], ev.ExecutionSuccess)
    (image,) = client.history(prompt_id)["outputs"]["9"]["images"]
    with client.view(**image) as stream:
        assert Image.open(io.BytesIO(b"".join(stream))).size == (96, 56)  # VAEEncode crops to multiples of 8


# --- previews and catalogue freshness ------------------------------------------------------------------

@pytest.mark.parametrize("previews", [True, False])
def test_follow_yields_previews_of_the_followed_prompt_in_both_layouts(simulator, previews):
    client = simulator.client()
    prompt_id, client_id = ids()
    with client.event_stream(client_id, previews=previews) as events:
        client.submit(txt2img(steps=3), prompt_id=prompt_id, client_id=client_id,
                      extra_data={"preview_method": "latent2rgb"})
        seen = list(events.follow(prompt_id, idle_interval=0.2))
    previews_seen = [e for e in seen if isinstance(e, ev.Preview)]
    assert len(previews_seen) == 3 and all(p.prompt_id == prompt_id for p in previews_seen)
    assert {p.node for p in previews_seen} == ({"3"} if previews else {None})
    assert all(Image.open(io.BytesIO(p.data)).format == "JPEG" for p in previews_seen)
    assert (events.server_features or {}).get("supports_preview_metadata") is (True if previews else None)


def test_the_simulator_reports_when_it_sent_each_preview(simulator):
    client = simulator.client()
    prompt_id, client_id = ids()
    before = time.time()
    with client.event_stream(client_id, previews=True) as events:
        client.submit(txt2img(steps=3), prompt_id=prompt_id, client_id=client_id,
                      extra_data={"preview_method": "latent2rgb"})
        list(events.follow(prompt_id, idle_interval=0.2))
    recent = simulator.stats()["recent_previews"]
    assert [pid for pid, _ in recent] == [prompt_id] * 3
    sent = [at for _, at in recent]
    assert before <= sent[0] <= sent[1] <= sent[2] <= time.time()


def test_no_previews_unless_the_prompt_asks_for_them(simulator):
    client = simulator.client()
    prompt_id, client_id = ids()
    with client.event_stream(client_id, previews=True) as events:
        client.submit(txt2img(steps=3), prompt_id=prompt_id, client_id=client_id,
                      extra_data={"preview_method": "none"})
        seen = list(events.follow(prompt_id, idle_interval=0.2))
    assert not any(isinstance(e, ev.Preview) for e in seen) and simulator.stats()["previews_sent"] == 0


def test_previews_are_declared_again_after_a_reconnect(simulator):
    client = simulator.client()
    simulator.configure(step_time=0.02)
    dropped = []

    def drop_once(event, prompt_id, events):
        if isinstance(event, ev.Progress) and event.value == 2 and not dropped:
            dropped.append(simulator.drop_websockets())

    prompt_id, client_id = ids()
    with client.event_stream(client_id, previews=True) as events:
        client.submit(txt2img(steps=30), prompt_id=prompt_id, client_id=client_id,
                      extra_data={"preview_method": "latent2rgb"})
        seen = []
        for event in events.follow(prompt_id, idle_interval=0.05):
            seen.append(event)
            drop_once(event, prompt_id, events)
    assert dropped == [1] and events.reconnects >= 1
    assert events.server_features == {"supports_preview_metadata": True, "max_upload_size": 104857600,
                                      "extension": {"manager": {"supports_v4": True}}}
    after = [e for e in seen[seen.index(next(e for e in seen if isinstance(e, ev.Progress) and e.value == 2)):]
             if isinstance(e, ev.Preview)]
    # type-4 frames once the new socket declared it again; ComfyUI may send a frame or two in the
    # legacy layout before it has read the declaration (as the real server does), never after
    legacy = [p for p in after if p.node is None]
    assert after[-1].node == "3" and len(legacy) <= 2 and len(after) - len(legacy) >= 10


def test_object_info_says_when_it_was_fetched(simulator, settings):
    client = simulator.client()
    clear_object_info_cache()
    settings.COMFYUI_OBJECT_INFO_TTL = 60
    before = time.time()
    info = client.object_info()
    assert before <= info.fetched_at <= time.time()
    assert client.object_info() is info  # cached: same instance, same fetched_at
    fresh = client.object_info(refresh=True)
    assert fresh is not info and fresh.fetched_at >= info.fetched_at
    assert fresh.capabilities_digest == info.capabilities_digest  # nothing changed on the backend
    simulator.configure(upscale_models=["8x-new.pth"])
    assert client.object_info(refresh=True).capabilities_digest != info.capabilities_digest
    assert client.object_info().model_lists()["upscale_models"] == ["8x-new.pth"]
