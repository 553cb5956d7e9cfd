"""API views: thin — parse input, call one service or selector, render the result.

Writes go through :mod:`generation.services`, reads through :mod:`generation.selectors`,
image bytes through :mod:`generation.serving`; errors become JSON in
:mod:`generation.api.errors`. Another user's request id answers 404, never 403.
"""

from django.contrib.auth import authenticate
from django.http import Http404, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.authtoken.models import Token
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import AllowAny, IsAdminUser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from generation import inputs, services, serving
from generation.api.errors import error_body
from generation.api.filters import ModelFilter, RequestFilter
from generation.api.pagination import RequestCursorPagination
from generation.api.parsers import BoundedFormParser, BoundedJSONParser, BoundedMultiPartParser
from generation.api.serializers import (
    AvailableModelSerializer,
    BackendSerializer,
    ErrorSerializer,
    GenerateSerializer,
    GenerationRequestSerializer,
    InputImageSerializer,
    InputUploadResultSerializer,
    InputUploadSerializer,
    RegenerateSerializer,
    TemplateCreateSerializer,
    TemplateSerializer,
    TemplateUpdateSerializer,
    TokenRequestSerializer,
    TokenSerializer,
    WebhookSecretSerializer,
    WorkflowSerializer,
)
from generation.api.throttles import SubmitThrottle, TokenThrottle
from generation.errors import LoginLocked
from generation.idempotency import HEADER as IDEMPOTENCY_HEADER
from generation.idempotency import REGENERATE, SUBMIT, Idempotency
from generation.live import log as live_log
from generation.live import previews as live_previews
from generation.live.streams import BackendsStream, RequestStream, async_frames, sync_frames
from generation.login_guard import locked_for
from generation.models import WorkflowTemplate
from generation.selectors import queue_positions, request_for_user, requests_visible_to, waiting_reasons
from generation.states import Status
from generation.webhooks import rotate_webhook_secret, webhook_secret_for
from generation.workflows import UnknownWorkflow, all_workflows, get_builtin, get_workflow, templates, workflows_for
from generation.workflows.fields import Context
from models_registry.models import AvailableModel

UUID_PATTERN = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
TRUE_VALUES = {"1", "true", "yes", "on"}

_ERR = OpenApiResponse(ErrorSerializer, description="Error (see the `error.code`)")
AUTH_ERRORS = {401: _ERR}
READ_ERRORS = {400: _ERR, 401: _ERR, 404: _ERR}
IDEMPOTENCY_PARAM = OpenApiParameter(
    IDEMPOTENCY_HEADER, OpenApiTypes.STR, OpenApiParameter.HEADER, required=False,
    description="Any 1 to 255 printable characters, kept per user and operation for IDEMPOTENCY_KEY_HOURS (24 by "
                "default). Repeating it with the same body answers the original request (201, Idempotent-Replayed: "
                "true) instead of creating another; with a different body, 422.")
REPLAYED_HEADER = "Idempotent-Replayed"

IMAGE_PARAMS = [
    OpenApiParameter("index", OpenApiTypes.INT, OpenApiParameter.PATH, description="0-based image number"),
    OpenApiParameter("download", OpenApiTypes.BOOL, OpenApiParameter.QUERY, required=False,
                     description="Send as an attachment with a file name"),
]
IMAGE_RESPONSES = {
    (200, "image/png"): OpenApiResponse(OpenApiTypes.BINARY, description="The image"),
    (206, "image/png"): OpenApiResponse(OpenApiTypes.BINARY, description="The requested byte range"),
    302: OpenApiResponse(description="S3 storage: redirect to a short-lived signed URL"),
    304: OpenApiResponse(description="Not modified (If-None-Match / If-Modified-Since)"),
    401: _ERR, 404: _ERR, 416: _ERR,
}
THUMBNAIL_RESPONSES = {
    **{key: value for key, value in IMAGE_RESPONSES.items() if not isinstance(key, tuple)},
    (200, "image/webp"): OpenApiResponse(OpenApiTypes.BINARY, description="The thumbnail (WebP)"),
    (200, "image/jpeg"): OpenApiResponse(OpenApiTypes.BINARY, description="The thumbnail (JPEG fallback)"),
    (206, "image/webp"): OpenApiResponse(OpenApiTypes.BINARY, description="The requested byte range"),
    (206, "image/jpeg"): OpenApiResponse(OpenApiTypes.BINARY, description="The requested byte range"),
}


