"""Typed ComfyUI websocket events, parsed from ``{"type": ..., "data": ...}`` frames.

The shapes follow the frames recorded from ComfyUI 0.8.0 (``ws-*.jsonl``). ``Idle`` is not a
ComfyUI message: the event iterator yields it when nothing happened for ``idle_interval``,
so a caller can write heartbeats and check for cancellation. Binary frames carry latent
previews (:func:`parse_binary_frame`, layouts in the protocol README).
"""

import json
import struct
from dataclasses import dataclass, field

from generation.comfyui.errors import ExecutionFailed, ExecutionInterrupted


@dataclass(frozen=True)
class Event:
    prompt_id: str | None = None


@dataclass(frozen=True)
class Idle(Event):
    """Nothing new for ``idle_interval`` seconds (``connected`` says whether the socket is up)."""

    connected: bool = True


@dataclass(frozen=True)
class Status(Event):
    queue_remaining: int = 0
    sid: str | None = None


@dataclass(frozen=True)
class ExecutionStart(Event):
    timestamp: int | None = None


@dataclass(frozen=True)
class ExecutionCached(Event):
    nodes: tuple = ()


@dataclass(frozen=True)
class Executing(Event):
    """A node started; ``node is None`` is the legacy "prompt finished" signal (after success)."""

    node: str | None = None


@dataclass(frozen=True)
class Progress(Event):
    node: str | None = None
    value: int = 0
    max: int = 0


@dataclass(frozen=True)
class ProgressState(Event):
    nodes: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Executed(Event):
    node: str | None = None
    output: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ExecutionSuccess(Event):
    timestamp: int | None = None


@dataclass(frozen=True)
class ExecutionError(Event):
    node_id: str | None = None
    node_type: str | None = None
    exception_type: str = ""
    exception_message: str = ""
    traceback: tuple = ()

    def to_error(self, backend=""):
        return ExecutionFailed(node_id=self.node_id, node_type=self.node_type, exception_type=self.exception_type,
                               exception_message=self.exception_message, traceback=self.traceback, backend=backend)


@dataclass(frozen=True)
class ExecutionInterruptedEvent(Event):
    node_id: str | None = None
    node_type: str | None = None

    def to_error(self, backend=""):
        return ExecutionInterrupted(node_id=self.node_id, node_type=self.node_type, backend=backend)


@dataclass(frozen=True)
class Unknown(Event):
    """A frame type this client does not model (kept so nothing is silently lost)."""

    type: str = ""
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Preview(Event):
    """A latent preview of a running sampler: ``data`` is the image, ``image_type`` its MIME type.

    Legacy frames (type 1) name neither prompt nor node (``None``); frames with metadata (type 4,
    sent when the socket declared ``supports_preview_metadata``) name both.
    """

    node: str | None = None
    image_type: str = "image/jpeg"
    data: bytes = b""


TERMINAL = (ExecutionSuccess, ExecutionError, ExecutionInterruptedEvent)
PREVIEW_IMAGE = 1  # ComfyUI's BinaryEventTypes
PREVIEW_IMAGE_WITH_METADATA = 4
LEGACY_IMAGE_TYPES = {1: "image/jpeg", 2: "image/png"}
PREVIEW_IMAGE_TYPES = frozenset(LEGACY_IMAGE_TYPES.values())


def parse_event(message):
    """Turn one decoded websocket frame into an :class:`Event`."""
    kind = message.get("type", "")
    data = message.get("data") or {}
    prompt_id = data.get("prompt_id")
    if kind == "status":
        info = (data.get("status") or {}).get("exec_info") or {}
        return Status(queue_remaining=int(info.get("queue_remaining", 0)), sid=data.get("sid"))
    if kind == "execution_start":
        return ExecutionStart(prompt_id=prompt_id, timestamp=data.get("timestamp"))
    if kind == "execution_cached":
        return ExecutionCached(prompt_id=prompt_id, nodes=tuple(data.get("nodes") or ()))
    if kind == "executing":
        return Executing(prompt_id=prompt_id, node=data.get("node"))
    if kind == "progress":
        return Progress(prompt_id=prompt_id, node=data.get("node"), value=data.get("value", 0),
                        max=data.get("max", 0))
    if kind == "progress_state":
        return ProgressState(prompt_id=prompt_id, nodes=data.get("nodes") or {})
    if kind == "executed":
        return Executed(prompt_id=prompt_id, node=data.get("node"), output=data.get("output") or {})
    if kind == "execution_success":
        return ExecutionSuccess(prompt_id=prompt_id, timestamp=data.get("timestamp"))
    if kind == "execution_error":
        return ExecutionError(prompt_id=prompt_id, node_id=data.get("node_id"), node_type=data.get("node_type"),
                              exception_type=data.get("exception_type", ""),
                              exception_message=data.get("exception_message", ""),
                              traceback=tuple(data.get("traceback") or ()))
    if kind == "execution_interrupted":
        return ExecutionInterruptedEvent(prompt_id=prompt_id, node_id=data.get("node_id"),
                                         node_type=data.get("node_type"))
    return Unknown(prompt_id=prompt_id, type=kind, data=data)


def parse_binary_frame(frame):
    """A :class:`Preview` from one binary websocket frame, or None for other or malformed frames.

    Layout: a 4-byte big-endian event type, then for type 1 a 4-byte image type (1 JPEG, 2 PNG)
    and the image, for type 4 a 4-byte length N, N bytes of JSON metadata and the image.
    """
    if len(frame) < 8:
        return None
    (event_type,) = struct.unpack_from(">I", frame)
    if event_type == PREVIEW_IMAGE:
        image_type = LEGACY_IMAGE_TYPES.get(struct.unpack_from(">I", frame, 4)[0])
        return Preview(image_type=image_type, data=bytes(frame[8:])) if image_type else None
    if event_type == PREVIEW_IMAGE_WITH_METADATA:
        (length,) = struct.unpack_from(">I", frame, 4)
        if len(frame) < 8 + length:
            return None
        try:
            metadata = json.loads(frame[8:8 + length])
        except ValueError:
            return None
        if not isinstance(metadata, dict) or metadata.get("image_type") not in PREVIEW_IMAGE_TYPES:
            return None
        node = metadata.get("node_id")
        return Preview(prompt_id=metadata.get("prompt_id"), node=None if node is None else str(node),
                       image_type=metadata["image_type"], data=bytes(frame[8 + length:]))
    return None


def outcome_from_history(prompt_id, entry):
    """The terminal event a finished ``/history`` entry stands for (for re-attachment and socket loss).

    A success, or the last ``execution_error``/``execution_interrupted`` message in ``status.messages``.
    """
    status = entry.get("status") or {}
    if status.get("status_str") == "success" or status.get("completed"):
        return ExecutionSuccess(prompt_id=prompt_id)
    for kind, data in reversed(status.get("messages") or []):
        if kind in ("execution_error", "execution_interrupted"):
            return parse_event({"type": kind, "data": {**data, "prompt_id": prompt_id}})
    return ExecutionError(prompt_id=prompt_id, exception_type="UnknownError",
                          exception_message=f"ComfyUI reported status {status.get('status_str')!r} without details")
