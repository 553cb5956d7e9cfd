"""``manage.py reconcile``: run the reconciler once, now (it also runs every minute as a schedule)."""

from django.core.management.base import BaseCommand

from generation.reconciler import reconcile


class Command(BaseCommand):
    help = "Repair stale, timed-out, lost and forgotten generation requests once, and apply file retention."

    def handle(self, *args, **options):
        report = reconcile()
        self.stdout.write(", ".join(f"{key}={value}" for key, value in report.items()))