class AnyAcceptNegotiation(BaseContentNegotiation):
    """Image endpoints answer bytes whatever ``Accept`` says; their errors are JSON."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


LAST_EVENT_ID_PARAM = OpenApiParameter(
    "Last-Event-ID", OpenApiTypes.STR, OpenApiParameter.HEADER, required=False, pattern=live_log.CURSOR_PATTERN,
    description="Resume after this event (the id of the last event received); also accepted as ?last_event_id=")
EVENT_STREAM_RESPONSES = {
    (200, "text/event-stream"): OpenApiResponse(
        OpenApiTypes.STR, description="Events status, progress, preview, completed, failed, cancelled (docs/api.md)"),
    204: OpenApiResponse(description="Resumed after the request's terminal event: nothing more will come"),
    **READ_ERRORS,
}
IMAGE_VIEW_OPTIONS = {"renderer_classes": [JSONRenderer], "content_negotiation_class": AnyAcceptNegotiation}


def _idempotency(request, *, operation, target=None):
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not key or len(key) > 255 or not key.isprintable():
        raise ValidationError({IDEMPOTENCY_HEADER: ["Must be 1 to 255 printable characters."]})
    return Idempotency.of(operation=operation, key=key, body=request.data, target=target)


def _created(request, generation, created):
    """201 with Location; a replayed Idempotency-Key answers the same, marked as a replay."""
    headers = {"Location": request.build_absolute_uri(reverse("generation-detail", kwargs={"pk": generation.pk}))}
    if not created:
        headers[REPLAYED_HEADER] = "true"
    return headers


@extend_schema_view(
    list=extend_schema(summary="Your requests (staff: everyone's), newest first, cursor-paginated",
                       responses={200: GenerationRequestSerializer(many=True), **READ_ERRORS}),
    retrieve=extend_schema(summary="One request: status, progress, queue position, parameters, image URLs",
                           responses={200: GenerationRequestSerializer, **READ_ERRORS}),
)
class GenerationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Generation requests: submit, follow, cancel, regenerate, delete, download."""

    serializer_class = GenerationRequestSerializer
    pagination_class = RequestCursorPagination
    filter_backends = [RequestFilter]
    parser_classes = [BoundedJSONParser]
    lookup_value_regex = UUID_PATTERN

    def get_queryset(self):
        return requests_visible_to(self.request.user)

    def get_object(self):
        generation = request_for_user(user=self.request.user, request_id=self.kwargs["pk"])
        if generation is None:
            raise Http404("No such request.")
        return generation

    def get_throttles(self):
        return [SubmitThrottle()] if self.action in ("generate", "regenerate") else super().get_throttles()

    def get_serializer_class(self):
        return {"generate": GenerateSerializer, "regenerate": RegenerateSerializer}.get(
            self.action, GenerationRequestSerializer)

    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        # every waiting row's queue position in one query, not two per row
        context = {**self.get_serializer_context(), "queue_positions": queue_positions(page),
                   "waiting_reasons": waiting_reasons(page),
                   "workflows": workflows_for({(row.workflow_slug, row.workflow_version) for row in page})}
        return self.get_paginated_response(GenerationRequestSerializer(page, many=True, context=context).data)

    def _render(self, generation, *, status_code=status.HTTP_200_OK, headers=None):
        data = GenerationRequestSerializer(generation, context=self.get_serializer_context()).data
        return Response(data, status=status_code, headers=headers)

    @extend_schema(summary="Submit a generation request (the body is the chosen workflow's parameters; "
                           "without `workflow` it is txt2img)",
                   request=GenerateSerializer, parameters=[IDEMPOTENCY_PARAM],
                   responses={201: GenerationRequestSerializer, 400: _ERR, 401: _ERR, 413: _ERR, 415: _ERR,
                              422: OpenApiResponse(ErrorSerializer, description="Idempotency-Key reused with a "
                                                   "different body"),
                              429: OpenApiResponse(ErrorSerializer, description="Throttled or too many "
                                                   "unfinished requests; see Retry-After")})
    @action(detail=False, methods=["post"])
    def generate(self, request):
        generation, created = services.submit_generation(
            user=request.user, data=request.data, idempotency=_idempotency(request, operation=SUBMIT))
        return self._render(generation, status_code=status.HTTP_201_CREATED,
                            headers=_created(request, generation, created))

    @extend_schema(summary="Cancel if active (200 with the request), else delete it and its files (204)",
                   responses={200: GenerationRequestSerializer, 204: None, **READ_ERRORS})
    def destroy(self, request, pk=None):
        generation = services.delete_generation(request=self.get_object())
        if generation is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return self._render(generation)

    @extend_schema(summary="Cancel an active request", request=None,
                   responses={200: GenerationRequestSerializer, 409: _ERR, **READ_ERRORS})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        return self._render(services.cancel_generation(request=self.get_object()))

    @extend_schema(summary="Submit the same parameters again (a new seed unless same_seed)",
                   request=RegenerateSerializer, parameters=[IDEMPOTENCY_PARAM],
                   responses={201: GenerationRequestSerializer, 413: _ERR, 415: _ERR, 422: _ERR, 429: _ERR,
                              **READ_ERRORS})
    @action(detail=True, methods=["post"])
    def regenerate(self, request, pk=None):
        original = self.get_object()
        body = RegenerateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        generation, created = services.regenerate_generation(
            request=original, user=request.user, same_seed=body.validated_data["same_seed"],
            idempotency=_idempotency(request, operation=REGENERATE, target=original.pk))
        return self._render(generation, status_code=status.HTTP_201_CREATED,
                            headers=_created(request, generation, created))

    @extend_schema(summary="Server-sent events of one request (text/event-stream; docs/api.md \"Live events\")",
                   parameters=[LAST_EVENT_ID_PARAM], responses=EVENT_STREAM_RESPONSES)
    @action(detail=True, methods=["get"], url_path="events", url_name="events", **IMAGE_VIEW_OPTIONS)
    def events(self, request, pk=None):
        generation = self.get_object()
        cursor = _last_event_id(request)
        if cursor is not None and generation.is_terminal and not live_log.events_after(
                cursor, user_id=generation.user_id, request_id=generation.pk):
            return HttpResponse(status=status.HTTP_204_NO_CONTENT)  # it ended before: EventSource stops
        return event_stream_response(request, RequestStream(
            user_id=generation.user_id, request_id=generation.pk, cursor=cursor, absolute=request.build_absolute_uri))

    @extend_schema(summary="Server-sent events of all your requests (text/event-stream)",
                   operation_id="v1_comfyui_all_events", parameters=[LAST_EVENT_ID_PARAM],
                   responses=EVENT_STREAM_RESPONSES)
    @action(detail=False, methods=["get"], url_path="events", url_name="all-events", **IMAGE_VIEW_OPTIONS)
    def all_events(self, request):
        return event_stream_response(request, RequestStream(
            user_id=request.user.pk, cursor=_last_event_id(request), absolute=request.build_absolute_uri))

    @extend_schema(summary="The latest latent preview of a running request (owner only; 404 when none)",
                   responses={(200, "image/jpeg"): OpenApiTypes.BINARY, **READ_ERRORS})
    @action(detail=True, methods=["get"], url_path="preview", url_name="preview", **IMAGE_VIEW_OPTIONS)
    def preview(self, request, pk=None):
        generation = request_for_user(user=request.user, request_id=pk)
        mine = generation is not None and generation.user_id == request.user.pk
        preview = live_previews.latest(generation.pk) if mine and generation.status == Status.RUNNING else None
        if preview is None:
            raise Http404("No preview.")
        response = HttpResponse(preview.data, content_type=preview.image_type)
        response["Cache-Control"] = "no-store"
        return response

    @extend_schema(summary="An image (owner only; ETag, Range, S3 redirect)", parameters=IMAGE_PARAMS,
                   responses=IMAGE_RESPONSES)
    @action(detail=True, methods=["get"], url_path=r"images/(?P<index>[0-9]{1,6})", url_name="image",
            **IMAGE_VIEW_OPTIONS)
    def image(self, request, pk=None, index=None):
        return serving.image_response(request, request_id=pk, index=int(index),
                                      download=request.query_params.get("download", "").lower() in TRUE_VALUES)

    @extend_schema(summary="A thumbnail of an image (small, medium or large)", parameters=[
        *IMAGE_PARAMS, OpenApiParameter("size", OpenApiTypes.STR, OpenApiParameter.PATH,
                                        enum=["small", "medium", "large"])], responses=THUMBNAIL_RESPONSES)
    @action(detail=True, methods=["get"], url_path=r"images/(?P<index>[0-9]{1,6})/thumbnail/(?P<size>[a-z]{1,16})",
            url_name="thumbnail", **IMAGE_VIEW_OPTIONS)
    def thumbnail(self, request, pk=None, index=None, size=None):
        return serving.image_response(request, request_id=pk, index=int(index), size=size,
                                      download=request.query_params.get("download", "").lower() in TRUE_VALUES)


