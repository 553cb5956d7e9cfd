"""``manage.py refresh_models``: register the checkpoints, LoRAs and upscale models ComfyUI can see."""

from django.core.management.base import BaseCommand, CommandError

from models_registry.services import SOURCES, RefreshFailed, model_folders, refresh_models


class Command(BaseCommand):
    help = ("Scan ComfyUI's model folders and/or ask its API which checkpoints, LoRAs and upscale models exist, and "
            "update the registry (and on which backends each is). Vanished models are marked not present, never "
            "deleted.")

    def add_arguments(self, parser):
        parser.add_argument("--source", choices=SOURCES, default="both",
                            help="folders (COMFYUI_MODELS_DIR…), api (COMFYUI_URL) or both (whatever is configured)")
        parser.add_argument("--dry-run", action="store_true", help="report what would change, save nothing")
        parser.add_argument("--hash", action="store_true",
                            help="also compute SHA-256 of local files whose cached hash is stale (slow for big files)")
        parser.add_argument("--models-dir", help="ComfyUI's models/ folder, instead of COMFYUI_MODELS_DIR")
        parser.add_argument("--url", action="append", dest="urls", metavar="URL",
                            help="a ComfyUI base URL to ask, instead of COMFYUI_URL (repeatable)")

    def handle(self, *args, source, dry_run, hash, models_dir, urls, verbosity, **options):
        folders = model_folders(models_dir) if models_dir else None
        try:
            result = refresh_models(source=source, dry_run=dry_run, hash_files=hash, folders=folders, backends=urls)
        except RefreshFailed as exc:
            raise CommandError(f"refresh_models: nothing refreshed: {exc}") from exc
        for problem in result.errors:
            self.stderr.write(f"warning: {problem}")
        for problem in result.unreadable:
            self.stderr.write(f"unreadable: {problem}")
        if verbosity > 1:
            for title, items in (("added", result.added), ("updated", result.updated), ("missing", result.missing),
                                 ("hashed", result.hashed)):
                for item in items:
                    self.stdout.write(f"{title}: {item}")
        self.stdout.write(result.summary())
