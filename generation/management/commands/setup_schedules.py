"""``manage.py setup_schedules``: create or update Genonaut's Django-Q schedules (idempotent)."""

from django.core.management.base import BaseCommand

from generation.enqueue import ensure_schedules


class Command(BaseCommand):
    help = "Create or update the Django-Q schedules (the every-minute reconciler). Safe to run repeatedly."

    def handle(self, *args, **options):
        for name, created in ensure_schedules():
            self.stdout.write(f"{'created' if created else 'up to date'}: {name}")
