"""Reads of the model registry that other apps build on."""

from functools import reduce
from operator import or_

from django.conf import settings
from django.db.models import Q

from models_registry.models import AvailableModel


def models_missing_everywhere(refs):
    """Of ``refs`` (``[(type, name), …]``), those offered to users but present on no configured backend.

    For the submit check: a request naming one of these could run nowhere. A model whose
    ``backends`` is ``None`` (not known per backend) counts as present. A ref that is not offered
    (unknown, inactive, not present) is left out: validation reports those as unknown. Keeps the
    order of ``refs`` without repeats; one query.
    """
    refs = list(dict.fromkeys((str(model_type), name) for model_type, name in refs))
    if not refs:
        return []
    configured = {backend["url"] for backend in settings.COMFYUI_BACKENDS}
    offered = AvailableModel.objects.filter(reduce(or_, (Q(type=t, name=n) for t, n in refs)), is_active=True,
                                            is_present=True)
    presence = {(t, n): backends for t, n, backends in offered.values_list("type", "name", "backends")}
    return [ref for ref in refs if ref in presence and presence[ref] is not None
            and not configured.intersection(presence[ref])]
