"""Fault injection and the simulator's control API (by option, by environment, at run time)."""

import io
import json
import os
import subprocess
import sys
import time
import uuid

import pytest
import requests
import websocket
from PIL import Image

from generation.comfyui import events as ev
from generation.comfyui.errors import BackendUnavailable, PromptUnknown
from tests.generation.comfyui.conftest import recorded
from tests.generation.comfyui.test_client import run, txt2img
from tests.plugins.simulator import ROOT

pytestmark = pytest.mark.integration


def test_execution_error_rate_fails_runs_in_the_sampler(simulator):
    simulator.set_faults(execution_error_rate=1.0)
    prompt_id, seen, _ = run(simulator.client(), txt2img(steps=5))
    last = seen[-1]
    assert isinstance(last, ev.ExecutionError)
    assert (last.node_id, last.node_type, last.exception_type) == ("3", "KSampler", "RuntimeError")
    simulator.set_faults(execution_error_rate=0.0)
    _, seen, _ = run(simulator.client(), txt2img(steps=5, prefix="ok"))
    assert isinstance(seen[-1], ev.ExecutionSuccess)


def test_options_apply_from_the_start(simulator_factory):
    simulator = simulator_factory(faults={"execution_error_rate": 1.0}, seed=3, checkpoints=["only.safetensors"])
    assert simulator.stats()["faults"]["execution_error_rate"] == 1.0
    assert simulator.client().models("checkpoints") == ["only.safetensors"]
    simulator.reset()  # back to the options it started with, not to the defaults
    assert simulator.stats()["faults"]["execution_error_rate"] == 1.0
    _, seen, _ = run(simulator.client(), txt2img(checkpoint="only.safetensors"))
    assert isinstance(seen[-1], ev.ExecutionError)


def test_unknown_faults_are_refused(simulator):
    response = requests.post(f"{simulator.url}/_simulator/faults", json={"explode": True}, timeout=5)
    assert response.status_code == 400 and "explode" in response.json()["error"]


def test_view_delay_and_failures(simulator):
    client = simulator.client(retries=0)
    prompt_id, _, _ = run(client, txt2img())
    (image,) = client.history(prompt_id)["outputs"]["9"]["images"]
    simulator.set_faults(view_delay=0.2)
    started = time.monotonic()
    with client.view(**image) as stream:
        assert b"".join(stream).startswith(b"\x89PNG")
    assert time.monotonic() - started >= 0.2
    simulator.set_faults(view_delay=0.0, view_fail_rate=1.0)
    with pytest.raises(BackendUnavailable), client.view(**image) as stream:
        b"".join(stream)


def test_refused_connections_then_back_with_state_kept(simulator):
    client = simulator.client(retries=0, timeout=1)
    prompt_id, _, _ = run(client, txt2img())
    simulator.set_faults(refuse_connections=0.6)
    time.sleep(0.1)
    with pytest.raises(BackendUnavailable):
        client.queue()
    fresh = simulator.client(retries=0, timeout=1)
    with pytest.raises(BackendUnavailable, match="ConnectionError"):
        fresh.system_stats()
    deadline = time.monotonic() + 5
    while True:
        try:
            entry = fresh.history(prompt_id)
            break
        except BackendUnavailable:
            assert time.monotonic() < deadline, "simulator did not listen again"
            time.sleep(0.05)
    assert entry["status"]["status_str"] == "success"  # an outage is not a restart
    assert simulator.stats()["faults"]["refuse_connections"] == 0.0


def test_restart_forgets_queue_and_history_but_keeps_statistics(simulator):
    client = simulator.client()
    done, _, _ = run(client, txt2img())
    (image,) = client.history(done)["outputs"]["9"]["images"]
    simulator.configure(step_time=0.05)
    queued = str(uuid.uuid4())
    client.submit(txt2img(steps=50), prompt_id=str(uuid.uuid4()), client_id="c")
    client.submit(txt2img(steps=1), prompt_id=queued, client_id="c")
    simulator.restart()
    assert client.locate(done).state == "unknown" and client.locate(queued).state == "unknown"
    stats = simulator.stats()
    assert stats["restarts"] == 1 and stats["executions"][done] == 1 and stats["submissions"][queued] == 1
    assert stats["loaded_checkpoint"] is None  # a new process has nothing loaded
    with client.view(**image) as stream:  # output files survive a restart, like files on disk
        assert b"".join(stream).startswith(b"\x89PNG")
    with client.event_stream("c") as events, pytest.raises(PromptUnknown):
        list(events.follow(queued, idle_interval=0.05))


