"""Errors of the generation domain. The API and the UI turn them into responses in one place each."""


class GenerationError(Exception):
    """Base class: ``code`` is stable (API clients match on it), ``message`` is for people."""

    code = "error"
    status = 400

    def __init__(self, message="", **detail):
        super().__init__(message or self.__class__.__doc__)
        self.message = message or (self.__class__.__doc__ or "").strip()
        self.detail = detail


class ParamsInvalid(GenerationError):
    """The request parameters are invalid."""

    code = "invalid"
    status = 400

    def __init__(self, fields, message="The request parameters are invalid."):
        super().__init__(message)
        self.fields = fields  # {"sampler_params.steps": ["…"], …}


class TooManyActiveRequests(GenerationError):
    """You already have the maximum number of unfinished requests."""

    code = "too_many_active_requests"
    status = 429

    def __init__(self, limit, retry_after=10):
        super().__init__(f"You already have {limit} unfinished requests; wait for some to finish.")
        self.limit = limit
        self.retry_after = retry_after


class NotCancellable(GenerationError):
    """The request has already finished and cannot be cancelled."""

    code = "not_cancellable"
    status = 409


class LoginLocked(GenerationError):
    """Too many failed logins for this account or from this address."""

    code = "login_locked"
    status = 429

    def __init__(self, retry_after):
        minutes = max(1, -(-retry_after // 60))
        super().__init__("Too many failed logins for this account or from this address; "
                         f"try again in {minutes} minute{'s' if minutes != 1 else ''}.")
        self.retry_after = retry_after


class IdempotencyKeyReused(GenerationError):
    """This Idempotency-Key was already used for a different request."""

    code = "idempotency_key_reused"
    status = 422

    def __init__(self, header):
        super().__init__(f"This {header} was already used with a different body or target; "
                         "use a new key for a new request.")
        self.fields = {header: [self.message]}
