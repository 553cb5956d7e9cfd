"""Workflow benchmark: what an input image adds to a job (issue 11).

    .venv/bin/python bench/workflow_bench.py [--samples 12] [--size 512] [--redis URL]

txt2img and img2img at the same size, alternately (so load on the machine hits both sides alike),
through the whole service: submit → a real worker cluster → the simulator → images and
thumbnails stored; timed by the server's own ``created_at`` → ``finished_at``, minus the time the
simulator spent executing (its history timestamps: img2img executes longer, it decodes the input).
The difference of the medians of what remains is the orchestration cost of the input image
(decoding at submit is not in it: the input is uploaded once beforehand, as ``POST /inputs/``
would); it should be the upload to the backend, so the script also times ``upload_image`` for 1,
4 and 16 MB and reports milliseconds per MB. Same database and process handling as
``bench/pipeline_bench.py``.
"""

import argparse
import io
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline_bench import DEFAULT_SERVER, Harness, drop_database, params, reset_data, setup_django  # noqa: E402


def noise_png(width, height, *, seed=1):
    """A PNG that does not compress (random pixels): its size in bytes is what a photo would weigh."""
    from PIL import Image

    rng = random.Random(seed)
    image = Image.frombytes("RGB", (width, height), bytes(rng.getrandbits(8) for _ in range(width * height * 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def server_seconds(request_id, sim):
    """``(created_at → finished_at, the part ComfyUI itself spent executing)`` of a finished request."""
    from pipeline_bench import history_times

    from generation.models import GenerationRequest

    row = GenerationRequest.objects.get(pk=request_id)
    assert row.status == "completed", (row.workflow_slug, row.error)
    start, success = history_times(sim, row.comfyui_prompt_id)
    return (row.finished_at - row.created_at).total_seconds(), success - start


def bench_img2img_overhead(harness, user, samples, size):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from pipeline_bench import wait_all

    from generation import inputs
    from generation.services import submit_generation

    sim = harness.simulators_up(1, step_time=0.01, load_time=0.0)[0]
    harness.cluster_up()
    data = noise_png(size, size)
    record, _ = inputs.store_upload(user=user, upload=SimpleUploadedFile("in.png", data))
    txt2img = params(size=size)
    img2img = {key: txt2img[key] for key in ("prompt", "negative_prompt", "checkpoint_model", "sampler_params")}
    img2img.update(workflow="img2img", input_image=str(record.pk))
    warm = [submit_generation(user=user, data=body)[0].pk for body in (txt2img, img2img)]
    wait_all(warm, timeout=120)
    times = {"txt2img": [], "img2img": []}
    overheads = {"txt2img": [], "img2img": []}
    for index in range(samples):
        for name, body in (("txt2img", txt2img), ("img2img", img2img))[:: 1 if index % 2 else -1]:
            seeded = {**body, "sampler_params": {**body["sampler_params"], "seed": 1000 + index}}
            request, _ = submit_generation(user=user, data=seeded)
            wait_all([request.pk], timeout=120)
            total, executing = server_seconds(request.pk, sim)
            times[name].append(total)
            overheads[name].append(total - executing)
    harness.cluster_down()
    # what Genonaut adds around ComfyUI's execution (which itself takes longer for img2img: it decodes
    # the input), so the difference is the orchestration cost of an input image
    extra = statistics.median(overheads["img2img"]) - statistics.median(overheads["txt2img"])
    megabytes = record.size_bytes / 1e6
    ms = lambda values: round(statistics.median(values) * 1000, 1)  # noqa: E731
    return {"size": f"{size}x{size}", "input_bytes": record.size_bytes, "samples": samples,
            "txt2img_total_ms": ms(times["txt2img"]), "img2img_total_ms": ms(times["img2img"]),
            "txt2img_overhead_ms": ms(overheads["txt2img"]), "img2img_overhead_ms": ms(overheads["img2img"]),
            "extra_overhead_ms": round(extra * 1000, 1), "extra_ms_per_mb": round(extra * 1000 / megabytes, 1)}


def bench_upload(harness, repeats):
    sim = harness.simulators_up(1)[0]
    client = sim.client(timeout=60)
    figures = {}
    for megabytes in (1, 4, 16):
        data = os.urandom(megabytes * 1_000_000)
        durations = []
        for index in range(repeats):
            start = time.perf_counter()
            client.upload_image(data, name=f"bench-{megabytes}-{index}.png", subfolder="genonaut", overwrite=True)
            durations.append(time.perf_counter() - start)
        median = statistics.median(durations)
        figures[f"{megabytes}MB"] = {"median_ms": round(median * 1000, 1),
                                     "ms_per_mb": round(median * 1000 / megabytes, 1)}
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--redis", default="")
    args = parser.parse_args()
    server = os.environ.get("BENCH_POSTGRES", DEFAULT_SERVER)
    database_url = f"{server}/genonaut_workflow_bench_{os.getpid()}"
    media = tempfile.mkdtemp(prefix="genonaut-workflow-bench-")
    setup_django(database_url, media)
    harness = Harness(redis_url=args.redis or None)
    try:
        reset_data()
        from django.contrib.auth import get_user_model

        user, _ = get_user_model().objects.get_or_create(username="bench")
        print({"upload": bench_upload(harness, repeats=5)}, flush=True)
        print({"img2img_vs_txt2img": bench_img2img_overhead(harness, user, args.samples, args.size)}, flush=True)
    finally:
        harness.close()
        drop_database(database_url)


if __name__ == "__main__":
    main()