@extend_schema_view(list=extend_schema(summary="Models you can choose (active and present)",
                                       responses={200: AvailableModelSerializer(many=True), **READ_ERRORS}))
class AvailableModelViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Checkpoints and LoRAs on offer; ``?type=checkpoint|lora``, ``?search=`` (name or description)."""

    serializer_class = AvailableModelSerializer
    filter_backends = [ModelFilter]
    pagination_class = None

    def get_queryset(self):
        return AvailableModel.objects.filter(is_active=True, is_present=True).order_by("type", "name")


def workflow_document(workflow, ctx=None):
    """What ``GET /workflows/`` says of one workflow: its parameters as JSON Schema."""
    return {"slug": workflow.slug, "version": workflow.version, "name": workflow.name,
            "description": workflow.description, "parameters": workflow.schema(ctx or Context())}


class WorkflowViewSet(viewsets.ViewSet):
    """The workflows you can run, each with the JSON Schema of its parameters (limits and choices
    come from the ComfyUI catalogue and the model registry). Staff publish ComfyUI graphs as
    workflows here too (POST, PATCH, DELETE: docs/workflows.md)."""

    lookup_field = "slug"
    lookup_value_regex = "[a-z0-9][a-z0-9_-]{0,63}"
    parser_classes = [BoundedJSONParser]

    def get_permissions(self):
        if self.action in ("create", "partial_update", "destroy", "delete_version"):
            return [IsAdminUser()]
        return super().get_permissions()

    def _template(self, slug):
        template = WorkflowTemplate.objects.filter(slug=slug).first()
        if template is None:
            raise Http404("No such workflow.")
        return template

    def _staff_document(self, request, template, status_code=status.HTTP_200_OK):
        return Response(templates.staff_document(template, ctx=Context(user=request.user)), status=status_code)

    @extend_schema(summary="Staff: publish a ComfyUI graph (API format or a saved workflow) as a workflow",
                   request=TemplateCreateSerializer,
                   responses={201: TemplateSerializer, 400: _ERR, 401: _ERR, 403: _ERR, 413: _ERR, 415: _ERR})
    def create(self, request):
        body = TemplateCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            template = templates.create_template(user=request.user, **body.validated_data)
        except templates.TemplateInvalid as exc:
            raise ValidationError(exc.fields) from exc
        return self._staff_document(request, template, status.HTTP_201_CREATED)

    @extend_schema(summary="Staff: edit a published workflow (a changed definition or graph makes a new version)",
                   request=TemplateUpdateSerializer,
                   responses={200: TemplateSerializer, 400: _ERR, 401: _ERR, 403: _ERR, 404: _ERR})
    def partial_update(self, request, slug=None):
        template = self._template(slug)
        body = TemplateUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            templates.update_template(template=template, user=request.user, **body.validated_data)
        except templates.TemplateInvalid as exc:
            raise ValidationError(exc.fields) from exc
        return self._staff_document(request, template)

    @extend_schema(summary="Staff: delete a published workflow no request ever ran (else disable it)",
                   responses={204: None, 401: _ERR, 403: _ERR, 404: _ERR, 409: _ERR})
    def destroy(self, request, slug=None):
        try:
            templates.delete_template(self._template(slug))
        except templates.TemplateInUse as exc:
            return Response(error_body(code="workflow_in_use", message=str(exc)), status=status.HTTP_409_CONFLICT)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(summary="Staff: delete one version no request ran",
                   parameters=[OpenApiParameter("version", OpenApiTypes.INT, OpenApiParameter.PATH)],
                   responses={204: None, 401: _ERR, 403: _ERR, 404: _ERR, 409: _ERR})
    @action(detail=True, methods=["delete"], url_path=r"versions/(?P<version>[0-9]{1,6})", url_name="version")
    def delete_version(self, request, slug=None, version=None):
        row = self._template(slug).versions.filter(version=int(version)).first()
        if row is None:
            raise Http404("No such version.")
        try:
            templates.delete_version(row)
        except templates.TemplateInUse as exc:
            return Response(error_body(code="workflow_in_use", message=str(exc)), status=status.HTTP_409_CONFLICT)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(summary="Workflows you can run", responses={200: WorkflowSerializer(many=True), **AUTH_ERRORS})
    def list(self, request):
        ctx = Context(user=request.user)
        return Response([workflow_document(workflow, ctx) for workflow in all_workflows(request.user)])

    @extend_schema(summary="One workflow and its parameters (staff also get a published workflow's definition, "
                           "versions and every widget input of its graph)",
                   responses={200: WorkflowSerializer, **READ_ERRORS})
    def retrieve(self, request, slug=None):
        if request.user.is_staff and get_builtin(slug) is None:
            return self._staff_document(request, self._template(slug))
        try:
            workflow = get_workflow(slug, user=request.user)
        except UnknownWorkflow:
            raise Http404("No such workflow.") from None
        return Response(workflow_document(workflow, Context(user=request.user)))


@extend_schema_view(
    list=extend_schema(summary="Your input images, newest first", responses={200: InputImageSerializer(many=True),
                                                                             **READ_ERRORS}),
    retrieve=extend_schema(summary="One input image", responses={200: InputImageSerializer, **READ_ERRORS}),
)
class InputImageViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Input images for img2img, inpaint and upscale: upload, list, delete, view."""

    serializer_class = InputImageSerializer
    parser_classes = [BoundedMultiPartParser]
    lookup_value_regex = UUID_PATTERN
    pagination_class = None

    def get_queryset(self):
        return inputs.inputs_of(self.request.user)[:500]

    def get_object(self):
        record = inputs.inputs_of(self.request.user).filter(pk=self.kwargs["pk"]).first()
        if record is None:
            raise Http404("No such input image.")
        return record

    @extend_schema(summary="Upload an input image (and optionally its inpaint mask)", request=InputUploadSerializer,
                   responses={201: InputUploadResultSerializer,
                              200: OpenApiResponse(InputUploadResultSerializer,
                                                   description="You had uploaded the same image already"),
                              400: _ERR, 401: _ERR, 413: _ERR, 415: _ERR})
    def create(self, request):
        body = InputUploadSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            image, mask, created = inputs.upload_input(user=request.user, image=body.validated_data["image"],
                                                       mask=body.validated_data.get("mask"))
        except inputs.InputRefused as exc:
            raise InputError(exc) from exc
        data = InputImageSerializer(image, context=self.get_serializer_context()).data
        data["mask"] = InputImageSerializer(mask, context=self.get_serializer_context()).data if mask else None
        return Response(data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
                        headers={"Location": data["url"]} if created else None)

    @extend_schema(summary="Delete an input image (refused while an unfinished request uses it)",
                   responses={204: None, 409: _ERR, **READ_ERRORS})
    def destroy(self, request, pk=None):
        try:
            inputs.delete_input(record=self.get_object())
        except inputs.InputInUse as exc:
            return Response(error_body(code="input_in_use", message=str(exc)), status=status.HTTP_409_CONFLICT)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(summary="The stored input image (PNG; owner only)", responses=IMAGE_RESPONSES,
                   parameters=[OpenApiParameter("download", OpenApiTypes.BOOL, OpenApiParameter.QUERY, required=False)])
    @action(detail=True, methods=["get"], url_path="image", url_name="image", **IMAGE_VIEW_OPTIONS)
    def image(self, request, pk=None):
        return serving.input_image_response(request, record=self.get_object(),
                                            download=request.query_params.get("download", "").lower() in TRUE_VALUES)


