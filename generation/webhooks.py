"""Webhooks: which URLs may receive a finished request's signed POST, and its delivery.

A finished request's public representation (the API's JSON) is POSTed to its ``webhook_url``
with ``X-Genonaut-Signature: sha256=<hex HMAC-SHA256 of the raw body>`` keyed by the owner's
:class:`~generation.models.WebhookSecret`, and ``X-Genonaut-Timestamp`` (Unix seconds).
A failed delivery is retried with exponential backoff up to ``GENERATION["WEBHOOK_MAX_ATTEMPTS"]``
times through a one-off Django-Q schedule; :mod:`generation.lifecycle` queues the first delivery
when a request finishes. The URL is checked when submitted and again at each
delivery, which connects to the very address it checked (:mod:`generation.netguard`: public
addresses only, no second DNS answer, no redirects, no proxies, a total time cap).
"""

import hashlib
import hmac
import json
import logging
import time

from django.conf import settings
from django.utils import timezone

from generation import enqueue, metrics, netguard
from generation.netguard import FetchFailed, UrlRefused, check_public_url

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Genonaut-Signature"
TIMESTAMP_HEADER = "X-Genonaut-Timestamp"
BACKOFF_CAP_SECONDS = 3600


# the name the submit's validation catches: a refused webhook URL is a field error
WebhookUrlRefused = UrlRefused


def check_webhook_url(url):
    """Return ``url`` if it may receive webhooks: http(s), and a host whose every address is public
    (:func:`generation.netguard.check_public_url`); with ``GENERATION["WEBHOOK_ALLOW_PRIVATE"]`` on
    (tests, trusted networks) loopback and private addresses are allowed too."""
    check_public_url(url, allow_private=settings.GENERATION["WEBHOOK_ALLOW_PRIVATE"])
    return url


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
    """The raw bytes POSTed for ``request``: its public representation (relative URLs), the same
    document the API answers."""
    from generation.representation import request_representation

    return json.dumps(request_representation(request), separators=(",", ":"), default=str).encode()


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
        metrics.record_webhook("gave_up")
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
        metrics.record_webhook("delivered")
        return "delivered"
    if attempt >= settings.GENERATION["WEBHOOK_MAX_ATTEMPTS"]:
        logger.warning("webhook for %s failed on attempt %s (%s); giving up", request_id, attempt, problem)
        metrics.record_webhook("gave_up")
        return "gave_up"
    delay = backoff_seconds(attempt)
    logger.info("webhook for %s failed on attempt %s (%s); retrying in %ss", request_id, attempt, problem, delay)
    enqueue.schedule_webhook_retry(request_id, attempt=attempt + 1, delay=delay)
    metrics.record_webhook("retry")
    return "retry"