def test_dropping_websockets_at_random_never_hides_completion(simulator):
    simulator.set_faults(ws_drop_rate=0.3)
    for index in range(3):
        _, seen, _ = run(simulator.client(), txt2img(steps=10, prefix=f"r{index}"), idle_interval=0.05)
        assert isinstance(seen[-1], ev.ExecutionSuccess)


def test_checkpoint_load_time_is_paid_only_when_switching(simulator):
    simulator.configure(load_time=0.3, step_time=0.001)
    client = simulator.client()

    def timed(checkpoint, prefix):
        started = time.monotonic()
        _, seen, _ = run(client, txt2img(checkpoint=checkpoint, prefix=prefix, steps=2), idle_interval=0.05)
        assert isinstance(seen[-1], ev.ExecutionSuccess)
        return time.monotonic() - started, simulator.stats()["checkpoint_loads"]

    # a load is counted and its time paid on the first use and on every switch, never on a repeat
    elapsed, loads = timed("tiny-sd15-random.safetensors", "a")
    assert elapsed >= 0.3 and loads == 1
    _, loads = timed("tiny-sd15-random.safetensors", "b")
    assert loads == 1
    elapsed, loads = timed("dreamshaper-8.safetensors", "c")
    assert elapsed >= 0.3 and loads == 2
    stats = simulator.stats()
    assert stats["checkpoint_loads"] == 2 and stats["loaded_checkpoint"] == "dreamshaper-8.safetensors"


def test_models_are_configurable(simulator):
    simulator.configure(checkpoints=["only.safetensors"], loras=["x/y.safetensors"])
    client = simulator.client()
    assert client.models("checkpoints") == ["only.safetensors"]
    assert client.object_info(refresh=True).loras == ("x/y.safetensors",)
    simulator.configure(checkpoints=["a.safetensors", "b.safetensors"])
    assert client.models("checkpoints") == ["a.safetensors", "b.safetensors"]


def test_prompts_run_one_at_a_time_in_number_order(simulator):
    simulator.configure(step_time=0.01)
    client = simulator.client()
    first = str(uuid.uuid4())
    client.submit(txt2img(steps=20), prompt_id=first, client_id="c")
    later = [str(uuid.uuid4()) for _ in range(3)]
    for prompt_id in later:
        client.submit(txt2img(steps=1), prompt_id=prompt_id, client_id="c")
    stats = simulator.wait_for(lambda s: s["running"] is None and not s["pending"], timeout=10)
    assert all(stats["executions"][p] == 1 for p in [first, *later])
    assert list(client.history_page()) == [first, *later]
    starts = [client.history(p)["status"]["messages"][0][1]["timestamp"] for p in [first, *later]]
    assert starts == sorted(starts)


def test_environment_configures_faults_and_timings():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "genonaut.test_settings",
           "SIMULATOR_FAULTS": '{"view_fail_rate": 0.5}', "SIMULATOR_STEP_TIME": "0.123"}
    code = ("import django; django.setup(); from django.conf import settings; "
            "print(settings.SIMULATOR_FAULTS['view_fail_rate'], settings.SIMULATOR_STEP_TIME)")
    output = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=30, check=True).stdout
    assert output.split() == ["0.5", "0.123"]



