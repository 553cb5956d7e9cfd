"""Webhooks: which URLs may receive a finished request's signed POST, and its delivery.

A finished request's public representation (the API's JSON) is POSTed to its ``webhook_url``
with ``X-Genonaut-Signature: sha256=<hex HMAC-SHA256 of the raw body>`` keyed by the owner's
:class:`~generation.models.WebhookSecret`, and ``X-Genonaut-Timestamp`` (Unix seconds).
A failed delivery is retried with exponential backoff up to ``GENERATION["WEBHOOK_MAX_ATTEMPTS"]``
times through a one-off Django-Q schedule. The URL is checked when submitted and again at each
delivery, which connects to the very address it checked (:mod:`generation.netguard`: public
addresses only, no second DNS answer, no redirects, no proxies, a total time cap).
"""

import datetime
import hashlib
import hmac
import json
import logging
import time

from django.conf import settings
from django.utils import timezone

from generation import netguard
from generation.netguard import FetchFailed, UrlRefused, check_public_url

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Genonaut-Signature"
TIMESTAMP_HEADER = "X-Genonaut-Timestamp"
BACKOFF_CAP_SECONDS = 3600


# the name generation.params catches: a refused webhook URL is a field error
WebhookUrlRefused = UrlRefused


def check_webhook_url(url):
    """Return ``url`` if it may receive webhooks: http(s), and a host whose every address is public
    (:func:`generation.netguard.check_public_url`); with ``GENERATION["WEBHOOK_ALLOW_PRIVATE"]`` on
    (tests, trusted networks) loopback and private addresses are allowed too."""
    check_public_url(url, allow_private=settings.GENERATION["WEBHOOK_ALLOW_PRIVATE"])
    return url


def request_finished(request_id):
    """Called (on commit) each time a request reaches a terminal state: queue its webhook, if any."""
    from django_q.tasks import async_task

    from generation.models import GenerationRequest

    if GenerationRequest.objects.filter(pk=request_id).exclude(webhook_url="").exists():
        async_task("generation.tasks.deliver_webhook", str(request_id), attempt=1)


# --- secrets ------------------------------------------------------------------------------------


def webhook_secret_for(user):
    """``user``'s signing secret, created on first use."""
    from generation.models import WebhookSecret

    secret, _ = WebhookSecret.objects.get_or_create(user=user)
    return secret


def rotate_webhook_secret(user):
    """Replace ``user``'s signing secret; deliveries from now on are signed with the new one."""
    from generation.models import WebhookSecret, _new_webhook_secret

    secret, created = WebhookSecret.objects.get_or_create(user=user)
    if not created:
        secret.secret = _new_webhook_secret()
        secret.created_at = timezone.now()
        secret.save(update_fields=["secret", "created_at"])
    return secret


def sign(body, secret):
    """The ``X-Genonaut-Signature`` value for ``body`` (bytes)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --- delivery -----------------------------------------------------------------------------------


def backoff_seconds(attempt):
    """Wait before attempt ``attempt + 1``: base × 4^(attempt-1), capped at an hour."""
    return min(BACKOFF_CAP_SECONDS, settings.GENERATION["WEBHOOK_BACKOFF_SECONDS"] * 4 ** (attempt - 1))


def webhook_body(request):
    """The raw bytes POSTed for ``request``: its API representation (relative URLs)."""
    from generation.api.serializers import GenerationRequestSerializer

    return json.dumps(GenerationRequestSerializer(request).data, separators=(",", ":"), default=str).encode()


def deliver_webhook(request_id, attempt=1):
    """POST the finished request to its ``webhook_url`` once; on failure schedule the next attempt.

    Idempotent: a request already delivered (or deleted, or without a URL) is left alone.
    Returns ``"delivered"``, ``"retry"``, ``"gave_up"`` or ``"skipped"``.
    """
    from generation.models import GenerationRequest

    request = GenerationRequest.objects.select_related("user").filter(pk=request_id).first()
    if request is None or not request.webhook_url or request.webhook_delivered_at is not None:
        return "skipped"
    if not request.is_terminal:
        return "skipped"  # only finished requests are announced
    try:  # checked again now, and the connection goes to the address checked: no second DNS answer
        checked = check_public_url(request.webhook_url, allow_private=settings.GENERATION["WEBHOOK_ALLOW_PRIVATE"])
    except UrlRefused as exc:
        logger.warning("webhook for %s refused at delivery: %s", request_id, exc)
        return "gave_up"
    body = webhook_body(request)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Genonaut-Webhook/1",
        SIGNATURE_HEADER: sign(body, webhook_secret_for(request.user).secret),
        TIMESTAMP_HEADER: str(int(time.time())),
        "X-Genonaut-Delivery-Attempt": str(attempt),
    }
    timeout = settings.GENERATION["WEBHOOK_TIMEOUT"]
    try:
        status = netguard.post(checked, body=body, headers=headers, timeout=timeout, total_seconds=2 * timeout)
        problem = None if 200 <= status < 300 else f"answered HTTP {status}"
    except FetchFailed as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem is None:
        GenerationRequest.objects.filter(pk=request_id, webhook_delivered_at__isnull=True).update(
            webhook_delivered_at=timezone.now())
        return "delivered"
    if attempt >= settings.GENERATION["WEBHOOK_MAX_ATTEMPTS"]:
        logger.warning("webhook for %s failed on attempt %s (%s); giving up", request_id, attempt, problem)
        return "gave_up"
    delay = backoff_seconds(attempt)
    logger.info("webhook for %s failed on attempt %s (%s); retrying in %ss", request_id, attempt, problem, delay)
    schedule_retry(request_id, attempt=attempt + 1, delay=delay)
    return "retry"


def schedule_retry(request_id, *, attempt, delay):
    """One-off Django-Q schedule (persisted in the database, so a restart keeps it)."""
    from django_q.models import Schedule

    # get_or_create by name: a re-delivered task must not schedule the same attempt twice
    Schedule.objects.get_or_create(name=f"webhook {request_id} attempt {attempt}", defaults={
        "func": "generation.tasks.deliver_webhook",
        "args": repr(str(request_id)),
        "kwargs": repr({"attempt": attempt}),
        "schedule_type": Schedule.ONCE,
        "next_run": timezone.now() + datetime.timedelta(seconds=delay),
    })
