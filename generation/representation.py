"""A request as its owner sees it: the one document the API answers and webhooks POST.

Built by hand from the row (DRF's per-field machinery cost ~0.5 ms a row, more than a page's
query); ``generation.api.serializers.GenerationRequestSerializer`` describes it for OpenAPI.
"""

from django.urls import reverse
from rest_framework.fields import DateTimeField

from generation.selectors import queue_position as compute_queue_position
from generation.selectors import waiting_reason as compute_waiting_reason
from generation.states import Status

UNSET = object()

# keys of the document itself; a workflow parameter of the same name appears only under "params"
RESERVED = frozenset({
    "id", "user", "status", "progress", "queue_position", "waiting_reason", "workflow", "params", "inputs", "prompt",
    "checkpoint_model", "width", "height", "batch_size", "webhook_url", "backend", "backend_stop", "attempts", "error",
    "error_detail", "images", "regenerated_from", "created_at", "queued_at", "started_at", "finished_at",
    "updated_at"})

_DATETIME = DateTimeField()


def request_representation(generation, *, absolute=None, queue_position=UNSET, waiting_reason=UNSET,
                           workflows=None):
    """The document for ``generation``.

    ``absolute`` turns a path into a full URL (``request.build_absolute_uri``); without it, URLs are
    relative. ``queue_position``, ``waiting_reason`` and ``workflows`` (``{(slug, version): Workflow}``)
    may be given when a list computed them for a whole page.
    The workflow's parameters are under ``params``, and also at the top level (where they do not
    clash with the document's own keys), so v1 clients that read ``sampler_params`` keep working.
    """
    obj = generation
    link = absolute or (lambda path: path)
    prefix = link(reverse("generation-detail", kwargs={"pk": obj.pk}))
    params = obj.params or {}
    workflow = _workflow(obj, workflows)
    document = {key: value for key, value in params.items() if key not in RESERVED}
    document.update({
        "id": str(obj.pk),
        "user": str(obj.user.get_username()),
        "status": str(obj.status),
        "progress": {"fraction": obj.progress, "current_node": obj.current_node, "step": obj.current_step,
                     "total_steps": obj.total_steps},
        "queue_position": compute_queue_position(obj) if queue_position is UNSET else queue_position,
        "waiting_reason": waiting_reason_data(
            compute_waiting_reason(obj) if waiting_reason is UNSET else waiting_reason),
        "workflow": {"slug": obj.workflow_slug, "version": obj.workflow_version,
                     "name": workflow.name if workflow is not None else obj.workflow_slug},
        "params": params,
        "inputs": _inputs(obj, workflow, link),
        "prompt": obj.prompt,
        "checkpoint_model": obj.checkpoint_model,
        "width": obj.width,
        "height": obj.height,
        "batch_size": obj.batch_size,
        "webhook_url": obj.webhook_url,
        "backend": obj.backend,
        "backend_stop": obj.backend_stop,
        "attempts": obj.attempts,
        "error": obj.error,
        "error_detail": obj.error_detail,
        "images": _images(obj, prefix),
        "regenerated_from": obj.regenerated_from_id,
        "created_at": _datetime(obj.created_at),
        "queued_at": _datetime(obj.queued_at),
        "started_at": _datetime(obj.started_at),
        "finished_at": _datetime(obj.finished_at),
        "updated_at": _datetime(obj.updated_at),
    })
    return document


def waiting_reason_data(reason):
    """A :func:`~generation.selectors.waiting_reasons` entry as documents carry it (``retry_at`` written as
    the API writes times)."""
    if reason is None:
        return None
    return {**reason, "retry_at": _datetime(reason["retry_at"])} if "retry_at" in reason else dict(reason)


def _workflow(obj, workflows):
    """The request's workflow, or ``None`` if it no longer exists (a deleted template)."""
    from generation.workflows import UnknownWorkflow, get_workflow

    key = (obj.workflow_slug, obj.workflow_version)
    if workflows is not None and key in workflows:
        return workflows[key]
    try:
        return get_workflow(*key)
    except UnknownWorkflow:
        return None


def _inputs(obj, workflow, link):
    """The input images the parameters name, with the URL that serves each to its owner."""
    wanted = workflow.input_files(obj.params or {}) if workflow is not None else {}
    if not wanted:
        return []
    records = {str(record.pk): record for record in obj.inputs.all()}
    return [{"parameter": path, "id": str(input_id), "kind": records[str(input_id)].kind,
             "width": records[str(input_id)].width, "height": records[str(input_id)].height,
             "url": link(reverse("input-image", kwargs={"pk": input_id}))}
            for path, input_id in wanted.items() if str(input_id) in records]


def _images(obj, prefix):
    if obj.status != Status.COMPLETED or not obj.outputs:
        return []
    images = []
    for index, _path in enumerate(obj.outputs):
        thumbs = obj.thumbnails[index] if index < len(obj.thumbnails or []) else {}
        url = f"{prefix}images/{index}/"
        images.append({"index": index, "url": url, "download_url": f"{url}?download=1",
                       "thumbnails": {size: f"{url}thumbnail/{size}/" for size in (thumbs or {})}})
    return images


def _datetime(value):
    return None if value is None else _DATETIME.to_representation(value)