def frames_until(socket, predicate, *, timeout=5.0):
    """Text frames received until ``predicate(frame)`` (included); fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    frames = []
    socket.settimeout(timeout)
    while time.monotonic() < deadline:
        frame = json.loads(socket.recv())
        frames.append(frame)
        if predicate(frame):
            return frames
    raise AssertionError(f"condition not met within {timeout}s: {[f['type'] for f in frames]}")


def open_socket(simulator, client_id):
    socket = websocket.create_connection(simulator.url.replace("http://", "ws://") + f"/ws?clientId={client_id}",
                                         timeout=5)
    socket.recv()  # the first status frame
    return socket


def test_a_stalled_prompt_keeps_running_silently_until_interrupted(simulator):
    simulator.configure(step_time=0.01)
    simulator.set_faults(stall_rate=1.0, stall_at_step=2)
    client, client_id, prompt_id = simulator.client(), str(uuid.uuid4()), str(uuid.uuid4())
    socket = open_socket(simulator, client_id)
    client.submit(txt2img(steps=10), prompt_id=prompt_id, client_id=client_id)
    frames_until(socket, lambda f: f["type"] == "progress" and f["data"]["value"] == 2)
    simulator.wait_for(lambda s: s["stalled"] == prompt_id)
    socket.settimeout(0.5)
    with pytest.raises(websocket.WebSocketTimeoutException):
        socket.recv()  # nothing at all while it hangs
    assert client.queue().running == [prompt_id] and client.locate(prompt_id).state == "running"
    requests.post(f"{simulator.url}/interrupt", json={"prompt_id": prompt_id}, timeout=5)
    frames = frames_until(socket, lambda f: f["type"] == "executing" and f["data"]["node"] is None)
    assert [f["type"] for f in frames] == [f["type"] for f in recorded("ws-interrupted.jsonl")[-3:]]
    assert frames[0]["data"]["node_id"] == "3" and frames[0]["data"]["node_type"] == "KSampler"
    entry = client.history(prompt_id)
    assert entry["status"]["status_str"] == "error" and entry["status"]["messages"][-1][0] == "execution_interrupted"
    assert simulator.stats()["stalled"] is None
    socket.close()


def test_clearing_the_stall_fault_lets_the_prompt_finish(simulator):
    simulator.configure(step_time=0.01)
    simulator.set_faults(stall_rate=1.0, stall_at_step=3)
    client, client_id, prompt_id = simulator.client(), str(uuid.uuid4()), str(uuid.uuid4())
    socket = open_socket(simulator, client_id)
    client.submit(txt2img(steps=6), prompt_id=prompt_id, client_id=client_id)
    simulator.wait_for(lambda s: s["stalled"] == prompt_id)
    simulator.set_faults(stall_rate=0.0)
    frames = frames_until(socket, lambda f: f["type"] == "executing" and f["data"]["node"] is None)
    assert [f["data"]["value"] for f in frames if f["type"] == "progress"][-3:] == [4, 5, 6]
    assert "execution_success" in [f["type"] for f in frames]
    socket.close()


def test_a_graph_without_sampler_stalls_before_its_first_node(simulator):
    simulator.set_faults(stall_rate=1.0)
    client = simulator.client()
    graph = recorded("prompt-accepted.json")["request"]["json"]["prompt"]
    prompt_id = str(uuid.uuid4())
    client.submit(graph, prompt_id=prompt_id, client_id="c")
    simulator.wait_for(lambda s: s["stalled"] == prompt_id)
    client.interrupt()
    simulator.wait_for(lambda s: s["running"] is None)
    assert client.history(prompt_id)["status"]["messages"][-1][0] == "execution_interrupted"


def test_a_restart_keeps_uploaded_inputs_but_forgets_queue_and_history(simulator):
    client = simulator.client()
    buffer = io.BytesIO()
    Image.new("RGB", (40, 32), (9, 9, 9)).save(buffer, format="PNG")
    client.upload_image(buffer.getvalue(), name="kept.png", subfolder="genonaut")
    graph = recorded("prompt-accepted-img2img.json")["request"]["json"]["prompt"]
    graph["11"]["inputs"]["image"] = "genonaut/kept.png"
    done, _, _ = run(client, graph)
    simulator.restart()
    assert client.locate(done).state == "unknown"
    prompt_id, seen, _ = run(client, graph)  # validates and loads the file kept on "disk"
    assert isinstance(seen[-1], ev.ExecutionSuccess) and "genonaut/kept.png" in simulator.input_files()
    simulator.reset()
    assert simulator.input_files() == ["example.png"]


def test_an_upload_that_is_not_an_image_fails_in_loadimage_at_run_time(simulator):
    client = simulator.client()
    client.upload_image(b"17 bytes of text.", name="not-an-image.png")
    graph = recorded("prompt-accepted-img2img.json")["request"]["json"]["prompt"]
    graph["11"]["inputs"]["image"] = "not-an-image.png"
    _, seen, _ = run(client, graph)  # ComfyUI accepts it at upload and validation, fails when loading
    last = seen[-1]
    assert isinstance(last, ev.ExecutionError)
    assert (last.node_id, last.node_type, last.exception_type) == ("11", "LoadImage", "PIL.UnidentifiedImageError")


@pytest.mark.parametrize("faults, message", [({"stall_rate": "often"}, "stall_rate must be a number"),
                                             ({"drop_websockets": 1}, "drop_websockets must be true or false"),
                                             ({"upload_failures": 1.5}, "upload_failures must be a whole number"),
                                             ({"view_delay": -1}, "view_delay must be a number >= 0")])
def test_faults_of_the_wrong_type_are_refused(simulator, faults, message):
    response = requests.post(f"{simulator.url}/_simulator/faults", json=faults, timeout=5)
    assert response.status_code == 400 and message in response.json()["error"]
