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
    FAILING_CHECKPOINTS,
    FAULT_DEFAULTS,
    SimulatorOptions,
    serve,
)


def _names(value):
    return tuple(name.strip() for name in value.split(",") if name.strip())


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
        parser.add_argument("--failing-checkpoints", default=",".join(FAILING_CHECKPOINTS),
                            help="listed, but fail at load time (comma-separated)")
        parser.add_argument("--history-max", type=int, default=10000)
        parser.add_argument("--max-files", type=int, default=2000, help="rendered images kept for /view")
        parser.add_argument("--seed", type=int, default=None, help="seed for the fault dice")
        parser.add_argument("--faults", default="", help='JSON, e.g. {"execution_error_rate": 0.05} '
                                                         "(default: SIMULATOR_FAULTS)")
        for name, default in FAULT_DEFAULTS.items():
            flag = "--" + name.replace("_", "-")
            if isinstance(default, bool):
                parser.add_argument(flag, action="store_true", default=None)
            else:
                parser.add_argument(flag, type=float, default=None)

    def handle(self, *args, **options):
        try:
            faults = json.loads(options["faults"]) if options["faults"] else dict(settings.SIMULATOR_FAULTS)
        except ValueError as exc:
            raise CommandError(f"--faults is not JSON: {exc}")
        unknown = set(faults) - set(FAULT_DEFAULTS)
        if unknown:
            raise CommandError(f"unknown faults: {', '.join(sorted(unknown))}")
        for name in FAULT_DEFAULTS:
            if options.get(name) is not None:
                faults[name] = options[name]
        sim_options = SimulatorOptions(
            step_time=options["step_time"], load_time=options["load_time"], node_time=options["node_time"],
            checkpoints=_names(options["checkpoints"]), loras=_names(options["loras"]),
            failing_checkpoints=_names(options["failing_checkpoints"]), history_max=options["history_max"],
            max_files=options["max_files"], seed=options["seed"], faults=faults)

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
