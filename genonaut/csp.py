"""The Content-Security-Policy header on every response (``settings.CONTENT_SECURITY_POLICY``).

The pages use no inline script, style or event handler and nothing from other sites, so the
policy is ``'self'`` only. One exception is computed, not configured: with S3 storage, images are
answered by a redirect to a signed URL on the storage's own host, so that origin is added to
``img-src`` (signing a URL is local, no request is made).
"""

import logging
from urllib.parse import urlsplit

from django.conf import settings
from django.core.files.storage import default_storage

logger = logging.getLogger(__name__)


def storage_origin():
    """The origin image URLs redirect to, or "" when the storage serves through this site.
    Raises what the storage raises when it cannot sign (e.g. no S3 credentials)."""
    parts = urlsplit(default_storage.url("generations/csp-origin"))
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else ""


def policy(origin=""):
    directives = {name: list(sources) for name, sources in settings.CONTENT_SECURITY_POLICY.items()}
    if origin:
        directives.setdefault("img-src", ["'self'"]).append(origin)
    return "; ".join(f"{name} {' '.join(sources)}" for name, sources in directives.items())


class ContentSecurityPolicyMiddleware:
    """Adds the policy to every response that does not set its own."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.header = None

    def __call__(self, request):
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = self.header or self._build()
        return response

    def _build(self):
        """Built on first use (the storage is configured by then); a storage that cannot sign yet
        must not fail the page: the policy goes out without its origin and is built again next time."""
        try:
            self.header = policy(storage_origin())
        except Exception:
            logger.warning("could not learn the storage's origin for img-src; images may be blocked", exc_info=True)
            return policy()
        return self.header
