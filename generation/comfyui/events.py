"""Typed ComfyUI websocket events, parsed from ``{"type": ..., "data": ...}`` frames.

The shapes follow the frames recorded from ComfyUI 0.8.0 (``ws-*.jsonl``). ``Idle`` is not a
ComfyUI message: the event iterator yields it when nothing happened for ``idle_interval``,
so a caller can write heartbeats and check for cancellation.
"""

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


TERMINAL = (ExecutionSuccess, ExecutionError, ExecutionInterruptedEvent)


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