class InputError(ValidationError):
    """An input image refused: 400 (or 413) naming the multipart field."""

    def __init__(self, refused):
        super().__init__({getattr(refused, "field", "image"): [str(refused)]})
        self.status_code = refused.status


class BackendsView(APIView):
    """Staff: each ComfyUI backend's health, load and recent failures."""

    permission_classes = [IsAdminUser]

    @extend_schema(summary="Backend health and queue depth (staff only)",
                   responses={200: BackendSerializer(many=True), 401: _ERR, 403: _ERR})
    def get(self, request):
        from generation.backends import backend_overview

        return Response(BackendSerializer(backend_overview(), many=True).data)


class BackendEventsView(APIView):
    """Staff: the backends overview as server-sent events (event ``backends``)."""

    permission_classes = [IsAdminUser]
    renderer_classes = IMAGE_VIEW_OPTIONS["renderer_classes"]
    content_negotiation_class = IMAGE_VIEW_OPTIONS["content_negotiation_class"]

    @extend_schema(summary="Backend overview as server-sent events (staff only)",
                   responses={200: OpenApiResponse(description="text/event-stream: event `backends`, data as "
                                                   "GET /api/v1/comfyui/backends/"), 401: _ERR, 403: _ERR})
    def get(self, request):
        return event_stream_response(request, BackendsStream())


