"""``manage.py comfyui_simulator``: run the ComfyUI simulator (a development and test tool)."""

import asyncio
import json
import signal
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from generation.comfyui.simulator import (
    DEFAULT_CHECKPOINTS,
    DEFAULT_LORAS,
    DEFAULT_UPSCALE_MODELS,
    FAILING_CHECKPOINTS,
    FAULT_DEFAULTS,
    SimulatorOptions,
    check_faults,
    custom_node_entry,
    serve,
)


def _names(value):
    return tuple(name.strip() for name in value.split(",") if name.strip())


def _json(flag, value):
    try:
        return json.loads(value)
    except ValueError as exc:
        raise CommandError(f"{flag} is not JSON: {exc}")


class Command(BaseCommand):
    help = "Run a ComfyUI-compatible simulator for development and tests (never a production backend)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=settings.SIMULATOR_HOST)
        parser.add_argument("--port", type=int, default=settings.SIMULATOR_PORT, help="0 picks a free port")
        parser.add_argument("--step-time", type=float, default=settings.SIMULATOR_STEP_TIME,
                            help="seconds per sampler step")
        parser.add_argument("--load-time", type=float, default=settings.SIMULATOR_LOAD_TIME,
                            help="seconds to load a checkpoint other than the loaded one")
        parser.add_argument("--node-time", type=float, default=0.0, help="seconds for every other node")
        parser.add_argument("--checkpoints", default=",".join(DEFAULT_CHECKPOINTS), help="comma-separated")
        parser.add_argument("--loras", default=",".join(DEFAULT_LORAS), help="comma-separated")
        parser.add_argument("--upscale-models", default=",".join(DEFAULT_UPSCALE_MODELS),
                            help="comma-separated; the factor is read from the name (4x-…, …_x2…), else 4")
        parser.add_argument("--failing-checkpoints", default=",".join(FAILING_CHECKPOINTS),
                            help="listed, but fail at load time (comma-separated)")
        parser.add_argument("--custom-nodes", default="[]",
                            help='JSON list of node classes to add, e.g. [{"class": "GenonautTestNode", '
                                 '"inputs": {"image": "IMAGE"}, "outputs": ["IMAGE"]}] (docs/simulator.md)')
        parser.add_argument("--removed-nodes", default="", help="stock node classes to leave out (comma-separated)")
        parser.add_argument("--history-max", type=int, default=10000)
        parser.add_argument("--max-files", type=int, default=2000, help="rendered images kept for /view")
        parser.add_argument("--preview-size", type=int, default=512, help="latent previews fit in this square")
        parser.add_argument("--max-pixels", type=int, default=SimulatorOptions.max_pixels,
                            help="pixels of one image batch beyond which a node fails out of memory")
        parser.add_argument("--seed", type=int, default=None, help="seed for the fault dice")
        parser.add_argument("--faults", default="", help='JSON, e.g. {"execution_error_rate": 0.05} '
                                                         "(default: SIMULATOR_FAULTS)")
        for name, default in FAULT_DEFAULTS.items():
            flag = "--" + name.replace("_", "-")
            if isinstance(default, bool):
                parser.add_argument(flag, action="store_true", default=None)
            else:
                parser.add_argument(flag, type=type(default), default=None)

    def handle(self, *args, **options):
        faults = _json("--faults", options["faults"]) if options["faults"] else dict(settings.SIMULATOR_FAULTS)
        for name in FAULT_DEFAULTS:
            if isinstance(faults, dict) and options.get(name) is not None:
                faults[name] = options[name]
        custom_nodes = _json("--custom-nodes", options["custom_nodes"])
        try:
            check_faults(faults)
            if not isinstance(custom_nodes, list):
                raise ValueError("--custom-nodes must be a JSON list")
            for spec in custom_nodes:
                custom_node_entry(spec)
        except ValueError as exc:
            raise CommandError(str(exc))
        sim_options = SimulatorOptions(
            step_time=options["step_time"], load_time=options["load_time"], node_time=options["node_time"],
            checkpoints=_names(options["checkpoints"]), loras=_names(options["loras"]),
            upscale_models=_names(options["upscale_models"]),
            failing_checkpoints=_names(options["failing_checkpoints"]), custom_nodes=tuple(custom_nodes),
            removed_nodes=_names(options["removed_nodes"]), history_max=options["history_max"],
            max_files=options["max_files"], preview_size=options["preview_size"], max_pixels=options["max_pixels"],
            seed=options["seed"], faults=faults)

        def ready(url):
            # tests and scripts read this line to learn the port
            sys.stdout.write(f"ComfyUI simulator listening on {url}\n")
            sys.stdout.flush()

        asyncio.run(self._run(sim_options, options["host"], options["port"], ready))

    async def _run(self, sim_options, host, port, ready):
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await serve(sim_options, host=host, port=port, on_ready=ready, stop_event=stop)
