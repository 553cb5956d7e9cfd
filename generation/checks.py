"""System checks: refuse to start a configuration that cannot generate anything.

Run by every management command (``migrate``, ``qcluster``, ``runserver``, ``check --deploy``),
so a production host without a backend fails at its release step instead of queueing forever.
"""

from django.conf import settings
from django.core import checks

NO_BACKEND = "generation.E001"


@checks.register()
def check_backends_configured(app_configs=None, **kwargs):
    """With DEBUG off there is no simulator fallback: ``COMFYUI_URL`` must name a backend."""
    if settings.DEBUG or settings.COMFYUI_BACKENDS:
        return []
    return [checks.Error(
        "COMFYUI_URL is not set: with DEBUG off Genonaut has no ComfyUI backend, so every request would wait "
        "forever.",
        hint="Set COMFYUI_URL to your ComfyUI server(s), e.g. http://gpu1:8188;capacity=2 (docs/deploy.md). The "
             "bundled simulator is a development tool, used only with DEBUG=1.",
        id=NO_BACKEND)]
