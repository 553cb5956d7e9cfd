import time

import pytest

from generation.models import GenerationRequest


@pytest.fixture
def wait_until():
    """``wait_until(predicate, timeout=…, what=…)``: poll until ``predicate()`` is truthy; return its value."""

    def wait(predicate, *, timeout=10.0, interval=0.02, what="condition"):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not met within {timeout}s")
            time.sleep(interval)

    return wait


@pytest.fixture
def row_of():
    return lambda request: GenerationRequest.objects.get(pk=request.pk)


@pytest.fixture
def slow(valid_params):
    """Parameters of a job that samples for about ``steps × step_time`` seconds."""

    def make(steps=40, **extra):
        return {**valid_params, "sampler_params": {**valid_params["sampler_params"], "steps": steps}, **extra}

    return make
