"""The simulator answers like the recorded ComfyUI 0.8.0: status codes, body shapes, frame sequences."""

import copy
import io
import json
import struct
import time
import uuid

import pytest
import requests
import websocket
from PIL import Image

from generation.comfyui.object_info import RECORDED_OBJECT_INFO
from tests.generation.comfyui.conftest import PROTOCOL, recorded

pytestmark = pytest.mark.integration

EMPTY_IMAGE_GRAPH = recorded("prompt-accepted.json")["request"]["json"]["prompt"]
TXT2IMG_LORA_GRAPH = recorded("prompt-accepted-txt2img-lora.json")["request"]["json"]["prompt"]
ERROR_GRAPH = recorded("prompt-accepted-execution-error.json")["request"]["json"]["prompt"]


def shape(value):
    """Structure without values: keys, element shapes, JSON types (int and float are both numbers)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def frame_types(frames):
    return [frame["type"] for frame in frames]


class Socket:
    """A raw websocket client recording every frame, like the recorder did."""

    def __init__(self, url, client_id=None):
        query = f"?clientId={client_id}" if client_id else ""
        self.ws = websocket.create_connection(url.replace("http://", "ws://") + "/ws" + query, timeout=5)
        self.frames = [json.loads(self.ws.recv())]

    def until_done(self, prompt_id, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frame = json.loads(self.ws.recv())
            self.frames.append(frame)
            if frame["type"] == "executing" and frame["data"]["node"] is None \
                    and frame["data"].get("prompt_id") == prompt_id:
                return self.frames
        raise AssertionError(f"no end frame for {prompt_id}: {frame_types(self.frames)}")

    def close(self):
        self.ws.close()


def post_prompt(simulator, graph, client_id="conformance", **extra):
    return requests.post(f"{simulator.url}/prompt", json={"prompt": graph, "client_id": client_id, **extra},
                         timeout=5)


def run_recorded(simulator, graph):
    client_id = str(uuid.uuid4())
    socket = Socket(simulator.url, client_id)
    response = post_prompt(simulator, graph, client_id)
    assert response.status_code == 200, response.text
    frames = socket.until_done(response.json()["prompt_id"])
    socket.close()
    return response.json()["prompt_id"], frames


@pytest.mark.parametrize("name", sorted(p.name for p in PROTOCOL.glob("prompt-error-400-*.json")))
def test_rejections_have_the_recorded_status_and_shape(simulator, name):
    sample = recorded(name)
    response = requests.post(f"{simulator.url}/prompt", json=sample["request"]["json"], timeout=5)
    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("application/json")
    expected = sample["response"]["body"]
    body = response.json()
    assert body["error"]["type"] == expected["error"]["type"]
    assert shape(body["error"]) == shape(expected["error"])
    assert sorted(body["node_errors"]) == sorted(expected["node_errors"])
    for node_id, entry in expected["node_errors"].items():
        assert [e["type"] for e in body["node_errors"][node_id]["errors"]] == [e["type"] for e in entry["errors"]]
        assert shape(body["node_errors"][node_id]) == shape(entry)


def test_body_that_is_not_json_is_a_plain_500(simulator):
    sample = recorded("prompt-error-500-invalid-json.json")
    response = requests.post(f"{simulator.url}/prompt", data=sample["request"]["raw_body"],
                             headers={"Content-Type": "application/json"}, timeout=5)
    assert response.status_code == 500
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.text == sample["response"]["body"]


@pytest.mark.parametrize("name", sorted(p.name for p in PROTOCOL.glob("prompt-partial-*-200.json")))
def test_partial_acceptance_is_200_with_node_errors(simulator, name):
    sample = recorded(name)
    response = requests.post(f"{simulator.url}/prompt", json=sample["request"]["json"], timeout=5)
    assert response.status_code == 200
    assert shape(response.json()) == shape(sample["response"]["body"])


def test_success_frames_follow_the_recorded_sequence(simulator):
    prompt_id, frames = run_recorded(simulator, EMPTY_IMAGE_GRAPH)
    expected = recorded("ws-success.jsonl")
    assert frame_types(frames) == frame_types(expected)
    assert [f["data"].get("node") for f in frames] == [f["data"].get("node") for f in expected]
    assert frames[0]["data"]["sid"] and frames[0]["data"]["status"]["exec_info"]["queue_remaining"] == 0
    for got, want in zip(frames[3:], expected[3:], strict=True):
        assert shape(got) == shape(want), (got, want)
    history = requests.get(f"{simulator.url}/history/{prompt_id}", timeout=5).json()
    assert shape(history[prompt_id]) == shape(recorded("history-success.json")[list(recorded(
        "history-success.json"))[0]])
    saved = history[prompt_id]["outputs"]["3"]["images"][0]
    assert saved["subfolder"] == "proto" and saved["filename"] == "empty_00001_.png"
    assert history[prompt_id]["outputs"]["4"]["images"][0]["type"] == "temp"


def test_cached_rerun_follows_the_recorded_sequence(simulator):
    first_id, _ = run_recorded(simulator, EMPTY_IMAGE_GRAPH)
    prompt_id, frames = run_recorded(simulator, EMPTY_IMAGE_GRAPH)
    expected = recorded("ws-success-cached.jsonl")
    assert frame_types(frames[1:]) == frame_types(expected)
    cached = next(f for f in frames if f["type"] == "execution_cached")["data"]["nodes"]
    assert sorted(cached) == ["1", "2", "3", "4"]
    history = requests.get(f"{simulator.url}/history", timeout=5).json()
    assert history[prompt_id]["outputs"] == history[first_id]["outputs"]


def test_txt2img_frames_follow_the_recorded_sequence_then_warm_run_caches_loaders(simulator):
    _, frames = run_recorded(simulator, TXT2IMG_LORA_GRAPH)
    expected = recorded("ws-txt2img-lora.jsonl")
    assert frame_types(frames) == frame_types(expected)
    executing = [f["data"]["node"] for f in frames if f["type"] == "executing"]
    assert executing == [f["data"]["node"] for f in expected if f["type"] == "executing"]
    progress = [f["data"] for f in frames if f["type"] == "progress"]
    assert progress == [{"value": 1, "max": 2, "prompt_id": progress[0]["prompt_id"], "node": "3"},
                        {"value": 2, "max": 2, "prompt_id": progress[0]["prompt_id"], "node": "3"}]
    warm = copy.deepcopy(TXT2IMG_LORA_GRAPH)
    warm["3"]["inputs"]["seed"] = 43
    _, frames = run_recorded(simulator, warm)
    cached = next(f for f in frames if f["type"] == "execution_cached")["data"]["nodes"]
    assert cached == ["4", "6", "7", "5", "10"]  # in prompt order, like ComfyUI
    assert frame_types(frames[1:]) == frame_types(recorded("ws-txt2img-lora-warm.jsonl"))


def test_execution_error_frames_and_history(simulator):
    prompt_id, frames = run_recorded(simulator, ERROR_GRAPH)
    expected = recorded("ws-execution-error.jsonl")
    assert frame_types(frames) == frame_types(expected)
    error = next(f for f in frames if f["type"] == "execution_error")
    assert shape(error) == shape(next(f for f in expected if f["type"] == "execution_error"))
    entry = requests.get(f"{simulator.url}/history/{prompt_id}", timeout=5).json()[prompt_id]
    recorded_entry = list(recorded("history-execution-error.json").values())[0]
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["outputs"] == {} and [m[0] for m in entry["status"]["messages"]] == \
        [m[0] for m in recorded_entry["status"]["messages"]]


def test_interrupt_frames_queue_and_history(simulator):
    simulator.configure(step_time=0.02)
    slow = copy.deepcopy(TXT2IMG_LORA_GRAPH)
    slow["3"]["inputs"]["steps"] = 60
    client_id = str(uuid.uuid4())
    socket = Socket(simulator.url, client_id)
    running = post_prompt(simulator, slow, client_id).json()["prompt_id"]
    waiting = [post_prompt(simulator, EMPTY_IMAGE_GRAPH).json() for _ in range(2)]
    front = post_prompt(simulator, EMPTY_IMAGE_GRAPH, front=True).json()
    assert front["number"] < 0
    queue = requests.get(f"{simulator.url}/queue", timeout=5).json()
    assert shape(queue) == shape(recorded("queue-running-and-pending.json"))
    assert queue["queue_running"][0][1] == running and len(queue["queue_pending"]) == 3
    assert requests.get(f"{simulator.url}/history/{waiting[0]['prompt_id']}", timeout=5).json() == {}
    assert requests.get(f"{simulator.url}/history/{running}", timeout=5).json() == {}
    delete = requests.post(f"{simulator.url}/queue", json={"delete": [waiting[0]["prompt_id"]]}, timeout=5)
    assert (delete.status_code, delete.content) == (200, b"")
    ignored = requests.post(f"{simulator.url}/interrupt", json={"prompt_id": waiting[1]["prompt_id"]}, timeout=5)
    assert (ignored.status_code, ignored.content) == (200, b"")
    assert simulator.stats()["running"] == running
    requests.post(f"{simulator.url}/interrupt", json={"prompt_id": running}, timeout=5)
    frames = socket.until_done(running)
    assert frame_types(frames)[-3:] == ["execution_interrupted", "status", "executing"]
    entry = requests.get(f"{simulator.url}/history/{running}", timeout=5).json()[running]
    assert shape(entry["status"]) == shape(list(recorded("history-interrupted.json").values())[0]["status"])
    # the front prompt runs before the ones sent earlier
    simulator.wait_for(lambda s: s["running"] is None and not s["pending"])
    order = list(requests.get(f"{simulator.url}/history", timeout=5).json())
    assert order.index(front["prompt_id"]) < order.index(waiting[1]["prompt_id"])
    assert waiting[0]["prompt_id"] not in order
    clear = requests.post(f"{simulator.url}/queue", json={"clear": True}, timeout=5)
    assert (clear.status_code, clear.content) == (200, b"")
    socket.close()


def test_client_prompt_id_is_honoured_and_not_deduplicated(simulator):
    sample = recorded("prompt-accepted-client-prompt_id.json")
    socket = Socket(simulator.url)
    sid = socket.frames[0]["data"]["sid"]
    assert len(sid) == 32 and int(sid, 16) >= 0  # made-up hex sid, like ComfyUI without clientId
    first = requests.post(f"{simulator.url}/prompt", json=sample["first_post"]["request"]["json"], timeout=5).json()
    second = requests.post(f"{simulator.url}/prompt", json=sample["second_post_same_prompt_id"]["request"]["json"],
                           timeout=5).json()
    prompt_id = "11111111-2222-3333-4444-555555555555"
    assert first["prompt_id"] == second["prompt_id"] == prompt_id
    assert second["number"] == first["number"] + 1
    simulator.wait_for(lambda s: s["executions"].get(prompt_id) == 2 and s["running"] is None)
    history = requests.get(f"{simulator.url}/history", timeout=5).json()
    assert list(history).count(prompt_id) == 1 and history[prompt_id]["prompt"][0] == second["number"]
    socket.close()


def test_other_clients_only_get_status_frames(simulator):
    other = Socket(simulator.url, "someone-else")
    run_recorded(simulator, EMPTY_IMAGE_GRAPH)
    other.ws.settimeout(0.2)
    with pytest.raises(websocket.WebSocketTimeoutException):
        while True:
            other.frames.append(json.loads(other.ws.recv()))
    assert set(frame_types(other.frames)) == {"status"}
    other.close()


def test_history_paging_and_deletion(simulator):
    ids = [run_recorded(simulator, {**EMPTY_IMAGE_GRAPH, "3": {**EMPTY_IMAGE_GRAPH["3"],
                                                               "inputs": {**EMPTY_IMAGE_GRAPH["3"]["inputs"],
                                                                          "filename_prefix": f"p{i}"}}})[0]
           for i in range(3)]
    get = lambda query: list(requests.get(f"{simulator.url}/history{query}", timeout=5).json())  # noqa: E731
    assert get("") == ids
    assert get("?max_items=2") == ids[1:]  # the newest two
    assert get("?max_items=1&offset=0") == ids[:1]  # from the oldest
    assert requests.get(f"{simulator.url}/history/{uuid.uuid4()}", timeout=5).json() == {}
    delete = requests.post(f"{simulator.url}/history", json={"delete": [ids[0]]}, timeout=5)
    assert (delete.status_code, delete.content) == (200, b"") and get("") == ids[1:]
    requests.post(f"{simulator.url}/history", json={"clear": True}, timeout=5)
    assert get("") == []


def test_view_serves_pngs_with_metadata_and_the_recorded_error_codes(simulator):
    extra = {"extra_pnginfo": {"workflow": {"nodes": []}}}
    client_id = str(uuid.uuid4())
    socket = Socket(simulator.url, client_id)
    prompt_id = post_prompt(simulator, EMPTY_IMAGE_GRAPH, client_id, extra_data=extra).json()["prompt_id"]
    socket.until_done(prompt_id)
    socket.close()
    view = f"{simulator.url}/view"
    response = requests.get(view, params={"filename": "empty_00001_.png", "subfolder": "proto", "type": "output"},
                            timeout=5)
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/png"
    for header in ("Content-Disposition", "Etag", "Last-Modified"):
        assert header in response.headers
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (96, 80)  # ImageScale's size, like the recording
    assert json.loads(image.text["prompt"]) == EMPTY_IMAGE_GRAPH
    assert json.loads(image.text["workflow"]) == {"nodes": []}
    for params, status in [({"filename": "does-not-exist.png", "type": "output"}, 404),
                           ({"filename": "../secret", "type": "output"}, 400),
                           ({"filename": "empty_00001_.png", "subfolder": "proto", "type": "bogus"}, 400)]:
        failed = requests.get(view, params=params, timeout=5)
        assert (failed.status_code, failed.content) == (status, b"")
    preview = requests.get(view, params={"filename": "empty_00001_.png", "subfolder": "proto", "type": "output",
                                         "preview": "webp;50"}, timeout=5)
    assert preview.headers["Content-Type"] == "image/webp"


def test_idle_get_endpoints_match_the_recording(simulator):
    for path, sample in recorded("misc-get-endpoints-idle.json").items():
        if path == "/api/jobs":
            continue  # the job API is not simulated (Genonaut uses /history and /queue)
        response = requests.get(simulator.url + path, timeout=5)
        assert response.status_code == sample["status"], path
        if sample["body"] is not None:
            assert shape(response.json()) == shape(sample["body"]), path
    assert requests.get(f"{simulator.url}/models/checkpoints", timeout=5).json() == sorted(
        ["tiny-sd15-random.safetensors", "sdxl-base-1.0.safetensors", "dreamshaper-8.safetensors",
         "fake.safetensors"])


def test_catalogue_endpoints(simulator):
    single = requests.get(f"{simulator.url}/object_info/EmptyImage", timeout=5).json()
    assert single == recorded("object_info-single-EmptyImage.json")["response"]["body"]
    assert requests.get(f"{simulator.url}/object_info/NoSuchNode", timeout=5).json() == {}
    full = requests.get(f"{simulator.url}/object_info", timeout=5).json()
    assert shape(full) == shape(json.loads(RECORDED_OBJECT_INFO.read_text()))  # all 423 stock nodes
    assert full["LoraLoader"]["input"]["required"]["lora_name"][0] == [
        "detail-tweaker.safetensors", "styles/watercolor.safetensors", "tiny-lora.safetensors"]
    stats = requests.get(f"{simulator.url}/system_stats", timeout=5).json()
    assert shape(stats) == shape(recorded("system_stats.json"))
    assert requests.post(f"{simulator.url}/interrupt", timeout=5).status_code == 200


@pytest.mark.parametrize("path", ["/prompt", "/queue", "/history", "/object_info/EmptyImage", "/system_stats",
                                  "/models", "/models/loras", "/embeddings", "/features"])
def test_every_route_is_also_served_under_api(simulator, path):
    plain = requests.get(simulator.url + path, timeout=5)
    prefixed = requests.get(simulator.url + "/api" + path, timeout=5)
    assert (prefixed.status_code, prefixed.json()) == (plain.status_code, plain.json())


# --- input images, img2img / inpaint / two-pass, previews -------------------------------------------------

IMG2IMG_GRAPH = recorded("prompt-accepted-img2img.json")["request"]["json"]["prompt"]
INPAINT_GRAPH = recorded("prompt-accepted-inpaint.json")["request"]["json"]["prompt"]
HIRES_GRAPH = recorded("prompt-accepted-hires-two-pass.json")["request"]["json"]["prompt"]
PREVIEW_GRAPH = recorded("prompt-accepted-with-preview-method.json")["request"]["json"]["prompt"]
UPLOADS = recorded("upload-variants.json")


def png(size, color, mode="RGB"):
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def rgba_with_hole(size):
    """An RGBA picture whose centre is transparent: LoadImage's MASK (slot 1) marks it for repainting."""
    image = Image.new("RGBA", size, (20, 120, 220, 255))
    width, height = size
    image.paste((0, 0, 0, 0), (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def upload(simulator, data, filename, path="/upload/image", **fields):
    return requests.post(f"{simulator.url}{path}", files={"image": (filename, data, "image/png")}, data=fields,
                         timeout=5)


def without_binary(frames):
    return [frame for frame in frames if "_binary_frame" not in frame]


def sequence(frames):
    """What must match a recording: frame types, nodes, sampler progress, cached node ids."""
    out = []
    for frame in frames:
        if "_binary_frame" in frame:
            out.append(("binary", frame["_binary_frame"]["event_type"]))
            continue
        data = frame["data"]
        if frame["type"] == "progress":
            out.append(("progress", data["node"], data["value"], data["max"]))
        elif frame["type"] == "execution_cached":
            out.append(("execution_cached", tuple(data["nodes"])))
        elif frame["type"] == "progress_state":
            out.append(("progress_state", tuple((n, s["value"], s["max"], s["state"]) for n, s in
                                                data["nodes"].items())))
        else:
            out.append((frame["type"], data.get("node")))
    return out


def image_size(simulator, image):
    response = requests.get(f"{simulator.url}/view", params=image, timeout=5)
    assert response.status_code == 200
    return Image.open(io.BytesIO(response.content)).size


def test_img2img_inpaint_and_two_pass_follow_the_recorded_sequences_with_outputs_of_the_right_size(simulator):
    assert upload(simulator, png((70, 50), (200, 30, 30)), "wf-input.png", overwrite="true").status_code == 200
    assert upload(simulator, rgba_with_hole((90, 66)), "wf-rgba.png", overwrite="true").status_code == 200
    run_recorded(simulator, TXT2IMG_LORA_GRAPH)  # the recording's server had the checkpoint node cached
    expected_sizes = {"img2img": (64, 48), "inpaint": (88, 64), "hires-two-pass": (192, 192)}
    for name, graph in (("img2img", IMG2IMG_GRAPH), ("inpaint", INPAINT_GRAPH), ("hires-two-pass", HIRES_GRAPH)):
        prompt_id, frames = run_recorded(simulator, graph)
        assert sequence(frames[1:]) == sequence(recorded(f"ws-{name}.jsonl")[1:]), name
        for got, want in zip(frames, recorded(f"ws-{name}.jsonl"), strict=True):
            assert shape(got) == shape(want), (name, got, want)
        entry = requests.get(f"{simulator.url}/history/{prompt_id}", timeout=5).json()[prompt_id]
        recorded_entry = next(iter(recorded(f"history-{name}.json").values()))
        assert shape(entry) == shape(recorded_entry)
        assert [m[0] for m in entry["status"]["messages"]] == [m[0] for m in recorded_entry["status"]["messages"]]
        (image,) = entry["outputs"]["9"]["images"]
        assert image == recorded_entry["outputs"]["9"]["images"][0]  # same names: proto/<kind>_00001_.png
        assert image_size(simulator, image) == expected_sizes[name]


def test_inpaint_repaints_only_the_transparent_area(simulator):
    original = Image.open(io.BytesIO(rgba_with_hole((96, 64)))).convert("RGB")
    upload(simulator, rgba_with_hole((96, 64)), "wf-rgba.png", overwrite="true")
    prompt_id, _ = run_recorded(simulator, INPAINT_GRAPH)
    (image,) = requests.get(f"{simulator.url}/history/{prompt_id}", timeout=5).json()[prompt_id]["outputs"]["9"][
        "images"]
    result = Image.open(io.BytesIO(requests.get(f"{simulator.url}/view", params=image, timeout=5).content))
    assert result.convert("RGB").getpixel((2, 2)) == original.getpixel((2, 2))  # kept
    assert result.convert("RGB").getpixel((48, 32)) != original.getpixel((48, 32))  # repainted


@pytest.mark.parametrize("name", ["prompt-error-400-img2img-missing-input-image.json",
                                  "prompt-error-400-img2img-traversal-image.json"])
def test_a_missing_or_escaping_input_image_gets_the_recorded_body(simulator, name):
    sample = recorded(name)
    response = requests.post(f"{simulator.url}/prompt", json=sample["request"]["json"], timeout=5)
    assert (response.status_code, response.json()) == (400, sample["response"]["body"])


def test_upload_variants_answer_as_recorded_and_fill_loadimage(simulator):
    first, second = png((8, 8), (1, 2, 3)), png((8, 8), (9, 9, 9))
    mask = png((8, 8), (0, 0, 0, 0), mode="RGBA")
    original_ref = json.dumps({"filename": "wf-input.png", "subfolder": "", "type": "input"})
    cases = {
        "first": upload(simulator, first, "wf-input.png", type="input", overwrite="true"),
        "same_name_same_bytes_no_overwrite": upload(simulator, first, "wf-input.png", type="input"),
        "same_name_other_bytes_no_overwrite": upload(simulator, second, "wf-input.png", type="input"),
        "subfolder": upload(simulator, first, "sub.png", type="input", subfolder="genonaut/ab", overwrite="true"),
        "subfolder_traversal": upload(simulator, first, "trav.png", type="input", subfolder="../../outside"),
        "filename_traversal": upload(simulator, first, "../trav2.png", type="input"),
        "not_an_image": upload(simulator, b"this is not a png", "not-an-image.png", type="input", overwrite="true"),
        "no_image_field": requests.post(f"{simulator.url}/upload/image", data={"type": "input", "note": "x"},
                                        files={"other": ("x.png", first)}, timeout=5),
        "mask": upload(simulator, mask, "wf-mask.png", "/upload/mask", type="input", overwrite="true",
                       original_ref=original_ref),
    }
    assert set(cases) == set(UPLOADS)
    for case, response in cases.items():
        want = UPLOADS[case]["response"]
        assert response.status_code == want["status"], case
        if want["body"] is None:
            assert response.content == b"", case
        else:
            assert response.headers["Content-Type"] == want["content_type"], case
            assert response.json() == want["body"], case
    listed = requests.get(f"{simulator.url}/object_info/LoadImage", timeout=5).json()
    assert listed == recorded("object_info-LoadImage-after-uploads.json")  # subfolder uploads are not listed
    masked = requests.get(f"{simulator.url}/view", params={"filename": "wf-mask.png", "type": "input"}, timeout=5)
    combined = Image.open(io.BytesIO(masked.content))
    assert combined.mode == "RGBA" and combined.getpixel((0, 0)) == (1, 2, 3, 0)  # the original with the mask's alpha


def test_view_serves_input_files_with_the_recorded_headers(simulator):
    data = png((10, 6), (5, 6, 7))
    upload(simulator, data, "wf-input.png", overwrite="true")
    response = requests.get(f"{simulator.url}/view", params={"filename": "wf-input.png", "subfolder": "",
                                                              "type": "input"}, timeout=5)
    lines = (PROTOCOL / "view-input-headers.txt").read_text().splitlines()
    recorded_headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    assert lines[0].endswith("-> 200") and response.status_code == 200 and response.content == data
    for name in ("Content-Disposition", "Content-Type", "Content-Security-Policy", "Accept-Ranges"):
        assert response.headers[name] == recorded_headers[name], name
    assert response.headers["Content-Length"] == str(len(data))
    assert {"Etag", "Last-Modified"} <= set(response.headers)
    partial = requests.get(f"{simulator.url}/view", params={"filename": "wf-input.png", "type": "input"},
                           headers={"Range": "bytes=0-7"}, timeout=5)
    assert (partial.status_code, partial.content) == (206, data[:8])
    assert partial.headers["Content-Range"] == f"bytes 0-7/{len(data)}"


def raw_socket_run(simulator, graph, *, metadata, extra_data):
    """Frames as the recorder stored them: binary ones as ``{"_binary_frame": {...}}`` with the bytes decoded."""
    client_id = str(uuid.uuid4())
    socket = websocket.create_connection(simulator.url.replace("http://", "ws://") + f"/ws?clientId={client_id}",
                                         timeout=5)
    if metadata:
        socket.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
    prompt_id = post_prompt(simulator, graph, client_id, extra_data=extra_data).json()["prompt_id"]
    frames = []
    while True:
        opcode, payload = socket.recv_data()
        if opcode == websocket.ABNF.OPCODE_BINARY:
            frames.append({"_binary_frame": decode_preview_frame(payload)})
            continue
        frame = json.loads(payload)
        frames.append(frame)
        if frame["type"] == "executing" and frame["data"]["node"] is None:
            break
    socket.close()
    return prompt_id, frames


def decode_preview_frame(payload):
    event_type, second = struct.unpack(">II", payload[:8])
    if event_type == 4:
        metadata = json.loads(payload[8:8 + second])
        return {"event_type": 4, "metadata": metadata, "image": payload[8 + second:]}
    return {"event_type": event_type, "image_type": second, "image": payload[8:]}


@pytest.mark.parametrize("layout, metadata", [("legacy", False), ("with-metadata", True)])
def test_previews_follow_the_recorded_layouts(simulator, layout, metadata):
    extra_data = recorded("prompt-accepted-with-preview-method.json")["request"]["json"]["extra_data"]
    run_recorded(simulator, HIRES_GRAPH)  # warms the checkpoint and latent nodes, as on the recording server
    if metadata:  # the recorded run came right after the legacy one: only the seed differs
        raw_socket_run(simulator, PREVIEW_GRAPH, metadata=False, extra_data=extra_data)
        graph = copy.deepcopy(PREVIEW_GRAPH)
        graph["3"]["inputs"]["seed"] += 1
    else:
        graph = PREVIEW_GRAPH
    prompt_id, frames = raw_socket_run(simulator, graph, metadata=metadata, extra_data=extra_data)
    expected = recorded(f"ws-previews-{layout}.jsonl")
    end = next(i for i, f in enumerate(frames) if f.get("type") == "execution_success") + 1
    assert sequence(frames[1:end]) == sequence(expected[1:])
    previews = [frame["_binary_frame"] for frame in frames if "_binary_frame" in frame]
    recorded_previews = [frame["_binary_frame"] for frame in expected if "_binary_frame" in frame]
    assert len(previews) == len(recorded_previews) == 4
    for got, want in zip(previews, recorded_previews, strict=True):
        if metadata:
            assert got["metadata"] == {**want["metadata"], "prompt_id": prompt_id}
        else:
            assert got["image_type"] == want["image_type"] == 1
        picture = Image.open(io.BytesIO(got["image"]))
        assert (picture.format, picture.size) == ("JPEG", (512, 512))  # a 64² image's preview, as recorded
    if metadata:
        assert frames[1] == expected[1]  # the server's feature_flags answer after the first status
    # the picture forms: each preview is closer to the last one than the one before it
    pixels = [Image.open(io.BytesIO(p["image"])).convert("L").resize((32, 32)).tobytes() for p in previews]
    distance = [sum(abs(a - b) for a, b in zip(p, pixels[-1], strict=True)) for p in pixels[:-1]]
    assert distance == sorted(distance, reverse=True) and distance[0] > distance[-1]
