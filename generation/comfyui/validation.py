"""Graph validation exactly as ComfyUI 0.8.0 does it (``execution.validate_prompt``).

One implementation serves two callers: the workflow builder checks a graph against a
backend's ``object_info`` before sending it, and the simulator validates ``POST /prompt``
with it, so both produce ComfyUI's 400 body (``{"error": …, "node_errors": …}``) with the
same error types, messages and ``extra_info`` as the recordings in
``tests/fixtures/comfyui-protocol/prompt-error-*.json``.

Inputs whose node has custom validation in ComfyUI (``VALIDATE_INPUTS``: the file loaders'
combos, :data:`CUSTOM_VALIDATED_INPUTS`) skip the range and option-list checks, as ComfyUI
does; a caller that knows the backend's files passes ``custom_checks`` (the simulator), one
that does not (the dispatcher) passes none and any name is accepted.
"""

import posixpath
import sys
import traceback
from dataclasses import dataclass, field

from generation.comfyui.object_info import ObjectInfo

# Stock nodes whose real code has VALIDATE_INPUTS / validate_inputs on these combo inputs, with the
# reason that code gives for a file it cannot find. ComfyUI skips their option-list check, which is
# why a file uploaded into a subfolder (never listed by /object_info) still validates.
CUSTOM_VALIDATED_INPUTS = {
    "LoadImage": {"image": "Invalid image file: {}"},
    "LoadImageMask": {"image": "Invalid image file: {}"},
    "LoadImageOutput": {"image": "Invalid image file: {}"},
    "LoadLatent": {"latent": "Invalid latent file: {}"},
    "LoadVideo": {"file": "Invalid video file: {}"},
}
ANNOTATIONS = (("[output]", "output"), ("[input]", "input"), ("[temp]", "temp"))


def annotated_path(name, default="input"):
    """ComfyUI's ``annotated_filepath``: ``("output", "a/b.png")`` for ``"a/b.png [output]"``.

    The path is normalised; ``None`` when it is not a string or leaves its folder (``..``, absolute).
    """
    if not isinstance(name, str):
        return None
    folder = default
    for suffix, annotated in ANNOTATIONS:
        if name.endswith(suffix):
            name, folder = name[: -len(suffix) - 1], annotated  # ComfyUI also drops the space before it
            break
    path = posixpath.normpath(name) if name else ""
    if path in ("", ".", "..") or path.startswith(("/", "../")):
        return None
    return folder, path


def file_exists_check(exists):
    """A ``custom_checks`` for :func:`validate_prompt` from ``exists(folder, path) -> bool``.

    Gives the reason ComfyUI's loaders give (``Invalid image file: x``) for a name that is not a
    file in that folder, including one that leaves it (``../../etc/passwd``).
    """

    def check(class_type, name, value):
        location = annotated_path(value)
        if location is None or not exists(*location):
            return CUSTOM_VALIDATED_INPUTS[class_type][name].format(value)
        return None

    return check


@dataclass
class ValidationResult:
    """``ok`` false means HTTP 400 with ``error``; ``node_errors`` may be non-empty even when ok (partial)."""

    ok: bool
    error: dict | None
    outputs: list = field(default_factory=list)
    node_errors: dict = field(default_factory=dict)

    def body(self):
        """ComfyUI's 400 body."""
        return {"error": self.error, "node_errors": self.node_errors}


def _error(kind, message, details="", extra_info=None):
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info or {}}


def _catalogue(object_info):
    return object_info.data if isinstance(object_info, ObjectInfo) else object_info


def _input_specs(node_info):
    """``(name, category, spec)`` for the required then optional inputs, in declared order."""
    inputs = node_info.get("input") or {}
    for category in ("required", "optional"):
        for name, spec in (inputs.get(category) or {}).items():
            yield name, category, spec


def _types_match(received, expected):
    """ComfyUI's ``validate_node_input`` for plain and comma-separated union types, ``*`` = anything."""
    if not isinstance(received, str) or not isinstance(expected, str):
        return received == expected
    if received == expected or "*" in (received, expected):
        return True
    return bool(set(received.split(",")) & set(expected.split(",")))


def _convert(input_type, value):
    if input_type == "INT":
        return int(value)
    if input_type == "FLOAT":
        return float(value)
    if input_type == "STRING":
        return str(value)
    if input_type == "BOOLEAN":
        return bool(value)
    return value


def _exception_reason(kind, message, ex, extra=None):
    typ, _, tb = sys.exc_info()
    return {"type": kind, "message": message, "details": str(ex),
            "extra_info": {**(extra or {}), "exception_type": _full_type_name(typ),
                           "traceback": traceback.format_tb(tb)}}


def _full_type_name(typ):
    module = typ.__module__
    return typ.__qualname__ if module in (None, "builtins") else f"{module}.{typ.__qualname__}"