def _last_event_id(request):
    """The client's :class:`~generation.live.log.Cursor` (``Last-Event-ID`` header, or ``?last_event_id=``
    for clients that cannot set headers), ``None`` on a fresh connection."""
    text = request.headers.get("Last-Event-ID")
    if text is None:
        text = request.query_params.get("last_event_id")
    if text is None:
        return None  # (EventSource leaves the header out when it has no id; sent empty, it is refused)
    try:
        return live_log.Cursor.parse(text[:8192])
    except live_log.BadCursor as exc:
        raise ValidationError({"Last-Event-ID": [str(exc)]}) from exc


def event_stream_response(request, stream):
    """A ``text/event-stream`` response driving ``stream``: on the event loop under ASGI (no thread held
    while it waits), in the request's thread under WSGI."""
    from django.core.handlers.asgi import ASGIRequest
    from django.db import connections

    if isinstance(request._request, ASGIRequest):
        frames = async_frames(stream)
        # Django parks this request's thread, with its database connection, until the stream ends; the
        # stream's own database work runs on a shared pool, so give the connection back now
        connections.close_all()
    else:
        frames = sync_frames(stream)
    response = StreamingHttpResponse(frames, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache, no-store"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


class TokenView(APIView):
    """Exchange a username and password for an API token (``Authorization: Token <token>``)."""

    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [TokenThrottle]
    parser_classes = [BoundedJSONParser, BoundedFormParser]

    @extend_schema(summary="Get your API token", request=TokenRequestSerializer, auth=[],
                   responses={200: TokenSerializer, 400: _ERR, 413: _ERR, 415: _ERR,
                              429: OpenApiResponse(ErrorSerializer, description="Throttled, or too many failed "
                                                   "logins for the account or the address; see Retry-After")})
    def post(self, request):
        body = TokenRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        user = authenticate(request._request, username=body.validated_data["username"],
                            password=body.validated_data["password"])
        if locked_for(request):
            raise LoginLocked(locked_for(request))
        if user is None or not user.is_active:
            raise ValidationError({"non_field_errors": ["Unable to log in with the provided credentials."]})
        token, _ = Token.objects.get_or_create(user=user)
        return Response({"token": token.key})


class WebhookSecretView(APIView):
    """Your webhook signing secret: read it, or rotate it (POST)."""

    parser_classes = [BoundedJSONParser]

    @extend_schema(summary="Your webhook signing secret", responses={200: WebhookSecretSerializer, **AUTH_ERRORS})
    def get(self, request):
        return Response(WebhookSecretSerializer(webhook_secret_for(request.user)).data)

    @extend_schema(summary="Rotate your webhook signing secret", request=None,
                   responses={200: WebhookSecretSerializer, **AUTH_ERRORS})
    def post(self, request):
        return Response(WebhookSecretSerializer(rotate_webhook_secret(request.user)).data)


@csrf_exempt  # it changes nothing, and a 404 must not turn into CSRF's HTML 403
def not_found(request, *args, **kwargs):
    """Any other path under /api/v1/: the API's JSON 404, not Django's HTML page."""
    return JsonResponse(error_body(code="not_found", message="No such API endpoint."), status=404)
