"""Rate limits: submits per user, token requests per client address.

Rates live in ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]`` (``submit``, ``auth``). Hits are counted
in the database by :func:`generation.throttling.hit`, so a limit holds across every web process,
with or without Redis. Password guesses are limited separately, on every login path, by
:mod:`generation.login_guard`.
"""

from rest_framework.throttling import SimpleRateThrottle

from generation.throttling import client_address, hit


class DatabaseRateThrottle(SimpleRateThrottle):
    """A DRF throttle counted by :func:`generation.throttling.hit` (fixed windows); 429 with Retry-After."""

    def who(self, request):
        raise NotImplementedError

    def allow_request(self, request, view):
        if self.rate is None:
            return True
        hits, self.retry_after = hit(self.scope, self.who(request), period=self.duration)
        return hits <= self.num_requests

    def wait(self):
        return self.retry_after

    def get_ident(self, request):
        return client_address(request)


class SubmitThrottle(DatabaseRateThrottle):
    """Submits and regenerates per user."""

    scope = "submit"

    def who(self, request):
        return f"user:{request.user.pk}" if request.user.is_authenticated else self.get_ident(request)


class TokenThrottle(DatabaseRateThrottle):
    """Requests to the token endpoint per client address (right or wrong passwords alike)."""

    scope = "auth"

    def who(self, request):
        return self.get_ident(request)
