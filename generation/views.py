"""Server-rendered pages: thin over ``services`` (writes) and ``selectors`` (reads).

Every page needs a login; another user's request or image id answers 404, exactly like the API.
State changes (submit, cancel, regenerate, delete) are POSTs with CSRF.
"""

import hashlib
import json
import re
import uuid
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from generation import inputs, selectors, services
from generation.errors import GenerationError, NotCancellable, ParamsInvalid
from generation.forms import GenerateForm, HistoryFilterForm, input_image_field
from generation.idempotency import SUBMIT, Idempotency
from generation.models import InputImage
from generation.states import Status
from generation.storage import OUTPUT_KINDS
from generation.workflows import DEFAULT_WORKFLOW, UnknownWorkflow, all_workflows, get_workflow, workflows_for
from generation.workflows.fields import Image
from models_registry.models import ModelType, offered_models

HISTORY_PAGE_SIZE = 24
TILES_PER_FETCH = HISTORY_PAGE_SIZE  # the live History page asks for at most a page of tiles at once


def _get_request_or_404(user, request_id):
    found = selectors.request_for_user(user=user, request_id=request_id)
    if found is None:
        raise Http404("No such request.")
    return found


def _back(request, default):
    """Where a POST action returns to: the page it came from when that is ours, else ``default``."""
    target = request.POST.get("next") or request.GET.get("next")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                                  require_https=request.is_secure()):
        return target
    return default


def _form_idempotency(request, form):
    """One request per rendered form and content: a double click posts the same key and fields and
    gets the first request back; the same form changed (e.g. after the Back button) is a new one."""
    rendered = request.POST.get("idempotency_key", "")
    if not rendered:
        return None
    data = form.to_data()
    content = json.dumps([rendered[:100], data], sort_keys=True, default=str)
    key = "form:" + hashlib.sha256(content.encode()).hexdigest()
    return Idempotency.of(operation=SUBMIT, key=key, body=data)


VIDEO_EXTENSIONS = frozenset(kind for kind, is_image in OUTPUT_KINDS.items() if not is_image)


def _thumbnail_url(generation, index, size, *, fallback):
    sizes = generation.thumbnails[index] if index < len(generation.thumbnails or []) else {}
    if size not in (sizes or {}):
        return fallback  # no thumbnail of that size was made: the browser scales the image
    return reverse("generation-thumbnail", kwargs={"pk": generation.pk, "index": index, "size": size})


def image_links(generation):
    """URLs of each stored image of ``generation`` (served by the API's owner-checked image views)."""
    links = []
    for n, name in enumerate(generation.outputs or []):
        url = reverse("generation-image", kwargs={"pk": generation.pk, "index": n})
        links.append({"index": n, "url": url, "download": f"{url}?download=1",
                      "video": name.rsplit(".", 1)[-1] in VIDEO_EXTENSIONS,  # shown with <video>: no thumbnail
                      "thumbnail": _thumbnail_url(generation, n, "medium", fallback=url),
                      "small": _thumbnail_url(generation, n, "small", fallback=url),
                      "viewer": reverse("image-viewer", args=[generation.pk, n])})
    return links


def _status_context(generation):
    """What the request card and its live partial show."""
    node_type = ((generation.graph or {}).get(generation.current_node) or {}).get("class_type", "")
    return {"generation": generation, "images": image_links(generation),
            "queue_position": selectors.queue_position(generation),
            "waiting_reason": selectors.waiting_reason(generation),
            "percent": round(100 * (generation.progress or 0)),
            "duration": (generation.finished_at - generation.started_at).total_seconds()
            if generation.finished_at and generation.started_at else None,
            "node_label": f"{node_type} (node {generation.current_node})" if node_type else generation.current_node}


def _workflow_or_default(slug, user):
    try:
        return get_workflow(slug or DEFAULT_WORKFLOW, user=user)
    except UnknownWorkflow:
        return get_workflow(DEFAULT_WORKFLOW)