def _validate_inputs(prompt, catalogue, node_id, validated, custom_checks):
    if node_id in validated:
        return validated[node_id]
    node = prompt[node_id]
    inputs = node.get("inputs") or {}
    class_type = node["class_type"]
    node_info = catalogue[class_type]
    custom = CUSTOM_VALIDATED_INPUTS.get(class_type, {})
    errors = []
    valid = True

    for name, category, spec in _input_specs(node_info):
        input_type = spec[0] if spec else None
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        info = [input_type, options]
        if name not in inputs:
            if category == "required":
                errors.append(_error("required_input_missing", "Required input is missing", name,
                                     {"input_name": name}))
            continue

        value = inputs[name]
        if isinstance(value, list):
            if len(value) != 2:
                errors.append(_error("bad_linked_input",
                                     "Bad linked input, must be a length-2 list of [node_id, slot_index]", name,
                                     {"input_name": name, "input_config": info, "received_value": value}))
                continue
            source_id = value[0]
            source_class = prompt[source_id]["class_type"]  # KeyError for a missing node, as in ComfyUI
            received_type = catalogue[source_class]["output"][value[1]]
            if not _types_match(received_type, input_type):
                details = f"{name}, received_type({received_type}) mismatch input_type({input_type})"
                errors.append(_error("return_type_mismatch", "Return type mismatch between linked nodes", details,
                                     {"input_name": name, "input_config": info, "received_type": received_type,
                                      "linked_node": value}))
                continue
            try:
                result = _validate_inputs(prompt, catalogue, source_id, validated, custom_checks)
                if result[0] is False:
                    valid = False
                    continue
            except Exception as ex:
                valid = False
                reason = _exception_reason("exception_during_inner_validation", "Exception when validating inner node",
                                           ex, {"input_name": name, "input_config": info,
                                                "exception_message": str(ex), "linked_node": value})
                validated[source_id] = (False, [reason], source_id)
            continue

        if isinstance(value, dict) and "__value__" in value:
            value = value["__value__"]
        try:
            value = _convert(input_type, value)
        except Exception as ex:
            errors.append(_error("invalid_input_type", f"Failed to convert an input value to a {input_type} value",
                                 f"{name}, {value}, {ex}",
                                 {"input_name": name, "input_config": info, "received_value": value,
                                  "exception_message": str(ex)}))
            continue

        if name in custom:  # ComfyUI runs the node's own check instead of the range and list checks
            reason = custom_checks(class_type, name, value) if custom_checks else None
            if reason:
                errors.append(_error("custom_validation_failed", "Custom validation failed for node",
                                     f"{name} - {reason}", {"input_name": name}))
            continue

        try:
            too_small = "min" in options and value < options["min"]
            too_big = "max" in options and value > options["max"]
        except TypeError:
            too_small = too_big = False
        if too_small:
            errors.append(_error("value_smaller_than_min", f"Value {value} smaller than min of {options['min']}",
                                 name, {"input_name": name, "input_config": info, "received_value": value}))
            continue
        if too_big:
            errors.append(_error("value_bigger_than_max", f"Value {value} bigger than max of {options['max']}",
                                 name, {"input_name": name, "input_config": info, "received_value": value}))
            continue

        if isinstance(input_type, list) or input_type == "COMBO":
            choices = input_type if isinstance(input_type, list) else options.get("options", [])
            if options.get("multiselect") and isinstance(value, list):
                invalid = [v for v in value if v not in choices]
            else:
                invalid = [value] if value not in choices else []
            if invalid:
                config = info
                if len(choices) > 20:  # ComfyUI does not echo huge model lists back
                    list_info, config = f"(list of length {len(choices)})", None
                else:
                    list_info = str(choices)
                errors.append(_error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {list_info}",
                                     {"input_name": name, "input_config": config, "received_value": value}))
                continue

    result = (False, errors, node_id) if errors or valid is not True else (True, [], node_id)
    validated[node_id] = result
    return result


def validate_prompt(prompt, object_info, partial_execution_targets=None, *, custom_checks=None):
    """Validate an API-format graph like ComfyUI's ``POST /prompt`` and return a :class:`ValidationResult`.

    ``custom_checks(class_type, input_name, value) -> reason | None`` stands for the nodes' own
    validation of :data:`CUSTOM_VALIDATED_INPUTS` (see :func:`file_exists_check`); without it
    those inputs accept any value.
    """
    catalogue = _catalogue(object_info)
    if not isinstance(prompt, dict):
        return ValidationResult(False, _error("invalid_prompt", "Prompt is not a JSON object", ""))
    outputs = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return ValidationResult(False, _error("invalid_prompt",
                                                  "Cannot execute because a node is missing the class_type property.",
                                                  f"Node ID '#{node_id}'"))
        class_type = node["class_type"]
        if not isinstance(class_type, str) or class_type not in catalogue:
            return ValidationResult(False, _error("invalid_prompt",
                                                  f"Cannot execute because node {class_type} does not exist.",
                                                  f"Node ID '#{node_id}'"))
        if catalogue[class_type].get("output_node") is True and (
                partial_execution_targets is None or node_id in partial_execution_targets):
            outputs.append(node_id)
    if not outputs:
        return ValidationResult(False, _error("prompt_no_outputs", "Prompt has no outputs"))

    good_outputs, failures, node_errors, validated = [], [], {}, {}
    for output_id in outputs:
        try:
            valid, reasons, _ = _validate_inputs(prompt, catalogue, output_id, validated, custom_checks)
        except Exception as ex:
            valid = False
            reasons = [_exception_reason("exception_during_validation", "Exception when validating node", ex)]
            validated[output_id] = (False, reasons, output_id)
        if valid is True:
            good_outputs.append(output_id)
            continue
        failures.append((output_id, reasons))
        for node_id, (node_valid, node_reasons, _) in validated.items():
            # Downstream nodes of a failing node fail without reasons; only the culprits are reported.
            if node_valid is not True and node_reasons:
                entry = node_errors.setdefault(node_id, {"errors": node_reasons, "dependent_outputs": [],
                                                         "class_type": prompt[node_id]["class_type"]})
                entry["dependent_outputs"].append(output_id)

    if not good_outputs:
        details = "\n".join(f"{r['message']}: {r['details']}" for _, reasons in failures for r in reasons)
        return ValidationResult(False, _error("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                                              details), [], node_errors)
    return ValidationResult(True, None, good_outputs, node_errors)
