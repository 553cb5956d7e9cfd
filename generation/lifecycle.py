"""Status changes with their consequences: the actions' way into the state machine.

:mod:`generation.states` only decides (one conditional UPDATE, a winner); this module runs what
follows a change once the transaction commits: a finished request's webhook is queued, the change is
counted for ``/metrics`` (:func:`generation.metrics.record_transition`), and live streams hear of it
(:mod:`generation.live`). Every
actor that changes a status (services, dispatcher, runner, reconciler) goes through
:func:`transition`, so no consequence is forgotten and the state machine depends on nothing.
"""

import logging
from functools import partial

from django.db import transaction

from generation import metrics, states
from generation.live import bus
from generation.live import log as live_log
from generation.states import TERMINAL, Status

logger = logging.getLogger(__name__)


def transition(request_id, to, **kwargs):
    """:func:`generation.states.transition`, then (on commit, if we won) the consequences.

    The change is logged for live streams in the same transaction (:func:`generation.live.log.record`),
    so a stream never shows a change that was rolled back, nor misses one that committed."""
    # savepoint=False: inside a caller's transaction these two statements are part of it (an error
    # rolls the caller back too); on their own they are one transaction
    with transaction.atomic(savepoint=False):
        won = states.transition(request_id, to, **kwargs)
        if won:
            notify = bus.channel() if bus.fanout() == "postgres" else None
            logged = live_log.record(request_id, to, notify=notify)
            if logged is not None and notify is None:
                event_id, user_id = logged
                bus.publish_on_commit({"k": "event", "u": user_id, "r": str(request_id), "e": event_id,
                                       "s": str(Status(to))})
    if won:
        to = Status(to)
        # robust: the change is committed; a failing consequence must not look like a failed change to the caller
        transaction.on_commit(lambda: request_changed(request_id, to), robust=True)
        requeued = to == Status.QUEUED and set(kwargs.get("expect") or ()) == {Status.RUNNING}
        transaction.on_commit(partial(metrics.record_transition, request_id, to, requeued=requeued,
                                      error_detail=kwargs.get("error_detail")), robust=True)
    return won


def request_changed(request_id, status):
    """After a committed change of ``request_id`` to ``status``."""
    if status in TERMINAL:  # (a requeued job's preview is replaced by its next attempt's, or expires)
        from generation.live import previews

        try:
            previews.discard(request_id)
        except Exception:  # it expires by itself (PREVIEW_TTL_SECONDS)
            logger.warning("could not discard the preview of %s", request_id, exc_info=True)
    if status in TERMINAL:
        request_finished(request_id)


def request_finished(request_id):
    """A request reached a terminal state: queue its webhook, if it has one."""
    from generation.models import GenerationRequest

    if GenerationRequest.objects.filter(pk=request_id).exclude(webhook_url="").exists():
        from generation import enqueue

        try:
            enqueue.deliver_webhook(request_id)
        except Exception:  # the broker down must not undo a finished request; the webhook is lost, logged
            logger.exception("could not queue the webhook of %s", request_id)
