"""The polling fan-out (:mod:`generation.live.bus`, transport ``poll``): what the other transports
would have announced, found by reading the database every ``LIVE["POLL_SECONDS"]``."""

from django.db.models import Max
from django.utils import timezone

from generation.live import previews
from generation.live.log import Cursor
from generation.states import Status


class Poller:
    def __init__(self):
        from generation.models import RequestEvent

        self.cursor = Cursor(RequestEvent.objects.aggregate(top=Max("id"))["top"] or 0)
        self.progress = {}  # request id -> the last progress tuple announced
        self.preview_numbers = {}  # request id -> the last preview number announced
        self.backends_at = None

    def poll(self, users, *, everything=False):
        """The messages for what changed since the last call (for ``users``' requests; with
        ``everything`` also backend changes)."""
        from generation.models import BackendState, RequestEvent, RunState

        messages = []
        queried_at = timezone.now()
        events = list(RequestEvent.objects.filter(id__gt=self.cursor.settled).exclude(id__in=self.cursor.above)
                      .order_by("id")[:1000])
        self.cursor.advance(events, queried_at=queried_at)
        messages += [{"k": "event", "u": e.user_id, "r": str(e.request_id), "e": e.id, "s": e.status}
                     for e in events]
        if users:
            running = list(RunState.objects.filter(request__status=Status.RUNNING, request__user_id__in=users)
                           .values_list("request_id", "request__user_id", "progress", "current_step",
                                        "total_steps", "current_node"))
            progress = {}
            for request_id, user_id, fraction, step, total, node in running:
                key = str(request_id)
                progress[key] = (fraction, step, total, node)
                if self.progress.get(key) != progress[key]:
                    messages.append({"k": "progress", "u": user_id, "r": key, "f": fraction, "st": step, "t": total,
                                     "n": node})
            self.progress = progress
            owners = {str(r): u for r, u, *_ in running}
            numbers = previews.numbers(owners)
            for key, number in numbers.items():
                if self.preview_numbers.get(key) != number:
                    messages.append({"k": "preview", "u": owners[key], "r": key, "n": number})
            self.preview_numbers = numbers
        if everything:
            changed = BackendState.objects.aggregate(at=Max("updated_at"))["at"]
            if changed != self.backends_at:
                if self.backends_at is not None:
                    messages.append({"k": "backend"})
                self.backends_at = changed
        return messages