def _take_uploads(request, form):
    """Store the images chosen in the form's file inputs; each becomes its control's input id, so a
    re-shown form keeps it. Returns ``False`` (with the error at its field) when one is refused."""
    ok = True
    for item in form.workflow.parameters:
        upload = request.FILES.get(item.name) if isinstance(item, Image) else None
        if upload is None:
            continue
        try:
            record, _ = inputs.store_upload(user=request.user, upload=upload,
                                            kind=InputImage.Kind.MASK if item.is_mask else InputImage.Kind.IMAGE)
        except inputs.InputRefused as exc:
            form.errors.setdefault(item.name, []).append(str(exc))
            ok = False
        else:
            form.set_value(item.name, str(record.pk))
    return ok


@login_required
@require_http_methods(["GET", "POST"])
def generate(request):
    """The Generate form for one workflow; a valid POST stores the request and goes to its live card."""
    status = 200
    if request.method == "POST":
        workflow = _workflow_or_default(request.POST.get("workflow"), request.user)
        form = GenerateForm(workflow, request.POST, user=request.user)
        if not _take_uploads(request, form):
            status = 400
        else:
            try:
                generation, _ = services.submit_generation(user=request.user, data=form.to_data(),
                                                           idempotency=_form_idempotency(request, form))
            except ParamsInvalid as exc:
                form.add_params_errors(exc.fields)
                status = 400
            except GenerationError as exc:
                form.non_field_errors.append(exc.message)
                status = exc.status
            else:
                return redirect("request-detail", generation.pk)
    else:
        source = None
        if request.GET.get("from"):
            source = selectors.request_for_user(user=request.user, request_id=request.GET["from"])
        if source is not None:
            try:
                form = GenerateForm.from_request(source, same_seed=request.GET.get("seed") == "same",
                                                 user=request.user)
            except UnknownWorkflow:
                source = None
        if source is None:
            form = GenerateForm(_workflow_or_default(request.GET.get("workflow"), request.user), user=request.user)
            _use_as_input(request, form)
    form.previews = _input_previews(request.user, form)
    return render(request, "generation/generate.html",
                  {"form": form, "idempotency_key": request.POST.get("idempotency_key", "")[:100] or uuid.uuid4(),
                   "no_backend_reachable": not selectors.reachable_backends()},
                  status=status)


def _use_as_input(request, form):
    """``?input=<request id>/<n>`` ("use as input" on a result) fills the workflow's first image control."""
    reference = request.GET.get("input", "")
    target = input_image_field(form.workflow)
    if target is not None and reference:
        form.values[target.name] = reference[:100]


def _input_previews(user, form):
    """``{control name: URL}`` of the images the form's image controls already carry."""
    previews = {}
    for item in form.workflow.parameters:
        if not isinstance(item, Image):
            continue
        value = form.values.get(item.name)
        if isinstance(value, dict):
            value = f"{value.get('request')}/{value.get('index')}"
        if not isinstance(value, str) or not value:
            continue
        if "/" in value:
            request_id, _, index = value.partition("/")
            source = selectors.request_for_user(user=user, request_id=request_id)
            if source is not None and source.user_id == user.pk and index.isdigit() and \
                    int(index) < len(source.outputs or []):
                previews[item.name] = reverse("generation-image", kwargs={"pk": source.pk, "index": int(index)})
            continue
        try:
            record = inputs.inputs_of(user).filter(pk=uuid.UUID(value)).first()
        except ValueError:
            record = None
        if record is not None:
            previews[item.name] = reverse("input-image", kwargs={"pk": record.pk})
    return previews


@login_required
def request_detail(request, request_id):
    """One request's card: status, live progress, cancel, images or the failure reason."""
    generation = _get_request_or_404(request.user, request_id)
    return render(request, "generation/request_detail.html",
                  {**_status_context(generation), **_parameters_context(generation),
                   "events_url": reverse("generation-events", args=[generation.pk])})


@never_cache
@login_required
def request_status(request, request_id):
    """The card's live part alone: fetched by the page when its event stream reports a new status,
    or every second while the request is active when the stream is not available."""
    generation = _get_request_or_404(request.user, request_id)
    return render(request, "generation/partials/request_status.html", _status_context(generation))


@login_required
@require_POST
def cancel(request, request_id):
    generation = _get_request_or_404(request.user, request_id)
    try:
        services.cancel_generation(request=generation)
    except NotCancellable as exc:
        messages.info(request, exc.message)
    else:
        messages.success(request, "Request cancelled.")
    return redirect(_back(request, reverse("request-detail", args=[generation.pk])))


