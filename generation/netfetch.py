"""Fetching a URL a person gave (an input image): public addresses only, bounded in bytes and time.

The same address rules as webhooks (:mod:`generation.webhooks`): the host must resolve to public
addresses only, the address actually connected to is checked again, no redirects, no proxies.
"""

import time

import requests

from generation.webhooks import WebhookUrlRefused, _session, check_webhook_url

_CHUNK = 64 * 1024


class FetchRefused(Exception):
    """The URL cannot be fetched or its answer is not acceptable; ``status`` is 400 or 413."""

    def __init__(self, message, *, status=400):
        super().__init__(message)
        self.status = status


def fetch_public(url, *, max_bytes, timeout):
    """GET ``url`` and return its body; refuse non-public targets, non-2xx answers, more than
    ``max_bytes`` (413) or more than ``timeout`` seconds in all."""
    try:
        check_webhook_url(url)
    except WebhookUrlRefused as exc:
        raise FetchRefused(str(exc)) from exc
    deadline = time.monotonic() + timeout
    try:
        with _session() as session, session.get(url, stream=True, timeout=(timeout, timeout),
                                                allow_redirects=False) as response:
            if response.status_code != 200:
                raise FetchRefused(f"The URL answered HTTP {response.status_code}.")
            declared = response.headers.get("Content-Length", "")
            if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
                raise FetchRefused(f"The image is larger than {max_bytes} bytes.", status=413)
            body = bytearray()
            for chunk in response.iter_content(_CHUNK):
                body += chunk
                if len(body) > max_bytes:
                    raise FetchRefused(f"The image is larger than {max_bytes} bytes.", status=413)
                if time.monotonic() > deadline:
                    raise FetchRefused(f"The URL took longer than {timeout:g} s to answer.")
            return bytes(body)
    except WebhookUrlRefused as exc:
        raise FetchRefused(str(exc)) from exc
    except requests.RequestException as exc:
        raise FetchRefused(f"The URL could not be fetched ({type(exc).__name__}).") from exc
