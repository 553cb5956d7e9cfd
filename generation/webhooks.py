"""Webhooks: which URLs may receive a finished request's signed POST, and its delivery.

A finished request's public representation (the API's JSON) is POSTed to its ``webhook_url``
with ``X-Genonaut-Signature: sha256=<hex HMAC-SHA256 of the raw body>`` keyed by the owner's
:class:`~generation.models.WebhookSecret`, and ``X-Genonaut-Timestamp`` (Unix seconds).
A failed delivery is retried with exponential backoff up to ``GENERATION["WEBHOOK_MAX_ATTEMPTS"]``
times through a one-off Django-Q schedule. :mod:`generation.lifecycle` queues the first delivery
when a request finishes. The URL is checked again at delivery time and the
address actually connected to is checked too (DNS rebinding); redirects are never followed.
"""

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.utils import timezone
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from generation import enqueue

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Genonaut-Signature"
TIMESTAMP_HEADER = "X-Genonaut-Timestamp"
BACKOFF_CAP_SECONDS = 3600


class WebhookUrlRefused(ValueError):
    """The URL cannot receive webhooks (scheme, host or address not allowed)."""


def _is_public(address):
    ip = ipaddress.ip_address(address)
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
                or ip.is_unspecified)


def check_webhook_url(url, *, resolve=socket.getaddrinfo):
    """Return ``url`` if it is an http(s) URL whose host resolves to allowed addresses.

    Loopback, private and link-local addresses are refused unless
    ``GENERATION["WEBHOOK_ALLOW_PRIVATE"]`` is on (tests turn it on for a receiver on 127.0.0.1).
    """
    if len(url) > 2000:
        raise WebhookUrlRefused("The URL is longer than 2000 characters.")
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"}:
        raise WebhookUrlRefused("Only http and https URLs can receive webhooks.")
    if not parts.hostname:
        raise WebhookUrlRefused("The URL has no host.")
    if parts.username or parts.password:
        raise WebhookUrlRefused("Credentials in the URL are not allowed.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise WebhookUrlRefused("The URL has an invalid port.") from exc
    if settings.GENERATION["WEBHOOK_ALLOW_PRIVATE"]:
        return url
    try:
        infos = resolve(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookUrlRefused(f"The host {parts.hostname!r} does not resolve.") from exc
    if not infos or not all(_is_public(info[4][0]) for info in infos):
        raise WebhookUrlRefused("Webhooks to loopback, private or link-local addresses are not allowed.")
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


class _PeerCheck:
    """Refuse the socket when the address actually connected to is not public (DNS rebinding)."""

    def _new_conn(self):
        sock = super()._new_conn()
        address = sock.getpeername()[0]
        if not _is_public(address.split("%", 1)[0]):
            sock.close()
            raise WebhookUrlRefused(f"{self.host} resolved to a non-public address at delivery time.")
        return sock


class _PublicHTTPConnection(_PeerCheck, HTTPConnection):
    pass


class _PublicHTTPSConnection(_PeerCheck, HTTPSConnection):
    pass


class _PublicHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PublicHTTPConnection


class _PublicHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PublicHTTPSConnection


class _PublicOnlyAdapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _PublicHTTPPool, "https": _PublicHTTPSPool}


def _session():
    session = requests.Session()
    session.trust_env = False  # no proxies from the environment: we check the address we connect to
    session.max_redirects = 0
    if not settings.GENERATION["WEBHOOK_ALLOW_PRIVATE"]:
        adapter = _PublicOnlyAdapter(max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    return session


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
    try:
        check_webhook_url(request.webhook_url)
    except WebhookUrlRefused as exc:
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
        with _session() as session:
            response = session.post(request.webhook_url, data=body, headers=headers, timeout=(timeout, timeout),
                                    allow_redirects=False)
            response.close()
        problem = None if 200 <= response.status_code < 300 else f"answered HTTP {response.status_code}"
    except WebhookUrlRefused as exc:
        logger.warning("webhook for %s refused at connect: %s", request_id, exc)
        return "gave_up"
    except requests.RequestException as exc:
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
    enqueue.schedule_webhook_retry(request_id, attempt=attempt + 1, delay=delay)
    return "retry"