@login_required
@require_POST
def regenerate(request, request_id):
    """Submit the same parameters again: the same seed (``seed=same``) or a new random one."""
    generation = _get_request_or_404(request.user, request_id)
    try:
        new, _ = services.regenerate_generation(request=generation, user=request.user,
                                                same_seed=request.POST.get("seed") == "same")
    except ParamsInvalid as exc:
        problems = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.fields.items()).rstrip(".")
        messages.error(request, f"Cannot regenerate: {problems}. Adjust the settings and submit again.")
        return redirect(f"{reverse('generate')}?from={generation.pk}")
    except GenerationError as exc:
        messages.error(request, exc.message)
        return redirect(_back(request, reverse("request-detail", args=[generation.pk])))
    return redirect("request-detail", new.pk)


@login_required
@require_http_methods(["GET", "POST"])
def delete(request, request_id):
    """Delete a finished request with its files (an active one is cancelled first).

    The POST must carry ``confirm=yes`` (added by the confirmation dialog); without it, or on
    GET, the confirmation page is shown, so nothing is deleted by one stray click.
    """
    generation = _get_request_or_404(request.user, request_id)
    own_page = reverse("request-detail", args=[generation.pk])
    if request.method == "GET" or request.POST.get("confirm") != "yes":
        return render(request, "generation/confirm_delete.html",
                      {"generation": generation, "next": _back(request, reverse("history"))})
    try:
        remaining = services.delete_generation(request=generation)
    except GenerationError as exc:
        messages.error(request, exc.message)
        return redirect("request-detail", generation.pk)
    if remaining is not None:
        messages.info(request, "The request was still active, so it was cancelled. Delete it again to remove it.")
        return redirect("request-detail", generation.pk)
    messages.success(request, "Request and its images deleted.")
    target = _back(request, reverse("history"))
    if target.startswith(own_page):  # its own pages are gone
        target = reverse("history")
    return redirect(target)


class LookaheadPaginator(Paginator):
    """Counts rows only up to a few pages past page ``number`` (``more`` says whether it stopped
    there): the page links work as before, and a history of a million requests costs a bounded
    count instead of counting every row on each page view."""

    LOOKAHEAD_PAGES = 20

    def __init__(self, object_list, per_page, *, number):
        super().__init__(object_list, per_page)
        self.bound = (max(1, number) + self.LOOKAHEAD_PAGES) * per_page
        self.more = False

    @cached_property
    def count(self):
        counted = self.object_list[:self.bound + 1].count()
        self.more = counted > self.bound
        return min(counted, self.bound)


@login_required
def history(request):
    """The person's requests: grid or list, filtered (prompt words, status, workflow, checkpoint,
    dates), sorted by date, paginated."""
    workflows = all_workflows(request.user)
    filters = HistoryFilterForm(request.GET, workflows=workflows)
    requests = selectors.history_for_user(request.user, filters=filters.filters(), newest_first=filters.newest_first)
    number = request.GET.get("page", "")
    number = int(number) if re.fullmatch(r"[0-9]{1,8}", number) else 1  # ASCII: int("²") raises
    page = LookaheadPaginator(requests, HISTORY_PAGE_SIZE, number=number).get_page(number)
    query = request.GET.copy()
    query.pop("page", None)
    return render(request, "generation/history.html", {
        "page": page, "cards": history_cards(page.object_list, workflows=workflows), "filters": filters,
        "query": query.urlencode(), "events_url": reverse("generation-all-events"),
        "has_any": filters.is_filtered or page.paginator.count > 0 or
        selectors.history_for_user(request.user).exists()})


@never_cache
@login_required
def history_tiles(request):
    """History tiles alone (``?id=<uuid>&id=…``, the person's own requests; unknown ids are left out),
    fetched by the History page when its event stream reports that a request changed state.
    ``next`` is the History address the tiles' delete buttons return to."""
    ids = []
    for value in request.GET.getlist("id")[:TILES_PER_FETCH]:
        try:
            ids.append(uuid.UUID(value))
        except ValueError:
            continue
    requests = selectors.history_for_user(request.user).filter(pk__in=ids)
    back_to = _back(request, reverse("history"))
    return render(request, "generation/partials/history_tiles.html", {
        "cards": history_cards(requests, workflows=all_workflows(request.user)), "back_to": back_to})


