"""The workflow registry: every kind of graph Genonaut can run, by slug (and version).

Built-in workflows are the modules of :mod:`generation.workflows.builtin`, one per type, each
exposing ``WORKFLOW`` (an instance of :class:`~generation.workflows.base.Workflow`); adding a
module adds a workflow. ``txt2img`` is the default: a submit without ``workflow`` runs it.
"""

import importlib
import pkgutil
from functools import lru_cache

from generation.errors import ParamsInvalid
from generation.workflows import builtin
from generation.workflows.base import InputFile, Requirements, Summary, Workflow, check_graph

__all__ = ["DEFAULT_WORKFLOW", "InputFile", "Requirements", "Summary", "UnknownWorkflow", "Workflow", "all_workflows",
           "check_graph", "get_workflow"]

DEFAULT_WORKFLOW = "txt2img"


class UnknownWorkflow(ParamsInvalid):
    """No workflow by that slug (or version): a 400 naming the ``workflow`` field."""

    def __init__(self, slug, version=None):
        what = f"{slug!r} version {version}" if version is not None else repr(slug)
        super().__init__({"workflow": [f"{what[:80]} is not a known workflow."]})
        self.slug = slug


@lru_cache(maxsize=1)
def _builtins():
    found = {}
    for module_info in pkgutil.iter_modules(builtin.__path__):
        module = importlib.import_module(f"{builtin.__name__}.{module_info.name}")
        workflow = getattr(module, "WORKFLOW", None)
        if isinstance(workflow, Workflow):
            if workflow.slug in found:
                raise RuntimeError(f"two built-in workflows are called {workflow.slug!r}")
            found[workflow.slug] = workflow
    return found


def all_workflows():
    """Every workflow on offer, the default first, then by name."""
    workflows = list(_builtins().values())
    return sorted(workflows, key=lambda w: (w.slug != DEFAULT_WORKFLOW, w.name.lower()))


def get_workflow(slug, version=None):
    """The workflow ``slug``; raises :class:`UnknownWorkflow`.

    Built-ins keep one current version; a request recorded under an older built-in version runs
    (and regenerates) with the current one, whose parameters stay compatible.
    """
    if not isinstance(slug, str):
        raise UnknownWorkflow(slug)
    workflow = _builtins().get(slug)
    if workflow is None:
        raise UnknownWorkflow(slug, version)
    return workflow
