"""Status changes with their consequences: the actions' way into the state machine.

:mod:`generation.states` only decides (one conditional UPDATE, a winner); this module runs what
follows a change once the transaction commits: a finished request's webhook is queued, and the change is
counted for ``/metrics`` (:func:`generation.metrics.record_transition`). Every
actor that changes a status (services, dispatcher, runner, reconciler) goes through
:func:`transition`, so no consequence is forgotten and the state machine depends on nothing.
"""

import logging
from functools import partial

from django.db import transaction

from generation import metrics, states
from generation.states import TERMINAL, Status

logger = logging.getLogger(__name__)


def transition(request_id, to, **kwargs):
    """:func:`generation.states.transition`, then (on commit, if we won) the consequences."""
    won = states.transition(request_id, to, **kwargs)
    if won:
        to = Status(to)
        transaction.on_commit(lambda: request_changed(request_id, to))
        requeued = to == Status.QUEUED and set(kwargs.get("expect") or ()) == {Status.RUNNING}
        transaction.on_commit(partial(metrics.record_transition, request_id, to, requeued=requeued,
                                      error_detail=kwargs.get("error_detail")), robust=True)
    return won


def request_changed(request_id, status):
    """After a committed change of ``request_id`` to ``status``."""
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
