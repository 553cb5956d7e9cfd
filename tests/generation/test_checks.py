"""generation.checks: with DEBUG off and no backend configured, Django's system checks fail."""

from django.core import checks

from generation.checks import NO_BACKEND


def errors_named(error_id):
    return [message for message in checks.run_checks() if message.id == error_id]


def test_production_without_a_backend_is_an_error(settings):
    settings.DEBUG = False
    settings.COMFYUI_BACKENDS = []
    [error] = errors_named(NO_BACKEND)
    assert error.level == checks.ERROR
    assert "COMFYUI_URL" in error.msg and "COMFYUI_URL" in error.hint


def test_a_configured_backend_or_debug_passes(settings):
    settings.DEBUG = False
    settings.COMFYUI_BACKENDS = [{"url": "http://gpu1:8188", "capacity": 2}]
    assert errors_named(NO_BACKEND) == []
    settings.DEBUG = True
    settings.COMFYUI_BACKENDS = []  # development: the simulator stands in
    assert errors_named(NO_BACKEND) == []
