"""Rate limits: submits per user, token requests per client address.

Rates live in ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]`` (``submit``, ``auth``). Counts are kept
in Django's default cache, which settings point at Redis when ``REDIS_URL`` is set, so the
limit holds across web processes. If that cache does not answer, requests are let through
(logged): a rate limit must not turn a cache outage into failed submits.
"""

import logging

from rest_framework.throttling import AnonRateThrottle, UserRateThrottle

logger = logging.getLogger(__name__)


class _FailOpen:
    def allow_request(self, request, view):
        try:
            return super().allow_request(request, view)
        except Exception:  # the cache (Redis) is down or unreachable
            logger.warning("throttle cache unavailable; letting %s through", self.scope, exc_info=True)
            return True


class SubmitThrottle(_FailOpen, UserRateThrottle):
    """Submits and regenerates per user; answers 429 with ``Retry-After``."""

    scope = "submit"


class TokenThrottle(_FailOpen, AnonRateThrottle):
    """Password guesses at the token endpoint, per client address."""

    scope = "auth"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
