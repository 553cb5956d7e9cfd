"""Benchmark the ComfyUI simulator: POST /prompt throughput and /view latency for a 1024×1024 image.

Usage: .venv/bin/python bench/simulator_bench.py [--submissions 2000] [--concurrency 4] [--views 200]

Starts ``manage.py comfyui_simulator`` on a free loopback port (default step and load times),
drives it over TCP from this process and prints the figures. Targets: ≥ 200 submissions/s,
/view median < 20 ms.
"""

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "genonaut.test_settings")

import aiohttp  # noqa: E402
import django  # noqa: E402
import requests  # noqa: E402

django.setup()

from generation.comfyui.client import ComfyUIClient  # noqa: E402
from generation.workflows import get_workflow  # noqa: E402
from tests.plugins.simulator import start_simulator  # noqa: E402


def workflow(size, steps, prefix):
    params = {"prompt": "benchmark lighthouse", "negative_prompt": "blurry",
              "checkpoint_model": "tiny-sd15-random.safetensors",
              "lora_models": [{"name": "tiny-lora.safetensors", "strength_model": 0.8, "strength_clip": 0.8}],
              "width": size, "height": size, "batch_size": 1,
              "sampler_params": {"seed": 1, "steps": steps, "cfg": 7.0, "sampler_name": "euler",
                                 "scheduler": "normal", "denoise": 1.0}}
    return get_workflow("txt2img").build(params, files={}, filename_prefix=prefix)


async def submit_many(url, count, concurrency):
    graph = workflow(512, 20, "bench/submit")
    queue = asyncio.Queue()
    for _ in range(count):
        queue.put_nowait(str(uuid.uuid4()))
    accepted = 0

    async def worker(session):
        nonlocal accepted
        while not queue.empty():
            prompt_id = queue.get_nowait()
            async with session.post(f"{url}/prompt", json={"prompt": graph, "client_id": "bench",
                                                           "prompt_id": prompt_id}) as response:
                body = await response.json()
                accepted += response.status == 200 and body["prompt_id"] == prompt_id

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return accepted, elapsed


def view_latencies(simulator, count):
    client = ComfyUIClient(simulator.url, timeout=30)
    simulator.configure(step_time=0.0, load_time=0.0)
    prompt_id = str(uuid.uuid4())
    with client.event_stream("bench-view") as events:
        client.submit(workflow(1024, 1, "bench/view"), prompt_id=prompt_id, client_id="bench-view")
        for _ in events.follow(prompt_id, idle_interval=0.5):
            pass
    (image,) = client.history(prompt_id)["outputs"]["9"]["images"]
    session = requests.Session()
    timings, size = [], 0
    for _ in range(count):
        started = time.perf_counter()
        response = session.get(f"{simulator.url}/view", params=image, timeout=10)
        size = len(response.content)
        timings.append(time.perf_counter() - started)
        assert response.status_code == 200
    streamed = []
    for _ in range(max(10, count // 5)):
        started = time.perf_counter()
        with client.view(**image) as stream:
            for _chunk in stream:
                pass
        streamed.append(time.perf_counter() - started)
    return timings, streamed, size


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--views", type=int, default=200)
    args = parser.parse_args()

    simulator = start_simulator(step_time=0.05, load_time=2.0)  # the command's defaults
    try:
        accepted, elapsed = asyncio.run(submit_many(simulator.url, args.submissions, args.concurrency))
        print(f"POST /prompt: {accepted}/{args.submissions} accepted in {elapsed:.2f} s "
              f"= {accepted / elapsed:.0f} submissions/s (concurrency {args.concurrency}; target >= 200/s)")
        simulator.restart()  # drop the backlog before measuring /view
        timings, streamed, size = view_latencies(simulator, args.views)
        ms = sorted(t * 1000 for t in timings)
        print(f"GET /view 1024x1024 PNG ({size} bytes): median {statistics.median(ms):.2f} ms, "
              f"p95 {ms[int(len(ms) * 0.95) - 1]:.2f} ms over {len(ms)} requests (target median < 20 ms)")
        print(f"ComfyUIClient.view streamed: median {statistics.median(streamed) * 1000:.2f} ms")
    finally:
        simulator.stop()


if __name__ == "__main__":
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the servers this started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