def history_cards(requests, *, workflows):
    """What each History tile shows: the request, its workflow, images, queue position, and the
    ``workflows`` (those the person may run) that take its first image as input. A fixed number of
    queries for the whole page."""
    requests = list(requests)
    positions = selectors.queue_positions(requests)
    ran = workflows_for({(g.workflow_slug, g.workflow_version) for g in requests})
    return [{"generation": g, "images": image_links(g), "queue_position": positions.get(g.pk),
             "workflow_name": getattr(ran.get((g.workflow_slug, g.workflow_version)), "name", g.workflow_slug),
             "percent": round(100 * (g.progress or 0)), "use_as_input": use_as_input_links(g, 0, workflows=workflows)}
            for g in requests]


def use_as_input_links(generation, index, *, workflows):
    """``[{"workflow", "url"}]``: Generate pages of ``workflows`` that take image ``index`` of
    ``generation`` as their input."""
    if generation.status != Status.COMPLETED or not 0 <= index < len(generation.outputs or []):
        return []
    reference = f"{generation.pk}/{index}"
    generate = reverse("generate")
    return [{"workflow": workflow, "url": f"{generate}?{urlencode({'workflow': workflow.slug, 'input': reference})}"}
            for workflow in workflows if input_image_field(workflow) is not None]


@login_required
def image_viewer(request, request_id, index):
    """One image full size, its parameters (copyable), download, previous/next, regenerate, delete."""
    generation = _get_request_or_404(request.user, request_id)
    if not 0 <= index < len(generation.outputs or []):
        raise Http404("No such image.")
    previous, following = selectors.adjacent_images(request=generation, index=index)
    return render(request, "generation/image_viewer.html", {
        "generation": generation, "image": image_links(generation)[index], "index": index,
        "count": len(generation.outputs),
        "previous": reverse("image-viewer", args=[previous[0].pk, previous[1]]) if previous else None,
        "next": reverse("image-viewer", args=[following[0].pk, following[1]]) if following else None,
        "parameters_json": json.dumps({"workflow": generation.workflow_slug, **(generation.params or {})}, indent=2),
        "parameters_text": generation.workflow.a1111_parameters(generation.params),
        "use_as_input": use_as_input_links(generation, index, workflows=all_workflows(request.user))
        if generation.user_id == request.user.pk else [],
        **_parameters_context(generation),
    })


def _parameters_context(generation):
    """The request's parameters as labelled rows, and its input images, for the detail pages."""
    workflow = generation.workflow
    records = {str(record.pk): record for record in generation.inputs.all()}
    input_images = [{"label": next((f.label for f in workflow.parameters if f.name == path), path),
                     "url": reverse("input-image", kwargs={"pk": input_id}), "record": records[str(input_id)]}
                    for path, input_id in workflow.input_files(generation.params or {}).items()
                    if str(input_id) in records]
    image_labels = {f.label for f in workflow.parameters if isinstance(f, Image)}
    rows = [(label, value) for label, value in workflow.detail_rows(generation.params or {})
            if label not in image_labels and label != "Prompt"]
    return {"workflow": workflow, "parameter_rows": rows, "input_images": input_images}


@login_required
def models_page(request):
    """The checkpoints and LoRAs people may choose, with what helps them choose."""
    return render(request, "generation/models.html", {
        "checkpoints": offered_models(ModelType.CHECKPOINT), "loras": offered_models(ModelType.LORA)})


@login_required
def backends_page(request):
    """Staff only: each ComfyUI backend's health, load and recent failures (others get 404)."""
    if not request.user.is_staff:
        raise Http404("No such page.")
    from generation.backends import backend_overview

    backends = backend_overview()
    healthy = sum(1 for backend in backends if backend["healthy"])
    for backend in backends:  # where a down backend's work goes meanwhile, if anywhere
        backend["others_in_rotation"] = healthy - (1 if backend["healthy"] else 0)
    return render(request, "generation/backends.html",
                  {"backends": backends, "events_url": reverse("backend-events")})
