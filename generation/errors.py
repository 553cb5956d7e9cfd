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
