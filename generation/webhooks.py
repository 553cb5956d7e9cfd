"""Webhooks: which URLs may receive a finished request's signed POST.

Delivery (signing with the per-user secret, retries with backoff) lives here too; see
``deliver_webhook``.
"""

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings


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


def request_finished(request_id):
    """Called (on commit) each time a request reaches a terminal state: queue its webhook, if any."""
    from django_q.tasks import async_task

    from generation.models import GenerationRequest

    if GenerationRequest.objects.filter(pk=request_id).exclude(webhook_url="").exists():
        async_task("generation.tasks.deliver_webhook", str(request_id), attempt=1)
