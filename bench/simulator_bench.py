"""Benchmark the ComfyUI simulator and the client's new paths: submissions, /view, uploads, previews.

Usage: .venv/bin/python bench/simulator_bench.py [--only submit,view,upload,previews] [--submissions 2000]
       [--concurrency 4] [--views 200] [--upload-mb 1,8,32] [--uploads 5] [--preview-steps 30]

Starts ``manage.py comfyui_simulator`` on a free loopback port (default step and load times),
drives it over TCP from this process and prints the figures. Targets: ≥ 200 submissions/s,
/view median < 20 ms. Uploads: MB/s through ``ComfyUIClient.upload_image`` from bytes and from
a file on disk, and the client's peak Python allocation while streaming the file (it must not
hold the file). Previews: what a latent preview adds to each sampler step (a 512² txt2img at
zero step time, with and without ``preview_method``), the frame size, and the client's parse time.
"""

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "genonaut.test_settings")

import aiohttp  # noqa: E402
import django  # noqa: E402
import requests  # noqa: E402

django.setup()

from generation.comfyui import events as ev  # noqa: E402
from generation.comfyui.client import ComfyUIClient  # noqa: E402
from generation.workflows import get_workflow  # noqa: E402
from tests.plugins.simulator import start_simulator  # noqa: E402

SECTIONS = ("submit", "view", "upload", "previews")


def workflow(size, steps, prefix, *, seed=1, loras=True):
    lora = [{"name": "tiny-lora.safetensors", "strength_model": 0.8, "strength_clip": 0.8}] if loras else []
    params = {"prompt": "benchmark lighthouse", "negative_prompt": "blurry",
              "checkpoint_model": "tiny-sd15-random.safetensors", "lora_models": lora,
              "width": size, "height": size, "batch_size": 1,
              "sampler_params": {"seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler",
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


def upload_rates(simulator, sizes_mb, repeats):
    """Per size: median seconds from bytes and from a file on disk, and the client's peak allocation."""
    client = ComfyUIClient(simulator.url, timeout=120)
    rows = []
    for size_mb in sizes_mb:
        data = os.urandom(size_mb * 1024 * 1024)
        from_bytes, from_file = [], []
        with tempfile.NamedTemporaryFile(suffix=".png") as handle:
            handle.write(data)
            handle.flush()
            for attempt in range(repeats):
                started = time.perf_counter()
                client.upload_image(data, name=f"bytes-{size_mb}.png", subfolder="bench")
                from_bytes.append(time.perf_counter() - started)
                with open(handle.name, "rb") as source:
                    if attempt == 0:
                        tracemalloc.start()
                    started = time.perf_counter()
                    client.upload_image(source, name=f"file-{size_mb}.png", subfolder="bench")
                    from_file.append(time.perf_counter() - started)
                    if attempt == 0:
                        peak = tracemalloc.get_traced_memory()[1]
                        tracemalloc.stop()
        rows.append((size_mb, statistics.median(from_bytes), statistics.median(from_file), peak))
        simulator.restart()  # keeps input/, but the next size must not compete with this one's garbage
    return rows


def preview_costs(simulator, steps, repeats):
    """Median seconds per prompt without and with previews (both layouts), frame sizes, parse time."""
    client = ComfyUIClient(simulator.url, timeout=60)
    simulator.configure(step_time=0.0, load_time=0.0)

    def one(extra_data, previews, seed):
        prompt_id = str(uuid.uuid4())
        graph = workflow(512, steps, "bench/preview", seed=seed, loras=False)
        started = time.perf_counter()
        frames = []
        with client.event_stream(prompt_id, previews=previews) as events:
            client.submit(graph, prompt_id=prompt_id, client_id=prompt_id, extra_data=extra_data)
            frames = [e for e in events.follow(prompt_id, idle_interval=0.5) if isinstance(e, ev.Preview)]
        return time.perf_counter() - started, frames

    results = {}
    for label, extra, previews in (("none", None, False), ("legacy", {"preview_method": "latent2rgb"}, False),
                                   ("metadata", {"preview_method": "latent2rgb"}, True)):
        one(extra, previews, 0)  # warm-up: the checkpoint loader and text encoders get cached
        runs = [one(extra, previews, seed) for seed in range(1, repeats + 1)]
        results[label] = (statistics.median(t for t, _ in runs), runs[-1][1])
    frames = results["metadata"][1]
    raw = [b"\x00\x00\x00\x01\x00\x00\x00\x01" + frame.data for frame in frames]
    started = time.perf_counter()
    for _ in range(50):
        for frame in raw:
            ev.parse_binary_frame(frame)
    parse = (time.perf_counter() - started) / (50 * len(raw))
    return results, parse


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--submissions", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--views", type=int, default=200)
    parser.add_argument("--upload-mb", default="1,8,32", help="comma-separated sizes")
    parser.add_argument("--uploads", type=int, default=5, help="uploads per size (median)")
    parser.add_argument("--preview-steps", type=int, default=30)
    parser.add_argument("--preview-runs", type=int, default=5, help="prompts per variant (median)")
    args = parser.parse_args()
    sections = set(args.only.split(","))

    simulator = start_simulator(step_time=0.05, load_time=2.0)  # the command's defaults
    try:
        if "submit" in sections:
            accepted, elapsed = asyncio.run(submit_many(simulator.url, args.submissions, args.concurrency))
            print(f"POST /prompt: {accepted}/{args.submissions} accepted in {elapsed:.2f} s "
                  f"= {accepted / elapsed:.0f} submissions/s (concurrency {args.concurrency}; target >= 200/s)")
            simulator.restart()  # drop the backlog before the next measurement
        if "view" in sections:
            timings, streamed, size = view_latencies(simulator, args.views)
            ms = sorted(t * 1000 for t in timings)
            print(f"GET /view 1024x1024 PNG ({size} bytes): median {statistics.median(ms):.2f} ms, "
                  f"p95 {ms[int(len(ms) * 0.95) - 1]:.2f} ms over {len(ms)} requests (target median < 20 ms)")
            print(f"ComfyUIClient.view streamed: median {statistics.median(streamed) * 1000:.2f} ms")
        if "upload" in sections:
            for size_mb, from_bytes, from_file, peak in upload_rates(
                    simulator, [int(mb) for mb in args.upload_mb.split(",")], args.uploads):
                print(f"upload_image {size_mb} MB: from bytes {from_bytes * 1000:.0f} ms "
                      f"({size_mb / from_bytes:.0f} MB/s), from a file {from_file * 1000:.0f} ms "
                      f"({size_mb / from_file:.0f} MB/s); client peak allocation while streaming the file "
                      f"{peak / 1024 / 1024:.2f} MB (median of {args.uploads})")
        if "previews" in sections:
            results, parse = preview_costs(simulator, args.preview_steps, args.preview_runs)
            base = results["none"][0]
            for label in ("legacy", "metadata"):
                elapsed, frames = results[label]
                sizes = [len(frame.data) for frame in frames]
                print(f"previews ({label}): {len(frames)} frames of {statistics.median(sizes) / 1024:.1f} KB "
                      f"(512x512 JPEG); prompt {elapsed * 1000:.0f} ms vs {base * 1000:.0f} ms without = "
                      f"+{(elapsed - base) / args.preview_steps * 1000:.2f} ms per step "
                      f"(ratio {elapsed / base:.2f})")
            print(f"parse_binary_frame: {parse * 1e6:.1f} us per frame")
    finally:
        simulator.stop()


if __name__ == "__main__":
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the servers this started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
