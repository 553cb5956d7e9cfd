"""Rate limits: submits per user, token requests per client address.

Rates live in ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]`` (``submit``, ``auth``). Counts are kept
in Django's default cache, so with several web processes give them a shared cache (Redis).
"""

from rest_framework.throttling import AnonRateThrottle, UserRateThrottle


class SubmitThrottle(UserRateThrottle):
    """Submits and regenerates per user; answers 429 with ``Retry-After``."""

    scope = "submit"


class TokenThrottle(AnonRateThrottle):
    """Password guesses at the token endpoint, per client address."""

    scope = "auth"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
