"""The workflow registry: every kind of graph Genonaut can run, by slug (and version).

Built-in workflows are the modules of :mod:`generation.workflows.builtin`, one per type, each
exposing ``WORKFLOW`` (an instance of :class:`~generation.workflows.base.Workflow`); adding a
module adds a workflow. Operator-defined workflows are templates staff made from ComfyUI graphs
(:mod:`generation.workflows.templates`), one immutable row per version. ``txt2img`` is the
default: a submit without ``workflow`` runs it.
"""

import importlib
import pkgutil
from functools import lru_cache

from generation.errors import ParamsInvalid
from generation.workflows import builtin
from generation.workflows.base import InputFile, Requirements, Summary, Workflow, check_graph

__all__ = ["DEFAULT_WORKFLOW", "InputFile", "Requirements", "Summary", "UnknownWorkflow", "Workflow", "all_workflows",
           "check_graph", "get_builtin", "get_workflow", "may_run"]

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


def get_builtin(slug):
    return _builtins().get(slug)


def builtin_workflows():
    """The built-in workflows, the default first (no database needed)."""
    return sorted(_builtins().values(), key=lambda w: (w.slug != DEFAULT_WORKFLOW, w.name.lower()))


def all_workflows(user=None):
    """Every workflow on offer (to ``user``: enabled templates visible to them), the default first,
    then built-ins, then templates, by name."""
    from generation.models import WorkflowTemplate

    workflows = builtin_workflows()
    templates = WorkflowTemplate.objects.filter(is_enabled=True).prefetch_related("groups").order_by("name")
    for template in templates:
        if user is None or may_run(user, template):
            version = template.versions.order_by("-version").first()
            if version is not None:
                workflows.append(_template_workflow(template, version))
    return workflows


def may_run(user, template):
    """Whether ``user`` may run ``template``: staff always (a test run before it is enabled), others
    when it is enabled and visible to them."""
    if not getattr(user, "is_authenticated", False):
        return False
    if user.is_staff:
        return True
    if not template.is_enabled:
        return False
    visibility = template.Visibility
    if template.visibility == visibility.EVERYONE:
        return True
    if template.visibility == visibility.GROUPS:
        return template.groups.filter(pk__in=user.groups.values("pk")).exists()
    return False


_template_cache = {}  # a version row never changes; its template's name may (updated_at is in the key)


def _template_workflow(template, version):
    from generation.workflows.templates import TemplateWorkflow

    key = (template.pk, template.slug, version.pk, version.version, template.updated_at)
    cached = _template_cache.get(key)
    if cached is None:
        if len(_template_cache) > 512:
            _template_cache.clear()
        cached = _template_cache[key] = TemplateWorkflow(template, version)
    return cached


def get_workflow(slug, version=None, *, user=None):
    """The workflow ``slug`` (a template's ``version``, its latest when ``None``); raises
    :class:`UnknownWorkflow`. With ``user`` (a person submitting), a template must be enabled and
    visible to them, else it is as unknown as a misspelt slug.

    Built-ins keep one current version; a request recorded under an older built-in version runs
    (and regenerates) with the current one, whose parameters stay compatible.
    """
    if not isinstance(slug, str):
        raise UnknownWorkflow(slug)
    workflow = _builtins().get(slug)
    if workflow is not None:
        return workflow
    return _get_template(slug, version, user)


def _get_template(slug, version, user):
    from generation.models import WorkflowTemplate, WorkflowTemplateVersion

    template = WorkflowTemplate.objects.filter(slug=slug).first()
    if template is None or (user is not None and not may_run(user, template)):
        raise UnknownWorkflow(slug)
    versions = WorkflowTemplateVersion.objects.filter(template=template)
    row = versions.filter(version=version).first() if version is not None else versions.order_by("-version").first()
    if row is None:
        raise UnknownWorkflow(slug, version)
    return _template_workflow(template, row)


def workflows_for(pairs):
    """``{(slug, version): Workflow}`` for many requests at once (a list page): two queries at most."""
    from generation.models import WorkflowTemplateVersion

    found, wanted = {}, set()
    for slug, version in pairs:
        builtin_workflow = _builtins().get(slug)
        if builtin_workflow is not None:
            found[(slug, version)] = builtin_workflow
        else:
            wanted.add((slug, version))
    if wanted:
        rows = (WorkflowTemplateVersion.objects.select_related("template")
                .filter(template__slug__in={slug for slug, _ in wanted}, version__in={v for _, v in wanted}))
        for row in rows:
            if (row.template.slug, row.version) in wanted:
                found[(row.template.slug, row.version)] = _template_workflow(row.template, row)
    return found
